"""Loss terms of the GAN (as in the paper's code), as pure functions returning scalar tensors.

Logits are unbounded reals (D's real > 0); probabilities are in [0, 1]; images are in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from coinseg.config import AdvLoss


def adversarial_g(fake_logits: Tensor, kind: AdvLoss | str) -> Tensor:
    """Generator adversarial loss on D's logits for counterfactuals, ``fake_logits``: B.

    ``bce``: mean softplus(-l) (non-saturating); ``mse``: mean (l - 1)^2 (LSGAN); ``hinge``: -mean l.
    An unknown ``kind`` raises ValueError.
    """
    kind = AdvLoss(kind)
    if kind is AdvLoss.bce:
        return F.softplus(-fake_logits).mean()
    if kind is AdvLoss.mse:
        return ((fake_logits - 1) ** 2).mean()
    return -fake_logits.mean()


def adversarial_d(real_logits: Tensor, fake_logits: Tensor, kind: AdvLoss | str) -> Tensor:
    """Discriminator loss, half real + half fake; ``real_logits``: B_r, ``fake_logits``: B_f.

    ``bce``: 0.5 [mean softplus(-r) + mean softplus(f)]; ``mse``: 0.5 [mean (r - 1)^2 + mean f^2];
    ``hinge``: 0.5 [mean relu(1 - r) + mean relu(1 + f)]. An unknown ``kind`` raises ValueError.
    """
    kind = AdvLoss(kind)
    if kind is AdvLoss.bce:
        real, fake = F.softplus(-real_logits), F.softplus(fake_logits)
    elif kind is AdvLoss.mse:
        real, fake = (real_logits - 1) ** 2, fake_logits**2
    else:
        real, fake = F.relu(1 - real_logits), F.relu(1 + fake_logits)
    return 0.5 * (real.mean() + fake.mean())


def bernoulli_kl(target: Tensor, prob: Tensor, eps: float = 1e-5) -> Tensor:
    """KL(Bernoulli(target) || Bernoulli(prob)), mean over the batch; ``target``, ``prob``: B probabilities.

    Both are clamped to [eps, 1 - eps] first, so the result is finite (and 0 where target == prob).
    """
    t = target.clamp(eps, 1 - eps)
    p = prob.clamp(eps, 1 - eps)
    return (t * torch.log(t / p) + (1 - t) * torch.log((1 - t) / (1 - p))).mean()


def l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference over all elements (same shapes, e.g. B x 1 x H x W images)."""
    return (a - b).abs().mean()


def total_variation(x: Tensor, x_cf: Tensor) -> Tensor:
    """Squared total variation of the change map ``m = 127.5 |x - x_cf|`` (grey levels 0-255).

    x, x_cf: B x 1 x H x W in [-1, 1]. Per sample: mean of squared horizontal neighbour differences of ``m``
    plus mean of squared vertical ones; then mean over the batch (all samples have the same size, so the
    per-sample means average to the global means).
    """
    m = 127.5 * (x - x_cf).abs()
    horizontal = (m[..., :, 1:] - m[..., :, :-1]) ** 2
    vertical = (m[..., 1:, :] - m[..., :-1, :]) ** 2
    return horizontal.mean() + vertical.mean()
