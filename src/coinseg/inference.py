"""``coinseg segment``: lesion masks from a trained run, at each input's own resolution and geometry.

For each 2-D slice the run's predictor (:mod:`coinseg.predictor`) gives the difference map |x - x_cf| / 2 at the
input's size; mask = map > threshold, optional post-processing.
Outputs (written to a temporary folder, renamed to OUT_DIR at the end): ``masks/`` (PNG 0/255 for 2-D inputs,
NIfTI with the input's affine and shape for volumes) and ``predictions.csv``
(image, prob = f(x), prob_cf = f(x_cf), mask (relative path), mask_pixels). For a volume, prob and prob_cf are
the maxima over its slices.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coinseg.config import DeviceChoice
from coinseg.data.manifest import ManifestError, read_manifest
from coinseg.data.slices import read_entry
from coinseg.errors import UsageError
from coinseg.evaluation.metrics import postprocess as clean_mask
from coinseg.io.files import atomic_dir, check_empty_target, spreadsheet_safe
from coinseg.io.images import (
    KIND_NAMES,
    SLICE_SUFFIXES,
    Image,
    ImageReadError,
    intensity_for,
    read_standalone,
    suffix_of,
    write_nifti_mask,
    write_png_mask,
)
from coinseg.predictor import load_predictor, parse_threshold
from coinseg.runtime.console import progress_bar


@dataclass
class Job:
    """One output: a 2-D slice (``image.array`` H x W) or a volume (Z x H x W) written as NIfTI."""

    name: str
    source: str
    image: Image


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


def _strip_suffix(name: str) -> str:
    suffix = suffix_of(Path(name))
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def collect_jobs(source: Path, split: str) -> list[Job]:
    """Resolve INPUT: a manifest CSV (rows of ``split``, or ``all``), an image file, a NIfTI volume, a DICOM
    series folder, or a folder of 2-D images."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: input not found")
    if source.is_file() and source.suffix.lower() == ".csv":
        entries = read_manifest(source, check_images=False)
        if split != "all":
            entries = [e for e in entries if e.split == split]
            if not entries:
                raise ManifestError(f"{source}: no rows in split '{split}' (use --split all for every row)")
        jobs = []
        for e in entries:
            name = _strip_suffix(e.source) + (f"_z{e.slice:04d}" if e.slice is not None else "")
            jobs.append(Job(_safe(name), e.source, Image(read_entry(e), intensity_for(e.image))))
        return jobs
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        if files and all(suffix_of(p) == ".dcm" for p in files):
            return [Job(_safe(source.name), str(source), read_standalone(source))]
        images = [p for p in files if suffix_of(p) in SLICE_SUFFIXES and suffix_of(p) != ".dcm"]
        if not images:
            raise ImageReadError(f"{source}: no images (.npy .png .tif .nii .nii.gz .dcm) in the folder")
        return [Job(_safe(_strip_suffix(p.name)), str(p), read_standalone(p)) for p in images]
    return [Job(_safe(_strip_suffix(source.name)), str(source), read_standalone(source))]


def segment(
    run_dir: Path,
    source: Path,
    out_dir: Path,
    split: str = "test",
    threshold: float | str = 0.25,
    postprocess: bool = False,
    device: DeviceChoice | str = DeviceChoice.auto,
    batch_size: int = 64,
) -> Path:
    """Write masks and predictions.csv for ``source`` into ``out_dir``; returns the CSV path.
    ``threshold``: a number in [0, 1) or ``"auto"`` (the run's calibrated noise floor)."""
    parsed = parse_threshold(threshold)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    check_empty_target(out_dir)  # before the model is loaded and every input read; again at the end
    model = load_predictor(run_dir, device)
    cut = model.threshold(parsed)
    jobs = collect_jobs(source, split)
    for job in jobs:
        if job.image.intensity != model.intensity:
            raise ImageReadError(
                f"{job.source}: {KIND_NAMES[job.image.intensity]} but the model was trained on "
                f"{KIND_NAMES[model.intensity]}"
            )
    first: dict[str, Job] = {}
    for job in jobs:
        if job.name in first:
            raise UsageError(
                f"{source}: {first[job.name].source} and {job.source} both map to the mask name {job.name!r} "
                "(a duplicate row, or names that differ only in characters a file name cannot hold)"
            )
        first[job.name] = job
    rows = []
    total = sum(j.image.array.shape[0] if j.image.is_volume else 1 for j in jobs)
    with atomic_dir(out_dir, "segment") as tmp, progress_bar("segment", total) as (progress, task):
        (tmp / "masks").mkdir()
        for job in jobs:
            slices = list(job.image.array) if job.image.is_volume else [job.image.array]
            probs, probs_cf, diffs = model.run(slices, batch_size)
            masks = np.stack([d > cut for d in diffs])
            if postprocess:
                masks = np.stack([clean_mask(m) for m in masks])
            if job.image.is_volume:
                rel = f"masks/{job.name}.nii.gz"
                write_nifti_mask(masks, job.image, tmp / rel)
            else:
                rel = f"masks/{job.name}.png"
                write_png_mask(masks[0], tmp / rel)
            rows.append(
                {
                    "image": spreadsheet_safe(job.source),
                    "prob": f"{float(probs.max()):.6f}",
                    "prob_cf": f"{float(probs_cf.max()):.6f}",
                    "mask": rel,
                    "mask_pixels": int(masks.sum()),
                }
            )
            progress.advance(task, len(slices))
        with (tmp / "predictions.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "prob", "prob_cf", "mask", "mask_pixels"])
            writer.writeheader()
            writer.writerows(rows)
    return out_dir / "predictions.csv"
