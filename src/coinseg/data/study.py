"""Layout discovery: a study folder (or CSV) -> the list of cases ``coinseg prepare`` reads.

Layouts (``--layout``, or detected by ``auto`` in this order):

* ``csv``: SOURCE is a CSV ``volume,label[,lesion][,organ][,case][,split]``, paths relative to the CSV; volumes
  are NIfTI files or DICOM series folders; ``lesion``/``organ`` masks are NIfTI on the volume's grid (nonzero =
  in, or the ids of ``--lesion-labels``/``--organ-labels``). Without a lesion mask, every kept slice gets the
  row's ``label``.
* ``nnunet``: nnU-Net v2 raw, ``dataset.json`` + ``imagesTr/<case>_0000<ending>`` + ``labelsTr/<case><ending>``;
  ``--organ`` takes label names from ``dataset.json``; ``--lesion-labels`` is required (unless ``--inject``).
* ``kits``: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` (1 kidney, 2 tumour, 3 cyst); defaults:
  organ = kidney and cyst (1, 3), lesion = tumour (2). KiTS arrays are slice-first; the affine says so and
  :mod:`coinseg.data.roi` follows it.
* ``totalsegmentator``: ``<subject>/ct.nii.gz`` + ``<subject>/segmentations/<structure>.nii.gz``; organs by
  structure names (default ``kidney_left,kidney_right``), merged; no lesions (use ``--inject``). SOURCE may be
  the dataset folder or one subject folder.

Discovery only names files; whether they exist and fit is checked per case when the case is read, so
``--on-error skip`` can skip one bad case of a large study.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from coinseg.data.manifest import SPLITS, ManifestError

KITS_LABELS = {"kidney": 1, "tumor": 2, "tumour": 2, "cyst": 3}
KITS_ORGAN, KITS_LESION = (1, 3), (2,)
TOTALSEG_ORGANS = ("kidney_left", "kidney_right")


class StudyError(ManifestError):
    """The study (folder, CSV or one of its cases) is invalid; the message names the file."""


class Layout(str, Enum):
    auto = "auto"
    totalsegmentator = "totalsegmentator"
    kits = "kits"
    nnunet = "nnunet"
    csv = "csv"


@dataclass(frozen=True)
class MaskSpec:
    """Where a mask comes from: ``files`` on the image's grid, merged; with ``labels``, the voxels whose value
    is one of those ids, else the nonzero voxels. ``names``: what the user asked for, for messages."""

    files: tuple[Path, ...]
    labels: tuple[int, ...] = ()
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    """One scan. ``name``: unique, filesystem-safe; ``label``: per-volume label (CSV, no lesion mask);
    ``split``: given by the CSV, else assigned by case later; ``where``: for messages (e.g. a CSV row)."""

    name: str
    image: Path
    organ: MaskSpec | None
    lesion: MaskSpec | None
    label: int | None = None
    split: str | None = None
    where: str = ""


def safe_name(text: str) -> str:
    """A case name usable as a folder name (letters, digits, ``._-``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"
    return name


def detect(source: Path) -> Layout:
    """The layout of ``source``; a :class:`StudyError` saying what was expected when none fits."""
    if source.is_file() and source.suffix.lower() == ".csv":
        return Layout.csv
    if source.is_dir():
        if (source / "dataset.json").is_file() and (source / "imagesTr").is_dir():
            return Layout.nnunet
        subdirs = [p for p in source.iterdir() if p.is_dir()]
        if any((p / "imaging.nii.gz").exists() for p in subdirs):
            return Layout.kits
        if (source / "ct.nii.gz").exists() or any((p / "ct.nii.gz").exists() for p in subdirs):
            return Layout.totalsegmentator
    raise StudyError(
        f"{source}: cannot detect the layout (expected a CSV, an nnU-Net raw folder with dataset.json, "
        "KiTS case_*/imaging.nii.gz or TotalSegmentator <subject>/ct.nii.gz); name one with --layout"
    )


def discover(
    source: Path,
    layout: Layout,
    organ_names: tuple[str, ...] = (),
    organ_labels: tuple[int, ...] = (),
    lesion_labels: tuple[int, ...] = (),
    need_lesion: bool = True,
) -> tuple[Layout, list[Case]]:
    """Cases of ``source`` in a stable (sorted) order. ``need_lesion`` False (``--inject``) lets layouts without
    lesion labels through."""
    if not source.exists():
        raise StudyError(f"{source}: not found")
    if layout == Layout.auto:
        layout = detect(source)
    if organ_names and organ_labels:
        raise StudyError("--organ and --organ-labels: give one of them")
    if layout == Layout.totalsegmentator:
        cases = _totalsegmentator(source, organ_names or TOTALSEG_ORGANS, organ_labels)
    elif layout == Layout.kits:
        cases = _kits(source, organ_names, organ_labels, lesion_labels)
    elif layout == Layout.nnunet:
        cases = _nnunet(source, organ_names, organ_labels, lesion_labels, need_lesion)
    else:
        cases = _csv(source, organ_labels, lesion_labels)
    if not cases:
        raise StudyError(f"{source}: no cases found for layout {layout.value}")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise StudyError(f"{source}: case name {dup!r} used twice")
    return layout, cases


def _totalsegmentator(source: Path, organs: tuple[str, ...], organ_labels: tuple[int, ...]) -> list[Case]:
    if organ_labels:
        raise StudyError("totalsegmentator layout: organs are structure names (--organ kidney_left,...), not ids")
    subjects = [source] if (source / "ct.nii.gz").exists() else sorted(p for p in source.iterdir() if p.is_dir())
    cases = []
    for subject in subjects:
        if not (subject / "ct.nii.gz").exists() and not (subject / "segmentations").is_dir():
            continue  # not a subject folder
        files = tuple(subject / "segmentations" / f"{name}.nii.gz" for name in organs)
        cases.append(Case(safe_name(subject.name), subject / "ct.nii.gz", MaskSpec(files, (), organs), None))
    return cases


def _ids(names: tuple[str, ...], table: dict[str, int], where: str) -> tuple[int, ...]:
    unknown = [n for n in names if n not in table]
    if unknown:
        raise StudyError(f"{where}: unknown label name {unknown[0]!r} (known: {', '.join(sorted(table))})")
    return tuple(sorted({table[n] for n in names}))


def _kits(
    source: Path, organ_names: tuple[str, ...], organ_labels: tuple[int, ...], lesion_labels: tuple[int, ...]
) -> list[Case]:
    organ = organ_labels or (_ids(organ_names, KITS_LABELS, "--organ (KiTS)") if organ_names else KITS_ORGAN)
    lesion = lesion_labels or KITS_LESION
    cases = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and (p / "imaging.nii.gz").exists()):
        seg = folder / "segmentation.nii.gz"
        cases.append(
            Case(safe_name(folder.name), folder / "imaging.nii.gz", MaskSpec((seg,), organ), MaskSpec((seg,), lesion))
        )
    return cases


