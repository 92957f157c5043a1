import numpy as np
import pytest

from coinseg.data.anomaly import blob_template, hu_to_unit, inject_anomaly


def _disc(size: int, radius: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    cy, cx = centre if centre is not None else ((size - 1) / 2, (size - 1) / 2)
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


def test_template_matches_paper() -> None:
    template = blob_template(20, 0.4)
    assert template.shape == (20, 20)
    assert template.max() == pytest.approx(0.983, abs=1e-3)
    assert int((template > 0.25).sum()) == 120


def test_hu_to_unit() -> None:
    out = hu_to_unit(np.array([-100.0, 0.0, 50.0, 100.0, 300.0]), (0.0, 100.0))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="window"):
        hu_to_unit(np.zeros(3), (1.0, 1.0))


def test_lesion_inside_organ_and_bright() -> None:
    rng = np.random.default_rng(0)
    organ = _disc(96, 22, (40, 30)) | _disc(96, 18, (60, 70))  # two regions
    image = np.random.default_rng(1).uniform(0.1, 0.5, (96, 96)).astype(np.float32)
    original = image.copy()
    n_injected = 0
    for _ in range(300):
        result = inject_anomaly(image, organ, rng)
        changed = result.image01 != image
        assert result.image01.dtype == np.float32
        assert 0.0 <= result.image01.min() and result.image01.max() <= 1.0
        assert not (result.mask & ~organ).any()
        assert not (changed & ~organ).any()
        assert result.injected == bool(result.mask.any())
        if result.injected:
            n_injected += 1
            added = (result.image01 - image)[result.mask]
            assert np.mean(added >= 0.2) > 0.97  # alpha * (T > 0.25), up to interpolation at the edge
            assert added.min() > 0.15
        else:
            assert not changed.any()
    np.testing.assert_array_equal(image, original)  # input untouched
    assert n_injected > 100


def test_rate_and_area_on_a_large_organ() -> None:
    rng = np.random.default_rng(3)
    organ = _disc(128, 50)
    image = np.zeros((128, 128), dtype=np.float32)
    results = [inject_anomaly(image, organ, rng) for _ in range(2000)]
    rate = np.mean([r.injected for r in results])
    assert abs(rate - 0.65) < 0.03
    areas = [int(r.mask.sum()) for r in results if r.injected]
    # 120 px * scale^2 (scale ~ U(0.75, 1)), stretched by the grid distortion, a few cut at the organ edge
    assert 70 < np.mean(areas) < 110
    assert max(areas) < 200


def test_small_organ_gets_no_lesion() -> None:
    organ = _disc(64, 9)  # bounding box 18 x 18 <= 20 x 20
    image = np.full((64, 64), 0.5, dtype=np.float32)
    rng = np.random.default_rng(0)
    assert not any(inject_anomaly(image, organ, rng, p=1.0).injected for _ in range(50))
    assert not inject_anomaly(image, np.zeros((64, 64), bool), rng, p=1.0).injected


def test_blob_at_the_image_border_is_cropped_not_dropped() -> None:
    organ = np.zeros((64, 64), dtype=bool)
    organ[:, :8] = True  # a strip along the left border (box 64 x 8 px): every blob crosses it
    image = np.zeros((64, 64), dtype=np.float32)
    rng = np.random.default_rng(0)
    results = [inject_anomaly(image, organ, rng, p=1.0) for _ in range(20)]
    assert all(r.injected for r in results)
    assert all(not (r.mask & ~organ).any() for r in results)


def test_same_seed_same_output() -> None:
    organ = _disc(80, 25)
    image = np.full((80, 80), 0.3, dtype=np.float32)
    for seed in range(5):
        a = inject_anomaly(image, organ, np.random.default_rng(seed), p=1.0)
        b = inject_anomaly(image, organ, np.random.default_rng(seed), p=1.0)
        np.testing.assert_array_equal(a.image01, b.image01)
        np.testing.assert_array_equal(a.mask, b.mask)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="organ"):
        inject_anomaly(np.zeros((8, 8)), np.zeros((8, 9)), np.random.default_rng(0))
