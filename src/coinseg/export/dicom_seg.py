"""DICOM-SEG output for DICOM-series inputs (needs the optional extra ``coinseg[dicom-seg]``: highdicom).

One binary segment, coded by default as a kidney tumour: category SCT 49755003 "Morphologically abnormal
structure", type SCT 108369006 "Neoplasm", anatomic region SCT 64033007 "Kidney" (any other SNOMED code can be
given, e.g. ``parse_code("SCT:126885006:Neoplasm of liver")``). The segment is marked as produced automatically
by the algorithm ``coinseg`` (its version), family "Artificial Intelligence", and the series description and
content description say RESEARCH USE ONLY: these weak masks are not for clinical use.

Frame order: ``mask[k]`` belongs to the k-th source slice in the series' spatial order, i.e. sorted by
``ImagePositionPatient`` projected on the slice normal (``ImageOrientationPatient`` row x column), ascending, as
:func:`sort_by_position` returns it and as :func:`coinseg.io.dicom.read_series` stacks the volume; a mask of that
volume (``X x Y x Z`` = columns x rows x slices) becomes frames with :func:`frames_from_series_volume`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coinseg import __version__
from coinseg.config import ConfigError
from coinseg.io.files import atomic_file
from coinseg.io.images import ImageReadError

RESEARCH_ONLY = "RESEARCH USE ONLY"
DEFAULT_CATEGORY = ("SCT", "49755003", "Morphologically abnormal structure")
DEFAULT_TYPE = ("SCT", "108369006", "Neoplasm")
DEFAULT_REGION = ("SCT", "64033007", "Kidney")


class DicomSegError(ImageReadError):
    """The source series or the mask cannot make a DICOM-SEG (one line naming the file or the shape)."""


class DicomSegUnavailable(ConfigError):
    """DICOM-SEG was asked for but highdicom is not installed."""


def _require_highdicom() -> None:
    if importlib.util.find_spec("highdicom") is None:
        raise DicomSegUnavailable("--dicom-seg needs highdicom: pip install 'coinseg[dicom-seg]'")


def frames_from_series_volume(volume_mask: np.ndarray) -> np.ndarray:
    """A mask on the voxel grid of :func:`coinseg.io.dicom.read_series` (``X x Y x Z``: DICOM columns, rows,
    slices sorted by position) -> ``Z x Rows x Columns`` frames for :func:`write_dicom_seg`."""
    m = np.asarray(volume_mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"expected an X x Y x Z mask, got shape {m.shape}")
    return np.ascontiguousarray(m.transpose(2, 1, 0))


def parse_code(text: str) -> tuple[str, str, str]:
    """``"SCHEME:VALUE:MEANING"`` (e.g. ``"SCT:108369006:Neoplasm"``) -> ``(scheme, value, meaning)``."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ConfigError(f"code {text!r}: expected SCHEME:VALUE:MEANING, e.g. SCT:108369006:Neoplasm")
    scheme, value, meaning = (p.strip() for p in parts)
    return scheme, value, meaning


