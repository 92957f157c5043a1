"""Per-volume lesion montage: the slices holding the most lesion, truth and prediction overlaid as in the
paper's Figure 2 (true positive green, false positive red, false negative yellow; the colours of :func:`coinseg.reporting.figures.overlay`). Written atomically like every coinseg figure.

With the volume's affine, panels are axial slices in the radiological convention (patient's right on the image's
left, anterior up), whatever the file's voxel order; panel labels give the slice index along the file's own
stored axis. Without it, panels show the stored planes along ``axis`` (first array axis to the right).
"""

from __future__ import annotations

from pathlib import Path

import nibabel.orientations as nio
import numpy as np
from matplotlib.figure import Figure

from coinseg.reporting.figures import DPI, _clear_axis, _save_png, overlay

ABDOMEN_WINDOW_HU = (-160.0, 240.0)  # level 40, width 400: the usual soft-tissue window for kidneys


def montage_slices(pred: np.ndarray, truth: np.ndarray | None, n_slices: int, axis: int = 2) -> list[int]:
    """The indices along ``axis`` of the slices to show, ascending.

    Slices are ranked by true-lesion voxels, then by predicted voxels (so slices with only false positives
    come after every slice with a true lesion); slices with neither are never chosen. Without any lesion or
    prediction, the middle slice alone is returned.

    Args:
        pred: boolean ``I x J x K`` predicted mask.
        truth: boolean ground truth of the same shape, or None.
        n_slices: at most this many slices (>= 1).
        axis: the slice axis (2: the file's third axis, axial for most NIfTI files).
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    p = np.asarray(pred, dtype=bool)
    other = tuple(a for a in range(p.ndim) if a != axis)
    pred_count = p.sum(axis=other)
    true_count = np.zeros_like(pred_count) if truth is None else np.asarray(truth, dtype=bool).sum(axis=other)
    candidates = np.flatnonzero((true_count > 0) | (pred_count > 0))
    if candidates.size == 0:
        return [p.shape[axis] // 2]
    order = sorted(candidates.tolist(), key=lambda k: (-int(true_count[k]), -int(pred_count[k]), k))
    return sorted(order[:n_slices])


def _display(plane: np.ndarray) -> np.ndarray:
    """Voxel plane (first axis = i, second = j) -> display orientation: j upward, i to the right."""
    return np.rot90(plane)


def _lesion_box(preds: list[np.ndarray], truths: list[np.ndarray | None]) -> tuple[slice, slice] | None:
    """A square crop of the display planes around every predicted or true voxel of the chosen slices, with a
    margin of the box's own size (at least 16 pixels) so the organ around stays visible; None without lesion."""
    shape: tuple[int, ...] = tuple(preds[0].shape)
    union = np.zeros(shape, dtype=bool)
    for pk, tk in zip(preds, truths, strict=True):
        union |= pk if tk is None else (pk | tk)
    if not union.any():
        return None
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    half = int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1, 16))  # half-width = the box size
    box = []
    for first, last, n in ((rows[0], rows[-1], shape[0]), (cols[0], cols[-1], shape[1])):
        start = int(max(0, min(round((first + last) / 2.0 - half), n - 2 * half)))
        box.append(slice(start, min(n, start + 2 * half)))
    return box[0], box[1]


def _to_ras(arrays: list[np.ndarray], affine: np.ndarray) -> tuple[list[np.ndarray], int, bool]:
    """Reorder arrays to the closest RAS voxel order, then flip the first axis (right on the image's left).

    Returns:
        ``(arrays, stored_axis, reversed)``: the stored axis that became the superior axis, and whether its
        index runs backwards (so the stored index of display slice k is ``K - 1 - k``).
    """
    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    out = [nio.apply_orientation(a, ornt)[::-1] for a in arrays]
    stored_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return out, stored_axis, bool(ornt[stored_axis, 1] < 0)


def lesion_montage(
    ct: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray | None,
    path: Path,
    n_slices: int = 6,
    axis: int = 2,
    window_hu: tuple[float, float] = ABDOMEN_WINDOW_HU,
    title: str | None = None,
    affine: np.ndarray | None = None,
    crop: bool = True,
) -> Path:
    """Write one volume's montage PNG: one panel per chosen slice (:func:`montage_slices`), labelled with its
    index along ``axis`` in the file's stored order.

    Args:
        ct: ``I x J x K`` CT in HU (any float or int dtype).
        pred: boolean predicted mask of the same shape.
        truth: boolean ground truth of the same shape, or None (the prediction is then drawn red).
        path: PNG to write (atomically).
        n_slices: at most this many panels.
        axis: slice axis.
        window_hu: ``(low, high)`` grey window in HU.
        title: optional figure title (e.g. the case id and its Dice).
        affine: the volume's ``4 x 4`` voxel-to-world (RAS mm) affine; given, panels are radiological axial
            slices and ``axis`` is ignored (see the module docstring).
        crop: show a square around the lesions of the chosen slices (:func:`_lesion_box`), the same for every
            panel, instead of whole slices.

    Returns:
        ``path``.
    """
    image = np.asarray(ct)
    p = np.asarray(pred, dtype=bool)
    t = None if truth is None else np.asarray(truth, dtype=bool)
    if image.ndim != 3 or p.shape != image.shape or (t is not None and t.shape != image.shape):
        shapes = (image.shape, p.shape, None if t is None else t.shape)
        raise ValueError(f"lesion_montage: ct, pred and truth must be 3-D of one shape, got {shapes}")
    low, high = window_hu
    if not high > low:
        raise ValueError(f"window_hu must be (low, high) with high > low, got {window_hu}")
    stored_axis, backwards = axis, False
    if affine is not None:
        arrays, stored_axis, backwards = _to_ras([image, p] + ([] if t is None else [t]), affine)
        image, p, t = arrays[0], arrays[1], (None if t is None else arrays[2])
        axis = 2
    chosen = montage_slices(p, t, n_slices, axis)
    depth = p.shape[axis]

    greys, preds, truths = [], [], []
    for k in chosen:
        greys.append(_display((np.take(image, k, axis=axis).astype(np.float64) - low) / (high - low)))
        preds.append(_display(np.take(p, k, axis=axis)))
        truths.append(None if t is None else _display(np.take(t, k, axis=axis)))
    box = _lesion_box(preds, truths) if crop else None
    panels = []
    for grey, pk, tk in zip(greys, preds, truths, strict=True):
        if box is not None:
            grey, pk, tk = grey[box], pk[box], (None if tk is None else tk[box])
        # no outline: it would hide the fill of lesions a few voxels wide (TP + FN already show the truth)
        panels.append(overlay(grey, pk, tk, outline=False))

    cell_in = 2.4
    title_in = 0.35 if title else 0.0
    label_in = 0.25
    fig = Figure(figsize=(cell_in * len(panels), cell_in + label_in + title_in), dpi=DPI)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    fig.subplots_adjust(
        left=0.005,
        right=0.995,
        bottom=label_in / fig.get_figheight(),
        top=1.0 - title_in / fig.get_figheight(),
        wspace=0.03,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    for ax, k, panel in zip(axes, chosen, panels, strict=True):
        ax.imshow(panel, interpolation="nearest")
        _clear_axis(ax)
        ax.set_xlabel(f"slice {depth - 1 - k if backwards else k} (axis {stored_axis})", fontsize=8)
    return _save_png(fig, Path(path))
