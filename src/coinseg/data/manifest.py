"""The manifest contract: a CSV with ``image,label[,mask][,split][,slice][,organ]``, paths relative to the CSV.

Every problem is a :class:`ManifestError` whose one-line message names the manifest, the row (1 = first data
row, i.e. line 2 of the file) and the path. 3-D volumes without a ``slice`` column expand to one entry per axial
slice, each carrying the volume's label. ``slice`` counts along the file's own stored axis closest to
superior-inferior (see :mod:`coinseg.io.images`); for a ``coinseg prepare`` store (3-D ``.npy``) it indexes the
stored array's first axis. Each image file is opened once per manifest (``.npy`` stores are memory-mapped).
A 3-D ``.npy`` (a slice stack without geometry) needs the ``slice``
column. The file may start with a UTF-8 byte-order mark (as spreadsheets write it). The same image (and slice)
in several rows, or in two splits, is reported by :func:`duplicate_problems` (a warning when training, an error
with ``--strict-manifest``).
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from coinseg.errors import CoinsegError
from coinseg.io.images import ImageReadError, read_image, suffix_of

SPLITS = ("train", "val", "test")
REQUIRED = ("image", "label")


class ManifestError(CoinsegError):
    """The manifest is invalid; the message names the file, the row and the path."""


@dataclass(frozen=True)
class Entry:
    """One 2-D training/evaluation sample.

    ``image``: absolute path; ``source``: the path as written in the manifest; ``slice``: axial index inside a
    volume (None for 2-D files); ``mask``/``organ``: absolute paths or None; ``row``: 1-based data row.
    """

    image: Path
    source: str
    label: int
    split: str
    row: int
    slice: int | None = None
    mask: Path | None = None
    organ: Path | None = None


def default_split(name: str) -> str:
    """Deterministic split by file name: 70 % train, 15 % val, 15 % test (stable hash)."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 70 else ("val" if bucket < 85 else "test")


def read_manifest(path: Path, check_images: bool = True) -> list[Entry]:
    """Parse and validate ``path``. With ``check_images`` every image is opened once (shape and readability)."""
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder, expected a CSV file")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: cannot read the manifest as CSV ({exc})") from None
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ManifestError(f"{path}: missing required column '{missing[0]}' (header: {','.join(columns)})")
    if not rows:
        raise ManifestError(f"{path}: no data rows")
    base = path.parent
    entries: list[Entry] = []
    seen = _Seen(base)  # each file is located and opened once, however many rows point into it
    for number, raw in enumerate(rows, start=1):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        entries.extend(_parse_row(path, base, number, row, check_images, seen))
    return entries


@dataclass
class _Seen:
    """Per-manifest cache: resolved path and existence per path string, volume depth per image file."""

    base: Path
    located: dict[str, tuple[Path, bool]] = field(default_factory=dict)
    depths: dict[Path, tuple[int, bool, tuple[int, ...]]] = field(default_factory=dict)

    def locate(self, value: str) -> tuple[Path, bool]:
        if value not in self.located:
            resolved = (self.base / value).resolve()
            self.located[value] = (resolved, resolved.exists())
        return self.located[value]


