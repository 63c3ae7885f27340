"""In-distribution things at street level: vehicles, people, trees, poles, signs.

Vehicles are hexahedra in world coordinates (body, cabin, wheels on the sides), so they foreshorten
correctly; people, trees and street furniture are flat figures facing the camera, drawn in
image space at the scale ``s = f / depth`` (pixels per metre) of their foot point. Each drawer
returns the image bounding box it drew, or None when the thing is out of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from cosme_ros.data.synth import canvas as cv
from cosme_ros.data.synth import look as lk
from cosme_ros.data.synth import solids
from cosme_ros.data.synth.camera import Camera
from cosme_ros.data.synth.canvas import Canvas
from cosme_ros.data.synth.look import EMISSIVE, Look, scale
from cosme_ros.data.synth.world import Road, Thing

BBox = Tuple[float, float, float, float]
MIN_DEPTH = 1.2  # things nearer than this (beside the camera) are not drawn
# Poles and arms drawn narrower than this are labelled void: a 1-pixel line is below what a
# stride-4 segmentation output can place, so as a label it would only measure aliasing (the
# way annotators leave far-away detail unlabelled). They are still drawn.
MIN_LABELLED_WIDTH = 1.5


@dataclass
class Ctx:
    canvas: Canvas
    cam: Camera
    look: Look
    road: Road
    t: float = 0.0
    y: float = 0.0  # ground height under the thing being drawn (kerb height on sidewalks)


def anchor(ctx: Ctx, X: float, Z: float, y: Optional[float] = None, extent: float = 3.0):
    """Foot point of an upright figure → (u, v, s, depth), or None if it cannot be seen."""
    if y is None:
        y = ctx.y
    xc, zc = ctx.cam.to_cam(X, Z)
    zc = float(zc)
    if zc < MIN_DEPTH:
        return None
    s = ctx.cam.f / zc
    u = ctx.cam.cx + s * float(xc)
    v = ctx.cam.cy + s * (ctx.cam.height_m - y)
    if u + s * extent < 0 or u - s * extent > ctx.canvas.w or v - s * 2 * extent > ctx.canvas.h:
        return None
    return u, v, s, zc


def union_of(boxes) -> Optional[BBox]:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    b = np.asarray(boxes, np.float64)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def poly_bbox(polys) -> Optional[BBox]:
    pts = [p for p in polys if p is not None and len(p)]
    if not pts:
        return None
    a = np.concatenate(pts)
    return float(a[:, 0].min()), float(a[:, 1].min()), float(a[:, 0].max()), float(a[:, 1].max())


def ground_shadow(
    ctx: Ctx, X: float, Z: float, rx: float, rz: float, height: float, value: Optional[int] = None
) -> None:
    """A soft contact shadow plus a cast shadow along the sun direction, on the ground plane."""
    look = ctx.look
    val = look.shadow if value is None else value
    dx, dz = look.shadow_dir
    L = min(height, 6.0)
    pts = []
    for t in np.linspace(0, 2 * math.pi, 12, endpoint=False):
        ex, ez = rx * math.cos(t), rz * math.sin(t)
        pts.append((X + ex, ctx.y, Z + ez))
        pts.append((X + ex + dx * L, ctx.y, Z + ez + dz * L))
    P = np.asarray(pts)
    uv, z = ctx.cam.project(P)
    if (z < 0.5).any():
        return
    hull = _hull(uv)
    ctx.canvas.shadow_polys([hull], val)


def _hull(uv: np.ndarray) -> np.ndarray:
    return cv2.convexHull(uv.astype(np.float32)).reshape(-1, 2).astype(np.float64)


# --- vehicles --------------------------------------------------------------------------------
def box_extent(
    ctx: Ctx, X: float, Z: float, heading: float, hl: float, hw: float, H: float
) -> Optional[float]:
    """Image height in pixels of an upright box, or None when none of it can be seen."""
    corners = solids.box(X, Z, heading, -hl, hl, -hw, hw, 0.0, H)
    uv, z = ctx.cam.project(corners)
    front = z > 0.3
    if not front.any():
        return None
    if front.all():
        x0, y0 = uv.min(axis=0)
        x1, y1 = uv.max(axis=0)
        if x1 < 0 or y1 < 0 or x0 >= ctx.canvas.w or y0 >= ctx.canvas.h:
            return None
        return float(y1 - y0)
    return float(ctx.canvas.h)  # reaches past the camera: large


LOD_DETAIL = 6.0  # pixels: below this, vehicles are drawn without wheels, windows and lights

# Car cabins: insets (rear, front, sides) in metres of the cabin's bottom and top rectangles.
CABINS = {
    "van": ((0.05, 0.25, 0.05), (0.1, 0.9, 0.12)),
    "hatch": ((0.15, 1.0, 0.08), (0.3, 1.7, 0.2)),
    "sedan": ((0.6, 1.15, 0.08), (1.1, 1.8, 0.2)),
}


def decal(ctx: Ctx, corners: np.ndarray, face: str, rects, color, label: int, mat: int) -> None:
    """Rectangles (s0, s1, t0, t1) painted on a face of a solid: windows, lights, plates."""
    ctx.canvas.polys(
        solids.quads_on_face(ctx.cam, corners, face, np.asarray(rects, np.float64)),
        color,
        label,
        mat,
    )


def _wheel_polys(
    cam: Camera,
    corners: np.ndarray,
    face: str,
    length: float,
    height: float,
    ls,
    r: float,
    n: int = 12,
):
    """Discs of radius ``r`` on a side face at fractions ``ls`` along it (s) at wheel height."""
    ang = np.linspace(0, 2 * math.pi, n, endpoint=False)
    polys = []
    for l in ls:
        st = np.stack([l + r / length * np.cos(ang), (r + r * np.sin(ang)) / height], axis=1)
        P = solids.face_points(corners, face, st)
        uv, z = cam.project(P)
        if (z > 0.5).all():
            polys.append(uv)
    return polys


def draw_car(ctx: Ctx, th: Thing, X: float, Z: float, heading: float) -> Optional[BBox]:
    p = th.p
    cam, look, c = ctx.cam, ctx.look, ctx.canvas
    if cam.depth(X, Z) < -p["length"] / 2 + 0.5:
        return None
    L, W, H = p["length"], p["width"], p["height"]
    hl, hw = L / 2, W / 2
    style = p["style"]
    belt = H * (0.55 if style != "van" else 0.5)
    body_col = p["color"]
    label = lk.CAR
    px = box_extent(ctx, X, Z, heading, hl, hw, H)
    if px is None:
        return None
    if px < LOD_DETAIL:  # far away: a body and a cabin are all the pixels can show
        body = solids.box(X, Z, heading, -hl, hl, -hw, hw, 0.15, belt)
        cabin = solids.box(X, Z, heading, -hl * 0.5, hl * 0.4, -hw + 0.1, hw - 0.1, belt, H)
        f1 = solids.draw_hexa(c, cam, look, body, body_col, label, cv.PAINT)
        f2 = solids.draw_hexa(c, cam, look, cabin, p["glass"], label, cv.GLASS)
        return poly_bbox(list(f1.values()) + list(f2.values()))
    ground_shadow(ctx, X, Z, hw * 1.05, hl * 1.0, H * 0.6)
    # Wheels and underbody, seen under the bumpers.
    under = solids.box(X, Z, heading, -hl + 0.25, hl - 0.25, -hw + 0.03, hw - 0.03, 0.0, 0.34)
    polys = list(solids.draw_hexa(c, cam, look, under, (22, 22, 24), label, cv.RUBBER).values())
    body = solids.hexa(
        X,
        Z,
        heading,
        (-hl + 0.05, hl - 0.05, -hw, hw, 0.22),
        (-hl, hl, -hw + 0.04, hw - 0.04, belt),
    )
    faces = solids.draw_hexa(c, cam, look, body, body_col, label, cv.PAINT)
    polys += faces.values()
    # Cabin: a frustum on the body, its faces glass framed by body colour.
    (r0, f0, s0), (r1, f1, s1) = CABINS.get(style, CABINS["sedan"])
    cabin = solids.hexa(
        X,
        Z,
        heading,
        (-hl + r0, hl - f0, -hw + s0, hw - s0, belt),
        (-hl + r1, hl - f1, -hw + s1, hw - s1, H),
    )
    cf = solids.draw_hexa(c, cam, look, cabin, body_col, label, cv.PAINT)
    polys += cf.values()
    _car_windows(ctx, cabin, cf, p["glass"], label)
    polys += _car_wheels(ctx, X, Z, heading, faces, L, hl, hw, belt, label)
    _car_lights(ctx, body, faces, label)
    return poly_bbox(polys)


def _car_windows(ctx: Ctx, cabin, cf, glass, label: int) -> None:
    """Glass on every visible cabin face but the roof, framed by the body colour."""
    for face in cf:
        if face == "top":
            continue
        if face in ("left", "right"):
            rects = np.array([[0.08, 0.47, 0.12, 0.88], [0.53, 0.92, 0.12, 0.88]])
        else:
            rects = np.array([[0.08, 0.92, 0.1, 0.86]])
        colour = ctx.look.face(glass, solids.face_normal(cabin, face))
        decal(ctx, cabin, face, rects, colour, label, cv.GLASS)


def _car_wheels(ctx: Ctx, X, Z, heading, faces, L, hl, hw, belt, label: int) -> List:
    """Wheels (tyre and hub) on the visible side; returns the tyres' polygons."""
    cam, c = ctx.cam, ctx.canvas
    polys: List = []
    for face in ("left", "right"):
        if face in faces:
            ls = [0.75 / L, 1 - 0.8 / L]
            side = solids.box(X, Z, heading, -hl, hl, -hw - 0.01, hw + 0.01, 0.0, belt)
            wp = _wheel_polys(cam, side, face, L, belt, ls, 0.33)
            c.polys(wp, (20, 20, 22), label, cv.RUBBER)
            hp = _wheel_polys(cam, side, face, L, belt, ls, 0.17)
            c.polys(hp, (140, 140, 145), label, cv.METAL)
            polys += wp
    return polys


