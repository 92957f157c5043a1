"""Stored slices <-> source voxels: ROI crop, in-plane resampling and the exact inverse (``paste_back``).

A :class:`CaseGeometry` says where every pixel of a case's stored slices comes from in the source volume, in the
source file's own voxel indices (no reorientation of the file, no world-space guessing):

* ``slice_axis``: the stored axis closest to superior-inferior (nibabel ``io_orientation``); stored slice ``n``
  is the source plane at index ``slice_index[n]`` along it (the file's own order, e.g. the first axis for KiTS);
* the stored slice is shown in radiological display orientation (rows anterior -> posterior, columns patient
  right -> left). ``row_axis`` / ``col_axis`` are the source axes closest to anterior-posterior / left-right,
  and stored pixel (row, col) sits at the continuous source voxel index
  ``row_map[0] * row + row_map[1]`` along ``row_axis`` and ``col_map[0] * col + col_map[1]`` along ``col_axis``
  (a scale = stored spacing / source spacing, negative when the axis is flipped for display, and the crop
  offset). Source voxel centres are at integer indices; stored pixel centres at integer (row, col).
* images are resampled linearly (``scipy.ndimage.affine_transform``, diagonal matrix, outside the volume
  -1024 HU); masks by nearest neighbour (the source voxel whose centre is nearest).

:func:`paste_back` is the inverse for masks: every source voxel of a stored slice takes the stored pixel nearest
to its centre; voxels outside the crop box and planes that were not stored are False. The round trip
``paste_back(g, stored_masks(g, mask)) == mask`` holds voxel-exactly on the stored planes inside the box when
the stored spacing is not coarser than the source's (``|row_map[0]| <= 1`` and ``|col_map[0]| <= 1``); when
the store is coarser (downsampled) the result is the nearest stored pixel, i.e. resolution is lost, not shifted.

Oblique affines are handled like any other: the stored planes are the file's own voxel planes (never resampled
across planes), so an oblique scan stays on its own grid; the world position of a stored pixel is
:func:`pixel_affine`. Serialisation: :meth:`CaseGeometry.to_json` / :meth:`CaseGeometry.from_json`
(``geometry.json`` in the store, see :mod:`coinseg.data.store`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

AIR_HU = -1024.0


@dataclass
class CaseGeometry:
    """Geometry of one case's stored slices (see the module docstring). All indices are 0-based.

    ``source``: absolute path of the source image (file or DICOM folder); ``source_shape``/``source_affine``:
    its voxel array shape and 4x4 voxel -> RAS+ mm affine; ``stored_shape``: (H, W) of a stored slice;
    ``spacing_mm``: (row, col) spacing of stored pixels; ``crop_box``: for reading only, the source index range
    [lo, hi] (continuous, pixel centres) covered along ``row_axis`` then ``col_axis``; ``mode``: "roi" or
    "full"; ``extra``: free notes (e.g. injection parameters).
    """

    case: str
    source: str
    source_shape: tuple[int, int, int]
    source_affine: list[list[float]]
    slice_axis: int
    row_axis: int
    col_axis: int
    row_map: tuple[float, float]
    col_map: tuple[float, float]
    stored_shape: tuple[int, int]
    spacing_mm: tuple[float, float]
    mode: str
    slice_index: list[int] = field(default_factory=list)
    crop_box: list[list[float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseGeometry:
        values = dict(data)
        for key in ("source_shape", "row_map", "col_map", "stored_shape", "spacing_mm"):
            values[key] = tuple(values[key])
        return cls(**values)

    @property
    def affine(self) -> np.ndarray:
        """The source affine as a 4x4 float64 array (the one to write pasted-back masks with)."""
        return np.asarray(self.source_affine, dtype=np.float64)


def display_axes(affine: np.ndarray) -> tuple[int, int, bool, int, bool]:
    """(slice_axis, row_axis, row_reversed, col_axis, col_reversed) of a voxel array with ``affine``.

    Display rows run anterior -> posterior and columns patient right -> left; ``*_reversed`` is True when the
    stored index runs the other way (then display index = n - 1 - stored index).
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    by_world = {int(ornt[i, 0]): (i, float(ornt[i, 1])) for i in range(3)}
    (col_axis, col_flip), (row_axis, row_flip), (slice_axis, _) = by_world[0], by_world[1], by_world[2]
    # RAS+: a stored index increasing towards R (flip +1) or A (flip +1) runs against the display direction.
    return slice_axis, row_axis, row_flip > 0, col_axis, col_flip > 0


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Length in mm of one voxel step along each stored axis (3 floats)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def in_plane_area_mm2(affine: np.ndarray, slice_axis: int) -> float:
    """Area in mm^2 of one voxel face in the plane normal to ``slice_axis`` (exact for oblique affines)."""
    a, b = (i for i in range(3) if i != slice_axis)
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    return float(np.linalg.norm(np.cross(m[:, a], m[:, b])))


