"""``coinseg prepare``: a CT study -> a slice store and a per-slice manifest every command accepts.

Per case (one scan; cases run in parallel with ``workers`` processes): read the volume and its masks once
(:mod:`coinseg.io.volumes`), check every mask lies on the image's grid, label each plane along the scan's own
superior-inferior axis (:mod:`coinseg.data.labels`), crop around the organ and resample in-plane
(:mod:`coinseg.data.roi`), optionally inject the paper's anomaly, and write ``store/<case>/``
(:mod:`coinseg.data.store`). Then split by case and write ``manifest.csv``, ``prepare.log``, ``prepare.json``.
The whole DATASET_DIR appears at once (built under a temporary name, then renamed).

**The paper's injection protocol on real CT** (``inject=True``): a stored normal slice is *eligible* when its
organ can host the blob (largest organ component's bounding box larger than the blob's square, the paper's own
condition); the others are excluded and counted. Of the n eligible slices of a case, a random subset of exactly
``round(inject_p * n)`` is chosen (the paper flips a coin per slice; a fixed count realises the asked proportion
even on one small scan, where 19 coin flips would scatter it by +-11 points), and on each chosen slice
:func:`coinseg.data.anomaly.inject_anomaly` is called with p = 1 until it places a blob (at most 20 draws; a
failure is excluded and counted). The realised fraction is printed.

* Blob size in millimetres, ``blob_mm = 30``: the paper's 20 x 20 px template on TotalSegmentator slices
  resized to 256 px. TotalSegmentator CTs are 1.5 mm isotropic with an abdominal field of view of about
  380-400 mm, i.e. a 256 px slice is ~1.5 mm per pixel, so 20 px x 1.5 mm/px = 30 mm (lesion mask
  ``T > 0.25``: a ~19 mm disc, ~270 mm^2, scaled by 0.75-1). On the stored grid the template has
  ``round(blob_mm / spacing)`` pixels.
* Intensity in HU: the paper adds ``0.9 * T`` on the [0, 1] scale of the kidney window [lo, hi] and clips to
  [0, 1]. Here each changed pixel becomes ``lo + (hi - lo) * clip(u + 0.9 T, 0, 1)`` with ``u`` the pixel on
  that scale: ``0.9 (hi - lo) T`` HU added, capped at ``hi``; pixels the blob does not touch keep their HU.
  [lo, hi] is ``inject_window`` or, by default, the case's kidney fingerprint: the 0.5 and 99.5 percentiles of
  its organ voxels (the window :mod:`coinseg.data.normalise` computes for training).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
from scipy import ndimage

from coinseg.data.anomaly import hu_to_unit, inject_anomaly
from coinseg.data.labels import DEFAULT_MIN_LESION_MM2, NORMAL, slice_labels
from coinseg.data.roi import (
    display_axes,
    in_plane_area_mm2,
    plan_geometry,
    stored_images,
    stored_masks,
)
from coinseg.data.store import case_folder, write_case, write_manifest
from coinseg.data.study import Case, Layout, MaskSpec, StudyError, discover
from coinseg.io.files import atomic_dir
from coinseg.io.images import ImageReadError
from coinseg.io.volumes import Volume, read_volume, same_grid

DEFAULT_BLOB_MM = 30.0
DEFAULT_SPACING_MM = 1.0
DEFAULT_MARGIN_MM = 10.0
INJECT_TRIES = 20
ALPHA = 0.9  # the paper's blob weight on the [0, 1] window scale
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}


class OnError(str, Enum):
    skip = "skip"
    fail = "fail"


@dataclass
class PrepareOptions:
    """Options of ``coinseg prepare`` (see the CLI help). ``spacing_mm`` None: 1 mm in ROI mode, the source
    grid in full-slice mode."""

    layout: Layout = Layout.auto
    organ_names: tuple[str, ...] = ()
    organ_labels: tuple[int, ...] = ()
    lesion_labels: tuple[int, ...] = ()
    inject: bool = False
    inject_p: float = 0.65
    blob_mm: float = DEFAULT_BLOB_MM
    inject_window: tuple[float, float] | None = None
    roi: bool = True
    margin_mm: float = DEFAULT_MARGIN_MM
    spacing_mm: float | None = None
    min_lesion_mm2: float = DEFAULT_MIN_LESION_MM2
    workers: int = 1
    on_error: OnError = OnError.fail
    seed: int = 0
    series: str | None = None


@dataclass
class CaseResult:
    """What one case contributed: ``labels`` per stored slice, counts by reason, notes for the log."""

    case: str
    labels: list[int]
    counts: Counter[str]
    notes: list[str] = field(default_factory=list)
    split: str | None = None
    seconds: float = 0.0


@dataclass
class Summary:
    """The result of :func:`prepare_study`."""

    manifest: Path
    layout: str
    n_cases: int
    n_slices: int
    counts: dict[str, int]
    splits: dict[str, str]
    skipped: dict[str, str]
    injected_fraction: float | None
    seconds_per_case: float


class _Reader:
    """Reads each file of a case once and checks it lies on the image's grid."""

    def __init__(self, image: Volume) -> None:
        self.image = image
        self.cache: dict[Path, Volume] = {}

    def mask(self, spec: MaskSpec, what: str) -> np.ndarray:
        out = np.zeros(self.image.data.shape, dtype=bool)
        for number, file in enumerate(spec.files):
            if not file.exists():
                raise StudyError(f"{file}: {what} file missing (case image {self.image.path})")
            if file not in self.cache:
                volume = read_volume(file)
                problem = same_grid(self.image, volume)
                if problem:
                    raise StudyError(f"{file}: {what} mask {problem}")
                self.cache[file] = volume
            before = int(np.count_nonzero(out)) if what == "organ" else 0
            _select(self.cache[file].data, spec.labels, out)
            if what == "organ" and int(np.count_nonzero(out)) == before:
                asked = spec.names[number] if spec.names else ",".join(map(str, spec.labels)) or "nonzero"
                raise StudyError(f"{file}: organ {asked!r} absent from this case (no voxel)")
        return out


