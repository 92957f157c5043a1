"""coinseg prepare on KiTS-, nnU-Net- and TotalSegmentator-layout studies: labels, round trips, bad inputs."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from coinseg.data.build import OnError, PrepareOptions, prepare_study
from coinseg.data.manifest import read_manifest
from coinseg.data.roi import display_axes, paste_back
from coinseg.data.store import open_case
from coinseg.data.study import Layout, StudyError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_fixtures = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data fixtures not present")

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


def _check_labels_and_round_trip(out: Path, source_seg: dict[str, Path]) -> None:
    entries = read_manifest(out / "manifest.csv")
    by_case: dict[str, list] = {}
    for entry in entries:
        by_case.setdefault(entry.image.parent.name, []).append(entry)
    assert set(by_case) == set(source_seg)
    for case, rows in by_case.items():
        stored = open_case(out, case)
        seg_img = nib.load(source_seg[case])
        seg = np.asarray(seg_img.dataobj)
        axis = display_axes(seg_img.affine)[0]
        planes = stored.geometry.slice_index
        # Per-slice labels exactly as constructed, along the file's own S-I axis.
        assert planes == [z for z in KIDNEY_PLANES if z != CAP_PLANE]
        assert [e.label for e in sorted(rows, key=lambda e: e.slice)] == [int(z in TUMOUR_PLANES) for z in planes]
        # Lesion masks go back to the exact voxels (stored spacing 1 mm <= source 1.5 mm).
        expected = seg == 2
        expected[(slice(None),) * axis + (CAP_PLANE,)] = False
        back = paste_back(stored.geometry, stored.lesion)
        assert np.array_equal(np.argwhere(back), np.argwhere(expected))
        assert np.allclose(stored.geometry.affine, seg_img.affine)
        # The organ is large in the ROI: its box + 2 x 10 mm margin at 1 mm.
        assert max(stored.image.shape[1:]) <= 16 * 1.5 + 20 + 2


def test_kits_layout_labels_and_round_trip(tmp_path: Path) -> None:
    root = _kits(tmp_path / "kits")
    lines: list[str] = []
    summary = prepare_study(root, tmp_path / "out", PrepareOptions(), lines.append)
    assert summary.layout == "kits" and summary.n_cases == 3
    seg = {f"case_{i:05d}": root / f"case_{i:05d}" / "segmentation.nii.gz" for i in range(3)}
    _check_labels_and_round_trip(tmp_path / "out", seg)
    assert summary.counts["excluded: lesion below --min-lesion-mm2"] == 3
    assert sorted(summary.splits.values()) == ["test", "train", "val"]  # one case each, none in two splits
    assert any(line.startswith("split test: 1 cases") for line in lines)


def test_nnunet_layout_ras_lps_oblique(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "nnunet")
    options = PrepareOptions(organ_names=("kidney",), lesion_labels=(2,), workers=2)
    summary = prepare_study(root, tmp_path / "out", options, lambda _: None)
    assert summary.layout == "nnunet"
    seg = {f"kid_{i:03d}": root / "labelsTr" / f"kid_{i:03d}.nii.gz" for i in range(3)}
    _check_labels_and_round_trip(tmp_path / "out", seg)


def test_nnunet_without_lesion_labels_lists_the_labels(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "nnunet")
    with pytest.raises(StudyError, match="needs --lesion-labels .*kidney=1, tumor=2"):
        prepare_study(root, tmp_path / "out", PrepareOptions(), lambda _: None)


def test_full_slice_keeps_the_source_grid(tmp_path: Path) -> None:
    root = _kits(tmp_path / "kits")
    prepare_study(root, tmp_path / "out", PrepareOptions(roi=False), lambda _: None)
    stored = open_case(tmp_path / "out", "case_00000")
    assert stored.image.shape[1:] == (32, 32) and stored.geometry.mode == "full"
    ct = np.asarray(nib.load(root / "case_00000" / "imaging.nii.gz").dataobj)
    assert np.array_equal(np.sort(stored.image[0].ravel()), np.sort(ct[KIDNEY_PLANES[0]].ravel()))


@needs_fixtures
def test_totalsegmentator_inject_realises_p(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = prepare_study(
        SHARED / "totalsegmentator-mini", tmp_path / "out", PrepareOptions(inject=True), lines.append
    )
    assert summary.injected_fraction is not None and abs(summary.injected_fraction - 0.65) <= 0.05
    assert any(line.startswith("injected fraction") for line in lines)
    stored = open_case(tmp_path / "out", "s0001")
    assert stored.organ is not None
    entries = read_manifest(tmp_path / "out" / "manifest.csv")
    labels = np.array([e.label for e in sorted(entries, key=lambda e: e.slice)])
    has_lesion = stored.lesion.reshape(len(labels), -1).any(axis=1)
    assert np.array_equal(labels == 1, has_lesion) and labels.sum() == summary.counts["inject: injected"]
    assert not (stored.lesion.astype(bool) & ~stored.organ.astype(bool)).any()  # lesions inside the kidney
    window = stored.geometry.extra["inject"]["window_hu"]
    lesion = stored.lesion.astype(bool)
    assert stored.image[lesion].mean() > np.mean(window)  # brighter than the kidney window's middle
    assert stored.image.shape[1] >= 150  # kidneys cropped and resampled to 1 mm from 3 mm


def test_case_missing_segmentation_fails_or_is_skipped(tmp_path: Path) -> None:
    root = _kits(tmp_path / "kits", 4)
    (root / "case_00002" / "segmentation.nii.gz").unlink()
    with pytest.raises(StudyError, match=r"case_00002/segmentation.nii.gz: organ file missing"):
        prepare_study(root, tmp_path / "out", PrepareOptions(), lambda _: None)
    assert not (tmp_path / "out").exists()
    lines: list[str] = []
    summary = prepare_study(root, tmp_path / "out", PrepareOptions(on_error=OnError.skip), lines.append)
    assert summary.n_cases == 3 and list(summary.skipped) == ["case_00002"]
    assert any("skipped case case_00002" in line and "segmentation.nii.gz" in line for line in lines)


def test_unreadable_volume_mid_study(tmp_path: Path) -> None:
    root = _kits(tmp_path / "kits", 4)
    (root / "case_00001" / "imaging.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(StudyError, match=r"case_00001/imaging.nii.gz: unreadable volume"):
        prepare_study(root, tmp_path / "out", PrepareOptions(), lambda _: None)
    summary = prepare_study(root, tmp_path / "out", PrepareOptions(on_error=OnError.skip), lambda _: None)
    assert list(summary.skipped) == ["case_00001"] and "unreadable" in summary.skipped["case_00001"]


def test_organ_label_absent_from_a_case(tmp_path: Path) -> None:
    root = _kits(tmp_path / "kits")
    with pytest.raises(StudyError, match=r"case_00000/segmentation.nii.gz: organ '5' absent"):
        prepare_study(root, tmp_path / "out", PrepareOptions(organ_labels=(5,)), lambda _: None)


@pytest.mark.parametrize("problem", ["shape", "affine"])
def test_mask_off_the_image_grid(tmp_path: Path, problem: str) -> None:
    root = _kits(tmp_path / "kits")
    seg_path = root / "case_00001" / "segmentation.nii.gz"
    seg = nib.load(seg_path)
    data, affine = np.asarray(seg.dataobj), seg.affine.copy()
    if problem == "shape":
        data = data[:, :-1]
    else:
        affine[0, 3] += 2.0
    _save(data, affine, seg_path)
    with pytest.raises(StudyError, match=rf"case_00001/segmentation.nii.gz: organ mask {problem}"):
        prepare_study(root, tmp_path / "out", PrepareOptions(), lambda _: None)


def test_layout_not_detected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="cannot detect the layout"):
        prepare_study(tmp_path / "empty", tmp_path / "out", PrepareOptions(layout=Layout.auto), lambda _: None)


def test_csv_layout_labels_from_lesion_masks(tmp_path: Path) -> None:
    _kits(tmp_path / "kits", 3)
    rows = ["volume,label,lesion,organ,case,split"]
    for i, split in enumerate(("train", "val", "test")):
        case = f"kits/case_{i:05d}"
        rows.append(f"{case}/imaging.nii.gz,1,{case}/segmentation.nii.gz,{case}/segmentation.nii.gz,p{i},{split}")
    (tmp_path / "study.csv").write_text("\n".join(rows) + "\n")
    options = PrepareOptions(organ_labels=(1, 2), lesion_labels=(2,))
    summary = prepare_study(tmp_path / "study.csv", tmp_path / "out", options, lambda _: None)
    assert summary.layout == "csv" and summary.splits == {"p0": "train", "p1": "val", "p2": "test"}
    entries = read_manifest(tmp_path / "out" / "manifest.csv")
    assert sum(e.label for e in entries) == 3 * len(TUMOUR_PLANES)  # from the lesion masks, not the row label
