"""Data-parallel training on 2 CPU processes (DDP, gloo), started by torchrun as a user would:

- the ranks train on different slices, whose union is the global batch one process draws at the same step;
- the trainable weights stay identical across ranks;
- one set of run files is written (by rank 0);
- the losses match a 1-process run on the same global batches within a stated tolerance: not exactly, since
  BatchNorm normalises over each rank's own half batch (SyncBatchNorm, used on multi-GPU runs, is CUDA-only)
  and each rank draws dropout masks for its own rows;
- ``--resume`` of the 2-process run on 1 process continues it.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from coinseg.cli import app

WORKER = Path(__file__).with_name("ddp_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"
# How far a 2-process value may be from the 1-process one: |x - y| <= rtol |y| + atol (see the module docstring).
# Measured on these tiny runs: the classifier's training loss 13 % apart (BatchNorm over 4-slice shares,
# dropout), its validation loss 1e-4 (relative); the GAN's D and G losses 1e-4 (relative), its validation score
# (~1e-3 for a G near the identity) 3e-5 (absolute).
CLASSIFIER_TOLERANCES = {"train_loss": (0.15, 0.0), "val_loss": (1e-3, 0.0)}
GAN_TOLERANCES = {"d": (1e-3, 0.0), "g": (1e-3, 0.0), "val_score": (0.0, 1e-4)}


def torchrun(processes: int, record: Path, *args: Any) -> list[dict[str, Any]]:
    """Run the command line on ``processes`` ranks; returns each rank's record (indices, weights)."""
    record.mkdir(parents=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "COINSEG_TEST_RECORD": str(record),
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    done = subprocess.run([*command, str(WORKER), *map(str, args)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(record / f"rank{r}.pt", weights_only=True) for r in range(processes)]


def in_process(*args: Any) -> dict[str, Any]:
    """The 1-process reference run, recorded like a torchrun rank, in this process (cheaper than a launch)."""
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    assert spec is not None and spec.loader is not None
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker.recorded([str(a) for a in args])


def rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def check_ranks(ranks: list[dict[str, Any]], one: dict[str, Any]) -> None:
    a, b = ranks
    assert a["world"] == b["world"] == 2 and one["world"] == 1
    # different slices per rank, together exactly the 1-process batches
    assert not torch.equal(a["indices"], b["indices"])
    assert torch.equal(torch.cat([a["indices"], b["indices"]], dim=1), one["indices"])
    # identical weights on both ranks (gradients averaged by DDP)
    assert a["weights"].keys() == b["weights"].keys()
    for name, value in a["weights"].items():
        assert torch.equal(value, b["weights"][name]), name


def check_losses(two: Path, one: Path, tolerances: dict[str, tuple[float, float]]) -> None:
    for r2, r1 in zip(rows(two), rows(one), strict=True):
        assert r2["step"] == r1["step"]
        for name, (rtol, atol) in tolerances.items():
            x, y = float(r2[name]), float(r1[name])
            assert abs(x - y) <= rtol * abs(y) + atol, (r2["step"], name, x, y)


def test_classifier_trains_on_two_processes(tiny_data: Path, tiny_config: Path, tmp_path: Path) -> None:
    common = ("train-classifier", tiny_data, "--config", tiny_config, "--device", "cpu")
    ranks = torchrun(2, tmp_path / "rec2", *common, "--out", tmp_path / "two")
    one = in_process(*common, "--out", tmp_path / "one")
    check_ranks(ranks, one)
    two = tmp_path / "two"
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert [r["step"] for r in rows(two)] == ["3", "6"]
    assert (two / "log.txt").read_text().count("classifier small:") == 1
    assert "2 processes" in (two / "log.txt").read_text()
    check_losses(two, tmp_path / "one", CLASSIFIER_TOLERANCES)


def test_gan_trains_on_two_processes_and_resumes_on_one(
    tiny_data: Path, classifier_run: Path, tiny_config: Path, tmp_path: Path
) -> None:
    common = ("train", tiny_data, "--classifier", classifier_run, "--config", tiny_config, "--device", "cpu")
    ranks = torchrun(2, tmp_path / "rec2", *common, "--out", tmp_path / "two")
    one = in_process(*common, "--out", tmp_path / "one")
    check_ranks(ranks, one)
    two = tmp_path / "two"
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best.pt", "classifier.pt", "last.pt"]
    assert sorted(p.name for p in (two / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    assert [r["step"] for r in rows(two)] == ["2", "4"]
    check_losses(two, tmp_path / "one", GAN_TOLERANCES)
    last = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    for name, value in ranks[0]["weights"].items():  # the checkpoint holds the ranks' weights
        network, _, key = name.partition(".")
        assert torch.equal(last[network][key], value), name

    resumed = CliRunner().invoke(app, [str(a) for a in (*common, "--out", two, "--resume", "--max-steps", "6")])
    assert resumed.exit_code == 0, resumed.output
    assert [r["step"] for r in rows(two)] == ["2", "4", "6"]
    assert torch.load(two / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
