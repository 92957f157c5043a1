"""A checkpoint that does not fit on the disk: one line saying so, no temporary file left behind."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch

from coinseg.errors import RunError
from coinseg.runtime.checkpoint import save_checkpoint


class _FullDisk:
    """A binary file that accepts ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle: Any, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return int(self.handle.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def test_full_disk_is_one_line_and_the_temporary_file_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: _FullDisk(opened(self, *a, **k), room=1000))
    with pytest.raises(RunError, match=r"last.pt: cannot write \(no space left on the device\)"):
        save_checkpoint({"w": torch.zeros(100_000)}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_written_through_the_file_handle_loads_back(tmp_path: Path) -> None:
    state = {"w": torch.arange(10.0), "step": 3}
    save_checkpoint(state, tmp_path / "last.pt")
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], state["w"])
