"""Manifest entries -> in-memory slice tensors at the profile size (a frozen, pre-extracted slice set).

All slices of a split are read once, cut to the run's organ-centred box when it has one
(:mod:`coinseg.data.crop`; one input per component of the slice's organ when the crop is by parts), normalised
with the stored window and resized to ``size x size`` (bilinear, antialiased; the aspect ratio is not kept, as in
the paper). Original sizes are kept so masks can be mapped back
to each input's own resolution.

A large split held in memory-mapped ``.npy`` stores (``coinseg prepare``) is not loaded: its ``images`` is a
:class:`LazySlices` view that reads, normalises and resizes only the slices indexed, so RSS does not grow with
the number of slices (above ``LAZY_BYTES`` of float32 tensors; smaller splits stay in memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from coinseg.data.crop import OrganCrop, blank_outside, fit_crop, slice_max
from coinseg.data.manifest import Entry, ManifestError
from coinseg.data.normalise import fingerprint_window, normalise
from coinseg.io.images import Image, ImageReadError, intensity_for, read_image, suffix_of

LAZY_BYTES = 512 * 2**20
WINDOW_SLICES = 2000


class LazySlices:
    """N x 1 x S x S float32 in [-1, 1], read on indexing: ``view[idx]`` with a LongTensor of indices, a slice
    or an int (like a tensor: B x 1 x S x S, or 1 x S x S for an int); ``len(view)`` = N. Input i is region
    ``parts[i]`` of ``entries[i]`` (:meth:`coinseg.data.crop.OrganCrop.regions`)."""

    def __init__(
        self,
        entries: list[Entry],
        size: int,
        window: tuple[float, float] | None,
        crop: OrganCrop | None = None,
        organ_only: bool = False,
        parts: list[int] | None = None,
    ) -> None:
        self.entries, self.size, self.window, self.crop, self.organ_only = entries, size, window, crop, organ_only
        self.parts = parts or [0] * len(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: torch.Tensor | slice | int) -> torch.Tensor:
        if isinstance(index, int):
            return self[torch.tensor([index])][0]
        positions = range(len(self.entries))[index] if isinstance(index, slice) else index.tolist()
        out = torch.empty(len(positions), 1, self.size, self.size)
        for i, position in enumerate(positions):
            entry, part = self.entries[position], self.parts[position]
            out[i] = entry_tensor(entry, self.size, self.window, self.crop, self.organ_only, part)[0]
        return out


@dataclass
class SliceSet:
    """N network inputs: ``images``: N x 1 x S x S float32 in [-1, 1] (a tensor, or a :class:`LazySlices` view
    for large stores); ``labels``: N float32 in {0, 1}; ``shapes``: original (H, W) of each input's slice;
    ``entries``: each input's manifest entry (one per entry, or one per component of its organ when the crop is
    by parts: the entry repeated, with its label)."""

    images: torch.Tensor | LazySlices
    labels: torch.Tensor
    shapes: list[tuple[int, int]]
    entries: list[Entry]

    def __len__(self) -> int:
        return len(self.entries)

    def per_slice(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label, largest value) of each slice, from ``values`` (one per input, N): the maximum over a slice's
        inputs (the components of its organ when the crop is by parts; one input per slice otherwise, returned as
        they are), slices in the order of their first input."""
        number: dict[tuple[int, int | None], int] = {}  # (manifest row, slice index) -> slice number
        owner = np.array([number.setdefault((e.row, e.slice), len(number)) for e in self.entries])
        if len(number) == len(owner):
            return self.labels.numpy(), values
        first = np.unique(owner, return_index=True)[1]
        return self.labels.numpy()[first], slice_max(values, owner, len(number))


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
    """Fingerprint window of the training entries (organ masks used when the manifest gives them); from at most
    ``WINDOW_SLICES`` evenly spaced entries."""
    chosen = train[:: -(-len(train) // WINDOW_SLICES)]  # at most WINDOW_SLICES, evenly spaced
    samples = ((read_entry(e), read_entry(e, e.organ) > 0 if e.organ is not None else None) for e in chosen)
    try:
        return fingerprint_window(samples, (percentiles[0], percentiles[1]), seed)
    except ValueError as exc:
        raise ManifestError(f"{train[0].source} and the other training rows: {exc}") from None


def read_organ(entry: Entry, shape: tuple[int, ...]) -> np.ndarray:
    """The entry's organ mask (bool, the image's ``shape``); a row without one is an error."""
    if entry.organ is None:
        raise ManifestError(f"row {entry.row} ({entry.source}): no organ mask; this run needs each slice's organ")
    organ = read_entry(entry, entry.organ) > 0
    if organ.shape != tuple(shape):
        raise ManifestError(f"row {entry.row} ({entry.organ}): organ shape {organ.shape} != image shape {shape}")
    return organ


def fit_entries_crop(train: list[Entry], margin: float, parts: bool = False) -> OrganCrop | None:
    """The organ-centred box for a run (:func:`coinseg.data.crop.fit_crop`) from every training row's organ."""
    return fit_crop((read_organ(e, _shape(e)) for e in train), margin, parts)


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
    crop: OrganCrop | None = None,
    organ_only: bool = False,
) -> SliceSet:
    """Read, blank outside the organ (``organ_only``), crop (with ``crop``), normalise (``window`` None = grey
    values) and resize every entry to ``size x size`` (each component of its organ, when ``crop`` is by parts);
    a large split of ``.npy`` files becomes a :class:`LazySlices` view instead (nothing read but the array
    headers, and the organ masks when the crop is by parts)."""
    parts: list[int] = []
    if crop is not None and crop.parts:
        inputs = [(e, k) for e in entries for k in range(len(crop.regions(read_organ(e, _shape(e)))))]
        entries, parts = [e for e, _ in inputs], [k for _, k in inputs]
    labels = torch.tensor([float(e.label) for e in entries])
    if len(entries) * size * size * 4 > LAZY_BYTES and all(suffix_of(e.image) == ".npy" for e in entries):
        shapes = [_shape(e) for e in entries]
        if progress is not None:
            progress(len(entries))
        lazy = LazySlices(list(entries), size, window, crop, organ_only, parts)
        return SliceSet(lazy, labels, shapes, list(entries))
    images = torch.empty(len(entries), 1, size, size)
    shapes = []
    for i, entry in enumerate(entries):
        images[i], shape = entry_tensor(entry, size, window, crop, organ_only, parts[i] if parts else 0)
        shapes.append(shape)
        if progress is not None:
            progress(1)
    return SliceSet(images, labels, shapes, list(entries))


def entry_tensor(
    entry: Entry,
    size: int,
    window: tuple[float, float] | None,
    crop: OrganCrop | None,
    organ_only: bool = False,
    part: int = 0,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """One entry -> (1 x S x S network input in [-1, 1], the slice's own (H, W)); blanked outside its organ
    (``organ_only``, :func:`coinseg.data.crop.blank_outside`) and cut to the organ's box (``crop``) first; with a
    crop by parts, outside and around component ``part`` of the organ (:meth:`OrganCrop.regions`)."""
    array = read_entry(entry)
    shape = (int(array.shape[0]), int(array.shape[1]))
    organ = read_organ(entry, shape) if crop is not None or organ_only else None
    if organ is not None and crop is not None:
        organ = crop.regions(organ)[part]
    if organ is not None and organ_only:
        array = blank_outside(array, organ)
    if organ is not None and crop is not None:
        array = crop.cut(array, crop.box(organ))
    return slice_tensor(array, size, window)[None], shape


def slice_tensor(array: np.ndarray, size: int, window: tuple[float, float] | None) -> torch.Tensor:
    """One H x W slice (HU or grey) -> S x S float32 in [-1, 1]."""
    unit = torch.from_numpy(normalise(array, window))[None, None]
    return resize(unit, (size, size))[0, 0].clamp_(-1.0, 1.0)


def _shape(entry: Entry) -> tuple[int, int]:
    """(H, W) of the entry's slice; of a ``.npy`` file only the header is read (a memory map)."""
    image = cached_image(entry.image)
    return int(image.array.shape[-2]), int(image.array.shape[-1])


def load_mask(entry: Entry, shape: tuple[int, int]) -> np.ndarray:
    """The entry's lesion mask (bool, original resolution); an all-False mask when the manifest gives none."""
    if entry.mask is None:
        return np.zeros(shape, dtype=bool)
    mask = read_entry(entry, entry.mask) > 0
    if mask.shape != shape:
        raise ManifestError(f"row {entry.row} ({entry.mask}): mask shape {mask.shape} != image shape {shape}")
    return mask
