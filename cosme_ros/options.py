"""The choices and defaults that several shells offer, in one place (no torch, no rclpy).

The node's parameter table (:mod:`cosme_ros.ros.node`), the command line (:mod:`cosme_ros.cli`)
and the core (:mod:`cosme_ros.runtime.pipeline`, :mod:`cosme_ros.bundle`) read them from here, so that a
device, a precision or the meaning of ``auto`` cannot differ between them.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

#: Torch devices: ``auto`` is CUDA when available, else the CPU.
DEVICES: Tuple[str, ...] = ("auto", "cpu", "cuda")
#: Network precisions this build runs (``auto``: bf16 on CPUs with native bf16, else fp32).
PRECISIONS: Tuple[str, ...] = ("auto", "fp32", "bf16")
#: Precisions of the compiled GPU engines (issue "Compiled engines"), named but not runnable here.
ENGINE_PRECISIONS: Tuple[str, ...] = ("fp16",)
#: The method name that stands for the bundle's default (:func:`cosme_ros.anomaly.registry.default_method`).
AUTO_METHOD = "auto"
#: Anomaly-map refinements (:mod:`cosme_ros.anomaly.refine`); ``none`` is the paper's.
REFINEMENTS: Tuple[str, ...] = ("none", "guided")
#: Output image sizes: the camera's or the network input's.
OUTPUT_RESOLUTIONS: Tuple[str, ...] = ("input", "network")


def parse_threshold(value: Any, from_text: bool = False) -> Optional[float]:
    """An anomaly threshold → a finite number, or None for ``auto`` (the bundle's calibrated
    threshold for the method, :mod:`cosme_ros.tools.calibrate`). ``from_text``: a command-line
    string that may spell a number; otherwise (a ROS parameter) numbers must be numbers.
    Raises ValueError with the reason."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return None
        if not from_text:
            raise ValueError(f"{value!r} is neither 'auto' nor a number")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is neither 'auto' nor a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not finite")
        return number
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return float(value)
    raise ValueError(f"{value!r} is neither 'auto' nor a number")
