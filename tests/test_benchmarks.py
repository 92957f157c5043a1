"""The generalization suite's table (benchmarks/generalization.py) on a hand-made result."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
generalization = pytest.importorskip("generalization")


def _result(val_p: float | None) -> dict:
    scores = {
        "pooled_iou": 0.0,
        "threshold": 0.2,
        "mean_dice": 0.0,
        "pixel_ap": 0.001,
        "cv": None,
        "normal_fp_rate": 0.0,
    }
    oracle = {"iou_025": 0.5, "iou_best": 0.7, "best_threshold": 0.1}
    return {
        "member": "m",
        "classifier_auroc": 0.5,
        "classifier_val_p": val_p,
        "default": scores,
        "auto": scores,
        "seconds": {"data": 1.0, "classifier": 2.0, "gan": 3.0, "eval-default": 4.0},
        "steps": {"clf": 10, "gan": 5},
        "diagnosis": {
            "window": [-100.0, 200.0],
            "lesion_contrast_in_map": 0.1,
            "oracle": oracle,
            "oracle_native": oracle,
            "coin": oracle,
            "completeness": 0.5,
            "location": 0.1,
        },
    }


def test_the_table_flags_a_classifier_at_chance_by_its_validation_p_value() -> None:
    rows = generalization.table([_result(0.3), _result(1e-9), _result(None)]).splitlines()
    assert "| m | 0.500 (0.3, at chance) |" in rows[2]
    assert "| m | 0.500 (1e-09) |" in rows[3]
    assert "| m | 0.500 (–) |" in rows[4]
