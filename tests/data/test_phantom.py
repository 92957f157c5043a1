import numpy as np
import pytest
from scipy import ndimage

from coinseg.data.phantom import make_phantom


@pytest.mark.parametrize("size", [64, 128, 256])
def test_shapes_and_dtypes(size: int) -> None:
    phantom = make_phantom(size, np.random.default_rng(0))
    assert phantom.hu.shape == phantom.kidney.shape == phantom.body.shape == (size, size)
    assert phantom.hu.dtype == np.float32
    assert phantom.kidney.dtype == bool and phantom.body.dtype == bool
    assert np.isfinite(phantom.hu).all()


def test_intensities_are_plausible() -> None:
    phantom = make_phantom(128, np.random.default_rng(1))
    assert np.median(phantom.hu[~phantom.body]) < -900  # air
    assert 100 < np.median(phantom.hu[phantom.kidney]) < 250  # enhanced kidney
    assert phantom.hu.max() > 500  # bone
    assert phantom.body[64, 64] and not phantom.body[0, 0]


def test_same_seed_same_slice() -> None:
    a = make_phantom(128, np.random.default_rng(7))
    b = make_phantom(128, np.random.default_rng(7))
    c = make_phantom(128, np.random.default_rng(8))
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.kidney, b.kidney)
    assert not np.array_equal(a.hu, c.hu)


def test_two_kidneys_inside_body_and_large_enough() -> None:
    big_boxes = n_boxes = 0
    for seed in range(60):
        phantom = make_phantom(128, np.random.default_rng(seed))
        assert not (phantom.kidney & ~phantom.body).any()
        labels, n = ndimage.label(phantom.kidney, structure=np.ones((3, 3)))
        assert n == 2
        left, right = sorted(np.nonzero(labels == k)[1].mean() for k in (1, 2))
        assert left < 64 < right  # one kidney each side of the midline
        for box in ndimage.find_objects(labels):
            area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
            big_boxes += area > 400
            n_boxes += 1
    assert big_boxes / n_boxes > 0.85  # a 20x20 blob usually fits
