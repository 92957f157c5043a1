"""GAN trainer pieces on hand-made cases: conditioning, the scaled edit and the EMA update."""

from pathlib import Path

import pytest
import torch
from torch import nn

from coinseg.config import GanConfig, Settings, apply_method
from coinseg.method import KL_ABNORMAL_TARGET, conditions, scaled_edit
from coinseg.training.gan import update_ema


def test_single_conditioning_targets_normal_for_everything() -> None:
    p = torch.tensor([0.1, 0.7])
    b, c, t = conditions(p, GanConfig())
    assert b.tolist() == [0, 1] and c.tolist() == [0, 0]
    assert torch.allclose(t, torch.tensor([0.1, KL_ABNORMAL_TARGET]))


def test_dual_conditioning_flips_the_prediction() -> None:
    p = torch.tensor([0.1, 0.7])
    b, c, t = conditions(p, apply_method(GanConfig(), "singla"))
    assert b.tolist() == [0, 1] and c.tolist() == [1, 0]
    assert torch.allclose(t, torch.tensor([0.9, 0.3]))


def test_ema_warms_up_then_averages_parameters_and_copies_buffers() -> None:
    ema, live = nn.BatchNorm1d(1), nn.BatchNorm1d(1)
    with torch.no_grad():
        ema.weight.fill_(0.0)
        live.weight.fill_(1.0)
        live.running_mean.fill_(5.0)
    update_ema(ema, live, decay=0.99, updates=0)  # warm-up: d = 1/10
    assert torch.allclose(ema.weight, torch.tensor([0.9]))
    assert torch.equal(ema.running_mean, live.running_mean)
    update_ema(ema, live, decay=0.5, updates=1000)  # d = min(0.5, ...) = 0.5
    assert torch.allclose(ema.weight, torch.tensor([0.95]))


def test_classifier_stays_in_eval_mode_through_validation(
    tiny_data: Path, classifier_run: Path, tiny: Settings
) -> None:
    """Validation must not switch the frozen classifier's BatchNorm/dropout to training mode."""
    from coinseg.data.prepare import prepare_data
    from coinseg.method import load_classifier
    from coinseg.runtime.device import make_fabric
    from coinseg.training.gan import GanTrainer

    settings = tiny
    classifier, ckpt = load_classifier(classifier_run)
    data = prepare_data(tiny_data, settings.data.size, settings.data.percentiles, tuple(ckpt["window"]))
    trainer = GanTrainer.from_settings(settings, classifier, make_fabric("cpu", settings.precision))
    trainer.validate(data.val)
    trainer.step(data.train.images[:4], 0)
    assert not any(m.training for m in trainer.classifier.modules())


def test_stochastic_prob_uses_dropout_and_restores_eval(classifier_run: Path, tiny: Settings) -> None:
    from coinseg.method import load_classifier
    from coinseg.runtime.device import make_fabric
    from coinseg.training.gan import GanTrainer

    classifier, _ = load_classifier(classifier_run)
    trainer = GanTrainer.from_settings(tiny, classifier, make_fabric("cpu", tiny.precision))
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    torch.manual_seed(0)
    assert not torch.equal(trainer._stochastic_prob(x), trainer._stochastic_prob(x))  # dropout active
    assert torch.equal(trainer._prob(x), trainer._prob(x))  # and off again afterwards
    assert not any(m.training for m in trainer.classifier.modules())


def test_scaled_edit_applies_part_of_the_change() -> None:
    x = torch.tensor([[[[-1.0, 0.5]]]])
    x_cf = torch.tensor([[[[0.0, -0.5]]]])
    assert torch.allclose(scaled_edit(x, x_cf, 0.5), torch.tensor([[[[-0.5, 0.0]]]]))
    assert scaled_edit(x, x_cf, 1.0) is x_cf


def test_classifier_term_scores_the_scaled_edit(classifier_run: Path, tiny: Settings) -> None:
    """With kl_edit_scale s the generator loss feeds f exactly x + s (x_cf - x)."""
    from coinseg.method import load_classifier
    from coinseg.runtime.device import make_fabric
    from coinseg.training.gan import GanTrainer

    tiny.gan.kl_edit_scale, tiny.gan.kl_dropout = 0.25, False
    classifier, _ = load_classifier(classifier_run)
    trainer = GanTrainer.from_settings(tiny, classifier, make_fabric("cpu", tiny.precision))
    seen: list[torch.Tensor] = []
    trainer.classifier.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach()))
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    p = trainer._prob(x)
    b, c, t = conditions(p, tiny.gan)
    seen.clear()
    _, x_cf, _ = trainer._generator_loss(x, b, c, t)
    assert len(seen) == 1
    assert torch.allclose(seen[0], x + 0.25 * (x_cf.detach() - x), atol=1e-6)


