"""``coinseg segment``: lesion masks from a trained run, in each input's own resolution and geometry.

INPUT is one of:

* a manifest CSV (rows of ``--split``, or ``all``): one PNG mask (0/255) per 2-D row, at the row's own size,
  nothing outside the row's organ mask when it has one;
* one image file, or a folder of 2-D images: one PNG mask each;
* a NIfTI volume or a DICOM series folder: one NIfTI mask with the input's exact shape and affine;
* a dataset folder written by ``coinseg prepare`` (``manifest.csv`` + ``store/``): one NIfTI mask per case (scan)
  of ``--split``, in the source scan's exact shape and affine; the stored ROI slices are pasted back voxel-exactly
  (:func:`coinseg.data.roi.paste_back`), and nothing is masked outside the organ when the store has one.

For each slice the run's predictor (:mod:`coinseg.predictor`) gives the difference map |x - x_cf| / 2 in [0, 1]
at the slice's own size; the lesions are its parts above ``--threshold``, each reaching as ``--extent`` says
(:func:`coinseg.evaluation.metrics.lesion_mask`). ``--postprocess`` cleans 2-D masks as the paper does (3x3
opening and closing, largest component) and volumes in 3-D (every 26-connected lesion of at least
``--min-lesion-mm3`` is kept, several per slice). ``--save-maps`` also writes the difference map of each volume
as float NIfTI (``maps/``, for ``export-nnunet --ignore-below``); ``--dicom-seg`` writes a DICOM-SEG beside the
NIfTI mask for DICOM-series inputs.

Outputs (written to a temporary folder, renamed to OUT_DIR at the end): ``masks/`` and ``predictions.csv`` with
``image`` (as given; for a dataset case, the source scan), ``case``, ``prob`` = f(x), ``prob_cf`` = f(x_cf) (maxima
over a volume's slices), ``mask`` (relative path), ``mask_pixels`` (pixels or voxels) and ``lesion_ml`` (volumes).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from coinseg.config import DeviceChoice, MapUpsample, MaskExtent
from coinseg.data.manifest import Entry, ManifestError, read_manifest
from coinseg.data.roi import paste_back_values
from coinseg.data.slices import read_entry
from coinseg.data.store import STORE, StoredCase, open_case
from coinseg.errors import UsageError
from coinseg.evaluation.metrics import lesion_mask
from coinseg.evaluation.metrics import postprocess as clean_mask
from coinseg.evaluation.volume import MIN_LESION_MM3, lesion_volume_ml, remove_small_lesions, spacing_from_affine
from coinseg.io.files import atomic_dir, check_empty_target, spreadsheet_safe
from coinseg.io.images import (
    KIND_NAMES,
    SLICE_SUFFIXES,
    Image,
    ImageReadError,
    intensity_for,
    read_standalone,
    suffix_of,
    to_source_volume,
    write_nifti,
    write_png_mask,
)
from coinseg.predictor import Predictor, load_predictor, parse_threshold
from coinseg.runtime.console import console, progress_bar

# the contract's five columns first (other tools read them by position too), then the volume columns
COLUMNS = ["image", "prob", "prob_cf", "mask", "mask_pixels", "case", "lesion_ml"]


@dataclass
class Job:
    """One output. ``image``: a 2-D slice (H x W) or a volume read whole (Z x H x W display slices);
    ``stored``: a case of a prepared dataset; ``dicom``: the series folder of a DICOM input (for --dicom-seg);
    ``entry``: the manifest row of a slice read from a manifest (its organ mask is read if the run crops)."""

    name: str
    source: str
    image: Image | None = None
    stored: StoredCase | None = None
    case: str = ""
    dicom: Path | None = None
    entry: Entry | None = None

    @property
    def n_slices(self) -> int:
        if self.stored is not None:
            return len(self.stored.image)
        assert self.image is not None
        return self.image.array.shape[0] if self.image.is_volume else 1

    @property
    def intensity(self) -> str:
        return "hu" if self.stored is not None else self.image.intensity  # type: ignore[union-attr]


@dataclass
class MaskRule:
    """How masks are made: ``cut`` the threshold on |x - x_cf| / 2 and ``extent`` how far each lesion it finds
    reaches (:func:`~coinseg.evaluation.metrics.lesion_mask`, slice by slice); ``min_lesion_mm3`` the 3-D
    post-processing's smallest lesion (with ``postprocess``); ``gate``: no mask on a slice the classifier calls
    normal (f(x) < 0.5)."""

    cut: float
    postprocess: bool
    min_lesion_mm3: float
    save_maps: bool
    dicom_seg: bool
    batch_size: int
    gate: bool = True
    extent: MaskExtent = MaskExtent.half_peak

    def masks(self, maps: np.ndarray) -> np.ndarray:
        """Boolean masks of N x H x W difference maps, each slice on its own."""
        return np.stack([lesion_mask(m, self.cut, self.extent) for m in maps])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


def _strip_suffix(name: str) -> str:
    suffix = suffix_of(Path(name))
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def is_dataset(source: Path) -> bool:
    """True for a dataset folder written by ``coinseg prepare``."""
    return source.is_dir() and (source / "manifest.csv").is_file() and (source / STORE).is_dir()


def dataset_jobs(dataset: Path, split: str) -> list[Job]:
    """One job per case of ``split`` (or ``all``) of a prepared dataset, in case order."""
    manifest = dataset / "manifest.csv"
    entries = read_manifest(manifest, check_images=False)
    # every row points into store/<case>/image.npy
    cases = sorted({e.image.parent.name for e in entries if split == "all" or e.split == split})
    if not cases:
        raise ManifestError(f"{manifest}: no case in split '{split}' (use --split all for every case)")
    jobs = []
    for case in cases:
        stored = open_case(dataset, case)
        jobs.append(Job(_safe(case), stored.geometry.source, stored=stored, case=case))
    return jobs


def collect_jobs(source: Path, split: str) -> list[Job]:
    """Resolve INPUT (see the module docstring)."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: input not found")
    if is_dataset(source):
        return dataset_jobs(source, split)
    if source.is_file() and source.suffix.lower() == ".csv":
        entries = read_manifest(source, check_images=False)
        if split != "all":
            entries = [e for e in entries if e.split == split]
            if not entries:
                raise ManifestError(f"{source}: no rows in split '{split}' (use --split all for every row)")
        jobs = []
        for e in entries:
            name = _strip_suffix(e.source) + (f"_z{e.slice:04d}" if e.slice is not None else "")
            jobs.append(Job(_safe(name), e.source, Image(read_entry(e), intensity_for(e.image)), entry=e))
        return jobs
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if suffix_of(p) in SLICE_SUFFIXES and suffix_of(p) != ".dcm"]
        if not images:  # no 2-D images: a DICOM series (files with or without the .dcm suffix)
            return [Job(_safe(source.name), str(source), read_standalone(source), dicom=source)]
        return [Job(_safe(_strip_suffix(p.name)), str(p), read_standalone(p)) for p in images]
    return [Job(_safe(_strip_suffix(source.name)), str(source), read_standalone(source))]


