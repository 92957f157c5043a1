import csv
import json
from pathlib import Path

import numpy as np
import pytest

from coinseg.data.synth import synthesize
from coinseg.errors import UsageError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    calls: list[int] = []
    manifest = synthesize(tmp_path_factory.mktemp("a") / "synth", n_slices=40, size=64, seed=3, progress=calls.append)
    assert calls == [1] * 40
    return manifest


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def test_manifest_and_files(tiny: Path) -> None:
    rows = _rows(tiny)
    assert list(rows[0]) == ["image", "label", "mask", "split", "organ"]
    assert len(rows) == 40
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert {r["label"] for r in rows} == {"0", "1"}
    for row in rows:
        image = np.load(tiny.parent / row["image"])
        mask = np.load(tiny.parent / row["mask"])
        organ = np.load(tiny.parent / row["organ"])
        assert image.shape == mask.shape == organ.shape == (64, 64)
        assert image.dtype == np.float32 and mask.dtype == np.uint8 and organ.dtype == np.uint8
        assert row["label"] == str(int(mask.any()))
        assert not (mask.astype(bool) & ~organ.astype(bool)).any()
    info = json.loads((tiny.parent / "synth.json").read_text())
    assert info["seed"] == 3 and info["size"] == 64 and info["n_slices"] == 40
    lo, hi = info["window"]
    assert lo < hi
    assert sum(sum(c.values()) for c in info["counts"].values()) == 40
    assert [p.name for p in tiny.parent.parent.iterdir()] == ["synth"]  # no temporary folder left


def test_lesion_brightens_kidney_in_hu(tiny: Path) -> None:
    info = json.loads((tiny.parent / "synth.json").read_text())
    lo, hi = info["window"]
    row = next(r for r in _rows(tiny) if r["label"] == "1")
    image = np.load(tiny.parent / row["image"])
    mask = np.load(tiny.parent / row["mask"]).astype(bool)
    assert np.median(image[mask]) > lo + 0.5 * (hi - lo)


def test_same_seed_same_files(tiny: Path, tmp_path: Path) -> None:
    again = synthesize(tmp_path / "again", n_slices=40, size=64, seed=3)
    assert again.read_text() == tiny.read_text()
    for row in _rows(tiny):
        for column in ("image", "mask", "organ"):
            np.testing.assert_array_equal(np.load(tiny.parent / row[column]), np.load(again.parent / row[column]))


def test_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        synthesize(tmp_path / "full", n_slices=20, size=64)
    (tmp_path / "empty").mkdir()
    assert synthesize(tmp_path / "empty", n_slices=20, size=64).is_file()


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--n-slices"):
        synthesize(tmp_path / "a", n_slices=5)
    with pytest.raises(UsageError, match="--size"):
        synthesize(tmp_path / "a", n_slices=20, size=32)
    assert not (tmp_path / "a").exists()


def test_error_leaves_nothing_behind(tmp_path: Path) -> None:
    def fail(_: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        synthesize(tmp_path / "out", n_slices=20, size=64, progress=fail)
    assert list(tmp_path.iterdir()) == []
