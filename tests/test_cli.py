"""End-to-end smoke tests of the command line on tiny synthetic data (CPU, seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from coinseg.cli import app
from coinseg.errors import RunError

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_synth_writes_the_manifest_contract(tmp_path: Path) -> None:
    code, _ = invoke("synth", tmp_path / "d", "--n-slices", "20", "--size", "64", "--seed", "3")
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "d" / "manifest.csv").open()))
    assert list(rows[0]) == ["image", "label", "mask", "split", "organ"] and len(rows) == 20
    code, output = invoke("synth", tmp_path / "d", "--n-slices", "20", "--size", "64")
    assert code == 2 and "exists and is not empty" in output


def test_classifier_trains_and_resumes(tiny_data: Path, tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "clf"
    code, output = invoke("train-classifier", tiny_data, "--out", out, "--config", tiny_config, "--device", "cpu")
    assert code == 0, output
    for name in ("config.yaml", "metrics.csv", "progress.png", "log.txt", "run.json", "test_metrics.json"):
        assert (out / name).is_file(), name
    assert set(json.loads((out / "test_metrics.json").read_text())["test"]) == {"loss", "accuracy", "auroc", "auroc_p"}
    code, output = invoke("train-classifier", tiny_data, "--out", out, "--config", tiny_config)
    assert code == 2 and "already holds a run" in output
    code, output = invoke("train-classifier", tiny_data, "--out", out, "--config", tiny_config, "--resume")
    assert code == 0 and "resumed at step 6" in output


def _inverted_labels(manifest: Path, out: Path) -> Path:
    """A copy of ``manifest`` (paths made absolute) whose validation and test rows have their labels swapped: any
    classifier that ranks the true labels no worse than chance ranks these no better than chance."""
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("image", "mask", "organ"):
            if row.get(key):
                row[key] = str((manifest.parent / row[key]).resolve())
        if row["split"] in ("val", "test"):
            row["label"] = str(1 - int(row["label"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_a_classifier_at_chance_is_reported_by_training_and_evaluation(
    tiny_data: Path, classifier_run: Path, coin_run: Path, tiny_config: Path, tmp_path: Path
) -> None:
    manifest = _inverted_labels(tiny_data, tmp_path / "m" / "manifest.csv")
    code, output = invoke(
        "train-classifier", manifest, "--out", tmp_path / "clf", "--config", tiny_config, "--device", "cpu"
    )
    assert code == 0, output
    log = (tmp_path / "clf" / "log.txt").read_text()
    assert "the classifier ranks the validation split's abnormal slices above its normal ones no better" in log
    assert json.loads((tmp_path / "clf" / "test_metrics.json").read_text())["val"]["auroc_p"] >= 0.01
    code, output = invoke(
        "train",
        manifest,
        "--classifier",
        classifier_run,
        "--out",
        tmp_path / "gan",
        "--config",
        tiny_config,
        "--device",
        "cpu",
    )
    assert code == 0, output
    assert "ranks this manifest's validation split's abnormal slices" in (tmp_path / "gan" / "log.txt").read_text()
    code, output = invoke("segment", tmp_path / "gan", manifest, "--out", tmp_path / "seg", "--device", "cpu")
    assert code == 0, output
    assert "ranks its training manifest's validation split's abnormal slices" in " ".join(output.split())
    code, output = invoke("evaluate", coin_run, manifest, "--out", tmp_path / "eval", "--device", "cpu")
    assert code == 0, output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["classifier"]["auroc_p"] >= 0.01
    assert any("ranks the test split's abnormal slices" in note for note in metrics["notes"])
    assert "ranks the test split's abnormal slices" in " ".join(output.split())


def test_gan_stops_and_resumes_exactly(
    tiny_data: Path, classifier_run: Path, tiny_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gan"
    common = ("train", tiny_data, "--classifier", classifier_run, "--out", out, "--config", tiny_config)
    code, output = invoke(*common, "--max-steps", "2", "--device", "cpu")
    assert code == 0, output
    first = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert first["step"] == 2
    code, output = invoke(*common, "--max-steps", "4", "--resume")
    assert code == 0 and "resumed at step 2" in output, output
    second = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert second["step"] == 4
    # Adam's step counters continued from the resumed state (2 G updates + 2 more with gen_every=1).
    assert int(next(iter(second["opt_g"]["state"].values()))["step"]) == 4
    assert int(next(iter(second["opt_d"]["state"].values()))["step"]) == 4
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4]


def test_max_minutes_stops_cleanly_with_a_checkpoint(
    tiny_data: Path, classifier_run: Path, tiny_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gan"
    code, output = invoke(
        "train",
        tiny_data,
        "--classifier",
        classifier_run,
        "--out",
        out,
        "--config",
        tiny_config,
        "--max-minutes",
        "0.00001",
    )
    assert code == 0, output
    assert "--max-minutes reached" in output and (out / "checkpoints" / "last.pt").is_file()


def test_segment_manifest_writes_predictions_contract(coin_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    code, output = invoke("segment", coin_run, tiny_data, "--out", tmp_path / "seg")
    assert code == 0, output
    rows = list(csv.DictReader((tmp_path / "seg" / "predictions.csv").open()))
    assert list(rows[0])[:5] == ["image", "prob", "prob_cf", "mask", "mask_pixels"]  # the contract, then extras
    assert list(rows[0])[5:] == ["case", "lesion_ml"]
    test_rows = [r for r in csv.DictReader(tiny_data.open()) if r["split"] == "test"]
    assert [r["image"] for r in rows] == [r["image"] for r in test_rows]
    mask = np.asarray(PILImage.open(tmp_path / "seg" / rows[0]["mask"]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert int(rows[0]["mask_pixels"]) == int((mask == 255).sum())


def test_segment_single_image_of_another_size(coin_run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.random.default_rng(0).normal(100, 50, (97, 131)).astype(np.float32))
    code, output = invoke("segment", coin_run, tmp_path / "big.npy", "--out", tmp_path / "seg")
    assert code == 0, output
    assert np.asarray(PILImage.open(tmp_path / "seg" / "masks" / "big.png")).shape == (97, 131)


def test_segment_nifti_volume_keeps_geometry(coin_run: Path, tmp_path: Path) -> None:
    import nibabel as nib

    affine = np.diag([-0.8, 0.8, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.full((40, 30, 5), 50, np.int16), affine), tmp_path / "vol.nii.gz")
    code, output = invoke("segment", coin_run, tmp_path / "vol.nii.gz", "--out", tmp_path / "seg")
    assert code == 0, output
    mask = nib.load(tmp_path / "seg" / "masks" / "vol.nii.gz")
    assert mask.shape == (40, 30, 5) and np.allclose(mask.affine, affine)


def test_identity_generator_gives_empty_masks(coin_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """With a zero residual (g = 0) the default fusion returns x exactly, so the mask is empty."""
    from coinseg.predictor import load_predictor

    model = load_predictor(coin_run, "cpu")
    head = model.maps.inpainter.generator.head[-1]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    arrays = [np.load(tiny_data.parent / r["image"]) for r in csv.DictReader(tiny_data.open())][:6]
    _, _, diffs = model.run(arrays)
    assert all(float(d.max()) == 0.0 for d in diffs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("segment", "{run}", "{missing}", "--out", "{out}"), "input not found"),
        (("segment", "{run}", "{data}", "--out", "{out}", "--split", "nope"), "no rows in split 'nope'"),
        (("segment", "{run}", "{data}", "--out", "{out}", "--threshold", "1.5"), "--threshold 1.5"),
        (
            ("segment", "{run}", "{data}", "--out", "{out}", "--threshold", "high"),
            "a number in [0, 1), 'floor' or 'auto'",
        ),
        (("evaluate", "{run}", "{data}", "--out", "{out}", "--methods", "coin,foo"), "unknown method 'foo'"),
        (("train", "{data}", "--classifier", "{missing}", "--out", "{out}"), "checkpoint not found"),
        (("train-classifier", "{missing}", "--out", "{out}"), "manifest not found"),
    ],
)
def test_user_errors_are_one_line(
    args: tuple[str, ...], message: str, coin_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    values = {"run": coin_run, "data": tiny_data, "out": tmp_path / "out", "missing": tmp_path / "missing.csv"}
    code, output = invoke(*(a.format(**values) for a in args))
    assert code == 2
    assert output.startswith("error: ") and message in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()


def test_evaluate_compares_methods_on_the_same_slices(
    coin_run: Path, singla_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    code, output = invoke(
        "evaluate",
        coin_run,
        tiny_data,
        "--out",
        out,
        "--methods",
        "coin,singla,rise,scorecam,layercam",
        "--singla-run",
        singla_run,
        "--rise-masks",
        "64",
        "--device",
        "cpu",
    )
    assert code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["coin", "singla", "rise", "scorecam", "layercam"]
    from coinseg.runtime.checkpoint import load_checkpoint

    for name, row in metrics["methods"].items():
        run = {"coin": coin_run, "singla": singla_run}.get(name)
        assert row["extent"] == ("threshold" if run is None else "half-peak")  # the default extent: maps of a GAN
        if run is None:
            assert row["threshold"] == 0.975
        else:  # the default, floor: the larger of the run's noise floor and half the typical lesion's change
            ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
            assert row["threshold"] == ckpt["floor"] == max(ckpt["auto_threshold"], ckpt["half_max"])
        assert row["n_abnormal"] == metrics["n_abnormal"] and row["n_normal"] == metrics["n_normal"]
        assert row["seconds_per_slice"] > 0
    fid_reported = metrics["methods"]["coin"].get("fid_paired") is not None
    assert fid_reported or any("FID unavailable" in note for note in metrics["notes"])
    html = (out / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html


def test_threshold_auto_uses_the_calibrated_noise_floor(coin_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    from coinseg.runtime.checkpoint import load_checkpoint

    floor = load_checkpoint(coin_run / "checkpoints" / "best.pt")["auto_threshold"]
    assert 0.0 <= floor < 1.0
    out = tmp_path / "report"
    code, output = invoke("evaluate", coin_run, tiny_data, "--out", out, "--threshold", "auto", "--device", "cpu")
    assert code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["methods"]["coin"]["threshold"] == floor
    assert any("threshold auto" in note for note in metrics["notes"])
    code, output = invoke("segment", coin_run, tiny_data, "--out", tmp_path / "seg", "--threshold", "auto")
    assert code == 0, output
    paper = tmp_path / "paper"
    code, output = invoke(
        "evaluate", coin_run, tiny_data, "--out", paper, "--threshold", "0.25", "--extent", "threshold"
    )
    assert code == 0, output
    assert json.loads((paper / "metrics.json").read_text())["methods"]["coin"]["extent"] == "threshold"
    code, output = invoke("segment", coin_run, tiny_data, "--out", tmp_path / "bad", "--extent", "everything")
    assert code != 0 and "--extent" in output and not (tmp_path / "bad").exists()


def test_threshold_auto_without_calibration_is_a_clear_error(coin_run: Path) -> None:
    from coinseg.predictor import load_predictor

    model = load_predictor(coin_run, "cpu")
    assert model.floor is not None and model.threshold("floor") == model.floor
    model.auto_threshold, model.window_from, model.half_max = 0.1, "organ", 0.05
    assert model.threshold("floor") == model.floor  # calibrated at training time: the run's own value
    model.floor = None  # a run trained before floor was stored: the rule of its time
    model.auto_threshold = None
    with pytest.raises(RunError, match="no calibrated threshold"):
        model.threshold("auto")
    assert model.threshold(0.3) == 0.3
    assert model.threshold("floor") == 0.25  # no noise floor: the paper's value
    model.auto_threshold = 0.4
    assert model.threshold("floor") == 0.4 and model.threshold("auto") == 0.4
    model.auto_threshold = 0.1
    assert model.threshold("floor") == 0.25 and model.threshold("auto") == 0.1
    model.window_from = "body"  # a whole-body window: the noise floor alone, below 0.25 too
    assert model.threshold("floor") == 0.1
    model.auto_threshold = None
    assert model.threshold("floor") == 0.25
    model.auto_threshold, model.window_from = 0.1, "given"
    assert model.threshold("floor") == 0.25
    assert model.below_noise_floor(0.25) is None
    model.auto_threshold = 0.4
    assert "below this run's noise floor 0.400" in (model.below_noise_floor(0.25) or "")
    model.half_max = 0.45  # strong lesions: half their change is above the noise floor
    assert model.threshold("floor") == 0.45 and model.threshold("auto") == 0.4
    model.auto_threshold, model.window_from = 0.1, "body"
    assert model.threshold("floor") == 0.45
    model.half_max = 0.05
    assert model.threshold("floor") == 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("segment", "r", "i", "--out", "o", "--batch-size", "0"), "--batch-size 0: must be at least 1"),
        (("segment", "r", "i", "--out", "o", "--batch-size", "-1"), "--batch-size -1: must be at least 1"),
        (("evaluate", "r", "m", "--out", "o", "--rise-masks", "0"), "--rise-masks 0: must be at least 1"),
        (("evaluate", "r", "m", "--out", "o", "--saliency-threshold", "5"), "--saliency-threshold 5.0: must be in"),
        (("train", "m", "--classifier", "c", "--out", "o", "--max-steps", "0"), "--max-steps 0: must be at least 1"),
        (("train", "m", "--classifier", "c", "--out", "o", "--max-steps", "-3"), "--max-steps -3: must be at least"),
        (("train-classifier", "m", "--out", "o", "--seed", "-1"), "--seed -1: must be in 0..4294967295"),
        (("synth", "o", "--seed", "99999999999999999999"), "--seed 99999999999999999999: must be in 0..4294967295"),
        (("demo", "--out", "o", "--seed", "-2"), "--seed -2: must be in 0..4294967295"),
    ],
)
def test_option_ranges_are_one_line_before_any_work(args: tuple[str, ...], message: str) -> None:
    code, output = invoke(*args)
    assert code == 2 and output == f"error: {message}" + output[len(message) + 7 :]
    assert output.count("\n") == 1 and not Path("o").exists()


def test_max_minutes_must_be_positive(tmp_path: Path) -> None:
    for value in ("0", "-1"):
        code, output = invoke("train-classifier", tmp_path / "m.csv", "--out", tmp_path / "o", "--max-minutes", value)
        assert code == 2 and output == f"error: --max-minutes {value}: must be more than 0\n"
    assert not (tmp_path / "o").exists()


def test_the_config_files_seed_holds_unless_seed_is_given(tiny_data: Path, tiny_config: Path, tmp_path: Path) -> None:
    """--seed overrides a --config file's seed; without it the file's seed is the run's (it was silently 0)."""
    import yaml

    config = tmp_path / "seed3.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(tiny_config.read_text()), "seed": 3}))
    for extra, seed in (((), 3), (("--seed", "5"), 5)):
        out = tmp_path / f"clf{seed}"
        code, output = invoke(
            "train-classifier", tiny_data, "--out", out, "--config", config, "--device", "cpu", *extra
        )
        assert code == 0, output
        assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == seed


