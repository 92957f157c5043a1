"""Networks: encoder E, conditional generator G (+ output fusion), projection discriminator D, classifier f.

Plain ``nn.Module``s: no optimisers, no device logic.
"""

from __future__ import annotations

from coinseg.config import Fusion, GanConfig
from coinseg.models.classifier import Classifier, build_classifier
from coinseg.models.discriminator import Discriminator
from coinseg.models.encoder import Encoder
from coinseg.models.generator import Generator, fuse

N_CLASSES = 2


def build_encoder_generator(cfg: GanConfig) -> tuple[Encoder, Generator]:
    """E and G as set by ``cfg`` (two condition classes: 0 = normal, 1 = abnormal).

    G starts at g = 0 when the fusion makes g = 0 the identity (``clamp_add``): training then starts from
    x_cf = x instead of a random edit of every pixel, which a discriminator can win against before G learns
    the identity (measured on body-windowed data: benchmarks/RESULTS.md).
    """
    encoder = Encoder(cfg.stem_width, cfg.enc_widths, cfg.sn_shortcut)
    zero_head = cfg.fusion is Fusion.clamp_add
    generator = Generator(cfg.enc_widths, cfg.skips, N_CLASSES, cfg.upsample, cfg.sn_shortcut, zero_head)
    return encoder, generator


def build_discriminator(cfg: GanConfig) -> Discriminator:
    """The projection discriminator D as set by ``cfg`` (training only; inference never builds it)."""
    return Discriminator(cfg.disc_widths, cfg.disc_down, N_CLASSES)


__all__ = [
    "Classifier",
    "Discriminator",
    "Encoder",
    "Generator",
    "build_classifier",
    "build_discriminator",
    "build_encoder_generator",
    "fuse",
]