def test_noise_floor_and_half_max_come_from_the_peak_change_of_each_label(
    tiny_data: Path, classifier_run: Path, tiny: Settings
) -> None:
    """Each slice i gets one pixel changed by 2 v_i (a peak |x - x_cf| / 2 of v_i); the noise floor is the 95th
    percentile of v over the slices labelled normal, whatever the abnormal ones do; half_max is half the median
    of v over the slices labelled abnormal."""
    import numpy as np

    from coinseg.data.prepare import prepare_data
    from coinseg.method import load_classifier
    from coinseg.runtime.device import make_fabric
    from coinseg.training.gan import NOISE_FLOOR_QUANTILE, GanTrainer

    classifier, ckpt = load_classifier(classifier_run)
    data = prepare_data(tiny_data, tiny.data.size, tiny.data.percentiles, tuple(ckpt["window"]))
    trainer = GanTrainer.from_settings(tiny, classifier, make_fabric("cpu", tiny.precision))
    n = len(data.val)
    v = np.linspace(0.01, 0.3, n).astype(np.float32)
    abnormal = data.val.labels.numpy() == 1
    v[abnormal] = np.linspace(0.5, 0.9, int(abnormal.sum()))  # not counted in the noise floor
    x = data.val.images.clone().fill_(-1.0)
    data.val.images = x
    x_cf = x.clone()
    x_cf[:, 0, 0, 0] += 2 * torch.from_numpy(v)
    trainer.counterfactuals = lambda images, batch=64: (x_cf.numpy(), np.full(n, 0.1, np.float32))  # type: ignore[method-assign]
    validation = trainer.validate(data.val)
    assert validation["noise_floor"] == pytest.approx(float(np.quantile(v[~abnormal], NOISE_FLOOR_QUANTILE)))
    assert abnormal.sum() >= 2 and validation["half_max"] == pytest.approx(float(np.median(v[abnormal])) / 2)
    assert validation["floor"] == max(validation["noise_floor"], validation["half_max"])


def test_the_window_records_where_it_came_from(
    tiny_data: Path, classifier_run: Path, coin_run: Path, tiny: Settings, tmp_path: Path
) -> None:
    """prepare_data says whether the window came from organ pixels, body pixels or was given; the classifier's
    checkpoint keeps it and the GAN's copies it from the classifier (which `--threshold floor` reads)."""
    import csv

    from coinseg.data.prepare import prepare_data
    from coinseg.runtime.checkpoint import load_checkpoint

    size, percentiles = tiny.data.size, tiny.data.percentiles
    assert prepare_data(tiny_data, size, percentiles).window_from == "organ"  # synth rows all have an organ
    assert prepare_data(tiny_data, size, percentiles, (0.0, 100.0)).window_from == "given"
    rows = list(csv.DictReader(tiny_data.open()))
    no_organ = tmp_path / "manifest.csv"
    with no_organ.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "mask", "split"])
        writer.writeheader()
        writer.writerows(
            {k: (str(tiny_data.parent / r[k]) if k in ("image", "mask") and r[k] else r[k]) for k in writer.fieldnames}
            for r in rows
        )
    assert prepare_data(no_organ, size, percentiles).window_from == "body"
    assert load_checkpoint(classifier_run / "checkpoints" / "best.pt")["window_from"] == "organ"
    assert load_checkpoint(coin_run / "checkpoints" / "best.pt")["window_from"] == "organ"


@pytest.mark.parametrize(("lr_d", "expected"), [(None, 5e-4), (2e-4, 2e-4)])
def test_discriminator_step_size_defaults_to_the_generators(
    classifier_run: Path, tiny: Settings, lr_d: float | None, expected: float
) -> None:
    from coinseg.method import load_classifier
    from coinseg.runtime.device import make_fabric
    from coinseg.training.gan import GanTrainer

    tiny.gan.lr, tiny.gan.lr_d = 5e-4, lr_d
    classifier, _ = load_classifier(classifier_run)
    trainer = GanTrainer.from_settings(tiny, classifier, make_fabric("cpu", tiny.precision))
    assert [g["lr"] for g in trainer.opt_g.param_groups] == [5e-4]
    assert [g["lr"] for g in trainer.opt_d.param_groups] == [expected]


