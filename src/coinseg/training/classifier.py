"""Train the image-level classifier f (normal / abnormal) that COIN explains and inpaints against.

BCE on one logit, Adam, flips + small affine augmentation, class-balanced sampling when labels are imbalanced,
validation on ``val`` every ``eval_every`` steps (with ``precise_bn`` > 0, BatchNorm statistics first recomputed
on that many unaugmented training slices, :mod:`coinseg.training.batchnorm`, and saved with the weights);
``best.pt``, the classifier ``train`` uses, holds the last validated weights (``select: last``, the quick profile)
or those of the lowest val loss (``val_loss``, the paper profile), never chosen on test.
Test accuracy and AUROC of that checkpoint are written to ``test_metrics.json``, and a warning is logged
when it ranks the validation slices no better than chance
(:func:`coinseg.evaluation.metrics.chance_warning`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coinseg.config import ClassifierSelect, DeviceChoice, Settings, settings_to_dict
from coinseg.data.prepare import prepare_data
from coinseg.data.slices import SliceSet
from coinseg.evaluation.metrics import accuracy_auroc, auroc_p_value, chance_warning
from coinseg.method import load_classifier, probs
from coinseg.models.classifier import build_classifier
from coinseg.reporting.figures import progress_plot
from coinseg.runtime.checkpoint import write_json
from coinseg.runtime.device import make_fabric
from coinseg.runtime.rundir import Deadline, RunDir, versions
from coinseg.training.augment import random_affine, warp
from coinseg.training.batchnorm import precise_batchnorm
from coinseg.training.loop import (
    Cadences,
    DataOrder,
    on_rank_zero_first,
    prepare_network,
    resume_from,
    train_in,
    train_loop,
    unwrapped,
)


def _evaluate(model: nn.Module, data: SliceSet, device: torch.device) -> dict[str, float | None]:
    """BCE loss (per input), accuracy, AUROC and ``auroc_p`` (:func:`coinseg.evaluation.metrics.auroc_p_value`;
    per slice: f's largest output over a slice's inputs, :meth:`SliceSet.per_slice`) of ``model`` on ``data``."""
    p = probs(model, data.images, device)
    labels, p_slice = data.per_slice(p)
    acc, auroc = accuracy_auroc(labels, p_slice)
    p_value = auroc_p_value(labels, p_slice)
    labels = data.labels.numpy()
    p = np.clip(p, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    return {"loss": loss, "accuracy": acc, "auroc": auroc, "auroc_p": p_value}


def cosine_factor(step: int, total: int, warmup: int = 50) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))


def _sampling_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights giving both classes equal mass when the minority class is under 40 %."""
    positive = float(labels.mean())
    if 0.4 <= positive <= 0.6:
        return torch.ones_like(labels)
    return torch.where(labels > 0.5, 0.5 / positive, 0.5 / (1.0 - positive))


