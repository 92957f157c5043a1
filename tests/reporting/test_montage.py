import numpy as np
import pytest
from PIL import Image

from coinseg.reporting.figures import ALPHA, FN_COLOUR, FP_COLOUR, TP_COLOUR
from coinseg.reporting.montage import lesion_montage, montage_slices

N = 40


def _case():
    ct = np.full((N, N, 10), -160.0)  # the window's low end: black
    truth = np.zeros(ct.shape, bool)
    pred = np.zeros(ct.shape, bool)
    truth[5:15, 5:15, 3] = True
    pred[10:20, 5:15, 3] = True  # TP i 10..14, FN i 5..9, FP i 15..19 (j 5..14)
    pred[30:32, 30:32, 7] = True  # a false positive on another slice
    truth[20, 20, 8] = True  # a one-voxel true lesion on a third slice
    return ct, pred, truth


def test_montage_slices_ranks_by_truth_then_prediction():
    _, pred, truth = _case()
    assert montage_slices(pred, truth, 1) == [3]
    assert montage_slices(pred, truth, 2) == [3, 8]
    assert montage_slices(pred, truth, 6) == [3, 7, 8]  # shown in ascending order
    assert montage_slices(pred, None, 6) == [3, 7]
    assert montage_slices(np.zeros_like(pred), None, 6) == [5]  # nothing anywhere: the middle slice
    assert montage_slices(pred.transpose(2, 0, 1), truth.transpose(2, 0, 1), 1, axis=0) == [3]


def _blend(colour):
    return np.array(colour) * ALPHA  # over black


def test_montage_png_shows_tp_fp_fn_where_they_are(tmp_path):
    ct, pred, truth = _case()
    path = lesion_montage(ct, pred, truth, tmp_path / "case" / "montage.png", n_slices=1)
    assert sorted(p.name for p in path.parent.iterdir()) == ["montage.png"]  # no temporary file left
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    # the panel is the only non-white area apart from the slice label below it
    dark = np.argwhere(png.sum(axis=-1) < 3 * 250)
    rows = np.unique(dark[:, 0])
    cols = np.unique(dark[:, 1])
    top, left, right = rows.min(), cols.min(), cols.max()
    size = right - left + 1  # square panel
    cell = size / N

    def at(i, j):
        # display: i to the right, j upward (np.rot90 of the i x j plane)
        return png[int(top + (N - 1 - j + 0.5) * cell), int(left + (i + 0.5) * cell)]

    np.testing.assert_allclose(at(12, 10), _blend(TP_COLOUR), atol=3)
    np.testing.assert_allclose(at(7, 10), _blend(FN_COLOUR), atol=3)
    np.testing.assert_allclose(at(17, 10), _blend(FP_COLOUR), atol=3)
    np.testing.assert_allclose(at(30, 30), [0, 0, 0], atol=3)
    np.testing.assert_allclose(at(17, 25), [0, 0, 0], atol=3)


def test_montage_rejects_mismatched_shapes(tmp_path):
    ct, pred, truth = _case()
    with pytest.raises(ValueError, match="one shape"):
        lesion_montage(ct, pred[:-1], truth, tmp_path / "m.png")
