"""Checkpoints and JSON records: plain dicts of state dicts, settings and tensors, written atomically and loaded
with ``weights_only=True`` (no pickled objects)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from coinseg.errors import RunError
from coinseg.io.files import atomic_file, write_text


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name in the same folder, then rename (never a half-written checkpoint). A full
    disk is reported as such (torch's own error says only 'unexpected pos') and the temporary file is removed."""
    with atomic_file(path) as tmp, tmp.open("wb") as handle:
        writer = _Writer(handle)
        try:
            torch.save(state, writer)  # type: ignore[arg-type]
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


class _Writer:
    """A file's ``write``/``flush`` that keeps the OS error torch's zip writer turns into a RuntimeError."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return int(self.handle.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint dict (tensors on the CPU); :class:`RunError` naming the file if missing or unreadable."""
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
        raise RunError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` as indented JSON, atomically (non-JSON values as their ``str``)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every global random state a training step on ``device`` may draw from: torch CPU, the CUDA state of that
    device only (so a run resumes on any number of GPUs), numpy and Python's ``random``; stored in ``last.pt`` so
    that ``--resume`` continues exactly."""
    import random

    import numpy as np

    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device)[None] if device.type == "cuda" else None,
        "numpy": _numpy_state(np.random.get_state()),
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`rng_state` on ``device`` (a CUDA state is ignored on the CPU)."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0], device)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def _numpy_state(state: Any) -> tuple[str, torch.Tensor, int, int, float]:
    """numpy's legacy RNG state with its key array as a tensor (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = state
    return str(kind), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)
