"""Pictures for people: class colours, anomaly heatmaps and overlays (RGB uint8 arrays)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np


def colorize(classes: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class indices → (H, W, 3) RGB; indices outside the palette are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[classes.astype(np.uint8)]


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
