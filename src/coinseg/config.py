"""Typed settings, the two profiles (``quick`` for a laptop CPU, ``paper`` for a GPU) and YAML load/save.

Settings are checked when loaded (:func:`settings_from_dict`, :func:`load_settings`) and by
:func:`check_settings`: every value against its field's type (an int is accepted for a float, a bool is never a
number), its range (batch sizes, step counts and cadences >= 1, learning rates > 0, probabilities in [0, 1]) and
list lengths, and ``data.size`` against what the networks can downsample. Every problem raises
:class:`ConfigError` naming the dotted key, e.g. ``classifier.batch_size: 0 must be >= 1``.

A settings mapping (a YAML file) overrides a *base* profile: its own ``profile:`` key if it has one, else the
``base`` the caller gives (the CLI's ``--profile``), else ``quick``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
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


class ClassifierSelect(str, enum.Enum):
    """Which classifier a run's ``best.pt`` holds, the one ``train``, ``evaluate`` and ``segment`` use.

    ``last``: the weights of the last validation (the end of training, where the cosine schedule has brought the
    learning rate to 0). ``val_loss``: those of the validation with the lowest loss (the paper's choice).
    """

    last = "last"
    val_loss = "val_loss"


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


class MapUpsample(str, enum.Enum):
    """How a map made at the network's size is resized back to a slice (:mod:`coinseg.data.upsample`):
    ``guided`` by the slice's own pixels, or plain ``bilinear``."""

    guided = "guided"
    bilinear = "bilinear"


class MaskExtent(str, enum.Enum):
    """How far a lesion's mask reaches on a difference map once the threshold has found it
    (:func:`coinseg.evaluation.metrics.lesion_mask`): ``half-peak``, to half its own peak change, below the
    threshold by at most its peak's margin above it; or every pixel above the ``threshold`` (the paper's)."""

    half_peak = "half-peak"
    threshold = "threshold"


class DeviceChoice(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class DataConfig:
    """Image size fed to the networks and the intensity window.

    ``window``: an explicit HU window [lo, hi]; when None the fingerprint window (p0.5, p99.5 of foreground
    pixels of the training split) is computed. ``percentiles``: the fingerprint percentiles.
    ``organ_margin``: when set and every row of a plain manifest has an organ mask, the networks see a box around
    each slice's organ (a square of the longest training organ extent, widened by this fraction of it on each
    side) instead of the whole slice (:mod:`coinseg.data.crop`); None = whole slices (the paper's setting). 0.1
    by default in the quick profile: with the organ-only input, the smoother edit and the calibrated threshold it
    raised pixel AP on all four organ runs of the generalization suite and pooled IoU on two (built-in phantom
    0.669 -> 0.712), see benchmarks/RESULTS.md.
    ``organ_only``: when every row has an organ mask, the networks see only the organ (and a rim of
    ``coinseg.data.crop.ORGAN_RIM_PX`` pixels): every other pixel is set to the window's floor
    (:func:`coinseg.data.crop.blank_outside`); False = whole slices as they are (the paper's setting). On by
    default in the quick profile: on the generalization suite it lifted the real CT's classifier (AUROC 0.77 ->
    0.97) and masks (0.304 -> 0.366) and the built-in phantom (0.647 -> 0.661); benchmarks/RESULTS.md.
    ``floor_margin``: with the organ-only input and a window computed from the organ, the window's floor is
    lowered by this fraction of the window's width (>= 0; 0 = the percentiles as they are), so that tissue darker
    than the organ (hypodense lesions, cysts) stays above the floor the blanked outside is set to instead of
    looking like the outside. 0.5 by default: on the generalization suite's real CT the GAN removed none of the
    lesions darker than the kidney in three trainings with 0 and 4 to 51 of 77 in each of four with 0.5 (pooled
    IoU 0.34-0.36 -> 0.33-0.60, mean 0.35 -> 0.42), at a cost of 0.012-0.055 on the built-in phantom (bright
    lesions only; 0.711 -> 0.656 and 0.706 -> 0.694 over two seeds); 0.25 found them in one of two seeds;
    benchmarks/RESULTS.md.
    ``organ_parts``: with the organ-centred crop, one network input per connected component of each slice's organ
    (each kidney of a pair), in a square of the longest training component's extent (+ ``organ_margin``), instead
    of one square around the whole organ (:mod:`coinseg.data.crop`). Off by default: on the generalization suite
    it lifted lesions of 3-10 mm in a paired organ from pooled IoU 0.14-0.19 to 0.40-0.47 (the built-in phantom
    0.69-0.72 -> 0.73), but cost the real CT (8-20 mm lesions) 0.07-0.08 and gave one of its normal anatomies
    false positives (normal FP 0.37);
    benchmarks/RESULTS.md, *One input per organ component, built*. Worth trying when lesions are small against a
    paired or split organ: compare the two classifiers' validation AUROC (per slice) in their logs.
    """

    size: int = 64
    window: list[float] | None = None
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    organ_margin: float | None = 0.1
    organ_only: bool = True
    floor_margin: float = 0.5
    organ_parts: bool = False


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
    # stride of the small classifier's first convolution (1 or 2): 2 lets a 128 px input cost about what 64 px
    # costs with 1, while its first 3x3 filters still see every input pixel (benchmarks/RESULTS.md)
    stem_stride: int = 1
    # BatchNorm statistics recomputed before each validation from this many unaugmented training slices, and saved
    # with the weights (0 = the running averages of training, as the paper). The averages are of warped slices. On
    # the generalization suite's real CT, with `select: val_loss`, 1024 moved which checkpoint was chosen (pooled
    # IoU over four seeds 0.460 -> 0.512) but did not rescue the seed whose lowest loss was at step 300; it cost
    # the built-in phantom and gave an at-chance member's normal slices false positives (0.000 -> 0.375), so it is
    # opt-in (benchmarks/RESULTS.md, *The classifier's BatchNorm statistics*).
    precise_bn: int = 0
    # which checkpoint `train` uses (ClassifierSelect). `last` in the quick profile: on the generalization suite's
    # real CT the lowest validation loss fell on early checkpoints (steps 300-500 of 1000) that miss most lesions
    # darker than the kidney in three seeds of six; the last weights gave pooled IoU 0.406-0.609 over the six
    # (0.332-0.603 before, mean 0.434 -> 0.532), at a cost of about 0.05 on the built-in phantom (still >= 0.59);
    # the paper profile keeps `val_loss` (benchmarks/RESULTS.md, *The classifier's checkpoint*)
    select: ClassifierSelect = ClassifierSelect.last


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
    # Total variation of the edit: 0.2 smooths the change around a lesion and lowers the GAN's noise floor; with
    # the calibrated ``--threshold floor`` it lifted two suite runs and held two (benchmarks/RESULTS.md); 0.05 =
    # the paper's weight (the paper profile).
    lambda_tv: float = 0.2
    lambda_minc: float = 0.0
    # Adam step sizes: ``lr`` for E+G, ``lr_d`` for D (None = ``lr``; the paper: 2e-4 for both). In 600 steps the
    # paper's step leaves the GAN short of its objective; E+G at 5e-4 with D at 2e-4 found more of the small and
    # the darker lesions, but without the mirroring it gave one normal real-CT anatomy a mask; with the mirroring
    # it did not, it raised the phantom members' pixel AP and left the real CT's within its seeds' spread
    # (benchmarks/RESULTS.md, *E+G's larger step with the mirroring*).
    lr: float = 5e-4
    lr_d: float | None = 2e-4
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
    # Left-right mirroring: ``hflip`` is the chance that a training slice is mirrored (0 = the paper, no
    # augmentation); ``mirror_maps`` makes every counterfactual (inference, validation and the threshold
    # calibration) the mean of the slice's and its mirror's, mirrored back, so a change the GAN makes in one
    # orientation only is halved. Together they lifted the built-in phantom and the whole-body-window member and
    # left the real CT within its seeds' spread; the mean without the training on mirrored slices cost the real CT
    # one seed (benchmarks/RESULTS.md, *Mirrored slices for the GAN*).
    hflip: float = 0.5
    mirror_maps: bool = True
    batch_size: int = 16
    gen_every: int = 1
    max_steps: int = 600
    val_every: int = 200
    sample_every: int = 200
    log_every: int = 25


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
        data=DataConfig(size=256, organ_margin=None, organ_only=False),
        classifier=ClassifierConfig(
            arch=ClassifierArch.resnet18,
            widths=[64, 128, 256, 512],
            batch_size=128,
            max_steps=1600,
            select=ClassifierSelect.val_loss,
        ),
        gan=GanConfig(
            enc_widths=[64, 128, 256, 512, 1024],
            stem_width=64,
            disc_widths=[64, 128, 256, 512, 1024, 1024],
            disc_down=[2, 2, 2, 2, 2, 1],
            skips=[1, 2, 3, 4],
            cyclic=Cyclic.paper,
            lambda_tv=0.05,
            ema=0.0,
            kl_dropout=False,
            kl_edit_scale=1.0,
            hflip=0.0,
            mirror_maps=False,
            lr=2e-4,
            lr_d=None,
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

MAX_SIZE = 1024  # data.size: 4000 slices at 1024 px are 16 GiB of float32 already


def _check_value(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the type ``hint`` (int, float, bool, an enum, ``list[...]``, ``X | None``);
    returns it converted (an int for a float field becomes a float, an enum value its member)."""
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint, value, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(value, inner, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: {value!r} is not a list")
        return [_check_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: {value!r} is not an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not a (finite) number")
        return float(value)
    raise TypeError(f"{key}: no check for the type {hint!r}")  # a new field type: a bug, not a user error


def _from_dict(cls: type[T], raw: Any, base: T, prefix: str) -> T:
    """``base`` (a dataclass instance) with the keys of ``raw`` replaced, each checked against its field type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'settings'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown setting")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        current = getattr(base, name)
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(current):
            values[name] = _from_dict(type(current), value, current, key + ".")
        else:
            values[name] = _check_value(value, hints[name], key)
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key}: {value!r} must be >= {low:g}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: {value!r} must be > 0")


def _within(key: str, value: float, low: float, high: float, open_low: bool = False, open_high: bool = False) -> None:
    if value < low or value > high or (open_low and value == low) or (open_high and value == high):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ConfigError(f"{key}: {value!r} must be in {interval}")


def _widths(key: str, widths: list[int]) -> None:
    if not widths:
        raise ConfigError(f"{key}: must list at least one width")
    for i, width in enumerate(widths):
        _at_least(f"{key}[{i}]", width, 1)


def _pair(key: str, values: list[float], what: str) -> None:
    if len(values) != 2:
        raise ConfigError(f"{key}: {values!r} must be a list of 2 numbers ({what})")


def min_size(settings: Settings) -> tuple[int, int, str]:
    """(minimum, multiple, reason): ``data.size`` must be at least ``minimum`` and a multiple of ``multiple``.

    The encoder halves the size once per ``gan.enc_widths`` entry and G doubles it back through skip
    connections (so the size must divide exactly); the small classifier max-pools by 2 per width; ResNet-18
    downsamples by 32; the discriminator pools by the product of ``gan.disc_down``.
    """
    enc = 2 ** len(settings.gan.enc_widths)
    needs = [(enc, f"gan.enc_widths has {len(settings.gan.enc_widths)} levels, each halving the size")]
    if settings.classifier.arch is ClassifierArch.small:
        needs.append(
            (
                2 ** len(settings.classifier.widths) * settings.classifier.stem_stride,
                "the small classifier pools by 2 per width (and by classifier.stem_stride first)",
            )
        )
    else:
        needs.append((32, "ResNet-18 downsamples by 32"))
    needs.append((math.prod(settings.gan.disc_down), "the discriminator pools by the product of gan.disc_down"))
    minimum, reason = max(needs, key=lambda need: need[0])
    return minimum, enc, reason


def check_settings(settings: Settings) -> Settings:
    """Raise :class:`ConfigError` (naming the dotted key) for a value out of range or lists that do not fit
    together; returns ``settings`` unchanged."""
    if not isinstance(settings.seed, int) or not 0 <= settings.seed < 2**32:
        raise ConfigError(f"seed: {settings.seed!r} must be an integer in [0, {2**32 - 1}]")
    data, clf, gan = settings.data, settings.classifier, settings.gan
    # data
    if data.window is not None:
        _pair("data.window", data.window, "lo, hi in HU")
        if not data.window[0] < data.window[1]:
            raise ConfigError(f"data.window: {data.window!r} must be [lo, hi] with lo < hi")
    _pair("data.percentiles", data.percentiles, "lo, hi")
    _at_least("data.floor_margin", data.floor_margin, 0.0)
    if not 0.0 <= data.percentiles[0] < data.percentiles[1] <= 100.0:
        raise ConfigError(f"data.percentiles: {data.percentiles!r} must be [a, b] with 0 <= a < b <= 100")
    if data.organ_margin is not None:
        _within("data.organ_margin", data.organ_margin, 0.0, 2.0)
    elif data.organ_parts:
        raise ConfigError("data.organ_parts: true needs the organ-centred crop; set data.organ_margin (e.g. 0.1)")
    # classifier
    _widths("classifier.widths", clf.widths)
    for key in ("batch_size", "max_steps", "eval_every"):
        _at_least(f"classifier.{key}", getattr(clf, key), 1)
    _positive("classifier.lr", clf.lr)
    _at_least("classifier.weight_decay", clf.weight_decay, 0.0)
    for key in ("hflip", "vflip"):
        _within(f"classifier.{key}", getattr(clf, key), 0.0, 1.0)
    _within("classifier.shift", clf.shift, 0.0, 0.5)
    _within("classifier.scale", clf.scale, 0.0, 1.0, open_high=True)
    _within("classifier.rotate", clf.rotate, 0.0, 180.0)
    _at_least("classifier.precise_bn", clf.precise_bn, 0)
    if clf.stem_stride not in (1, 2):
        raise ConfigError(f"classifier.stem_stride: {clf.stem_stride!r} must be 1 or 2")
    if clf.stem_stride != 1 and clf.arch is not ClassifierArch.small:
        raise ConfigError("classifier.stem_stride: applies to the small classifier only (ResNet-18 has its own stem)")
    # gan
    _widths("gan.enc_widths", gan.enc_widths)
    _at_least("gan.stem_width", gan.stem_width, 1)
    _widths("gan.disc_widths", gan.disc_widths)
    if len(gan.disc_down) != len(gan.disc_widths):
        raise ConfigError(
            f"gan.disc_down: {len(gan.disc_down)} entries but gan.disc_widths has {len(gan.disc_widths)}; "
            "give one downsampling factor per discriminator block"
        )
    for i, factor in enumerate(gan.disc_down):
        _at_least(f"gan.disc_down[{i}]", factor, 1)
    levels = len(gan.enc_widths)
    for i, skip in enumerate(gan.skips):
        if not 1 <= skip < levels:
            raise ConfigError(f"gan.skips[{i}]: {skip} must be in 1..{levels - 1} (gan.enc_widths has {levels} levels)")
    if len(set(gan.skips)) != len(gan.skips):
        raise ConfigError(f"gan.skips: {gan.skips!r} lists a skip twice")
    for key in ("lambda_adv", "lambda_kl", "lambda_rec", "lambda_tv", "lambda_minc"):
        _at_least(f"gan.{key}", getattr(gan, key), 0.0)
    _positive("gan.lr", gan.lr)
    if gan.lr_d is not None:
        _positive("gan.lr_d", gan.lr_d)
    _pair("gan.betas", gan.betas, "Adam beta1, beta2")
    for i, beta in enumerate(gan.betas):
        _within(f"gan.betas[{i}]", beta, 0.0, 1.0, open_high=True)
    _within("gan.ema", gan.ema, 0.0, 1.0, open_high=True)
    _within("gan.kl_edit_scale", gan.kl_edit_scale, 0.0, 1.0, open_low=True)
    _within("gan.hflip", gan.hflip, 0.0, 1.0)
    for key in ("batch_size", "gen_every", "max_steps", "val_every", "sample_every", "log_every"):
        _at_least(f"gan.{key}", getattr(gan, key), 1)
    # the size the networks can take
    if data.size > MAX_SIZE:
        raise ConfigError(
            f"data.size: {data.size} must be at most {MAX_SIZE} (every slice is held in memory at this size)"
        )
    minimum, multiple, reason = min_size(settings)
    if data.size < minimum or data.size % multiple:
        raise ConfigError(f"data.size: {data.size} must be a multiple of {multiple} and at least {minimum} ({reason})")
    return settings


def settings_from_dict(raw: Any, base: Profile | str | None = None) -> Settings:
    """Checked :class:`Settings` from a plain mapping (e.g. parsed YAML): the mapping's ``profile`` (else
    ``base``, else ``quick``) with the mapping's values on top. A ``profile`` in the mapping that contradicts an
    explicit ``base`` is an error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"settings: expected a mapping, got {type(raw).__name__}")
    chosen = base
    if "profile" in raw:
        own = _enum(Profile, raw["profile"], "profile")
        given = None if base is None else _enum(Profile, base, "--profile")
        if given is not None and own is not given:
            raise ConfigError(
                f"profile: the settings file says {own.value!r} but --profile {given.value} was given; drop one of them"
            )
        chosen = own
    start = profile_settings(chosen if chosen is not None else Profile.quick)
    return check_settings(_from_dict(Settings, raw, start, ""))


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


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.2; PyYAML's 1.1 rule needs ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_settings(path: Path, base: Profile | str | None = None) -> Settings:
    """Settings from a YAML file over its ``profile:`` (else ``base``, else ``quick``); see
    :func:`settings_from_dict`. An unreadable file or a bad value is a :class:`ConfigError`."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a settings YAML file")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read settings ({' '.join(str(exc).split())})") from None
    try:
        return settings_from_dict({} if raw is None else raw, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
