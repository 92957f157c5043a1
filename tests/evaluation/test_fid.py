import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from coinseg.evaluation.fid import (
    INCEPTION_WEIGHTS_FILE,
    FidUnavailable,
    features,
    fid,
    frechet_distance,
    inception_extractor,
)


def _tiny_extractor() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net.eval()


def test_fid_of_a_set_with_itself_is_zero():
    torch.manual_seed(1)
    images = torch.rand(40, 1, 16, 16)
    assert fid(_tiny_extractor(), images, images) == pytest.approx(0.0, abs=1e-8)


def test_features_batching_is_consistent():
    ext = _tiny_extractor()
    images = torch.rand(10, 1, 16, 16)
    f3 = features(ext, images, batch_size=3)
    assert f3.shape == (10, 6) and f3.dtype == np.float64
    np.testing.assert_allclose(f3, features(ext, images, batch_size=64), atol=1e-6)


def test_frechet_distance_closed_form_for_shifted_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    # identical sample covariances -> the trace term vanishes
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), abs=1e-8)
    assert frechet_distance(a + shift, a) == pytest.approx(frechet_distance(a, a + shift))
    b = rng.normal(scale=2.0, size=(500, 4))
    assert frechet_distance(a, b) > 1.0


def _pretend_torch_fidelity(monkeypatch, present: bool) -> None:
    from coinseg.evaluation import fid as fid_module

    real = fid_module.importlib.util.find_spec

    def find_spec(name):
        if name == "torch_fidelity":
            return real("torch") if present else None  # any non-None spec means "installed"
        return real(name)

    monkeypatch.setattr(fid_module.importlib.util, "find_spec", find_spec)


def test_inception_extractor_without_the_extra_names_it(monkeypatch):
    _pretend_torch_fidelity(monkeypatch, present=False)
    with pytest.raises(FidUnavailable, match=r"coinseg\[fid\]") as info:
        inception_extractor()
    assert "\n" not in str(info.value)


def test_inception_extractor_offline_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    from coinseg.evaluation import fid as fid_module

    _pretend_torch_fidelity(monkeypatch, present=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(url, target, timeout):
        target.write_bytes(b"partial")  # a download cut off midway
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(fid_module, "_fetch", offline)
    with pytest.raises(FidUnavailable, match=INCEPTION_WEIGHTS_FILE) as info:
        inception_extractor()
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "checkpoints" / INCEPTION_WEIGHTS_FILE) in message and "https://" in message
    assert list((tmp_path / "checkpoints").iterdir()) == []  # nothing half-written left behind


def test_inception_extractor_reports_a_weights_file_that_does_not_load(tmp_path):
    pytest.importorskip("torch_fidelity")
    bad = tmp_path / INCEPTION_WEIGHTS_FILE
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FidUnavailable, match="does not load"):
        inception_extractor(bad)
    assert bad.read_bytes() == b"not a checkpoint"  # a user's file is reported, never deleted


def test_inception_wrapper_feeds_uint8_rgb_299(monkeypatch):
    from coinseg.evaluation import fid as fid_module

    seen = {}

    class FakeInception(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.float().mean(dim=(2, 3))

    images = torch.rand(3, 1, 32, 40)
    out = fid_module._InceptionFeatures768(FakeInception())(images)
    x = seen["x"]
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 299, 299)
    assert torch.equal(x[:, 0], x[:, 2])
    assert out.shape == (3, 3)