def _axis_map(n_source: int, reversed_: bool, centre: float, n_out: int, scale: float) -> tuple[float, float]:
    """(s, t) with source index = s * out + t, for ``n_out`` pixels of ``scale`` source voxels centred at display
    coordinate ``centre``; t is snapped to an integer at scale 1 so the nearest-neighbour round trip has no ties."""
    start = centre - scale * (n_out - 1) / 2.0  # display coordinate of output pixel 0
    s, t = (-scale, n_source - 1 - start) if reversed_ else (scale, start)
    if abs(scale - 1.0) < 1e-9:
        s, t = math.copysign(1.0, s), float(round(t))
    return float(s), float(t)


def plan_geometry(
    case: str,
    source: str,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    region: np.ndarray | None,
    margin_mm: float,
    spacing_mm: float | None,
) -> CaseGeometry:
    """The geometry of a case, before choosing which planes to store (``slice_index`` empty).

    ``region``: bool array of the source shape (organ and lesion voxels): with it, mode "roi": one square box
    per case, the in-plane bounding box of ``region`` over all planes plus ``margin_mm`` per side, resampled to
    ``spacing_mm`` (required). Without it, mode "full": the whole plane, resampled to ``spacing_mm`` when given
    (pixel-area aligned), else kept at the source grid (only flipped/transposed for display).
    """
    slice_axis, row_axis, row_rev, col_axis, col_rev = display_axes(affine)
    spacing = voxel_spacing(affine)
    n_rows, n_cols = shape[row_axis], shape[col_axis]
    sr, sc = float(spacing[row_axis]), float(spacing[col_axis])
    if region is not None:
        if spacing_mm is None or spacing_mm <= 0:
            raise ValueError("ROI mode needs a positive --spacing-mm")
        other = tuple(i for i in range(3) if i not in (row_axis, col_axis))
        rows_hit = np.flatnonzero(region.any(axis=tuple(sorted(other + (col_axis,)))))
        cols_hit = np.flatnonzero(region.any(axis=tuple(sorted(other + (row_axis,)))))
        if rows_hit.size == 0:
            raise ValueError(f"{case}: empty organ region, no ROI to crop")
        u = (n_rows - 1 - rows_hit) if row_rev else rows_hit
        v = (n_cols - 1 - cols_hit) if col_rev else cols_hit
        side_mm = max((u.max() - u.min() + 1) * sr, (v.max() - v.min() + 1) * sc) + 2.0 * margin_mm
        n_out = int(math.ceil(side_mm / spacing_mm))
        row_map = _axis_map(n_rows, row_rev, (u.min() + u.max()) / 2.0, n_out, spacing_mm / sr)
        col_map = _axis_map(n_cols, col_rev, (v.min() + v.max()) / 2.0, n_out, spacing_mm / sc)
        stored = (n_out, n_out)
        out_spacing = (float(spacing_mm), float(spacing_mm))
        mode = "roi"
    else:
        h = n_rows if spacing_mm is None else max(1, round(n_rows * sr / spacing_mm))
        w = n_cols if spacing_mm is None else max(1, round(n_cols * sc / spacing_mm))
        row_map = _axis_map(n_rows, row_rev, (n_rows - 1) / 2.0, h, n_rows / h)
        col_map = _axis_map(n_cols, col_rev, (n_cols - 1) / 2.0, w, n_cols / w)
        stored = (h, w)
        out_spacing = (sr * n_rows / h, sc * n_cols / w)
        mode = "full"
    box = [
        sorted([row_map[1], row_map[0] * (stored[0] - 1) + row_map[1]]),
        sorted([col_map[1], col_map[0] * (stored[1] - 1) + col_map[1]]),
    ]
    return CaseGeometry(
        case=case,
        source=source,
        source_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        source_affine=np.asarray(affine, dtype=np.float64).tolist(),
        slice_axis=slice_axis,
        row_axis=row_axis,
        col_axis=col_axis,
        row_map=row_map,
        col_map=col_map,
        stored_shape=stored,
        spacing_mm=out_spacing,
        mode=mode,
        crop_box=box,
    )


def planes(data: np.ndarray, geometry: CaseGeometry, index: list[int] | np.ndarray) -> np.ndarray:
    """Source planes ``index`` along the slice axis, as (len(index), n_row_axis, n_col_axis) (a copy)."""
    order = (geometry.slice_axis, geometry.row_axis, geometry.col_axis)
    return np.transpose(data, order)[np.asarray(index, dtype=np.intp)]


def _nearest(n_out: int, mapping: tuple[float, float], n_source: int) -> tuple[np.ndarray, np.ndarray]:
    """(output pixels inside the source, their nearest source index) along one axis."""
    src = np.floor(mapping[0] * np.arange(n_out) + mapping[1] + 0.5).astype(np.intp)
    inside = (src >= 0) & (src < n_source)
    return np.flatnonzero(inside), src[inside]


