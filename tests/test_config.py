from pathlib import Path

import pytest

from coinseg.config import (
    Conditioning,
    ConfigError,
    Fusion,
    Profile,
    apply_method,
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
    assert paper.gan.enc_widths == [64, 128, 256, 512, 1024]
    assert paper.gan.gen_every == 5 and paper.gan.batch_size == 16
    assert paper.gan.lambda_kl == 5.0 and paper.gan.lambda_tv == 0.05 and paper.gan.lambda_minc == 0.0
    assert paper.gan.kl_edit_scale == 1.0  # the classifier term scores x_cf itself


def test_edit_scale_outside_unit_interval_is_refused() -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=rf"gan.kl_edit_scale: {bad} must be in \(0, 1\]"):
            settings_from_dict({"gan": {"kl_edit_scale": bad}})


def test_singla_is_a_setting_of_the_same_gan() -> None:
    singla = apply_method(profile_settings("quick").gan, "singla")
    assert singla.fusion is Fusion.tanh and singla.conditioning is Conditioning.dual
    assert singla.lambda_tv == 0.0 and singla.cyclic.value == "paper"
