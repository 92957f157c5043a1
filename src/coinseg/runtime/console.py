"""One console (stderr) and the progress bar every long step shows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


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
