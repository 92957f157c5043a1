"""The evaluation runner's shared-subset rule, method parsing and classifier gate."""

from pathlib import Path

import numpy as np
import pytest

from coinseg.data.manifest import Entry
from coinseg.evaluation.runner import evaluate, subset
from coinseg.predictor import Predictor


def _entries(labels: list[int]) -> list[Entry]:
    return [Entry(Path(f"/d/{i}.npy"), f"{i}.npy", label, "test", i + 1) for i, label in enumerate(labels)]


def test_subset_keeps_label_proportions_order_and_is_deterministic() -> None:
    entries = _entries([1] * 60 + [0] * 40)
    chosen = subset(entries, 10)
    assert [e.label for e in chosen].count(1) == 6 and [e.label for e in chosen].count(0) == 4
    assert chosen == subset(entries, 10)
    assert [entries.index(e) for e in chosen] == sorted(entries.index(e) for e in chosen)
    assert chosen[0] is entries[0] and chosen[5] is entries[59]  # evenly spaced: both ends of each label


def test_subset_larger_than_split_is_everything() -> None:
    entries = _entries([0, 1, 1])
    assert subset(entries, 10) == entries and subset(entries, None) == entries


def test_gate_empties_every_mask_when_the_classifier_calls_all_slices_normal(
    coin_run: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Predictor, "probs", lambda self, images, batch=64: np.zeros(len(images)))
    common = {"methods": ["coin"], "threshold": 0.0, "device": "cpu"}
    gated = evaluate(coin_run, tiny_data, tmp_path / "gated", **common)["methods"]["coin"]
    open_ = evaluate(coin_run, tiny_data, tmp_path / "open", gate=False, **common)["methods"]["coin"]
    assert gated["gated"] and not open_["gated"]
    assert gated["pooled_iou"] == 0.0 and gated["normal_fp_rate"] == 0.0
    assert open_["pooled_iou"] > 0.0 and open_["normal_fp_rate"] > 0.0
    lesions = [f"lesions_{p}" for p in ("brighter", "darker")]
    assert [gated[k] for k in lesions] == [open_[k] for k in lesions] and sum(gated[k] for k in lesions) > 0
    assert gated["detected_brighter"] == gated["detected_darker"] == 0
    assert open_["detected_brighter"] + open_["detected_darker"] > 0
    assert (
        "masks gated by the classifier (none where f(x) < 0.5): yes" in (tmp_path / "gated" / "report.md").read_text()
    )
    assert "masks gated by the classifier (none where f(x) < 0.5): no" in (tmp_path / "open" / "report.md").read_text()