def _car_lights(ctx: Ctx, body, faces, label: int) -> None:
    """Lights and plate on the face towards the camera (lit at dusk)."""
    lit = ctx.look.lamps_on
    lamp_mat = EMISSIVE if lit else cv.PLASTIC
    if "rear" in faces:
        decal(
            ctx,
            body,
            "rear",
            [[0.04, 0.2, 0.6, 0.9], [0.8, 0.96, 0.6, 0.9]],
            (255, 60, 40) if lit else (200, 20, 20),
            label,
            lamp_mat,
        )
        decal(ctx, body, "rear", [[0.39, 0.61, 0.25, 0.5]], (230, 230, 225), label, cv.FLAT)
    if "front" in faces:
        decal(
            ctx,
            body,
            "front",
            [[0.05, 0.22, 0.6, 0.85], [0.78, 0.95, 0.6, 0.85]],
            (255, 250, 220) if lit else (235, 235, 220),
            label,
            lamp_mat,
        )
        decal(ctx, body, "front", [[0.3, 0.7, 0.3, 0.55]], (35, 35, 38), label, cv.METAL)


def _far_box(ctx: Ctx, X, Z, heading, hl, hw, H, color, label: int) -> Optional[BBox]:
    """A distant vehicle: one painted box."""
    body = solids.box(X, Z, heading, -hl, hl, -hw, hw, 0.3, H)
    drawn = solids.draw_hexa(ctx.canvas, ctx.cam, ctx.look, body, color, label, cv.PAINT)
    return poly_bbox(list(drawn.values()))


