"""Solids in world coordinates: hexahedra (boxes, frusta, prisms) drawn face by face.

A hexahedron is 8 corners: bottom rectangle then top rectangle, each (rear-left, rear-right,
front-right, front-left) in its own local frame (l along its heading, w to its right). Faces facing
the camera are drawn with Lambert shading; faces of one convex solid never overlap, so no sorting
is needed inside a solid.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

from cosme_ros.data.synth.camera import NEAR, Camera
from cosme_ros.data.synth.canvas import Canvas

# Face name → corner indices (bottom 0-3, top 4-7).
FACES = {
    "rear": (0, 1, 5, 4),
    "right": (1, 2, 6, 5),
    "front": (2, 3, 7, 6),
    "left": (3, 0, 4, 7),
    "top": (4, 5, 6, 7),
    "bottom": (0, 3, 2, 1),
}


def hexa(
    cx: float, cz: float, heading: float, bottom: Sequence[float], top: Sequence[float]
) -> np.ndarray:
    """Corners ``(8, 3)`` of a hexahedron.

    ``bottom``/``top`` = (l0, l1, w0, w1, y): extent along the heading (rear l0 → front l1),
    across it (left w0 → right w1) and the height of that rectangle. ``heading`` is the angle from
    +Z towards +X.
    """
    l0, l1, w0, w1, y0 = bottom
    t0, t1, v0, v1, y1 = top
    L = np.array([l0, l0, l1, l1, t0, t0, t1, t1], np.float64)
    W = np.array([w0, w1, w1, w0, v0, v1, v1, v0], np.float64)
    sh, ch = math.sin(heading), math.cos(heading)
    out = np.empty((8, 3))
    out[:, 0] = cx + L * sh + W * ch
    out[:, 1] = (y0, y0, y0, y0, y1, y1, y1, y1)
    out[:, 2] = cz + L * ch - W * sh
    return out


def box(cx, cz, heading, l0, l1, w0, w1, y0, y1) -> np.ndarray:
    return hexa(cx, cz, heading, (l0, l1, w0, w1, y0), (l0, l1, w0, w1, y1))


_ORDER = ("rear", "right", "front", "left", "top", "bottom")
_FIDX = np.array([FACES[f] for f in _ORDER])
_POS = {f: i for i, f in enumerate(_ORDER)}


def _normals(corners: np.ndarray):
    """Outward unit normals ``(6, 3)`` and centres ``(6, 3)`` of all faces (zero for degenerate)."""
    q = corners[_FIDX]
    a = q[:, 1] - q[:, 0]
    b = q[:, 3] - q[:, 0]
    n = np.stack(
        [
            a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
            a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
            a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0],
        ],
        axis=1,
    )
    fc = q.mean(axis=1)
    sign = np.sign(((fc - corners.mean(axis=0)) * n).sum(axis=1))
    norm = np.sqrt((n * n).sum(axis=1))
    n = n * (sign / np.maximum(norm, 1e-12))[:, None]
    return n, fc


def face_normal(corners: np.ndarray, face: str) -> np.ndarray:
    return _normals(corners)[0][_POS[face]]


SIDES_AND_TOP = ("rear", "right", "front", "left", "top")


def visible_faces(corners: np.ndarray, cam: Camera, faces=SIDES_AND_TOP):
    n, fc = _normals(corners)
    eye = np.array([cam.x, cam.height_m, cam.z])
    vis = ((eye - fc) * n).sum(axis=1) > 1e-6
    return [f for f in faces if vis[_POS[f]]]


def face_points(corners: np.ndarray, face: str, st: np.ndarray) -> np.ndarray:
    """Bilinear points on a face: ``st[..., 0]`` along its bottom edge, ``st[..., 1]`` upwards."""
    q = corners[list(FACES[face])]  # p0 bottom-a, p1 bottom-b, p2 top-b, p3 top-a
    st = np.asarray(st, np.float64)
    s = st[..., 0:1]
    t = st[..., 1:2]
    bottom = q[0] + s * (q[1] - q[0])
    top = q[3] + s * (q[2] - q[3])
    return bottom + t * (top - bottom)


def draw_hexa(
    canvas: Canvas,
    cam: Camera,
    look,
    corners: np.ndarray,
    colors,
    label: int,
    mat: int,
    faces=SIDES_AND_TOP,
) -> Dict[str, np.ndarray]:
    """Draw the camera-facing faces; ``colors`` is one colour or a dict face → colour.

    Returns the drawn faces' image polygons (for details drawn on top).
    """
    n, fc = _normals(corners)
    eye = np.array([cam.x, cam.height_m, cam.z])
    vis = ((eye - fc) * n).sum(axis=1) > 1e-6
    uv_all, z = cam.project(corners)
    if (z < NEAR).all():
        return {}
    all_in = bool((z >= NEAR).all())
    if all_in:
        x0, y0 = uv_all.min(axis=0)
        x1, y1 = uv_all.max(axis=0)
        if x1 < 0 or y1 < 0 or x0 >= canvas.w or y0 >= canvas.h:
            return {}
    drawn = {}
    for f in faces:
        i = _POS[f]
        if not vis[i]:
            continue
        uv = uv_all[_FIDX[i]] if all_in else cam.project_poly(corners[_FIDX[i]])
        if uv is None:
            continue
        col = colors.get(f) if isinstance(colors, dict) else colors
        if col is None:
            continue
        canvas.poly(uv, look.face(col, n[i]), label, mat)
        drawn[f] = uv
    return drawn


_RECT_IDX = np.array([[0, 2], [1, 2], [1, 3], [0, 3]])


def project_rects(cam: Camera, corners: np.ndarray, face: str, rects: np.ndarray):
    """Rectangles ``(n, 4)`` = (s0, s1, t0, t1) on a face → image quads ``(n, 4, 2)`` and which
    lie wholly in front of the camera."""
    st = np.asarray(rects, np.float64)[:, _RECT_IDX]
    uv, z = cam.project(face_points(corners, face, st))
    return uv, (z > 0.5).all(axis=1)


def quads_on_face(cam: Camera, corners: np.ndarray, face: str, rects: np.ndarray):
    """Project rectangles ``(n, 4)`` = (s0, s1, t0, t1) on a face; returns a list of polygons.

    Rectangles crossing the near plane are dropped (they are off-screen at the image border).
    """
    if len(rects) == 0:
        return []
    r = np.asarray(rects, np.float64)
    st = r[:, _RECT_IDX]  # (n, 4, 2): the rectangle's corners in (s, t)
    P = face_points(corners, face, st)
    uv, z = cam.project(P)
    ok = (z > 0.5).all(axis=1)
    return uv[ok]
