"""Organ-centred inputs of 2-D slices: the organ alone, crops around it, and the exact way back.

With ``data.organ_only`` (the quick profile's default; off in the paper profile) and an ``organ`` mask on every
row, every pixel farther than ``ORGAN_RIM_PX`` pixels from the slice's organ is set to the window's floor before
the networks see the slice (:func:`blank_outside`), so the classifier looks for lesions in the organ only and
the GAN edits it only (on the generalization suite's real CT the classifier's AUROC went 0.77 -> 0.97;
``benchmarks/RESULTS.md``).

With ``data.organ_margin`` set (0.1 in the quick profile, None in the paper profile) and an ``organ`` mask on
every row of a plain manifest, the networks see a box around the organ instead of the whole slice, so a lesion
is larger in their input (on the generalization suite's real CT, a kidney lesion of 8-20 mm is 1.3-3.4 px wide
when the whole 244 px slice is squeezed to 64 px; the perfect counterfactual then reaches pooled IoU 0.38,
against 0.50 through the square box; with the organ-only input it raised pixel AP on every suite run with an
organ column: see ``benchmarks/RESULTS.md``).

The box has one size for the whole run, in pixels, chosen on the training split (:func:`fit_crop`): a square
with the longest side of any training organ's bounding box, widened by ``margin`` of it on each side. Each slice
is cut at that size around the centre of its own organ's bounding box (the image's centre when the slice holds
no organ pixel), shifted to lie inside the image and clipped to the image where the image is smaller. The box
is then resized to the network size like a whole slice (square, so undistorted unless clipped).

With ``data.organ_parts`` as well, each connected component of a slice's organ (each kidney of a pair) is a
network input of its own: the box's side is the longest training *component* extent, +margin, and each component's
box is centred on that component (:meth:`OrganCrop.regions`). For a paired organ the whole-organ box spans both
and the space between them (188 of 256 px on the generalization suite's small-lesion member), so it hardly
magnifies; one box per kidney magnifies 2-4x more (``benchmarks/RESULTS.md``, *One input per organ component*).

The way back (:meth:`OrganCrop.paste`): a map at the box's resolution goes back into a zero map of the slice's
own size at the box's integer pixel offsets, so a pixel (r, c) of the box is pixel (r + top, c + left) of the
slice, exactly. Slices of a ``coinseg prepare`` store are organ-centred by ``prepare`` already (with a margin in
mm) and are not cropped again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]  # top, left, height, width in pixels of the slice
ORGAN_RIM_PX = 2  # pixels of the slice around its organ that an organ-only input keeps: the organ's edge


def blank_outside(array: np.ndarray, organ: np.ndarray) -> np.ndarray:
    """``array`` (H x W, HU or grey) as float32 with every pixel farther than ``ORGAN_RIM_PX`` pixels (4-connected
    steps) from ``organ`` (H x W, nonzero = organ) set to -inf, which any window clips to its floor (-1 after
    normalisation). An empty organ blanks the whole slice."""
    keep = ndimage.binary_dilation(organ != 0, iterations=ORGAN_RIM_PX)
    return np.where(keep, array, -np.inf).astype(np.float32)


@dataclass(frozen=True)
class OrganCrop:
    """Box size in pixels: ``height`` x ``width`` (at least 1 each); ``parts``: one box per connected component of
    a slice's organ instead of one around the whole organ."""

    height: int
    width: int
    parts: bool = False

    def regions(self, organ: np.ndarray) -> list[np.ndarray]:
        """What each network input of a slice is about, from its organ mask (H x W, nonzero = organ), as bool
        masks of its shape: the whole organ (one input); with ``parts``, each 4-connected component of it, in
        scan order (one input each; the whole, empty organ when it has no pixel)."""
        whole = organ != 0
        if not self.parts:
            return [whole]
        labelled, n = ndimage.label(whole)
        return [labelled == i for i in range(1, n + 1)] or [whole]

    def box(self, organ: np.ndarray) -> Box:
        """The box of one slice, from its organ mask (H x W, nonzero = organ): centred on the organ's bounding
        box (on the image when empty), inside the image, at most the image's size."""
        rows, cols = np.flatnonzero(organ.any(axis=1)), np.flatnonzero(organ.any(axis=0))
        h, w = min(self.height, organ.shape[0]), min(self.width, organ.shape[1])
        if rows.size:
            centre_r, centre_c = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
        else:
            centre_r, centre_c = organ.shape[0] / 2, organ.shape[1] / 2
        top = int(np.clip(round(centre_r - h / 2), 0, organ.shape[0] - h))
        left = int(np.clip(round(centre_c - w / 2), 0, organ.shape[1] - w))
        return top, left, h, w

    @staticmethod
    def cut(array: np.ndarray, box: Box) -> np.ndarray:
        """The box's pixels of a 2-D array (a view)."""
        top, left, h, w = box
        return array[top : top + h, left : left + w]

    @staticmethod
    def paste(values: np.ndarray, box: Box, shape: tuple[int, ...]) -> np.ndarray:
        """A map at the box's size (h x w) back into a zero float32 map of the slice's ``shape`` (H x W)."""
        top, left, h, w = box
        if values.shape != (h, w):
            raise ValueError(f"values of shape {values.shape} do not fit a box of {h} x {w}")
        out = np.zeros(shape, np.float32)
        out[top : top + h, left : left + w] = values
        return out

    def to_json(self) -> dict[str, int | bool]:
        return {"height": self.height, "width": self.width, "parts": self.parts}

    @classmethod
    def from_json(cls, value: dict[str, int | bool] | list[int] | None) -> OrganCrop | None:
        """The crop a checkpoint records: None (whole slices), a dict (:meth:`to_json`), or [height, width] (runs
        trained before ``parts``)."""
        if value is None:
            return None
        if isinstance(value, list):
            return cls(int(value[0]), int(value[1]))
        return cls(int(value["height"]), int(value["width"]), bool(value.get("parts", False)))


def slice_max(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per slice, the largest of its inputs' ``values`` (M, float): ``owner`` (M ints in [0, n)) is each input's
    slice; every slice must own at least one input (each has one region at least, :meth:`OrganCrop.regions`)."""
    out = np.full(n, -np.inf, dtype=values.dtype)
    np.maximum.at(out, owner, values)
    if np.isneginf(out).any():
        raise ValueError("a slice has no network input")
    return out


def fit_crop(organs: Iterable[np.ndarray], margin: float, parts: bool = False) -> OrganCrop | None:
    """The box size for a run: a square whose side is the longest organ bounding-box side over ``organs`` (H x W
    masks of the training slices; with ``parts``, over each one's connected components, :meth:`OrganCrop.regions`),
    widened by ``margin`` (a fraction of it) on both sides and rounded up. Square, so the network sees the organ
    undistorted: a box of the organs' own aspect (e.g. 53 x 168 px for two kidneys), squeezed to the network's
    square input, let the GAN hide lesions by re-lighting the whole organ (``benchmarks/RESULTS.md``). None when no
    slice holds an organ pixel."""
    height = width = 0
    splitter = OrganCrop(1, 1, parts)
    for organ in organs:
        for region in splitter.regions(organ):
            rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
            if rows.size:
                height, width = max(height, int(rows[-1] - rows[0] + 1)), max(width, int(cols[-1] - cols[0] + 1))
    if not height:
        return None
    side = int(np.ceil(max(height, width) * (1 + 2 * margin)))
    return OrganCrop(side, side, parts)
