"""Building blocks of the encoder, generator and discriminator (as in the paper's code).

All blocks map ``B x C_in x H x W`` feature maps to ``B x C_out x H' x W'``; convolutions use padding
``k // 2`` so only pooling and upsampling change the spatial size. Spectral norm is PyTorch's own
parametrisation (sigma differentiable w.r.t. the weight).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from coinseg.config import Upsample

RESIDUAL_GAIN = math.sqrt(2.0)


def conv(in_ch: int, out_ch: int, kernel: int, *, bias: bool, gain: float, sn: bool) -> nn.Module:
    """``kernel x kernel`` convolution, size-preserving, xavier-uniform init, optionally spectral-normed."""
    layer = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
    nn.init.xavier_uniform_(layer.weight, gain)
    return spectral_norm(layer) if sn else layer


def pool(factor: int) -> nn.Module:
    """Average pooling by ``factor`` (identity when ``factor == 1``)."""
    return nn.AvgPool2d(factor) if factor > 1 else nn.Identity()


def upsample(mode: Upsample) -> nn.Module:
    """x2 upsampling: ``nearest``, or ``bilinear`` with ``align_corners=True`` as in the reference code."""
    if Upsample(mode) is Upsample.nearest:
        return nn.Upsample(scale_factor=2, mode="nearest")
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without affine, then a per-class affine: ``gamma[y] * BN(x) + beta[y]``.

    ``gamma`` starts at N(1, 0.02), ``beta`` at 0 (one ``Embedding(n_classes, 2C)`` row per class).
    """

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.channels = channels
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.embed = nn.Embedding(n_classes, 2 * channels)
        nn.init.normal_(self.embed.weight[:, :channels], 1.0, 0.02)
        nn.init.zeros_(self.embed.weight[:, channels:])

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x: B x C x H x W; y: LongTensor[B] class indices -> B x C x H x W."""
        gamma, beta = self.embed(y).split(self.channels, dim=1)
        return gamma[:, :, None, None] * self.bn(x) + beta[:, :, None, None]


class EncoderBlock(nn.Module):
    """Residual down-block, ``B x in x H x W -> B x out x H/2 x W/2``.

    shortcut: AvgPool -> Conv1x1 (no bias; spectral-normed when ``sn_shortcut``), never the identity;
    residual: BN -> ReLU -> AvgPool -> Conv3x3 -> BN -> ReLU -> Conv3x3 (no biases); output = sum.
    """

    def __init__(self, in_ch: int, out_ch: int, sn_shortcut: bool = True) -> None:
        super().__init__()
        self.shortcut = nn.Sequential(pool(2), conv(in_ch, out_ch, 1, bias=False, gain=1.0, sn=sn_shortcut))
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(),
            pool(2),
            conv(in_ch, out_ch, 3, bias=False, gain=RESIDUAL_GAIN, sn=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
            conv(out_ch, out_ch, 3, bias=False, gain=RESIDUAL_GAIN, sn=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.residual(x)


class GeneratorBlock(nn.Module):
    """Residual up-block with conditional BN, ``B x in x H x W -> B x out x 2H x 2W``.

    shortcut: Upsample -> Conv1x1 (no bias; spectral-normed when ``sn_shortcut``);
    residual: CBN -> ReLU -> Upsample -> Conv3x3 -> CBN -> ReLU -> Conv3x3 (no biases); output = sum.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        n_classes: int,
        mode: Upsample = Upsample.nearest,
        sn_shortcut: bool = True,
    ) -> None:
        super().__init__()
        self.shortcut = nn.Sequential(upsample(mode), conv(in_ch, out_ch, 1, bias=False, gain=1.0, sn=sn_shortcut))
        self.norm1 = ConditionalBatchNorm(in_ch, n_classes)
        self.up = upsample(mode)
        self.conv1 = conv(in_ch, out_ch, 3, bias=False, gain=RESIDUAL_GAIN, sn=False)
        self.norm2 = ConditionalBatchNorm(out_ch, n_classes)
        self.conv2 = conv(out_ch, out_ch, 3, bias=False, gain=RESIDUAL_GAIN, sn=False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x: B x in x H x W; y: LongTensor[B] condition -> B x out x 2H x 2W."""
        h = self.conv1(self.up(torch.relu(self.norm1(x, y))))
        h = self.conv2(torch.relu(self.norm2(h, y)))
        return self.shortcut(x) + h


class DiscriminatorBlock(nn.Module):
    """Spectral-normed residual block, ``B x in x H x W -> B x out x H/down x W/down`` (all convs with bias).

    ``first`` (on the image): shortcut AvgPool -> Conv1x1; residual Conv3x3 -> ReLU -> Conv3x3 -> AvgPool.
    Otherwise: shortcut Conv1x1 (identity when in == out) -> AvgPool;
    residual ReLU -> Conv3x3 -> ReLU -> Conv3x3 -> AvgPool. Output = sum, no activation.
    """

    def __init__(self, in_ch: int, out_ch: int, down: int = 2, first: bool = False) -> None:
        super().__init__()
        projection = conv(in_ch, out_ch, 1, bias=True, gain=1.0, sn=True) if in_ch != out_ch else nn.Identity()
        self.shortcut = nn.Sequential(pool(down), projection) if first else nn.Sequential(projection, pool(down))
        body = [
            conv(in_ch, out_ch, 3, bias=True, gain=RESIDUAL_GAIN, sn=True),
            nn.ReLU(),
            conv(out_ch, out_ch, 3, bias=True, gain=RESIDUAL_GAIN, sn=True),
            pool(down),
        ]
        self.residual = nn.Sequential(*body) if first else nn.Sequential(nn.ReLU(), *body)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.residual(x)
