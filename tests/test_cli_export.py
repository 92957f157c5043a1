"""`coinseg export-nnunet` end to end on a hand-made segment output folder."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from coinseg.cli import app

SHAPE = (8, 9, 5)
AFFINE = np.array([[-0.7, 0, 0, 90.0], [0, -0.7, 0, 100.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def _invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _study(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    data = tmp_path / "study"
    data.mkdir()
    for case in ("p1", "p2"):
        nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), AFFINE), data / f"{case}.nii.gz")
    # a per-slice manifest: several rows per case; p2 was not segmented (e.g. another split)
    rows = ["image,label,slice,case"] + [f"{c}.nii.gz,0,{k},{c}" for c in ("p1", "p2") for k in range(SHAPE[2])]
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    seg = tmp_path / "seg"
    (seg / "masks").mkdir(parents=True)
    (seg / "maps").mkdir()
    diff = np.zeros(SHAPE, np.float32)
    diff[2:5, 3, 1] = [0.3, 0.2, 0.05]
    mask = diff > 0.25
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), seg / "masks" / "p1.nii.gz")
    nib.save(nib.Nifti1Image(diff, AFFINE), seg / "maps" / "p1.nii.gz")
    return seg, data, mask, diff


def test_export_nnunet_from_segment_output(tmp_path: Path) -> None:
    seg, data, mask, diff = _study(tmp_path)
    out = tmp_path / "nnUNet_raw" / "Dataset010_Coin"
    code, stdout, stderr = _invoke("export-nnunet", seg, data, "--out", out, "--link", "--ignore-below", "0.1")
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    assert "1 case(s)" in stderr and "not exported" in stderr
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 1 and meta["labels"]["ignore"] == 2
    assert (out / "imagesTr" / "p1_0000.nii.gz").resolve() == (data / "p1.nii.gz").resolve()
    label = np.asarray(nib.load(out / "labelsTr" / "p1.nii.gz").dataobj)
    expected = np.zeros(SHAPE, np.uint8)
    expected[2, 3, 1] = 1  # 0.3 > 0.25: lesion
    expected[3, 3, 1] = 2  # 0.2: between 0.1 and the threshold: ignore
    np.testing.assert_array_equal(label, expected)  # 0.05 stays background


def test_export_nnunet_errors_are_one_line(tmp_path: Path) -> None:
    seg, data, _, _ = _study(tmp_path)
    (seg / "maps" / "p1.nii.gz").unlink()
    code, _, stderr = _invoke("export-nnunet", seg, data, "--out", tmp_path / "Dataset011_X", "--ignore-below", "0.1")
    assert code == 2 and stderr.count("\n") == 1 and "maps/p1.nii.gz: missing" in stderr
    code, _, stderr = _invoke("export-nnunet", seg, data, "--out", tmp_path / "mydata")
    assert code == 2 and "DatasetNNN_Name" in stderr
    (data / "manifest.csv").write_text("image,case\nother.nii.gz,p9\n")
    code, _, stderr = _invoke("export-nnunet", seg, data, "--out", tmp_path / "Dataset012_X")
    assert code == 2 and "case p1" in stderr
    assert not (tmp_path / "Dataset011_X").exists() and not (tmp_path / "Dataset012_X").exists()


def _prepared(tmp_path: Path, data: Path, extra: dict) -> Path:
    from coinseg.data.roi import CaseGeometry

    prepared = tmp_path / "prepared"
    for case in ("p1", "p2"):
        geometry = CaseGeometry(
            case=case,
            source=str((data / f"{case}.nii.gz").resolve()),
            source_shape=SHAPE,
            source_affine=AFFINE.tolist(),
            slice_axis=2,
            row_axis=0,
            col_axis=1,
            row_map=(1.0, 0.0),
            col_map=(1.0, 0.0),
            stored_shape=SHAPE[:2],
            spacing_mm=(0.7, 0.7),
            mode="full",
            extra=extra,
        )
        (prepared / "store" / case).mkdir(parents=True)
        (prepared / "store" / case / "geometry.json").write_text(json.dumps(geometry.to_json()))
    return prepared


def test_export_nnunet_from_a_prepared_dataset(tmp_path: Path) -> None:
    seg, data, mask, _ = _study(tmp_path)
    prepared = _prepared(tmp_path, data, {})
    out = tmp_path / "Dataset013_Store"
    code, stdout, stderr = _invoke("export-nnunet", seg, prepared, "--out", out)
    assert code == 0, stderr
    assert "1 case(s)" in stderr  # p2 has no mask
    label = np.asarray(nib.load(out / "labelsTr" / "p1.nii.gz").dataobj)
    np.testing.assert_array_equal(label == 1, mask)
    assert not (out / "imagesTr" / "p1_0000.nii.gz").is_symlink()  # --copy is the default


def test_export_nnunet_refuses_an_injected_dataset(tmp_path: Path) -> None:
    seg, data, _, _ = _study(tmp_path)
    prepared = _prepared(tmp_path, data, {"inject": {"p": 0.65}})
    code, _, stderr = _invoke("export-nnunet", seg, prepared, "--out", tmp_path / "Dataset014_X")
    assert code == 2 and "store/p1: prepared with --inject" in stderr
