"""The slice store written by ``coinseg prepare`` and how to read it (lazily) and map it back to the scans.

Layout of a DATASET_DIR::

    manifest.csv            image,label,split,slice,case,mask,organ   (one row per stored slice)
    prepare.log             what was kept, excluded, injected, skipped, and the split of every case
    prepare.json            the same counts, machine-readable
    store/<case>/image.npy      N x H x W int16, HU (rounded to 1 HU), the stored slices of one scan
    store/<case>/lesion.npy     N x H x W uint8 0/1, lesion ground truth (real or injected), evaluation only
    store/<case>/organ.npy      N x H x W uint8 0/1, organ mask including its lesions (absent without an organ)
    store/<case>/geometry.json  :class:`coinseg.data.roi.CaseGeometry` as JSON

``slice`` in the manifest indexes the first axis of these arrays (the stored slice ``n``); which source plane
that is, and where each pixel comes from, is in ``geometry.json``. Every ``.npy`` opens with
``np.load(path, mmap_mode="r")``: readers touch only the slices they use.

API for code built on the store (per-volume outputs, 3-D metrics, export)::

    case = open_case(dataset_dir, "case_00001")            # StoredCase: memory-mapped arrays + geometry
    volume_mask = paste_back(case.geometry, stored_masks)  # bool, case.geometry.source_shape
    nib.save(nib.Nifti1Image(volume_mask.astype(np.uint8), case.geometry.affine), "mask.nii.gz")

``stored_masks`` is N x H x W on the stored grid (e.g. predictions for the case's manifest rows, in ``slice``
order); see :func:`coinseg.data.roi.paste_back` for the exactness guarantee.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coinseg.data.manifest import Entry
from coinseg.data.roi import CaseGeometry
from coinseg.io.files import atomic_file

STORE = "store"
GEOMETRY = "geometry.json"
MANIFEST_COLUMNS = ("image", "label", "split", "slice", "case", "mask", "organ")


@dataclass
class StoredCase:
    """One case of a store: ``image`` N x H x W int16 HU, ``lesion``/``organ`` N x H x W uint8 0/1 (organ may be
    None), all memory-mapped read-only; ``geometry`` maps them back to the source scan."""

    image: np.ndarray
    lesion: np.ndarray
    organ: np.ndarray | None
    geometry: CaseGeometry


def case_folder(dataset_dir: Path, case: str) -> Path:
    return dataset_dir / STORE / case


def to_stored_hu(hu: np.ndarray) -> np.ndarray:
    """float HU -> int16 HU (rounded, clipped to the int16 range)."""
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def write_case(
    dataset_dir: Path, image_hu: np.ndarray, lesion: np.ndarray, organ: np.ndarray | None, geometry: CaseGeometry
) -> Path:
    """Write one case's arrays and geometry under ``dataset_dir/store/<case>/`` (a folder coinseg creates)."""
    folder = case_folder(dataset_dir, geometry.case)
    folder.mkdir(parents=True, exist_ok=False)
    np.save(folder / "image.npy", to_stored_hu(image_hu))
    np.save(folder / "lesion.npy", np.asarray(lesion, dtype=np.uint8))
    if organ is not None:
        np.save(folder / "organ.npy", np.asarray(organ, dtype=np.uint8))
    (folder / GEOMETRY).write_text(json.dumps(geometry.to_json(), indent=1))
    return folder


def read_geometry(dataset_dir: Path, case: str) -> CaseGeometry:
    return CaseGeometry.from_json(json.loads((case_folder(dataset_dir, case) / GEOMETRY).read_text()))


def store_folder(entry: Entry) -> Path | None:
    """The store folder of a manifest entry that points into a ``coinseg prepare`` store (else None)."""
    folder = entry.image.parent
    return folder if entry.slice is not None and (folder / GEOMETRY).is_file() else None


def from_store(entries: list[Entry]) -> bool:
    """True when every entry is a slice of a prepared store."""
    return bool(entries) and all(store_folder(e) is not None for e in entries)


def open_case(dataset_dir: Path, case: str) -> StoredCase:
    """Memory-map one case of the store (nothing is read until indexed)."""
    folder = case_folder(dataset_dir, case)
    organ = folder / "organ.npy"
    return StoredCase(
        np.load(folder / "image.npy", mmap_mode="r"),
        np.load(folder / "lesion.npy", mmap_mode="r"),
        np.load(organ, mmap_mode="r") if organ.exists() else None,
        read_geometry(dataset_dir, case),
    )


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """Write ``rows`` (keys of :data:`MANIFEST_COLUMNS`) as CSV, via a temporary name and a rename."""
    with atomic_file(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
