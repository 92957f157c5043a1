"""3-D volumes in the file's own stored voxel order, with their affine (no reorientation).

:func:`read_volume` is what ``coinseg prepare`` reads a study with: the voxel array exactly as stored (so a slice
index counts along the file's own axis) and the 4x4 voxel -> RAS+ mm affine. NIfTI via nibabel (``.nii``,
``.nii.gz``), DICOM series folders via :mod:`coinseg.io.dicom`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coinseg.io.images import ImageReadError, suffix_of


@dataclass
class Volume:
    """``data``: the stored voxel array, 3-D (dtype as stored: HU for images, labels/0-1 for masks);
    ``affine``: 4x4 float64 voxel index -> RAS+ mm; ``path``: the file or DICOM folder; ``skipped``: files of a
    DICOM folder that were not slices of the series (reason included)."""

    data: np.ndarray
    affine: np.ndarray
    path: Path
    skipped: list[str] = field(default_factory=list)


def read_volume(path: Path, series_uid: str | None = None) -> Volume:
    """Read a NIfTI file or a DICOM series folder. Raises :class:`ImageReadError` naming the file."""
    if path.is_dir():
        from coinseg.io.dicom import read_series

        series = read_series(path, series_uid)
        return Volume(series.data, series.affine, path, series.skipped)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if suffix_of(path) not in (".nii", ".nii.gz"):
        raise ImageReadError(f"{path}: expected a NIfTI volume (.nii, .nii.gz) or a DICOM series folder")
    import nibabel as nib

    try:
        img: Any = nib.load(path)
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported as unreadable
        raise ImageReadError(f"{path}: unreadable volume ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageReadError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ImageReadError(f"{path}: invalid affine (singular or not finite)")
    return Volume(data, affine, path)


def same_grid(a: Volume, b: Volume, tol_mm: float = 1e-3) -> str | None:
    """None when ``b`` lies on ``a``'s voxel grid (same shape, affines equal within ``tol_mm``), else why not."""
    if a.data.shape != b.data.shape:
        return f"shape {b.data.shape} differs from its image's {a.data.shape} ({a.path})"
    if not np.allclose(a.affine, b.affine, atol=tol_mm):
        return f"affine differs from its image's ({a.path}) by up to {np.abs(a.affine - b.affine).max():.3g} mm"
    return None
