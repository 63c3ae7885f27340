"""Pictures made of several panels: the demo's rows and contact sheet, the ground-truth panel
of ``cosme evaluate``'s worst images, replay's side-by-side video frames (RGB uint8)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import cv2
import numpy as np

from cosme_ros.frames.render import blend, colorize

__all__ = ["compose_row", "contact_sheet", "sheet_indices", "side_by_side", "label_panel"]

GT_COLOUR = (0, 255, 255)  # ground-truth anomaly outline (RGB)
MASK_COLOUR = (255, 255, 255)
SHEET_ROWS = 4


def _outline(image: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return cv2.drawContours(image, contours, -1, colour, 1)


def _caption(panel: np.ndarray, text: str, bar: int) -> np.ndarray:
    h, w = panel.shape[:2]
    out = np.zeros((h + bar, w, 3), np.uint8)
    out[bar:] = panel
    scale = max(0.3, min(0.5, bar / 32))
    cv2.putText(
        out, text, (4, bar - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    return out


def compose_row(
    camera: np.ndarray,
    classes: np.ndarray,
    heat: np.ndarray,
    palette: Sequence[Sequence[int]],
    anomaly_gt: Optional[np.ndarray] = None,
    mask: Optional[np.ndarray] = None,
    titles: Sequence[str] = ("camera", "", ""),
) -> np.ndarray:
    """camera (ground-truth anomalies outlined) | segmentation over the camera | the node's
    anomaly heatmap (its thresholded mask outlined), each with a caption; RGB uint8."""
    cam = camera.copy()
    if anomaly_gt is not None:
        cam = _outline(cam, anomaly_gt == 1, GT_COLOUR)
    seg = blend(camera, colorize(classes, palette), 0.6)
    heat = np.ascontiguousarray(heat)
    if mask is not None:
        heat = _outline(heat.copy(), mask > 0, MASK_COLOUR)
    bar = 16 if camera.shape[0] < 160 else 22
    return np.concatenate([_caption(p, t, bar) for p, t in zip((cam, seg, heat), titles)], 1)


def sheet_indices(n: int, rows: int = SHEET_ROWS) -> List[int]:
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(rows, n))})


def contact_sheet(rows: Sequence[np.ndarray], gap: int = 3) -> np.ndarray:
    parts: List[np.ndarray] = []
    for row in rows:
        if parts:
            parts.append(np.full((gap, row.shape[1], 3), 40, np.uint8))
        parts.append(row)
    return np.concatenate(parts, 0)


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    """Panels in one row at the height of the last one (``replay``'s video: camera |
    segmentation | heatmap, where the camera may be larger than the output maps)."""
    h, w = panels[-1].shape[:2]
    fitted = [
        p
        if p.shape[:2] == (h, w)
        else cv2.resize(
            p, (w, h), interpolation=cv2.INTER_AREA if p.shape[0] > h else cv2.INTER_LINEAR
        )
        for p in panels
    ]
    return np.concatenate(fitted, axis=1)


def label_panel(image_rgb: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The ground truth over the image: anomaly red, void grey."""
    colour = np.zeros_like(image_rgb)
    colour[label == 1] = (255, 0, 0)
    colour[(label != 0) & (label != 1)] = (128, 128, 128)
    out = blend(image_rgb, colour, 0.5)
    out[label == 0] = image_rgb[label == 0]
    return out
