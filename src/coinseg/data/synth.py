"""The built-in synthetic data set: phantom slices with the paper's kidney anomalies, written once to disk.

Layout of ``out_dir`` (paths in the manifest are relative to it)::

    manifest.csv              image,label,mask,split,organ
    synth.json                seed, size, n_slices, window, blob size, counts per split and label
    images/slice_00000.npy    float32 (size, size), HU, lesion included
    masks/slice_00000.npy     uint8 (size, size), 1 = lesion (all 0 for normal slices)
    organs/slice_00000.npy    uint8 (size, size), 1 = kidney

Everything, the test split included, is drawn once and stored; nothing is re-drawn on read (the paper
re-drew its test anomalies on every pass, so its test set changed between evaluations).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from coinseg.data.anomaly import hu_to_unit, inject_anomaly
from coinseg.data.phantom import make_phantom
from coinseg.errors import UsageError
from coinseg.io.files import atomic_dir

PERCENTILES = (0.5, 99.5)  # the paper's foreground fingerprint window
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
BLOB_PX_AT_128 = 20  # the paper's blob template side; scaled with the slice size

MAX_SIZE = 1024  # pixels; a phantom slice larger than a CT slice (512) x 2 is a typo, not a data set


def synthesize(
    out_dir: Path,
    n_slices: int = 4000,
    size: int = 128,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``n_slices`` phantom slices of ``size`` x ``size`` px to ``out_dir``; return the manifest path.

    Each slice has its own generators, spawned from ``np.random.SeedSequence(seed)``, so a slice does not
    depend on the others (same seed, identical files). The kidney window ``[p0.5, p99.5]`` of kidney HU over
    all (lesion-free) slices is the paper's foreground fingerprint; in that window scaled to [0, 1] the paper's
    anomaly (:func:`~coinseg.data.anomaly.inject_anomaly`, p = 0.65, alpha = 0.9) is added inside the kidneys
    and the change is added back in HU (``delta01 * (hi - lo)``), so pixels outside the window keep their
    values. The blob template is 20 px at size 128 and scales with ``size``. Label 1 iff a lesion was injected.

    Splits: 70 / 15 / 15 % train / val / test, a seeded permutation within each label (so every split holds
    both classes). The folder is built beside ``out_dir`` and renamed into place at the end; on any error
    nothing is left behind. ``progress(1)`` is called after each slice is drawn
    (the injection pass that follows is quick).

    Raises :class:`~coinseg.errors.UsageError` for ``n_slices < 20`` or ``size`` outside 64..1024 and
    ``FileExistsError`` when ``out_dir`` exists and is not empty.
    """
    if n_slices < 20:
        raise UsageError(f"--n-slices {n_slices}: must be at least 20")
    if not 64 <= size <= MAX_SIZE:
        raise UsageError(f"--size {size}: must be between 64 and {MAX_SIZE} pixels")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, "synth") as tmp:
        _build(tmp, n_slices, size, seed, progress)
    return out_dir / "manifest.csv"


def _build(root: Path, n_slices: int, size: int, seed: int, progress: Callable[[int], None] | None) -> None:
    for folder in ("images", "masks", "organs"):
        (root / folder).mkdir()
    names = [f"slice_{i:05d}.npy" for i in range(n_slices)]
    children = np.random.SeedSequence(seed).spawn(n_slices + 1)
    slice_seeds = [child.spawn(2) for child in children[:n_slices]]  # (phantom, anomaly) per slice

    # Pass 1: lesion-free phantoms to disk; collect kidney HU for the fingerprint window.
    kidney_hu = []
    for name, (phantom_seed, _) in zip(names, slice_seeds, strict=True):
        phantom = make_phantom(size, np.random.default_rng(phantom_seed))
        np.save(root / "images" / name, phantom.hu)
        np.save(root / "organs" / name, phantom.kidney.astype(np.uint8))
        kidney_hu.append(phantom.hu[phantom.kidney])
        if progress is not None:
            progress(1)  # drawing the phantoms is most of the work
    lo, hi = (float(v) for v in np.percentile(np.concatenate(kidney_hu), PERCENTILES))

    # Pass 2: inject in [0, 1] window space, add the change back in HU.
    blob = max(4, round(BLOB_PX_AT_128 * size / 128))
    labels = np.zeros(n_slices, dtype=np.int64)
    for i, (name, (_, anomaly_seed)) in enumerate(zip(names, slice_seeds, strict=True)):
        hu = np.load(root / "images" / name)
        kidney = np.load(root / "organs" / name).astype(bool)
        unit = hu_to_unit(hu, (lo, hi))
        anomaly = inject_anomaly(unit, kidney, np.random.default_rng(anomaly_seed), size=blob)
        if anomaly.injected:
            hu = hu + (anomaly.image01 - unit) * np.float32(hi - lo)
            np.save(root / "images" / name, hu.astype(np.float32))
        np.save(root / "masks" / name, anomaly.mask.astype(np.uint8))
        labels[i] = int(anomaly.injected)

    splits = _split(labels, np.random.default_rng(children[n_slices]))
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "mask", "split", "organ"])
        for name, label, split in zip(names, labels, splits, strict=True):
            writer.writerow([f"images/{name}", int(label), f"masks/{name}", split, f"organs/{name}"])

    counts = {s: {str(k): int(np.sum((splits == s) & (labels == k))) for k in (0, 1)} for s in SPLIT_FRACTIONS}
    info = {
        "seed": seed,
        "size": size,
        "n_slices": n_slices,
        "window": [lo, hi],
        "window_source": f"kidney HU percentiles {list(PERCENTILES)} over all slices before injection",
        "blob_size": blob,
        "counts": counts,
    }
    (root / "synth.json").write_text(json.dumps(info, indent=2) + "\n")


def _split(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split names per slice: within each label a seeded permutation cut at 70 % / 85 % (str array)."""
    splits = np.empty(len(labels), dtype=object)
    for label in (0, 1):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_train = round(SPLIT_FRACTIONS["train"] * len(index))
        n_val = round(SPLIT_FRACTIONS["val"] * len(index))
        splits[index[:n_train]] = "train"
        splits[index[n_train : n_train + n_val]] = "val"
        splits[index[n_train + n_val :]] = "test"
    return splits.astype(str)
