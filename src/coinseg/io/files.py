"""Outputs that appear whole or not at all: one atomic writer for files, one for folders.

A file is written to a temporary name in its own folder and renamed over the target only once complete, so a
crash, a full disk or a kill never leaves a half-written file under the final name. A disk that is full or
read-only, or a folder without write permission, is reported as a :class:`~coinseg.errors.RunError` naming the
path (the temporary file is removed).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coinseg import __version__
from coinseg.errors import RunError

# The ownership marker: every folder coinseg makes holds this small JSON file, written first; coinseg resumes
# into, adds to or removes only folders that hold it.
MARKER = ".coinseg"

# Filesystem failures a user can fix (free space, permissions, a read-only mount): one line, no traceback.
USER_FS_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}


def filesystem_error(path: Path, exc: OSError) -> RunError:
    """A one-line :class:`RunError` for an OS error writing ``path``."""
    reason = "no space left on the device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
    return RunError(f"{path}: cannot write ({reason})")


@contextmanager
def user_fs_errors(path: Path, creating: bool = False) -> Iterator[None]:
    """Turn an OS error a user can fix (:data:`USER_FS_ERRORS`) while writing ``path`` into a one-line
    :class:`RunError`; any other error propagates. ``creating``: also a FileExistsError (a file where a folder of
    the path should be)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in USER_FS_ERRORS or (creating and isinstance(exc, FileExistsError)):
            raise filesystem_error(path, exc) from None
        raise


@contextmanager
def atomic_file(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (ending in ``suffix``, e.g. ``.nii.gz`` for writers that choose the
    format by name); on success it replaces ``path``, on any error it is removed."""
    with user_fs_errors(path, creating=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with user_fs_errors(path):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def spreadsheet_safe(text: str) -> str:
    """A CSV cell that a spreadsheet will not run as a formula: text starting with ``=``, ``+``, ``-``, ``@``, a
    tab or a carriage return gets a leading apostrophe (the OWASP rule for CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def is_owned(path: Path) -> bool:
    """True when ``path`` is a folder that coinseg made (it holds the ownership marker)."""
    return (path / MARKER).is_file()


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as made by coinseg (``kind``: what it holds, e.g. ``gan-run``, ``segment``)."""
    write_text(folder / MARKER, json.dumps({"kind": kind, "coinseg": __version__}) + "\n")


def check_empty_target(out_dir: Path) -> None:
    """Raise FileExistsError when ``out_dir`` exists and is not an empty folder."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: exists and is not empty")


@contextmanager
def atomic_dir(out_dir: Path, kind: str) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it is renamed to ``out_dir``, on error removed.

    ``out_dir`` must not exist or be an empty folder (checked before and again at the rename); the result holds
    the ownership marker of ``kind``.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"{out_dir}: is a file; --out must name a folder")
    check_empty_target(out_dir)
    with user_fs_errors(out_dir, creating=True):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    try:
        with user_fs_errors(out_dir):
            write_marker(tmp, kind)
            yield tmp
            check_empty_target(out_dir)
            if out_dir.exists():
                out_dir.rmdir()
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