def _side_wheels(ctx: Ctx, X, Z, heading, L, hw, ls, r: float, label: int) -> None:
    """Tyres and hubs on whichever long side of a vehicle faces the camera."""
    side = solids.box(X, Z, heading, -L / 2, L / 2, -hw - 0.01, hw + 0.01, 0.0, 1.2)
    for face in solids.visible_faces(side, ctx.cam, ("left", "right")):
        ctx.canvas.polys(
            _wheel_polys(ctx.cam, side, face, L, 1.2, ls, r), (20, 20, 22), label, cv.RUBBER
        )
        ctx.canvas.polys(
            _wheel_polys(ctx.cam, side, face, L, 1.2, ls, r / 2), (150, 150, 150), label, cv.METAL
        )


def draw_truck(ctx: Ctx, th: Thing, X: float, Z: float, heading: float) -> Optional[BBox]:
    p = th.p
    cam, look, c = ctx.cam, ctx.look, ctx.canvas
    L, W, H = p["length"], p["width"], p["height"]
    hl, hw = L / 2, W / 2
    label = lk.TRUCK
    px = box_extent(ctx, X, Z, heading, hl, hw, H)
    if px is None:
        return None
    if px < LOD_DETAIL:
        return _far_box(ctx, X, Z, heading, hl, hw, H, p["box"], label)
    ground_shadow(ctx, X, Z, hw, hl, H * 0.6)
    cab_len = 2.2  # the cab is at the +l end
    under = solids.box(X, Z, heading, -hl + 0.2, hl - 0.2, -hw + 0.05, hw - 0.05, 0.0, 0.6)
    polys = list(solids.draw_hexa(c, cam, look, under, (25, 25, 27), label, cv.RUBBER).values())
    cargo = solids.box(X, Z, heading, -hl, hl - cab_len - 0.2, -hw, hw, 0.55, H)
    cab = solids.hexa(
        X,
        Z,
        heading,
        (hl - cab_len, hl, -hw + 0.05, hw - 0.05, 0.55),
        (hl - cab_len, hl - 0.25, -hw + 0.1, hw - 0.1, H * 0.78),
    )
    # The part farther from the camera first.
    eye = np.array([cam.x, cam.z])
    far_cab = np.linalg.norm(cab[:, [0, 2]].mean(0) - eye) > np.linalg.norm(
        cargo[:, [0, 2]].mean(0) - eye
    )
    for name in ("cab", "cargo") if far_cab else ("cargo", "cab"):
        if name == "cab":
            f = solids.draw_hexa(c, cam, look, cab, p["color"], label, cv.PAINT)
            for face in f:
                if face in ("front", "left", "right"):
                    rect = [[0.1, 0.9, 0.55, 0.92]] if face == "front" else [[0.45, 0.9, 0.5, 0.9]]
                    glass = look.face(p["glass"], solids.face_normal(cab, face))
                    decal(ctx, cab, face, rect, glass, label, cv.GLASS)
        else:
            f = solids.draw_hexa(c, cam, look, cargo, p["box"], label, cv.PAINT)
            if "rear" in f:  # the doors' seam and the tail lights
                seam = solids.face_points(cargo, "rear", np.array([[0.5, 0.05], [0.5, 0.97]]))
                uv, z = cam.project(seam)
                if (z > 0.5).all():
                    c.paint_lines([(uv[0], uv[1])], scale(p["box"], 0.6))
                decal(
                    ctx,
                    cargo,
                    "rear",
                    [[0.03, 0.12, 0.02, 0.08], [0.88, 0.97, 0.02, 0.08]],
                    (200, 30, 20),
                    label,
                    EMISSIVE if look.lamps_on else cv.PLASTIC,
                )
        polys += f.values()
    _side_wheels(ctx, X, Z, heading, L, hw, [0.9 / L, 2.0 / L, 1 - 1.3 / L], 0.48, label)
    return poly_bbox(polys)


