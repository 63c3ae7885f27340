"""The pinhole camera of the synthetic world: world metres → pixels, with near-plane clipping.

World frame: X to the right, Y up from the road surface, Z forward along the street. The camera
stands at (x, height_m, z), turned by ``yaw`` about the vertical axis (positive = towards +X), and
looks horizontally; a per-image horizon row ``cy`` stands in for a small pitch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

NEAR = 0.3  # metres; geometry in front of the camera closer than this is clipped away


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    f: float  # focal length in pixels
    cx: float  # principal point column (vanishing point of the straight road)
    cy: float  # horizon row
    height_m: float  # camera height above the road
    x: float = 0.0
    z: float = 0.0
    yaw: float = 0.0

    @property
    def far(self) -> float:
        """Depth beyond which the ground is within a pixel of the horizon."""
        return 2.0 * self.f * self.height_m

    def to_cam(self, X, Z) -> Tuple[np.ndarray, np.ndarray]:
        """World ground coordinates → (lateral, depth) in the camera frame."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        if isinstance(X, float) and isinstance(Z, float):  # scalar fast path (anchors, depths)
            dx, dz = X - self.x, Z - self.z
            return c * dx - s * dz, s * dx + c * dz
        dx = np.asarray(X, np.float64) - self.x
        dz = np.asarray(Z, np.float64) - self.z
        return c * dx - s * dz, s * dx + c * dz

    def depth(self, X, Z):
        return self.to_cam(X, Z)[1]

    def project(self, P: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(..., 3)`` world points → ``(..., 2)`` pixel coordinates and ``(...)`` depths.

        Points at depth ≤ 0 give meaningless pixels: clip first (:meth:`project_poly`) or check
        the depth.
        """
        P = np.asarray(P, np.float64)
        xc, zc = self.to_cam(P[..., 0], P[..., 2])
        k = self.f / np.maximum(zc, 1e-6)
        uv = np.empty(P.shape[:-1] + (2,))
        uv[..., 0] = self.cx + k * xc
        uv[..., 1] = self.cy + k * (self.height_m - P[..., 1])
        return uv, zc

    def project_poly(self, P: np.ndarray, near: float = NEAR) -> Optional[np.ndarray]:
        """A planar world polygon ``(N, 3)`` → its clipped image polygon ``(M, 2)``, or None."""
        P = np.asarray(P, np.float64)
        xc, zc = self.to_cam(P[:, 0], P[:, 2])
        inside = zc >= near
        if inside.all():
            cam = np.stack([xc, P[:, 1], zc], axis=1)
        elif not inside.any():
            return None
        else:  # Sutherland–Hodgman against the single plane z = near
            cam_in = np.stack([xc, P[:, 1], zc], axis=1)
            out = []
            n = len(cam_in)
            for i in range(n):
                a, b = cam_in[i], cam_in[(i + 1) % n]
                ina, inb = a[2] >= near, b[2] >= near
                if ina:
                    out.append(a)
                if ina != inb:
                    t = (near - a[2]) / (b[2] - a[2])
                    out.append(a + t * (b - a))
            if len(out) < 3:
                return None
            cam = np.asarray(out)
        return np.stack(
            [
                self.cx + self.f * cam[:, 0] / cam[:, 2],
                self.cy + self.f * (self.height_m - cam[:, 1]) / cam[:, 2],
            ],
            axis=1,
        )

    def ground_row(self, depth: float, y: float = 0.0) -> float:
        return self.cy + self.f * (self.height_m - y) / depth


def polygon_area(uv: np.ndarray) -> float:
    """Signed area of an image polygon (positive = clockwise on screen, y down)."""
    x, y = uv[:, 0], uv[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
