"""Residual encoder E (as in the paper's code)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from coinseg.models.blocks import EncoderBlock


class Encoder(nn.Module):
    """Stem Conv3x3(1 -> stem_width, no bias) -> ReLU -> BN, then a residual down-block per ``widths`` entry.

    Input ``B x 1 x H x W`` in [-1, 1] (H, W divisible by ``2 ** len(widths)``); output the list of all block
    features, feature ``i`` being ``B x widths[i] x H / 2**(i+1) x W / 2**(i+1)`` (the last: the bottleneck).
    """

    def __init__(self, stem_width: int, widths: Sequence[int], sn_shortcut: bool = True) -> None:
        super().__init__()
        stem_conv = nn.Conv2d(1, stem_width, 3, padding=1, bias=False)
        nn.init.xavier_normal_(stem_conv.weight)
        self.stem = nn.Sequential(stem_conv, nn.ReLU(), nn.BatchNorm2d(stem_width))
        ins = [stem_width, *widths[:-1]]
        self.blocks = nn.ModuleList(EncoderBlock(i, o, sn_shortcut) for i, o in zip(ins, widths, strict=True))

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.stem(x)
        features = []
        for block in self.blocks:
            h = block(h)
            features.append(h)
        return features