def draw_bus(ctx: Ctx, th: Thing, X: float, Z: float, heading: float) -> Optional[BBox]:
    p = th.p
    cam, look, c = ctx.cam, ctx.look, ctx.canvas
    L, W, H = p["length"], p["width"], p["height"]
    hl, hw = L / 2, W / 2
    label = lk.BUS
    px = box_extent(ctx, X, Z, heading, hl, hw, H)
    if px is None:
        return None
    if px < LOD_DETAIL:
        return _far_box(ctx, X, Z, heading, hl, hw, H, p["color"], label)
    ground_shadow(ctx, X, Z, hw, hl, H * 0.6)
    under = solids.box(X, Z, heading, -hl + 0.3, hl - 0.3, -hw + 0.05, hw - 0.05, 0.0, 0.4)
    polys = list(solids.draw_hexa(c, cam, look, under, (25, 25, 27), label, cv.RUBBER).values())
    body = solids.box(X, Z, heading, -hl, hl, -hw, hw, 0.32, H)
    f = solids.draw_hexa(c, cam, look, body, p["color"], label, cv.PAINT)
    polys += f.values()
    lamps = EMISSIVE if look.lamps_on else cv.PLASTIC
    for face in f:
        n = solids.face_normal(body, face)
        glass = look.face(p["glass"], n)
        if face in ("left", "right"):  # a band of windows above a stripe
            k = int(L / 1.6)
            xs = np.linspace(0.03, 0.97, k + 1)
            rects = np.stack(
                [xs[:-1] + 0.006, xs[1:] - 0.006, np.full(k, 0.5), np.full(k, 0.88)], 1
            )
            decal(ctx, body, face, rects, glass, label, cv.GLASS)
            decal(
                ctx,
                body,
                face,
                [[0.0, 1.0, 0.36, 0.44]],
                look.face(p["stripe"], n),
                label,
                cv.PAINT,
            )
        elif face in ("rear", "front"):
            rect = [[0.06, 0.94, 0.45, 0.9]] if face == "front" else [[0.12, 0.88, 0.6, 0.88]]
            decal(ctx, body, face, rect, glass, label, cv.GLASS)
            decal(
                ctx,
                body,
                face,
                [[0.05, 0.17, 0.1, 0.2], [0.83, 0.95, 0.1, 0.2]],
                (220, 40, 30) if face == "rear" else (240, 240, 220),
                label,
                lamps,
            )
    _side_wheels(ctx, X, Z, heading, L, hw, [2.5 / L, 1 - 3.0 / L], 0.5, label)
    return poly_bbox(polys)


