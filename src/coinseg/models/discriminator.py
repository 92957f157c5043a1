"""Spectral-normed projection discriminator D (as in the paper's code)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from coinseg.models.blocks import DiscriminatorBlock


class Discriminator(nn.Module):
    """SN residual blocks (``widths[i]`` channels, downsampling by ``down[i]``), ReLU, global *sum* pooling,
    then ``logit = SNLinear(h) + <Embedding(y), h>`` (projection conditioning; the embedding is not SN'd).
    """

    def __init__(self, widths: Sequence[int], down: Sequence[int], n_classes: int = 2) -> None:
        super().__init__()
        if len(widths) != len(down):
            raise ValueError(f"widths ({len(widths)}) and down ({len(down)}) must have the same length")
        ins = [1, *widths[:-1]]
        self.blocks = nn.Sequential(
            *(
                DiscriminatorBlock(i, o, d, first=k == 0)
                for k, (i, o, d) in enumerate(zip(ins, widths, down, strict=True))
            )
        )
        linear = nn.Linear(widths[-1], 1)
        nn.init.xavier_uniform_(linear.weight)
        self.linear = spectral_norm(linear)
        self.embed = nn.Embedding(n_classes, widths[-1])
        nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x: B x 1 x H x W in [-1, 1]; y: LongTensor[B] class -> logits: B (unbounded, real > 0)."""
        h = torch.relu(self.blocks(x)).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)
