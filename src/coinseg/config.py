"""Typed settings, the two profiles (``quick`` for a laptop CPU, ``paper`` for a GPU) and YAML load/save.

Every string option is an enum validated at load time; an invalid value raises :class:`ConfigError` naming the
field and the allowed choices.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from coinseg.errors import CoinsegError


class ConfigError(CoinsegError):
    """A settings value is invalid (the message names the field and the allowed choices)."""


class Profile(str, enum.Enum):
    quick = "quick"
    paper = "paper"


class ClassifierArch(str, enum.Enum):
    """``resnet18``: torchvision ResNet-18, 1-channel stem, 1 logit. ``small``: a 4-block CNN for CPUs."""

    resnet18 = "resnet18"
    small = "small"


class Method(str, enum.Enum):
    """``coin``: single conditioning, perturbation. ``singla``: dual conditioning, no perturbation."""

    coin = "coin"
    singla = "singla"


class Fusion(str, enum.Enum):
    """How the generator residual ``g`` becomes the counterfactual (x in [-1, 1]).

    ``clamp_add``: clamp(x + g, -1, 1), identity at g = 0 (default). ``tanh_add``: tanh(x + g) (paper).
    ``tanh``: tanh(g), no perturbation (Singla et al.).
    """

    clamp_add = "clamp_add"
    tanh_add = "tanh_add"
    tanh = "tanh"


class AdvLoss(str, enum.Enum):
    bce = "bce"
    mse = "mse"
    hinge = "hinge"


class Cyclic(str, enum.Enum):
    """Second reconstruction term: ``paper`` L1(x, I(x_cf)), ``idempotent`` L1(x_cf, I(x_cf)), ``none``."""

    paper = "paper"
    idempotent = "idempotent"
    none = "none"


class Upsample(str, enum.Enum):
    nearest = "nearest"
    bilinear = "bilinear"


class Conditioning(str, enum.Enum):
    """``single``: G condition always 0 ("normal"). ``dual``: condition = bin(1 - f(x))."""

    single = "single"
    dual = "dual"


class Precision(str, enum.Enum):
    fp32 = "32"
    bf16 = "bf16-mixed"
    fp16 = "16-mixed"


class DeviceChoice(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class DataConfig:
    """Image size fed to the networks and the intensity window.

    ``window``: an explicit HU window [lo, hi]; when None the fingerprint window (p0.5, p99.5 of foreground
    pixels of the training split) is computed. ``percentiles``: the fingerprint percentiles.
    """

    size: int = 64
    window: list[float] | None = None
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])


@dataclass
class ClassifierConfig:
    arch: ClassifierArch = ClassifierArch.small
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_steps: int = 1000
    eval_every: int = 100
    # augmentation: horizontal/vertical flip probabilities, affine shift (fraction), scale, rotation (deg)
    hflip: float = 0.5
    vflip: float = 0.1
    shift: float = 0.07
    scale: float = 0.1
    rotate: float = 10.0


@dataclass
class GanConfig:
    method: Method = Method.coin
    enc_widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    stem_width: int = 16
    disc_widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    disc_down: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    skips: list[int] = field(default_factory=lambda: [1, 2, 3])
    upsample: Upsample = Upsample.nearest
    sn_shortcut: bool = True
    fusion: Fusion = Fusion.clamp_add
    conditioning: Conditioning = Conditioning.single
    adv_loss: AdvLoss = AdvLoss.bce
    lambda_adv: float = 1.0
    lambda_kl: float = 5.0
    lambda_rec: float = 1.0
    cyclic: Cyclic = Cyclic.none
    lambda_tv: float = 0.05
    lambda_minc: float = 0.0
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    # Exponential moving average of E+G weights used for validation, `best` and inference (0 = off, the paper).
    ema: float = 0.995
    # Classifier term with the frozen classifier's dropout active (Monte-Carlo dropout; BatchNorm stays in eval
    # mode): a stochastic f that a pixel-exact partial edit flips less reliably (False = the paper).
    kl_dropout: bool = True
    # The classifier term scores x + s (x_cf - x), the edit applied at strength s (1 = the paper). The classifier
    # already calls a lesion normal when about half of it is removed, so with s = 1 a half-done inpainting
    # satisfies it; s = 0.5 asks that half the edit flips f, i.e. that the whole lesion is removed.
    kl_edit_scale: float = 0.5
    batch_size: int = 16
    gen_every: int = 1
    max_steps: int = 600
    val_every: int = 200
    sample_every: int = 200
    log_every: int = 25

    def __post_init__(self) -> None:
        if not 0.0 < self.kl_edit_scale <= 1.0:
            raise ConfigError(f"gan.kl_edit_scale: {self.kl_edit_scale!r} must be in (0, 1]")


@dataclass
class Settings:
    profile: Profile = Profile.quick
    seed: int = 0
    precision: Precision = Precision.fp32
    # Speed settings for CUDA (same maths, rounding aside): networks in channels_last memory format, and
    # torch.compile of E+G, D and the classifier (a one-off compile time; see benchmarks/gan_throughput.py).
    channels_last: bool = False
    compile: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    gan: GanConfig = field(default_factory=GanConfig)


def paper_settings() -> Settings:
    """The paper's recipe (256x256, full widths, ResNet-18, G every 5th step, cyclic term as in the paper)."""
    return Settings(
        profile=Profile.paper,
        data=DataConfig(size=256),
        classifier=ClassifierConfig(
            arch=ClassifierArch.resnet18, widths=[64, 128, 256, 512], batch_size=128, max_steps=1600
        ),
        gan=GanConfig(
            enc_widths=[64, 128, 256, 512, 1024],
            stem_width=64,
            disc_widths=[64, 128, 256, 512, 1024, 1024],
            disc_down=[2, 2, 2, 2, 2, 1],
            skips=[1, 2, 3, 4],
            cyclic=Cyclic.paper,
            ema=0.0,
            kl_dropout=False,
            kl_edit_scale=1.0,
            gen_every=5,
            max_steps=225_594,
            val_every=5000,
            sample_every=5000,
            log_every=100,
        ),
    )