# --- people ---------------------------------------------------------------------------------
class Figure:
    """Draws a flat figure in its own metres: x forward (mirrored by ``facing``), y up.

    ``s`` is pixels per metre at the foot point (u, v); ``k`` scales the whole figure.
    """

    def __init__(
        self, ctx: Ctx, u: float, v: float, s: float, facing: int, label: int, k: float = 1.0
    ):
        self.c, self.u, self.v, self.m, self.label = ctx.canvas, u, v, facing, label
        self.sk = s * k

    def pt(self, x: float, y: float) -> Tuple[float, float]:
        return (self.u + self.m * self.sk * x, self.v - self.sk * y)

    def limb(self, a, b, width: float, color, mat: int = cv.FABRIC) -> None:
        self.c.line(self.pt(*a), self.pt(*b), max(1.0, width * self.sk), color, self.label, mat)

    def disc(
        self, centre, r: float, color, mat: int, ry: Optional[float] = None, angle: float = 0.0
    ) -> None:
        """A disc, or an ellipse with semi-axes (r, ry) turned by ``angle`` degrees (mirrored)."""
        ry = r if ry is None else ry
        self.c.ellipse(
            self.pt(*centre), (r * self.sk, ry * self.sk), self.m * angle, color, self.label, mat
        )

    def shape(self, pts, color, mat: int = cv.FABRIC) -> None:
        self.c.poly(np.array([self.pt(x, y) for x, y in pts]), color, self.label, mat)


SHOE = (35, 30, 30)
BAG = (60, 40, 30)