def _select(data: np.ndarray, labels: tuple[int, ...], out: np.ndarray, chunk: int = 16) -> None:
    """``out |= (data in labels)`` (or ``data != 0`` without labels), in slabs along the slowest axis: fresh
    full-volume temporaries cost more than the comparisons (page faults)."""
    axis = int(np.argmax(data.strides))
    for start in range(0, data.shape[axis], chunk):
        block = (slice(None),) * axis + (slice(start, start + chunk),)
        part, target = data[block], out[block]
        if not labels:
            target |= part != 0
        for value in labels:
            target |= part == value


def _case_rng(seed: int, case: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case.encode())])


def process_case(case: Case, options: PrepareOptions, dataset_dir: Path) -> CaseResult:
    """Read, label, crop/resample, inject and store one case. Bad input raises :class:`StudyError` or
    :class:`ImageReadError` naming the file."""
    tic = time.perf_counter()
    image = read_volume(case.image, options.series)
    notes = [f"skipped non-slice file {s}" for s in image.skipped]
    reader = _Reader(image)
    organ = reader.mask(case.organ, "organ") if case.organ is not None else None
    lesion = reader.mask(case.lesion, "lesion") if case.lesion is not None else None
    reader.cache.clear()
    affine, data = image.affine, image.data
    slice_axis = display_axes(affine)[0]
    others = tuple(a for a in range(3) if a != slice_axis)
    # the organ includes its lesions (KiTS labels a tumour apart from the kidney that holds it)
    regions = [m for m in (organ, lesion) if m is not None] if organ is not None else []
    lesion_mm2 = (
        np.count_nonzero(lesion, axis=others) * in_plane_area_mm2(affine, slice_axis) if lesion is not None else None
    )
    labels, counts = slice_labels(
        data.shape[slice_axis],
        np.logical_or.reduce([m.any(axis=others) for m in regions]) if regions else None,
        lesion_mm2,
        options.min_lesion_mm2,
        case.label if lesion is None else None,
    )
    if options.inject and lesion_mm2 is not None:
        real = (np.asarray(lesion_mm2) > 0) & (labels == 1)
        counts["excluded: real lesion (with --inject)"] = int(real.sum())
        counts["abnormal"] -= int(real.sum())
        labels[real] = -1
    roi = options.roi and bool(regions)
    if options.roi and not regions:
        notes.append("no organ mask: full slices stored")
    spacing = options.spacing_mm if options.spacing_mm is not None else (DEFAULT_SPACING_MM if roi else None)
    geometry = plan_geometry(
        case.name, str(case.image.resolve()), data.shape, affine, regions if roi else None, options.margin_mm, spacing
    )
    keep = np.flatnonzero(labels >= 0)
    if keep.size == 0:
        raise StudyError(
            f"{case.image}: no slice kept (organ absent and no lesion, or every lesion below --min-lesion-mm2)"
        )
    geometry.slice_index = keep.tolist()
    stack = stored_images(data, geometry)
    lesion_stack = stored_masks(lesion, geometry) if lesion is not None else np.zeros(stack.shape, dtype=bool)
    organ_stack = stored_masks(organ, geometry) | lesion_stack if organ is not None else None
    stored_labels = labels[keep].astype(np.int8)
    if options.inject:
        if organ is None or organ_stack is None:
            raise StudyError(f"{case.image}: --inject needs an organ mask (--organ / --organ-labels)")
        window = options.inject_window or _organ_window(data, organ, case)
        keep_mask = _inject(
            stack, organ_stack, lesion_stack, stored_labels, geometry.spacing_mm, window, options, case.name, counts
        )
        geometry.extra["inject"] = {
            "p": options.inject_p,
            "blob_mm": options.blob_mm,
            "window_hu": list(window),
            "alpha": ALPHA,
        }
        geometry.slice_index = [i for i, k in zip(geometry.slice_index, keep_mask, strict=True) if k]
        stack, lesion_stack, stored_labels = stack[keep_mask], lesion_stack[keep_mask], stored_labels[keep_mask]
        organ_stack = organ_stack[keep_mask]
        if not keep_mask.any():
            raise StudyError(f"{case.image}: no slice kept (the organ is too small for a {options.blob_mm} mm blob)")
    write_case(dataset_dir, stack, lesion_stack, organ_stack, geometry)
    return CaseResult(case.name, stored_labels.tolist(), counts, notes, case.split, time.perf_counter() - tic)


