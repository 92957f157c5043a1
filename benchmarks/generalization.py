"""Generalization suite: data coinseg was not tuned on, through the public manifest contract only.

Each member is one row of ``MEMBERS`` (parameters, not code): the anatomy (the procedural phantom, or the real
TotalSegmentator subject in ``../shared/data/totalsegmentator-mini``, read in place, with lesions injected into its
kidneys), the image size and aspect, the lesions' polarity, contrast (HU), diameter (mm), shape and count per
abnormal slice, and whether the manifest has an ``organ`` column. A member is written under ``--work`` as a
plain manifest (``image,label,mask,split[,organ]``) of float32 ``.npy`` HU slices, like a user's data; the
lesion-free slices go to ``clean/`` (never in the manifest) for the oracle diagnosis.

Every member is then trained and scored with the CLI and its defaults (quick profile, CPU, fixed budgets)::

    coinseg train-classifier M/data/manifest.csv --out M/clf --device cpu --max-minutes B1
    coinseg train M/data/manifest.csv --classifier M/clf --out M/gan --device cpu --max-minutes B2
    coinseg evaluate M/gan M/data/manifest.csv --out M/eval [--threshold auto] --device cpu

and diagnosed against the oracle counterfactual (the clean slice), through the same pipeline (the run's window,
the network size, and back as ``segment`` resizes maps): the oracle's pooled IoU at 0.25 and at its best
threshold, COIN's IoU at its best threshold (ungated), the fraction of the lesion's change that COIN's edit reproduces inside the
lesion (completeness) and the fraction of COIN's change that lies inside the lesion (location); and per lesion,
split into lesions brighter and darker than their surroundings, how many COIN's mask finds and how many the
classifier sees (calls the clean slice normal, and abnormal once only that lesion is put back into it); and how
visible the lesions are at all, on the network's input grid and at the slice's own pixels (Rose's index,
``detectability``); and how well the lesions' intensity alone tells abnormal slices from normal ones where the
organ is known (``intensity_evidence``: the organ's normal anatomy may hold changes as large).

    PYTHONPATH=src python benchmarks/generalization.py --members ct-kidney,phantom-dark-subtle --work /tmp/gen
    PYTHONPATH=src python benchmarks/generalization.py --members ct-kidney --work /tmp/gen --seeds 0,1,2  # 3 seeds
    PYTHONPATH=src python benchmarks/generalization.py --work /tmp/gen --evidence-only   # data only, no training
    PYTHONPATH=src python benchmarks/generalization.py --work /tmp/gen --evidence-only --evidence-rim 2  # minus the rim

Finished steps are skipped on a rerun (delete a member's folder to redo it); ``--rescore`` evaluates and diagnoses
the trained runs again, keeping their training times. ``--seeds`` trains every member again with each training
seed (the data stay the same, drawn from ``--seed``) and ends with a summary over the seeds: one seed's pooled IoU
has moved by as much as 0.27 between two seeds of a member (`benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

CT_SUBJECT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "totalsegmentator-mini" / "s0001"
CT_SPACING_MM = 1.5  # the real CT (3 mm) is resampled to this in-plane spacing
PHANTOM_FOV_MM = 400.0  # the phantom's field of view across its width: spacing = 400 mm / width
ABNORMAL_FRACTION = 0.6
NOISE_HU = (5.0, 10.0)  # fresh noise added to each copy of a real CT slice, so that copies differ


@dataclass(frozen=True)
class Member:
    """One data family. ``size``: (height, width) px (phantom; the real CT is 202 x 244 at 1.5 mm).
    ``polarity``: bright, dark or both (each lesion drawn); ``contrast``: |lesion - tissue| range in HU;
    ``diameter``: mm; ``shape``: blob, irregular or lobulated; ``count``: lesions per abnormal slice (normal
    slices have 0); ``organ``: the manifest has an organ column (kidney masks)."""

    name: str
    anatomy: str
    size: tuple[int, int]
    polarity: str
    contrast: tuple[float, float]
    diameter: tuple[float, float]
    shape: str
    count: tuple[int, int]
    organ: bool


MEMBERS = [
    Member("phantom-bright", "phantom", (128, 128), "bright", (100, 200), (10, 25), "blob", (1, 1), True),
    Member("phantom-dark-subtle", "phantom", (128, 128), "dark", (30, 60), (8, 20), "irregular", (1, 2), False),
    Member("phantom-small-multi", "phantom", (256, 256), "both", (60, 120), (3, 10), "blob", (1, 3), True),
    Member("phantom-wide-lobulated", "phantom", (384, 512), "both", (40, 100), (10, 25), "lobulated", (1, 2), False),
    Member("phantom-mixed-noorgan", "phantom", (128, 128), "both", (80, 200), (10, 25), "irregular", (1, 2), False),
    Member("ct-kidney", "ct", (202, 244), "both", (40, 90), (8, 20), "irregular", (1, 2), True),
    Member("ct-kidney-dark-noorgan", "ct", (202, 244), "dark", (30, 60), (6, 15), "lobulated", (1, 3), False),
]
BY_NAME = {m.name: m for m in MEMBERS}


# ---------------------------------------------------------------------------------------------------- lesions


def lesion_shape(
    shape: str, radius: float, rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Bool mask of one lesion on ``grid`` = (dy, dx) pixel offsets from its centre; ``radius`` in px.

    blob: an ellipse (axis ratio 0.7-1); irregular: a radius modulated by random harmonics 2-5 of the angle;
    lobulated: the union of 3-5 circles of 0.45-0.65 r around points 0.45 r from the centre.
    """
    dy, dx = grid
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    if shape == "blob":
        ratio = rng.uniform(0.7, 1.0)
        return (u / radius) ** 2 + (v / (radius * ratio)) ** 2 <= 1.0
    if shape == "irregular":
        theta = np.arctan2(v, u)
        edge = np.ones_like(theta)
        for k in range(2, 6):
            edge += rng.uniform(0.0, 0.22) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        return np.hypot(u, v) <= radius * edge
    if shape == "lobulated":
        mask = np.hypot(u, v) <= 0.55 * radius
        for phi in rng.uniform(0, 2 * np.pi, size=rng.integers(3, 6)):
            cu, cv = 0.45 * radius * np.cos(phi), 0.45 * radius * np.sin(phi)
            mask |= np.hypot(u - cu, v - cv) <= rng.uniform(0.45, 0.65) * radius
        return mask
    raise ValueError(f"shape: unknown {shape!r}")


