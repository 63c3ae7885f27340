"""Where the package finds its own files; imports nothing heavy (no torch, no rclpy)."""

from __future__ import annotations

from pathlib import Path


def _package_file(*parts: str) -> Path:
    """``share/cosme_ros/<parts>`` of an installed package (colcon), else ``<parts>`` of the
    repository this package was imported from (editable ``.venv``)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("cosme_ros")).joinpath(*parts)
    except (ImportError, LookupError, OSError, ValueError):
        return Path(__file__).resolve().parents[1].joinpath(*parts)


def default_bundle_path() -> Path:
    """The demo bundle that the node, replay and demo use when none is given (``models/demo``)."""
    return _package_file("models", "demo")


def config_path(name: str) -> Path:
    """A file of the package's ``config/`` folder."""
    return _package_file("config", name)


def shared_data_path(*parts: str) -> Path:
    """``../shared/data/<parts>`` beside the repository this package was imported from: the
    development data (research licences; never copied into the repository)."""
    return Path(__file__).resolve().parents[2].joinpath("shared", "data", *parts)


def mobilenetv2_imagenet_path() -> Path:
    """The folder of the ImageNet MobileNetV2 weights in the shared development data."""
    return shared_data_path("backbones", "mobilenet_v2_1.0_imagenet")