def _organ_window(data: np.ndarray, organ: np.ndarray, case: Case) -> tuple[float, float]:
    values = data[organ]
    lo, hi = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    if not hi > lo:
        raise StudyError(f"{case.image}: constant intensity inside the organ, give --inject-window")
    return lo, hi


def _inject(
    stack: np.ndarray,
    organ: np.ndarray,
    lesion: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float],
    window: tuple[float, float],
    options: PrepareOptions,
    case: str,
    counts: Counter[str],
) -> np.ndarray:
    """Inject in place into the normal slices of ``stack`` (HU) / ``lesion`` / ``labels``; returns the bool
    mask of slices to keep (those whose organ cannot host the blob, or where placing failed, are dropped)."""
    rng = _case_rng(options.seed, case)
    size = max(2, round(options.blob_mm / float(np.mean(spacing))))
    lo, hi = window
    keep = np.ones(len(stack), dtype=bool)
    eligible = []
    for n in np.flatnonzero(labels == NORMAL):
        components, count = ndimage.label(organ[n], structure=np.ones((3, 3), dtype=bool))
        boxes = ndimage.find_objects(components)
        largest = max(((b[0].stop - b[0].start) * (b[1].stop - b[1].start) for b in boxes if b is not None), default=0)
        if count == 0 or largest <= size * size:
            keep[n] = False
            counts["excluded: organ too small for the blob"] += 1
        else:
            eligible.append(int(n))
    counts["inject: eligible"] += len(eligible)
    chosen = rng.choice(np.array(eligible, dtype=np.intp), size=round(options.inject_p * len(eligible)), replace=False)
    for n in sorted(chosen.tolist()):
        unit = hu_to_unit(stack[n], window)
        for _ in range(INJECT_TRIES):
            result = inject_anomaly(unit, organ[n], rng, p=1.0, alpha=ALPHA, size=size)
            if result.injected:
                break
        if not result.injected:
            keep[n] = False
            counts["excluded: blob placing failed"] += 1
            continue
        changed = result.image01 != unit
        stack[n][changed] = lo + (hi - lo) * result.image01[changed]
        lesion[n] = result.mask
        labels[n] = 1
        counts["inject: injected"] += 1
        counts["abnormal"] += 1
        counts["normal"] -= 1
    counts["normal"] -= int((~keep & (labels == NORMAL)).sum())
    return keep


