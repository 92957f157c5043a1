"""The counterfactual GAN trainer: owns both optimisers and the G/D step (COIN, or Singla et al.* as a setting).

Per step, on slices mirrored left-right with chance ``hflip`` (drawn from the data order's generator), with the
frozen classifier f (eval mode, no parameter grads; gradients flow *through* it to G):
  p = f(x), b = 1[p >= 0.5]; condition c = 0 (single, COIN) or 1[1 - p >= 0.5] (dual, Singla);
  KL target t = 1e-6 where b = 1 else p (single) or 1 - p (dual).
  Every ``gen_every``-th step, E+G are updated with
    adv(D(x_cf, c)) + λ_kl KL(t || f(x + s (x_cf - x))) + λ_rec [L1(x, x_id) + cyclic] + λ_tv TV + λ_minc L1(x, x_cf),
  where x_id = x_cf (single) or I(x, b) (dual) and the cyclic term is L1(x, I(x_cf, c')) (paper) or
  L1(x_cf, I(x_cf, c')) (idempotent), c' = c (single) or b (dual). On the other steps E+G run under no_grad.
  s = ``kl_edit_scale`` (1 = the paper's f(x_cf)). D is updated every step on (x, b) as real and (x_cf, c) as fake,
  both in ONE call on their concatenation (D has no batch statistics, so this is the same function of each
  sample; its spectral-norm power iteration then runs once per D step, and under DDP its buffers are broadcast
  once). In the G step D (parameters frozen) and the classifier are called unwrapped, outside DDP.
No host-device synchronisation inside the step: losses are accumulated on the device and read every
``log_every`` steps. Validation, ``best.pt``'s thresholds and inference use x_cf averaged with the mirror's when
``mirror_maps`` is set (:func:`coinseg.method.counterfactual`).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from coinseg import losses
from coinseg.config import Conditioning, Cyclic, DeviceChoice, GanConfig, Settings, settings_to_dict
from coinseg.data.crop import OrganCrop
from coinseg.data.prepare import prepare_data
from coinseg.data.slices import SliceSet
from coinseg.errors import RunError
from coinseg.evaluation.metrics import (
    accuracy_auroc,
    auroc_p_value,
    chance_warning,
    counterfactual_validity,
    difference_map,
    flip_rate,
)
from coinseg.io.files import atomic_file
from coinseg.method import (
    build_inpainter,
    conditions,
    counterfactual,
    load_classifier,
    mirror_rows,
    prob,
    probs,
    scaled_edit,
)
from coinseg.models import build_discriminator
from coinseg.reporting.figures import progress_plot, sample_grid
from coinseg.runtime.device import make_fabric
from coinseg.runtime.rundir import Deadline, RunDir, versions
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
    """Holds I = (E, G, fusion), D, their Adam optimisers (all set up by Fabric), the EMA copy of I and the frozen
    classifier (moved to the device, never wrapped: no DDP for a network without trainable parameters)."""

    def __init__(
        self,
        cfg: GanConfig,
        fabric: Any,
        inpainter: Any,
        discriminator: nn.Module,
        opt_g: Any,
        opt_d: Any,
        classifier: nn.Module,
        ema: nn.Module | None = None,
    ) -> None:
        self.cfg, self.fabric = cfg, fabric
        self.inpainter, self.opt_g, self.discriminator, self.opt_d = inpainter, opt_g, discriminator, opt_d
        self.ema = ema
        self.g_updates = 0
        # D as G's loss sees it: no DDP (its parameters are frozen in the G step, so DDP would wait for gradients)
        self.discriminator_fn: nn.Module = unwrapped(discriminator)
        self.classifier = classifier.requires_grad_(False).eval().to(fabric.device)
        self.totals = torch.zeros(len(LOSS_NAMES), device=fabric.device)
        self.counted = torch.zeros(len(LOSS_NAMES), device=fabric.device)

    @classmethod
    def from_settings(cls, settings: Settings, classifier: nn.Module, fabric: Any) -> GanTrainer:
        """Build E+G, D and their optimisers from ``settings`` (seed Fabric first for a reproducible start), with
        the speed settings (channels_last, compile) and SyncBatchNorm under multi-GPU DDP, and set them up."""
        cfg = settings.gan
        built: tuple[nn.Module, nn.Module] = (build_inpainter(cfg), build_discriminator(cfg))
        speed = (settings.channels_last, settings.compile)
        inpainter = prepare_network(fabric, built[0], settings.channels_last, False)
        ema = copy.deepcopy(inpainter).eval().requires_grad_(False).to(fabric.device) if cfg.ema else None
        if settings.compile:
            inpainter.compile()
        discriminator = prepare_network(fabric, built[1], *speed)
        classifier = prepare_network(fabric, classifier, *speed) if any(speed) else classifier
        betas = (cfg.betas[0], cfg.betas[1])
        opt_g = torch.optim.Adam(inpainter.parameters(), lr=cfg.lr, betas=betas)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr if cfg.lr_d is None else cfg.lr_d, betas=betas)
        inpainter, opt_g = fabric.setup(inpainter, opt_g)
        discriminator, opt_d = fabric.setup(discriminator, opt_d)
        return cls(cfg, fabric, inpainter, discriminator, opt_g, opt_d, classifier, ema)

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
        dual = cfg.conditioning is Conditioning.dual
        feats = self.inpainter.encoder(x) if dual else None  # E(x), reused for the identity term
        x_cf = self.inpainter(x, c, feats)
        adv = losses.adversarial_g(self.discriminator_fn(x_cf, c).float(), cfg.adv_loss)
        scored = scaled_edit(x, x_cf, cfg.kl_edit_scale)
        kl = losses.bernoulli_kl(t, self._stochastic_prob(scored) if cfg.kl_dropout else self._prob(scored))
        x_id = self.inpainter(x, b, feats) if dual else x_cf
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
        autocast = self.fabric.autocast
        with torch.no_grad(), autocast():
            p = self._prob(x)
        b, c, t = conditions(p, self.cfg)
        if step % self.cfg.gen_every == 0:
            self.discriminator_fn.requires_grad_(False)
            with autocast():
                total, x_cf, terms = self._generator_loss(x, b, c, t)
            self.opt_g.zero_grad(set_to_none=True)
            self.fabric.backward(total)
            self.opt_g.step()
            if self.ema is not None:
                update_ema(self.ema, self.inpainter, self.cfg.ema, self.g_updates)
            self.g_updates += 1
            self.discriminator_fn.requires_grad_(True)
            self.totals[1:5] += terms
            self.totals[5] += total.detach()
            self.counted[1:] += 1
        else:
            with torch.no_grad(), autocast():
                x_cf = self.inpainter(x, c)
        with autocast():
            logits = self.discriminator(torch.cat([x, x_cf.detach()]), torch.cat([b, c])).float()
            real, fake = logits.split(x.shape[0])
            d_loss = losses.adversarial_d(real, fake, self.cfg.adv_loss)
        self.opt_d.zero_grad(set_to_none=True)
        self.fabric.backward(d_loss)
        self.opt_d.step()
        self.totals[0] += d_loss.detach()
        self.counted[0] += 1

    def read_losses(self) -> dict[str, float]:
        """Mean of each loss since the last call over all ranks (one device sync; a sum over ranks), then reset."""
        totals, counted = self.totals, self.counted
        if self.fabric.world_size > 1:
            totals, counted = self.fabric.all_reduce(torch.stack([totals, counted]), reduce_op="sum")
        means = (totals / counted.clamp(min=1)).tolist()
        self.totals.zero_()
        self.counted.zero_()
        return dict(zip(LOSS_NAMES, means, strict=True))

    @property
    def inference_inpainter(self) -> nn.Module:
        """The weights used for validation, `best` and inference: the EMA copy when enabled (unwrapped: validation
        runs on the global-zero rank alone)."""
        return self.ema if self.ema is not None else unwrapped(self.inpainter)

    @torch.no_grad()
    def counterfactuals(self, images: Tensor, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(x_cf as N x 1 x S x S numpy in [-1, 1], f(x) as N probs) in eval mode; inputs on the CPU."""
        model = self.inference_inpainter
        model.eval()
        outs, probs = [], []
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(self.fabric.device)
            with self.fabric.autocast():
                p = self._prob(x)
                outs.append(counterfactual(model, x, conditions(p, self.cfg)[1], self.cfg.mirror_maps).float().cpu())
            probs.append(p.cpu())
        if model is not self.ema:
            model.train()
        return torch.cat(outs).numpy(), torch.cat(probs).numpy()

    def validate(self, data: SliceSet) -> dict[str, float | None]:
        """Mask-free validation on ``data`` (image labels only):

        - ``score`` (selects ``best``; lower is better): λ_kl KL (on the edit scaled as in training)
          + λ_rec L1(x, x_cf) + λ_tv TV; the adversarial term is not comparable over time;
        - ``cv``, ``flip_rate``, mean change on predicted-normal and predicted-abnormal slices;
        - ``noise_floor``: the ``NOISE_FLOOR_QUANTILE`` quantile, over slices labelled normal, of each slice's
          peak |x - x_cf| / 2, i.e. the lowest threshold that leaves ~95 % of them without a mask pixel
          (``--threshold auto``);
        - ``half_max``: half the median, over slices labelled abnormal, of each slice's peak |x - x_cf| / 2: the
          edge of a typical lesion at half its change;
        - a slice's peak is the largest over its inputs' (:meth:`SliceSet.per_slice`; by parts, a slice labelled
          abnormal may hold lesion-free components, whose small peaks would otherwise pull the median down);
        - ``floor``: the larger of the two (``--threshold floor``), None without slices labelled normal.
        """
        images = data.images[:]  # a lazy store view is read here: validation needs the whole split
        x_cf, p = self.counterfactuals(images)
        cf = torch.from_numpy(x_cf)
        p_cf = probs(self.classifier, cf, self.fabric.device)
        scored = scaled_edit(images, cf, self.cfg.kl_edit_scale)
        p_scored = p_cf if scored is cf else probs(self.classifier, scored, self.fabric.device)
        _, _, t = conditions(torch.from_numpy(p), self.cfg)
        kl = float(losses.bernoulli_kl(t, torch.from_numpy(p_scored)))
        diff = difference_map(images, cf)  # |x - x_cf| / 2
        change = (2 * diff).mean(dim=(1, 2, 3)).numpy()
        tv = float(losses.total_variation(images, cf))
        normal = p < 0.5
        score = self.cfg.lambda_kl * kl + self.cfg.lambda_rec * float(change.mean()) + self.cfg.lambda_tv * tv
        labels, peaks = data.per_slice(diff.amax(dim=(1, 2, 3)).numpy())
        labelled_normal = labels == 0
        noise_floor = (
            float(np.quantile(peaks[labelled_normal], NOISE_FLOOR_QUANTILE)) if labelled_normal.any() else None
        )
        half_max = float(np.median(peaks[~labelled_normal])) / 2 if (~labelled_normal).any() else None
        return {
            "score": score,
            "kl": kl,
            "cv": counterfactual_validity(p, p_cf),
            "flip_rate": flip_rate(p, p_cf),
            "change_normal": float(change[normal].mean()) if normal.any() else None,
            "change_abnormal": float(change[~normal].mean()) if (~normal).any() else None,
            "noise_floor": noise_floor,
            "half_max": half_max,
            "floor": None if noise_floor is None else max(noise_floor, half_max or 0.0),
        }

    def state(self) -> dict[str, Any]:
        return {
            "inpainter": self.inpainter.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "g_updates": self.g_updates,
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "loss_sums": torch.stack([self.totals, self.counted]).cpu(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.inpainter.load_state_dict(state["inpainter"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.g_updates = state["g_updates"]
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if "loss_sums" in state:
            self.totals.copy_(state["loss_sums"][0])
            self.counted.copy_(state["loss_sums"][1])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class GanHooks:
    """The GAN's part of :func:`coinseg.training.loop.train_loop`: the step on this rank's slices (moved to the
    device), validation on ``data.val``, ``best.pt`` with the inference weights and the auto threshold, sample
    grids of ``preview`` under ``out/samples`` (``out`` None: no samples)."""

    def __init__(self, trainer: GanTrainer, data: Any, out: Path | None, order: DataOrder) -> None:
        self.trainer, self.data, self.out, self.order = trainer, data, out, order
        self.preview = data.val.images[torch.argsort(-data.val.labels, stable=True)[:8]]

    def train_step(self, step: int, idx: Tensor) -> None:
        x = self.data.train.images[idx]
        hflip = self.trainer.cfg.hflip
        if hflip:  # drawn for the whole global batch (as one process would), applied to this rank's rows
            x = mirror_rows(
                x, self.order.shard(torch.rand(self.order.batch_size, generator=self.order.generator) < hflip)
            )
        self.trainer.step(x.to(self.trainer.fabric.device, non_blocking=True), step)

    def read_losses(self) -> dict[str, float]:
        return self.trainer.read_losses()

    def validate(self) -> dict[str, float | None]:
        return self.trainer.validate(self.data.val)

    def best_state(self, validation: dict[str, float | None]) -> dict[str, Any]:
        return {
            "inpainter": self.trainer.inference_inpainter.state_dict(),
            "auto_threshold": validation["noise_floor"],
            "half_max": validation["half_max"],
            "floor": validation["floor"],
        }

    def state(self) -> dict[str, Any]:
        return self.trainer.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.trainer.load_state(state)

    def sample(self, step: int) -> None:
        if self.out is not None:
            x_cf, _ = self.trainer.counterfactuals(self.preview)
            sample_grid(self.preview.numpy(), x_cf, self.out / "samples" / f"step_{step:07d}.png")


def gan_cadences(cfg: GanConfig) -> Cadences:
    """The GAN's cadences: rows every ``log_every``, validation and ``last.pt`` every ``val_every``, samples every
    ``sample_every`` steps."""
    return Cadences(log=cfg.log_every, validate=cfg.val_every, checkpoint=cfg.val_every, samples=cfg.sample_every)


def train_gan(
    manifest: Path,
    classifier_run: Path,
    out: Path,
    settings: Settings,
    device: DeviceChoice = DeviceChoice.auto,
    max_minutes: float | None = None,
    resume: bool = False,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
) -> dict[str, Any]:
    """Train the counterfactual GAN against the classifier of ``classifier_run``; returns the last validation
    (on the global-zero rank; the other ranks of a multi-process run return an empty dict)."""
    RunDir.check(out, resume)
    fabric = make_fabric(device, settings.precision, devices, num_nodes, strategy)
    classifier, clf_ckpt = load_classifier(classifier_run)
    if clf_ckpt["size"] != settings.data.size:
        raise RunError(
            f"{classifier_run}: the classifier was trained at {clf_ckpt['size']} px but the profile uses "
            f"{settings.data.size} px; train both with the same profile"
        )
    window = tuple(clf_ckpt["window"]) if clf_ckpt["window"] else None
    crop = OrganCrop.from_json(clf_ckpt.get("crop"))  # None for whole slices (and classifiers before crops)
    data = prepare_data(
        manifest,
        settings.data.size,
        settings.data.percentiles,
        window,
        settings.seed,
        crop=crop,
        window_from=clf_ckpt.get("window_from"),  # the classifier's window: where it came from
        organ_only=bool(clf_ckpt.get("organ_only")),  # the classifier's input (False before organ-only inputs)
    )
    if clf_ckpt.get("organ_only") and not data.organ_only:
        raise RunError(
            f"{manifest}: the classifier of {classifier_run} saw only each slice's organ; give a manifest with an "
            "organ mask on every row"
        )
    if data.intensity != clf_ckpt["intensity"]:
        raise RunError(
            f"{manifest}: images are {data.intensity} but the classifier was trained on {clf_ckpt['intensity']}"
        )
    source = classifier_run / "checkpoints" / "best.pt"
    kept = out / "checkpoints" / "classifier.pt"
    if resume and kept.is_file() and _digest(kept) != _digest(source):
        raise RunError(f"{classifier_run}: not the classifier this run was trained with; resume with the original")

    def claim() -> RunDir:
        run = RunDir(out, settings, resume, "gan-run", (manifest, classifier_run), frozenset({"gan.max_steps"}))
        if not resume:
            with atomic_file(kept) as tmp:
                shutil.copyfile(source, tmp)
        return run

    run = on_rank_zero_first(fabric, claim)
    return train_in(fabric, run, lambda: _train(fabric, run, data, classifier, out, settings, max_minutes, resume))


def _train(
    fabric: Any,
    run: RunDir | None,
    data: Any,
    classifier: nn.Module,
    out: Path,
    settings: Settings,
    max_minutes: float | None,
    resume: bool,
) -> dict[str, Any]:
    cfg = settings.gan
    if run is not None:
        for note in data.notes:
            run.log(note)
        run.log(
            f"{cfg.method.value} GAN: {len(data.train)} train / {len(data.val)} val slices at {settings.data.size}px, "
            f"window {data.window}, device {fabric.device}, G every {cfg.gen_every} step(s)"
            + (f", {fabric.world_size} processes" if fabric.world_size > 1 else "")
        )
    fabric.seed_everything(settings.seed, verbose=False)
    trainer = GanTrainer.from_settings(settings, classifier, fabric)
    # the classifier against chance on the validation split, kept with the model so that `segment` can warn
    check: dict[str, Any] | None = None
    if run is not None:
        labels, p_val = data.val.per_slice(probs(trainer.classifier, data.val.images, fabric.device))
        n_abnormal = int(labels.sum())
        check = {
            "auroc": accuracy_auroc(labels, p_val)[1],
            "auroc_p": auroc_p_value(labels, p_val),
            "n_abnormal": n_abnormal,
            "n_normal": len(labels) - n_abnormal,
        }
        warning = chance_warning(
            check["auroc"], check["auroc_p"], check["n_abnormal"], check["n_normal"], "this manifest's validation split"
        )
        if warning:
            run.log(warning)
    order = DataOrder(len(data.train), cfg.batch_size, settings.seed, fabric.global_rank, fabric.world_size)
    hooks = GanHooks(trainer, data, out, order)
    last = out / "checkpoints" / "last.pt"
    start, best = resume_from(fabric, hooks, order, last, run, "best_score") if resume else (0, None)
    record = {
        "kind": "gan",
        "method": cfg.method.value,
        "size": settings.data.size,
        "window": list(data.window) if data.window else None,
        "window_from": data.window_from,
        "crop": data.crop.to_json() if data.crop else None,
        "organ_only": data.organ_only,
        "mirror_maps": cfg.mirror_maps,
        "intensity": data.intensity,
        "classifier_check": check,
        "settings": settings_to_dict(settings),
        "versions": versions(),
    }
    outcome = train_loop(
        fabric,
        hooks,
        run,
        order,
        name=f"{cfg.method.value} GAN",
        start=start,
        max_steps=cfg.max_steps,
        cadences=gan_cadences(cfg),
        deadline=Deadline(max_minutes),
        record=record,
        score_key="score",
        best_key="best_score",
        best=best,
        describe=lambda row: f"G {row.get('g', 0):.3f} D {row.get('d', 0):.3f} {row.get('steps_per_s', 0):.2f} it/s",
    )
    validation = outcome.validation
    if run is None:
        return validation
    progress_plot(out / "metrics.csv", out / "progress.png")
    run.write_run_json(
        fabric.device, {"kind": "gan", "method": cfg.method.value, "steps": outcome.step, "validation": validation}
    )
    run.log(f"GAN done at step {outcome.step}: val CV {validation.get('cv')}, flip rate {validation.get('flip_rate')}")
    return validation


__all__ = ["GanHooks", "GanTrainer", "gan_cadences", "train_gan"]