def _volume_maps(
    model: Predictor, job: Job, rule: MaskRule
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray], np.ndarray]:
    """(f(x) per slice, f(x_cf) per slice, the N x H x W difference maps of the slices (gated by ``rule``), the
    function that puts N x H x W slice arrays (maps or masks) back into the source voxel array, the source
    affine)."""
    batch = rule.batch_size
    if job.stored is not None:
        stored = job.stored
        slices = [np.asarray(stored.image[n], dtype=np.float32) for n in range(len(stored.image))]
        organs = None if stored.organ is None else [np.asarray(o) for o in stored.organ]
        probs, probs_cf, diffs = model.run(slices, batch, organs, job.source, rule.gate)  # nothing outside the organ
        back, affine = partial(paste_back_values, stored.geometry), stored.geometry.affine
    else:
        image = job.image
        assert image is not None and image.affine is not None
        probs, probs_cf, diffs = model.run(list(image.array), batch, source=job.source, gate=rule.gate)
        back, affine = partial(to_source_volume, image=image), image.affine
    return probs, probs_cf, np.stack(diffs), back, affine


def _segment_volume(model: Predictor, job: Job, rule: MaskRule, out: Path) -> dict[str, str | int]:
    probs, probs_cf, maps, to_source, affine = _volume_maps(model, job, rule)
    spacing = spacing_from_affine(affine)
    mask = to_source(rule.masks(maps))
    if rule.postprocess:
        mask = remove_small_lesions(mask, spacing, rule.min_lesion_mm3)
    rel = f"masks/{job.name}.nii.gz"
    write_nifti(mask, affine, out / rel)
    if rule.save_maps:
        write_nifti(to_source(maps).astype(np.float32), affine, out / "maps" / f"{job.name}.nii.gz")
    if rule.dicom_seg and job.dicom is not None:
        from coinseg.export.dicom_seg import frames_from_series_volume, write_dicom_seg

        files = sorted(p for p in job.dicom.iterdir() if p.is_file() and not p.name.startswith("."))
        write_dicom_seg(files, frames_from_series_volume(mask), out / "masks" / f"{job.name}.seg.dcm")
    return {
        "prob": f"{float(probs.max()):.6f}",
        "prob_cf": f"{float(probs_cf.max()):.6f}",
        "mask": rel,
        "mask_pixels": int(mask.sum()),
        "lesion_ml": f"{lesion_volume_ml(mask, spacing):.4f}",
    }


