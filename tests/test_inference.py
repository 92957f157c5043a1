"""`coinseg segment` on volumes and prepared datasets: one NIfTI per scan, in the scan's exact voxels."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from coinseg.config import Settings
from coinseg.data.build import PrepareOptions, prepare_study
from coinseg.data.store import open_case
from coinseg.inference import segment
from coinseg.predictor import Predictor
from coinseg.training.classifier import train_classifier
from coinseg.training.gan import train_gan

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TUMOUR_HU, KIDNEY_HU = 300, 150


def _kits_study(root: Path) -> dict[str, np.ndarray]:
    """Two KiTS-layout cases (slice-first arrays, 3 mm planes, 1.5 mm pixels) with a bright tumour at known
    voxels; returns {case: tumour voxels as stored}."""
    affine = np.array([[0, 0, -1.5, 0], [0, -1.5, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1.0]])
    truth = {}
    for i in range(2):
        seg = np.zeros((10, 30, 30), np.uint8)  # planes first, as KiTS stores them
        seg[2:8, 6 + i : 22 + i, 8:20] = 1
        seg[3:6, 10 + i : 15 + i, 11 + i : 16 + i] = 2
        ct = np.select([seg == 2, seg == 1], [TUMOUR_HU, KIDNEY_HU], -50).astype(np.int16)
        folder = root / f"case_{i:05d}"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(ct, affine), folder / "imaging.nii.gz")
        nib.save(nib.Nifti1Image(seg, affine), folder / "segmentation.nii.gz")
        truth[f"case_{i:05d}"] = seg == 2
    return truth


def test_dataset_masks_land_on_the_known_voxels(
    coin_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A predictor whose map is exactly 'bright tumour pixels' must give back the tumour voxels of every scan,
    through ROI crop, 1.5 -> 1 mm resampling and paste-back."""
    truth = _kits_study(tmp_path / "kits")
    prepare_study(tmp_path / "kits", tmp_path / "ds", PrepareOptions(), lambda _: None)

    def perfect(self: Predictor, arrays: list[np.ndarray], batch: int = 64, *_: object, **__: object):  # noqa: ANN202
        maps = [(a > (TUMOUR_HU + KIDNEY_HU) / 2).astype(np.float32) for a in arrays]
        return np.ones(len(arrays)), np.zeros(len(arrays)), maps

    monkeypatch.setattr(Predictor, "run", perfect)
    out = tmp_path / "seg"
    segment(coin_run, tmp_path / "ds", out, split="all", device="cpu", save_maps=True)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert sorted(r["case"] for r in rows) == sorted(truth)
    for row in rows:
        source = nib.load(tmp_path / "kits" / row["case"] / "imaging.nii.gz")
        mask = nib.load(out / row["mask"])
        assert mask.shape == source.shape and np.array_equal(mask.affine, source.affine)
        assert np.array_equal(np.asarray(mask.dataobj) > 0, truth[row["case"]])
        assert int(row["mask_pixels"]) == truth[row["case"]].sum()
        assert float(row["lesion_ml"]) == pytest.approx(truth[row["case"]].sum() * 1.5 * 1.5 * 3.0 / 1000, abs=1e-4)
        maps = nib.load(out / "maps" / f"{row['case']}.nii.gz")
        assert maps.shape == source.shape and np.asarray(maps.dataobj).dtype == np.float32