def draw_person_at(ctx: Ctx, p: Dict, u: float, v: float, s: float) -> BBox:
    """A simple articulated figure, standing or walking, seen from the front, back or side."""
    H, view = p["height"], p["view"]
    phase = p["phase"] + 5.0 * ctx.t
    shirt, trousers, skin, hair = p["shirt"], p["trousers"], p["skin"], p["hair"]
    wk = p.get("width", 1.0)
    leg_w, arm_w = 0.15 * wk, 0.11 * wk
    g = Figure(ctx, u, v, s, p["facing"], lk.PERSON, k=H / 1.75)  # proportions of a 1.75 m adult
    hem = 0.45 if p["coat"] else 0.82
    if view in ("front", "rear"):
        sway = 0.03 * math.sin(phase)
        for sgn in (-1, 1):
            lift = max(0.0, 0.06 * math.sin(phase + (0 if sgn > 0 else math.pi)))
            foot = (sgn * (0.1 + sway) * wk, 0.03 + lift)
            g.limb((sgn * 0.09 * wk, 0.86), foot, leg_w, trousers)
            g.disc(foot, 0.06, SHOE, cv.FABRIC)
        g.shape([(-0.17 * wk, hem), (0.17 * wk, hem), (0.21 * wk, 1.43), (-0.21 * wk, 1.43)], shirt)
        for sgn in (-1, 1):
            swing = 0.04 * math.sin(phase + (0 if sgn > 0 else math.pi))
            g.limb((sgn * 0.2 * wk, 1.4), (sgn * 0.25 * wk, 0.86 + swing), arm_w, shirt)
            g.disc((sgn * 0.25 * wk, 0.83 + swing), 0.05, skin, cv.SKIN)
        if p["bag"]:
            g.shape([(0.22, 1.0), (0.38, 1.0), (0.38, 0.75), (0.22, 0.75)], BAG)
        g.limb((0, 1.43), (0, 1.5), arm_w, skin, cv.SKIN)
        g.disc((0, 1.62), 0.115, skin if view == "front" else hair, cv.SKIN)
        if view == "front":
            g.disc((0, 1.68), 0.12, hair, cv.FABRIC, ry=0.07)
        w = 0.42 * wk * H / 1.75
        return (u - w * s, v - H * s, u + w * s, v)
    # Side view, walking: legs and arms swing in opposite phase.
    stride = 0.3 * math.sin(phase)
    hem = 0.5 if p["coat"] else 0.82
    for leg in (1, -1):
        fx = leg * stride
        knee = (fx * 0.55 + 0.06, 0.45)
        g.limb((0, 0.86), knee, leg_w, trousers)
        g.limb(knee, (fx, 0.04), leg_w, trousers)
        g.limb((fx, 0.03), (fx + 0.12, 0.03), 0.07, SHOE)
    g.shape([(-0.12, hem), (0.13, hem), (0.12, 1.43), (-0.12, 1.43)], shirt)
    for leg in (1, -1):
        hx = -leg * 0.6 * stride
        g.limb((0, 1.38), (hx * 0.5, 1.1), arm_w, shirt)
        g.limb((hx * 0.5, 1.1), (hx, 0.85), arm_w, shirt)
    if p["bag"]:
        g.shape([(-0.3, 1.4), (-0.1, 1.4), (-0.1, 1.0), (-0.3, 1.0)], BAG)
    g.limb((0, 1.43), (0.01, 1.5), arm_w, skin, cv.SKIN)
    g.disc((0.02, 1.62), 0.11, skin, cv.SKIN)
    g.disc((-0.01, 1.67), 0.11, hair, cv.FABRIC, ry=0.07)
    w = 0.45 * H / 1.75
    return (u - w * s, v - H * s, u + w * s, v)


def draw_person(ctx: Ctx, th: Thing, X: float, Z: float, heading: float) -> Optional[BBox]:
    a = anchor(ctx, X, Z, extent=1.0)
    if a is None:
        return None
    u, v, s, _ = a
    ground_shadow(ctx, X, Z, 0.3, 0.25, th.p["height"] * 0.7)
    return draw_person_at(ctx, th.p, u, v, s)


# --- vegetation ------------------------------------------------------------------------------
def draw_tree(ctx: Ctx, th: Thing, X: float, Z: float, heading: float) -> Optional[BBox]:
    p = th.p
    a = anchor(ctx, X, Z, extent=p["crown_r"] * 1.5)
    if a is None:
        return None
    u, v, s, depth = a
    c = ctx.canvas
    label = lk.VEGETATION
    h, r, th_ = p["height"], p["crown_r"], p["trunk_h"]
    ground_shadow(ctx, X, Z, r * 0.8, r * 0.8, th_ + r)
    c.line(
        (u, v), (u, v - s * (th_ + r * 0.5)), max(1.0, p["trunk_w"] * s), p["trunk"], label, cv.BARK
    )
    leaf = p["leaf"]
    cy = th_ + r * 0.9
    if p["conifer"]:
        n = 4
        for i in range(n):
            y0 = th_ * 0.6 + i * (h - th_ * 0.6) / n
            w = r * (1.0 - i / (n + 0.5))
            tri = np.array(
                [
                    (u - s * w, v - s * y0),
                    (u + s * w, v - s * y0),
                    (u, v - s * (y0 + (h - th_ * 0.6) / n * 1.6)),
                ]
            )
            c.poly(tri, lk.scale(leaf, 0.8 + 0.07 * i), label, cv.LEAF)
        return (u - s * r, v - s * h, u + s * r, v)
    for i, (dx, dy, rr) in enumerate(p["blobs"]):
        col = lk.scale(leaf, 0.82 + 0.3 * (dy + 0.4))
        c.ellipse(
            (u + s * dx * r, v - s * (cy + dy * r)),
            (s * rr * r * 1.05, s * rr * r),
            0,
            col,
            label,
            cv.LEAF,
        )
    return (u - s * r * 1.5, v - s * (cy + r * 1.3), u + s * r * 1.5, v)


