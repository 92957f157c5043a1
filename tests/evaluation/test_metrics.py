import numpy as np
import pytest

from coinseg.evaluation.metrics import (
    LesionTally,
    SegmentationTally,
    accuracy_auroc,
    auroc_p_value,
    average_precision,
    chance_warning,
    counterfactual_validity,
    difference_map,
    flip_rate,
    lesion_mask,
    lesion_polarity,
    polarity_warning,
    postprocess,
)


def _mask(shape, *slices):
    m = np.zeros(shape, dtype=bool)
    for s in slices:
        m[s] = True
    return m


def test_difference_map_scale():
    x = np.array([[-1.0, 0.0], [1.0, 0.5]])
    x_cf = np.array([[1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(difference_map(x, x_cf), [[1.0, 0.0], [1.0, 0.25]])


def test_difference_map_keeps_torch_tensors():
    import torch

    out = difference_map(torch.tensor([[-1.0, 0.5]]), torch.tensor([[1.0, 0.0]]))
    assert isinstance(out, torch.Tensor)
    assert out.tolist() == [[1.0, 0.25]]


def _rings(shape, centre, levels):
    """A map of concentric square rings around ``centre``: ``levels[r]`` at Chebyshev distance r, 0 beyond."""
    rows, cols = np.indices(shape)
    distance = np.maximum(abs(rows - centre[0]), abs(cols - centre[1]))
    out = np.zeros(shape)
    for r, level in enumerate(levels):
        out[distance == r] = level
    return out


def test_lesion_mask_threshold_extent_is_the_plain_cut():
    diff = np.random.default_rng(0).random((16, 16))
    np.testing.assert_array_equal(lesion_mask(diff, 0.6, "threshold"), diff > 0.6)


def test_lesion_mask_trims_a_strong_lesion_to_its_half_peak():
    diff = _rings((21, 21), (10, 10), [0.8, 0.6, 0.45, 0.3, 0.25])  # peak 0.8 >= twice the cut 0.2
    mask = lesion_mask(diff, 0.2)
    np.testing.assert_array_equal(mask, diff >= 0.4)  # rings 0-2 (5 x 5 px), not the 9 x 9 above the cut
    assert mask.sum() == 25 and (diff > 0.2).sum() == 81


def test_lesion_mask_grows_a_weak_lesion_below_the_cut_by_its_margin():
    # peak 0.3 with cut 0.2: down to max(0.15, 2 * 0.2 - 0.3) = 0.15, i.e. rings 0-3, not ring 4 (0.1)
    diff = _rings((21, 21), (10, 10), [0.3, 0.25, 0.18, 0.15, 0.1])
    diff[0, 0] = 0.18  # as high as ring 2 but not connected to the lesion: not masked
    mask = lesion_mask(diff, 0.2)
    expected = _rings((21, 21), (10, 10), [1, 1, 1, 1]) > 0
    np.testing.assert_array_equal(mask, expected)
    # a lesion just above the cut keeps only what is above it
    barely = _rings((21, 21), (10, 10), [0.21, 0.21, 0.18, 0.15])
    np.testing.assert_array_equal(lesion_mask(barely, 0.2), barely > 0.2)


def test_lesion_mask_gives_each_lesion_its_own_extent():
    strong = _rings((20, 40), (10, 10), [0.9, 0.7, 0.5, 0.3])  # cut 0.2: trimmed at 0.45 -> rings 0-2
    weak = _rings((20, 40), (10, 30), [0.3, 0.25, 0.16, 0.1])  # grown to 0.15 -> rings 0-2
    mask = lesion_mask(strong + weak, 0.2)
    np.testing.assert_array_equal(mask[:, :20], strong[:, :20] >= 0.45)
    np.testing.assert_array_equal(mask[:, 20:], weak[:, 20:] >= 0.15)
    assert mask[:, :20].sum() == 25 and mask[:, 20:].sum() == 25


def test_lesion_mask_matches_its_definition_lesion_by_lesion():
    """The labelling shortcuts (lowest lesions first, skipping those inside a grown region, labelling only the
    part of the map that can hold a region) against the definition applied lesion by lesion to the whole map."""
    import scipy.ndimage as ndi

    def by_definition(diff, cut):
        labels, n = ndi.label(diff > cut)
        mask = np.zeros(diff.shape, bool)
        for k in range(1, n + 1):
            peak = diff[labels == k].max()
            regions, _ = ndi.label(diff >= max(peak / 2, 2 * cut - peak))
            met = np.unique(regions[labels == k])
            mask |= np.isin(regions, met[met > 0])
        return mask

    rng = np.random.default_rng(2)
    for sigma in (0.0, 1.0, 2.5):
        diff = ndi.gaussian_filter(rng.random((48, 48)), sigma)
        diff = (diff - diff.min()) / (diff.max() - diff.min())
        for cut in (0.3, 0.5, 0.7):
            np.testing.assert_array_equal(lesion_mask(diff, cut), by_definition(diff, cut))


def test_lesion_mask_has_a_pixel_exactly_where_the_threshold_has_one():
    rng = np.random.default_rng(1)
    for _ in range(50):
        diff = rng.random((12, 12)) * rng.random()
        assert lesion_mask(diff, 0.3).any() == (diff > 0.3).any()


def test_postprocess_keeps_largest_component_and_drops_isolated_pixel():
    m = _mask((20, 20), np.s_[2:7, 2:7], np.s_[12:15, 12:15])
    m[10, 3] = True  # isolated pixel
    out = postprocess(m)
    np.testing.assert_array_equal(out, _mask((20, 20), np.s_[2:7, 2:7]))


def test_postprocess_border_object_and_empty():
    corner = _mask((10, 10), np.s_[0:4, 0:4])
    np.testing.assert_array_equal(postprocess(corner), corner)  # the border does not erode objects
    assert not postprocess(np.zeros((8, 8), bool)).any()
    assert not postprocess(_mask((8, 8), np.s_[3, 3])).any()  # opening empties it


def test_tally_pooled_vs_mean_iou_and_dice():
    t = SegmentationTally()
    shape = (6, 6)
    # A: perfect, 8 px -> TP 8; IoU 1, Dice 1
    a = _mask(shape, np.s_[0:2, 0:4])
    t.add(a, a, abnormal=True)
    # B: 2 px gt, 2 px pred, disjoint -> FP 2, FN 2; IoU 0, Dice 0
    t.add(_mask(shape, np.s_[5, 0:2]), _mask(shape, np.s_[5, 4:6]), abnormal=True)
    # C: gt 4 px, pred 2 px inside -> TP 2, FN 2; IoU 1/2, Dice 2/3
    t.add(_mask(shape, np.s_[3, 0:2]), _mask(shape, np.s_[3, 0:4]), abnormal=True)
    s = t.summary()
    assert s["pooled_iou"] == pytest.approx(10 / 16)
    assert s["mean_iou"] == pytest.approx(0.5)
    assert s["mean_dice"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert s["n_abnormal"] == 3 and s["n_normal"] == 0
    assert s["normal_fp_rate"] is None


def test_tally_empty_conventions_and_normal_fp_rate():
    t = SegmentationTally()
    empty = np.zeros((4, 4), bool)
    t.add(empty, empty, abnormal=True)  # empty/empty: IoU = Dice = 1, no pooled union
    s = t.summary()
    assert s["pooled_iou"] is None
    assert s["mean_iou"] == 1.0 and s["mean_dice"] == 1.0
    t.add(empty, _mask((4, 4), np.s_[0, 0]), abnormal=True)  # missed lesion: 0
    assert t.summary()["mean_iou"] == pytest.approx(0.5)
    t.add(_mask((4, 4), np.s_[1, 1]), empty, abnormal=False)
    t.add(empty, empty, abnormal=False)
    t.add(empty, empty, abnormal=False)
    s = t.summary()
    assert s["normal_fp_rate"] == pytest.approx(1 / 3)
    assert s["n_normal"] == 3 and s["n_abnormal"] == 2
    assert s["pooled_iou"] == 0.0
    nothing = SegmentationTally().summary()
    assert nothing["mean_iou"] is None and nothing["mean_dice"] is None and nothing["pooled_iou"] is None


def test_average_precision_hand_computed():
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    # ties enter together: threshold 0.5 -> P 1/2 at R 1/2; threshold 0.2 -> P 2/3 at R 1
    assert average_precision(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1])) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([[0.3, 0.1]]), np.array([[0, 0]])) is None
    assert average_precision(np.array([0.2, 0.1]), np.array([1, 1])) == pytest.approx(1.0)


def test_average_precision_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(5000), 2)  # many ties
    targets = rng.random(5000) < scores * 0.3
    assert average_precision(scores, targets) == pytest.approx(
        metrics.average_precision_score(targets, scores), abs=1e-12
    )


