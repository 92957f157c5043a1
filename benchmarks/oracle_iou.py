"""Oracle pooled IoU on a `coinseg synth` test split: the lesion-free slice as a perfect counterfactual.

The synthetic set is deterministic per slice (one SeedSequence child per slice), so the pre-injection phantom can
be drawn again. Its difference with the stored slice, through the same pipeline as COIN (window, resize to the
network size, bilinear back to 128 px, threshold 0.25), bounds what any counterfactual method can reach.

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
from coinseg.inference import to_original_size
from coinseg.training.runtime import load_checkpoint


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
    if args.run is not None:
        window = load_checkpoint(args.run / "checkpoints" / "best.pt")["window"]
    counts = {"network": np.zeros(3), "native": np.zeros(3)}
    for i, row in enumerate(rows):
        if row["split"] != "test" or row["label"] != "1":
            continue
        clean = make_phantom(info["size"], np.random.default_rng(children[i].spawn(2)[0])).hu
        image = np.load(args.data / row["image"])
        gt = np.load(args.data / row["mask"]) > 0
        a, b = normalise(image, tuple(window)), normalise(clean, tuple(window))
        small = [resize(torch.from_numpy(v)[None, None], (args.size, args.size)) for v in (a, b)]
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


if __name__ == "__main__":
    main()