def draw_bush(ctx: Ctx, th: Thing, X: float, Z: float, heading: float) -> Optional[BBox]:
    p = th.p
    a = anchor(ctx, X, Z, extent=p["size"] * 1.5)
    if a is None:
        return None
    u, v, s, _ = a
    r = p["size"]
    for dx, dy, rr in p["blobs"]:
        centre = (u + s * dx * r, v - s * (r * 0.6 + dy * r * 0.5))
        ctx.canvas.ellipse(
            centre,
            (s * rr * r, s * rr * r * 0.8),
            0,
            lk.scale(p["color"], 0.85 + 0.3 * (dy + 0.4)),
            lk.VEGETATION,
            cv.LEAF,
        )
    return (u - 1.4 * s * r, v - 1.3 * s * r, u + 1.4 * s * r, v)


# --- street furniture ------------------------------------------------------------------------
def _pole_label(width_px: float) -> int:
    return lk.POLE if width_px >= MIN_LABELLED_WIDTH else cv.VOID


def _pole(
    ctx: Ctx, X: float, Z: float, y0: float, y1: float, width: float, color
) -> Optional[BBox]:
    """A vertical pole from height y0 to y1 above the ground at (X, Z)."""
    uv, z = ctx.cam.project(np.array([[X, y0 + ctx.y, Z], [X, y1 + ctx.y, Z]]))
    if (z < MIN_DEPTH).any():
        return None
    s = ctx.cam.f / z[0]
    lit = ctx.look.face(color, (-math.copysign(1, X - ctx.cam.x), 0, 0))  # its side facing us
    ctx.canvas.line(uv[0], uv[1], max(1.0, width * s), lit, _pole_label(width * s), cv.METAL)
    x = float(uv[0, 0])
    return (x - width * s, float(uv[1, 1]), x + width * s, float(uv[0, 1]))


def draw_lamp(ctx: Ctx, th: Thing, X: float, Z: float, heading: float) -> Optional[BBox]:
    p = th.p
    if anchor(ctx, X, Z, extent=p["arm"] + 1) is None:
        return None
    H = p["height"]
    ground_shadow(ctx, X, Z, 0.12, 0.12, H)
    b = _pole(ctx, X, Z, 0.0, H, p["width"], p["color"])
    b0 = _pole(ctx, X, Z, 0.0, 1.0, p["width"] * 1.4, p["color"])
    toward = -1.0 if th.a > 0 else 1.0
    arm = np.array([[X, H - 0.1 + ctx.y, Z], [X + toward * p["arm"], H + 0.25 + ctx.y, Z]])
    uv, z = ctx.cam.project(arm)
    if (z > MIN_DEPTH).all():
        s = ctx.cam.f / z[1]
        arm_px = p["width"] * 0.6 * s
        ctx.canvas.line(uv[0], uv[1], max(1.0, arm_px), p["color"], _pole_label(arm_px), cv.METAL)
        head = uv[1] + s * np.array([(-0.25, 0), (0.25, 0), (0.18, 0.14), (-0.18, 0.14)])
        lit = ctx.look.lamps_on
        ctx.canvas.poly(
            head,
            (255, 240, 200) if lit else (190, 190, 180),
            lk.POLE,
            EMISSIVE if lit else cv.METAL,
        )
        x0, x1 = float(uv[:, 0].min()), float(uv[:, 0].max())
        b = union_of([b, (x0 - 0.3 * s, float(uv[1, 1] - 0.1 * s), x1 + 0.3 * s, float(uv[0, 1]))])
    return union_of([b, b0])


WHITE, DARK = (240, 240, 240), (30, 30, 30)


