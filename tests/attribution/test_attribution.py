import pytest
import torch
from torch import nn

from coinseg.attribution import RISE, Attributor, CamAttributor, build_attributor
from coinseg.attribution.base import minmax_normalise
from coinseg.registry import ATTRIBUTION

SIZE = 32
SQUARE = (slice(4, 12), slice(18, 26))  # rows, cols the toy classifier looks at


class SquareClassifier(nn.Module):
    """Toy classifier: cam layer = relu(x + 1) in 4 scaled channels; logit = 8 * (mean inside SQUARE - 1)."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 4, 3, padding=1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, 0, 1, 1] = torch.tensor([1.0, 0.5, 1.5, 1.0])
            assert conv.bias is not None
            conv.bias.copy_(conv.weight[:, 0, 1, 1])
        self.features = nn.Sequential(conv, nn.ReLU())

    @property
    def cam_layer(self) -> nn.Module:
        return self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        return 8.0 * (a[:, :, SQUARE[0], SQUARE[1]].mean(dim=(1, 2, 3)) - 1.0)


def _images(batch: int = 2) -> torch.Tensor:
    x = torch.full((batch, 1, SIZE, SIZE), -1.0)
    x[:, :, SQUARE[0], SQUARE[1]] = 1.0
    x[1:] += 0.1 * torch.randn(x[1:].shape, generator=torch.Generator().manual_seed(0))
    return x.clamp(-1, 1)


def _check_maps(maps: torch.Tensor, batch: int) -> None:
    assert maps.shape == (batch, 1, SIZE, SIZE)
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_minmax_normalise_constant_is_zero():
    maps = torch.stack([torch.full((1, 3, 3), 2.0), torch.arange(9.0).reshape(1, 3, 3)])
    out = minmax_normalise(maps)
    assert (out[0] == 0).all()
    assert out[1].min() == 0 and out[1].max() == 1


@pytest.mark.parametrize("name", ATTRIBUTION)
def test_every_method_returns_normalised_maps(name):
    model = SquareClassifier()
    attributor = build_attributor(name, model, **({"n_masks": 200} if name == "rise" else {}))
    assert isinstance(attributor, Attributor)
    assert attributor.name == name
    maps = attributor(_images(2))
    _check_maps(maps, 2)
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[SQUARE] = True
    assert (maps[:, 0, inside].mean(dim=1) > maps[:, 0, ~inside].mean(dim=1) + 0.2).all()
    assert not model.cam_layer._forward_hooks  # CAM hooks are released after the call
    assert model.training  # mode restored


@pytest.mark.parametrize("name", ["gradcam", "layercam"])
def test_gradient_cams_work_on_a_frozen_classifier(name):
    model = SquareClassifier().eval().requires_grad_(False)
    maps = CamAttributor(model, name)(_images(2))
    _check_maps(maps, 2)
    assert maps.amax() == 1.0
    assert not model.training


def test_rise_is_deterministic_and_independent_of_batch_size():
    model = SquareClassifier()
    x = _images(2)
    a = RISE(model, n_masks=200, batch_size=64, seed=3)(x)
    b = RISE(model, n_masks=200, batch_size=64, seed=3)(x)
    c = RISE(model, n_masks=200, batch_size=200, seed=3)(x)
    d = RISE(model, n_masks=200, batch_size=64, seed=4)(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c)
    assert not torch.allclose(a, d)


def test_rise_peaks_where_the_classifier_looks():
    model = SquareClassifier()
    maps = RISE(model, n_masks=500, batch_size=128, fill=-1.0, seed=0)(_images(2))
    for m in maps[:, 0]:
        row, col = divmod(int(m.argmax()), SIZE)
        assert SQUARE[0].start - 2 <= row < SQUARE[0].stop + 2
        assert SQUARE[1].start - 2 <= col < SQUARE[1].stop + 2


def test_rise_handles_non_square_images():
    model = SquareClassifier()
    x = torch.zeros(1, 1, SIZE, SIZE + 8)
    x[..., 4:12, 18:26] = 1.0
    maps = RISE(model, n_masks=64, batch_size=32)(x)
    assert maps.shape == (1, 1, SIZE, SIZE + 8)


def test_unknown_methods_raise():
    with pytest.raises(ValueError, match="rise"):
        build_attributor("occlusion", SquareClassifier())
    with pytest.raises(ValueError, match="scorecam"):
        CamAttributor(SquareClassifier(), "rise")
