"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# Real data for development and tests lives beside the repository, never inside it (../shared/data).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data directory {SHARED_DATA} is absent (real checkpoints and images "
            f"live in ../shared/data beside the repository)"
        )
    return SHARED_DATA
