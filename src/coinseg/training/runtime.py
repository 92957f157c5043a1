"""What both trainers share: Fabric (device and precision), the run directory, checkpoints and progress.

A run directory holds ``config.yaml``, ``checkpoints/{last,best}.pt``, ``metrics.csv``, ``progress.png``,
``log.txt`` and ``run.json``. Checkpoints are plain dicts of state dicts, settings and tensors, written
atomically and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from coinseg import __version__
from coinseg.config import DeviceChoice, Precision, Settings, save_settings

console = Console(stderr=True)


class RunError(ValueError):
    """A run directory or checkpoint problem the user can fix (message names the path)."""


def make_fabric(device: DeviceChoice | str, precision: Precision) -> Fabric:
    """One-device Fabric. ``auto`` picks CUDA when available. Mixed precision is CUDA-only (autocast on CPU is
    slower than float32 for these networks), so asking for it on a CPU is an error."""
    device = DeviceChoice(device)
    if device is DeviceChoice.cuda and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    accelerator = (
        "cuda" if device is DeviceChoice.cuda or (device is DeviceChoice.auto and torch.cuda.is_available()) else "cpu"
    )
    if accelerator == "cpu" and precision is not Precision.fp32:
        raise RunError(f"--precision {precision.value} needs a CUDA device; use 32 on the CPU")
    fabric = Fabric(accelerator=accelerator, devices=1, precision=precision.value)
    if accelerator == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return fabric


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


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name in the same folder, then rename (never a half-written checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise RunError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None


def write_json(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class RunDir:
    """A training run's folder. ``resume=False`` refuses a folder that already holds checkpoints."""

    def __init__(self, path: Path, settings: Settings, resume: bool) -> None:
        self.check(path, resume)
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_settings(settings, path / "config.yaml")
        self._log = (path / "log.txt").open("a")
        self.started = time.time()

    @staticmethod
    def check(path: Path, resume: bool) -> None:
        """Refuse to overwrite a run without --resume, or to resume a run that has no checkpoint."""
        last = path / "checkpoints" / "last.pt"
        if resume and not last.is_file():
            raise RunError(f"{path}: --resume given but there is no checkpoint to resume from ({last})")
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

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.csv; the header is the union of all columns seen so far."""
        path = self.path / "metrics.csv"
        rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)

    def write_run_json(self, fabric: Fabric, extra: dict[str, Any]) -> None:
        info = {
            "versions": versions(),
            "git": git_hash(),
            "device": str(fabric.device),
            "command": " ".join(sys.argv),
            "seconds": round(time.time() - self.started, 1),
            **extra,
        }
        write_json(info, self.path / "run.json")

    def close(self) -> None:
        self._log.close()


@contextmanager
def progress_bar(description: str, total: int, completed: int = 0) -> Iterator[tuple[Progress, Any]]:
    """A rich progress bar (steps, elapsed, a free ``info`` text field for loss and throughput)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed, info="")
        yield progress, task


class Deadline:
    """``--max-minutes``: ``expired()`` turns true once the budget is spent (None = no limit)."""

    def __init__(self, minutes: float | None) -> None:
        self.end = None if minutes is None else time.monotonic() + 60.0 * minutes

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end
