"""Atomic writes leave complete files with ordinary permissions, or nothing."""

import os
import stat

import pytest

from cosme_ros import atomic
from cosme_ros.errors import CosmeError


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_file_has_the_umask_mode(tmp_path, umask_022):
    atomic.write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_directory_has_the_umask_mode_and_replaces_only_when_complete(tmp_path, umask_022):
    target = tmp_path / "bundle"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target, force=True) as tmp:
            (tmp / "x").write_text("2")
            raise RuntimeError("crash while building")
    assert (target / "x").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        with atomic.atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_without_force(tmp_path):
    (tmp_path / "c").write_text("old")
    with pytest.raises(CosmeError, match="--force"):
        atomic.check_writable(tmp_path / "c", force=False)
