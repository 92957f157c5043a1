"""What COIN is, apart from how it is trained: the classifier's probability f(x), the generator's condition and
the KL target, the scaled edit the classifier term scores, and how an inpainter or a classifier is built and
loaded from a run directory.

Images are B x 1 x H x W tensors in [-1, 1]; probabilities are P(abnormal) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from coinseg.config import Conditioning, GanConfig, Settings, settings_from_dict
from coinseg.data.slices import LazySlices
from coinseg.errors import RunError
from coinseg.models import build_classifier, build_encoder_generator
from coinseg.models.inpainter import Inpainter
from coinseg.runtime.checkpoint import load_checkpoint

KL_ABNORMAL_TARGET = 1e-6


def prob(classifier: nn.Module, x: Tensor) -> Tensor:
    """f(x): P(abnormal) for a batch, float32, shape B, on x's device (the one way coinseg reads f)."""
    return torch.sigmoid(classifier(x).float())


@torch.no_grad()
def probs(classifier: nn.Module, images: Tensor | LazySlices, device: torch.device, batch: int = 256) -> np.ndarray:
    """f(images) for N x 1 x S x S inputs in [-1, 1] (a tensor on any device, or a lazy store view) in eval mode,
    in batches: N float32 values in [0, 1]. The classifier's train/eval mode is restored afterwards."""
    was_training = classifier.training
    classifier.eval()
    out = [prob(classifier, images[i : i + batch].to(device)).cpu() for i in range(0, len(images), batch)]
    classifier.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def conditions(p: Tensor, cfg: GanConfig) -> tuple[Tensor, Tensor, Tensor]:
    """From f(x) = p (B probabilities): (b, c, t) = real-image class, generator condition, KL target."""
    b = (p >= 0.5).long()
    if cfg.conditioning is Conditioning.single:
        c = torch.zeros_like(b)
        t = torch.where(b == 1, torch.full_like(p, KL_ABNORMAL_TARGET), p)
    else:
        c = (1.0 - p >= 0.5).long()
        t = 1.0 - p
    return b, c, t


def counterfactual(inpainter: nn.Module, x: Tensor, c: Tensor, mirror: bool) -> Tensor:
    """x_cf = I(x, c) for a batch x (B x 1 x H x W in [-1, 1]) and conditions c (B), same shape and range; with
    ``mirror`` (``gan.mirror_maps``) the mean of I(x, c) and I(x mirrored left-right, c) mirrored back, so a
    change the GAN makes only in one orientation is halved."""
    x_cf = inpainter(x, c)
    if mirror:
        x_cf = (x_cf + inpainter(x.flip(-1), c).flip(-1)) / 2
    return x_cf


def mirror_rows(x: Tensor, rows: Tensor) -> Tensor:
    """x (B x C x H x W) with the rows where ``rows`` (B bool) is True mirrored left-right."""
    return torch.where(rows.to(x.device)[:, None, None, None], x.flip(-1), x)


def scaled_edit(x: Tensor, x_cf: Tensor, scale: float) -> Tensor:
    """x + scale (x_cf - x): the counterfactual edit applied at strength ``scale`` in (0, 1] (a convex blend of two
    B x 1 x H x W images in [-1, 1], so it stays in range); what the classifier term scores."""
    return x_cf if scale == 1.0 else x + scale * (x_cf - x)


def build_inpainter(cfg: GanConfig) -> Inpainter:
    """I = (E, G, fusion) as set by ``cfg``, freshly initialised."""
    encoder, generator = build_encoder_generator(cfg)
    return Inpainter(encoder, generator, cfg.fusion)


def load_classifier(run_dir: Path, checkpoint: Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The best classifier of a ``train-classifier`` run directory (or the copy in ``checkpoint``), frozen: eval
    mode, no parameter grads, on the CPU.

    Returns (model, checkpoint dict with ``window``, ``intensity``, ``size``, ``arch``, ``widths``).
    """
    path = checkpoint or run_dir / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "classifier":
        raise RunError(f"{run_dir}: not a classifier run (checkpoint kind {ckpt.get('kind')!r})")
    model = build_classifier(ckpt["arch"], ckpt["widths"], ckpt.get("stem_stride", 1))  # 1 before it was recorded
    model.load_state_dict(ckpt["model"])
    model.eval().requires_grad_(False)
    return model, ckpt


def load_inpainter(run_dir: Path) -> tuple[Inpainter, Settings, dict[str, Any]]:
    """The best E+G of a ``train`` run directory (eval mode, CPU), its settings and its checkpoint (window, size,
    method, auto threshold). No discriminator is built."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    if ckpt.get("kind") != "gan":
        raise RunError(f"{run_dir}: not a COIN/GAN run directory (checkpoint kind {ckpt.get('kind')!r})")
    settings = settings_from_dict(ckpt["settings"])
    inpainter = build_inpainter(settings.gan)
    inpainter.load_state_dict(ckpt["inpainter"])
    return inpainter.eval(), settings, ckpt
