"""Batched, seeded augmentation of [-1, 1] slices on their own device: flips and a small random affine.

Pixels moved in from outside are filled with -1 (air / the window's floor), not 0, which would be mid-grey
in [-1, 1] (a bug of the paper's code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from coinseg.config import ClassifierConfig


def random_affine(b: int, cfg: ClassifierConfig, generator: torch.Generator) -> torch.Tensor:
    """``b`` random affine matrices (b x 2 x 3, CPU) for :func:`warp`, drawn from ``generator``.

    Per sample: horizontal flip (p=cfg.hflip), vertical flip (p=cfg.vflip), shift up to ±cfg.shift of the size,
    scale in 1 ± cfg.scale, rotation up to ±cfg.rotate degrees.
    """

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    sx = torch.where(torch.rand(b, generator=generator) < cfg.hflip, -1.0, 1.0)
    sy = torch.where(torch.rand(b, generator=generator) < cfg.vflip, -1.0, 1.0)
    angle = uniform(-cfg.rotate, cfg.rotate) * math.pi / 180.0
    scale = uniform(1.0 - cfg.scale, 1.0 + cfg.scale)
    tx, ty = uniform(-cfg.shift, cfg.shift) * 2.0, uniform(-cfg.shift, cfg.shift) * 2.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``x``: B x 1 x H x W in [-1, 1], ``theta``: B x 2 x 3 -> the warped copy, same shape and range (bilinear,
    outside filled with -1)."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