def _parse_row(manifest: Path, base: Path, number: int, row: dict[str, str], check: bool, seen: _Seen) -> list[Entry]:
    where = f"{manifest}: row {number}"
    source = row.get("image", "")
    if not source:
        raise ManifestError(f"{where}: empty image path")
    image, exists = seen.locate(source)
    if not exists:
        raise ManifestError(f"{where}: image file not found: {source}")
    label_text = row.get("label", "")
    if label_text not in ("0", "1", "0.0", "1.0"):
        raise ManifestError(f"{where} ({source}): label {label_text!r} is not 0 or 1")
    label = int(float(label_text))
    split = row.get("split", "") or default_split(source)
    if split not in SPLITS:
        raise ManifestError(f"{where} ({source}): unknown split {split!r} (use {', '.join(SPLITS)})")
    optional: dict[str, Path | None] = {}
    for column in ("mask", "organ"):
        value = row.get(column, "")
        located, exists = seen.locate(value) if value else (None, True)
        optional[column] = located
        if not exists:
            raise ManifestError(f"{where} ({source}): {column} file not found: {value}")
        if value and (base / value).is_dir():
            raise ManifestError(f"{where} ({source}): {column} {value} is a folder, expected a file")
    slice_text = row.get("slice", "")
    index: int | None = None
    if slice_text:
        try:
            index = int(slice_text)
        except ValueError:
            raise ManifestError(f"{where} ({source}): slice {slice_text!r} is not an integer") from None
    depth = 0
    if check or suffix_of(image) in (".nii", ".nii.gz") or image.is_dir():
        if image not in seen.depths:
            try:
                loaded = read_image(image)
            except ImageReadError as exc:
                raise ManifestError(f"{where}: {exc}") from None
            stack = loaded.is_volume and loaded.affine is None  # a 3-D .npy: slices without geometry
            seen.depths[image] = (loaded.array.shape[0] if loaded.is_volume else 0, stack, loaded.array.shape)
        depth, stack, shape = seen.depths[image]
        if stack and index is None:
            raise ManifestError(
                f"{where} ({source}): a .npy is one 2-D slice, got shape {shape} "
                "(give a 'slice' column to address a 3-D .npy slice stack; volumes as NIfTI or DICOM)"
            )
        if depth:
            if index is not None and not 0 <= index < depth:
                raise ManifestError(f"{where} ({source}): slice {index} outside 0..{depth - 1}")
        elif index is not None:
            raise ManifestError(f"{where} ({source}): a slice index was given but the image is 2-D")
    common = dict(source=source, label=label, split=split, row=number, **optional)
    if depth and index is None:
        return [Entry(image=image, slice=k, **common) for k in range(depth)]  # type: ignore[arg-type]
    return [Entry(image=image, slice=index, **common)]  # type: ignore[arg-type]


def duplicate_problems(entries: list[Entry], manifest: Path) -> list[str]:
    """One-line descriptions of (1) the same image file (and slice) listed in more than one row and (2) the same
    image file (and slice) in more than one split (test results would not be independent of training). Each gives
    the count and the first row numbers; an empty list when there is neither."""
    rows: dict[tuple[Path, int | None], set[int]] = {}
    splits: dict[tuple[Path, int | None], set[str]] = {}
    for entry in entries:
        key = (entry.image, entry.slice)
        rows.setdefault(key, set()).add(entry.row)
        splits.setdefault(key, set()).add(entry.split)
    problems = []
    repeated = [sorted(r) for r in rows.values() if len(r) > 1]
    if repeated:
        extra = sum(len(r) - 1 for r in repeated)
        first = ", ".join(str(n) for n in sorted(repeated)[0][:5])
        problems.append(
            f"{manifest}: {len(repeated)} image(s) listed in more than one row ({extra} repeated rows; first: rows "
            f"{first})"
        )
    crossing = sorted(sorted(rows[k]) for k, s in splits.items() if len(s) > 1)
    if crossing:
        names = ", ".join(sorted({split for k, s in splits.items() if len(s) > 1 for split in s}))
        first = ", ".join(str(n) for n in crossing[0][:5])
        problems.append(
            f"{manifest}: {len(crossing)} image(s) in more than one split ({names}; first: rows {first}); "
            "test results are then not independent of training"
        )
    return problems


def select_split(entries: list[Entry], split: str, manifest: Path) -> list[Entry]:
    """Entries of ``split``; a :class:`ManifestError` if that split is empty."""
    if split not in SPLITS:
        raise ManifestError(f"{manifest}: unknown split {split!r} (use {', '.join(SPLITS)})")
    chosen = [e for e in entries if e.split == split]
    if not chosen:
        raise ManifestError(f"{manifest}: the '{split}' split is empty")
    return chosen


def training_splits(entries: list[Entry], manifest: Path) -> tuple[list[Entry], list[Entry], str | None]:
    """(train, val, note). Train must be non-empty with both labels. Without a ``val`` split, 15 % of the
    training images (chosen by file-name hash, so stable) become validation, and ``note`` says so."""
    train = select_split(entries, "train", manifest)
    counts = Counter(e.label for e in train)
    if len(counts) < 2:
        only = next(iter(counts))
        raise ManifestError(f"{manifest}: the 'train' split has only label {only} ({len(train)} rows)")
    val = [e for e in entries if e.split == "val"]
    if val:
        return train, val, None
    held = [e for e in train if default_split(e.source + "#val") == "val"]
    if not held or len({e.label for e in held}) < 2:
        raise ManifestError(f"{manifest}: no 'val' split and too few training rows to hold some out")
    held_set = set(held)
    kept = [e for e in train if e not in held_set]
    note = f"no 'val' split in {manifest.name}: held out {len(held)} of {len(train)} training rows for validation"
    return kept, held, note
