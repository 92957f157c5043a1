"""The counterfactual GAN trainer: owns both optimisers and the G/D step (COIN, or Singla et al.* as a setting).

Per step, with the frozen classifier f (eval mode, no parameter grads; gradients flow *through* it to G):
  p = f(x), b = 1[p >= 0.5]; condition c = 0 (single, COIN) or 1[1 - p >= 0.5] (dual, Singla);
  KL target t = 1e-6 where b = 1 else p (single) or 1 - p (dual).
  Every ``gen_every``-th step, E+G are updated with
    adv(D(x_cf, c)) + λ_kl KL(t || f(x + s (x_cf - x))) + λ_rec [L1(x, x_id) + cyclic] + λ_tv TV + λ_minc L1(x, x_cf),
  where x_id = x_cf (single) or I(x, b) (dual) and the cyclic term is L1(x, I(x_cf, c')) (paper) or
  L1(x_cf, I(x_cf, c')) (idempotent), c' = c (single) or b (dual). On the other steps E+G run under no_grad.
  s = ``kl_edit_scale`` (1 = the paper's f(x_cf)). D is updated every step on (x, b) as real and (x_cf, c) as fake.
No host-device synchronisation inside the step: losses are accumulated on the device and read every
``log_every`` steps.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from coinseg import losses
from coinseg.config import Conditioning, Cyclic, DeviceChoice, Settings, settings_to_dict
from coinseg.data.prepare import prepare_data
from coinseg.data.slices import SliceSet
from coinseg.errors import RunError
from coinseg.evaluation.metrics import counterfactual_validity, difference_map, flip_rate
from coinseg.method import build_inpainter, conditions, load_classifier, prob, probs, scaled_edit
from coinseg.models import build_discriminator
from coinseg.reporting.figures import progress_plot, sample_grid
from coinseg.runtime.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from coinseg.runtime.console import progress_bar
from coinseg.runtime.device import make_fabric
from coinseg.runtime.rundir import Deadline, RunDir, versions

LOSS_NAMES = ("d", "adv", "kl", "rec", "tv", "g")
# `--threshold auto`: the quantile, over normal validation slices, of each slice's peak |x - x_cf| / 2.
NOISE_FLOOR_QUANTILE = 0.95


@torch.no_grad()
def update_ema(ema: nn.Module, live: nn.Module, decay: float, updates: int) -> None:
    """ema <- d * ema + (1 - d) * live for parameters, d = min(decay, (1 + n) / (10 + n)) after n updates
    (a warm-up, so early averages do not keep the random initialisation); buffers (BatchNorm statistics,
    spectral-norm power-iteration vectors) are copied, since averaging unit vectors would corrupt sigma."""
    d = min(decay, (1.0 + updates) / (10.0 + updates))
    for e, p in zip(ema.parameters(), live.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - d)
    for kept, b in zip(ema.buffers(), live.buffers(), strict=True):
        kept.copy_(b)


class GanTrainer:
    """Holds I = (E, G, fusion), D, the frozen classifier and both Adam optimisers (set up by Fabric)."""

    def __init__(self, settings: Settings, classifier: nn.Module, fabric: Any) -> None:
        self.cfg = settings.gan
        self.fabric = fabric
        inpainter, discriminator = build_inpainter(self.cfg), build_discriminator(self.cfg)
        betas = (self.cfg.betas[0], self.cfg.betas[1])
        opt_g = torch.optim.Adam(inpainter.parameters(), lr=self.cfg.lr, betas=betas)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=self.cfg.lr, betas=betas)
        self.inpainter, self.opt_g = fabric.setup(inpainter, opt_g)
        self.ema = copy.deepcopy(inpainter).eval().requires_grad_(False) if self.cfg.ema else None
        self.g_updates = 0
        self.discriminator, self.opt_d = fabric.setup(discriminator, opt_d)
        # Frozen once, visibly: the Fabric wrapper has its own `training` flag, so it is put in eval mode too
        # (else code that restores a module's mode would switch the classifier's BatchNorm/dropout to train).
        self.classifier = fabric.setup_module(classifier.requires_grad_(False)).eval()
        self.totals = torch.zeros(len(LOSS_NAMES), device=fabric.device)
        self.counted = torch.zeros(len(LOSS_NAMES), device=fabric.device)

    def _prob(self, x: Tensor) -> Tensor:
        return prob(self.classifier, x)

    def _stochastic_prob(self, x: Tensor) -> Tensor:
        """f(x) with the classifier's dropout layers active (weights still frozen, BatchNorm in eval mode)."""
        dropouts = [m for m in self.classifier.modules() if isinstance(m, nn.Dropout)]
        for m in dropouts:
            m.train()
        try:
            return self._prob(x)
        finally:
            for m in dropouts:
                m.eval()

    def _generator_loss(self, x: Tensor, b: Tensor, c: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (total G loss, x_cf, per-term losses [adv, kl, rec, tv])."""
        cfg = self.cfg
        feats = self.inpainter.encoder(x)
        x_cf = self.inpainter(x, c, feats)
        adv = losses.adversarial_g(self.discriminator(x_cf, c).float(), cfg.adv_loss)
        scored = scaled_edit(x, x_cf, cfg.kl_edit_scale)
        kl = losses.bernoulli_kl(t, self._stochastic_prob(scored) if cfg.kl_dropout else self._prob(scored))
        x_id = x_cf if cfg.conditioning is Conditioning.single else self.inpainter(x, b, feats)
        rec = losses.l1(x, x_id)
        if cfg.cyclic is not Cyclic.none:
            back = c if cfg.conditioning is Conditioning.single else b
            x_cyc = self.inpainter(x_cf, back)
            rec = rec + losses.l1(x if cfg.cyclic is Cyclic.paper else x_cf, x_cyc)
        tv = losses.total_variation(x, x_cf)
        total = cfg.lambda_adv * adv + cfg.lambda_kl * kl + cfg.lambda_rec * rec + cfg.lambda_tv * tv
        if cfg.lambda_minc:
            total = total + cfg.lambda_minc * losses.l1(x, x_cf)
        return total, x_cf, torch.stack([adv, kl, rec, tv]).detach()

    def step(self, x: Tensor, step: int) -> None:
        """One training iteration on a batch x (B x 1 x H x W in [-1, 1], on the device)."""
        with torch.no_grad():
            p = self._prob(x)
        b, c, t = conditions(p, self.cfg)
        if step % self.cfg.gen_every == 0:
            self.discriminator.requires_grad_(False)
            total, x_cf, terms = self._generator_loss(x, b, c, t)
            self.opt_g.zero_grad(set_to_none=True)
            self.fabric.backward(total)
            self.opt_g.step()
            if self.ema is not None:
                update_ema(self.ema, self.inpainter, self.cfg.ema, self.g_updates)
            self.g_updates += 1
            self.discriminator.requires_grad_(True)
            self.totals[1:5] += terms
            self.totals[5] += total.detach()
            self.counted[1:] += 1
        else:
            with torch.no_grad():
                x_cf = self.inpainter(x, c)
        d_loss = losses.adversarial_d(
            self.discriminator(x, b).float(), self.discriminator(x_cf.detach(), c).float(), self.cfg.adv_loss
        )
        self.opt_d.zero_grad(set_to_none=True)
        self.fabric.backward(d_loss)
        self.opt_d.step()
        self.totals[0] += d_loss.detach()
        self.counted[0] += 1

    def read_losses(self) -> dict[str, float]:
        """Mean of each loss since the last call (one device sync), then reset."""
        means = (self.totals / self.counted.clamp(min=1)).tolist()
        self.totals.zero_()
        self.counted.zero_()
        return dict(zip(LOSS_NAMES, means, strict=True))

    @property
    def inference_inpainter(self) -> nn.Module:
        """The weights used for validation, `best` and inference: the EMA copy when enabled."""
        return self.ema if self.ema is not None else self.inpainter

    @torch.no_grad()
    def counterfactuals(self, images: Tensor, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(x_cf as N x 1 x S x S numpy in [-1, 1], f(x) as N probs) in eval mode; inputs on the CPU."""
        model = self.inference_inpainter
        model.eval()
        outs, probs = [], []
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(self.fabric.device)
            p = self._prob(x)
            outs.append(model(x, conditions(p, self.cfg)[1]).float().cpu())
            probs.append(p.cpu())
        if model is self.inpainter:
            model.train()
        return torch.cat(outs).numpy(), torch.cat(probs).numpy()

    def validate(self, data: SliceSet) -> dict[str, float | None]:
        """Mask-free validation on ``data`` (image labels only):

        - ``score`` (selects ``best``; lower is better): λ_kl KL (on the edit scaled as in training)
          + λ_rec L1(x, x_cf) + λ_tv TV; the adversarial term is not comparable over time;
        - ``cv``, ``flip_rate``, mean change on predicted-normal and predicted-abnormal slices;
        - ``noise_floor``: the ``NOISE_FLOOR_QUANTILE`` quantile, over slices labelled normal, of each slice's
          peak |x - x_cf| / 2, i.e. the lowest threshold that leaves ~95 % of them without a mask pixel
          (``--threshold auto``).
        """
        x_cf, p = self.counterfactuals(data.images)
        cf = torch.from_numpy(x_cf)
        p_cf = probs(self.classifier, cf, self.fabric.device)
        scored = scaled_edit(data.images, cf, self.cfg.kl_edit_scale)
        p_scored = p_cf if scored is cf else probs(self.classifier, scored, self.fabric.device)
        _, _, t = conditions(torch.from_numpy(p), self.cfg)
        kl = float(losses.bernoulli_kl(t, torch.from_numpy(p_scored)))
        diff = difference_map(data.images, cf)  # |x - x_cf| / 2
        change = (2 * diff).mean(dim=(1, 2, 3)).numpy()
        tv = float(losses.total_variation(data.images, cf))
        normal = p < 0.5
        score = self.cfg.lambda_kl * kl + self.cfg.lambda_rec * float(change.mean()) + self.cfg.lambda_tv * tv
        peaks = diff.amax(dim=(1, 2, 3)).numpy()
        labelled_normal = data.labels.numpy() == 0
        return {
            "score": score,
            "kl": kl,
            "cv": counterfactual_validity(p, p_cf),
            "flip_rate": flip_rate(p, p_cf),
            "change_normal": float(change[normal].mean()) if normal.any() else None,
            "change_abnormal": float(change[~normal].mean()) if (~normal).any() else None,
            "noise_floor": (
                float(np.quantile(peaks[labelled_normal], NOISE_FLOOR_QUANTILE)) if labelled_normal.any() else None
            ),
        }

    def state(self) -> dict[str, Any]:
        return {
            "inpainter": self.inpainter.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "g_updates": self.g_updates,
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.inpainter.load_state_dict(state["inpainter"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.g_updates = state["g_updates"]
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_gan(
    manifest: Path,
    classifier_run: Path,
    out: Path,
    settings: Settings,
    device: DeviceChoice = DeviceChoice.auto,
    max_minutes: float | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the counterfactual GAN against the classifier of ``classifier_run``; returns the last validation."""
    cfg = settings.gan
    RunDir.check(out, resume)
    fabric = make_fabric(device, settings.precision)
    classifier, clf_ckpt = load_classifier(classifier_run)
    if clf_ckpt["size"] != settings.data.size:
        raise RunError(
            f"{classifier_run}: the classifier was trained at {clf_ckpt['size']} px but the profile uses "
            f"{settings.data.size} px; train both with the same profile"
        )
    window = tuple(clf_ckpt["window"]) if clf_ckpt["window"] else None
    data = prepare_data(manifest, settings.data.size, settings.data.percentiles, window, settings.seed)
    if data.intensity != clf_ckpt["intensity"]:
        raise RunError(
            f"{manifest}: images are {data.intensity} but the classifier was trained on {clf_ckpt['intensity']}"
        )
    source = classifier_run / "checkpoints" / "best.pt"
    kept = out / "checkpoints" / "classifier.pt"
    if resume and kept.is_file() and _digest(kept) != _digest(source):
        raise RunError(f"{classifier_run}: not the classifier this run was trained with; resume with the original")
    run = RunDir(out, settings, resume, "gan-run", (manifest, classifier_run), frozenset({"gan.max_steps"}))
    if not resume:
        shutil.copyfile(source, kept)
    for note in data.notes:
        run.log(note)
    run.log(
        f"{cfg.method.value} GAN: {len(data.train)} train / {len(data.val)} val slices at {settings.data.size}px, "
        f"window {data.window}, device {fabric.device}, G every {cfg.gen_every} step(s)"
    )
    fabric.seed_everything(settings.seed, verbose=False)
    trainer = GanTrainer(settings, classifier, fabric)
    generator = torch.Generator().manual_seed(settings.seed)
    step, best_score = 0, None
    if resume:
        state = load_checkpoint(run.last)
        trainer.load_state(state)
        generator.set_state(state["generator"])
        restore_rng(state["rng"])
        step, best_score = state["step"], state["best_score"]
        run.trim_metrics(step)
        run.log(f"resumed at step {step}")
    common = {
        "kind": "gan",
        "method": cfg.method.value,
        "size": settings.data.size,
        "window": list(data.window) if data.window else None,
        "intensity": data.intensity,
        "settings": settings_to_dict(settings),
        "versions": versions(),
    }
    preview = data.val.images[torch.argsort(-data.val.labels, stable=True)[:8]]
    deadline = Deadline(max_minutes)
    validation: dict[str, float | None] = {}
    tic, tic_step = time.time(), step
    with progress_bar(f"{cfg.method.value} GAN", cfg.max_steps, step) as (progress, task):
        while True:
            done = step >= cfg.max_steps or deadline.expired()
            if not done:
                idx = torch.randint(len(data.train), (cfg.batch_size,), generator=generator)
                trainer.step(data.train.images[idx].to(fabric.device), step)
                step += 1
                progress.advance(task)
                done = step >= cfg.max_steps or deadline.expired()
            if step % cfg.log_every == 0 or done:
                rate = (step - tic_step) / max(time.time() - tic, 1e-9)
                tic, tic_step = time.time(), step
                row: dict[str, Any] = {"step": step, "steps_per_s": rate, **trainer.read_losses()}
                if step % cfg.val_every == 0 or done:
                    validation = trainer.validate(data.val)
                    row.update({f"val_{k}": v for k, v in validation.items()})
                    score = validation["score"]
                    if best_score is None or (score is not None and score < best_score):
                        best_score = score
                        save_checkpoint(
                            {
                                **common,
                                "inpainter": trainer.inference_inpainter.state_dict(),
                                "step": step,
                                "auto_threshold": validation["noise_floor"],
                            },
                            run.best,
                        )
                    save_checkpoint(
                        {
                            **common,
                            **trainer.state(),
                            "generator": generator.get_state(),
                            "rng": rng_state(),
                            "step": step,
                            "best_score": best_score,
                        },
                        run.last,
                    )
                if step % cfg.sample_every == 0 or done:
                    x_cf, _ = trainer.counterfactuals(preview)
                    sample_grid(preview.numpy(), x_cf, out / "samples" / f"step_{step:07d}.png")
                run.append_metrics(row)
                progress.update(task, info=f"G {row['g']:.3f} D {row['d']:.3f} {rate:.2f} it/s")
            if done:
                break
    if deadline.expired() and step < cfg.max_steps:
        run.log(f"--max-minutes reached: stopped at step {step} with a checkpoint")
    progress_plot(out / "metrics.csv", out / "progress.png")
    run.write_run_json(
        fabric.device, {"kind": "gan", "method": cfg.method.value, "steps": step, "validation": validation}
    )
    run.log(f"GAN done at step {step}: val CV {validation.get('cv')}, flip rate {validation.get('flip_rate')}")
    run.close()
    return validation


__all__ = ["GanTrainer", "train_gan"]