def inject(
    hu: np.ndarray, organ: np.ndarray, member: Member, spacing: float, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Add ``n`` soft-edged lesions inside ``organ`` to ``hu`` (H x W HU). Returns (new HU, bool lesion mask).

    Each lesion: a shape of diameter ``member.diameter`` mm at a random organ pixel, blurred by 1 mm (soft
    edge), times a contrast in ``member.contrast`` HU with the member's polarity, confined to the organ. The
    ground truth is where the lesion reaches half its contrast. A lesion that leaves no mask pixel is redrawn.
    """
    out = hu.copy()
    mask = np.zeros(hu.shape, bool)
    inside = np.argwhere(organ)
    soft_organ = ndimage.gaussian_filter(organ.astype(np.float32), 0.7)
    placed = 0
    for _ in range(50 * n):
        if placed == n:
            break
        radius = rng.uniform(*member.diameter) / 2 / spacing
        cy, cx = inside[rng.integers(len(inside))]
        reach = int(np.ceil(2 * radius + 3))
        y0, y1 = max(cy - reach, 0), min(cy + reach + 1, hu.shape[0])
        x0, x1 = max(cx - reach, 0), min(cx + reach + 1, hu.shape[1])
        grid = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        body = lesion_shape(member.shape, max(radius, 0.5), rng, (grid[0] - cy, grid[1] - cx))
        profile = ndimage.gaussian_filter(body.astype(np.float32), max(1.0 / spacing, 0.3))
        profile *= soft_organ[y0:y1, x0:x1]
        truth = (profile >= 0.5) & organ[y0:y1, x0:x1]
        if not truth.any():
            continue
        sign = {"bright": 1.0, "dark": -1.0}.get(member.polarity) or float(rng.choice([-1.0, 1.0]))
        out[y0:y1, x0:x1] += np.float32(sign * rng.uniform(*member.contrast)) * profile
        mask[y0:y1, x0:x1] |= truth
        placed += 1
    return out, mask


# ------------------------------------------------------------------------------------------------- anatomies


def phantom_slices(member: Member, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, str, float]]:
    """``n`` phantom slices (HU, kidney mask, split, spacing mm): drawn at the member's width and cropped to its
    height (rows from 12 % of the width, which keeps the body and kidneys); splits 70/15/15 at random."""
    from coinseg.data.phantom import make_phantom

    height, width = member.size
    top = 0 if height == width else round(0.12 * width)
    rng = np.random.default_rng(seed)
    splits = rng.choice(["train", "val", "test"], size=n, p=[0.7, 0.15, 0.15])
    out = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        p = make_phantom(width, np.random.default_rng(child))
        rows = slice(top, top + height)
        out.append((p.hu[rows], p.kidney[rows], str(splits[i]), PHANTOM_FOV_MM / width))
    return out


def ct_slices(member: Member, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, str, float]]:
    """``n`` slices of the real CT: its axial slices with at least 50 kidney pixels (at 3 mm), resampled to
    1.5 mm and shown radiologically (rows anterior to posterior, the patient's right on the image's left),
    each copy with fresh noise. Split by axial position (z mod 7: 3 val, 6 test) so test anatomy is unseen."""
    import nibabel as nib

    def volume(path: Path) -> np.ndarray:
        image: Any = nib.load(path)
        return np.asarray(image.dataobj, dtype=np.float32)

    ct = volume(CT_SUBJECT / "ct.nii.gz")
    kidney = np.logical_or(
        *(volume(CT_SUBJECT / "segmentations" / f"kidney_{s}.nii.gz") > 0 for s in ("left", "right"))
    )
    zoom = 3.0 / CT_SPACING_MM
    bases = []
    for z in range(ct.shape[2]):
        if kidney[:, :, z].sum() < 50:
            continue
        image = ndimage.zoom(ct[::-1, ::-1, z].T, zoom, order=1)
        organ = ndimage.zoom(kidney[::-1, ::-1, z].T.astype(np.uint8), zoom, order=0) > 0
        split = {3: "val", 6: "test"}.get(z % 7, "train")
        bases.append((image, organ, split))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image, organ, split = bases[i % len(bases)]
        noisy = image + rng.normal(0.0, rng.uniform(*NOISE_HU), image.shape).astype(np.float32)
        out.append((noisy, organ, split, CT_SPACING_MM))
    return out


ANATOMIES = {"phantom": phantom_slices, "ct": ct_slices}


def write_member(member: Member, folder: Path, n: int, seed: int) -> Path:
    """Write the member's manifest, images, masks, organs (in the manifest only when ``member.organ``; kept for
    the diagnosis otherwise) and the lesion-free ``clean/`` slices into ``folder`` (built as ``folder.tmp``,
    renamed at the end). Returns the manifest."""
    if (folder / "manifest.csv").exists():
        return folder / "manifest.csv"
    tmp = folder.with_name(folder.name + ".tmp")
    for sub in ("images", "masks", "organs", "clean"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    rows = []
    for i, (hu, organ, split, spacing) in enumerate(ANATOMIES[member.anatomy](member, n, seed)):
        name = f"s{i:05d}.npy"
        label = int(rng.random() < ABNORMAL_FRACTION and organ.any())
        count = int(rng.integers(member.count[0], member.count[1] + 1)) if label else 0
        image, mask = inject(hu, organ, member, spacing, count, rng) if count else (hu, np.zeros(hu.shape, bool))
        label = int(mask.any())
        np.save(tmp / "images" / name, image.astype(np.float32))
        np.save(tmp / "masks" / name, mask.astype(np.uint8))
        np.save(tmp / "clean" / name, hu.astype(np.float32))
        row = {"image": f"images/{name}", "label": label, "mask": f"masks/{name}", "split": split}
        np.save(tmp / "organs" / name, organ.astype(np.uint8))
        if member.organ:
            row["organ"] = f"organs/{name}"
        rows.append(row)
    with (tmp / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp / "member.json").write_text(json.dumps({**member.__dict__, "n_slices": n, "seed": seed}, indent=2))
    tmp.rename(folder)
    return folder / "manifest.csv"


# --------------------------------------------------------------------------------------------------- running


def coinseg(args: list[str], log: Path, nice: int, threads: int | None) -> float:
    """Run ``coinseg ARGS`` (this interpreter, current PYTHONPATH) under ``nice`` with ``threads`` OpenMP
    threads (None: torch's default); return wall seconds."""
    command = ["nice", "-n", str(nice), sys.executable, "-c", "from coinseg.cli import app; app()", *args]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    tic = time.perf_counter()
    with log.open("a") as handle:
        handle.write("$ coinseg " + " ".join(args) + "\n")
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"coinseg {args[0]} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - tic


def run_folder(root: Path, seed: int) -> Path:
    """Where a member's runs with training seed ``seed`` live: ``root`` itself for seed 0 (the layout of the
    tables in ``benchmarks/RESULTS.md``), ``root/seed-N`` otherwise; the data are shared in ``root/data``."""
    return root if seed == 0 else root / f"seed-{seed}"


def run_settings(folder: Path, seed: int, clf_steps: int | None, base: Path | None = None) -> list[str]:
    """``--config`` arguments for a run with training seed ``seed`` and ``clf_steps`` classifier steps: none for
    the quick profile as it is (seed 0, the profile's steps, no ``base``), else the quick profile (under the
    settings YAML ``base`` when given) with those two changed, written to ``folder/settings.yaml``."""
    if seed == 0 and clf_steps is None and base is None:
        return []
    from coinseg.config import load_settings, profile_settings, save_settings

    settings = profile_settings("quick") if base is None else load_settings(base, "quick")
    settings.seed = seed
    if clf_steps is not None:
        settings.classifier.max_steps = clf_steps
    folder.mkdir(parents=True, exist_ok=True)
    save_settings(settings, folder / "settings.yaml")
    return ["--config", str(folder / "settings.yaml")]


def run_member(member: Member, root: Path, args: argparse.Namespace, seed: int = 0) -> dict[str, Any]:
    """Generate, train, evaluate and diagnose one member with training seed ``seed``; results cached in
    ``result.json`` of the run's folder (:func:`run_folder`)."""
    run = run_folder(root, seed)
    result_file = run / "result.json"
    previous = json.loads(result_file.read_text()) if result_file.exists() else None
    if previous is not None and not args.rescore:
        return {"seed": seed, **previous}
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    tic = time.perf_counter()
    manifest = write_member(member, root / "data", args.n_slices, args.seed)
    seconds = {"data": time.perf_counter() - tic}
    if previous is not None:  # --rescore: the trained runs are kept, with the seconds their training took
        seconds = {k: v for k, v in previous["seconds"].items() if not k.startswith("eval")}
        for tag in ("default", "auto"):
            shutil.rmtree(run / f"eval-{tag}", ignore_errors=True)
    cpu = ["--device", "cpu"]
    config = run_settings(run, seed, args.clf_steps, args.config)
    if not (run / "clf" / "test_metrics.json").exists():
        clf_args = ["train-classifier", str(manifest), "--out", str(run / "clf"), *cpu, *config]
        clf_args += ["--max-minutes", str(args.clf_minutes)]
        seconds["classifier"] = coinseg(clf_args, log, args.nice, args.threads)
    if not (run / "gan" / "checkpoints" / "best.pt").exists():
        gan_args = ["train", str(manifest), "--classifier", str(run / "clf"), "--out", str(run / "gan"), *cpu, *config]
        gan_args += ["--max-steps", str(args.gan_steps)] if args.gan_steps is not None else []
        seconds["gan"] = coinseg([*gan_args, "--max-minutes", str(args.gan_minutes)], log, args.nice, args.threads)
    metrics = {}
    for tag, extra in (("default", []), ("auto", ["--threshold", "auto"])):
        out = run / f"eval-{tag}"
        if not (out / "metrics.json").exists():
            seconds[f"eval-{tag}"] = coinseg(
                ["evaluate", str(run / "gan"), str(manifest), "--out", str(out), *cpu, *extra],
                log,
                args.nice,
                args.threads,
            )
        metrics[tag] = json.loads((out / "metrics.json").read_text())
    result = {
        "member": member.name,
        "seed": seed,
        "classifier_auroc": metrics["default"]["classifier"]["auroc"],
        # the chance check's p-value on the validation split (None for classifiers trained before it was recorded)
        "classifier_val_p": json.loads((run / "clf" / "test_metrics.json").read_text())["val"].get("auroc_p"),
        "default": metrics["default"]["methods"]["coin"],
        "auto": metrics["auto"]["methods"]["coin"],
        "n_abnormal": metrics["default"]["n_abnormal"],
        "n_normal": metrics["default"]["n_normal"],
        "seconds": seconds,
        "steps": {k: json.loads((run / k / "run.json").read_text())["steps"] for k in ("clf", "gan")},
        "diagnosis": diagnose(run, manifest),
    }
    result_file.write_text(json.dumps(result, indent=2))
    return result


THRESHOLDS = np.round(np.arange(0.02, 0.9, 0.01), 3)


def pooled_iou(maps: list[np.ndarray], gts: list[np.ndarray], cut: float) -> float:
    tp = fp = fn = 0
    for m, g in zip(maps, gts, strict=True):
        pred = m > cut
        tp += int((pred & g).sum())
        fp += int((pred & ~g).sum())
        fn += int((~pred & g).sum())
    return tp / max(tp + fp + fn, 1)


def organ_box(organs: list[np.ndarray], margin: float = 0.1) -> tuple[slice, slice]:
    """Rows and columns of the union bounding box of ``organs`` (same-shape bool masks), widened by ``margin``
    of its side on each side and clipped to the image: the field of view an organ-centred crop would use."""
    union = np.logical_or.reduce(organs)
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))

    def span(index: np.ndarray, length: int) -> slice:
        pad = round(margin * (index[-1] + 1 - index[0]))
        return slice(max(int(index[0]) - pad, 0), min(int(index[-1]) + 1 + pad, length))

    return span(rows, union.shape[0]), span(cols, union.shape[1])


