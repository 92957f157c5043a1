"""The ``coinseg`` command line: thin wrappers around the Python API (heavy imports inside commands).

User errors (:class:`coinseg.errors.CoinsegError`: bad manifest, missing file, invalid option, a folder coinseg
may not write into) print one line ``error: ...`` and exit with status 2; anything else is a bug and keeps its
traceback. Numeric options are range-checked in code, before any work, as a :class:`~coinseg.errors.UsageError`
naming the option (typer's own ``min=``/``max=`` prints a boxed message that wraps over several lines).

``--config`` and ``--profile``: the YAML's own ``profile:`` key is the base its values override; without one,
``--profile`` is (default ``quick``). Giving both with different profiles is an error.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from coinseg.config import DeviceChoice, MapUpsample, MaskExtent, Method, Precision, Profile
from coinseg.evaluation.volume import MIN_LESION_MM3
from coinseg.registry import methods_help, parse_methods

app = typer.Typer(
    help="Weakly supervised lesion segmentation in CT by counterfactual inpainting (COIN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])

ProfileOpt = Annotated[
    Profile | None,
    typer.Option(
        help="quick (default): laptop CPU, 64 px; paper: the paper's recipe, GPU. With --config: the base the YAML "
        "overrides, unless the YAML names its own profile"
    ),
]
ConfigOpt = Annotated[
    Path | None, typer.Option(help="settings YAML: overrides its 'profile:' (else --profile); see README")
]
DeviceOpt = Annotated[DeviceChoice, typer.Option(help="auto picks CUDA when available")]
MinutesOpt = Annotated[
    float | None,
    typer.Option("--max-minutes", help="stop training cleanly after this long, with a checkpoint (> 0)"),
]
SeedOpt = Annotated[int, typer.Option(help="random seed, 0..4294967295")]
# Training commands: a value given here overrides the --config file's; without one the file's (else the profile's)
RunSeedOpt = Annotated[
    int | None, typer.Option("--seed", help="random seed, 0..4294967295 (default: the --config file's, else 0)")
]
PrecisionOpt = Annotated[
    Precision | None,
    typer.Option("--precision", help="mixed precision needs CUDA (default: the --config file's, else 32)"),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        help="refuse a manifest that lists an image (and slice) twice or in two splits (default: a warning in log.txt)"
    ),
]
DevicesOpt = Annotated[int, typer.Option(help="devices (processes) per node; more than 1 trains data-parallel (DDP)")]
NodesOpt = Annotated[int, typer.Option(help="machines; needs torchrun or fabric run on each (see README)")]
StrategyOpt = Annotated[str, typer.Option(help="auto or ddp (DDP whenever more than one process)")]
THRESHOLD_HELP = (
    "the lesions are the parts of |x - x_cf| / 2 above it (--extent: how far each reaches): 'floor' = the run's "
    "threshold calibrated at training: the larger of its noise floor (the change it makes on normal validation "
    "slices) and half the typical lesion's change on "
    "abnormal validation slices (older runs: at least 0.25 on an organ window); 'auto' = that noise floor; or a "
    "number (the paper's 0.25)"
)
EXTENT_HELP = (
    "how far each lesion the threshold finds reaches: 'half-peak' = to half its own peak change, below the threshold "
    "by at most its peak's margin above it (a lesion at twice the threshold or more is trimmed to its half peak); "
    "'threshold' = every pixel above the threshold (the paper's)"
)
GATE_HELP = "no mask on slices the classifier calls normal, f(x) < 0.5 (--no-gate: on every slice)"
UPSAMPLE_HELP = (
    "how maps made at the network's size are resized back to each slice: 'guided' by the slice's own pixels "
    "(edges follow the image), or 'bilinear' (the paper's)"
)


# What to make smaller when a command runs out of memory.
MEMORY_HINT = {
    "synth": "--size or --n-slices",
    "train_classifier_cmd": "data.size or classifier.batch_size (--config)",
    "train": "data.size or gan.batch_size (--config)",
    "segment": "--batch-size, or the input images",
    "evaluate": "--max-slices or --rise-masks",
    "demo": "--profile quick",
}


def user_errors(func: F) -> F:
    """Turn the errors a user can fix into ``error: <one line>`` and exit status 2: coinseg's own, a missing or
    existing path, an OS error writing (full disk, read-only, no permission) and running out of memory (numpy's
    MemoryError, torch's allocator errors); any other error is a bug and keeps its traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from coinseg.errors import CoinsegError

        try:
            return func(*args, **kwargs)
        except (CoinsegError, FileExistsError, FileNotFoundError) as exc:
            message = str(exc)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            reason = "no space left on the device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror
            message = f"{exc.filename}: {reason}" if exc.filename else f"{reason} ({exc})"
        except (MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not _out_of_memory(exc):
                raise
            message = (
                f"not enough memory ({str(exc) or type(exc).__name__}); try a smaller {MEMORY_HINT[func.__name__]}"
            )
        typer.echo("error: " + " ".join(message.splitlines()), err=True)
        raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _out_of_memory(exc: RuntimeError) -> bool:
    """torch's allocation failures: a CUDA ``OutOfMemoryError`` or the CPU allocator's RuntimeError."""
    return type(exc).__name__ == "OutOfMemoryError" or "DefaultCPUAllocator" in str(exc)


def _settings(
    profile: Profile | None, seed: int | None, precision: Precision | None, config: Path | None = None
) -> Any:
    """The run's settings: ``config`` over its own profile (else ``profile``), or ``profile`` alone; ``seed`` and
    ``precision`` override them when given (None: the file's or the profile's)."""
    from coinseg.config import load_settings, profile_settings

    settings = load_settings(config, profile) if config is not None else profile_settings(profile or Profile.quick)
    if seed is not None:
        settings.seed = seed
    if precision is not None:
        settings.precision = precision
    return settings


def _check_manifest(manifest: Path, strict: bool) -> None:
    """With ``--strict-manifest``: refuse duplicate rows and images in two splits before any image is read."""
    from coinseg.data.manifest import ManifestError, duplicate_problems, read_manifest

    if strict:
        problems = duplicate_problems(read_manifest(manifest, check_images=False), manifest)
        if problems:
            raise ManifestError(f"{problems[0]} (--strict-manifest)")


def _require(ok: bool, option: str, value: object, rule: str) -> None:
    """A one-line :class:`UsageError` ``OPTION VALUE: RULE`` unless ``ok``."""
    from coinseg.errors import UsageError

    if not ok:
        raise UsageError(f"{option} {value}: {rule}")


def _check_common(seed: int | None, max_minutes: float | None = None) -> None:
    if seed is not None:
        _require(0 <= seed < 2**32, "--seed", seed, f"must be in 0..{2**32 - 1}")
    if max_minutes is not None:
        _require(max_minutes > 0, "--max-minutes", f"{max_minutes:g}", "must be more than 0")


@app.command()
@user_errors
def synth(
    out_dir: Annotated[Path, typer.Argument(help="folder to create (must not exist or be empty)")],
    n_slices: Annotated[int, typer.Option(help="number of slices (at least 20)")] = 4000,
    size: Annotated[int, typer.Option(help="slice size in pixels (64..1024)")] = 128,
    seed: SeedOpt = 0,
) -> None:
    """Write the built-in synthetic CT data set: phantom slices with the paper's kidney anomalies."""
    from coinseg.data.synth import synthesize
    from coinseg.runtime.console import progress_bar

    _check_common(seed)
    with progress_bar("synth", n_slices) as (progress, task):
        manifest = synthesize(out_dir, n_slices, size, seed, lambda n: progress.advance(task, n))
    typer.echo(str(manifest))


def _ids(text: str | None, option: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated integers", param_hint=option) from None


def _window(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected LO,HI in HU", param_hint="--inject-window") from None
    if not hi > lo:
        raise typer.BadParameter(f"{text!r}: expected LO < HI", param_hint="--inject-window")
    return lo, hi


@app.command()
@user_errors
def prepare(
    source: Annotated[
        Path, typer.Argument(help="study folder (TotalSegmentator, KiTS, nnU-Net raw) or a CSV of volumes")
    ],
    out: Annotated[Path, typer.Option("--out", help="dataset folder to create (must not exist or be empty)")],
    layout: Annotated[str, typer.Option(help="auto, totalsegmentator, kits, nnunet or csv")] = "auto",
    organ: Annotated[
        str | None, typer.Option(help="organ structure/label names, e.g. kidney_left,kidney_right")
    ] = None,
    organ_labels: Annotated[str | None, typer.Option(help="organ label ids in the segmentation, e.g. 1,3")] = None,
    lesion_labels: Annotated[str | None, typer.Option(help="lesion label ids in the segmentation, e.g. 2")] = None,
    inject: Annotated[bool, typer.Option(help="inject the paper's synthetic anomaly into the organ")] = False,
    inject_p: Annotated[float, typer.Option(help="fraction of eligible slices that get an anomaly")] = 0.65,
    blob_mm: Annotated[float, typer.Option(help="anomaly template size in mm (paper: 20 px at ~1.5 mm)")] = 30.0,
    inject_window: Annotated[
        str | None,
        typer.Option(help="LO,HI HU window the anomaly's 0.9 is relative to (default: each case's organ p0.5-p99.5)"),
    ] = None,
    roi: Annotated[bool, typer.Option("--roi/--full-slice", help="crop around the organ, or keep whole slices")] = True,
    margin_mm: Annotated[float, typer.Option(help="ROI margin around the organ, mm")] = 10.0,
    spacing_mm: Annotated[
        float | None,
        typer.Option(help="in-plane spacing of stored slices, mm (default: 1 with --roi, source with --full-slice)"),
    ] = None,
    min_lesion_mm2: Annotated[float, typer.Option(help="lesion area that makes a slice abnormal, mm^2")] = 25.0,
    series: Annotated[str | None, typer.Option(help="DICOM SeriesInstanceUID when a folder holds several")] = None,
    workers: Annotated[int, typer.Option(help="parallel processes (one case each)")] = 1,
    on_error: Annotated[
        str, typer.Option(help="a bad case: fail (stop) or skip (leave out, named in the log)")
    ] = "fail",
    seed: SeedOpt = 0,
) -> None:
    """Read a CT study once: per-slice labels, organ ROI, optional injection, a slice store and a manifest."""
    from coinseg.config import ConfigError
    from coinseg.data.build import OnError, PrepareOptions, prepare_study
    from coinseg.data.study import Layout
    from coinseg.runtime.console import progress_bar

    for value, choices, option in ((layout, Layout, "--layout"), (on_error, OnError, "--on-error")):
        if value not in {c.value for c in choices}:
            raise ConfigError(f"{option} {value!r}: choose one of {', '.join(c.value for c in choices)}")
    options = PrepareOptions(
        layout=Layout(layout),
        organ_names=tuple(organ.split(",")) if organ else (),
        organ_labels=_ids(organ_labels, "--organ-labels"),
        lesion_labels=_ids(lesion_labels, "--lesion-labels"),
        inject=inject,
        inject_p=inject_p,
        blob_mm=blob_mm,
        inject_window=_window(inject_window),
        roi=roi,
        margin_mm=margin_mm,
        spacing_mm=spacing_mm,
        min_lesion_mm2=min_lesion_mm2,
        workers=workers,
        on_error=OnError(on_error),
        seed=seed,
        series=series,
    )
    from coinseg.data.study import discover

    n_cases = len(
        discover(source, options.layout, options.organ_names, options.organ_labels, options.lesion_labels, not inject)[
            1
        ]
    )
    with progress_bar("prepare", n_cases) as (progress, task):
        summary = prepare_study(
            source, out, options, lambda line: typer.echo(line, err=True), lambda n: progress.advance(task, n)
        )
    typer.echo(str(summary.manifest))


@app.command("train-classifier")
@user_errors
def train_classifier_cmd(
    manifest: Annotated[Path, typer.Argument(help="manifest CSV (image,label[,mask,split,slice,organ])")],
    out: Annotated[Path, typer.Option("--out", help="run directory")],
    profile: ProfileOpt = None,
    device: DeviceOpt = DeviceChoice.auto,
    precision: PrecisionOpt = None,
    max_minutes: MinutesOpt = None,
    seed: RunSeedOpt = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    config: ConfigOpt = None,
    strict_manifest: StrictOpt = False,
    devices: DevicesOpt = 1,
    num_nodes: NodesOpt = 1,
    strategy: StrategyOpt = "auto",
) -> None:
    """Train the normal/abnormal classifier that COIN explains."""
    from coinseg.training.classifier import train_classifier

    _check_common(seed, max_minutes)
    _check_manifest(manifest, strict_manifest)
    settings = _settings(profile, seed, precision, config)
    train_classifier(manifest, out, settings, device, max_minutes, resume, devices, num_nodes, strategy)


@app.command()
@user_errors
def train(
    manifest: Annotated[Path, typer.Argument(help="manifest CSV (masks, if any, are never used for training)")],
    classifier: Annotated[Path, typer.Option("--classifier", help="run directory of train-classifier")],
    out: Annotated[Path, typer.Option("--out", help="run directory")],
    method: Annotated[Method, typer.Option(help="coin, or singla (Singla et al.* baseline)")] = Method.coin,
    profile: ProfileOpt = None,
    device: DeviceOpt = DeviceChoice.auto,
    precision: PrecisionOpt = None,
    max_minutes: MinutesOpt = None,
    max_steps: Annotated[int | None, typer.Option(help="override the profile's number of steps (>= 1)")] = None,
    seed: RunSeedOpt = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    config: ConfigOpt = None,
    strict_manifest: StrictOpt = False,
    devices: DevicesOpt = 1,
    num_nodes: NodesOpt = 1,
    strategy: StrategyOpt = "auto",
) -> None:
    """Train the counterfactual-inpainting GAN against a frozen classifier."""
    from coinseg.config import apply_method
    from coinseg.training.gan import train_gan

    _check_common(seed, max_minutes)
    if max_steps is not None:
        _require(max_steps >= 1, "--max-steps", max_steps, "must be at least 1")
    _check_manifest(manifest, strict_manifest)
    settings = _settings(profile, seed, precision, config)
    settings.gan = apply_method(settings.gan, method)
    if max_steps is not None:
        settings.gan.max_steps = max_steps
    train_gan(manifest, classifier, out, settings, device, max_minutes, resume, devices, num_nodes, strategy)


@app.command()
@user_errors
def segment(
    model_run_dir: Annotated[Path, typer.Argument(help="run directory of `coinseg train`")],
    input: Annotated[
        Path,
        typer.Argument(
            help="dataset folder of `coinseg prepare`, manifest CSV, image file, NIfTI volume, DICOM series folder "
            "or image folder"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="output folder (must not exist or be empty)")],
    split: Annotated[str, typer.Option(help="manifest/dataset split to segment, or 'all'")] = "test",
    threshold: Annotated[str, typer.Option(help=THRESHOLD_HELP)] = "floor",
    extent: Annotated[MaskExtent, typer.Option(help=EXTENT_HELP)] = MaskExtent.half_peak,
    postprocess: Annotated[
        bool,
        typer.Option(help="2-D: 3x3 opening, 3x3 closing, largest component; volumes: 3-D lesions >= --min-lesion-mm3"),
    ] = False,
    min_lesion_mm3: Annotated[
        float, typer.Option(help="volumes with --postprocess: smallest lesion kept, mm^3 (a 5 mm sphere)")
    ] = MIN_LESION_MM3,
    save_maps: Annotated[bool, typer.Option(help="volumes: also write |x - x_cf| / 2 as float NIfTI (maps/)")] = False,
    dicom_seg: Annotated[
        bool, typer.Option(help="DICOM series input: also write a DICOM-SEG (needs coinseg[dicom-seg])")
    ] = False,
    gate: Annotated[bool, typer.Option(help=GATE_HELP)] = True,
    upsample: Annotated[MapUpsample, typer.Option(help=UPSAMPLE_HELP)] = MapUpsample.guided,
    device: DeviceOpt = DeviceChoice.auto,
    batch_size: Annotated[int, typer.Option(help="slices per batch (>= 1)")] = 64,
) -> None:
    """Write lesion masks (one per 2-D input, one NIfTI per volume or case) and predictions.csv; a slice with an
    organ mask (manifest organ column, prepared dataset) is masked only inside its organ."""
    from coinseg.inference import segment as run_segment

    csv_path = run_segment(
        model_run_dir,
        input,
        out,
        split=split,
        threshold=threshold,
        postprocess=postprocess,
        device=device,
        batch_size=batch_size,
        min_lesion_mm3=min_lesion_mm3,
        save_maps=save_maps,
        dicom_seg=dicom_seg,
        gate=gate,
        upsample=upsample,
        extent=extent,
    )
    typer.echo(str(csv_path))


@app.command()
@user_errors
def evaluate(
    model_run_dir: Annotated[Path, typer.Argument(help="run directory of `coinseg train`")],
    manifest: Annotated[Path, typer.Argument(help="manifest CSV with lesion masks")],
    out: Annotated[Path, typer.Option("--out", help="report folder (must not exist or be empty)")],
    split: Annotated[str, typer.Option(help="manifest split to score")] = "test",
    methods: Annotated[str, typer.Option(help=methods_help())] = "coin",
    singla_run: Annotated[Path | None, typer.Option(help="run directory trained with --method singla")] = None,
    threshold: Annotated[str, typer.Option(help="counterfactual maps: " + THRESHOLD_HELP)] = "floor",
    extent: Annotated[MaskExtent, typer.Option(help="counterfactual maps: " + EXTENT_HELP)] = MaskExtent.half_peak,
    saliency_threshold: Annotated[
        float, typer.Option(help="attribution maps (in [0, 1]): mask = map > threshold")
    ] = 0.975,
    postprocess: Annotated[bool, typer.Option(help="post-process counterfactual masks (paper: -pcf)")] = False,
    gate: Annotated[bool, typer.Option(help=GATE_HELP + "; all methods")] = True,
    upsample: Annotated[MapUpsample, typer.Option(help=UPSAMPLE_HELP + "; all methods")] = MapUpsample.guided,
    rise_masks: Annotated[int, typer.Option(help="RISE: number of random masks (>= 1; paper 6000)")] = 6000,
    max_slices: Annotated[
        int | None, typer.Option(help="score a fixed, evenly spaced subset of this many slices (all methods)")
    ] = None,
    device: DeviceOpt = DeviceChoice.auto,
) -> None:
    """Score methods on the same frozen slices: metrics.json, report.md, report.html, figures (maps of a slice
    with an organ mask are zero outside its organ, as segment writes them)."""
    from coinseg.evaluation.runner import evaluate as run_evaluate

    _require(0.0 <= saliency_threshold <= 1.0, "--saliency-threshold", saliency_threshold, "must be in [0, 1]")
    _require(rise_masks >= 1, "--rise-masks", rise_masks, "must be at least 1")

    metrics = run_evaluate(
        model_run_dir,
        manifest,
        out,
        parse_methods(methods),
        split=split,
        threshold=threshold,
        saliency_threshold=saliency_threshold,
        postprocess=postprocess,
        device=device,
        singla_run=singla_run,
        rise_masks=rise_masks,
        max_slices=max_slices,
        gate=gate,
        upsample=upsample,
        extent=extent,
    )
    _print_summary(metrics)
    typer.echo(str(out / "report.html"))


def _print_summary(metrics: dict[str, Any]) -> None:
    """The methods' scores as a table, then the evaluation's notes (stderr)."""
    from rich.console import Console
    from rich.table import Table

    columns = {  # key in metrics.json -> a header short enough for an 80-column terminal
        "pooled_iou": "pooled IoU",
        "mean_dice": "Dice",
        "normal_fp_rate": "normal FP",
        "pixel_ap": "pixel AP",
        "lesion_sensitivity_brighter": "found bright",
        "lesion_sensitivity_darker": "found dark",
        "cv": "CV",
        "seconds_per_slice": "s/slice",
    }
    table = Table(title=f"{metrics['split']}: {metrics['n_abnormal']} abnormal / {metrics['n_normal']} normal slices")
    table.add_column("method")
    for header in columns.values():
        table.add_column(header, justify="right")
    for name, row in metrics["methods"].items():
        table.add_row(name, *("–" if row.get(c) is None else f"{row[c]:.3g}" for c in columns))
    console = Console(stderr=True)
    console.print(table)
    for note in metrics["notes"]:
        console.print(note, highlight=False)


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="folder for data, runs and report")] = Path("coinseg-demo"),
    profile: ProfileOpt = None,
    device: DeviceOpt = DeviceChoice.auto,
    seed: SeedOpt = 0,
) -> None:
    """The whole pipeline on built-in synthetic data: synth, classifier, COIN, baselines, report."""
    from coinseg.demo import run_demo

    _check_common(seed)
    run_demo(out, profile or Profile.quick, device, seed)
    typer.echo(str(out / "report" / "report.html"))


@app.command("export-nnunet")
@user_errors
def export_nnunet_cmd(
    segment_out: Annotated[Path, typer.Argument(help="output folder of `coinseg segment` (masks/<case>.nii.gz)")],
    cases: Annotated[
        Path,
        typer.Argument(
            help="prepared DATASET_DIR (store/<case>/geometry.json), or a CSV (or folder with manifest.csv) "
            "naming each case's CT NIfTI: image[,case] columns"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="nnUNet_raw/DatasetNNN_Name (must not exist or be empty)")],
    copy: Annotated[bool, typer.Option("--copy/--link", help="copy the CT images, or symlink them")] = True,
    ignore_below: Annotated[
        float | None,
        typer.Option(help="label 'ignore' where |x - x_cf| / 2 > T outside the mask (needs maps/<case>.nii.gz)"),
    ] = None,
) -> None:
    """Write the per-volume masks as an nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json)."""
    from coinseg.export.nnunet import export_nnunet, segment_out_cases

    found, unmasked = segment_out_cases(segment_out, cases, ignore_below)
    written = export_nnunet(found, out, link=not copy)
    if unmasked:
        typer.echo(
            f"{len(unmasked)} case(s) of {cases} have no mask in {segment_out / 'masks'}: not exported", err=True
        )
    typer.echo(str(written))