def _nnunet(
    source: Path,
    organ_names: tuple[str, ...],
    organ_labels: tuple[int, ...],
    lesion_labels: tuple[int, ...],
    need_lesion: bool,
) -> list[Case]:
    meta_path = source / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
        table = {str(k): int(v) for k, v in meta.get("labels", {}).items() if isinstance(v, int)}
        ending = str(meta.get("file_ending", ".nii.gz"))
    except (OSError, ValueError, AttributeError) as exc:
        raise StudyError(f"{meta_path}: unreadable dataset.json ({exc})") from None
    organ = organ_labels or (_ids(organ_names, table, f"--organ ({meta_path})") if organ_names else ())
    if need_lesion and not lesion_labels:
        labels = ", ".join(f"{k}={v}" for k, v in table.items())
        raise StudyError(f"{meta_path}: nnunet layout needs --lesion-labels (dataset.json labels: {labels})")
    cases = []
    suffix = "_0000" + ending
    for image in sorted((source / "imagesTr").glob("*" + suffix)):
        name = image.name[: -len(suffix)]
        seg = source / "labelsTr" / (name + ending)
        cases.append(
            Case(
                safe_name(name),
                image,
                MaskSpec((seg,), organ) if organ else None,
                MaskSpec((seg,), lesion_labels) if lesion_labels else None,
            )
        )
    return cases


def _csv(source: Path, organ_labels: tuple[int, ...], lesion_labels: tuple[int, ...]) -> list[Case]:
    try:
        with source.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise StudyError(f"{source}: cannot read the CSV ({exc})") from None
    for required in ("volume", "label"):
        if required not in columns:
            raise StudyError(f"{source}: missing required column '{required}' (header: {','.join(columns)})")
    base = source.parent
    cases = []
    for number, raw in enumerate(rows, start=1):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{source}: row {number}"
        if not row["volume"]:
            raise StudyError(f"{where}: empty volume path")
        if row["label"] not in ("0", "1"):
            raise StudyError(f"{where} ({row['volume']}): label {row['label']!r} is not 0 or 1")
        split = row.get("split", "") or None
        if split is not None and split not in SPLITS:
            raise StudyError(f"{where} ({row['volume']}): unknown split {split!r} (use {', '.join(SPLITS)})")
        volume = base / row["volume"]
        name = row.get("case", "") or re.sub(r"(\.nii(\.gz)?)$", "", volume.name)
        organ = MaskSpec((base / row["organ"],), organ_labels) if row.get("organ") else None
        lesion = MaskSpec((base / row["lesion"],), lesion_labels) if row.get("lesion") else None
        cases.append(Case(safe_name(name), volume, organ, lesion, int(row["label"]), split, where))
    return cases
