from pathlib import Path

import pytest

from coinseg.config import (
    Conditioning,
    ConfigError,
    Fusion,
    Profile,
    apply_method,
    check_settings,
    load_settings,
    profile_settings,
    save_settings,
    settings_from_dict,
)


def test_yaml_round_trip(tmp_path: Path) -> None:
    settings = profile_settings(Profile.paper)
    save_settings(settings, tmp_path / "c.yaml")
    assert load_settings(tmp_path / "c.yaml") == settings


def test_invalid_enum_names_field_and_choices() -> None:
    with pytest.raises(ConfigError, match=r"gan.fusion: 'sigmoid' is not one of clamp_add, tanh_add, tanh"):
        settings_from_dict({"gan": {"fusion": "sigmoid"}})


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ConfigError, match=r"classifier.epochs: unknown setting"):
        settings_from_dict({"classifier": {"epochs": 3}})


def test_paper_profile_is_the_paper_recipe() -> None:
    paper = profile_settings("paper")
    assert paper.data.size == 256
    assert paper.data.organ_margin is None and not paper.data.organ_only  # whole slices, as the paper
    assert paper.gan.enc_widths == [64, 128, 256, 512, 1024]
    assert paper.gan.gen_every == 5 and paper.gan.batch_size == 16
    assert paper.gan.lambda_kl == 5.0 and paper.gan.lambda_tv == 0.05 and paper.gan.lambda_minc == 0.0
    assert paper.gan.kl_edit_scale == 1.0  # the classifier term scores x_cf itself
    assert paper.gan.hflip == 0.0 and not paper.gan.mirror_maps  # no augmentation, one counterfactual per slice
    assert paper.gan.lr == 2e-4 and paper.gan.lr_d is None  # Adam's 2e-4 for E+G and D alike


def test_edit_scale_outside_unit_interval_is_refused() -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=rf"gan.kl_edit_scale: {bad} must be in \(0, 1\]"):
            settings_from_dict({"gan": {"kl_edit_scale": bad}})


def test_singla_is_a_setting_of_the_same_gan() -> None:
    singla = apply_method(profile_settings("quick").gan, "singla")
    assert singla.fusion is Fusion.tanh and singla.conditioning is Conditioning.dual
    assert singla.lambda_tv == 0.0 and singla.cyclic.value == "paper"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"classifier": {"lr": "abc"}}, "classifier.lr: 'abc' is not a (finite) number"),
        ({"classifier": {"batch_size": "8"}}, "classifier.batch_size: '8' is not an integer"),
        ({"classifier": {"batch_size": 8.0}}, "classifier.batch_size: 8.0 is not an integer"),
        ({"classifier": {"max_steps": True}}, "classifier.max_steps: True is not an integer"),
        ({"gan": {"kl_dropout": 1}}, "gan.kl_dropout: 1 is not true or false"),
        ({"gan": {"lambda_kl": True}}, "gan.lambda_kl: True is not a (finite) number"),
        ({"gan": {"lr": float("nan")}}, "gan.lr: nan is not a (finite) number"),
        ({"classifier": {"widths": 16}}, "classifier.widths: 16 is not a list"),
        ({"classifier": {"widths": [16, "x"]}}, "classifier.widths[1]: 'x' is not an integer"),
        ({"classifier": {"batch_size": 0}}, "classifier.batch_size: 0 must be >= 1"),
        ({"gan": {"batch_size": -2}}, "gan.batch_size: -2 must be >= 1"),
        ({"classifier": {"max_steps": -5}}, "classifier.max_steps: -5 must be >= 1"),
        ({"gan": {"log_every": 0}}, "gan.log_every: 0 must be >= 1"),
        ({"classifier": {"lr": 0}}, "classifier.lr: 0.0 must be > 0"),
        ({"gan": {"lr_d": -1e-4}}, "gan.lr_d: -0.0001 must be > 0"),
        ({"classifier": {"hflip": 1.5}}, "classifier.hflip: 1.5 must be in [0, 1]"),
        ({"gan": {"hflip": -0.5}}, "gan.hflip: -0.5 must be in [0, 1]"),
        ({"gan": {"mirror_maps": "yes"}}, "gan.mirror_maps: 'yes' is not true or false"),
        ({"gan": {"betas": [0.5]}}, "gan.betas: [0.5] must be a list of 2 numbers"),
        ({"gan": {"betas": [0.5, 1.0]}}, "gan.betas[1]: 1.0 must be in [0, 1)"),
        ({"gan": {"ema": 1.0}}, "gan.ema: 1.0 must be in [0, 1)"),
        ({"classifier": {"widths": []}}, "classifier.widths: must list at least one width"),
        ({"gan": {"disc_down": [2, 2]}}, "gan.disc_down: 2 entries but gan.disc_widths has 4"),
        ({"gan": {"skips": [0]}}, "gan.skips[0]: 0 must be in 1..3 (gan.enc_widths has 4 levels)"),
        ({"gan": {"skips": [1, 1]}}, "gan.skips: [1, 1] lists a skip twice"),
        ({"data": {"size": 10}}, "data.size: 10 must be a multiple of 16 and at least 16 (gan.enc_widths has 4"),
        ({"data": {"size": 72}}, "data.size: 72 must be a multiple of 16"),
        ({"data": {"size": 65536}}, "data.size: 65536 must be at most 1024"),
        (
            {"data": {"size": 32}, "classifier": {"widths": [4] * 6}},
            "data.size: 32 must be a multiple of 16 and at least 64 (the small",
        ),
        (
            {"data": {"size": 32}, "classifier": {"widths": [4] * 5, "stem_stride": 2}},
            "data.size: 32 must be a multiple of 16 and at least 64 (the small classifier pools by 2 per width (and",
        ),
        ({"classifier": {"stem_stride": 3}}, "classifier.stem_stride: 3 must be 1 or 2"),
        (
            {"classifier": {"arch": "resnet18", "stem_stride": 2}},
            "classifier.stem_stride: applies to the small classifier only",
        ),
        ({"data": {"window": [300, 100]}}, "data.window: [300.0, 100.0] must be [lo, hi] with lo < hi"),
        ({"data": {"window": [100]}}, "data.window: [100.0] must be a list of 2 numbers"),
        ({"data": {"floor_margin": -0.1}}, "data.floor_margin: -0.1 must be >= 0"),
        ({"classifier": {"precise_bn": -1}}, "classifier.precise_bn: -1 must be >= 0"),
        ({"classifier": {"select": "best"}}, "classifier.select: 'best' is not one of last, val_loss"),
        ({"data": {"percentiles": [99, 1]}}, "data.percentiles: [99.0, 1.0] must be [a, b] with 0 <= a < b <= 100"),
        ({"data": {"percentiles": [0, 101]}}, "data.percentiles: [0.0, 101.0] must be"),
        ({"classifier": [1, 2]}, "classifier: expected a mapping, got list"),
        ({"seed": -1}, "seed: -1 must be an integer in [0, 4294967295]"),
        ({"profile": "laptop"}, "profile: 'laptop' is not one of quick, paper"),
    ],
)
def test_bad_values_name_the_dotted_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw)
    assert str(info.value).startswith(message)


