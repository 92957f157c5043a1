"""Guided upsampling (coinseg.data.upsample): the map's edge follows the slice's edge, values stay in range."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from coinseg.config import MapUpsample
from coinseg.data.slices import resize
from coinseg.data.upsample import bilinear, guided
from coinseg.predictor import Predictor


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def slice_with_lesion(shape: tuple[int, int], rows: slice, cols: slice) -> tuple[torch.Tensor, np.ndarray]:
    """A flat slice at -0.5 with a lesion at +0.5 (in [-1, 1]) at known pixels; (slice, lesion mask)."""
    lesion = np.zeros(shape, bool)
    lesion[rows, cols] = True
    return torch.from_numpy(np.where(lesion, 0.5, -0.5).astype(np.float32)), lesion


@pytest.mark.parametrize(
    ("shape", "rows", "cols"),
    [((96, 96), slice(37, 50), slice(22, 31)), ((120, 88), slice(5, 12), slice(60, 71))],
    ids=["square", "not-square"],
)
def test_the_edge_comes_back_at_the_lesion_pixels(shape: tuple[int, int], rows: slice, cols: slice) -> None:
    """The perfect map of a lesion (its indicator, shrunk to 32 px like the network's input) comes back exactly
    on the lesion's pixels with the slice as the guide; bilinear resizing blurs its edge off the grid."""
    image, lesion = slice_with_lesion(shape, rows, cols)
    low_image = resize(image[None, None], (32, 32))[0, 0]
    low_map = resize(torch.from_numpy(lesion.astype(np.float32))[None, None], (32, 32))[0, 0]
    back = guided(low_map, low_image, image).numpy()
    assert back.shape == shape and back.dtype == np.float32
    np.testing.assert_array_equal(back > 0.5, lesion)
    assert iou(bilinear(low_map, shape).numpy() > 0.5, lesion) < 0.95


def test_values_are_a_convex_combination_of_the_map() -> None:
    generator = torch.Generator().manual_seed(0)
    low_map = torch.rand(16, 16, generator=generator)
    low_image = torch.rand(16, 16, generator=generator) * 2 - 1
    image = torch.rand(50, 37, generator=generator) * 2 - 1  # a guide unlike the map: every weight is exercised
    back = guided(low_map, low_image, image)
    assert back.shape == (50, 37)
    assert float(back.min()) >= float(low_map.min()) - 1e-6 and float(back.max()) <= float(low_map.max()) + 1e-6
    constant = guided(torch.full((16, 16), 0.3), low_image, image)
    torch.testing.assert_close(constant, torch.full((50, 37), 0.3))


def test_a_pixel_unlike_every_neighbour_falls_back_to_bilinear() -> None:
    """Range weights that underflow in float32 (a guide pixel 2 units from all its neighbours) give the bilinear
    value there, not a division by zero."""
    low_map = torch.linspace(0, 1, 64).reshape(8, 8)
    low_image = torch.full((8, 8), -1.0)
    image = torch.full((16, 16), -1.0)
    image[5, 9] = 1.0
    back = guided(low_map, low_image, image)
    assert torch.isfinite(back).all()
    assert float(back[5, 9]) == pytest.approx(float(bilinear(low_map, (16, 16))[5, 9]))


@pytest.mark.parametrize("upsample", list(MapUpsample))
def test_the_predictor_resizes_as_it_is_told(
    upsample: MapUpsample, remove_all_predictor: Callable[..., Predictor]
) -> None:
    """Predictor.run on a 90 x 70 HU slice with a 30 HU-bright lesion, at a 32 px network size: guided maps put
    the lesion's edge on its pixels, bilinear ones do not; both have the slice's shape."""
    shape, rows, cols = (90, 70), slice(40, 51), slice(13, 20)
    hu = np.zeros(shape, np.float32)
    hu[rows, cols] = 30.0
    lesion = np.zeros(shape, bool)
    lesion[rows, cols] = True
    model = remove_all_predictor((0.0, 30.0), 32, upsample=upsample)
    _, _, maps = model.run([hu])
    assert maps[0].shape == shape
    # |x - x_cf| / 2 is 1 on the lesion, 0 on the rest: half of it is the edge
    overlap = iou(maps[0] > 0.5, lesion)
    if upsample is MapUpsample.guided:
        assert overlap == 1.0
    else:
        assert overlap < 0.95
