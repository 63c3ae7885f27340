"""Drawing primitives that paint colour, label and material in one go, never antialiased.

Every primitive writes the same pixels into ``rgb`` (flat colour, lit later), and into ``lm``
(channel 0: trainId or an internal anomaly code, channel 1: material, which picks the texture at
compositing time). ``shade`` is separate: cast shadows darken only ground pixels, so objects never
draw into it. Coordinates are float pixels, drawn with 1/8-pixel precision (``shift=3``).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from cosme_ros.data.cityscapes import IGNORE_ID

SHIFT = 3
ONE = 1 << SHIFT

# Internal label codes: 0–18 trainIds, ANOMALY_BASE + i for anomaly family i, 255 void.
ANOMALY_BASE = 200
VOID = IGNORE_ID

# Materials (texture and shading families applied at compositing time).
(
    FLAT,
    ASPHALT,
    PAVING,
    LEAF,
    PLASTER,
    GLASS,
    PAINT,
    FABRIC,
    GRASS,
    SKY,
    FUR,
    WOOD,
    RUBBER,
    METAL,
    SKIN,
    CONCRETE,
    BARK,
    MARKING,
    PLASTIC,
) = range(19)
N_MATERIALS = 19

Color = Sequence[float]


def _pts(uv: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(uv, np.float64) * ONE).astype(np.int32).reshape(-1, 1, 2)


class Canvas:
    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.rgb = np.zeros((height, width, 3), np.uint8)
        self.lm = np.zeros((height, width, 2), np.uint8)
        self.shade = np.full((height, width), 255, np.uint8)

    # --- visibility helpers -------------------------------------------------------------------
    def overlaps(self, uv: np.ndarray, margin: float = 0.0) -> bool:
        """Whether the bounding box of ``uv`` touches the image."""
        if uv is None or len(uv) == 0:
            return False
        x0, y0 = uv.min(axis=0)
        x1, y1 = uv.max(axis=0)
        return x1 >= -margin and y1 >= -margin and x0 < self.w + margin and y0 < self.h + margin

    # --- filled shapes ------------------------------------------------------------------------
    def polys(self, polys, color: Color, label: int, mat: int) -> None:
        """Polygons as a list of ``(N, 2)`` arrays or one ``(n, N, 2)`` array."""
        if isinstance(polys, np.ndarray):
            if polys.ndim != 3 or len(polys) == 0:
                return
            pts = list(np.round(polys * ONE).astype(np.int32))
        else:
            pts = [_pts(p) for p in polys if p is not None and len(p) >= 3]
        if not pts:
            return
        cv2.fillPoly(self.rgb, pts, tuple(float(c) for c in color), cv2.LINE_8, SHIFT)
        cv2.fillPoly(self.lm, pts, (label, mat), cv2.LINE_8, SHIFT)

    def poly(self, uv: Optional[np.ndarray], color: Color, label: int, mat: int) -> None:
        if uv is not None:
            self.polys([uv], color, label, mat)

    def ellipse(
        self, center, axes, angle: float, color: Color, label: int, mat: int, thickness: int = -1
    ) -> None:
        c = (int(round(center[0] * ONE)), int(round(center[1] * ONE)))
        a = (max(0, int(round(axes[0] * ONE))), max(0, int(round(axes[1] * ONE))))
        if thickness > 0:
            thickness = max(1, int(round(thickness)))
        cv2.ellipse(
            self.rgb,
            c,
            a,
            float(angle),
            0,
            360,
            tuple(float(v) for v in color),
            thickness,
            cv2.LINE_8,
            SHIFT,
        )
        cv2.ellipse(self.lm, c, a, float(angle), 0, 360, (label, mat), thickness, cv2.LINE_8, SHIFT)

    def circle(
        self, center, radius: float, color: Color, label: int, mat: int, thickness: int = -1
    ) -> None:
        self.ellipse(center, (radius, radius), 0.0, color, label, mat, thickness)

    def line(self, p0, p1, width: float, color: Color, label: int, mat: int) -> None:
        """A thick segment with round caps; at least one pixel wide."""
        t = max(1, int(round(width)))
        a = (int(round(p0[0] * ONE)), int(round(p0[1] * ONE)))
        b = (int(round(p1[0] * ONE)), int(round(p1[1] * ONE)))
        cv2.line(self.rgb, a, b, tuple(float(v) for v in color), t, cv2.LINE_8, SHIFT)
        cv2.line(self.lm, a, b, (label, mat), t, cv2.LINE_8, SHIFT)

    def polyline(
        self, uv: np.ndarray, width: float, color: Color, label: int, mat: int, closed: bool = False
    ) -> None:
        t = max(1, int(round(width)))
        pts = [_pts(uv)]
        cv2.polylines(self.rgb, pts, closed, tuple(float(v) for v in color), t, cv2.LINE_8, SHIFT)
        cv2.polylines(self.lm, pts, closed, (label, mat), t, cv2.LINE_8, SHIFT)

    # --- colour-only and shade-only marks (same class, no label change) ----------------------
    def paint_lines(self, segments, color: Color, width: float = 1.0) -> None:
        """Colour-only lines (joints between paving slabs, planks, fence bars): a list of
        (start, end) pairs or an ``(n, 2, 2)`` array."""
        t = max(1, int(round(width)))
        seg = np.asarray(segments, np.float64).reshape(-1, 2, 2)
        pts = list(np.round(seg * ONE).astype(np.int32))
        if pts:
            cv2.polylines(
                self.rgb, pts, False, tuple(float(v) for v in color), t, cv2.LINE_8, SHIFT
            )

    def paint_polys(self, polys: Iterable[np.ndarray], color: Color) -> None:
        pts = [_pts(p) for p in polys if p is not None and len(p) >= 3]
        if pts:
            cv2.fillPoly(self.rgb, pts, tuple(float(c) for c in color), cv2.LINE_8, SHIFT)

    def shadow_polys(self, polys: Iterable[np.ndarray], value: int) -> None:
        """Cast shadows: one strength per image, so overlapping shadows do not darken twice."""
        pts = [_pts(p) for p in polys if p is not None and len(p) >= 3]
        if pts:
            cv2.fillPoly(self.shade, pts, int(value), cv2.LINE_8, SHIFT)

    def shadow_ellipse(self, center, axes, value: int) -> None:
        c = (int(round(center[0] * ONE)), int(round(center[1] * ONE)))
        a = (max(0, int(round(axes[0] * ONE))), max(0, int(round(axes[1] * ONE))))
        cv2.ellipse(self.shade, c, a, 0.0, 0, 360, int(value), -1, cv2.LINE_8, SHIFT)