def cropped_oracle(
    x: list[np.ndarray], clean: list[np.ndarray], size: int, box: tuple[slice, slice]
) -> list[np.ndarray]:
    """|x - clean| / 2 (normalised H x W slices) through a crop to ``box``, resized to ``size`` px and back
    (bilinear), pasted into a zero map of the full size: the oracle of an organ-centred network input."""
    import torch
    import torch.nn.functional as F

    from coinseg.data.slices import resize

    maps = []
    for a, b in zip(x, clean, strict=True):
        crop = [resize(torch.from_numpy(np.ascontiguousarray(v[box]))[None, None], (size, size)) for v in (a, b)]
        diff = F.interpolate((crop[0] - crop[1]).abs() / 2, size=a[box].shape, mode="bilinear", align_corners=False)
        full = np.zeros(a.shape, np.float32)
        full[box] = diff[0, 0].numpy()
        maps.append(full)
    return maps


ROSE_RING_PX = 3  # the ring around a lesion's footprint where its surroundings are measured, px
ROSE_BLUR_PX = 1.5  # the Gaussian blur (sigma, px) whose residual is the structure at the pixel scale


def detectability(x: Sequence[np.ndarray], clean: Sequence[np.ndarray]) -> np.ndarray:
    """Each slice's lesion detectability on its own pixel grid, Rose's index d = C * sqrt(A) / sigma.

    ``x``, ``clean``: N normalised H x W slices each (the images and their lesion-free twins; pairs share a
    shape) on the grid in question (the network's input, or the slices' own pixels). The footprint is where
    |x - clean| reaches half its peak on the slice; C is the mean |x - clean| there, A its area in px, and sigma
    the standard deviation, in a ``ROSE_RING_PX`` ring around the footprint, of the clean slice minus its
    Gaussian blur (``ROSE_BLUR_PX``): the noise and edges a lesion must be told apart from at that pixel size.
    Returns N values >= 0 (NaN for a slice without a lesion, inf where the surroundings are perfectly flat);
    Rose's criterion puts visibility at about d = 3-5.
    """
    out = np.full(len(x), np.nan)
    for i, (a, c) in enumerate(zip(x, clean, strict=True)):
        change = np.abs(a - c)
        if change.max() <= 0:
            continue
        footprint = change >= 0.5 * change.max()
        ring = ndimage.binary_dilation(footprint, iterations=ROSE_RING_PX) & ~footprint
        structure = (c - ndimage.gaussian_filter(c, ROSE_BLUR_PX))[ring].std() if ring.any() else 0.0
        signal = change[footprint].mean() * np.sqrt(footprint.sum())
        out[i] = signal / structure if structure > 0 else np.inf
    return out


