"""The atomic writers: whole or nothing, filesystem errors as one line, spreadsheet-safe cells."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from coinseg.errors import RunError
from coinseg.io.files import MARKER, atomic_dir, atomic_file, spreadsheet_safe


def test_atomic_file_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_full_disk_is_one_line_and_removes_the_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no space left"), atomic_file(tmp_path / "x.pt") as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_marks_and_refuses_a_file(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out", "segment") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "out" / MARKER).is_file()
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunError, match="is a file"), atomic_dir(tmp_path / "f", "segment"):
        pass


@pytest.mark.parametrize(
    ("cell", "safe"),
    [("=HYPERLINK(1)", "'=HYPERLINK(1)"), ("+1", "'+1"), ("-1", "'-1"), ("@x", "'@x"), ("a=b", "a=b")],
)
def test_spreadsheet_safe(cell: str, safe: str) -> None:
    assert spreadsheet_safe(cell) == safe


def test_atomic_files_get_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    import os

    with atomic_file(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    (tmp_path / "b.txt").write_text("x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == os.stat(tmp_path / "b.txt").st_mode & 0o777