def sort_by_position(datasets: Sequence[Any]) -> list[Any]:
    """pydicom datasets sorted by ``ImagePositionPatient`` along the slice normal (ascending).

    Raises:
        DicomSegError: a slice without position/orientation, mixed series, orientations or image sizes.
    """
    if not datasets:
        raise DicomSegError("no source DICOM slices given")
    first = datasets[0]
    try:
        orientation = np.array([float(v) for v in first.ImageOrientationPatient])
        series = first.SeriesInstanceUID
        size = (int(first.Rows), int(first.Columns))
    except AttributeError as exc:
        raise DicomSegError(f"{_name(first)}: not a CT slice with position and orientation ({exc})") from None
    normal = np.cross(orientation[:3], orientation[3:])
    keyed = []
    for ds in datasets:
        try:
            position = np.array([float(v) for v in ds.ImagePositionPatient])
            same = np.allclose([float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-4)
        except AttributeError as exc:
            raise DicomSegError(f"{_name(ds)}: no ImagePositionPatient / ImageOrientationPatient ({exc})") from None
        if ds.SeriesInstanceUID != series:
            raise DicomSegError(f"{_name(ds)}: belongs to another series than {_name(first)}")
        if not same or (int(ds.Rows), int(ds.Columns)) != size:
            raise DicomSegError(f"{_name(ds)}: orientation or image size differs from {_name(first)}")
        keyed.append((float(position @ normal), ds))
    keyed.sort(key=lambda item: item[0])
    return [ds for _, ds in keyed]


def _read_source(pydicom: Any, file: Path) -> Any:
    """Read one source slice (no pixel data needed); take empty SOP UIDs from the file meta, where the standard
    keeps the same values; refuse a slice without study, series or frame-of-reference UID, which a SEG must
    reference (anonymisers sometimes blank them)."""
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a bad file
        raise DicomSegError(f"{file}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    meta = getattr(ds, "file_meta", None)
    for element, meta_element in [
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ]:
        if not ds.get(element) and meta is not None and meta.get(meta_element):
            setattr(ds, element, meta.get(meta_element))
    for element in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not ds.get(element):
            raise DicomSegError(
                f"{file}: {element} is empty; a DICOM-SEG must reference it (was the series anonymised?)"
            )
    return ds


def _name(ds: Any) -> str:
    return str(getattr(ds, "filename", None) or getattr(ds, "SOPInstanceUID", "a DICOM slice"))


def write_dicom_seg(
    source_files: Sequence[Path],
    mask: np.ndarray,
    path: Path,
    segment_label: str = "lesion",
    property_type: tuple[str, str, str] = DEFAULT_TYPE,
    property_category: tuple[str, str, str] = DEFAULT_CATEGORY,
    anatomic_region: tuple[str, str, str] | None = DEFAULT_REGION,
) -> Path:
    """Write a binary DICOM-SEG of ``mask`` over a single-frame CT series.

    Args:
        source_files: the series' DICOM files, in any order (sorted here, see the module docstring).
        mask: boolean ``N x Rows x Columns``, one frame per source slice in the series' spatial order.
        path: the ``.dcm`` file to write (must not exist; written to a temporary name, then renamed).
        segment_label: the segment's label.
        property_type, property_category, anatomic_region: ``(scheme, value, meaning)`` codes; region None
            leaves the anatomic region out.

    Returns:
        ``path``. Frames without any lesion are omitted from the SEG (highdicom's default; an all-empty mask
        keeps every frame, as a SEG needs one); each written frame references its source slice and carries that
        slice's ``ImagePositionPatient``.

    Raises:
        DicomSegUnavailable: highdicom is not installed.
        DicomSegError: unreadable or inconsistent source files, or a mask of the wrong shape.
        FileExistsError: ``path`` exists.
    """
    _require_highdicom()
    import highdicom as hd
    import pydicom
    from pydicom.sr.coding import Code

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: already exists; coinseg does not overwrite it")
    datasets = [_read_source(pydicom, Path(file)) for file in source_files]
    ordered = sort_by_position(datasets)
    frames = np.asarray(mask, dtype=bool)
    expected = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
    if frames.shape != expected:
        raise DicomSegError(f"mask shape {frames.shape} differs from the series' (slices, rows, columns) {expected}")

    algorithm = hd.AlgorithmIdentificationSequence(
        name="coinseg", version=__version__, family=Code("123109", "DCM", "Artificial Intelligence")
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=Code(property_category[1], property_category[0], property_category[2]),
        segmented_property_type=Code(property_type[1], property_type[0], property_type[2]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=None
        if anatomic_region is None
        else [Code(anatomic_region[1], anatomic_region[0], anatomic_region[2])],
    )
    seg = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=int(getattr(ordered[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="coinseg",
        manufacturer_model_name="coinseg",
        software_versions=__version__,
        device_serial_number="none",
        content_description=f"{RESEARCH_ONLY}: weak lesion mask",
        content_label="COINSEG",
        series_description=f"coinseg {segment_label} ({RESEARCH_ONLY})",
    )
    with atomic_file(path) as tmp:
        seg.save_as(tmp)
    return path