def _segment_slice(model: Predictor, job: Job, rule: MaskRule, out: Path) -> dict[str, str | int]:
    assert job.image is not None
    organs = None if job.entry is None else model.entry_organs([job.entry], [job.image.array])
    probs, probs_cf, diffs = model.run([job.image.array], rule.batch_size, organs, job.source, rule.gate)
    mask = rule.masks(np.stack(diffs))[0]
    if rule.postprocess:
        mask = clean_mask(mask)
    rel = f"masks/{job.name}.png"
    write_png_mask(mask, out / rel)
    return {
        "prob": f"{float(probs[0]):.6f}",
        "prob_cf": f"{float(probs_cf[0]):.6f}",
        "mask": rel,
        "mask_pixels": int(mask.sum()),
        "lesion_ml": "",
    }


def segment(
    run_dir: Path,
    source: Path,
    out_dir: Path,
    split: str = "test",
    threshold: float | str = "floor",
    postprocess: bool = False,
    device: DeviceChoice | str = DeviceChoice.auto,
    batch_size: int = 64,
    min_lesion_mm3: float = MIN_LESION_MM3,
    save_maps: bool = False,
    dicom_seg: bool = False,
    gate: bool = True,
    upsample: MapUpsample | str = MapUpsample.guided,
    extent: MaskExtent | str = MaskExtent.half_peak,
) -> Path:
    """Write masks and predictions.csv for ``source`` into ``out_dir``; returns the CSV path.
    ``threshold``: ``"floor"``, ``"auto"`` or a number in [0, 1) (:meth:`coinseg.predictor.Predictor.threshold`).
    ``upsample``: how maps are resized back to the slices (:mod:`coinseg.data.upsample`).
    ``extent``: how far each lesion the threshold finds reaches (:class:`~coinseg.config.MaskExtent`)."""
    parsed = parse_threshold(threshold)
    extent = MaskExtent(extent)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    if not min_lesion_mm3 >= 0:
        raise UsageError(f"--min-lesion-mm3 {min_lesion_mm3}: must be >= 0")
    check_empty_target(out_dir)  # before the model is loaded and every input read; again at the end
    model = load_predictor(run_dir, device, upsample)
    rule = MaskRule(
        model.threshold(parsed), postprocess, min_lesion_mm3, save_maps, dicom_seg, batch_size, gate, extent
    )
    jobs = collect_jobs(source, split)
    for job in jobs:
        if job.intensity != model.intensity:
            raise ImageReadError(
                f"{job.source}: {KIND_NAMES[job.intensity]} but the model was trained on {KIND_NAMES[model.intensity]}"
            )
    if dicom_seg and not any(job.dicom is not None for job in jobs):
        raise UsageError(f"--dicom-seg: {source} is not a DICOM series folder")
    first: dict[str, Job] = {}
    for job in jobs:
        if job.name in first:
            raise UsageError(
                f"{source}: {first[job.name].source} and {job.source} both map to the mask name {job.name!r} "
                "(a duplicate row, or names that differ only in characters a file name cannot hold)"
            )
        first[job.name] = job
    for warning in (model.below_noise_floor(rule.cut), model.at_chance()):  # once the input is known to be usable
        if warning:
            console.print(warning, highlight=False)
    rows = []
    with atomic_dir(out_dir, "segment") as tmp, progress_bar("segment", sum(j.n_slices for j in jobs)) as bar:
        progress, task = bar
        (tmp / "masks").mkdir()
        for job in jobs:
            volume = job.stored is not None or (job.image is not None and job.image.is_volume)
            row = (_segment_volume if volume else _segment_slice)(model, job, rule, tmp)
            rows.append({"image": spreadsheet_safe(job.source), "case": spreadsheet_safe(job.case), **row})
            progress.advance(task, job.n_slices)
        with (tmp / "predictions.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return out_dir / "predictions.csv"