def test_int_for_float_and_none_window_are_accepted() -> None:
    settings = settings_from_dict({"classifier": {"lr": 1}, "data": {"window": None, "size": 128}})
    assert settings.classifier.lr == 1.0 and isinstance(settings.classifier.lr, float)
    assert settings.data.window is None and settings.data.size == 128


def test_yaml_exponent_without_a_dot_is_a_float(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("classifier:\n  lr: 1e-3\ngan:\n  lr: 2E-4\n")
    settings = load_settings(tmp_path / "c.yaml")
    assert settings.classifier.lr == 1e-3 and settings.gan.lr == 2e-4


def test_file_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("gan:\n  betas: [0.5]\n")
    with pytest.raises(ConfigError, match=r"c.yaml: gan.betas: \[0.5\] must be a list of 2 numbers"):
        load_settings(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="is a folder, expected a settings YAML file"):
        load_settings(tmp_path)


def test_profile_in_yaml_is_the_base_the_rest_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("profile: paper\ndata:\n  size: 128\n")
    settings = load_settings(tmp_path / "c.yaml")
    paper = profile_settings("paper")
    assert settings.profile is Profile.paper and settings.data.size == 128
    assert settings.gan == paper.gan and settings.classifier == paper.classifier


def test_base_profile_applies_when_the_yaml_names_none(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("data:\n  size: 128\n")
    assert load_settings(tmp_path / "c.yaml").gan == profile_settings("quick").gan
    on_paper = load_settings(tmp_path / "c.yaml", base="paper")
    assert on_paper.profile is Profile.paper and on_paper.gan == profile_settings("paper").gan
    assert on_paper.data.size == 128


def test_conflicting_profiles_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("profile: paper\n")
    assert load_settings(tmp_path / "c.yaml", base="paper").profile is Profile.paper
    with pytest.raises(ConfigError, match="the settings file says 'paper' but --profile quick was given"):
        load_settings(tmp_path / "c.yaml", base="quick")


def test_both_profiles_pass_their_own_checks() -> None:
    for name in ("quick", "paper"):
        assert check_settings(profile_settings(name)) == profile_settings(name)