def test_a_mirrored_counterfactual_halves_a_change_made_in_one_orientation_only() -> None:
    """An inpainter that brightens column 0 of whatever it is given: with the mirror the change is split between
    column 0 (the slice) and the last column (the mirror's column 0, mirrored back), half each."""
    from coinseg.method import counterfactual

    def brighten_left(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[..., 0] += 0.8
        return out

    x = torch.full((2, 1, 3, 4), -1.0)
    c = torch.zeros(2, dtype=torch.long)
    plain = counterfactual(brighten_left, x, c, mirror=False)
    assert torch.allclose(plain[..., 0], torch.full((2, 1, 3), -0.2)) and torch.equal(plain[..., 1:], x[..., 1:])
    mirrored = counterfactual(brighten_left, x, c, mirror=True)
    assert torch.allclose(mirrored[..., 0], torch.full((2, 1, 3), -0.6))
    assert torch.allclose(mirrored[..., -1], torch.full((2, 1, 3), -0.6))
    assert torch.equal(mirrored[..., 1:-1], x[..., 1:-1])


def test_mirror_rows_mirrors_only_the_chosen_slices() -> None:
    from coinseg.method import mirror_rows

    x = torch.arange(3 * 2 * 3, dtype=torch.float32).reshape(3, 1, 2, 3)
    out = mirror_rows(x, torch.tensor([True, False, True]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(-1))


def test_maps_are_mirrored_only_for_runs_calibrated_with_mirrored_maps(
    coin_run: Path, tiny: Settings, tmp_path: Path
) -> None:
    """The GAN's checkpoint records `gan.mirror_maps` (its floor was calibrated on such maps) and the predictor
    follows the record; a checkpoint without it (trained before the setting) keeps its single counterfactual."""
    import shutil

    from coinseg.predictor import load_predictor
    from coinseg.runtime.checkpoint import load_checkpoint

    assert tiny.gan.mirror_maps
    assert load_checkpoint(coin_run / "checkpoints" / "best.pt")["mirror_maps"] is True
    assert load_predictor(coin_run, "cpu").maps.mirror
    old = tmp_path / "old"
    shutil.copytree(coin_run, old)
    ckpt = torch.load(old / "checkpoints" / "best.pt", weights_only=False)
    del ckpt["mirror_maps"]
    torch.save(ckpt, old / "checkpoints" / "best.pt")
    assert not load_predictor(old, "cpu").maps.mirror


def test_by_parts_the_calibration_takes_each_slices_largest_peak(
    tiny_data: Path, classifier_run: Path, tiny: Settings
) -> None:
    """With one input per organ component, a slice labelled abnormal whose lesion is in one component holds
    lesion-free components too: each slice's peak is the largest over its inputs, so half_max is half the median
    of the lesions' peaks (0.8 here), not pulled down by the lesion-free components (0.02); the noise floor is
    taken over the normal slices' largest peaks."""
    import numpy as np

    from coinseg.data.crop import OrganCrop
    from coinseg.data.prepare import prepare_data
    from coinseg.method import load_classifier
    from coinseg.runtime.device import make_fabric
    from coinseg.training.gan import NOISE_FLOOR_QUANTILE, GanTrainer

    classifier, ckpt = load_classifier(classifier_run)
    crop = OrganCrop(24, 24, parts=True)
    data = prepare_data(tiny_data, tiny.data.size, tiny.data.percentiles, tuple(ckpt["window"]), crop=crop)
    trainer = GanTrainer.from_settings(tiny, classifier, make_fabric("cpu", tiny.precision))
    rows = [(e.row, e.slice) for e in data.val.entries]
    first = np.array([i == 0 or rows[i] != rows[i - 1] for i in range(len(rows))])  # a slice's first input
    assert len(rows) > len(set(rows))  # some slices have several inputs
    labels = data.val.labels.numpy()
    v = np.where(labels == 1, np.where(first, 0.8, 0.02), np.linspace(0.01, 0.3, len(rows))).astype(np.float32)
    x = data.val.images.clone().fill_(-1.0)
    data.val.images = x
    x_cf = x.clone()
    x_cf[:, 0, 0, 0] += 2 * torch.from_numpy(v)
    n = len(rows)
    trainer.counterfactuals = lambda images, batch=64: (x_cf.numpy(), np.full(n, 0.1, np.float32))  # type: ignore[method-assign]
    validation = trainer.validate(data.val)
    assert validation["half_max"] == pytest.approx(0.4)
    slice_labels, slice_peaks = data.val.per_slice(v)
    expected = float(np.quantile(slice_peaks[slice_labels == 0], NOISE_FLOOR_QUANTILE))
    assert validation["noise_floor"] == pytest.approx(expected)
