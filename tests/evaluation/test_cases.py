"""Per-scan scores of slice masks from a prepared store, and evaluate's per-volume report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coinseg.data.build import PrepareOptions, prepare_study
from coinseg.data.manifest import read_manifest
from coinseg.data.store import from_store, open_case
from coinseg.evaluation.cases import score_cases

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_fixtures = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data fixtures not present")


@pytest.fixture(scope="module")
def injected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "ts"
    prepare_study(SHARED / "totalsegmentator-mini", out, PrepareOptions(inject=True), lambda _: None)
    return out


@needs_fixtures
def test_perfect_and_empty_masks_score_as_expected(injected: Path) -> None:
    entries = sorted(read_manifest(injected / "manifest.csv"), key=lambda e: e.slice or 0)
    assert from_store(entries)
    lesion = open_case(injected, "s0001").lesion
    truths = [np.asarray(lesion[e.slice]) > 0 for e in entries]
    perfect = score_cases(entries, truths, truths)
    assert len(perfect) == 1 and perfect[0].score.dice == 1.0 and perfect[0].score.n_false_positive == 0
    assert perfect[0].score.n_detected == perfect[0].score.n_true > 0
    empty = score_cases(entries, [np.zeros_like(t) for t in truths], truths)[0].score
    assert empty.dice == 0.0 and empty.n_detected == 0 and empty.pred_ml == 0.0
    assert empty.true_ml == pytest.approx(perfect[0].truth.sum() * 27 / 1000)  # 3 mm isotropic voxels
    assert perfect[0].truth.shape == (122, 101, 30)


@needs_fixtures
def test_evaluate_on_a_store_reports_volumes_with_montages(coin_run: Path, injected: Path, tmp_path: Path) -> None:
    from coinseg.evaluation.runner import evaluate

    metrics = evaluate(coin_run, injected / "manifest.csv", tmp_path / "ev", ["coin"], split="train", device="cpu")
    volumes = metrics["methods"]["coin"]["volumes"]
    assert volumes["n_volumes"] == 1 and volumes["n_true_lesions"] > 0
    assert [row["case"] for row in metrics["volumes"]["coin"]] == ["s0001"]
    assert (tmp_path / "ev" / "volumes" / "s0001.png").is_file()
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["figures"]["coin on s0001"] == "volumes/s0001.png"
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "Volumes: coin, per scan" in html and "lesion sensitivity" in html
