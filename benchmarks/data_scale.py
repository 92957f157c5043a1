"""Data at scale: ``coinseg prepare`` time per volume and peak RSS on a synthetic study, and training from a
large slice store at 256 px (peak RSS, time to the first step).

Part 1 writes an nnU-Net-layout study of ``--n-volumes`` synthetic CTs, 512 x 512 x Z (Z cycling over
100-300 planes, 0.78 mm pixels, 1.5-3 mm planes; a body ellipse, two kidneys, a tumour in half of them;
cheap, piecewise-constant volumes that gzip well), then runs ``prepare`` in a subprocess
(``--workers``) and reports wall time per volume and peak RSS: the largest of the prepare process's own
VmHWM and its workers' ``ru_maxrss`` (a forked worker's figure includes what it shares with its parent). The 512 x 512 x 300 volume is also prepared alone (one worker) for the
per-volume target.

Part 2 writes a store of ``--store-slices`` int16 slices of 256 x 256 (random organ-like blobs; one
manifest row per slice, 70/15/15 train/val/test by case of 100 slices), then, in a fresh subprocess, runs the
trainers' own data path: ``prepare_data`` (manifest, window, lazy train split) and ``--steps`` classifier
steps (ResNet-18 of the paper profile, ``data.train.images[idx]`` + augment + forward/backward, batch
``--batch-size``), reporting time to the first step and peak RSS.

    python benchmarks/data_scale.py --n-volumes 8 --store-slices 5000          # quick
    python benchmarks/data_scale.py --n-volumes 200 --store-slices 50000       # the issue's scale
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_PLANES = (100, 150, 200, 250, 300)


def synthetic_volume(z: int, tumour: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(CT int16 512 x 512 x z, labels uint8: 1 kidney, 2 tumour), RAS voxel order."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    body = ((xx - 256) / 200) ** 2 + ((yy - 256) / 150) ** 2 < 1
    plane = np.where(body, 40, -1000).astype(np.int16)
    ct = np.repeat(plane[:, :, None], z, axis=2)
    seg = np.zeros((512, 512, z), np.uint8)
    z0, z1 = int(0.3 * z), int(0.6 * z)
    for cx in (170, 342):
        kidney = ((xx - cx) / 35) ** 2 + ((yy - 300) / 55) ** 2 < 1
        seg[:, :, z0:z1][kidney.T] = 1
    if tumour:
        cz = (z0 + z1) // 2 + int(rng.integers(-5, 5))
        ball = ((xx - 170) / 15) ** 2 + ((yy - 300) / 15) ** 2 < 1
        seg[:, :, cz - 8 : cz + 8][ball.T] = 2
    ct[seg == 1] = 150
    ct[seg == 2] = 60
    return ct, seg


def write_study(root: Path, n: int) -> float:
    import nibabel as nib

    tic = time.perf_counter()
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        z = N_PLANES[i % len(N_PLANES)]
        ct, seg = synthetic_volume(z, tumour=i % 2 == 0, seed=i)
        affine = np.diag([0.78, 0.78, 1.5 if z > 200 else 3.0, 1.0])
        nib.save(nib.Nifti1Image(ct, affine), root / "imagesTr" / f"v_{i:04d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(seg, affine), root / "labelsTr" / f"v_{i:04d}.nii.gz")
    meta = {"labels": {"background": 0, "kidney": 1, "tumor": 2}, "file_ending": ".nii.gz", "numTraining": n}
    (root / "dataset.json").write_text(json.dumps(meta))
    return time.perf_counter() - tic


# VmHWM: this process's own peak RSS; ru_maxrss of a fork+exec child also counts its parent's pages at fork.
OWN_PEAK = (
    "def own_peak_kib():\n"
    "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
)


def run_prepare(source: Path, out: Path, workers: int) -> dict[str, float]:
    code = OWN_PEAK + (
        "import sys, time, resource; from pathlib import Path;"
        "from coinseg.data.build import PrepareOptions, prepare_study;"
        "t = time.perf_counter();"
        f"s = prepare_study(Path({str(source)!r}), Path({str(out)!r}), "
        f"PrepareOptions(organ_labels=(1,), lesion_labels=(2,), workers={workers}), lambda _: None);"
        "print(time.perf_counter() - t, s.n_cases, s.n_slices, "
        "own_peak_kib(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, cases, slices, rss_self, rss_children = result.stdout.split()[-5:]
    return {
        "seconds": float(seconds),
        "cases": int(cases),
        "slices": int(slices),
        "peak_rss_gib": max(int(rss_self), int(rss_children)) / 2**20,
    }


def write_store(root: Path, n_slices: int, per_case: int = 100) -> Path:
    """A store of ``n_slices`` 256 x 256 int16 slices in cases of ``per_case``, and its manifest."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    rows = ["image,label,split,slice,case,mask,organ"]
    for c in range(-(-n_slices // per_case)):
        n = min(per_case, n_slices - c * per_case)
        folder = root / "store" / f"c{c:05d}"
        folder.mkdir(parents=True)
        organ = (((xx - 128) / 60) ** 2 + ((yy - 128) / 40) ** 2 < 1)[None].repeat(n, 0)
        image = np.where(organ, 150, 0).astype(np.int16) + rng.integers(-20, 20, (n, 256, 256), dtype=np.int16)
        labels = rng.random(n) < 0.5
        lesion = np.zeros_like(organ)
        lesion[labels, 110:140, 110:140] = True
        image[lesion] += 200
        np.save(folder / "image.npy", image)
        np.save(folder / "lesion.npy", lesion.astype(np.uint8))
        np.save(folder / "organ.npy", organ.astype(np.uint8))
        split = "train" if c % 20 < 14 else "val" if c % 20 < 17 else "test"
        rows += [
            f"store/{folder.name}/image.npy,{int(labels[k])},{split},{k},{folder.name},"
            f"store/{folder.name}/lesion.npy,store/{folder.name}/organ.npy"
            for k in range(n)
        ]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


TRAIN_CODE = (
    OWN_PEAK
    + """
import sys, time, resource, json
t0 = time.perf_counter()
import torch, torch.nn.functional as F
from pathlib import Path
from coinseg.config import profile_settings
from coinseg.data.prepare import prepare_data
from coinseg.models.classifier import build_classifier
from coinseg.training.augment import random_affine, warp
settings = profile_settings("paper")
cfg = settings.classifier
torch.set_num_threads(2)
data = prepare_data(Path(sys.argv[1]), settings.data.size, settings.data.percentiles)
data_s = time.perf_counter() - t0
model = build_classifier(cfg.arch, cfg.widths)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
g = torch.Generator().manual_seed(0)
times = []
for step in range(int(sys.argv[2])):
    idx = torch.randint(len(data.train), (int(sys.argv[3]),), generator=g)
    x = warp(data.train.images[idx], random_affine(len(idx), cfg, g))
    loss = F.binary_cross_entropy_with_logits(model(x).float(), data.train.labels[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t0)
print(json.dumps({"data_ready_s": data_s, "first_step_s": times[0], "steps": len(times), "last_step_s": times[-1],
    "train_slices": len(data.train), "val_slices": len(data.val), "lazy_train": type(data.train.images).__name__,
    "peak_rss_gib": own_peak_kib() / 2**20}))
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-volumes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store-slices", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="coinseg-data-scale-"))
    report: dict[str, object] = {"n_volumes": args.n_volumes, "workers": args.workers}
    try:
        if not args.skip_prepare:
            report["write_study_s"] = write_study(work / "study", args.n_volumes)
            whole = run_prepare(work / "study", work / "prepared", args.workers)
            report["prepare"] = whole | {"seconds_per_volume": whole["seconds"] / args.n_volumes}
            one = work / "one"
            (one / "imagesTr").mkdir(parents=True)
            (one / "labelsTr").mkdir()
            z300 = next(i for i in range(args.n_volumes) if N_PLANES[i % len(N_PLANES)] == 300)
            for kind, name in (("imagesTr", f"v_{z300:04d}_0000.nii.gz"), ("labelsTr", f"v_{z300:04d}.nii.gz")):
                shutil.copy(work / "study" / kind / name, one / kind / name)
            shutil.copy(work / "study" / "dataset.json", one / "dataset.json")
            report["prepare_512x512x300_one_worker"] = run_prepare(one, work / "one-prepared", 1)
            print(json.dumps(report, indent=1), flush=True)
        if not args.skip_train:
            tic = time.perf_counter()
            manifest = write_store(work / "store", args.store_slices)
            report["write_store_s"] = time.perf_counter() - tic
            report["store_slices"] = args.store_slices
            result = subprocess.run(
                [sys.executable, "-c", TRAIN_CODE, str(manifest), str(args.steps), str(args.batch_size)],
                capture_output=True,
                text=True,
                check=True,
            )
            report["train"] = json.loads(result.stdout.strip().splitlines()[-1])
        report["self_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(report, indent=1))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