def stored_masks(data: np.ndarray, geometry: CaseGeometry) -> np.ndarray:
    """A source mask (bool/label array of the source shape) on the stored slices: (N, H, W) bool, nearest."""
    stack = planes(data, geometry, geometry.slice_index) != 0
    out = np.zeros((len(geometry.slice_index), *geometry.stored_shape), dtype=bool)
    rows_out, rows_src = _nearest(geometry.stored_shape[0], geometry.row_map, stack.shape[1])
    cols_out, cols_src = _nearest(geometry.stored_shape[1], geometry.col_map, stack.shape[2])
    out[:, rows_out[:, None], cols_out[None, :]] = stack[:, rows_src[:, None], cols_src[None, :]]
    return out


def stored_images(data: np.ndarray, geometry: CaseGeometry, chunk: int = 32) -> np.ndarray:
    """The source image on the stored slices: (N, H, W) float32 HU, bilinear in-plane, -1024 HU outside."""
    h, w = geometry.stored_shape
    out = np.empty((len(geometry.slice_index), h, w), dtype=np.float32)
    exact = all(abs(abs(m[0]) - 1.0) < 1e-9 and float(m[1]).is_integer() for m in (geometry.row_map, geometry.col_map))
    for start in range(0, len(geometry.slice_index), chunk):
        stack = planes(data, geometry, geometry.slice_index[start : start + chunk])
        target = out[start : start + len(stack)]
        if exact:  # a pure flip/crop: copy voxels, no interpolation
            target.fill(AIR_HU)
            rows_out, rows_src = _nearest(h, geometry.row_map, stack.shape[1])
            cols_out, cols_src = _nearest(w, geometry.col_map, stack.shape[2])
            target[:, rows_out[:, None], cols_out[None, :]] = stack[:, rows_src[:, None], cols_src[None, :]]
        else:
            ndimage.affine_transform(
                stack.astype(np.float32, copy=False),
                np.array([1.0, geometry.row_map[0], geometry.col_map[0]]),
                offset=np.array([0.0, geometry.row_map[1], geometry.col_map[1]]),
                output_shape=target.shape,
                output=target,
                order=1,
                mode="constant",
                cval=AIR_HU,
            )
    return out


def paste_back(geometry: CaseGeometry, masks: np.ndarray) -> np.ndarray:
    """Stored-slice masks (N x H x W, nonzero = in) -> bool array of ``geometry.source_shape``.

    Write it with ``geometry.affine`` (e.g. ``nibabel.Nifti1Image(out.astype(np.uint8), geometry.affine)``) and
    it overlays the source file voxel for voxel. Each source voxel of a stored plane takes the stored pixel
    nearest its centre; everything else is False.
    """
    return paste_back_values(geometry, np.asarray(masks) != 0, False)


def paste_back_values(geometry: CaseGeometry, values: np.ndarray, fill: float | bool = 0.0) -> np.ndarray:
    """Stored-slice values (N x H x W, e.g. a float difference map) -> array of ``geometry.source_shape`` and
    the values' dtype, by the same nearest-pixel rule as :func:`paste_back`; ``fill`` outside the stored planes
    and the crop box."""
    values = np.asarray(values)
    expected = (len(geometry.slice_index), *geometry.stored_shape)
    if values.shape != expected:
        raise ValueError(f"{geometry.case}: stored arrays of shape {values.shape}, the store holds {expected}")
    n_slice, n_row, n_col = (
        geometry.source_shape[a] for a in (geometry.slice_axis, geometry.row_axis, geometry.col_axis)
    )
    out = np.full((n_slice, n_row, n_col), fill, dtype=values.dtype)
    src_rows, out_rows = _inverse(n_row, geometry.row_map, geometry.stored_shape[0])
    src_cols, out_cols = _inverse(n_col, geometry.col_map, geometry.stored_shape[1])
    index = np.asarray(geometry.slice_index, dtype=np.intp)
    out[index[:, None, None], src_rows[None, :, None], src_cols[None, None, :]] = values[
        :, out_rows[:, None], out_cols[None, :]
    ]
    order = (geometry.slice_axis, geometry.row_axis, geometry.col_axis)
    return np.transpose(out, np.argsort(order))


def _inverse(n_source: int, mapping: tuple[float, float], n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(source indices covered, the stored pixel nearest each) along one axis."""
    src = np.arange(n_source)
    out = np.floor((src - mapping[1]) / mapping[0] + 0.5).astype(np.intp)
    inside = (out >= 0) & (out < n_out)
    return src[inside], out[inside]


def pixel_affine(geometry: CaseGeometry, n: int) -> np.ndarray:
    """4x4 matrix: (row, col, 0, 1) of stored slice ``n`` -> RAS+ mm (third column: one source plane step)."""
    to_voxel = np.zeros((4, 4))
    to_voxel[geometry.row_axis, 0] = geometry.row_map[0]
    to_voxel[geometry.col_axis, 1] = geometry.col_map[0]
    to_voxel[geometry.slice_axis, 2] = 1.0
    to_voxel[geometry.row_axis, 3] = geometry.row_map[1]
    to_voxel[geometry.col_axis, 3] = geometry.col_map[1]
    to_voxel[geometry.slice_axis, 3] = geometry.slice_index[n]
    to_voxel[3, 3] = 1.0
    return geometry.affine @ to_voxel