def test_counterfactual_validity_and_flip_rate():
    p = np.array([0.9, 0.95, 0.85, 0.5])
    p_cf = np.array([0.05, 0.5, 0.01, 0.0])
    assert counterfactual_validity(p, p_cf) == pytest.approx(2 / 3)
    assert counterfactual_validity(np.array([0.5, 0.8]), np.array([0.0, 0.0])) is None
    assert flip_rate(p, p_cf) == pytest.approx(3 / 4)
    assert flip_rate(np.array([0.1, 0.49]), np.array([0.0, 0.0])) is None


def test_accuracy_auroc_with_ties():
    acc, auc = accuracy_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.5, 0.9]))
    assert acc == pytest.approx(3 / 4)
    assert auc == pytest.approx(3.5 / 4)
    acc, auc = accuracy_auroc(np.array([1, 1]), np.array([0.7, 0.2]))
    assert acc == pytest.approx(0.5) and auc is None


def test_auroc_p_value_is_small_only_when_abnormal_slices_rank_above_normal_ones():
    labels = np.array([1] * 10 + [0] * 10)
    high, low = np.linspace(0.6, 0.9, 10), np.linspace(0.1, 0.4, 10)
    assert auroc_p_value(labels, np.r_[high, low]) < 1e-3  # perfectly separated
    assert auroc_p_value(labels, np.r_[low, high]) > 0.99  # separated the wrong way round
    assert auroc_p_value(labels, np.full(20, 0.5)) >= 0.5  # no ranking at all
    assert auroc_p_value(np.array([1, 1]), np.array([0.7, 0.2])) is None  # one class


