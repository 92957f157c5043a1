"""Write weak lesion masks as an nnU-Net v2 raw dataset, to train a dense segmentation network on them.

Layout written (nnU-Net v2 "dataset format", one CT channel, NIfTI)::

    DatasetNNN_Name/
        imagesTr/<case>_0000.nii.gz   the CT, symlinked (absolute target) or copied
        labelsTr/<case>.nii.gz        uint8: 0 background, 1 lesion[, 2 ignore]
        dataset.json                  channel_names {"0": "CT"}, labels, numTraining, file_ending ".nii.gz"

``ignore`` (nnU-Net's name for voxels left out of the loss; it must be the highest label) marks uncertain
voxels, e.g. where the counterfactual difference map exceeds a low value but the voxel is not in the final mask
(:func:`uncertain_voxels`). It is listed in ``dataset.json`` only when some case has an ignore mask.

The folder is built under a hidden temporary name beside ``out`` and renamed into place when complete; an
existing non-empty ``out`` is refused, and nothing is ever written next to the input images.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from coinseg.data.manifest import ManifestError

FILE_ENDING = ".nii.gz"
LESION = 1
IGNORE = 2
_DATASET_NAME = re.compile(r"Dataset\d{3}_[A-Za-z0-9_\-]+")
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
AFFINE_ATOL_MM = 1e-3


class ExportError(ManifestError):
    """A case cannot be exported as asked (one line naming the case, file or option)."""


@dataclass(frozen=True)
class NnunetCase:
    """One case to export.

    Attributes:
        case: case identifier (letters, digits, ``_ . -``; becomes the file names).
        image: the CT volume, a 3-D ``.nii.gz`` (linked or copied) or ``.nii`` (copied, gzip-compressed).
        mask: boolean ``I x J x K`` lesion mask in the image's stored voxel order.
        affine: the mask's ``4 x 4`` voxel-to-world affine (mm); must equal the image's within 1e-3 mm.
        ignore: optional boolean ``I x J x K`` uncertain voxels; labelled ``ignore`` where not in ``mask``.
    """

    case: str
    image: Path
    mask: np.ndarray
    affine: np.ndarray
    ignore: np.ndarray | None = None


def uncertain_voxels(difference: np.ndarray, low: float) -> np.ndarray:
    """Voxels whose difference map ``|x - x_cf| / 2`` (in [0, 1]) exceeds ``low``, as a boolean array.

    Used as :attr:`NnunetCase.ignore`: inside the final mask the voxel stays ``lesion``, so what becomes
    ``ignore`` is the band between ``low`` and the mask threshold, plus components removed by post-processing.
    """
    if not 0.0 <= low < 1.0:
        raise ExportError(f"--ignore-below must be in [0, 1), got {low}")
    return np.asarray(difference, dtype=np.float64) > low


def label_volume(mask: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    """uint8 label volume: :data:`LESION` where ``mask``, else :data:`IGNORE` where ``ignore``, else 0."""
    m = np.asarray(mask, dtype=bool)
    label = m.astype(np.uint8) * LESION
    if ignore is not None:
        ig = np.asarray(ignore, dtype=bool)
        if ig.shape != m.shape:
            raise ValueError(f"ignore shape {ig.shape} differs from mask shape {m.shape}")
        label[ig & ~m] = IGNORE
    return label


def export_nnunet(cases: Iterable[NnunetCase], out: Path, link: bool = False) -> Path:
    """Write an nnU-Net v2 raw dataset; see the module docstring for the layout.

    Args:
        cases: the cases, consumed one at a time (only one mask is held at once).
        out: ``.../DatasetNNN_Name`` (nnU-Net finds datasets by that name); must not exist or be empty.
        link: symlink the CT images (absolute targets) instead of copying them.

    Returns:
        ``out``.

    Raises:
        ExportError: a bad dataset name, case id, image file, or a mask whose shape or affine differs from
            its image (the message names the case and file).
        FileExistsError: ``out`` exists and is not empty.
    """
    out = Path(out)
    if not _DATASET_NAME.fullmatch(out.name):
        raise ExportError(f"--out {out}: the folder must be named DatasetNNN_Name (three digits), as nnU-Net expects")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not empty; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        seen: set[str] = set()
        with_ignore = False
        for case in cases:
            _write_case(case, tmp, link, seen)
            with_ignore |= case.ignore is not None
        if not seen:
            raise ExportError("no cases to export")
        labels = {"background": 0, "lesion": LESION, **({"ignore": IGNORE} if with_ignore else {})}
        dataset = {
            "channel_names": {"0": "CT"},
            "labels": labels,
            "numTraining": len(seen),
            "file_ending": FILE_ENDING,
            "description": "weak lesion masks from coinseg (counterfactual inpainting); not manual labels",
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load_nifti(path: Path, case: str) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI header and lazy data of ``path`` (ExportError naming the case and file otherwise)."""
    try:
        img = nib.load(path)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise ExportError(f"case {case}: {path}: unreadable NIfTI ({exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ExportError(f"case {case}: {path}: not a NIfTI image")
    return img


def _write_case(case: NnunetCase, root: Path, link: bool, seen: set[str]) -> None:
    if not _CASE_ID.fullmatch(case.case):
        raise ExportError(f"case {case.case!r}: ids may hold only letters, digits, '_', '.', '-'")
    if case.case in seen:
        raise ExportError(f"case {case.case!r} given twice")
    image = Path(case.image)
    name = image.name.lower()
    if not (name.endswith(".nii.gz") or name.endswith(".nii")):
        raise ExportError(f"case {case.case}: {image}: the CT must be a NIfTI volume (.nii.gz or .nii)")
    img = _load_nifti(image, case.case)
    mask = np.asarray(case.mask, dtype=bool)
    if len(img.shape) != 3 or mask.shape != img.shape:
        raise ExportError(f"case {case.case}: mask shape {mask.shape} differs from {image} shape {img.shape}")
    if not np.allclose(np.asarray(case.affine, dtype=np.float64), img.affine, atol=AFFINE_ATOL_MM, rtol=0.0):
        raise ExportError(f"case {case.case}: the mask's affine differs from the affine of {image}")

    target = root / "imagesTr" / f"{case.case}_0000{FILE_ENDING}"
    if name.endswith(".nii.gz"):
        if link:
            target.symlink_to(image.resolve())
        else:
            shutil.copyfile(image, target)
    elif link:
        raise ExportError(
            f"case {case.case}: {image} is not gzip-compressed, so it cannot be linked as {FILE_ENDING}; use --copy"
        )
    else:
        with open(image, "rb") as src, gzip.open(target, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst)

    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    label = nib.Nifti1Image(label_volume(mask, case.ignore), img.affine, header=header)
    label.set_qform(img.affine, code=int(img.header["qform_code"]))
    label.set_sform(img.affine, code=int(img.header["sform_code"]))
    nib.save(label, root / "labelsTr" / f"{case.case}{FILE_ENDING}")
    seen.add(case.case)


def _case_of(image: Path) -> str:
    name = image.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else image.stem


def _ct_paths(cases_csv: Path) -> dict[str, Path]:
    """``{case: CT path}`` from a CSV with an ``image`` column (NIfTI volumes, relative to the CSV's folder)
    and an optional ``case`` column (default: the image's file name without ``.nii``/``.nii.gz``). Rows whose
    image is not NIfTI are skipped; one case may repeat over rows (one per slice) only with the same image."""
    try:
        with open(cases_csv, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ExportError(f"{cases_csv}: unreadable CSV ({exc})") from None
    if "image" not in fields:
        raise ExportError(f"{cases_csv}: no 'image' column (columns: {fields})")
    paths: dict[str, Path] = {}
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        cell = (row.get("image") or "").strip()
        if not cell.lower().endswith((".nii", ".nii.gz")):
            continue
        image = (cases_csv.parent / cell).resolve()
        case = (row.get("case") or "").strip() or _case_of(image)
        if paths.setdefault(case, image) != image:
            raise ExportError(
                f"{cases_csv} row {number}: case {case} names {cell}, but an earlier row names {paths[case]}"
            )
    return paths


def _ct_sources(cases: Path, masked: set[str]) -> tuple[dict[str, Path], Path]:
    """``({case: CT path}, where they were read)``: from a prepared DATASET_DIR (``store/<case>/geometry.json``
    name each case's source scan), else from a CSV or a folder's ``manifest.csv`` (:func:`_ct_paths`).

    Raises:
        ExportError: a case of ``masked`` was prepared with ``--inject``: its source scan does not hold the
            injected lesions (only the store does), so masks of them would label lesions that are not there.
    """
    from coinseg.data.store import read_geometry

    store = cases / "store"
    if not (cases.is_dir() and store.is_dir()):
        return _ct_paths(cases / "manifest.csv" if cases.is_dir() else cases), cases
    paths = {}
    for file in sorted(store.glob("*/geometry.json")):
        geometry = read_geometry(cases, file.parent.name)
        if geometry.case in masked and "inject" in geometry.extra:
            raise ExportError(
                f"{file.parent}: prepared with --inject; the source CT does not hold the injected lesions, so it "
                "cannot be exported with masks of them (export a dataset prepared without --inject)"
            )
        paths[geometry.case] = Path(geometry.source)
    return paths, store


def segment_out_cases(
    segment_out: Path, cases_csv: Path, ignore_below: float | None = None
) -> tuple[Iterator[NnunetCase], list[str]]:
    """The cases of a ``segment`` output folder, for :func:`export_nnunet`.

    Reads ``SEGMENT_OUT/masks/<case>.nii.gz`` (nonzero = lesion) and, with ``ignore_below``,
    ``SEGMENT_OUT/maps/<case>.nii.gz`` (``|x - x_cf| / 2``); each case's CT comes from ``cases_csv``: a
    prepared DATASET_DIR (its ``store/<case>/geometry.json``), a CSV, or a folder's ``manifest.csv`` (see
    :func:`_ct_sources`). A case whose source is a DICOM series is refused (NIfTI only, for now).

    Returns:
        ``(cases, unmasked)``: the cases in case order, each mask read only when the case is written; and the
        CSV's cases that have no mask (not exported; the caller says how many).

    Raises:
        ExportError: no masks, a mask whose case the CSV does not name, a missing map, a case prepared with
            ``--inject``.
    """
    if ignore_below is not None:
        uncertain_voxels(np.zeros(1), ignore_below)  # validate the option before any work
    masks_dir = Path(segment_out) / "masks"
    masks = {_case_of(p): p for p in sorted(masks_dir.glob("*.nii.gz"))} if masks_dir.is_dir() else {}
    if not masks:
        raise ExportError(f"{masks_dir}: no per-volume masks (<case>.nii.gz) found")
    cts, csv_path = _ct_sources(Path(cases_csv), set(masks))
    unknown = sorted(set(masks) - set(cts))
    if unknown:
        raise ExportError(
            f"{csv_path}: names no NIfTI CT for case {unknown[0]} ({len(unknown)} such cases in {masks_dir})"
        )
    maps = {}
    if ignore_below is not None:
        for case in masks:
            maps[case] = Path(segment_out) / "maps" / f"{case}.nii.gz"
            if not maps[case].is_file():
                raise ExportError(f"{maps[case]}: missing; --ignore-below needs the difference map of every case")

    def load() -> Iterator[NnunetCase]:
        for case, mask_path in masks.items():
            mask_img = _load_nifti(mask_path, case)
            mask = np.asarray(mask_img.dataobj) != 0
            ignore = None
            if ignore_below is not None:
                diff = np.asarray(_load_nifti(maps[case], case).dataobj, dtype=np.float32)
                if diff.shape != mask.shape:
                    raise ExportError(f"{maps[case]}: shape {diff.shape} differs from its mask's {mask.shape}")
                ignore = uncertain_voxels(diff, ignore_below)
            yield NnunetCase(case, cts[case], mask, np.asarray(mask_img.affine), ignore)

    return load(), sorted(set(cts) - set(masks))