def _sign_plate(ctx: Ctx, u: float, v: float, s: float, p: Dict, shape: str) -> BBox:
    """A sign face centred at (u, v), drawn in units of its radius (y up)."""
    r = p["size"] / 2 * s
    g = Figure(ctx, u, v, r, 1, lk.SIGN)
    face, inner = p["face"], p["inner"]
    paint = cv.PAINT
    if shape == "circle":
        g.disc((0, 0), 1.0, face, paint)
        if face[0] > face[2]:  # red ring, white field, a bar
            g.disc((0, 0), 0.72, WHITE, paint)
            g.limb((-0.4, 0), (0.4, 0), 0.25, DARK, paint)
        else:  # blue disc, white arrow
            g.shape([(-0.45, -0.2), (0.45, -0.2), (0, 0.5)], WHITE, paint)
    elif shape == "triangle":
        g.shape([(-1.1, -0.8), (1.1, -0.8), (0, 1.1)], face, paint)
        g.shape([(-0.7, -0.55), (0.7, -0.55), (0, 0.6)], WHITE, paint)
    elif shape == "square":
        g.shape([(-1, 1), (1, 1), (1, -1), (-1, -1)], face, paint)
        g.shape(
            [(-0.3, -0.6), (0.3, -0.6), (0.3, 0.2), (0.6, 0.2), (0, 0.7), (-0.6, 0.2), (-0.3, 0.2)],
            inner,
            paint,
        )
    elif shape == "rect":
        g.shape([(-1.5, 0.5), (1.5, 0.5), (1.5, -0.5), (-1.5, -0.5)], face, paint)
        g.limb((-1.1, 0), (1.1, 0), 0.2, inner if inner != face else DARK, paint)
        return (u - r * 1.5, v - r * 0.5, u + r * 1.5, v + r * 0.5)
    elif shape == "diamond":
        g.shape([(0, 1.1), (1.1, 0), (0, -1.1), (-1.1, 0)], WHITE, paint)
        g.shape([(0, 0.75), (0.75, 0), (0, -0.75), (-0.75, 0)], face, paint)
    else:  # octagon
        ang = np.linspace(0, 2 * math.pi, 8, endpoint=False) + math.pi / 8
        g.shape(list(zip(np.cos(ang), np.sin(ang))), face, paint)
        g.limb((-0.55, 0), (0.55, 0), 0.3, WHITE, paint)
    return (u - r * 1.1, v - r * 1.1, u + r * 1.1, v + r * 1.1)


def draw_sign(ctx: Ctx, th: Thing, X: float, Z: float, heading: float) -> Optional[BBox]:
    p = th.p
    a = anchor(ctx, X, Z, extent=1.0)
    if a is None:
        return None
    u, v, s, _ = a
    H = p["height"]
    ground_shadow(ctx, X, Z, 0.08, 0.08, H)
    b = _pole(ctx, X, Z, 0.0, H, 0.16, p["pole"])
    r = p["size"] / 2
    plates = [_sign_plate(ctx, u, v - s * (H - r), s, p, p["shape"])]
    if p["double"]:
        second = dict(p, size=p["size"] * 0.8)
        plates.append(_sign_plate(ctx, u, v - s * (H - 2.3 * r - 0.05), s, second, p["shape2"]))
    return union_of([b] + plates)


def draw_bollard(ctx: Ctx, th: Thing, X: float, Z: float, heading: float) -> Optional[BBox]:
    if anchor(ctx, X, Z, extent=0.3) is None:
        return None
    return _pole(ctx, X, Z, 0.0, 0.9, 0.25, th.p["color"])


DRAW: Dict[str, Callable] = {
    "car": draw_car,
    "truck": draw_truck,
    "bus": draw_bus,
    "person": draw_person,
    "tree": draw_tree,
    "bush": draw_bush,
    "lamp": draw_lamp,
    "sign": draw_sign,
    "bollard": draw_bollard,
}

# trainId each family mainly paints (for the records).
CLASS_OF = {
    "car": lk.CAR,
    "truck": lk.TRUCK,
    "bus": lk.BUS,
    "person": lk.PERSON,
    "tree": lk.VEGETATION,
    "bush": lk.VEGETATION,
    "lamp": lk.POLE,
    "sign": lk.SIGN,
    "bollard": lk.POLE,
}
