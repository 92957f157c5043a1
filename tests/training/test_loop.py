"""The shared training loop on a fake trainer: independent cadences, the final step, the deadline, the order of
writes, and the data order's shares."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric import Fabric

from coinseg.config import Settings
from coinseg.errors import RunError
from coinseg.runtime.rundir import Deadline, RunDir
from coinseg.training import loop
from coinseg.training.loop import Cadences, DataOrder, every, train_loop


class FakeHooks:
    """Records the events of the loop; its 'score' is 10 - step, so every validation is a new best (10 + step
    with ``worsening``: none after the first is)."""

    def __init__(self, worsening: bool = False) -> None:
        self.events: list[tuple[str, int]] = []
        self.steps = 0
        self.sign = 1.0 if worsening else -1.0

    def train_step(self, step: int, idx: torch.Tensor) -> None:
        assert step == self.steps and idx.shape == (4,)
        self.steps += 1

    def read_losses(self) -> dict[str, float]:
        self.events.append(("log", self.steps))
        return {"loss": float(self.steps)}

    def validate(self) -> dict[str, float | None]:
        self.events.append(("validate", self.steps))
        return {"score": 10.0 + self.sign * self.steps}

    def best_state(self, validation: dict[str, float | None]) -> dict[str, Any]:
        return {"best_of": self.steps}

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]

    def sample(self, step: int) -> None:
        self.events.append(("sample", step))


def run_fake(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    max_steps: int,
    deadline: Deadline,
    hooks: FakeHooks | None = None,
    score_key: str | None = "score",
) -> tuple[FakeHooks, list[tuple[str, int]], loop.Outcome]:
    saved: list[tuple[str, int]] = []
    real = loop.save_checkpoint

    def save(state: dict[str, Any], path: Path) -> None:
        saved.append((path.name, state["step"]))
        real(state, path)

    monkeypatch.setattr(loop, "save_checkpoint", save)
    hooks, run = hooks or FakeHooks(), RunDir(tmp_path / "run", Settings(), False, "test-run")
    outcome = train_loop(
        Fabric(accelerator="cpu", devices=1),
        hooks,
        run,
        DataOrder(10, 4, seed=0),
        name="fake",
        start=0,
        max_steps=max_steps,
        cadences=Cadences(log=2, validate=3, checkpoint=4, samples=5),
        deadline=deadline,
        record={"kind": "fake"},
        score_key=score_key,
        best_key="best_score",
    )
    run.close()
    return hooks, saved, outcome


def test_every_counts_completed_steps() -> None:
    assert [s for s in range(0, 10) if every(s, 3)] == [3, 6, 9]
    assert not any(every(s, 0) for s in range(10))


def test_cadences_are_independent_and_the_last_step_runs_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks, saved, outcome = run_fake(tmp_path, monkeypatch, 7, Deadline(None))
    assert outcome.step == 7 and not outcome.deadline_stop
    assert [s for e, s in hooks.events if e == "log"] == [2, 4, 6, 7]
    assert [s for e, s in hooks.events if e == "validate"] == [3, 6, 7]
    assert [s for e, s in hooks.events if e == "sample"] == [5, 7]
    assert [s for name, s in saved if name == "last.pt"] == [4, 7]
    assert [s for name, s in saved if name == "best.pt"] == [3, 6, 7]
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6, 7]  # a row per log or validation step
    assert rows[1]["loss"] == "" and rows[1]["val_score"] == "7.0"
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 7 and last["steps"] == 7 and last["best_score"] == 3.0 and last["kind"] == "fake"


@pytest.mark.parametrize(("score_key", "best_steps"), [("score", [3]), (None, [3, 6, 7])])
def test_best_is_the_lowest_score_or_without_a_score_the_last_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, score_key: str | None, best_steps: list[int]
) -> None:
    """Scores that only get worse: best.pt stays at the first validation, unless no score is named."""
    _, saved, _ = run_fake(tmp_path, monkeypatch, 7, Deadline(None), FakeHooks(worsening=True), score_key)
    assert [s for name, s in saved if name == "best.pt"] == best_steps


def test_deadline_stops_after_the_step_with_every_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks, saved, outcome = run_fake(tmp_path, monkeypatch, 100, Deadline(0))
    assert outcome.step == 1 and outcome.deadline_stop
    assert hooks.events == [("log", 1), ("validate", 1), ("sample", 1)]
    assert saved == [("best.pt", 1), ("last.pt", 1)]  # the checkpoint last: a kill after it loses nothing
    assert "--max-minutes reached: stopped at step 1" in (tmp_path / "run" / "log.txt").read_text()


def test_data_order_shares_one_global_batch_between_ranks() -> None:
    one = DataOrder(50, 6, seed=3)
    ranks = [DataOrder(50, 6, seed=3, rank=r, world=3) for r in range(3)]
    for _ in range(4):
        batch = one.draw()
        shares = [order.shard(order.draw()) for order in ranks]
        assert all(len(s) == 2 for s in shares)
        assert torch.equal(torch.cat(shares), batch)
    weighted = DataOrder(50, 4, seed=0, weights=torch.tensor([0.0] * 49 + [1.0]))
    assert weighted.draw().tolist() == [49] * 4
    with pytest.raises(RunError, match="batch size 6 does not divide over 4 processes"):
        DataOrder(50, 6, seed=0, rank=0, world=4)