def change_polarity(x: np.ndarray, clean: np.ndarray, lesion: np.ndarray) -> str:
    """``bright`` or ``dark``: the sign of the mean of ``x`` - ``clean`` (H x W slice and its lesion-free twin)
    inside ``lesion`` (H x W bool)."""
    return "bright" if float((x - clean)[lesion].mean()) > 0 else "dark"


EVIDENCE_MIN_WEIGHT = 0.3  # organ pixels whose smoothing kernel lies at least this much inside the organ


def organ_extremes(hu: np.ndarray, organ: np.ndarray, sigma: float, rim_px: int = 0) -> tuple[float, float]:
    """The largest rise and the largest fall (HU) of ``hu`` (H x W) smoothed inside ``organ`` (H x W bool) with a
    Gaussian of ``sigma`` px, against the organ's median. The smoothing is a normalised convolution (pixels
    outside the organ do not count) kept where at least ``EVIDENCE_MIN_WEIGHT`` of the kernel lies in the organ:
    what a detector sees that knows where the organ is and how large the lesions are. ``rim_px`` > 0 first
    removes the organ's outer ``rim_px`` pixels (its partial volume with the surroundings). NaN, NaN for an organ
    without such pixels."""
    if rim_px:
        organ = ndimage.binary_erosion(organ, iterations=rim_px)
    weight = ndimage.gaussian_filter(organ.astype(np.float32), sigma)
    inner = organ & (weight >= EVIDENCE_MIN_WEIGHT)
    if not inner.any():
        return np.nan, np.nan
    smooth = ndimage.gaussian_filter(np.where(organ, hu, 0).astype(np.float32), sigma)[inner] / weight[inner]
    level = float(np.median(hu[organ]))
    return float(smooth.max() - level), float(level - smooth.min())


