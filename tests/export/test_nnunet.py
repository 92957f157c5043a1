import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from coinseg.export.nnunet import ExportError, NnunetCase, export_nnunet, label_volume, uncertain_voxels

SHAPE = (12, 10, 6)


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rot @ np.diag([0.8, 0.8, 3.0])  # LPS-like, tilted
    affine[:3, 3] = [100.0, 120.0, -40.0]
    return affine


def _ct(path, affine, gz=True):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 2000, size=SHAPE).astype(np.uint16)
    img = nib.Nifti1Image(stored, affine)
    img.header.set_slope_inter(1.0, -1024.0)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    name = path / ("ct.nii.gz" if gz else "ct.nii")
    nib.save(img, name)
    return name


def _cases(tmp_path, with_ignore=False):
    cases = []
    for i, affine in enumerate([np.diag([0.8, 0.8, 3.0, 1.0]), _oblique_affine()]):
        folder = tmp_path / f"in{i}"
        folder.mkdir()
        image = _ct(folder, affine)
        mask = np.zeros(SHAPE, bool)
        mask[2 + i, 3, 1:3] = True
        ignore = None
        if with_ignore:
            ignore = np.zeros(SHAPE, bool)
            ignore[2 + i, 3:6, 1:3] = True  # overlaps the mask: the mask wins
        cases.append(NnunetCase(f"case_{i:03d}", image, mask, affine, ignore))
    return cases


def test_label_volume_and_uncertain_voxels():
    diff = np.array([[[0.0, 0.1, 0.2, 0.5]]])
    ig = uncertain_voxels(diff, 0.15)
    np.testing.assert_array_equal(ig, [[[False, False, True, True]]])
    mask = diff > 0.25
    np.testing.assert_array_equal(label_volume(mask, ig), [[[0, 0, 2, 1]]])
    np.testing.assert_array_equal(label_volume(mask, None), [[[0, 0, 0, 1]]])
    with pytest.raises(ExportError, match="ignore-below"):
        uncertain_voxels(diff, 1.5)


@pytest.mark.parametrize("link", [False, True])
def test_export_writes_the_layout_and_labels_at_the_mask_voxels(tmp_path, link):
    cases = _cases(tmp_path, with_ignore=True)
    out = export_nnunet(cases, tmp_path / "raw" / "Dataset501_Coin", link=link)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "lesion": 1, "ignore": 2}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    for case in cases:
        image = out / "imagesTr" / f"{case.case}_0000.nii.gz"
        assert image.is_symlink() == link
        ct_in, ct_out = nib.load(case.image), nib.load(image)
        np.testing.assert_array_equal(ct_out.get_fdata(), ct_in.get_fdata())
        label = nib.load(out / "labelsTr" / f"{case.case}.nii.gz")
        np.testing.assert_allclose(label.affine, case.affine, atol=1e-5)
        data = np.asarray(label.dataobj)
        assert data.dtype == np.uint8
        np.testing.assert_array_equal(np.argwhere(data == 1), np.argwhere(case.mask))
        assert set(map(tuple, np.argwhere(data == 2))) == set(map(tuple, np.argwhere(case.ignore & ~case.mask)))
    assert sorted(os.listdir(out.parent)) == ["Dataset501_Coin"]  # no temporary folder left


def test_export_without_ignore_lists_two_labels_and_copies_a_plain_nii(tmp_path):
    case = _cases(tmp_path)[0]
    plain = _ct(tmp_path, case.affine, gz=False)
    out = export_nnunet([NnunetCase("a", plain, case.mask, case.affine)], tmp_path / "Dataset002_X")
    assert json.loads((out / "dataset.json").read_text())["labels"] == {"background": 0, "lesion": 1}
    np.testing.assert_array_equal(nib.load(out / "imagesTr" / "a_0000.nii.gz").get_fdata(), nib.load(plain).get_fdata())
    with pytest.raises(ExportError, match="use --copy"):
        export_nnunet([NnunetCase("a", plain, case.mask, case.affine)], tmp_path / "Dataset003_X", link=True)


def test_export_refuses_bad_inputs_and_leaves_nothing(tmp_path):
    cases = _cases(tmp_path)
    target = tmp_path / "Dataset004_X"
    wrong_affine = NnunetCase("b", cases[1].image, cases[1].mask, cases[0].affine)
    with pytest.raises(ExportError, match=r"case b: the mask's affine differs"):
        export_nnunet([cases[0], wrong_affine], target)
    wrong_shape = NnunetCase("c", cases[0].image, cases[0].mask[:, :, :3], cases[0].affine)
    with pytest.raises(ExportError, match=r"case c: mask shape \(12, 10, 3\)"):
        export_nnunet([wrong_shape], target)
    with pytest.raises(ExportError, match="given twice"):
        export_nnunet([cases[0], cases[0]], target)
    with pytest.raises(ExportError, match="ids may hold only"):
        export_nnunet([NnunetCase("a/b", cases[0].image, cases[0].mask, cases[0].affine)], target)
    with pytest.raises(ExportError, match="DatasetNNN_Name"):
        export_nnunet(cases, tmp_path / "my_dataset")
    assert not target.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    target.mkdir()
    (target / "user_file.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        export_nnunet(cases, target)
    assert (target / "user_file.txt").read_text() == "keep me"


def test_export_passes_nnunet_integrity_check(tmp_path, capfd):
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    out = export_nnunet(_cases(tmp_path, with_ignore=True), tmp_path / "Dataset503_Coin", link=True)
    verify.verify_dataset_integrity(str(out), num_processes=1)
    printed = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in printed
    assert "mismatch" not in printed.lower()  # origin / direction / affine warnings would say so


SHARED_CT = Path("/work/shared/data/totalsegmentator-mini/s0001")


@pytest.mark.skipif(not SHARED_CT.is_dir(), reason="shared TotalSegmentator fixture not present")
def test_export_of_the_shared_real_ct_passes_nnunet_integrity_check(tmp_path, capfd):
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    ct = nib.load(SHARED_CT / "ct.nii.gz")
    kidney = np.asarray(nib.load(SHARED_CT / "segmentations" / "kidney_left.nii.gz").dataobj) > 0
    case = NnunetCase("s0001", SHARED_CT / "ct.nii.gz", kidney, ct.affine)  # the kidney stands in for a mask
    out = export_nnunet([case], tmp_path / "Dataset504_Real", link=True)
    verify.verify_dataset_integrity(str(out), num_processes=1)
    printed = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in printed and "mismatch" not in printed.lower()
    label = nib.load(out / "labelsTr" / "s0001.nii.gz")
    np.testing.assert_array_equal(np.argwhere(np.asarray(label.dataobj) == 1), np.argwhere(kidney))


def test_export_into_an_existing_empty_folder(tmp_path):
    target = tmp_path / "Dataset005_X"
    target.mkdir()
    export_nnunet(_cases(tmp_path)[:1], target)
    assert sorted(p.name for p in target.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