def test_config_errors_and_a_profile_conflict_are_one_line(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("classifier:\n  batch_size: 0\n")
    code, output = invoke("train-classifier", tiny_data, "--out", tmp_path / "o", "--config", tmp_path / "bad.yaml")
    assert code == 2 and output == f"error: {tmp_path / 'bad.yaml'}: classifier.batch_size: 0 must be >= 1\n"
    (tmp_path / "paper.yaml").write_text("profile: paper\n")
    code, output = invoke(
        "train-classifier",
        tiny_data,
        "--out",
        tmp_path / "o",
        "--config",
        tmp_path / "paper.yaml",
        "--profile",
        "quick",
    )
    assert code == 2 and "says 'paper' but --profile quick was given" in output
    assert not (tmp_path / "o").exists()


def _with_duplicate(tiny_data: Path, tmp_path: Path) -> Path:
    """A copy of the tiny manifest whose first row appears again in the test split."""
    lines = tiny_data.read_text().splitlines()
    base = tiny_data.parent
    rows = [lines[0]] + [",".join(str(base / c) if "/" in c else c for c in line.split(",")) for line in lines[1:]]
    first = rows[1].split(",")
    first[3] = "test" if first[3] != "test" else "train"
    path = tmp_path / "dups.csv"
    path.write_text("\n".join([*rows, ",".join(first)]) + "\n")
    return path


def test_duplicates_are_a_warning_in_the_log_or_refused_when_strict(
    tiny_data: Path, tiny_config: Path, tmp_path: Path
) -> None:
    manifest = _with_duplicate(tiny_data, tmp_path)
    code, output = invoke(
        "train-classifier", manifest, "--out", tmp_path / "o", "--config", tiny_config, "--strict-manifest"
    )
    assert code == 2 and output.startswith("error: ") and "listed in more than one row" in output
    assert "(--strict-manifest)" in output and not (tmp_path / "o").exists()
    code, output = invoke("train-classifier", manifest, "--out", tmp_path / "o", "--config", tiny_config)
    assert code == 0, output
    log = (tmp_path / "o" / "log.txt").read_text()
    assert "warning:" in log and "1 image(s) listed in more than one row (1 repeated rows; first: rows 1, 49)" in log


def test_predictions_csv_neutralises_formula_cells(coin_run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "=HYPERLINK(1).npy", np.zeros((64, 64), np.float32))
    (tmp_path / "m.csv").write_text("image,label\n=HYPERLINK(1).npy,0\n")
    code, output = invoke("segment", coin_run, tmp_path / "m.csv", "--split", "all", "--out", tmp_path / "seg")
    assert code == 0, output
    rows = list(csv.DictReader((tmp_path / "seg" / "predictions.csv").open()))
    assert rows[0]["image"] == "'=HYPERLINK(1).npy"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (OSError(28, "No space left on device", "d/x.npy"), "error: d/x.npy: no space left on the device\n"),
        (OSError(13, "Permission denied", "d"), "error: d: Permission denied\n"),
        (MemoryError(), "error: not enough memory (MemoryError); try a smaller --size or --n-slices\n"),
        (
            RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes."),
            "error: not enough memory (DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes.); try a "
            "smaller --size or --n-slices\n",
        ),
    ],
)
def test_disk_and_memory_failures_are_one_line(
    error: BaseException, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coinseg.data.synth

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(coinseg.data.synth, "synthesize", fail)
    code, output = invoke("synth", tmp_path / "d", "--n-slices", "20", "--size", "64")
    assert code == 2 and output.endswith(message) and "Traceback" not in output


@pytest.mark.parametrize("error", [OSError(5, "Input/output error", "d"), RuntimeError("a bug")])
def test_other_errors_keep_their_traceback(
    error: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coinseg.data.synth

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(coinseg.data.synth, "synthesize", fail)
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), "--n-slices", "20", "--size", "64"])
    assert result.exit_code == 1 and result.exception is error


def test_out_naming_a_file_is_refused_before_the_data_are_read(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("keep")
    code, output = invoke("train-classifier", tmp_path / "missing.csv", "--out", tmp_path / "f")
    assert code == 2 and output == f"error: {tmp_path / 'f'}: is a file; --out must name a folder\n"
    assert (tmp_path / "f").read_text() == "keep"
