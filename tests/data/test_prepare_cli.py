"""`coinseg prepare` from the command line, and every other command on the manifest it writes."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from coinseg.cli import app

runner = CliRunner()


def invoke(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_prepare_then_every_command_accepts_the_manifest(
    tmp_path: Path, tiny_config: Path, coin_run: Path, kits_study: Callable[[Path, int], Path]
) -> None:
    root = kits_study(tmp_path / "kits", 4)
    code, output = invoke("prepare", root, "--out", tmp_path / "d", "--workers", "2")
    assert code == 0, output
    manifest = tmp_path / "d" / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    assert list(rows[0]) == ["image", "label", "split", "slice", "case", "mask", "organ"]
    assert "split test: 1 cases" in output
    code, output = invoke(
        "train-classifier", manifest, "--out", tmp_path / "clf", "--config", tiny_config, "--device", "cpu"
    )
    assert code == 0, output
    code, output = invoke("segment", coin_run, manifest, "--out", tmp_path / "seg", "--split", "all", "--device", "cpu")
    assert code == 0, output
    assert len(list(csv.DictReader((tmp_path / "seg" / "predictions.csv").open()))) == len(rows)
    code, output = invoke("evaluate", coin_run, manifest, "--out", tmp_path / "report", "--device", "cpu")
    assert code == 0, output


def test_prepare_bad_input_is_one_line(tmp_path: Path, kits_study: Callable[[Path, int], Path]) -> None:
    root = kits_study(tmp_path / "kits", 3)
    code, output = invoke("prepare", root, "--out", tmp_path / "d", "--organ-labels", "7")
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "segmentation.nii.gz: organ '7' absent" in errors[0]
    code, output = invoke("prepare", root, "--out", tmp_path / "d", "--layout", "dicomdir")
    assert code == 2 and "--layout 'dicomdir': choose one of auto" in output
    assert not (tmp_path / "d").exists()


def test_prepare_options_out_of_range_are_named(tmp_path: Path, kits_study: Callable[[Path, int], Path]) -> None:
    root = kits_study(tmp_path / "kits", 3)
    for option, value, message in (
        ("--margin-mm", "-1", "--margin-mm -1.0: expected a number >= 0"),
        ("--min-lesion-mm2", "-1", "--min-lesion-mm2 -1.0: expected a number >= 0"),
        ("--workers", "0", "--workers 0: must be at least 1"),
        ("--spacing-mm", "0", "--spacing-mm 0.0: expected a positive number of millimetres"),
    ):
        code, output = invoke("prepare", root, "--out", tmp_path / "d", option, value)
        assert code == 2 and f"error: {message}" in output, output
    assert not (tmp_path / "d").exists()
