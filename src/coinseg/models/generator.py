"""Conditional residual generator G with U-Net skips (as in the paper's code) and the output fusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from coinseg.config import Fusion, Upsample
from coinseg.models.blocks import GeneratorBlock


class Generator(nn.Module):
    """One conditional residual up-block per encoder level, widths ``reversed(enc_widths)``, then a head
    BN -> ReLU -> Conv3x3(-> 1, bias) giving the residual ``g``.

    ``zero_head``: the head conv starts at zero, so G starts at g = 0 (with a fusion where g = 0 is the identity,
    training starts from x_cf = x); else Xavier-uniform.

    Skip numbering: the encoder features are reversed, index 0 being the bottleneck (the generator input);
    skip ``i`` (1 <= i < len(enc_widths)) concatenates reversed feature ``i`` (channel dim) to the input of
    up-block ``i``.
    """

    def __init__(
        self,
        enc_widths: Sequence[int],
        skips: Sequence[int],
        n_classes: int = 2,
        upsample: Upsample = Upsample.nearest,
        sn_shortcut: bool = True,
        zero_head: bool = False,
    ) -> None:
        super().__init__()
        rev = list(reversed(enc_widths))
        bad = [s for s in skips if not 1 <= s < len(rev)]
        if bad:
            raise ValueError(f"skips {bad} out of range: each skip must be in 1..{len(rev) - 1}")
        self.skips = frozenset(skips)
        blocks = []
        in_ch = rev[0]
        for i, out_ch in enumerate(rev):
            if i in self.skips:
                in_ch += rev[i]
            blocks.append(GeneratorBlock(in_ch, out_ch, n_classes, upsample, sn_shortcut))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        head_conv = nn.Conv2d(in_ch, 1, 3, padding=1, bias=True)
        if zero_head:
            assert head_conv.bias is not None
            nn.init.zeros_(head_conv.weight)
            nn.init.zeros_(head_conv.bias)
        else:
            nn.init.xavier_uniform_(head_conv.weight)
        self.head = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(), head_conv)

    def forward(self, features: list[Tensor], y: Tensor) -> Tensor:
        """features: the encoder output (shallowest first); y: LongTensor[B] condition (0 = normal).

        Returns ``g``: B x 1 x H x W, an unbounded residual at the encoder's input size.
        """
        if len(features) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} encoder features, got {len(features)}")
        rev = features[::-1]
        h = rev[0]
        for i, block in enumerate(self.blocks):
            if i in self.skips:
                h = torch.cat([h, rev[i]], dim=1)
            h = block(h, y)
        return self.head(h)


def fuse(x: Tensor, g: Tensor, fusion: Fusion) -> Tensor:
    """Counterfactual from the image ``x`` (B x 1 x H x W in [-1, 1]) and the residual ``g`` (same shape).

    ``clamp_add``: clamp(x + g, -1, 1), exactly ``x`` at g = 0; ``tanh_add``: tanh(x + g) (paper);
    ``tanh``: tanh(g), ignores ``x`` (no perturbation). Output in [-1, 1].
    """
    fusion = Fusion(fusion)
    if fusion is Fusion.clamp_add:
        return torch.clamp(x + g, -1.0, 1.0)
    if fusion is Fusion.tanh_add:
        return torch.tanh(x + g)
    return torch.tanh(g)
