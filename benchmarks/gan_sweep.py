"""Test-split segmentation quality of one COIN variant while it trains, scored at fixed steps (a tuning tool).

Trains the GAN exactly as ``coinseg train`` does (same trainer, batches, seed) with settings overridden by
``--set [section.]field=value``, and at each ``--eval-at`` step scores the inference weights (EMA when enabled)
on the test split: pooled IoU at the threshold at each slice's own resolution (as ``coinseg evaluate``), mean
Dice, normal-slice false-positive rate, pixel AP of the map, CV, and the mask-free validation score that picks
``best``. One JSON line per evaluation on stdout (and appended to ``--out``). Masks are read only for scoring,
never for training.

    python benchmarks/gan_sweep.py data/manifest.csv clf --set gan.lambda_tv=0.01 --eval-at 200,400,800
    python benchmarks/gan_sweep.py data/manifest.csv clf --device cuda --name tv01 --out sweep.jsonl ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from coinseg.config import MaskExtent, profile_settings, settings_from_dict, settings_to_dict
from coinseg.data.prepare import prepare_data
from coinseg.data.slices import load_mask
from coinseg.evaluation.metrics import counterfactual_validity, difference_map
from coinseg.evaluation.runner import score_maps
from coinseg.method import load_classifier, probs
from coinseg.predictor import to_original_size
from coinseg.runtime.device import make_fabric
from coinseg.runtime.rundir import Deadline
from coinseg.training.gan import GanHooks, GanTrainer
from coinseg.training.loop import Cadences, DataOrder, train_loop


def override(settings: Any, assignments: list[str]) -> Any:
    """Settings with each ``[section.]field=value`` applied (value parsed as YAML), validated like a config file."""
    raw = settings_to_dict(settings)
    for text in assignments:
        key, sep, value = text.partition("=")
        section, dot, name = key.rpartition(".")
        table = raw[section] if dot and isinstance(raw.get(section), dict) else raw if not dot else None
        if not sep or table is None or name not in table:
            raise SystemExit(f"--set {text!r}: expected [section.]field=value with a known field")
        table[name] = yaml.safe_load(value)
    return settings_from_dict(raw)


def score(trainer: GanTrainer, test: Any, gts: list[np.ndarray], threshold: float) -> dict[str, Any]:
    """Pooled IoU etc. of the trainer's inference weights on the test slices (maps at original size)."""
    x_cf, p = trainer.counterfactuals(test.images)
    cf = torch.from_numpy(x_cf)
    p_cf = probs(trainer.classifier, cf, trainer.fabric.device)
    maps = to_original_size(difference_map(test.images, cf), test.shapes)
    # map > threshold, as the sweep's recorded runs were scored (RESULTS, *Sweep on the GPU*)
    summary, _ = score_maps(maps, gts, test.labels.numpy(), threshold, extent=MaskExtent.threshold)
    keep = ("pooled_iou", "mean_dice", "normal_fp_rate", "pixel_ap")
    return {**{k: summary[k] for k in keep}, "cv": counterfactual_validity(p, p_cf)}


class SweepHooks(GanHooks):
    """The GAN's hooks with validation replaced by the test-split score (plus the validation score), timed so
    that ``train_s`` counts training only."""

    def __init__(self, trainer: GanTrainer, data: Any, gts: list[np.ndarray], threshold: float) -> None:
        super().__init__(trainer, data, None)
        self.gts, self.threshold, self.eval_seconds = gts, threshold, 0.0

    def validate(self) -> dict[str, float | None]:
        tic = time.perf_counter()
        row = {**score(self.trainer, self.data.test, self.gts, self.threshold)}
        row["val_score"] = self.trainer.validate(self.data.val)["score"]
        self.eval_seconds += time.perf_counter() - tic
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("classifier", type=Path, help="train-classifier run directory")
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"])
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        help="[section.]field=value, e.g. gan.lambda_tv=0.01 or seed=1 (repeatable)",
    )
    parser.add_argument("--eval-at", default="200,400", help="comma-separated steps")
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--name", default=None, help="label of this variant in the output (default: the --set list)")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = parser.parse_args()

    settings = override(profile_settings(args.profile), args.sets)
    eval_at = sorted({int(s) for s in args.eval_at.split(",")})
    fabric = make_fabric(args.device, settings.precision)
    classifier, ckpt = load_classifier(args.classifier)
    window = tuple(ckpt["window"]) if ckpt["window"] else None
    data = prepare_data(args.manifest, settings.data.size, settings.data.percentiles, window, settings.seed)
    if data.test is None:
        raise SystemExit(f"{args.manifest}: no test split to score")
    gts = [load_mask(e, s) for e, s in zip(data.test.entries, data.test.shapes, strict=True)]
    fabric.seed_everything(settings.seed, verbose=False)
    hooks = SweepHooks(GanTrainer.from_settings(settings, classifier, fabric), data, gts, args.threshold)
    order = DataOrder(len(data.train), settings.gan.batch_size, settings.seed)
    name = args.name or (" ".join(args.sets) or "profile")
    step, tic = 0, time.perf_counter()
    for target in eval_at:
        # the training loop of `coinseg train`, run in pieces: each piece ends with one evaluation
        outcome = train_loop(
            fabric,
            hooks,
            None,
            order,
            name=name,
            start=step,
            max_steps=target,
            cadences=Cadences(log=0, validate=0, checkpoint=0),
            deadline=Deadline(None),
            record={},
            score_key="val_score",
            best_key="best_score",
        )
        step = outcome.step
        seconds = time.perf_counter() - tic - hooks.eval_seconds
        row = {"name": name, "step": step, "train_s": round(seconds, 1), **outcome.validation}
        line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
