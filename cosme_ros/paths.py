"""Where the package finds its own files; imports nothing heavy (no torch, no rclpy)."""
from __future__ import annotations

from pathlib import Path


def default_bundle_path() -> Path:
    """The demo bundle that the node, replay and demo use when none is given:
    ``share/cosme_ros/models/demo`` of an installed package (colcon), else ``models/demo`` of the
    repository this package was imported from (editable ``.venv``)."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("cosme_ros")) / "models" / "demo"
    except (ImportError, LookupError, OSError, ValueError):
        return Path(__file__).resolve().parents[1] / "models" / "demo"