class ClassifierHooks:
    """The classifier's part of :func:`coinseg.training.loop.train_loop`: BCE step with augmentation, cosine
    schedule, validation loss / accuracy / AUROC on ``data.val`` (the unwrapped model, rank 0; with ``precise_bn``
    its BatchNorm statistics recomputed on unaugmented training slices, which training itself never reads)."""

    def __init__(self, fabric: Any, model: nn.Module, optimizer: Any, data: Any, cfg: Any, order: DataOrder) -> None:
        self.fabric, self.model, self.optimizer, self.data, self.cfg, self.order = (
            fabric,
            model,
            optimizer,
            data,
            cfg,
            order,
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, cfg.max_steps))
        self.running = torch.zeros(2, device=fabric.device)  # sum of step losses, number of steps

    def train_step(self, step: int, idx: torch.Tensor) -> None:
        # augmentation drawn for the whole global batch (as one process would), applied to this rank's rows
        theta = self.order.shard(random_affine(self.cfg.batch_size, self.cfg, self.order.generator))
        x = warp(self.data.train.images[idx], theta).to(self.fabric.device)
        y = self.data.train.labels[idx].to(self.fabric.device)
        loss = F.binary_cross_entropy_with_logits(self.model(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(loss)
        self.optimizer.step()
        self.schedule.step()
        self.running += torch.stack([loss.detach(), torch.ones((), device=loss.device)])

    def read_losses(self) -> dict[str, float]:
        total = self.fabric.all_reduce(self.running, reduce_op="sum") if self.fabric.world_size > 1 else self.running
        loss, steps = total.tolist()
        self.running.zero_()
        return {"train_loss": loss / max(steps, 1)}

    def validate(self) -> dict[str, float | None]:
        net = unwrapped(self.model)
        precise_batchnorm(net, self.data.train.images, self.cfg.precise_bn, self.cfg.batch_size, self.fabric.device)
        with self.fabric.autocast():
            return _evaluate(net, self.data.val, self.fabric.device)

    def best_state(self, validation: dict[str, float | None]) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "running": self.running.cpu(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if "running" in state:
            self.running.copy_(state["running"])

    def sample(self, step: int) -> None:
        return None


def train_classifier(
    manifest: Path,
    out: Path,
    settings: Settings,
    device: DeviceChoice = DeviceChoice.auto,
    max_minutes: float | None = None,
    resume: bool = False,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
) -> dict[str, Any]:
    """Train f from ``manifest`` into run directory ``out``; returns the test metrics (or val, if no test).

    ``devices`` x ``num_nodes`` processes train data-parallel (see :func:`coinseg.runtime.device.make_fabric`);
    only the global-zero rank writes files and returns the metrics (the others return ``{"step": n}``).
    """
    RunDir.check(out, resume)
    fabric = make_fabric(device, settings.precision, devices, num_nodes, strategy)
    fixed = tuple(settings.data.window) if settings.data.window else None
    data = prepare_data(
        manifest,
        settings.data.size,
        settings.data.percentiles,
        fixed,  # type: ignore[arg-type]
        settings.seed,
        organ_margin=settings.data.organ_margin,
        organ_only=settings.data.organ_only,
        floor_margin=settings.data.floor_margin,
        organ_parts=settings.data.organ_parts,
    )
    run = on_rank_zero_first(fabric, lambda: RunDir(out, settings, resume, "classifier-run", (manifest,)))
    return train_in(fabric, run, lambda: _train(fabric, run, data, manifest, out, settings, max_minutes, resume))


def _train(
    fabric: Any,
    run: RunDir | None,
    data: Any,
    manifest: Path,
    out: Path,
    settings: Settings,
    max_minutes: float | None,
    resume: bool,
) -> dict[str, Any]:
    cfg = settings.classifier
    if run is not None:
        for note in data.notes:
            run.log(note)
        run.log(
            f"classifier {cfg.arch.value}: {len(data.train)} train / {len(data.val)} val slices at "
            f"{settings.data.size}px, window {data.window} ({data.intensity}), device {fabric.device}"
            + (f", {fabric.world_size} processes" if fabric.world_size > 1 else "")
        )
    fabric.seed_everything(settings.seed, verbose=False)
    model = prepare_network(
        fabric, build_classifier(cfg.arch, cfg.widths, cfg.stem_stride), settings.channels_last, settings.compile
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = fabric.setup(model, optimizer)
    order = DataOrder(
        len(data.train),
        cfg.batch_size,
        settings.seed,
        fabric.global_rank,
        fabric.world_size,
        _sampling_weights(data.train.labels),
    )
    hooks = ClassifierHooks(fabric, model, optimizer, data, cfg, order)
    start, best = (
        resume_from(fabric, hooks, order, out / "checkpoints" / "last.pt", run, "best_loss") if resume else (0, None)
    )
    record = {
        "kind": "classifier",
        "arch": cfg.arch.value,
        "widths": list(cfg.widths),
        "stem_stride": cfg.stem_stride,
        "size": settings.data.size,
        "window": list(data.window) if data.window else None,
        "window_from": data.window_from,
        "crop": data.crop.to_json() if data.crop else None,
        "organ_only": data.organ_only,
        "intensity": data.intensity,
        "settings": settings_to_dict(settings),
        "versions": versions(),
    }
    model.train()
    outcome = train_loop(
        fabric,
        hooks,
        run,
        order,
        name="classifier",
        start=start,
        max_steps=cfg.max_steps,
        cadences=Cadences(log=cfg.eval_every, validate=cfg.eval_every, checkpoint=cfg.eval_every),
        deadline=Deadline(max_minutes),
        record=record,
        score_key="loss" if cfg.select is ClassifierSelect.val_loss else None,
        best_key="best_loss",
        best=best,
        describe=lambda row: (
            f"loss {row['train_loss']:.3f} val acc {row.get('val_accuracy') or 0:.3f} {row['steps_per_s']:.1f} it/s"
        ),
    )
    if run is None:
        return {"step": outcome.step}
    best_model, _ = load_classifier(out)
    val = _evaluate(best_model.to(fabric.device), data.val, fabric.device)
    final = {"step": outcome.step, "val": val}
    if data.test is not None:
        final["test"] = _evaluate(best_model, data.test, fabric.device)
    write_json(final, out / "test_metrics.json")
    progress_plot(out / "metrics.csv", out / "progress.png")
    run.write_run_json(
        fabric.device, {"kind": "classifier", "steps": outcome.step, "window": data.window, "metrics": final}
    )
    summary = final.get("test", final["val"])
    run.log(
        f"classifier done: {'test' if 'test' in final else 'val'} accuracy {summary['accuracy']:.3f}, "  # type: ignore[index]
        f"AUROC {summary['auroc'] if summary['auroc'] is None else round(summary['auroc'], 4)}"  # type: ignore[index]
    )
    val_labels = data.val.per_slice(data.val.labels.numpy())[0]
    n_abnormal = int(val_labels.sum())
    warning = chance_warning(
        val["auroc"], val["auroc_p"], n_abnormal, len(val_labels) - n_abnormal, "the validation split"
    )
    if warning:
        run.log(warning)
    return final
