"""Oracle pooled IoU on a `coinseg synth` test split: the lesion-free slice as a perfect counterfactual.

The synthetic set is deterministic per slice (one SeedSequence child per slice), so the pre-injection phantom can
be drawn again. Its difference with the stored slice, through the same pipeline as COIN (window, resize to the
network size, bilinear back to 128 px, threshold 0.25), bounds what any counterfactual method can reach.

With ``--run`` (a classifier run; its window is used) it also prints what that classifier says of partly
inpainted lesions, x - a (x - x_clean) for removed fractions a: how much of a lesion a counterfactual must remove
before f calls the slice normal.

    python benchmarks/oracle_iou.py coinseg-demo/data --size 64 --run coinseg-demo/classifier
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from coinseg.data.normalise import normalise
from coinseg.data.phantom import make_phantom
from coinseg.data.slices import resize
from coinseg.method import load_classifier
from coinseg.predictor import to_original_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder written by coinseg synth")
    parser.add_argument("--size", type=int, default=64, help="network size of the profile (quick 64, paper 256)")
    parser.add_argument("--run", type=Path, default=None, help="classifier run whose window to use")
    parser.add_argument("--threshold", type=float, default=0.25)
    args = parser.parse_args()

    info = json.loads((args.data / "synth.json").read_text())
    rows = list(csv.DictReader((args.data / "manifest.csv").open()))
    children = np.random.SeedSequence(info["seed"]).spawn(info["n_slices"] + 1)
    window = info["window"]
    classifier = None
    if args.run is not None:
        classifier, ckpt = load_classifier(args.run)
        window = ckpt["window"]
    counts = {"network": np.zeros(3), "native": np.zeros(3)}
    pairs: list[torch.Tensor] = []  # network-size (lesion, clean) pairs for the classifier curve
    for i, row in enumerate(rows):
        if row["split"] != "test" or row["label"] != "1":
            continue
        clean = make_phantom(info["size"], np.random.default_rng(children[i].spawn(2)[0])).hu
        image = np.load(args.data / row["image"])
        gt = np.load(args.data / row["mask"]) > 0
        a, b = normalise(image, tuple(window)), normalise(clean, tuple(window))
        small = [resize(torch.from_numpy(v)[None, None], (args.size, args.size)) for v in (a, b)]
        pairs.append(torch.cat(small, dim=1))
        maps = {
            "network": to_original_size((small[0] - small[1]).abs() / 2, [image.shape])[0],
            "native": np.abs(a - b) / 2,
        }
        for name, diff in maps.items():
            pred = diff > args.threshold
            counts[name] += [(pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()]
    for name, (tp, fp, fn) in counts.items():
        where = f"through {args.size} px" if name == "network" else "at native resolution"
        print(f"oracle pooled IoU {where}: {tp / (tp + fp + fn):.3f}")
    if classifier is not None:
        both = torch.cat(pairs)
        lesion, clean = both[:, :1], both[:, 1:]
        print(f"classifier logit on {len(both)} abnormal test slices with a fraction a of each lesion removed:")
        for a in (0.0, 0.25, 0.5, 0.75, 1.0):
            with torch.no_grad():
                logits = classifier(lesion - a * (lesion - clean)).reshape(-1).numpy()
            q = np.percentile(logits, [5, 50, 95])
            print(
                f"  a = {a:.2f}: logit p5 {q[0]:6.2f}  median {q[1]:6.2f}  p95 {q[2]:6.2f}  called normal {np.mean(logits < 0):.2f}"
            )


if __name__ == "__main__":
    main()
