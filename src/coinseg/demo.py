"""``coinseg demo``: synth -> classifier -> COIN -> Singla et al.* -> evaluation of every method -> report.

Each stage writes into its own folder under OUT and is skipped when that folder already holds a finished
result, so an interrupted demo continues where it stopped. OUT must be new, empty or a folder coinseg made; an
unfinished stage folder (or the previous report) is removed and rebuilt only when coinseg made it.
"""

from __future__ import annotations

from pathlib import Path

from coinseg.config import DeviceChoice, Method, Profile, apply_method, profile_settings
from coinseg.registry import DEMO
from coinseg.runtime.console import console, progress_bar
from coinseg.runtime.rundir import claim_folder, remove_owned

# Demo sizes per profile: synthetic slices, test slices scored (a fixed subset shared by every method, so that
# RISE fits the CPU budget; None = the whole test split) and RISE masks (the paper's 6000 on the paper profile).
DEMO_SLICES = {Profile.quick: 4000, Profile.paper: 8000}
DEMO_EVAL_SLICES = {Profile.quick: 90, Profile.paper: None}
DEMO_RISE_MASKS = {Profile.quick: 500, Profile.paper: 6000}
DEMO_SINGLA_STEPS = 300


def run_demo(out: Path, profile: Profile, device: DeviceChoice, seed: int) -> dict:
    from coinseg.data.synth import synthesize
    from coinseg.evaluation.runner import evaluate
    from coinseg.training.classifier import train_classifier
    from coinseg.training.gan import train_gan

    claim_folder(out, "demo")
    settings = profile_settings(profile)
    settings.seed = seed
    manifest = out / "data" / "manifest.csv"
    if not manifest.is_file():
        console.print(f"[bold]1/5[/] synthetic data -> {manifest.parent}")
        n = DEMO_SLICES[profile]
        with progress_bar("synth", n) as (progress, task):
            synthesize(
                manifest.parent,
                n,
                128 if profile is Profile.quick else 256,
                seed,
                lambda k: progress.advance(task, k),
            )
    classifier = out / "classifier"
    if not (classifier / "test_metrics.json").is_file():
        console.print(f"[bold]2/5[/] classifier -> {classifier}")
        remove_owned(classifier)
        train_classifier(manifest, classifier, settings, device)
    for step, method in (("3/5", Method.coin), ("4/5", Method.singla)):
        run = out / method.value
        if not (run / "run.json").is_file():
            console.print(f"[bold]{step}[/] {method.value} GAN -> {run}")
            remove_owned(run)
            method_settings = profile_settings(profile)
            method_settings.seed = seed
            method_settings.gan = apply_method(method_settings.gan, method)
            if method is Method.singla and profile is Profile.quick:
                method_settings.gan.max_steps = DEMO_SINGLA_STEPS  # two extra generator passes per step
            train_gan(manifest, classifier, run, method_settings, device)
    report = out / "report"
    console.print(f"[bold]5/5[/] evaluation of {', '.join(DEMO)} -> {report}")
    remove_owned(report)
    metrics = evaluate(
        out / "coin",
        manifest,
        report,
        DEMO,
        device=device.value,
        singla_run=out / "singla",
        rise_masks=DEMO_RISE_MASKS[profile],
        max_slices=DEMO_EVAL_SLICES[profile],
    )
    coin = metrics["methods"]["coin"]
    console.print(
        f"COIN on {metrics['n_abnormal']} abnormal / {metrics['n_normal']} normal test slices: pooled IoU "
        f"{coin['pooled_iou']:.3f}, mean Dice {coin['mean_dice']:.3f}, CV {coin['cv']}, "
        f"normal-slice FP rate {coin['normal_fp_rate']}"
    )
    return metrics
