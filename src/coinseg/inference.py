"""``coinseg segment``: lesion masks from a trained run, at each input's own resolution and geometry.

For each 2-D slice: normalise with the run's window, resize to the run's size, x_cf = I(x, c), difference map
|x - x_cf| / 2 resized back (bilinear) to the input's size, mask = map > threshold, optional post-processing.
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
import torch
import torch.nn.functional as F
from torch import nn

from coinseg.attribution.counterfactual import CounterfactualMaps
from coinseg.config import DeviceChoice, Precision
from coinseg.data.manifest import ManifestError, read_manifest
from coinseg.data.normalise import normalise
from coinseg.data.slices import read_entry, resize
from coinseg.evaluation.metrics import difference_map
from coinseg.evaluation.metrics import postprocess as clean_mask
from coinseg.io.files import atomic_dir
from coinseg.io.images import (
    SLICE_SUFFIXES,
    Image,
    ImageReadError,
    intensity_for,
    read_image,
    suffix_of,
    write_nifti_mask,
    write_png_mask,
)
from coinseg.models.classifier import build_classifier
from coinseg.training.gan import load_inpainter
from coinseg.training.runtime import load_checkpoint, make_fabric, progress_bar


@dataclass
class Model:
    """A trained run ready for inference: counterfactual maps, the frozen classifier, window and size."""

    maps: CounterfactualMaps
    classifier: nn.Module
    window: tuple[float, float] | None
    intensity: str
    size: int
    device: torch.device
    auto_threshold: float | None = None

    def threshold(self, value: float | None) -> float:
        """The mask threshold: ``value`` (from :func:`parse_threshold`), or for None (``auto``) the noise floor
        calibrated on normal validation slices at training time."""
        if value is not None:
            return value
        if self.auto_threshold is None:
            raise ValueError(
                "--threshold auto: this run's checkpoint has no calibrated threshold (no normal validation slices, "
                "or trained by an older coinseg); give a number"
            )
        return self.auto_threshold

    def inputs(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """Raw 2-D slices (HU or grey values, any sizes) -> N x 1 x S x S network inputs in [-1, 1] (CPU)."""
        size = (self.size, self.size)
        return torch.cat([resize(torch.from_numpy(normalise(a, self.window))[None, None], size) for a in arrays]).clamp(
            -1, 1
        )

    @torch.no_grad()
    def probs(self, images: torch.Tensor, batch: int = 64) -> np.ndarray:
        """f(images) for N x 1 x S x S inputs in [-1, 1] (any device), in batches: N probabilities."""
        chunks = [images[i : i + batch].to(self.device) for i in range(0, len(images), batch)]
        return np.concatenate([torch.sigmoid(self.classifier(c).float()).cpu().numpy() for c in chunks])

    def run(self, arrays: list[np.ndarray], batch: int = 64) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Raw 2-D slices -> (f(x), f(x_cf), difference maps at each slice's own size, float32 in [0, 1])."""
        probs, probs_cf, diffs = [], [], []
        for start in range(0, len(arrays), batch):
            chunk = arrays[start : start + batch]
            x = self.inputs(chunk).to(self.device)
            x_cf = self.maps.counterfactual(x)
            probs.append(self.probs(x))
            probs_cf.append(self.probs(x_cf))
            diffs.extend(to_original_size(difference_map(x, x_cf), [a.shape for a in chunk]))
        return np.concatenate(probs), np.concatenate(probs_cf), diffs


def to_original_size(maps: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """B x 1 x S x S maps -> list of H_i x W_i float32 arrays (bilinear), one per original slice shape."""
    maps = maps.float().cpu()
    return [
        F.interpolate(maps[i : i + 1], size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()
        for i, shape in enumerate(shapes)
    ]


def load_model(run_dir: Path, device: DeviceChoice | str = DeviceChoice.auto) -> Model:
    """Load the best E+G and the frozen classifier of a ``coinseg train`` run directory."""
    fabric = make_fabric(device, Precision.fp32)
    inpainter, ckpt = load_inpainter(run_dir)
    clf_ckpt = load_checkpoint(run_dir / "checkpoints" / "classifier.pt")
    classifier = build_classifier(clf_ckpt["arch"], clf_ckpt["widths"])
    classifier.load_state_dict(clf_ckpt["model"])
    classifier = classifier.eval().requires_grad_(False).to(fabric.device)
    maps = CounterfactualMaps(ckpt["method"], inpainter.to(fabric.device), ckpt["settings_obj"].gan, classifier)
    window = tuple(ckpt["window"]) if ckpt["window"] else None
    return Model(maps, classifier, window, ckpt["intensity"], ckpt["size"], fabric.device, ckpt.get("auto_threshold"))


def parse_threshold(value: float | str) -> float | None:
    """``--threshold``: a number in [0, 1), or ``auto`` (returned as None: the run's calibrated threshold)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"--threshold {value!r}: give a number in [0, 1) or 'auto'") from None
    if not 0.0 <= number < 1.0:
        raise ValueError(f"--threshold {value}: must be in [0, 1)")
    return number


@dataclass
class Job:
    """One output: a 2-D slice (``image.array`` H x W) or a volume (Z x H x W) written as NIfTI."""

    name: str
    label: str
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
            return [Job(_safe(source.name), str(source), read_image(source))]
        images = [p for p in files if suffix_of(p) in SLICE_SUFFIXES and suffix_of(p) != ".dcm"]
        if not images:
            raise ImageReadError(f"{source}: no images (.npy .png .tif .nii .nii.gz .dcm) in the folder")
        return [Job(_safe(_strip_suffix(p.name)), str(p), read_image(p)) for p in images]
    return [Job(_safe(_strip_suffix(source.name)), str(source), read_image(source))]


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
    model = load_model(run_dir, device)
    cut = model.threshold(parsed)
    jobs = collect_jobs(source, split)
    for job in jobs:
        if job.image.intensity != model.intensity:
            raise ImageReadError(
                f"{job.label}: {job.image.intensity} intensities but the model was trained on {model.intensity}"
            )
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: two inputs map to the same mask name; rename the files")
    rows = []
    total = sum(j.image.array.shape[0] if j.image.is_volume else 1 for j in jobs)
    with atomic_dir(out_dir) as tmp, progress_bar("segment", total) as (progress, task):
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
                    "image": job.label,
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
