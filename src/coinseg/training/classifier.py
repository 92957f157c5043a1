"""Train the image-level classifier f (normal / abnormal) that COIN explains and inpaints against.

BCE on one logit, Adam, flips + small affine augmentation, class-balanced sampling when labels are imbalanced,
validation on ``val`` every ``eval_every`` steps; ``best`` is the lowest val loss (calibration matters: the
GAN's KL target is f's probability), never chosen on test.
Test accuracy and AUROC of the best checkpoint are written to ``test_metrics.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coinseg.config import DeviceChoice, Settings, settings_to_dict
from coinseg.data.prepare import prepare_data
from coinseg.data.slices import SliceSet
from coinseg.evaluation.metrics import accuracy_auroc
from coinseg.method import load_classifier, probs
from coinseg.models.classifier import build_classifier
from coinseg.reporting.figures import progress_plot
from coinseg.runtime.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint, write_json
from coinseg.runtime.console import progress_bar
from coinseg.runtime.device import make_fabric
from coinseg.runtime.rundir import Deadline, RunDir, versions
from coinseg.training.augment import augment


def _evaluate(model: nn.Module, data: SliceSet, device: torch.device) -> dict[str, float | None]:
    p = probs(model, data.images, device)
    labels = data.labels.numpy()
    acc, auroc = accuracy_auroc(labels, p)
    p = np.clip(p, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    return {"loss": loss, "accuracy": acc, "auroc": auroc}


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


def train_classifier(
    manifest: Path,
    out: Path,
    settings: Settings,
    device: DeviceChoice = DeviceChoice.auto,
    max_minutes: float | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train f from ``manifest`` into run directory ``out``; returns the test metrics (or val, if no test)."""
    cfg = settings.classifier
    RunDir.check(out, resume)
    fabric = make_fabric(device, settings.precision)
    fixed = tuple(settings.data.window) if settings.data.window else None
    data = prepare_data(manifest, settings.data.size, settings.data.percentiles, fixed, settings.seed)  # type: ignore[arg-type]
    run = RunDir(out, settings, resume, "classifier-run", (manifest,))
    for note in data.notes:
        run.log(note)
    run.log(
        f"classifier {cfg.arch.value}: {len(data.train)} train / {len(data.val)} val slices at "
        f"{settings.data.size}px, window {data.window} ({data.intensity}), device {fabric.device}"
    )
    fabric.seed_everything(settings.seed, verbose=False)
    model = build_classifier(cfg.arch, cfg.widths)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = fabric.setup(model, optimizer)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, cfg.max_steps))
    generator = torch.Generator().manual_seed(settings.seed)
    step, best_loss = 0, None
    if resume:
        state = load_checkpoint(run.last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        restore_rng(state["rng"])
        step, best_loss = state["step"], state["best_loss"]
        run.trim_metrics(step)
        run.log(f"resumed at step {step}")

    common = {
        "kind": "classifier",
        "arch": cfg.arch.value,
        "widths": list(cfg.widths),
        "size": settings.data.size,
        "window": list(data.window) if data.window else None,
        "intensity": data.intensity,
        "settings": settings_to_dict(settings),
        "versions": versions(),
    }
    weights = _sampling_weights(data.train.labels)
    deadline = Deadline(max_minutes)
    model.train()
    running = torch.zeros((), device=fabric.device)
    tic, tic_step = time.time(), step
    with progress_bar("classifier", cfg.max_steps, step) as (progress, task):
        while True:
            stop = step >= cfg.max_steps or deadline.expired()
            if not stop:
                idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=generator)
                x = augment(data.train.images[idx], cfg, generator).to(fabric.device)
                y = data.train.labels[idx].to(fabric.device)
                loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                optimizer.step()
                schedule.step()
                running += loss.detach()
                step += 1
                progress.advance(task)
                stop = step >= cfg.max_steps or deadline.expired()
            if stop or step % cfg.eval_every == 0:
                rate = (step - tic_step) / max(time.time() - tic, 1e-9)
                val = _evaluate(model, data.val, fabric.device)
                model.train()
                train_loss = float(running) / max(step - tic_step, 1)
                running.zero_()
                tic, tic_step = time.time(), step
                improved = best_loss is None or val["loss"] < best_loss
                if improved:
                    best_loss = val["loss"]
                    save_checkpoint({**common, "model": model.state_dict(), "step": step}, run.best)
                save_checkpoint(
                    {
                        **common,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "generator": generator.get_state(),
                        "rng": rng_state(),
                        "step": step,
                        "best_loss": best_loss,
                    },
                    run.last,
                )
                row: dict[str, Any] = {"step": step, "train_loss": train_loss, "steps_per_s": rate}
                row.update({f"val_{k}": v for k, v in val.items()})
                run.append_metrics(row)
                progress.update(task, info=f"loss {train_loss:.3f} val acc {val['accuracy']:.3f} {rate:.1f} it/s")
            if stop:
                break
    if deadline.expired() and step < cfg.max_steps:
        run.log(f"--max-minutes reached: stopped at step {step} with a checkpoint")

    best, _ = load_classifier(out)
    final = {"step": step, "val": _evaluate(best.to(fabric.device), data.val, fabric.device)}
    if data.test is not None:
        final["test"] = _evaluate(best, data.test, fabric.device)
    write_json(final, out / "test_metrics.json")
    progress_plot(out / "metrics.csv", out / "progress.png")
    run.write_run_json(fabric.device, {"kind": "classifier", "steps": step, "window": data.window, "metrics": final})
    summary = final.get("test", final["val"])
    run.log(
        f"classifier done: {'test' if 'test' in final else 'val'} accuracy {summary['accuracy']:.3f}, "  # type: ignore[index]
        f"AUROC {summary['auroc'] if summary['auroc'] is None else round(summary['auroc'], 4)}"  # type: ignore[index]
    )
    run.close()
    return final
