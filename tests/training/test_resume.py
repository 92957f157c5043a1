"""Kill-and-resume is exact: a run killed right after a checkpoint and resumed ends with the same weights,
optimiser states, data order and random states, bit for bit, as the run that was never interrupted.

The kill is an exception raised as soon as ``last.pt`` of step ``k`` is on disk (what a ``kill -9`` at that
moment leaves behind); the classifier's cosine schedule spans ``max_steps``, so its runs keep ``max_steps``
fixed and only the kill stops them early.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from coinseg.config import Settings
from coinseg.training import loop


class Killed(Exception):
    """Stands for the process dying."""


def kill_after_checkpoint(monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    real = loop.save_checkpoint

    def save(state: dict[str, Any], path: Path) -> None:
        real(state, path)
        if path.name == "last.pt" and state["step"] == at_step:
            raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save)


def assert_identical(a: Any, b: Any, where: str = "last.pt") -> None:
    """Every tensor equal (torch.equal), every other value equal, recursively; ``versions`` aside."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            if key != "versions":
                assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def metrics(run: Path) -> list[dict[str, str]]:
    """metrics.csv rows without the wall-clock rate."""
    return [
        {k: v for k, v in row.items() if k != "steps_per_s"} for row in csv.DictReader((run / "metrics.csv").open())
    ]


def last(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_classifier_resumes_exactly_after_a_kill(
    tiny_data: Path, tiny: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coinseg.training.classifier import train_classifier

    train_classifier(tiny_data, tmp_path / "whole", tiny, device="cpu")
    kill_after_checkpoint(monkeypatch, 3)
    with pytest.raises(Killed):
        train_classifier(tiny_data, tmp_path / "killed", tiny, device="cpu")
    monkeypatch.undo()
    at_kill = last(tmp_path / "killed")
    assert at_kill["step"] == 3
    train_classifier(tiny_data, tmp_path / "killed", tiny, device="cpu", resume=True)
    whole, resumed = last(tmp_path / "whole"), last(tmp_path / "killed")
    assert whole["step"] == resumed["step"] == tiny.classifier.max_steps
    assert any(not torch.equal(at_kill["model"][k], v) for k, v in whole["model"].items())  # it trained on
    assert_identical(whole, resumed)
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "killed")


# Singla* (dual conditioning, cyclic term) costs another ~80 s on 2 shared cores: outside CI (-m slow)
@pytest.mark.parametrize("method", ["coin", pytest.param("singla", marks=pytest.mark.slow)])
def test_gan_resumes_exactly_after_a_kill(
    tiny_data: Path, classifier_run: Path, tiny: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Default quick-profile parts are on (MC dropout in the classifier term: global RNG; EMA: its counter)."""
    from coinseg.config import apply_method
    from coinseg.training.gan import train_gan

    tiny.gan = apply_method(tiny.gan, method)
    tiny.gan.max_steps, tiny.gan.log_every = 6, 1
    train_gan(tiny_data, classifier_run, tmp_path / "whole", tiny, device="cpu")
    kill_after_checkpoint(monkeypatch, 2)
    with pytest.raises(Killed):
        train_gan(tiny_data, classifier_run, tmp_path / "killed", tiny, device="cpu")
    monkeypatch.undo()
    at_kill = last(tmp_path / "killed")
    train_gan(tiny_data, classifier_run, tmp_path / "killed", tiny, device="cpu", resume=True)
    whole, resumed = last(tmp_path / "whole"), last(tmp_path / "killed")
    assert at_kill["step"] == 2 and whole["step"] == resumed["step"] == 6
    assert any(not torch.equal(at_kill["inpainter"][k], v) for k, v in whole["inpainter"].items())  # it trained on
    assert_identical(whole, resumed)
    best = torch.load(tmp_path / "whole" / "checkpoints" / "best.pt", weights_only=True)
    assert_identical(best, torch.load(tmp_path / "killed" / "checkpoints" / "best.pt", weights_only=True), "best.pt")
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "killed")
