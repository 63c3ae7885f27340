"""Helpers for tests on the real data in ../shared/data (checkpoints, frames)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest


def need(root: Path, rel: str) -> Path:
    """``root / rel``, or skip the test naming the absent file."""
    path = root / rel
    if not path.exists():
        pytest.skip(f"{path} is absent from the shared data")
    return path


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    """The message of an expected import error: one line that names ``path``."""
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg
