import math

import numpy as np
import pytest

from coinseg.evaluation.volume import (
    MIN_LESION_MM3,
    VolumeTally,
    dice,
    iou,
    label_lesions,
    lesion_detection,
    lesion_volume_ml,
    postprocess_volume,
    remove_small_lesions,
    score_volume,
    spacing_from_affine,
)


def test_default_minimum_is_the_5mm_sphere():
    assert MIN_LESION_MM3 == pytest.approx(4 / 3 * math.pi * 2.5**3)


def test_spacing_from_an_oblique_affine():
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 3.0])
    affine[:3, 3] = [10, -20, 5]
    assert spacing_from_affine(affine) == pytest.approx((0.8, 0.9, 3.0))


def test_components_are_26_connected():
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # corner contact: one lesion
    m[3, 3, 3] = True  # separate
    _, n = label_lesions(m)
    assert n == 2


def test_remove_small_lesions_keeps_two_lesions_on_one_slice_and_drops_small_ones():
    m = np.zeros((20, 20, 5), bool)
    m[2:5, 2:5, 2] = True  # 9 voxels, left kidney
    m[12:15, 12:15, 2] = True  # 9 voxels, right kidney, same slice
    m[18, 18, 0] = True  # 1 voxel
    spacing = (2.0, 2.0, 2.0)  # 8 mm^3 per voxel: 72 mm^3 kept, 8 mm^3 dropped at the default 65.4
    out = remove_small_lesions(m, spacing)
    expected = m.copy()
    expected[18, 18, 0] = False
    np.testing.assert_array_equal(out, expected)
    # the limit is inclusive and in mm^3: 9 voxels of 8 mm^3 = 72 mm^3
    assert remove_small_lesions(m, spacing, 72.0)[2:5, 2:5, 2].all()
    assert not remove_small_lesions(m, spacing, 72.1).any()
    np.testing.assert_array_equal(remove_small_lesions(m, spacing, 0.0), m)
    assert not remove_small_lesions(np.zeros((3, 3, 3), bool), spacing).any()


def test_postprocess_volume_reads_the_spacing_from_the_affine():
    m = np.zeros((10, 10, 10), bool)
    m[1:4, 1:4, 1] = True  # 9 voxels
    affine = np.diag([-3.0, 3.0, 1.0, 1.0])  # 9 mm^3 per voxel: 81 mm^3 kept at 65.4
    np.testing.assert_array_equal(postprocess_volume(m, affine), m)
    affine[2, 2] = 0.5  # 4.5 mm^3 per voxel: 40.5 mm^3 removed
    assert not postprocess_volume(m, affine).any()


def test_dice_and_iou_hand_computed_and_empty_rules():
    t = np.zeros((4, 4, 4), bool)
    p = np.zeros((4, 4, 4), bool)
    t[0, 0, :4] = True  # 4 voxels
    p[0, 0, 2:4] = True
    p[3, 3, 3] = True  # 3 predicted, 2 shared
    assert dice(p, t) == pytest.approx(2 * 2 / (3 + 4))
    assert iou(p, t) == pytest.approx(2 / 5)
    empty = np.zeros_like(t)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(p, empty) == 0.0 and iou(empty, t) == 0.0


def test_lesion_volume_ml():
    m = np.zeros((10, 10, 10), bool)
    m[:5, :4, :2] = True  # 40 voxels of 0.8 * 0.8 * 3 = 1.92 mm^3
    assert lesion_volume_ml(m, (0.8, 0.8, 3.0)) == pytest.approx(40 * 1.92 / 1000)


def _two_lesion_case():
    t = np.zeros((20, 20, 6), bool)
    t[2:6, 2:6, 1:4] = True  # lesion A, 48 voxels
    t[12:16, 12:16, 1:4] = True  # lesion B, 48 voxels
    p = np.zeros_like(t)
    p[5, 5, 3] = True  # touches A by one voxel
    p[5:9, 5:9, 4] = True  # ... same component continues outside A (26-connected to the voxel above)
    p[18:20, 0:2, 0:2] = True  # false positive, 8 voxels
    return p, t


def test_detection_any_overlap_rule():
    p, t = _two_lesion_case()
    det = lesion_detection(p, t)
    assert (det.n_true, det.n_detected, det.n_pred, det.n_false_positive) == (2, 1, 2, 1)


def test_detection_iou_rule_rejects_a_one_voxel_touch():
    p, t = _two_lesion_case()
    det = lesion_detection(p, t, min_iou=0.1)  # component of 17 voxels shares 1 with a 48-voxel lesion
    assert (det.n_detected, det.n_false_positive) == (0, 2)


def test_one_big_component_detects_two_lesions_and_is_no_false_positive():
    t = np.zeros((10, 10, 3), bool)
    t[1, 1, 1] = t[8, 8, 1] = True
    p = np.zeros_like(t)
    p[:, :, 1] = True
    det = lesion_detection(p, t)
    assert (det.n_true, det.n_detected, det.n_pred, det.n_false_positive) == (2, 2, 1, 0)


def test_score_volume_and_tally_merge():
    p, t = _two_lesion_case()
    spacing = (1.0, 1.0, 2.0)
    a = score_volume("case_a", p, t, spacing)
    assert a.true_ml == pytest.approx(96 * 2 / 1000) and a.pred_ml == pytest.approx(25 * 2 / 1000)
    empty = np.zeros_like(t)
    b = score_volume("case_b", empty, empty, spacing)  # normal volume, clean
    c = score_volume("case_c", p, empty, spacing)  # normal volume, two false positives
    left, right = VolumeTally(), VolumeTally()
    left.add(c)
    right.add(a)
    right.add(b)
    summary = left.merge(right).summary()
    assert summary["n_volumes"] == 3 and summary["n_volumes_with_lesion"] == 1
    assert summary["mean_dice"] == pytest.approx(a.dice)  # normal volumes excluded from the mean
    assert summary["lesion_sensitivity"] == pytest.approx(1 / 2)
    assert summary["false_positives_per_volume"] == pytest.approx((1 + 0 + 2) / 3)
    assert summary["empty_volumes_clean"] == pytest.approx(1 / 2)
    assert [r["case"] for r in left.merge(right).rows_as_dicts()] == ["case_a", "case_b", "case_c"]
    with pytest.raises(ValueError, match="case_a"):
        right.merge(right)


def test_empty_tally_summary_is_undefined_not_zero():
    s = VolumeTally().summary()
    assert s["mean_dice"] is None and s["lesion_sensitivity"] is None and s["false_positives_per_volume"] is None