def intensity_evidence(
    images: Sequence[np.ndarray],
    cleans: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    organs: Sequence[np.ndarray],
    rim_px: int = 0,
) -> dict[str, float | None]:
    """How well the lesions' own intensity tells the slices that hold them from the slices without lesions, per
    polarity: the AUROC of :func:`organ_extremes` (the rise for ``bright``, the fall for ``dark``; sigma half
    the lesions' median equivalent radius, at least 0.5 px) between the slices with a lesion of that polarity
    (a 4-connected component of a mask, by the sign of its mean image - clean) and the slices without lesions.

    ``images``, ``cleans``: N H x W HU slices and their lesion-free twins; ``gts``, ``organs``: N H x W bool
    masks (lesions, organ); slices with an empty organ are left out; ``rim_px`` as in :func:`organ_extremes`.
    Near 1: the lesions stand out from all of the organ's normal appearance; near 0.5: normal slices hold
    changes as large (tissue texture at the lesions' scale, partial volume at the organ's edge, a medulla), so a
    slice's label is weak evidence for a lesion of that kind. None for a polarity without slices (or no normal
    slice)."""
    from coinseg.evaluation.metrics import accuracy_auroc

    components = [ndimage.label(g) for g in gts]
    radii = [np.sqrt(np.bincount(lab.ravel())[1:] / np.pi) for lab, _ in components]
    sigma = max(float(np.median(np.concatenate(radii))) / 2, 0.5) if any(r.size for r in radii) else 1.0
    scores: dict[str, list[tuple[int, float]]] = {"bright": [], "dark": []}
    for x, c, (lab, n), organ in zip(images, cleans, components, organs, strict=True):
        if not organ.any():
            continue
        rise, fall = organ_extremes(x, organ, sigma, rim_px)
        kinds = {change_polarity(x, c, lab == k) for k in range(1, n + 1)}
        for kind, value in (("bright", rise), ("dark", fall)):
            if n == 0 or kind in kinds:
                scores[kind].append((int(n > 0), value))
    out: dict[str, float | None] = {}
    for kind, pairs in scores.items():
        labels = np.array([y for y, v in pairs if np.isfinite(v)], dtype=int)
        values = np.array([v for _, v in pairs if np.isfinite(v)])
        out[kind] = accuracy_auroc(labels, values)[1] if labels.size else None
    return out


def member_evidence(folder: Path, rim_px: int = 0) -> dict[str, float | None] | None:
    """:func:`intensity_evidence` on the test split of a member written by :func:`write_member` in ``folder``;
    None for a member without organs on disk (written before they were kept for every member)."""
    rows = [r for r in csv.DictReader((folder / "manifest.csv").open()) if r["split"] == "test"]
    names = [Path(r["image"]).name for r in rows]
    if not all((folder / "organs" / n).exists() for n in names):
        return None
    return intensity_evidence(
        [np.load(folder / "images" / n) for n in names],
        [np.load(folder / "clean" / n) for n in names],
        [np.load(folder / "masks" / n) > 0 for n in names],
        [np.load(folder / "organs" / n) > 0 for n in names],
        rim_px,
    )


