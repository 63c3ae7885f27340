"""What every benchmark of ``cosme bench`` shares: timing summaries, ratios, the clock, memory
readings, the machine's description and the frames to run on."""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch


Size = Tuple[int, int]


NODE_STAGES = ("decode", "encode", "publish")


SCORER_KS = (128, 512, 2048)


SWEEP_SIZES: Tuple[Size, ...] = ((256, 512), (512, 1024), (1024, 2048))


R101_TAPS = ("c4", "c5", "lh")  # the MulMem layers, on DeepLabV3+ R101 at output stride 16


def summary(samples_s: Sequence[float]) -> Dict[str, float]:
    """Seconds → ``{"median", "p95", "mean"}`` in milliseconds (p95: linear interpolation)."""
    if not samples_s:
        raise ValueError("no samples")
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "median": round(float(np.median(ms)), 3),
        "p95": round(float(np.percentile(ms, 95)), 3),
        "mean": round(float(ms.mean()), 3),
    }


def ratio(numerator_ms: float, denominator_ms: float) -> float:
    return round(float(numerator_ms) / float(denominator_ms), 4) if denominator_ms > 0 else math.inf


def rss_mb() -> float:
    """Resident set size now, MiB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size, MiB: ``VmHWM`` (resettable, :func:`reset_peak_rss`), else the
    process's lifetime ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0, ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> Dict[str, Any]:
    """Library versions, CPU, threads and the bf16 capability that ``precision=auto`` reads."""
    import cv2
    from cosme_ros.runtime.networks import native_bf16

    env = {
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "cv2": cv2.__version__,
            "python": platform.python_version(),
        },
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(device),
        "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


class Clock:
    """Wall-clock and process CPU time, synchronising CUDA first so that a stage's kernels are
    counted in that stage."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @staticmethod
    def cpu() -> float:
        return time.process_time()


def synthetic_frames(n: int, size: Size, seed: int = 0) -> List[np.ndarray]:
    """``n`` test frames of the synthetic urban world (with anomalies) at ``size``."""
    from cosme_ros.data.synth.frame import render_frame

    return [render_frame(seed, "test", i, size=tuple(size)).image for i in range(n)]


def folder_frames(folder: str | Path, n: int, size: Optional[Size] = None) -> List[np.ndarray]:
    """Up to ``n`` images of ``folder`` (sorted), RGB, resized to ``size`` (H, W) if given."""
    import cv2
    from cosme_ros.data.images import list_images, read_rgb
    from cosme_ros.errors import InputError

    paths = list_images(folder)[: max(1, n)]
    if not paths:
        raise InputError(f"{folder}: no images")
    out = []
    for p in paths:
        im = read_rgb(p)
        if size is not None and im.shape[:2] != tuple(size):
            h, w = size
            im = cv2.resize(
                im, (w, h), interpolation=cv2.INTER_AREA if im.shape[0] > h else cv2.INTER_LINEAR
            )
        out.append(np.ascontiguousarray(im))
    return out
