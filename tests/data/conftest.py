"""Study fixtures for ``coinseg prepare`` tests: tiny KiTS- and nnU-Net-layout studies with known tumour planes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

KIDNEY_PLANES = range(2, 10)  # stored-axis indices holding kidney
TUMOUR_PLANES = (4, 5, 6)  # 6 x 6 voxels of 1.5 mm = 81 mm^2: abnormal
CAP_PLANE = 7  # one tumour voxel (2.25 mm^2 < 25): excluded


def _oblique(zooms: tuple[float, float, float]) -> np.ndarray:
    a = np.deg2rad(15.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag(zooms)
    return affine


def _affine(kind: str) -> np.ndarray:
    """Voxel -> RAS affines. In-plane 1.5 mm, 3 mm planes; "kits": slice-first like KiTS (axis 0 = I-S)."""
    if kind == "RAS":
        return np.diag([1.5, 1.5, 3.0, 1.0])
    if kind == "LPS":
        return np.diag([-1.5, -1.5, 3.0, 1.0])
    if kind == "kits":
        return np.array([[0, 0, -1.5, 0], [0, -1.5, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1.0]])
    return _oblique((1.5, 1.5, 3.0))


def _case_arrays(kind: str, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(CT int16, labels uint8 1 kidney / 2 tumour) with planes along the affine's S-I axis."""
    n_planes, n = 12, 32
    seg = np.zeros((n, n, n_planes), np.uint8)  # (a, b, plane) then moved to the stored order
    for z in KIDNEY_PLANES:
        seg[8 + shift : 24 + shift, 6:20, z] = 1
    for z in TUMOUR_PLANES:
        seg[12 + shift : 18 + shift, 9:15, z] = 2
    seg[14 + shift, 10, CAP_PLANE] = 2
    ct = np.where(seg > 0, 150, -50).astype(np.int16)
    if kind == "kits":  # slice-first
        return np.ascontiguousarray(np.moveaxis(ct, 2, 0)), np.ascontiguousarray(np.moveaxis(seg, 2, 0))
    return ct, seg


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)


def _kits(root: Path, n_cases: int = 3) -> Path:
    for i in range(n_cases):
        ct, seg = _case_arrays("kits", i)
        _save(ct, _affine("kits"), root / f"case_{i:05d}" / "imaging.nii.gz")
        _save(seg, _affine("kits"), root / f"case_{i:05d}" / "segmentation.nii.gz")
    return root


def _nnunet(root: Path) -> Path:
    for i, kind in enumerate(("RAS", "LPS", "oblique")):
        ct, seg = _case_arrays(kind, i)
        _save(ct, _affine(kind), root / "imagesTr" / f"kid_{i:03d}_0000.nii.gz")
        _save(seg, _affine(kind), root / "labelsTr" / f"kid_{i:03d}.nii.gz")
    meta = {"labels": {"background": 0, "kidney": 1, "tumor": 2}, "file_ending": ".nii.gz", "numTraining": 3}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def kits_study() -> Callable[[Path, int], Path]:
    """``make(root, n_cases)``: a KiTS-layout study of slice-first cases (one voxel row shifted per case)."""
    return _kits


@pytest.fixture
def nnunet_study() -> Callable[[Path], Path]:
    """``make(root)``: an nnU-Net raw study of three cases, RAS, LPS and oblique."""
    return _nnunet
