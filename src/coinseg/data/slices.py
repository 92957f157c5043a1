"""Manifest entries -> in-memory slice tensors at the profile size (a frozen, pre-extracted slice set).

All slices of a split are read once, normalised with the stored window and resized to ``size x size``
(bilinear, antialiased; the aspect ratio is not kept, as in the paper). Original sizes are kept so masks can be
mapped back to each input's own resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from coinseg.data.manifest import Entry, ManifestError
from coinseg.data.normalise import fingerprint_window, normalise
from coinseg.io.images import Image, ImageReadError, intensity_for, read_image


@dataclass
class SliceSet:
    """``images``: N x 1 x S x S float32 in [-1, 1]; ``labels``: N float32 in {0, 1}; ``shapes``: original
    (H, W) of each slice; ``entries``: the manifest entries in the same order."""

    images: torch.Tensor
    labels: torch.Tensor
    shapes: list[tuple[int, int]]
    entries: list[Entry]

    def __len__(self) -> int:
        return len(self.entries)


@lru_cache(maxsize=4)
def cached_image(path: Path) -> Image:
    return read_image(path)


def read_entry(entry: Entry, path: Path | None = None) -> np.ndarray:
    """The entry's 2-D slice (or of ``path``, e.g. its mask or organ file, at the same slice index), float32."""
    target = path or entry.image
    try:
        image = cached_image(target)
    except ImageReadError as exc:
        raise ManifestError(f"row {entry.row}: {exc}") from None
    array = image.array[entry.slice] if entry.slice is not None and image.is_volume else image.array
    if array.ndim != 2:
        raise ManifestError(f"row {entry.row} ({target}): expected a 2-D slice, got shape {array.shape}")
    return array


def intensity_of(entries: list[Entry], manifest: Path) -> str:
    """ "hu" or "unit" for the whole manifest; mixing HU files with PNG/TIFF grey values is an error."""
    first = intensity_for(entries[0].image)
    for entry in entries:
        if intensity_for(entry.image) != first:
            raise ManifestError(f"{manifest}: row {entry.row} ({entry.source}) mixes grey-value images with HU images")
    return first


def compute_window(train: list[Entry], percentiles: list[float], seed: int = 0) -> tuple[float, float]:
    """Fingerprint window of the training entries (organ masks used when the manifest gives them)."""
    samples = ((read_entry(e), read_entry(e, e.organ) > 0 if e.organ is not None else None) for e in train)
    try:
        return fingerprint_window(samples, (percentiles[0], percentiles[1]), seed)
    except ValueError as exc:
        raise ManifestError(f"{train[0].source} and the other training rows: {exc}") from None


def resize(batch: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """B x C x H x W -> B x C x size; bilinear is antialiased when shrinking, nearest for masks."""
    if tuple(batch.shape[-2:]) == size:
        return batch
    if mode == "nearest":
        return F.interpolate(batch, size=size, mode="nearest")
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)


def load_slices(
    entries: list[Entry],
    size: int,
    window: tuple[float, float] | None,
    progress: Callable[[int], None] | None = None,
) -> SliceSet:
    """Read, normalise (``window`` None = grey values) and resize every entry to ``size x size``."""
    images = torch.empty(len(entries), 1, size, size)
    shapes = []
    for i, entry in enumerate(entries):
        array = normalise(read_entry(entry), window)
        shapes.append((int(array.shape[0]), int(array.shape[1])))
        images[i, 0] = resize(torch.from_numpy(array)[None, None], (size, size))[0, 0]
        if progress is not None:
            progress(1)
    labels = torch.tensor([float(e.label) for e in entries])
    return SliceSet(images.clamp_(-1.0, 1.0), labels, shapes, list(entries))


def load_mask(entry: Entry, shape: tuple[int, int]) -> np.ndarray:
    """The entry's lesion mask (bool, original resolution); an all-False mask when the manifest gives none."""
    if entry.mask is None:
        return np.zeros(shape, dtype=bool)
    mask = read_entry(entry, entry.mask) > 0
    if mask.shape != shape:
        raise ManifestError(f"row {entry.row} ({entry.mask}): mask shape {mask.shape} != image shape {shape}")
    return mask
