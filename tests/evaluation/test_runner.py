"""The evaluation runner's shared-subset rule and method parsing."""

from pathlib import Path

from coinseg.data.manifest import Entry
from coinseg.evaluation.runner import subset


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