def _run(job: tuple[Case, PrepareOptions, Path]) -> CaseResult | str:
    """One case in a worker: the result, or the one-line user error (a string) for --on-error."""
    case, options, dataset_dir = job
    try:
        return process_case(case, options, dataset_dir)
    except (StudyError, ImageReadError) as exc:
        folder = case_folder(dataset_dir, case.name)
        if folder.exists():
            shutil.rmtree(folder)
        return f"{case.where + ': ' if case.where else ''}{exc}"


def assign_splits(names: list[str], seed: int) -> dict[str, str]:
    """Deterministic split by case: cases ordered by a seeded hash of their name; the first 15 % (at least
    one) test, the next 15 % (at least one) val, the rest train. Needs at least 3 names."""
    order = sorted(names, key=lambda n: hashlib.sha1(f"{seed}:{n}".encode()).hexdigest())
    n_test = max(1, round(SPLIT_FRACTIONS["test"] * len(order)))
    n_val = max(1, round(SPLIT_FRACTIONS["val"] * len(order)))
    return {n: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, n in enumerate(order)}


def _slab_splits(n: int) -> list[str]:
    """Slices 0..n-1 of one case in contiguous slabs along the scan: train, then val, then test (15 % each)."""
    n_test = max(1, round(SPLIT_FRACTIONS["test"] * n)) if n >= 3 else 0
    n_val = max(1, round(SPLIT_FRACTIONS["val"] * n)) if n >= 3 else 0
    return ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test


