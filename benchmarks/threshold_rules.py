"""Mask-free threshold rules scored on a trained run, with the maps as ``segment`` makes them (the run's
upsampling, default guided; the classifier gate on), on the manifest's test split.

Rules: the paper's 0.25; ``floor`` (the run's default, calibrated at training: the larger of its noise floor and
half the typical lesion's change); ``auto`` (the noise floor);
``half-max`` (half the median peak change of the validation slices labelled abnormal, computed here at the
network's size); and, for reference only, the best single threshold found with the test masks; with
``--seed-margin K``, ``floor``'s mask keeping only the components whose peak reaches K x ``floor``. Then, at the
run's default (``floor``): pixel precision and recall, how many ground-truth lesions (8-connected components)
the mask touches, the share of false-positive pixels inside the organ (when the manifest has one), how many
abnormal slices the gate removed, and how many normal slices pass the gate and how many of those get a mask pixel.

    python benchmarks/threshold_rules.py RUN_DIR MANIFEST [--upsample guided|bilinear] [--seed-margin K ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from coinseg.data.manifest import read_manifest
from coinseg.data.slices import load_mask, read_entry
from coinseg.evaluation.metrics import SegmentationTally, difference_map
from coinseg.predictor import load_predictor


def score(masks: list[np.ndarray], gts: list[np.ndarray], labels: np.ndarray) -> tuple[float, float]:
    """(pooled IoU, normal-slice false-positive rate) of the bool ``masks``."""
    tally = SegmentationTally()
    for m, g, label in zip(masks, gts, labels, strict=True):
        tally.add(m, g, bool(label))
    summary = tally.summary()
    return float(summary["pooled_iou"] or 0.0), float(summary["normal_fp_rate"] or 0.0)


def seeded(m: np.ndarray, cut: float, margin: float) -> np.ndarray:
    """``m > cut``, keeping only the 8-connected components whose peak reaches ``margin * cut``."""
    components, n = ndimage.label(m > cut, structure=np.ones((3, 3)))
    peaks = np.asarray(ndimage.maximum(m, components, index=np.arange(1, n + 1)))
    return np.concatenate([[False], peaks >= margin * cut])[components]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--upsample", default="guided", choices=["guided", "bilinear"])
    parser.add_argument(
        "--seed-margin", type=float, nargs="*", default=[], help="also: floor's components that peak >= K x floor"
    )
    args = parser.parse_args()
    model = load_predictor(args.run, "cpu", args.upsample)
    rows = read_manifest(args.manifest)

    val = [e for e in rows if e.split == "val"]
    val_arrays = [read_entry(e) for e in val]
    val_organs = model.entry_organs(val, val_arrays)
    inputs, regions, owner = model.expand(val_arrays, val_organs)  # one per slice, or per organ component
    x_val = model.inputs(model.seen(inputs, regions), model.boxes(regions))
    with torch.no_grad():
        cf_val = torch.cat([model.maps.counterfactual(x_val[i : i + 64]) for i in range(0, len(x_val), 64)])
    peaks = difference_map(x_val, cf_val).amax(dim=(1, 2, 3)).numpy()
    abnormal_val = np.array([val[i].label for i in owner]) == 1
    half_max = 0.5 * float(np.median(peaks[abnormal_val]))

    test = [e for e in rows if e.split == "test"]
    arrays = [read_entry(e) for e in test]
    gts = [load_mask(e, a.shape) for e, a in zip(test, arrays, strict=True)]
    labels = np.array([e.label for e in test])
    organs = model.entry_organs(test, arrays)
    probs, _, maps = model.run(arrays, organs=organs, gate=True)

    rules = {"0.25": 0.25, "floor": model.threshold("floor"), "half-max": half_max}
    if model.auto_threshold is not None:
        rules["auto"] = model.auto_threshold
    grid = np.round(np.arange(0.02, 0.9, 0.02), 2)
    best = float(grid[int(np.argmax([score([m > t for m in maps], gts, labels)[0] for t in grid]))])
    print(f"{args.run} ({model.upsample.value} upsampling, gate on), test split")
    for name, cut in [*rules.items(), ("best (uses the masks)", best)]:
        iou, fp = score([m > cut for m in maps], gts, labels)
        print(f"  {name:22s} threshold {cut:.3f}: pooled IoU {iou:.3f}, normal FP {fp:.3f}")

    cut = rules["floor"]
    for margin in args.seed_margin:
        iou, fp = score([seeded(m, cut, margin) for m in maps], gts, labels)
        print(f"  floor, components peaking >= {margin:g} x floor: pooled IoU {iou:.3f}, normal FP {fp:.3f}")
    tp = fp = fn = fp_organ = hit = lesions = gated = 0
    for m, g, label, organ, p in zip(maps, gts, labels, organs, probs, strict=True):
        if label != 1:
            continue
        pred = m > cut
        tp += int((pred & g).sum())
        fp += int((pred & ~g).sum())
        fn += int((~pred & g).sum())
        fp_organ += int((pred & ~g & organ).sum()) if organ is not None else 0
        components, n = ndimage.label(g, structure=np.ones((3, 3)))
        lesions += n
        hit += sum(bool(pred[components == k].any()) for k in range(1, n + 1))
        gated += int(p < 0.5)
    inside = f", {fp_organ / max(fp, 1):.2f} of false-positive pixels inside the organ" if organs[0] is not None else ""
    print(
        f"  at floor: precision {tp / max(tp + fp, 1):.3f}, recall {tp / max(tp + fn, 1):.3f}, lesions touched "
        f"{hit}/{lesions}{inside}, abnormal slices gated away {gated}/{int((labels == 1).sum())}"
    )
    normal = labels == 0
    flagged = int((probs[normal] >= 0.5).sum())
    with_pixel = sum(bool((m > cut).any()) for m, is_normal in zip(maps, normal, strict=True) if is_normal)
    print(
        f"  normal slices: {flagged}/{int(normal.sum())} called abnormal (they pass the gate), {with_pixel} of them "
        "with a mask pixel at floor"
    )


if __name__ == "__main__":
    main()
