"""cosme_ros.options: the choices the node and the CLI share, without torch or rclpy."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from cosme_ros.options import parse_threshold


def test_options_import_neither_torch_nor_rclpy():
    code = (
        "import sys, cosme_ros.options\n"
        "print(sorted(m for m in ('torch', 'rclpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_thresholds_from_parameters_and_from_text():
    assert parse_threshold("auto") is None and parse_threshold(" AUTO ") is None
    assert parse_threshold(2) == 2.0 and parse_threshold(-1.5) == -1.5
    assert parse_threshold("2.5", from_text=True) == 2.5
    for bad in ("2.5", True, None, math.nan, math.inf):  # a parameter: numbers must be numbers
        with pytest.raises(ValueError):
            parse_threshold(bad)
    for bad in ("two", "nan", "inf", "-inf"):
        with pytest.raises(ValueError):
            parse_threshold(bad, from_text=True)
