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

import gzip
import json
import os
import re
import shutil
from collections.abc import Iterable
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


def _write_case(case: NnunetCase, root: Path, link: bool, seen: set[str]) -> None:
    if not _CASE_ID.fullmatch(case.case):
        raise ExportError(f"case {case.case!r}: ids may hold only letters, digits, '_', '.', '-'")
    if case.case in seen:
        raise ExportError(f"case {case.case!r} given twice")
    image = Path(case.image)
    name = image.name.lower()
    if not (name.endswith(".nii.gz") or name.endswith(".nii")):
        raise ExportError(f"case {case.case}: {image}: the CT must be a NIfTI volume (.nii.gz or .nii)")
    try:
        img = nib.load(image)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise ExportError(f"case {case.case}: {image}: unreadable NIfTI ({exc})") from None
    assert isinstance(img, nib.Nifti1Image | nib.Nifti2Image)
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