def prepare_study(
    source: Path,
    out: Path,
    options: PrepareOptions,
    log: Callable[[str], None] = print,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Build DATASET_DIR ``out`` from ``source`` (see the module docstring). Returns the summary; the log lines
    also go to ``log``. Raises :class:`StudyError` / :class:`ImageReadError` on bad input (per case: only with
    ``on_error=fail``; with ``skip`` the case is left out and named in the log)."""
    if not 0.0 <= options.inject_p <= 1.0:
        raise StudyError(f"--inject-p {options.inject_p}: expected a probability in [0, 1]")
    for name, value in (("--spacing-mm", options.spacing_mm), ("--blob-mm", options.blob_mm)):
        if value is not None and not value > 0:
            raise StudyError(f"{name} {value}: expected a positive number of millimetres")
    for name, value in (("--margin-mm", options.margin_mm), ("--min-lesion-mm2", options.min_lesion_mm2)):
        if not value >= 0:
            raise StudyError(f"{name} {value}: expected a number >= 0")
    if options.workers < 1:
        raise StudyError(f"--workers {options.workers}: must be at least 1")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise StudyError(f"--out {out}: must not be inside the study {source} (inputs are never written to)")
    layout, cases = discover(
        source, options.layout, options.organ_names, options.organ_labels, options.lesion_labels, not options.inject
    )
    lines = [f"layout: {layout.value}, {len(cases)} cases from {source}"]
    for line in lines:
        log(line)
    tic = time.perf_counter()
    with atomic_dir(out, "dataset") as tmp:
        results: list[CaseResult] = []
        skipped: dict[str, str] = {}
        jobs = [(case, options, tmp) for case in cases]
        pool = ProcessPoolExecutor(options.workers) if options.workers > 1 else None
        try:
            outcomes = pool.map(_run, jobs) if pool is not None else map(_run, jobs)
            for case, outcome in zip(cases, outcomes, strict=True):
                if isinstance(outcome, str):
                    if options.on_error == OnError.fail:
                        raise StudyError(outcome)
                    skipped[case.name] = outcome
                    lines.append(f"skipped case {case.name}: {outcome}")
                    log(lines[-1])
                else:
                    results.append(outcome)
                    lines.extend(f"{case.name}: {note}" for note in outcome.notes)
                if progress is not None:
                    progress(1)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        if not results:
            raise StudyError(f"{source}: no case could be prepared ({len(skipped)} skipped)")
        summary = _finish(tmp, out, layout, results, skipped, options, lines, time.perf_counter() - tic)
        for line in lines[1:]:
            if not line.startswith("skipped case"):
                log(line)
    return summary


def _finish(
    tmp: Path,
    out: Path,
    layout: Layout,
    results: list[CaseResult],
    skipped: dict[str, str],
    options: PrepareOptions,
    lines: list[str],
    seconds: float,
) -> Summary:
    given = {r.case: r.split for r in results if r.split is not None}
    free = [r.case for r in results if r.split is None]
    slabs = not given and len(free) < 3
    splits = dict(given)
    if slabs:
        lines.append(
            f"WARNING: only {len(free)} case(s): split by contiguous slabs of slices inside each case "
            "(train, val, test along the scan), NOT by patient; neighbouring slabs share anatomy"
        )
    elif free:
        splits.update(assign_splits(free, options.seed))
    rows = []
    counts: Counter[str] = Counter()
    for result in results:
        counts.update(result.counts)
        per_slice = _slab_splits(len(result.labels)) if slabs else [splits[result.case]] * len(result.labels)
        folder = f"store/{result.case}"
        organ = (tmp / folder / "organ.npy").exists()
        for n, (label, split) in enumerate(zip(result.labels, per_slice, strict=True)):
            rows.append(
                {
                    "image": f"{folder}/image.npy",
                    "label": str(label),
                    "split": split,
                    "slice": str(n),
                    "case": result.case,
                    "mask": f"{folder}/lesion.npy",
                    "organ": f"{folder}/organ.npy" if organ else "",
                }
            )
    by_split = Counter((r["split"], r["label"]) for r in rows)
    if not slabs:
        for split in ("train", "val", "test"):
            members = sorted(c for c, s in splits.items() if s == split)
            lines.append(f"split {split}: {len(members)} cases: {', '.join(members)}")
    lines.append(
        "slices per split (normal/abnormal): "
        + ", ".join(f"{s} {by_split[(s, '0')]}/{by_split[(s, '1')]}" for s in ("train", "val", "test"))
    )
    lines.extend(f"{reason}: {count}" for reason, count in sorted(counts.items()))
    fraction = None
    if options.inject:
        eligible = counts["inject: eligible"] - counts["excluded: blob placing failed"]
        fraction = counts["inject: injected"] / eligible if eligible else 0.0
        lines.append(
            f"injected fraction: {fraction:.3f} ({counts['inject: injected']} of {eligible} eligible slices; "
            f"asked p = {options.inject_p})"
        )
    if skipped:
        lines.append(f"skipped {len(skipped)} case(s) (--on-error skip): {', '.join(sorted(skipped))}")
    write_manifest(tmp / "manifest.csv", rows)
    summary = Summary(
        manifest=out / "manifest.csv",
        layout=layout.value,
        n_cases=len(results),
        n_slices=len(rows),
        counts=dict(counts),
        splits={r.case: ("slabs" if slabs else splits[r.case]) for r in results},
        skipped=skipped,
        injected_fraction=fraction,
        seconds_per_case=seconds / max(len(results) + len(skipped), 1),
    )
    (tmp / "prepare.log").write_text("\n".join(lines) + "\n")
    (tmp / "prepare.json").write_text(json.dumps(summary.__dict__, indent=1, default=str))
    return summary
