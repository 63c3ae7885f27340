"""Pictures for people from one pipeline result: class colours, anomaly heatmaps, overlays, and
the node's five output images (numpy and OpenCV only; no rclpy).

:func:`render_outputs` draws exactly the outputs asked for, so that an image nobody subscribes to
costs nothing. :class:`RunningRange` keeps the heatmap's colour scale steady from frame to frame.
"""

from __future__ import annotations

import math
from typing import Collection, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

#: output key → (topic, encoding), in publishing order
OUTPUTS: Dict[str, Tuple[str, str]] = {
    "class_mask": ("segmentation/class_mask", "mono8"),
    "color": ("segmentation/color", "rgb8"),
    "score": ("anomaly/score", "32FC1"),
    "mask": ("anomaly/mask", "mono8"),
    "heatmap": ("anomaly/heatmap", "rgb8"),
}


class RunningRange:
    """A heatmap colour range that follows the scores slowly instead of jumping every frame.

    Each frame's 1st/99th score percentiles (on a subsample: cheap at any resolution) move the
    range by ``rate`` of the difference — an exponential moving average over ~1/rate frames — so
    one frame with a large anomaly does not repaint every other pixel a different colour, the
    flicker that per-frame percentiles cause. The first frame sets the range outright.
    """

    def __init__(
        self,
        rate: float = 0.05,
        low_pct: float = 1.0,
        high_pct: float = 99.0,
        max_samples: int = 20000,
    ):
        self.rate, self.low_pct, self.high_pct = rate, low_pct, high_pct
        self.max_samples = max_samples
        self.lo: Optional[float] = None
        self.hi: Optional[float] = None

    def update(self, score: np.ndarray) -> Tuple[float, float]:
        stride = max(1, int(math.sqrt(score.size / self.max_samples)))
        sample = score[::stride, ::stride]
        sample = sample[np.isfinite(sample)]
        if sample.size:
            lo, hi = (float(v) for v in np.percentile(sample, [self.low_pct, self.high_pct]))
            if self.lo is None or self.hi is None:
                self.lo, self.hi = lo, hi
            else:
                self.lo += self.rate * (lo - self.lo)
                self.hi += self.rate * (hi - self.hi)
        if self.lo is None or self.hi is None:
            return 0.0, 1.0
        return self.lo, max(self.hi, self.lo + 1e-6)


def colorize(classes: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class indices → (H, W, 3) RGB; indices outside the palette are black. Through
    ``cv2.LUT``: ~7x faster at 720p than numpy's fancy indexing (this runs for every frame)."""
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[: len(palette), 0] = np.asarray(palette, np.uint8)
    index = np.ascontiguousarray(classes, np.uint8)
    return cv2.LUT(cv2.merge([index, index, index]), lut)


def threshold_mask(score: np.ndarray, threshold: float) -> np.ndarray:
    """255 where ``score > threshold``, else 0 (NaN: 0), uint8 — numpy's ``score > threshold``
    for float32 scores (the threshold rounded to float32, NEP 50), at ~30x its speed."""
    _, mask = cv2.threshold(
        np.ascontiguousarray(score, np.float32),
        float(np.float32(threshold)),
        255.0,
        cv2.THRESH_BINARY,
    )
    return mask.astype(np.uint8)


def render_outputs(
    rgb: np.ndarray,
    classes: np.ndarray,
    score: np.ndarray,
    wanted: Collection[str],
    *,
    threshold: float,
    alpha: float,
    palette: Sequence[Sequence[int]],
    heat_range: Tuple[float, float] = (0.0, 1.0),
) -> Dict[str, Tuple[np.ndarray, str]]:
    """output key → (array, encoding) for the keys in ``wanted``.

    ``classes`` and ``score`` are at the output resolution; ``rgb`` (the camera frame, for the
    heatmap blend) is resized to it where it differs (``output_resolution: network``).
    """
    out: Dict[str, Tuple[np.ndarray, str]] = {}
    if "class_mask" in wanted:
        out["class_mask"] = (classes, "mono8")
    if "color" in wanted:
        out["color"] = (colorize(classes, palette), "rgb8")
    if "score" in wanted:
        out["score"] = (score, "32FC1")
    if "mask" in wanted:
        out["mask"] = (threshold_mask(score, threshold), "mono8")
    if "heatmap" in wanted:
        h, w = score.shape[:2]
        base = (
            rgb
            if rgb.shape[:2] == (h, w)
            else cv2.resize(
                rgb, (w, h), interpolation=cv2.INTER_AREA if rgb.shape[0] > h else cv2.INTER_LINEAR
            )
        )
        lo, hi = heat_range
        out["heatmap"] = (blend(base, heatmap(score, lo, hi), alpha), "rgb8")
    return out


def score_range(
    score: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0
) -> Tuple[float, float]:
    """A robust display range for one score map (its 1st–99th percentile)."""
    finite = score[np.isfinite(score)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    return float(lo), (float(hi) if hi > lo else float(lo) + 1e-6)


def heatmap(
    score: np.ndarray, lo: Optional[float] = None, hi: Optional[float] = None
) -> np.ndarray:
    """Score → RGB with the JET colour map over [lo, hi] (default: :func:`score_range`)."""
    if lo is None or hi is None:
        lo, hi = score_range(score)
    scaled = np.clip((np.nan_to_num(score, nan=lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # applyColorMap returns BGR


def blend(base_rgb: np.ndarray, top_rgb: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 − alpha)·base + alpha·top`` in uint8, both (H, W, 3)."""
    return cv2.addWeighted(base_rgb, 1.0 - alpha, top_rgb, alpha, 0.0)


def overlay(
    image_rgb: np.ndarray,
    classes: np.ndarray,
    score: np.ndarray,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
) -> np.ndarray:
    """Side by side: camera + class colours | camera + anomaly heatmap."""
    seg = blend(image_rgb, colorize(classes, palette), alpha)
    heat = blend(image_rgb, heatmap(score), alpha)
    return np.concatenate([seg, heat], axis=1)
