"""Precise BatchNorm statistics: exact values on known inputs, and the classifier's use of them."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from coinseg.config import Settings
from coinseg.training.batchnorm import precise_batchnorm

CPU = torch.device("cpu")


def two_layer_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())


def test_one_batch_gives_the_statistics_of_a_training_pass_over_it() -> None:
    """All rows in one batch: every layer (the second sees the first's batch-normalised output) ends with the
    mean and unbiased variance a train-mode pass with a cumulative average would record."""
    net, images = two_layer_net(), torch.randn(6, 2, 5, 5) * 3 + 1
    expected = copy.deepcopy(net)
    for m in expected.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    expected.train()(images)
    net.eval()
    precise_batchnorm(net, images, count=6, batch_size=6, device=CPU)
    want = expected.state_dict()
    for key, got in net.state_dict().items():
        if "num_batches" not in key:  # the cumulative average's counter, not a statistic
            assert torch.allclose(got, want[key], atol=1e-5), key
    assert not net.training  # mode restored
    assert all(not m._forward_pre_hooks for m in net.modules())


def test_small_batches_give_the_population_statistics_of_the_chosen_rows() -> None:
    """A first layer sees the images themselves: its statistics are the exact per-channel mean and unbiased
    variance over ``count`` evenly spaced rows (rows 0, 2, 4 of 5), whatever the batch size."""
    net = two_layer_net().train()
    images = torch.arange(5 * 2 * 4 * 4, dtype=torch.float32).reshape(5, 2, 4, 4) ** 0.5
    precise_batchnorm(net, images, count=3, batch_size=2, device=CPU)
    chosen = images[[0, 2, 4]].transpose(0, 1).reshape(2, -1)
    assert torch.allclose(net[0].running_mean, chosen.mean(1), atol=1e-5)
    assert torch.allclose(net[0].running_var, chosen.var(1), atol=1e-4)
    assert net.training


def test_nothing_changes_with_count_zero() -> None:
    net = two_layer_net()
    before = copy.deepcopy(net.state_dict())
    precise_batchnorm(net, torch.randn(4, 2, 5, 5), count=0, batch_size=2, device=CPU)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_the_classifier_saves_recomputed_statistics_and_trains_the_same(
    tiny_data: Path, tiny: Settings, tmp_path: Path
) -> None:
    """Training never reads the running statistics, so the weights after the last step are those of a run with
    the running averages (``precise_bn: 0``); the saved BatchNorm statistics differ."""
    from coinseg.training.classifier import train_classifier

    tiny.classifier.precise_bn = 1024
    train_classifier(tiny_data, tmp_path / "precise", tiny, device="cpu")
    tiny.classifier.precise_bn = 0
    train_classifier(tiny_data, tmp_path / "running", tiny, device="cpu")
    precise, running = (
        torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True)["model"]
        for run in ("precise", "running")
    )
    stats = [k for k in precise if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(precise[k], running[k]) for k in stats)
    assert all(torch.equal(precise[k], running[k]) for k in precise if k not in stats and "num_batches" not in k)