def diagnose(run: Path, manifest: Path) -> dict[str, Any]:
    """What limits the member's run ``run`` (its ``gan`` folder) on the abnormal test slices of ``manifest``
    (written by :func:`write_member`, with ``clean/`` beside it): the oracle counterfactual (the clean slice
    through the run's window, network size and back) vs COIN's maps, IoU at 0.25 and at the best threshold, the
    edit's completeness and location."""
    import torch

    from coinseg.data.manifest import read_manifest
    from coinseg.data.normalise import normalise
    from coinseg.data.slices import load_mask, read_entry
    from coinseg.evaluation.metrics import difference_map
    from coinseg.predictor import load_predictor

    model = load_predictor(run / "gan", "cpu")
    every = read_manifest(manifest)
    entries = [e for e in every if e.split == "test" and e.label == 1]
    arrays = [read_entry(e) for e in entries]
    cleans = [np.load(manifest.parent / "clean" / e.image.name) for e in entries]
    gts = [load_mask(e, a.shape) for e, a in zip(entries, arrays, strict=True)]
    organs = model.entry_organs(entries, arrays)
    out: dict[str, Any] = {"lesions": lesions_found(model, arrays, cleans, gts, organs)}
    inputs, regions, owner = model.expand(arrays, organs)  # one per slice, or per organ component (by parts)
    boxes = model.boxes(regions)
    shown, shown_clean = model.seen(inputs, regions), model.seen([cleans[i] for i in owner], regions)  # as seen
    x, x_clean = model.inputs(shown, boxes), model.inputs(shown_clean, boxes)
    with torch.no_grad():
        x_cf = torch.cat([model.maps.counterfactual(x[i : i + 64]) for i in range(0, len(x), 64)])
    guides = model.guides(shown, boxes)

    def per_slice(maps: torch.Tensor) -> list[np.ndarray]:  # resized, confined and merged as `segment` does
        return model.per_slice_maps(model.to_slices(maps, x, shown, boxes, guides), regions, owner)

    oracle = per_slice(difference_map(x, x_clean))
    arrays, cleans = model.seen(arrays, organs), model.seen(cleans, organs)  # each slice blanked outside its organ
    normed = [(normalise(a, model.window), normalise(c, model.window)) for a, c in zip(arrays, cleans, strict=True)]
    native = [np.abs(a - c) / 2 for a, c in normed]
    coin = per_slice(difference_map(x, x_cf))
    lesioned = (x - x_clean).flatten(1).abs().amax(1) > 0  # inputs holding a lesion (all, unless by parts)
    x, x_clean = x[lesioned], x_clean[lesioned]
    candidates = [("oracle", oracle), ("oracle_native", native), ("coin", coin)]
    train_organs = [read_entry(e, e.organ) > 0 for e in every if e.split == "train" and e.organ is not None]
    if train_organs and len({o.shape for o in train_organs + gts}) == 1:
        box = organ_box(train_organs)
        candidates.append(
            ("oracle_crop", cropped_oracle([a for a, _ in normed], [c for _, c in normed], model.size, box))
        )
    for name, maps in candidates:
        ious = [pooled_iou(maps, gts, t) for t in THRESHOLDS]
        best = int(np.argmax(ious))
        out[name] = {"iou_025": pooled_iou(maps, gts, 0.25), "iou_best": ious[best], "best_threshold": THRESHOLDS[best]}
    inside = np.concatenate([(c - 0.0)[g] for c, g in zip(coin, gts, strict=True)])
    oracle_inside = np.concatenate([o[g] for o, g in zip(oracle, gts, strict=True)])
    total = sum(float(c.sum()) for c in coin)
    out["completeness"] = float(inside.sum() / max(oracle_inside.sum(), 1e-9))
    out["location"] = float(inside.sum() / max(total, 1e-9))
    out["lesion_contrast_in_map"] = float(np.median(oracle_inside))
    out["window"] = list(model.window) if model.window else None
    out["evidence"] = member_evidence(manifest.parent)
    out["detectability"] = {  # median over the abnormal test slices
        "input": float(np.nanmedian(detectability(x[:, 0].numpy(), x_clean[:, 0].numpy()))),
        "native": float(np.nanmedian(detectability([a for a, _ in normed], [c for _, c in normed]))),
    }
    with torch.no_grad():  # f on half-inpainted lesions: does f still call a half-removed lesion abnormal?
        half = torch.cat(
            [model.classifier(v[i : i + 64]) for v in [x - 0.5 * (x - x_clean)] for i in range(0, len(x), 64)]
        )
    out["half_removed_called_normal"] = float((half.reshape(-1) < 0).float().mean())
    return out


