"""Shared fixtures: a tiny synthetic data set, tiny trained runs (CPU, seconds), and a stand-in predictor whose
counterfactual removes every pixel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from coinseg.config import Settings, apply_method, save_settings, settings_from_dict
from coinseg.predictor import Predictor

# One intra-op thread: the tests' networks are tiny, and on a 2-core machine with anything else running (or the
# 2-process DDP tests) torch's default of one thread per core oversubscribes the cores: measured, the suite took
# over 10 minutes at load 12 with the default and about one minute with one thread.
torch.set_num_threads(1)

TINY = {
    # whole slices: many tests segment a lone image or volume, which a run that saw only the organ refuses
    # (organ-only runs: tests/data/test_crop.py)
    "data": {"size": 32, "organ_margin": None, "organ_only": False},
    "classifier": {"max_steps": 6, "eval_every": 3, "batch_size": 8, "widths": [4, 8]},
    "gan": {
        "max_steps": 4,
        "val_every": 2,
        "sample_every": 2,
        "log_every": 2,
        "batch_size": 4,
        "enc_widths": [4, 8, 16],
        "stem_width": 4,
        "disc_widths": [4, 8, 16],
        "disc_down": [2, 2, 2],
        "skips": [1, 2],
    },
}


def tiny_settings() -> Settings:
    return settings_from_dict(TINY)


@pytest.fixture
def tiny() -> Settings:
    """Fresh tiny settings (fast CPU runs)."""
    return tiny_settings()


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    save_settings(tiny_settings(), path)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48-slice synthetic data set at 64 px; returns the manifest path."""
    from coinseg.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("data") / "synth", n_slices=48, size=64, seed=1)


@pytest.fixture(scope="session")
def classifier_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coinseg.training.classifier import train_classifier

    out = tmp_path_factory.mktemp("runs") / "classifier"
    train_classifier(tiny_data, out, tiny_settings(), device="cpu")
    return out


@pytest.fixture(scope="session")
def coin_run(tiny_data: Path, classifier_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coinseg.training.gan import train_gan

    out = tmp_path_factory.mktemp("runs") / "coin"
    train_gan(tiny_data, classifier_run, out, tiny_settings(), device="cpu")
    return out


@pytest.fixture(scope="session")
def singla_run(tiny_data: Path, classifier_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coinseg.training.gan import train_gan

    settings = tiny_settings()
    settings.gan = apply_method(settings.gan, "singla")
    out = tmp_path_factory.mktemp("runs") / "singla"
    train_gan(tiny_data, classifier_run, out, settings, device="cpu")
    return out


class _RemoveAll(torch.nn.Module):
    """A stand-in inpainter whose counterfactual turns every pixel to -1 (the window's floor): the difference map
    is then (x + 1) / 2, i.e. 1 exactly where the input is at the window's top."""

    name = "remove-all"

    def counterfactual(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, -1.0)


class _Undecided(torch.nn.Module):
    """A stand-in classifier: logit 0 (probability 0.5, so no map is gated away) for every image
    (B x 1 x H x W -> B logits, as :class:`coinseg.models.classifier.Classifier`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x))


@pytest.fixture
def remove_all_predictor() -> Callable[..., Predictor]:
    """``make(window, size, **options)``: a CPU :class:`Predictor` over HU slices with the stand-in inpainter and
    classifier, the HU ``window`` (lo, hi) and the network ``size`` in px; options as Predictor's (crop, upsample)."""

    def make(window: tuple[float, float], size: int, **options: object) -> Predictor:
        return Predictor(_RemoveAll(), _Undecided(), window, "hu", size, torch.device("cpu"), **options)

    return make
