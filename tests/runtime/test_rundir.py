"""Run folders: ownership, the lock, resume checks and metrics trimming."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coinseg.config import Settings
from coinseg.errors import RunError
from coinseg.io.files import MARKER
from coinseg.runtime.rundir import RunDir, claim_folder, remove_owned, settings_difference


def test_claim_refuses_foreign_folders_and_files(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="not made by coinseg"):
        claim_folder(foreign, "run")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunError, match="is a file"):
        claim_folder(a_file, "run")
    assert (foreign / "notes.txt").read_text() == "keep me" and a_file.read_text() == "x"


def test_claim_refuses_an_input_folder(tmp_path: Path) -> None:
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("image,label\n")
    with pytest.raises(RunError, match="folder of an input"):
        claim_folder(tmp_path / "data", "run", (manifest,))
    with pytest.raises(RunError, match="folder of an input"):
        claim_folder(tmp_path, "run", (manifest,))


def test_claim_accepts_new_empty_and_owned(tmp_path: Path) -> None:
    claim_folder(tmp_path / "new", "run")
    (tmp_path / "empty").mkdir()
    claim_folder(tmp_path / "empty", "run")
    (tmp_path / "new" / "x").write_text("made by coinseg")
    claim_folder(tmp_path / "new", "run")
    assert (tmp_path / "new" / MARKER).is_file() and (tmp_path / "empty" / MARKER).is_file()


def test_remove_owned_only_removes_what_coinseg_made(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(RunError, match="not made by coinseg"):
        remove_owned(foreign)
    assert foreign.is_dir()
    claim_folder(tmp_path / "ours", "run")
    remove_owned(tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    first = RunDir(tmp_path / "run", Settings(), False, "run")
    try:
        with pytest.raises(RunError, match="another coinseg run"):
            RunDir(tmp_path / "run", Settings(), False, "run")
    finally:
        first.close()
    RunDir(tmp_path / "run", Settings(), False, "run").close()


def test_resume_refuses_other_settings_but_allows_extendable(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run", Settings(), False, "run")
    run.checkpoints.joinpath("last.pt").write_bytes(b"")
    run.close()
    other = Settings()
    other.gan.lr = 1e-3
    with pytest.raises(RunError, match=re.escape(f"gan.lr: {Settings().gan.lr} -> 0.001")):
        RunDir(tmp_path / "run", other, True, "run")
    longer = Settings()
    longer.gan.max_steps = 10_000
    RunDir(tmp_path / "run", longer, True, "run", extendable=frozenset({"gan.max_steps"})).close()


def test_metrics_append_and_trim(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run", Settings(), False, "run")
    for step in (1, 2, 3):
        run.append_metrics({"step": step, "loss": step / 10})
    run.append_metrics({"step": 4, "loss": 0.4, "val": 1.0})
    run.trim_metrics(2)
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines == ["step,loss,val", "1,0.1,", "2,0.2,"]
    run.close()


def test_settings_difference_names_the_key() -> None:
    assert settings_difference({"a": {"b": 1}}, {"a": {"b": 2}}) == "a.b: 1 -> 2"
    assert settings_difference({"a": {"b": 1}}, {"a": {"b": 2}}, frozenset({"a.b"})) is None
