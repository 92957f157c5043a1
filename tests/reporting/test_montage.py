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
    path = lesion_montage(ct, pred, truth, tmp_path / "case" / "montage.png", n_slices=1, crop=False)
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


def _ras_case():
    ct, pred, truth = _case()
    ct[28:36, 20:24, :] = 300.0  # a bright marker on the patient's right (high i in RAS), posterior
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    return ct, pred, truth, affine


def _panel_pixels(path):
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return png[:-30]  # without the slice labels, which name each file's own stored axis


def test_montage_is_radiological_whatever_the_voxel_order(tmp_path):
    ct, pred, truth, ras = _ras_case()
    # the same anatomy stored as LPS (first two axes reversed) and slice-first (K x I x J)
    lps = ras.copy()
    lps[:2, :2] *= -1
    lps[:2, 3] = [N - 1, N - 1]
    slice_first = ras[:, [2, 0, 1, 3]]

    def as_lps(a):
        return a[::-1, ::-1, :]

    def as_slice_first(a):
        return a.transpose(2, 0, 1)

    a = lesion_montage(ct, pred, truth, tmp_path / "ras.png", affine=ras)
    b = lesion_montage(as_lps(ct), as_lps(pred), as_lps(truth), tmp_path / "lps.png", affine=lps)
    c = lesion_montage(
        as_slice_first(ct), as_slice_first(pred), as_slice_first(truth), tmp_path / "sf.png", affine=slice_first
    )
    np.testing.assert_array_equal(_panel_pixels(a), _panel_pixels(b))
    np.testing.assert_array_equal(_panel_pixels(a), _panel_pixels(c))


def test_montage_puts_the_patients_right_on_the_left(tmp_path):
    ct, pred, truth, ras = _ras_case()
    png = _panel_pixels(lesion_montage(ct, pred, truth, tmp_path / "m.png", n_slices=1, affine=ras, crop=False))
    bright = np.argwhere(png.min(axis=-1) > 200)  # the marker (white), not the background (also white)...
    dark = np.argwhere(png.sum(axis=-1) < 3 * 250)
    left, right = dark[:, 1].min(), dark[:, 1].max()
    marker_cols = [c for r, c in bright if left < c < right and dark[:, 0].min() < r < dark[:, 0].max()]
    assert marker_cols and np.mean(marker_cols) < (left + right) / 2


def test_stored_slice_index_is_recovered_for_labels():
    from coinseg.reporting.montage import _to_ras

    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    (ras,), axis, backwards = _to_ras([volume], np.diag([1.0, 1.0, -3.0, 1.0]))  # stored superior-to-inferior
    assert (axis, backwards) == (2, True)
    # display slice k is stored slice K - 1 - k (and the first axis is flipped for the radiological view)
    np.testing.assert_array_equal(ras[:, :, 0], volume[::-1, :, 3])
    slice_first = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])  # stored axis 0 = S
    (ras,), axis, backwards = _to_ras([volume.transpose(2, 0, 1)], slice_first)
    assert (axis, backwards) == (0, False)
    np.testing.assert_array_equal(ras, volume[::-1])


def test_crop_is_one_square_around_all_lesions():
    from coinseg.reporting.montage import _lesion_box

    pred = np.zeros((100, 80), bool)
    pred[40:44, 30:34] = True
    truth = np.zeros_like(pred)
    truth[50:52, 36:40] = True
    rows, cols = _lesion_box([pred], [truth])
    assert rows.stop - rows.start == cols.stop - cols.start == 2 * 16  # lesions span 12 x 10: the 16 minimum
    assert rows.start <= 40 and rows.stop >= 52 and cols.start <= 30 and cols.stop >= 40
    edge = np.zeros_like(pred)
    edge[0:3, 78:80] = True  # a lesion at the corner: the square is shifted inside the image
    rows, cols = _lesion_box([edge], [None])
    assert (rows.start, cols.stop) == (0, 80) and rows.stop - rows.start == cols.stop - cols.start == 32
    assert _lesion_box([np.zeros_like(pred)], [None]) is None
