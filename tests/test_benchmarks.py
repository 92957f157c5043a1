"""The generalization suite's table (benchmarks/generalization.py) on a hand-made result."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
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


def test_the_table_shows_lesions_found_and_seen_per_polarity_and_their_detectability() -> None:
    result = _result(1e-9)
    result["diagnosis"]["lesions"] = {
        "bright": {"n": 8, "found": 5, "seen": 7},
        "dark": {"n": 9, "found": 0, "seen": 4},
    }
    result["diagnosis"]["detectability"] = {"input": 1.74, "native": 6.91}
    result["diagnosis"]["evidence"] = {"bright": 0.993, "dark": None}
    rows = generalization.table([result, _result(1e-9)]).splitlines()
    assert rows[-2].endswith("| 5 / 7 / 8; 0 / 4 / 9 | 1.7 / 6.9 | 0.99 / – |")
    assert rows[-1].endswith("| – | – / – | – |")  # a run diagnosed before the columns existed


def _seeded(member: str, seed: int, iou: float, ap: float, fp: float) -> dict:
    result = _result(1e-9)
    result.update(member=member, seed=seed)
    result["default"] = {**result["default"], "pooled_iou": iou, "pixel_ap": ap, "normal_fp_rate": fp}
    return result


def test_the_summary_averages_each_member_over_its_seeds_and_checks_the_issues_targets() -> None:
    results = [
        _seeded("a", 0, 0.6, 0.8, 0.00),
        _seeded("a", 1, 0.4, 0.6, 0.05),
        _seeded("b", 0, 0.9, 0.9, 0.02),
        _seeded("c", 0, 0.1, 0.2, 0.12),
    ]
    lines = generalization.summary(results).splitlines()
    assert lines[2] == "| a | 0, 1 | 0.500 (0.400 - 0.600) | 0.700 | 0.050 | 0.500 |"
    assert lines[3] == "| b | 0 | 0.900 (0.900 - 0.900) | 0.900 | 0.020 | 0.500 |"
    assert lines[-1] == (
        "pooled IoU >= 0.5 on 2 of 3 members (mean over seeds); median 0.500; "
        "normal slices with a false-positive pixel at most 0.120"
    )
    rows = generalization.table(results).splitlines()
    assert rows[2].startswith("| a | ") and rows[3].startswith("| a (seed 1) | ")


def test_each_training_seed_gets_its_own_folder_and_settings(tmp_path: Path) -> None:
    from coinseg.config import load_settings

    assert generalization.run_folder(tmp_path, 0) == tmp_path  # the layout of the tables in RESULTS.md
    assert generalization.run_settings(tmp_path, 0, None) == []  # the quick profile as it is
    run = generalization.run_folder(tmp_path, 2)
    assert run == tmp_path / "seed-2"
    args = generalization.run_settings(run, 2, 700)
    assert args == ["--config", str(run / "settings.yaml")]
    settings = load_settings(run / "settings.yaml")
    assert (settings.seed, settings.classifier.max_steps, settings.profile) == (2, 700, "quick")


class _FakeModel:
    """f(x) = 1 where a slice has a pixel above 50 HU (sees bright lesions only); the map is 1 on the left half
    (gated: 0 where f(x) < 0.5)."""

    def run(self, arrays, organs=None, gate=False):
        probs = np.array([float((a > 50).any()) for a in arrays])
        maps = []
        for a, p in zip(arrays, probs, strict=True):
            m = np.zeros(a.shape, np.float32)
            m[:, : a.shape[1] // 2] = 0.0 if gate and p < 0.5 else 1.0
            maps.append(m)
        return probs, probs, maps

    def threshold(self, name: str) -> float:
        return 0.5


def test_lesions_are_counted_by_polarity_found_by_the_mask_and_seen_by_the_classifier() -> None:
    clean = np.zeros((20, 20), np.float32)
    image = clean.copy()
    gt = np.zeros((20, 20), bool)
    image[2:5, 2:5], gt[2:5, 2:5] = 100.0, True  # bright, left half: found, seen
    image[12:15, 3:6], gt[12:15, 3:6] = -40.0, True  # dark, left half: found (slice called abnormal), not seen
    image[2:5, 14:17], gt[2:5, 14:17] = -40.0, True  # dark, right half: not found, not seen
    only_dark = clean.copy()
    only_dark[8:11, 3:6] = -40.0  # a slice f calls normal: its map is gated away, so not found
    gt_dark = only_dark < 0
    bright_clean = clean.copy()
    bright_clean[15:18, 15:18] = 80.0  # f calls this slice abnormal even without its lesion
    on_bright = bright_clean.copy()
    on_bright[2:5, 2:5] = 100.0  # bright, left half: found, but not seen (the lesion alone changes nothing)
    got = generalization.lesions_found(
        _FakeModel(),
        [image, only_dark, on_bright],
        [clean, clean, bright_clean],
        [gt, gt_dark, on_bright > 90],
        None,
    )
    assert got == {"bright": {"n": 2, "found": 2, "seen": 1}, "dark": {"n": 3, "found": 1, "seen": 0}}


def test_detectability_is_contrast_times_root_area_over_the_structure_around_the_lesion() -> None:
    """A 4 x 4 px lesion of +0.1 on a checkerboard of +-0.02 (structure a 1.5 px blur removes entirely):
    d = 0.1 * sqrt(16) / 0.02 = 20; half the contrast halves d; a slice without a lesion has none (NaN)."""
    checker = 0.02 * (-1.0) ** np.add.outer(np.arange(48), np.arange(48))
    clean = np.stack([0.5 + checker] * 3)
    x = clean.copy()
    x[0, 20:24, 30:34] += 0.1
    x[1, 20:24, 30:34] += 0.05
    d = generalization.detectability(x, clean)
    assert d[0] == pytest.approx(20.0, rel=0.02)
    assert d[1] == pytest.approx(d[0] / 2, rel=1e-6)
    assert np.isnan(d[2])


def _organ_slices(mimic: float, rim: float = 0.0) -> tuple[list, list, list, list]:
    """4 normal, 4 bright (+40 HU) and 4 dark (-40 HU) slices of a 100 HU disk organ, each with the same normal
    structure of -``mimic`` HU 12 px above the lesions' place and its outer 2 px ``rim`` HU darker (partial
    volume), and one slice with no organ."""
    from scipy import ndimage

    yy, xx = np.mgrid[:48, :48]
    organ = (yy - 24) ** 2 + (xx - 24) ** 2 <= 18**2
    clean = np.where(organ, 100.0, -100.0).astype(np.float32)
    clean[10:15, 22:27] -= mimic
    clean[organ & ~ndimage.binary_erosion(organ, iterations=2)] -= rim
    images, cleans, gts, organs = [], [], [], []
    for change in [0.0] * 4 + [40.0] * 4 + [-40.0] * 4:
        x, gt = clean.copy(), np.zeros(clean.shape, bool)
        if change:
            x[26:31, 22:27] += change
            gt[26:31, 22:27] = True
        images.append(x), cleans.append(clean), gts.append(gt), organs.append(organ)
    images.append(clean), cleans.append(clean), gts.append(np.zeros(clean.shape, bool))
    organs.append(np.zeros(clean.shape, bool))  # no organ: left out
    return images, cleans, gts, organs


def test_intensity_evidence_falls_to_chance_where_normal_anatomy_holds_as_large_a_change() -> None:
    """Bright lesions stand out from the organ (AUROC 1); dark lesions fainter than a dark normal structure in
    every slice do not (every slice's largest fall is the structure's: tied, 0.5); without it they do (1)."""
    assert generalization.intensity_evidence(*_organ_slices(mimic=60.0)) == {"bright": 1.0, "dark": 0.5}
    assert generalization.intensity_evidence(*_organ_slices(mimic=0.0)) == {"bright": 1.0, "dark": 1.0}
    images, cleans, gts, organs = _organ_slices(mimic=0.0)
    assert generalization.intensity_evidence(images[:8], cleans[:8], gts[:8], organs[:8])["dark"] is None


def test_intensity_evidence_can_leave_out_the_organs_darker_rim() -> None:
    """A 2 px rim 100 HU darker in every slice outweighs the dark lesions (0.5); without the rim they stand out."""
    slices = _organ_slices(mimic=0.0, rim=100.0)
    assert generalization.intensity_evidence(*slices)["dark"] == 0.5
    assert generalization.intensity_evidence(*slices, rim_px=2)["dark"] == 1.0


def test_a_bad_config_is_refused_by_name_before_any_member_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  organ_parts: true\n  organ_margin: null\n")
    work = tmp_path / "work"
    monkeypatch.setattr(sys, "argv", ["generalization.py", "--work", str(work), "--config", str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        generalization.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--config: {bad}: data.organ_parts: true needs the organ-centred crop" in err
    assert not work.exists()