def lesions_found(
    model: Any, arrays: list[np.ndarray], cleans: list[np.ndarray], gts: list[np.ndarray], organs: Any
) -> dict[str, dict[str, int]]:
    """Per lesion (a 4-connected component of a ground-truth mask; `evaluate`'s
    :func:`coinseg.evaluation.metrics.lesion_polarity` joins diagonal neighbours too) of the abnormal test slices,
    split by polarity
    (``bright`` / ``dark``: the sign of the mean of slice - clean inside it): ``n`` lesions, ``found`` (COIN's
    mask at the default threshold, gated, covers at least 10 % of it) and ``seen`` (the classifier calls the clean
    slice normal and the clean slice with only this lesion put back abnormal: the lesion alone is evidence the GAN
    has a reason to remove). ``found`` well below ``seen`` is the GAN's limit; ``seen`` well below ``n`` the
    classifier's."""
    from scipy import ndimage

    _, _, maps = model.run(arrays, organs=organs, gate=True)
    masks = [m > model.threshold("floor") for m in maps]
    singles, owners, rows = [], [], []
    for i, (a, c, g) in enumerate(zip(arrays, cleans, gts, strict=True)):
        components, n = ndimage.label(g)
        grown, _ = ndimage.label(ndimage.binary_dilation(g, iterations=2))  # the lesion's soft edge with it
        for k in range(1, n + 1):
            lesion = components == k
            edge = grown == grown[lesion].max()
            singles.append(np.where(edge, a, c))
            owners.append(i)
            rows.append((change_polarity(a, c, lesion), bool(masks[i][lesion].mean() >= 0.1)))
    single_organs = None if organs is None else [organs[i] for i in owners]
    clean_normal = model.run(cleans, organs=organs)[0] <= 0.5
    seen = np.zeros(0, bool)
    if singles:
        seen = (model.run(singles, organs=single_organs)[0] > 0.5) & clean_normal[np.array(owners)]
    out = {k: {"n": 0, "found": 0, "seen": 0} for k in ("bright", "dark")}
    for (polarity, found), s in zip(rows, seen, strict=True):
        out[polarity]["n"] += 1
        out[polarity]["found"] += int(found)
        out[polarity]["seen"] += int(s)
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def p_value(value: float | None) -> str:
    """A p-value, flagged "at chance" at or above the classifier check's significance (``chance_warning``)."""
    from coinseg.evaluation.metrics import CHANCE_SIGNIFICANCE

    return "–" if value is None else f"{value:.2g}" + (", at chance" if value >= CHANCE_SIGNIFICANCE else "")


def evidence(values: dict[str, float | None] | None) -> str:
    """``bright / dark`` AUROCs of :func:`intensity_evidence`, e.g. ``0.99 / 0.57`` (– where missing)."""
    return "–" if not values else " / ".join(fmt(values.get(k), 2) for k in ("bright", "dark"))


def lesion_counts(lesions: dict[str, dict[str, int]] | None) -> str:
    """``found / seen / n`` per polarity, e.g. ``53 / 70 / 80; 1 / 50 / 83`` (– for runs diagnosed before)."""
    if not lesions:
        return "–"
    return "; ".join(f"{v['found']} / {v['seen']} / {v['n']}" for v in (lesions["bright"], lesions["dark"]))


def run_name(result: dict[str, Any]) -> str:
    """The member's name, with its training seed when not 0, e.g. ``ct-kidney (seed 1)``."""
    return result["member"] + (f" (seed {result['seed']})" if result.get("seed") else "")


