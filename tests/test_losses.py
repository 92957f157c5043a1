"""Loss terms on hand-computed tiny cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from coinseg.config import AdvLoss
from coinseg.losses import adversarial_d, adversarial_g, bernoulli_kl, l1, total_variation

LN3 = math.log(3.0)


def close(value: torch.Tensor, expected: float) -> bool:
    return value.ndim == 0 and math.isclose(value.item(), expected, rel_tol=1e-5, abs_tol=1e-6)


def test_adversarial_g_hand_computed() -> None:
    fake = torch.tensor([0.0, LN3])
    # softplus(0) = ln 2, softplus(-ln 3) = ln(1 + 1/3) = ln(4/3)
    assert close(adversarial_g(fake, AdvLoss.bce), (math.log(2) + math.log(4 / 3)) / 2)
    assert close(adversarial_g(fake, AdvLoss.mse), (1 + (LN3 - 1) ** 2) / 2)
    assert close(adversarial_g(fake, AdvLoss.hinge), -LN3 / 2)


def test_adversarial_d_hand_computed() -> None:
    real, fake = torch.tensor([LN3]), torch.tensor([0.0])
    assert close(adversarial_d(real, fake, AdvLoss.bce), 0.5 * (math.log(4 / 3) + math.log(2)))
    assert close(adversarial_d(real, fake, AdvLoss.mse), 0.5 * (LN3 - 1) ** 2)
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    # relu(1 - r) = [0, 1] -> 0.5; relu(1 + f) = [0, 1.5] -> 0.75
    assert close(adversarial_d(real, fake, AdvLoss.hinge), 0.625)
    assert close(adversarial_d(real, fake, AdvLoss.mse), 0.5 * ((1 + 1) / 2 + (4 + 0.25) / 2))


def test_bce_matches_torch() -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(8) * 3, torch.randn(8) * 3
    ones, zeros = torch.ones(8), torch.zeros(8)
    bce = F.binary_cross_entropy_with_logits
    assert torch.allclose(adversarial_g(fake, AdvLoss.bce), bce(fake, ones))
    assert torch.allclose(adversarial_d(real, fake, "bce"), 0.5 * (bce(real, ones) + bce(fake, zeros)))


def test_invalid_kind_raises() -> None:
    with pytest.raises(ValueError):
        adversarial_g(torch.zeros(2), "wasserstein")
    with pytest.raises(ValueError):
        adversarial_d(torch.zeros(2), torch.zeros(2), "wasserstein")


def test_bernoulli_kl_hand_computed() -> None:
    # 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 ln(4/3); second sample: 0
    value = bernoulli_kl(torch.tensor([0.5, 0.3]), torch.tensor([0.25, 0.3]))
    assert close(value, 0.5 * 0.5 * math.log(4 / 3))


def test_bernoulli_kl_zero_when_equal() -> None:
    p = torch.tensor([0.0, 1e-6, 0.2, 0.5, 0.9, 1.0])
    assert torch.allclose(bernoulli_kl(p, p), torch.tensor(0.0), atol=1e-7)


def test_bernoulli_kl_clamps() -> None:
    eps = 1e-5
    # target 0 -> eps; prob 0.5
    expected = eps * math.log(eps / 0.5) + (1 - eps) * math.log((1 - eps) / 0.5)
    assert close(bernoulli_kl(torch.tensor([0.0]), torch.tensor([0.5])), expected)
    assert close(bernoulli_kl(torch.tensor([1e-6]), torch.tensor([0.5])), expected)
    # prob 1 -> 1 - eps: finite, about -ln(eps)
    far = bernoulli_kl(torch.tensor([0.0]), torch.tensor([1.0]))
    assert torch.isfinite(far) and math.isclose(far.item(), -math.log(eps), rel_tol=1e-3)


def test_l1() -> None:
    assert close(l1(torch.tensor([[1.0, -1.0], [0.5, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 0.0]])), 0.625)


def test_total_variation_hand_computed() -> None:
    # m = 127.5 |x - x_cf| = [[0, 1], [2, 4]]
    # horizontal: (1 - 0)^2, (4 - 2)^2 -> mean 2.5; vertical: (2 - 0)^2, (4 - 1)^2 -> mean 6.5
    m = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2)
    x_cf = torch.zeros_like(m)
    assert close(total_variation(m / 127.5, x_cf), 9.0)
    assert close(total_variation(x_cf, -m / 127.5), 9.0)


def test_total_variation_batch_mean_and_constant() -> None:
    m = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2) / 127.5
    flat = torch.full_like(m, 0.5)
    batch_x = torch.cat([m, flat])
    assert close(total_variation(batch_x, torch.zeros_like(batch_x)), 4.5)
    assert close(total_variation(flat, torch.zeros_like(flat)), 0.0)
