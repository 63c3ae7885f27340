"""Atomic writes: a reader sees the old file or the complete new one, never a half-written file.

Every output of the offline tools goes through here (temporary file in the same directory, fsync,
``os.replace``), so an interrupted command leaves no truncated artifact behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

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
        folder = folder.parent  # the output's folders are made later, inside this one
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
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
        )
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
    except OSError as exc:  # disk full, read-only, …: one line naming the output
        raise CosmeError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


#: What this module (and the writers built on mkstemp/mkdtemp like it) leave behind when killed:
#: ``.<name>.<8 random characters>.tmp[.<ext>]``, ``.cosme-outputs.<random>.tmp`` and the
#: ``.<name>.old`` of an interrupted :func:`replace_dir`.
_TEMPORARY = re.compile(
    r"^\.(.+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?|cosme-outputs\.[A-Za-z0-9_]+\.tmp|.+\.old)$"
)


def remove_temporaries(folder: str | Path, of: Optional[str] = None) -> List[Path]:
    """Remove the temporaries a killed writer left directly in ``folder`` (not below it) — only
    those of the output named ``of`` when given; returns what was removed. For resumed
    commands: the folder is theirs, no other writer is running in it."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if _TEMPORARY.match(entry.name) and (of is None or entry.name.startswith(f".{of}.")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


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


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM (delivered right after) while outputs are moved into place, so an
    interruption cannot fall between the renames of one command's outputs. Main thread only
    (elsewhere a no-op: signals go to the main thread anyway)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    main = threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs) if main else None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class OutputSet:
    """The files one command writes, staged under temporary names and renamed together.

    :meth:`file` gives the temporary path to write a target to: beside the target when its
    folder exists, else in a staging folder in the nearest existing ancestor (so that an
    interrupted command does not leave the target's folder behind, empty). :meth:`commit`
    creates missing folders and renames every file with SIGINT / SIGTERM held; :meth:`discard`
    removes the temporaries. As a context manager it commits on success and discards on any
    exception (``KeyboardInterrupt`` included): all of the outputs or none.
    """

    def __init__(self) -> None:
        self._items: List[Tuple[Path, Path]] = []
        self._stages: Dict[Path, Path] = {}

    def file(self, path: str | Path) -> Path:
        path = Path(path)
        if path.parent.is_dir():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            staged = Path(tmp)
        else:
            anchor = path.parent
            while not anchor.is_dir():
                anchor = anchor.parent
            if anchor not in self._stages:
                self._stages[anchor] = Path(
                    tempfile.mkdtemp(prefix=".cosme-outputs.", suffix=".tmp", dir=anchor)
                )
            staged = self._stages[anchor] / f"{len(self._items)}.{path.name}"
        self._items.append((staged, path))
        return staged

    def commit(self) -> None:
        with signals_deferred():
            for staged, path in self._items:
                with open(staged, "rb") as fh:  # on disk before the rename, as write_bytes
                    os.fsync(fh.fileno())
                path.parent.mkdir(parents=True, exist_ok=True)
                give_default_mode(staged)
                os.replace(staged, path)
        self._cleanup()

    def discard(self) -> None:
        for staged, _ in self._items:
            staged.unlink(missing_ok=True)
        self._cleanup()

    def _cleanup(self) -> None:
        for stage in self._stages.values():
            shutil.rmtree(stage, ignore_errors=True)
        self._items, self._stages = [], {}

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
