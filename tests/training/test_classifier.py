"""Which checkpoint of the classifier a run keeps as ``best.pt`` (the one ``train`` uses)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from coinseg.config import ClassifierSelect, Settings
from coinseg.training import classifier


@pytest.mark.parametrize(("select", "kept"), [(ClassifierSelect.val_loss, 2), (ClassifierSelect.last, 6)])
def test_best_pt_holds_the_lowest_validation_loss_or_the_last_weights(
    tiny_data: Path,
    tiny: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    select: ClassifierSelect,
    kept: int,
) -> None:
    """Validation losses that only rise (validations at steps 2, 4, 6): ``val_loss`` keeps step 2, ``last`` the
    final weights (those of ``last.pt``)."""
    rising = itertools.count(1.0)

    def evaluate(*args: Any) -> dict[str, float | None]:
        return {"loss": next(rising), "accuracy": 0.5, "auroc": 0.5, "auroc_p": 0.5}

    monkeypatch.setattr(classifier, "_evaluate", evaluate)
    tiny.classifier.eval_every, tiny.classifier.select = 2, select
    classifier.train_classifier(tiny_data, tmp_path / "run", tiny, device="cpu")
    best, last = (torch.load(tmp_path / "run" / "checkpoints" / f"{n}.pt", weights_only=True) for n in ("best", "last"))
    assert best["step"] == kept and last["step"] == 6
    same = all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert same == (select is ClassifierSelect.last)
