"""Robust reading of one DICOM CT series from a folder.

Every file in the folder is tried (names need no ``.dcm`` suffix); files pydicom cannot parse as DICOM, or
DICOM files without image position (e.g. a DICOMDIR, a report), are skipped and listed in
:attr:`DicomSeries.skipped`. A folder holding several series (``SeriesInstanceUID``) is an error listing them,
unless one is chosen with ``series_uid``.

Returned geometry: ``data`` is X x Y x Z float32 HU (rescale slope/intercept applied), axis 0 = DICOM column
index, axis 1 = DICOM row index, axis 2 = slices sorted by position along the slice normal; ``affine`` maps
those voxel indices to RAS+ world millimetres (NIfTI convention), as nibabel would write it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coinseg.io.images import ImageReadError


@dataclass
class DicomSeries:
    """``data``: X x Y x Z float32 HU; ``affine``: 4x4 voxel -> RAS+ mm; ``skipped``: files that were not
    image slices of a series (with the reason); ``uid``: the SeriesInstanceUID read."""

    data: np.ndarray
    affine: np.ndarray
    uid: str
    skipped: list[str] = field(default_factory=list)


def _headers(folder: Path) -> tuple[dict[str, list[tuple[Path, Any]]], list[str]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ImageReadError(f"{folder}: empty folder, expected a DICOM series")
    series: dict[str, list[tuple[Path, Any]]] = {}
    skipped: list[str] = []
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            skipped.append(f"{file.name} (not DICOM: {type(exc).__name__})")
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            skipped.append(f"{file.name} (DICOM without image position/orientation)")
            continue
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append((file, ds))
    return series, skipped


def read_series(folder: Path, series_uid: str | None = None) -> DicomSeries:
    """Read the series in ``folder`` (or the one with ``series_uid``). Raises :class:`ImageReadError` naming
    the folder: no image slices, several series without a choice (all listed), an unknown ``series_uid``,
    slices of different orientation or size."""
    import pydicom

    series, skipped = _headers(folder)
    if not series:
        raise ImageReadError(f"{folder}: no DICOM image slices found (skipped: {', '.join(skipped) or 'nothing'})")
    if series_uid is None and len(series) > 1:
        listing = "; ".join(
            f"{uid} ({len(items)} files, {getattr(items[0][1], 'SeriesDescription', '') or 'no description'})"
            for uid, items in sorted(series.items())
        )
        raise ImageReadError(f"{folder}: {len(series)} DICOM series in one folder, choose one with --series: {listing}")
    uid = series_uid if series_uid is not None else next(iter(series))
    if uid not in series:
        raise ImageReadError(f"{folder}: no series {uid!r} (found: {', '.join(sorted(series))})")
    items = series[uid]
    orientation = np.array([float(v) for v in items[0][1].ImageOrientationPatient])
    # ImageOrientationPatient: direction of increasing column index, then of increasing row index (LPS).
    along_cols, along_rows = orientation[:3], orientation[3:]
    normal = np.cross(along_cols, along_rows)
    slices = []
    for file, ds in items:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-4):
            raise ImageReadError(f"{file}: orientation differs from the rest of series {uid}")
        slices.append((file, np.array([float(v) for v in ds.ImagePositionPatient])))
    slices.sort(key=lambda s: float(s[1] @ normal))
    first = items[0][1]
    spacing_r, spacing_c = (float(v) for v in first.PixelSpacing)
    dz = float((slices[-1][1] - slices[0][1]) @ normal) / (len(slices) - 1) if len(slices) > 1 else 1.0
    affine = np.eye(4)
    affine[:3, 0] = along_cols * spacing_c  # array axis 0 = DICOM column index
    affine[:3, 1] = along_rows * spacing_r  # array axis 1 = DICOM row index
    affine[:3, 2] = normal * dz
    affine[:3, 3] = slices[0][1]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS world (DICOM) -> RAS world (NIfTI)
    pixels: list[np.ndarray] = []
    for file, _ in slices:
        try:
            ds = pydicom.dcmread(file)
            plane = ds.pixel_array.astype(np.float32).T  # (cols, rows)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is reported as unreadable
            raise ImageReadError(f"{file}: unreadable DICOM pixel data ({type(exc).__name__}: {exc})") from None
        if pixels and plane.shape != pixels[0].shape:
            raise ImageReadError(f"{file}: slice size {plane.shape[::-1]} differs from the rest of series {uid}")
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        pixels.append(plane * slope + intercept)
    return DicomSeries(np.stack(pixels, axis=-1), affine, uid, skipped)
