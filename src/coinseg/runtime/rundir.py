"""Output folders coinseg owns, and a training run's folder.

Ownership: coinseg writes only into a folder that is new, empty, or one it made itself. Every folder it makes
gets an ownership marker (:data:`coinseg.io.files.MARKER`, a small JSON file) first; only folders with that marker are ever
resumed into or removed. A lock file refuses a second concurrent run into the same folder, and an output folder
may not be an input's folder.

A run directory holds ``config.yaml``, ``checkpoints/{last,best}.pt``, ``metrics.csv``, ``progress.png``,
``log.txt`` and ``run.json``.
"""

from __future__ import annotations

import csv
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from coinseg import __version__
from coinseg.config import Settings, save_settings, settings_to_dict
from coinseg.errors import RunError
from coinseg.io.files import atomic_file, is_owned, user_fs_errors, write_marker
from coinseg.runtime.checkpoint import write_json
from coinseg.runtime.console import console

LOCK = ".coinseg.lock"


def claim_folder(path: Path, kind: str, inputs: tuple[Path, ...] = ()) -> None:
    """Make ``path`` a coinseg output folder of ``kind``, or accept it if coinseg already owns it.

    Refuses (one-line :class:`RunError`): a file; a non-empty folder coinseg did not make; the folder of an input
    or a folder holding an input. Writes the marker first, so a folder is never left half-claimed.
    """
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: is a file; --out must name a folder")
    resolved = path.resolve()
    for source in inputs:
        folder = source.resolve() if source.is_dir() else source.resolve().parent
        if resolved == folder or resolved in folder.parents:
            raise RunError(f"{path}: is the folder of an input ({source}); choose an --out outside the input folders")
    if path.is_dir():
        if is_owned(path):
            return
        if any(path.iterdir()):
            raise RunError(f"{path}: exists, is not empty and was not made by coinseg; choose another --out")
    with user_fs_errors(path, creating=True):
        path.mkdir(parents=True, exist_ok=True)
        write_marker(path, kind)


def remove_owned(path: Path) -> None:
    """Delete ``path`` only if coinseg made it (marker present); otherwise a :class:`RunError`."""
    if not path.exists():
        return
    if not is_owned(path):
        raise RunError(f"{path}: exists but was not made by coinseg; move it away or choose another --out")
    shutil.rmtree(path)


def versions() -> dict[str, str]:
    import lightning
    import numpy

    return {
        "coinseg": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
    }


def git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def settings_difference(
    old: dict[str, Any], new: dict[str, Any], ignore: frozenset[str] = frozenset(), prefix: str = ""
) -> str | None:
    """The first setting that differs between two settings mappings, as ``key: old -> new`` (None if equal);
    dotted keys in ``ignore`` are not compared."""
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if f"{prefix}{key}" in ignore:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            found = settings_difference(a, b, ignore, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} -> {b!r}"
    return None


class RunDir:
    """A training run's folder, claimed and locked for the lifetime of the object.

    ``resume=False`` refuses a folder that already holds checkpoints; ``resume=True`` needs a checkpoint and the
    same settings as the run being resumed (checked before anything is written), except the dotted keys in
    ``extendable`` (e.g. ``gan.max_steps``, a stopping rule that does not change the steps before it).
    """

    def __init__(
        self,
        path: Path,
        settings: Settings,
        resume: bool,
        kind: str,
        inputs: tuple[Path, ...] = (),
        extendable: frozenset[str] = frozenset(),
    ) -> None:
        self.check(path, resume)
        claim_folder(path, kind, inputs)
        self._lock = FileLock(str(path / LOCK))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunError(f"{path}: another coinseg run is writing into this folder") from None
        self.path = path
        config = path / "config.yaml"
        if resume:
            from coinseg.config import load_settings

            stored = settings_to_dict(load_settings(config))
            difference = settings_difference(stored, settings_to_dict(settings), extendable)
            if difference:
                self._lock.release()
                raise RunError(f"{path}: --resume with other settings than the run's ({difference}); resume as is")
        self.checkpoints = path / "checkpoints"
        self.checkpoints.mkdir(exist_ok=True)
        if not resume:
            for name in ("metrics.csv", "log.txt", "run.json"):
                (path / name).unlink(missing_ok=True)
        with atomic_file(config) as tmp:
            save_settings(settings, tmp)
        self._log = (path / "log.txt").open("a")
        self.started = time.time()

    @staticmethod
    def check(path: Path, resume: bool) -> None:
        """Refuse to overwrite a run without --resume, or to resume a run that has no checkpoint; refuse a file
        as the run folder (before any data are loaded)."""
        if path.exists() and not path.is_dir():
            raise RunError(f"{path}: is a file; --out must name a folder")
        last = path / "checkpoints" / "last.pt"
        if resume and not (last.is_file() and is_owned(path)):
            raise RunError(f"{path}: --resume given but there is no coinseg checkpoint to resume from ({last})")
        if not resume and last.is_file():
            raise RunError(f"{path}: already holds a run; use --resume to continue or another --out")

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def log(self, message: str) -> None:
        """Append a timestamped line to log.txt and print it."""
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self._log.flush()
        console.print(message, highlight=False)

    def _read_metrics(self) -> tuple[list[str], list[dict[str, str]]]:
        path = self.path / "metrics.csv"
        if not path.is_file():
            return [], []
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)

    def _write_metrics(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        with atomic_file(self.path / "metrics.csv") as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.csv. A row with a column not seen before rewrites the file with the union
        header (rare: the first validation row); every other row is appended in place."""
        path = self.path / "metrics.csv"
        columns, _ = self._read_metrics() if path.is_file() else ([], [])
        if columns and set(row) <= set(columns):
            with path.open("a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=columns).writerow(row)
            return
        columns, rows = self._read_metrics()
        self._write_metrics(list(dict.fromkeys([*columns, *row])), [*rows, row])

    def trim_metrics(self, step: int) -> None:
        """Drop metrics.csv rows after ``step`` (the checkpoint being resumed), so a resumed run logs each step
        once."""
        columns, rows = self._read_metrics()
        if rows:
            self._write_metrics(columns, [r for r in rows if int(float(r["step"])) <= step])

    def write_run_json(self, device: torch.device, extra: dict[str, Any]) -> None:
        info = {
            "versions": versions(),
            "git": git_hash(),
            "device": str(device),
            "command": " ".join(sys.argv),
            "seconds": round(time.time() - self.started, 1),
            **extra,
        }
        write_json(info, self.path / "run.json")

    def close(self) -> None:
        self._log.close()
        self._lock.release()


class Deadline:
    """``--max-minutes``: ``expired()`` turns true once the budget is spent (None = no limit)."""

    def __init__(self, minutes: float | None) -> None:
        self.end = None if minutes is None else time.monotonic() + 60.0 * minutes

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end