def profile_settings(profile: Profile | str) -> Settings:
    """Settings of a named profile (``quick``: 64x64 laptop CPU demo; ``paper``: the paper's recipe)."""
    profile = _enum(Profile, profile, "profile")
    return paper_settings() if profile is Profile.paper else Settings()


def apply_method(gan: GanConfig, method: Method | str) -> GanConfig:
    """Return ``gan`` set up for ``method``: Singla et al.* = dual conditioning, no perturbation, identity +
    cyclic L1 reconstruction, no TV, KL weight 1 on the full edit (reference-notes §2.3, row H)."""
    method = _enum(Method, method, "method")
    if method is Method.coin:
        return dataclasses.replace(gan, method=method)
    return dataclasses.replace(
        gan,
        method=method,
        fusion=Fusion.tanh,
        conditioning=Conditioning.dual,
        cyclic=Cyclic.paper,
        lambda_kl=1.0,
        lambda_tv=0.0,
        lambda_minc=0.0,
        kl_edit_scale=1.0,
    )


E = TypeVar("E", bound=enum.Enum)


def _enum(cls: type[E], value: Any, name: str) -> E:
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in cls)
        raise ConfigError(f"{name}: {value!r} is not one of {choices}") from None


T = TypeVar("T")


def _from_dict(cls: type[T], raw: dict[str, Any], prefix: str) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'settings'}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"{prefix}{sorted(unknown)[0]}: unknown setting")
    values: dict[str, Any] = {}
    defaults = cls()
    for name, value in raw.items():
        current = getattr(defaults, name)
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(current):
            values[name] = _from_dict(type(current), value, key + ".")
        elif isinstance(current, enum.Enum):
            values[name] = _enum(type(current), value, key)
        else:
            values[name] = value
    return cls(**values)


def settings_from_dict(raw: dict[str, Any]) -> Settings:
    """Build validated :class:`Settings` from a plain mapping (e.g. parsed YAML)."""
    return _from_dict(Settings, raw, "")


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """Plain, YAML-safe mapping of ``settings`` (enums as their values)."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(settings))


def save_settings(settings: Settings, path: Path) -> None:
    path.write_text(yaml.safe_dump(settings_to_dict(settings), sort_keys=False))


def load_settings(path: Path) -> Settings:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read settings ({exc})") from None
    return settings_from_dict(raw or {})
