"""Atomic writes: a reader sees the old file or the complete new one, never a half-written file.

Every output of the offline tools goes through here (temporary file in the same directory, fsync,
``os.replace``), so an interrupted command leaves no truncated artifact behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from cosme_ros.errors import CosmeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_default_mode(path: str | Path) -> None:
    """The mode a plain ``open()`` would have given: mkstemp/mkdtemp make owner-only files."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())


def check_writable(path: str | Path, force: bool) -> Path:
    """Refuse to replace an existing output unless ``force`` is given, and an output whose folder
    cannot be written (read-only, no permission, no space for a file): checked by creating and
    removing a file there, before any work — a training run must not end in a failed save."""
    path = Path(path)
    if path.exists() and not force:
        raise CosmeError(f"{path}: already exists (use --force to overwrite)")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent   # the output's folders are made later, inside this one
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CosmeError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                                   dir=path.parent)
    except OSError as exc:
        raise CosmeError(f"{path}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        give_default_mode(tmp)
        os.replace(tmp, path)
    except OSError as exc:   # disk full, read-only, …: one line naming the output
        raise CosmeError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Build a whole directory in a temporary sibling, then move it into place.

    With ``force`` an existing directory is replaced only after the new one is complete.
    """
    path = Path(path)
    check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        give_default_mode(tmp)
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the complete directory ``src`` to ``dst``, replacing what is there.

    An existing ``dst`` is moved aside first and deleted only once ``src`` is in place, so a
    crash leaves either the old or the new directory under ``dst`` (or the old one beside it).
    """
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
