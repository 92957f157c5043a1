"""``coinseg evaluate``: every method on exactly the same frozen test slices, the same classifier, one table.

Counterfactual methods (COIN, Singla et al.*): map = |x - x_cf| / 2, mask = map > ``threshold`` (default
``floor``, :meth:`coinseg.predictor.Predictor.threshold`). Attribution methods (RISE, ScoreCAM, LayerCAM,
GradCAM, GradCAM++): min-max normalised map, mask = map > ``saliency_threshold`` (paper 0.975). Maps are computed
at the network size and resized (guided by the slice, or bilinear) to each slice's own resolution, where they are
compared with the ground-truth masks; a slice with an organ mask (a manifest's organ column, a `coinseg prepare`
store's organ) has its maps zero outside the organ, as `segment` writes them. Slices of a store are also scored
per volume (scan). Metrics: pooled IoU (the paper's),
mean per-slice IoU and Dice on abnormal slices, the fraction of normal slices with any predicted pixel, pixel
average precision over all slices (threshold-free), CV and flip rate (counterfactual methods), FID (paired and
realism; when Inception weights are available), seconds per slice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coinseg import __version__
from coinseg.attribution import build_attributor
from coinseg.config import DeviceChoice, MapUpsample, MaskExtent
from coinseg.data.crop import slice_max
from coinseg.data.manifest import Entry, read_manifest, select_split
from coinseg.data.normalise import normalise
from coinseg.data.slices import load_mask, read_entry
from coinseg.data.store import from_store
from coinseg.errors import RunError, UsageError
from coinseg.evaluation import fid as fid_lib
from coinseg.evaluation.cases import CaseMasks, score_cases
from coinseg.evaluation.metrics import (
    LesionTally,
    SegmentationTally,
    accuracy_auroc,
    auroc_p_value,
    average_precision,
    chance_warning,
    counterfactual_validity,
    difference_map,
    flip_rate,
    lesion_mask,
    lesion_polarity,
    polarity_warning,
)
from coinseg.evaluation.metrics import postprocess as clean_mask
from coinseg.evaluation.volume import MIN_LESION_MM3, VolumeTally
from coinseg.io.files import atomic_dir, check_empty_target
from coinseg.io.images import KIND_NAMES, intensity_for
from coinseg.predictor import Predictor, load_predictor, parse_threshold
from coinseg.registry import METHODS
from coinseg.reporting.figures import comparison_grid
from coinseg.reporting.montage import lesion_montage
from coinseg.reporting.report import write_report
from coinseg.runtime.checkpoint import write_json
from coinseg.runtime.console import progress_bar

FIGURE_SLICES = 6
MONTAGE_VOLUMES = 6  # per-volume montages in the report: the scans with the most lesion


def subset(entries: list[Entry], max_slices: int | None) -> list[Entry]:
    """At most ``max_slices`` entries, evenly spaced within each label (deterministic; all methods see the same
    slices, and the abnormal/normal proportion is kept)."""
    if max_slices is None or len(entries) <= max_slices:
        return entries
    if max_slices < 2:
        raise UsageError(f"--max-slices {max_slices}: must be at least 2")
    chosen: list[Entry] = []
    for label in (1, 0):
        group = [e for e in entries if e.label == label]
        share = round(max_slices * len(group) / len(entries))
        if group and share:
            chosen += [group[i] for i in np.linspace(0, len(group) - 1, share).round().astype(int)]
    return sorted(chosen, key=entries.index)


def _check_compatible(model: Predictor, other: Predictor, run_dir: Path, other_dir: Path) -> None:
    """Two runs scored on the same inputs must share window, size, intensity kind, organ crop and organ-only
    input (and so the same slices)."""
    for what in ("window", "size", "intensity", "crop", "organ_only"):
        if getattr(model, what) != getattr(other, what):
            raise RunError(
                f"{other_dir}: {what} {getattr(other, what)} differs from {run_dir}'s {getattr(model, what)}; "
                "train both runs on the same data and profile"
            )


def _montages(method: str, scans: list[CaseMasks], out: Path) -> dict[str, str]:
    """Per-volume montages (slices with the most lesion, TP/FP/FN as in the paper's Figure 2) of the
    ``MONTAGE_VOLUMES`` scans with the most lesion, for ``method``; returns {figure name: relative path}."""
    chosen = sorted(scans, key=lambda c: -(int(c.truth.sum()) + int(c.pred.sum())))[:MONTAGE_VOLUMES]
    figures = {}
    for scan in sorted(chosen, key=lambda c: c.geometry.case):
        rel = f"volumes/{scan.geometry.case}.png"
        dice = scan.score.dice
        lesion_montage(
            scan.ct(),
            scan.pred,
            scan.truth,
            out / rel,
            affine=scan.geometry.affine,
            title=f"{method}, {scan.geometry.case}: Dice {dice:.3f}, {scan.score.n_detected}/{scan.score.n_true} "
            f"lesions found, {scan.score.n_false_positive} false positive(s)",
        )
        figures[f"{method} on {scan.geometry.case}"] = rel
    return figures


def _batched(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device, batch: int
) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


def _fid_scores(extractor: Any, x01: torch.Tensor, cf01: torch.Tensor, labels: np.ndarray) -> dict[str, float | None]:
    """Paired FID (all slices vs their own counterfactuals, the paper's) and realism FID (counterfactuals of
    abnormal slices vs real normal slices of the same split)."""
    paired = fid_lib.fid(extractor, x01, cf01)
    abnormal, normal = labels == 1, labels == 0
    realism = fid_lib.fid(extractor, x01[normal], cf01[abnormal]) if abnormal.sum() > 1 and normal.sum() > 1 else None
    return {"fid_paired": paired, "fid_realism": realism}


def score_maps(
    maps: list[np.ndarray],
    gts: list[np.ndarray],
    labels: np.ndarray,
    cut: float,
    postprocess: bool = False,
    lesions: list[tuple[np.ndarray, np.ndarray]] | None = None,
    extent: MaskExtent | str = MaskExtent.half_peak,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Masks :func:`~coinseg.evaluation.metrics.lesion_mask` of ``cut`` and ``extent`` (H_i x W_i maps at each
    slice's resolution; abnormal slices post-processed when ``postprocess``) scored against the boolean ``gts``
    with slice ``labels`` (1 = abnormal). ``lesions``: each slice's
    :func:`~coinseg.evaluation.metrics.lesion_polarity`, to count lesions detected by polarity.

    Returns (the :class:`SegmentationTally` summary plus ``pixel_ap`` of the maps and, with ``lesions``, the
    :class:`LesionTally` summary; the predicted masks).
    """
    tally, by_lesion = SegmentationTally(), LesionTally()
    masks = []
    for i, (m, gt, label) in enumerate(zip(maps, gts, labels, strict=True)):
        pred = lesion_mask(m, cut, extent)
        if postprocess and label == 1:
            pred = clean_mask(pred)
        tally.add(pred, gt, bool(label))
        if lesions is not None and label == 1:
            by_lesion.add(pred, *lesions[i])
        masks.append(pred)
    ap = average_precision(np.concatenate([m.ravel() for m in maps]), np.concatenate([g.ravel() for g in gts]))
    summary: dict[str, Any] = {**tally.summary(), "pixel_ap": ap}
    if lesions is not None:
        summary.update(by_lesion.summary())
    return summary, masks


def evaluate(
    run_dir: Path,
    manifest: Path,
    out_dir: Path,
    methods: list[str],
    split: str = "test",
    threshold: float | str = "floor",
    saliency_threshold: float = 0.975,
    postprocess: bool = False,
    device: DeviceChoice | str = DeviceChoice.auto,
    singla_run: Path | None = None,
    gate: bool = True,
    upsample: MapUpsample | str = MapUpsample.guided,
    extent: MaskExtent | str = MaskExtent.half_peak,
    rise_masks: int = 6000,
    max_slices: int | None = None,
    batch_size: int = 64,
    fid_extractor: Any = None,
) -> dict[str, Any]:
    """Score ``methods`` on ``split`` of ``manifest``; write metrics.json, report.md/html and figures.
    ``threshold`` (counterfactual maps): ``"floor"``, ``"auto"`` or a number in [0, 1)
    (:meth:`coinseg.predictor.Predictor.threshold`).
    ``gate``: every method's map is zero on slices the classifier calls normal (f(x) < 0.5), as ``segment``
    writes them. ``upsample``: how every method's maps are resized back to the slices (guided by the slice, or
    bilinear; :mod:`coinseg.data.upsample`). ``extent``: how far a counterfactual map's lesion reaches
    (:class:`~coinseg.config.MaskExtent`); attribution maps are cut at ``saliency_threshold``."""
    parsed = parse_threshold(threshold)
    extent = MaskExtent(extent)
    check_empty_target(out_dir)  # before any work; again at the end
    model = load_predictor(run_dir, device, upsample)
    models: dict[str, Predictor] = {model.maps.name: model}
    if "singla" in methods and "singla" not in models:
        if singla_run is None:
            raise UsageError("--methods singla needs --singla-run DIR (a run trained with --method singla)")
        models["singla"] = load_predictor(singla_run, device, upsample)
        _check_compatible(model, models["singla"], run_dir, singla_run)
    counterfactual = [m for m in methods if METHODS[m].kind == "counterfactual"]
    missing = [m for m in counterfactual if m not in models]
    if missing:
        raise UsageError(f"--methods {missing[0]}: {run_dir} is a {model.maps.name} run; give a {missing[0]} run")

    every = select_split(read_manifest(manifest), split, manifest)
    entries = subset(every, max_slices)
    kinds = {intensity_for(e.image) for e in entries}
    if kinds != {model.intensity}:
        raise RunError(
            f"{manifest}: {' and '.join(KIND_NAMES[k] for k in sorted(kinds))} but the model was trained on "
            f"{KIND_NAMES[model.intensity]}"
        )
    arrays = [read_entry(e) for e in entries]
    gts = [load_mask(e, a.shape) for e, a in zip(entries, arrays, strict=True)]
    labels = np.array([e.label for e in entries])
    polarity = [lesion_polarity(a, g) for a, g in zip(arrays, gts, strict=True)]
    organs = model.entry_organs(entries, arrays)
    inputs, regions, owner = model.expand(arrays, organs, str(manifest))  # one input per slice, or per component
    boxes = model.boxes(regions, str(manifest))
    shown = model.seen(inputs, regions, str(manifest))
    x = model.inputs(shown, boxes)
    guides = model.guides(shown, boxes)  # shared by every method's maps
    probs_in = model.probs(x, batch_size)
    probs = slice_max(probs_in, owner, len(entries))
    gate_by = probs_in if gate else None
    accuracy, auroc = accuracy_auroc(labels, probs)
    auroc_p = auroc_p_value(labels, probs)
    n_abnormal, n_normal = int((labels == 1).sum()), int((labels == 0).sum())

    notes: list[str] = []
    at_chance = chance_warning(auroc, auroc_p, n_abnormal, n_normal, f"the {split} split")
    if at_chance:
        notes.append(at_chance)
    if len(entries) < len(every):
        notes.append(f"scored on a fixed, evenly spaced subset of {len(entries)} of the {len(every)} {split} slices")
    if "rise" in methods and rise_masks != 6000:
        notes.append(f"RISE with {rise_masks} masks (the paper used 6000)")
    options = {"n_masks": rise_masks}
    extractor = fid_extractor
    if extractor is None and counterfactual:
        try:
            extractor = fid_lib.inception_extractor().to(model.device)
        except fid_lib.FidUnavailable as exc:
            notes.append(str(exc))
    results: dict[str, dict[str, Any]] = {}
    masks_by_method: dict[str, list[np.ndarray]] = {}
    per_scan = from_store(entries)  # slices of a `coinseg prepare` store: also scored per volume (scan)
    scans: dict[str, list[CaseMasks]] = {}
    for name in methods:
        with progress_bar(f"evaluate {name}", 1) as (progress, task):
            tic = time.perf_counter()
            entry: dict[str, Any]
            spec = METHODS[name]
            if spec.kind == "counterfactual":
                cf_model = models[name]
                x_cf = _batched(cf_model.maps.counterfactual, x, cf_model.device, batch_size)
                maps = difference_map(x, x_cf)
                seconds = time.perf_counter() - tic
                probs_cf = model.probs(x_cf, batch_size)  # per network input, as probs_in
                cut = cf_model.threshold(parsed)
                if isinstance(parsed, str):
                    notes.append(f"{name}: threshold {parsed} = {cut:.3f} (see --threshold)")
                warning = cf_model.below_noise_floor(cut)
                if warning:
                    notes.append(f"{name}: {warning}")
                entry = {
                    "kind": "counterfactual",
                    # per input (a component, by parts): does the edit flip what f called abnormal
                    "cv": counterfactual_validity(probs_in, probs_cf),
                    "flip_rate": flip_rate(probs_in, probs_cf),
                }
                if extractor is not None:
                    entry.update(_fid_scores(extractor, (x + 1) / 2, (x_cf + 1) / 2, labels[owner]))
            else:
                chosen = {key: options[key] for key in spec.options}
                attributor = build_attributor(name, model.classifier, **chosen)
                maps = _batched(attributor, x, model.device, batch_size)
                seconds = time.perf_counter() - tic
                cut = saliency_threshold
                entry = {"kind": "attribution", "cv": None, "flip_rate": None, **chosen}
            cleaned = postprocess and entry["kind"] == "counterfactual"
            # as `segment` writes them: gated (where f calls the slice, or component, normal), inside the organ
            sized = model.per_slice_maps(model.to_slices(maps, x, inputs, boxes, guides), regions, owner, gate_by)
            reach = extent if entry["kind"] == "counterfactual" else MaskExtent.threshold
            summary, masks_by_method[name] = score_maps(sized, gts, labels, cut, cleaned, polarity, reach)
            entry.update(
                threshold=cut,
                extent=reach.value,
                postprocess=cleaned,
                gated=gate,
                seconds_per_slice=seconds / max(len(entries), 1),
                **summary,
            )
            one_polarity = polarity_warning(summary) if entry["kind"] == "counterfactual" else None
            if one_polarity:
                notes.append(f"{name}: {one_polarity}")
            if per_scan:
                scans[name] = score_cases(entries, masks_by_method[name], gts, cleaned, MIN_LESION_MM3)
                entry["volumes"] = VolumeTally([c.score for c in scans[name]]).summary()
            results[name] = entry
            progress.advance(task)

    abnormal = np.flatnonzero(labels == 1)
    chosen = (
        abnormal[np.linspace(0, len(abnormal) - 1, min(FIGURE_SLICES, len(abnormal))).astype(int)]
        if len(abnormal)
        else []
    )
    metrics: dict[str, Any] = {
        "coinseg_version": __version__,
        "model_run": str(run_dir),
        "manifest": str(manifest),
        "split": split,
        "n_slices": len(entries),
        "max_slices": max_slices,
        "gate": gate,
        "upsample": model.upsample.value,
        "n_abnormal": n_abnormal,
        "n_normal": n_normal,
        "classifier": {"accuracy": accuracy, "auroc": auroc, "auroc_p": auroc_p},
        "methods": results,
        "notes": notes,
        "figures": {"comparison": "comparison.png"},
    }
    if per_scan:
        metrics["volumes"] = {name: VolumeTally([c.score for c in scans[name]]).rows_as_dicts() for name in methods}
    with atomic_dir(out_dir, "evaluation") as tmp:
        if per_scan:
            metrics["figures"].update(_montages(methods[0], scans[methods[0]], tmp))
        if len(chosen):
            comparison_grid(
                [(normalise(arrays[i], model.window) + 1.0) / 2.0 for i in chosen],
                [gts[i] for i in chosen],
                {name: [masks_by_method[name][i] for i in chosen] for name in methods},
                tmp / "comparison.png",
                title=f"{split} slices with lesions: TP green, FP red, FN yellow, ground truth outlined",
            )
        else:
            metrics["figures"] = {}
            notes.append("no abnormal slice in this split: no comparison figure")
        write_json(metrics, tmp / "metrics.json")
        write_report(metrics, tmp)
    return metrics