def table(results: list[dict[str, Any]]) -> str:
    """Markdown tables: scores at the default and auto thresholds, then the diagnosis."""
    lines = [
        "| member | clf AUROC (val p) | pooled IoU default (thr) | IoU auto (thr) | mean Dice | pixel AP | CV | normal FP (default / auto) | steps clf / gan | s (data / clf / gan / eval) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d, a, s = r["default"], r["auto"], r["seconds"]
        steps = r.get("steps", {})
        secs = (
            f"{steps.get('clf', '?')} / {steps.get('gan', '?')} | "
            + " / ".join(f"{s.get(k, 0):.0f}" for k in ("data", "classifier", "gan"))
            + f" / {s.get('eval-default', 0) + s.get('eval-auto', 0):.0f}"
        )
        lines.append(
            f"| {run_name(r)} | {fmt(r['classifier_auroc'])} ({p_value(r.get('classifier_val_p'))}) | {fmt(d['pooled_iou'])} ({fmt(d['threshold'])}) | {fmt(a['pooled_iou'])} "
            f"({fmt(a['threshold'])}) | {fmt(d['mean_dice'])} | {fmt(d['pixel_ap'])} | {fmt(d['cv'])} "
            f"| {fmt(d['normal_fp_rate'])} / {fmt(a['normal_fp_rate'])} | {secs} |"
        )
    lines += [
        "",
        "| member | window (HU) | median lesion change in map | oracle IoU 0.25 / best (thr) | oracle native-res IoU 0.25 / best | oracle organ-box crop IoU 0.25 / best | COIN IoU best (thr) | completeness | location | half-removed called normal | lesions found / seen by f / n: bright; dark | lesion detectability d: input / native | intensity evidence AUROC: bright / dark |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        g = r["diagnosis"]
        o, c, d = g["oracle"], g["coin"], g.get("detectability", {})
        window = "grey" if g["window"] is None else f"[{g['window'][0]:.0f}, {g['window'][1]:.0f}]"
        lines.append(
            f"| {run_name(r)} | {window} | {g['lesion_contrast_in_map']:.3f} | {o['iou_025']:.3f} / {o['iou_best']:.3f} ({o['best_threshold']:.2f}) "
            f"| {g['oracle_native']['iou_025']:.3f} / {g['oracle_native']['iou_best']:.3f} "
            f"| {fmt(g.get('oracle_crop', {}).get('iou_025'))} / {fmt(g.get('oracle_crop', {}).get('iou_best'))} "
            f"| {c['iou_best']:.3f} ({c['best_threshold']:.2f}) | {g['completeness']:.2f} | {g['location']:.2f} "
            f"| {fmt(g.get('half_removed_called_normal'), 2)} | {lesion_counts(g.get('lesions'))} "
            f"| {fmt(d.get('input'), 1)} / {fmt(d.get('native'), 1)} | {evidence(g.get('evidence'))} |"
        )
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> str:
    """Per member over its training seeds: pooled IoU at the default threshold (mean and range), pixel AP (mean),
    the largest normal-slice false-positive rate; then issue 8's acceptance figures on the members' means (how
    many reach 0.5, their median, the largest false-positive rate). A member with one seed has a one-value range."""
    by_member: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_member.setdefault(r["member"], []).append(r)
    lines = [
        "| member | seeds | pooled IoU default: mean (min - max) | pixel AP: mean | normal FP: largest | clf AUROC: mean |",
        "|---|---|---|---|---|---|",
    ]
    means, fps = [], []
    for member, runs in by_member.items():
        iou = [r["default"]["pooled_iou"] for r in runs]
        fp = max(r["default"]["normal_fp_rate"] for r in runs)
        means.append(float(np.mean(iou)))
        fps.append(fp)
        seeds = ", ".join(str(r.get("seed", 0)) for r in runs)
        lines.append(
            f"| {member} | {seeds} | {means[-1]:.3f} ({min(iou):.3f} - {max(iou):.3f}) "
            f"| {np.mean([r['default']['pixel_ap'] for r in runs]):.3f} | {fp:.3f} "
            f"| {np.mean([r['classifier_auroc'] for r in runs]):.3f} |"
        )
    lines += [
        "",
        f"pooled IoU >= 0.5 on {sum(m >= 0.5 for m in means)} of {len(means)} members (mean over seeds); "
        f"median {np.median(means):.3f}; normal slices with a false-positive pixel at most {max(fps):.3f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default=",".join(m.name for m in MEMBERS), help="comma-separated member names")
    parser.add_argument("--work", type=Path, default=Path("/tmp/coinseg-generalization"), help="scratch folder")
    parser.add_argument("--n-slices", type=int, default=1500, help="slices per member")
    parser.add_argument("--clf-minutes", type=float, default=3.0, help="classifier budget per member")
    parser.add_argument("--gan-minutes", type=float, default=5.0, help="GAN budget per member")
    parser.add_argument("--clf-steps", type=int, default=None, help="classifier steps (default: the profile's)")
    parser.add_argument("--gan-steps", type=int, default=None, help="GAN steps (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0, help="the data's seed (what the members' slices are drawn from)")
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated training seeds; each trains the classifier and the GAN again (seed N in M/seed-N, "
        "seed 0 in M), and a summary over the seeds follows the tables",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a settings YAML over the quick profile for every run (its seed is replaced by --seeds'), e.g. a "
        "setting to measure against the defaults; use another --work, since finished runs are kept",
    )
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OpenMP threads per run; 1 was 3x faster than torch's default on the shared 2-core machine",
    )
    parser.add_argument("--generate-only", action="store_true", help="write the members' data and stop")
    parser.add_argument(
        "--evidence-only",
        action="store_true",
        help="write the members' data, print how well their lesions' intensity tells abnormal slices from normal "
        "ones (intensity_evidence; no training) and stop",
    )
    parser.add_argument(
        "--evidence-rim", type=int, default=0, help="with --evidence-only: leave out the organ's outer N px"
    )
    parser.add_argument(
        "--rescore", action="store_true", help="evaluate and diagnose the trained runs again (after a change of masks)"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"--members: unknown {unknown[0]!r}; choose from {', '.join(BY_NAME)}")
    if args.evidence_rim < 0:
        parser.error(f"--evidence-rim: must be >= 0 px, got {args.evidence_rim}")
    try:
        seeds = sorted({int(n) for n in args.seeds.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds or seeds[0] < 0:
        parser.error(f"--seeds: expected non-negative integers, got {args.seeds!r}")
    if args.evidence_rim and not args.evidence_only:
        parser.error("--evidence-rim: only with --evidence-only (the diagnosis table uses the whole organ)")
    if args.config is not None:  # read now, so a bad file fails before any member is written or trained
        from coinseg.config import ConfigError, load_settings

        try:
            load_settings(args.config, "quick")
        except ConfigError as exc:
            parser.error(f"--config: {exc}")
    results = []
    for name in names:
        root = args.work / name
        if args.generate_only or args.evidence_only:
            manifest = write_member(BY_NAME[name], root / "data", args.n_slices, args.seed)
            if args.evidence_only:
                found = evidence(member_evidence(manifest.parent, args.evidence_rim))
                print(f"{name}: intensity evidence AUROC bright / dark {found}")
            else:
                print(manifest)
            continue
        for seed in seeds:
            print(f"== {name}" + (f" (training seed {seed})" if seed else ""), flush=True)
            results.append(run_member(BY_NAME[name], root, args, seed))
            print(table(results[-1:]), flush=True)
    if results:
        text = table(results) + "\n\n" + summary(results)
        (args.work / "table.md").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