def test_each_slice_lesion_reaches_its_half_peak_on_the_known_voxels(
    coin_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A map of 0.8 on the tumour and 0.3 on the rest of the kidney, threshold 0.2: by threshold the whole kidney
    is masked; by half-peak, slice by slice, the tumour's planes keep the tumour (>= 0.4) and the planes without
    one the kidney (0.3 barely clears 0.2: kept, nothing below the cut added), back on the source voxels."""
    _kits_study(tmp_path / "kits")
    prepare_study(tmp_path / "kits", tmp_path / "ds", PrepareOptions(), lambda _: None)

    def graded(self: Predictor, arrays: list[np.ndarray], batch: int = 64, *_: object, **__: object):  # noqa: ANN202
        maps = [np.select([a > (TUMOUR_HU + KIDNEY_HU) / 2, a > (KIDNEY_HU - 50) / 2], [0.8, 0.3], 0.0) for a in arrays]
        return np.ones(len(arrays)), np.zeros(len(arrays)), [m.astype(np.float32) for m in maps]

    monkeypatch.setattr(Predictor, "run", graded)
    by_threshold, half_peak = tmp_path / "threshold", tmp_path / "half-peak"
    segment(coin_run, tmp_path / "ds", by_threshold, split="all", device="cpu", threshold=0.2, extent="threshold")
    segment(coin_run, tmp_path / "ds", half_peak, split="all", device="cpu", threshold=0.2)
    for case in ("case_00000", "case_00001"):
        seg = np.asarray(nib.load(tmp_path / "kits" / case / "segmentation.nii.gz").dataobj)  # planes first
        expected = np.where((seg == 2).any(axis=(1, 2), keepdims=True), seg == 2, seg > 0)
        assert (seg == 2).any() and not np.array_equal(expected, seg > 0)
        np.testing.assert_array_equal(
            np.asarray(nib.load(by_threshold / "masks" / f"{case}.nii.gz").dataobj) > 0, seg > 0
        )
        np.testing.assert_array_equal(
            np.asarray(nib.load(half_peak / "masks" / f"{case}.nii.gz").dataobj) > 0, expected
        )


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data fixtures not present")
def test_totalsegmentator_subject_gives_one_mask_in_the_ct_geometry(coin_run: Path, tmp_path: Path) -> None:
    prepare_study(SHARED / "totalsegmentator-mini", tmp_path / "ds", PrepareOptions(inject=True), lambda _: None)
    out = tmp_path / "seg"
    segment(coin_run, tmp_path / "ds", out, split="all", device="cpu", threshold=0.0, gate=False)
    ct = nib.load(SHARED / "totalsegmentator-mini" / "s0001" / "ct.nii.gz")
    mask = nib.load(out / "masks" / "s0001.nii.gz")
    assert mask.shape == ct.shape and np.allclose(mask.affine, ct.affine)
    kidneys = sum(
        np.asarray(nib.load(SHARED / "totalsegmentator-mini/s0001/segmentations" / f"kidney_{s}.nii.gz").dataobj)
        for s in ("left", "right")
    )
    predicted = np.asarray(mask.dataobj) > 0
    assert predicted.any() and not (predicted & (kidneys == 0)).any()  # nothing outside the organ


def test_postprocess_removes_small_lesions_in_3d(
    coin_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = _kits_study(tmp_path / "kits")
    prepare_study(tmp_path / "kits", tmp_path / "ds", PrepareOptions(), lambda _: None)

    def bright(self: Predictor, arrays: list[np.ndarray], batch: int = 64, *_: object, **__: object):  # noqa: ANN202
        return np.ones(len(arrays)), np.zeros(len(arrays)), [(a > 200).astype(np.float32) for a in arrays]

    monkeypatch.setattr(Predictor, "run", bright)
    tumour_mm3 = min(t.sum() for t in truth.values()) * 1.5 * 1.5 * 3.0
    kept, gone = tmp_path / "kept", tmp_path / "gone"
    segment(coin_run, tmp_path / "ds", kept, split="all", device="cpu", postprocess=True, min_lesion_mm3=tumour_mm3)
    segment(coin_run, tmp_path / "ds", gone, split="all", device="cpu", postprocess=True, min_lesion_mm3=1e6)
    assert all(np.asarray(nib.load(p).dataobj).any() for p in (kept / "masks").glob("*.nii.gz"))
    assert not any(np.asarray(nib.load(p).dataobj).any() for p in (gone / "masks").glob("*.nii.gz"))


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data fixtures not present")
def test_dicom_series_gives_a_nifti_and_a_dicom_seg_on_the_same_voxels(
    coin_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """segment --dicom-seg on a DICOM series: the SEG frames hold exactly the NIfTI mask's voxels, frame by
    frame in the series' spatial order."""
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    series = tmp_path / "series"
    series.mkdir()
    study, uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for file in sorted((SHARED / "dicom-ct-series").glob("*.dcm")):  # anonymised copy: UIDs a PACS would carry
        ds = pydicom.dcmread(file)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(series / file.stem)  # extension-less names, as PACS exports often are

    def bright(self: Predictor, arrays: list[np.ndarray], batch: int = 64, *_: object, **__: object):  # noqa: ANN202
        return np.ones(len(arrays)), np.zeros(len(arrays)), [(a > 300).astype(np.float32) for a in arrays]

    monkeypatch.setattr(Predictor, "run", bright)
    out = tmp_path / "seg"
    segment(coin_run, series, out, device="cpu", dicom_seg=True)
    mask = np.asarray(nib.load(out / "masks" / "series.nii.gz").dataobj) > 0  # columns x rows x slices
    seg = pydicom.dcmread(out / "masks" / "series.seg.dcm")
    sources = {pydicom.dcmread(f).file_meta.MediaStorageSOPInstanceUID: f for f in series.iterdir()}
    positions = sorted(float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in series.iterdir())
    frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    assert mask.any() and len(frames) == int(mask.any(axis=(0, 1)).sum())
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = positions.index(float(pydicom.dcmread(sources[source]).ImagePositionPatient[2]))
        assert np.array_equal(frame.astype(bool), mask[:, :, z].T)


def test_an_unfinished_run_is_named_when_used(coin_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from coinseg.predictor import load_predictor

    unfinished = tmp_path / "run"
    shutil.copytree(coin_run, unfinished)
    (unfinished / "run.json").unlink()
    load_predictor(unfinished, "cpu")
    assert "training did not finish" in capsys.readouterr().err
    load_predictor(coin_run, "cpu")
    assert "did not finish" not in capsys.readouterr().err


def test_gate_leaves_slices_called_normal_without_a_mask(
    coin_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the gate (default) a slice whose f(x) < 0.5 gets no mask voxel, whatever its map; --no-gate keeps them."""
    _kits_study(tmp_path / "kits")
    prepare_study(tmp_path / "kits", tmp_path / "ds", PrepareOptions(), lambda _: None)

    def every_other(self: Predictor, images: torch.Tensor, batch: int = 64) -> np.ndarray:
        return np.arange(len(images)) % 2 * 1.0  # slices 1, 3, 5, ... called abnormal

    def ones(self: Predictor, maps: torch.Tensor, x: torch.Tensor, arrays: list[np.ndarray], *_: object) -> list:
        return [np.ones(a.shape, np.float32) for a in arrays]  # every pixel a lesion before the gate

    monkeypatch.setattr(Predictor, "probs", every_other)
    monkeypatch.setattr(Predictor, "to_slices", ones)
    gated, open_ = tmp_path / "gated", tmp_path / "open"
    segment(coin_run, tmp_path / "ds", gated, split="all", device="cpu", save_maps=True)
    segment(coin_run, tmp_path / "ds", open_, split="all", device="cpu", gate=False, save_maps=True)
    for case in sorted(p.name.split(".")[0] for p in (gated / "masks").glob("*.nii.gz")):
        stored = open_case(tmp_path / "ds", case)
        planes = stored.geometry.slice_index
        axis = stored.geometry.slice_axis
        with_gate = np.asarray(nib.load(gated / "masks" / f"{case}.nii.gz").dataobj)
        without = np.asarray(nib.load(open_ / "masks" / f"{case}.nii.gz").dataobj)
        assert without.any()
        for n, plane in enumerate(planes):
            expected = np.take(without, plane, axis=axis) if n % 2 else 0
            np.testing.assert_array_equal(np.take(with_gate, plane, axis=axis), expected)


def test_an_organ_only_run_on_a_prepared_dataset(tiny: Settings, tmp_path: Path) -> None:
    """Trained on a prepared KiTS-layout dataset with the organ-only input: the checkpoints record it, and every
    case's mask (threshold 0, no gate: every pixel the run can mask) lies inside the stored organ."""
    _kits_study(tmp_path / "kits")
    prepare_study(tmp_path / "kits", tmp_path / "ds", PrepareOptions(), lambda _: None)
    tiny.data.organ_only = True
    manifest = tmp_path / "ds" / "manifest.csv"
    train_classifier(manifest, tmp_path / "clf", tiny, device="cpu")
    train_gan(manifest, tmp_path / "clf", tmp_path / "gan", tiny, device="cpu")
    assert torch.load(tmp_path / "gan" / "checkpoints" / "best.pt", weights_only=True)["organ_only"] is True
    out = tmp_path / "seg"
    segment(tmp_path / "gan", tmp_path / "ds", out, split="all", device="cpu", threshold=0.0, gate=False)
    for row in csv.DictReader((out / "predictions.csv").open()):
        seg = np.asarray(nib.load(tmp_path / "kits" / row["case"] / "segmentation.nii.gz").dataobj)
        predicted = np.asarray(nib.load(out / row["mask"]).dataobj) > 0
        assert predicted.any() and not (predicted & (seg == 0)).any()
