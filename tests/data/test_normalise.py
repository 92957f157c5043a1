import numpy as np
import pytest

from coinseg.data.normalise import fingerprint_window, normalise


def test_normalise_hand_computed() -> None:
    hu = np.array([-1000.0, 0.0, 50.0, 100.0, 3000.0])
    assert normalise(hu, (0.0, 100.0)).tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]


def test_grey_values_map_to_minus_one_one() -> None:
    assert normalise(np.array([0.0, 0.25, 1.0]), None).tolist() == [-1.0, -0.5, 1.0]


def test_window_uses_organ_pixels_when_given() -> None:
    hu = np.arange(100, dtype=np.float32).reshape(10, 10) * 10.0  # 0 .. 990 HU
    organ = np.zeros((10, 10), bool)
    organ[2:4] = True  # values 200 .. 390
    lo, hi = fingerprint_window([(hu, organ)], (0.0, 100.0))
    assert (lo, hi) == (200.0, 390.0)


def test_window_uses_body_without_organ() -> None:
    hu = np.array([[-1000.0, -1000.0], [0.0, 100.0]])
    assert fingerprint_window([(hu, None)], (0.0, 100.0)) == (0.0, 100.0)


def test_constant_images_are_rejected() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        fingerprint_window([(np.full((4, 4), 40.0), None)])
