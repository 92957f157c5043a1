"""3-D post-processing against the 2-D per-slice rule, on simulated weak masks (not COIN output).

Each volume (96 x 96 x 40 voxels of 0.8 x 0.8 x 3 mm) holds 1-3 ellipsoid lesions of 4-14 mm diameter; half the
volumes hold two lesions on the same slices (one per side, as a lesion in each kidney). The "prediction" is the
truth with its border jittered (one-voxel in-plane dilation or erosion per lesion) plus scattered noise voxels
and small spurious clusters, a stand-in for a thresholded difference map. Three rules are scored with the
per-volume metrics of ``coinseg.evaluation.volume``: none, the 2-D rule of ``segment --postprocess``
(3x3 opening, closing, largest component per slice) and the 3-D rule (26-connected components >= 65.4 mm^3).
This shows what each rule does to several lesions per slice and to speckle; it does not measure COIN.
A lesion the 3-D rule misses is one whose predicted components are all below 65.4 mm^3 (small or eroded lesions,
by design); the 2-D rule misses the second lesion of a slice.

    python benchmarks/postprocess_3d.py --volumes 40 --seed 0
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.ndimage as ndi

from coinseg.evaluation.metrics import postprocess
from coinseg.evaluation.volume import VolumeTally, remove_small_lesions, score_volume

SHAPE = (96, 96, 40)
SPACING = (0.8, 0.8, 3.0)


def _ellipsoid(centre: np.ndarray, diameter_mm: float) -> np.ndarray:
    grid = np.indices(SHAPE).astype(np.float64)
    d2 = sum(((grid[a] - centre[a]) * SPACING[a] / (diameter_mm / 2.0)) ** 2 for a in range(3))
    return d2 <= 1.0


def _volume(rng: np.random.Generator, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros(SHAPE, bool)
    pred = np.zeros(SHAPE, bool)
    z = rng.uniform(10, 30)
    centres = [
        np.array([rng.uniform(15, 35), rng.uniform(30, 66), z]),
        np.array([rng.uniform(61, 81), rng.uniform(30, 66), z]),
    ]
    if not paired:
        centres = [
            np.array([rng.uniform(15, 81), rng.uniform(15, 81), rng.uniform(8, 32)]) for _ in range(rng.integers(1, 4))
        ]
    for centre in centres:
        lesion = _ellipsoid(centre, rng.uniform(4.0, 14.0))
        truth |= lesion
        jitter = rng.integers(-1, 2)
        in_plane = np.zeros((3, 3, 1), bool)
        in_plane[:, :, 0] = True
        if jitter > 0:
            lesion = ndi.binary_dilation(lesion, in_plane)
        elif jitter < 0:
            lesion = ndi.binary_erosion(lesion, in_plane)
        pred |= lesion
    pred |= rng.random(SHAPE) < 2e-4  # speckle
    for _ in range(rng.integers(0, 4)):  # small spurious clusters, 1-3 voxels across in-plane
        i, j, k = (int(rng.integers(0, s - 3)) for s in SHAPE)
        size = int(rng.integers(1, 4))
        pred[i : i + size, j : j + size, k] = True
    return pred, truth


def _per_slice_2d(pred: np.ndarray) -> np.ndarray:
    return np.stack([postprocess(pred[:, :, k]) for k in range(pred.shape[2])], axis=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rules = {
        "none": lambda p: p,
        "2-D largest per slice": _per_slice_2d,
        "3-D >= 65.4 mm^3": lambda p: remove_small_lesions(p, SPACING),
    }
    tallies = {name: VolumeTally() for name in rules}
    seconds = dict.fromkeys(rules, 0.0)
    for v in range(args.volumes):
        pred, truth = _volume(rng, paired=v % 2 == 0)
        for name, rule in rules.items():
            tic = time.perf_counter()
            cleaned = rule(pred)
            seconds[name] += time.perf_counter() - tic
            tallies[name].add(score_volume(f"v{v:03d}", cleaned, truth, SPACING))
    print(f"{args.volumes} simulated volumes {SHAPE} at {SPACING} mm, seed {args.seed}")
    print("| rule | mean Dice | lesion sensitivity | false positives / volume | ms / volume |")
    print("|---|---|---|---|---|")
    for name, tally in tallies.items():
        s = tally.summary()
        print(
            f"| {name} | {s['mean_dice']:.3f} | {s['lesion_sensitivity']:.3f} ({s['n_detected_lesions']}/{s['n_true_lesions']}) "
            f"| {s['false_positives_per_volume']:.2f} | {1000 * seconds[name] / args.volumes:.0f} |"
        )


if __name__ == "__main__":
    main()
