"""The counterfactual map I(x, c) = fuse(x, G(E(x), c)): encoder, generator and output fusion as one module."""

from __future__ import annotations

from torch import Tensor, nn

from coinseg.config import Fusion
from coinseg.models.encoder import Encoder
from coinseg.models.generator import Generator, fuse


class Inpainter(nn.Module):
    """x (B x 1 x H x W in [-1, 1]) and a condition c (LongTensor[B], 0 = normal) -> x_cf in [-1, 1]."""

    def __init__(self, encoder: Encoder, generator: Generator, fusion: Fusion) -> None:
        super().__init__()
        self.encoder = encoder
        self.generator = generator
        self.fusion = Fusion(fusion)

    def forward(self, x: Tensor, c: Tensor, features: list[Tensor] | None = None) -> Tensor:
        """``features``: E(x) if already computed (reused for a second condition on the same x)."""
        feats = self.encoder(x) if features is None else features
        return fuse(x, self.generator(feats, c), self.fusion)