def test_chance_warning_names_the_auroc_and_counts_only_for_a_classifier_at_chance() -> None:
    labels = np.array([1] * 30 + [0] * 30)
    separated = np.r_[np.linspace(0.55, 0.95, 30), np.linspace(0.05, 0.45, 30)]
    shuffled = np.random.default_rng(0).permutation(separated)

    def warning(p: np.ndarray) -> str | None:
        return chance_warning(accuracy_auroc(labels, p)[1], auroc_p_value(labels, p), 30, 30, "the validation split")

    assert warning(separated) is None
    text = warning(shuffled)
    assert text is not None and "30 abnormal / 30 normal slices" in text
    assert "AUROC" in text and "the validation split's abnormal slices" in text
    assert chance_warning(None, None, 2, 0, "the validation split") is None  # one class: nothing to test


def _two_lesions() -> tuple[np.ndarray, np.ndarray]:
    """A 40 HU slice with a bright lesion (rows 5-9, cols 5-9, 120 HU) and a dark one (rows 20-25, cols 20-25,
    -10 HU), plus a bright structure that is no lesion (rows 30-34, cols 2-6, 300 HU)."""
    image = np.full((40, 40), 40.0, np.float32)
    truth = np.zeros((40, 40), bool)
    image[5:10, 5:10], truth[5:10, 5:10] = 120.0, True
    image[20:26, 20:26], truth[20:26, 20:26] = -10.0, True
    image[30:35, 2:7] = 300.0
    return image, truth


def test_lesion_polarity_labels_each_lesion_and_compares_it_with_its_ring() -> None:
    image, truth = _two_lesions()
    labels, darker = lesion_polarity(image, truth)
    assert labels.shape == truth.shape and labels.max() == 2
    assert set(np.unique(labels[5:10, 5:10])) == {labels[7, 7]} and labels[7, 7] > 0
    assert not darker[labels[7, 7] - 1]
    assert darker[labels[22, 22] - 1]
    assert (labels[~truth] == 0).all()
    # a lesion darker than its own ring even inside a darker organ: only the ring counts
    image[:, :] = -50.0
    image[20:26, 20:26] = -100.0
    image[5:10, 5:10] = 0.0
    assert list(lesion_polarity(image, truth)[1][[labels[7, 7] - 1, labels[22, 22] - 1]]) == [False, True]
    # lesions at the slice's edges (their ring is cut by the border)
    image, truth = np.full((12, 12), 40.0), np.zeros((12, 12), bool)
    image[:3, :3], truth[:3, :3] = -20.0, True
    image[9:, 9:], truth[9:, 9:] = 90.0, True
    labels, darker = lesion_polarity(image, truth)
    assert darker[labels[0, 0] - 1] and not darker[labels[11, 11] - 1]


def test_lesion_tally_counts_a_lesion_as_detected_when_any_pixel_of_it_is_predicted() -> None:
    image, truth = _two_lesions()
    labels, darker = lesion_polarity(image, truth)
    tally = LesionTally()
    pred = np.zeros_like(truth)
    pred[9, 9] = True  # one pixel of the bright lesion
    pred[30:35, 2:7] = True  # a false positive on the bright structure: no lesion detected by it
    tally.add(pred, labels, darker)
    tally.add(np.zeros_like(truth), labels, darker)  # the same lesions, missed
    assert tally.summary() == {
        "lesions_brighter": 2,
        "detected_brighter": 1,
        "lesion_sensitivity_brighter": 0.5,
        "lesions_darker": 2,
        "detected_darker": 0,
        "lesion_sensitivity_darker": 0.0,
    }
    empty = LesionTally().summary()
    assert empty["lesions_darker"] == 0 and empty["lesion_sensitivity_darker"] is None


def _counts(bright: tuple[int, int], dark: tuple[int, int]) -> dict:
    return {
        "detected_brighter": bright[0],
        "lesions_brighter": bright[1],
        "detected_darker": dark[0],
        "lesions_darker": dark[1],
    }


def test_polarity_warning_names_the_polarity_a_method_misses() -> None:
    note = polarity_warning(_counts((65, 90), (0, 77)))
    assert note is not None and note.startswith("found 65 of 90 lesions brighter than their surroundings but 0 of 77")
    reverse = polarity_warning(_counts((2, 40), (30, 50)))
    assert reverse is not None and reverse.startswith("found 30 of 50 lesions darker")
    assert polarity_warning(_counts((50, 90), (40, 77))) is None  # both found
    assert polarity_warning(_counts((5, 60), (0, 60))) is None  # neither found well: nothing to compare
    assert polarity_warning(_counts((8, 9), (0, 77))) is None  # too few bright lesions to tell
