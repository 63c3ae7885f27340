"""Contact sheets of synthetic frames: image | trainId colours | anomaly mask over the image."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cosme_ros.data.cityscapes import trainid_to_color
from cosme_ros.data.synth.frame import Frame


def frame_row(frame: Frame) -> np.ndarray:
    img = frame.image
    seg = trainid_to_color(frame.semantic)
    seg[frame.semantic == 255] = (255, 255, 255)
    over = img.copy()
    hit = frame.anomaly == 1
    over[hit] = (0.35 * over[hit] + 0.65 * np.array([255, 0, 255])).astype(np.uint8)
    over[frame.anomaly == 255] = (0, 0, 0)
    gap = np.full((img.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([img, gap, seg, gap, over], axis=1)


def contact_sheet(frames: Sequence[Frame]) -> np.ndarray:
    """Rows of image | label colours (white = void/anomaly) | anomaly mask (magenta) — RGB."""
    rows = [frame_row(f) for f in frames]
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    out = []
    for r in rows:
        out += [r, gap]
    return np.concatenate(out[:-1], axis=0)
