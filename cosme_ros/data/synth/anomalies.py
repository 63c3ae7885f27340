"""Anomaly families: objects of kinds that are never drawn in the train or val splits.

Each family is new in *shape*, not only in colour (odd colours of known classes are in-distribution
here): animals on legs, wooden crates and cardboard boxes, tyres, scattered debris, irregular
patterned blobs (lost-and-found style) and barrels. They stand on the road, on the kerb or beside
the road at world sizes, so perspective makes far ones small. Their pixels carry the internal label
``ANOMALY_BASE + family index`` until the frame is finished (then semantic 255, mask 1).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np

from cosme_ros.data.synth import canvas as cv
from cosme_ros.data.synth import look as lk
from cosme_ros.data.synth import solids
from cosme_ros.data.synth.canvas import ANOMALY_BASE
from cosme_ros.data.synth.look import jitter, pick, scale
from cosme_ros.data.synth.things import (
    BBox,
    Ctx,
    Figure,
    poly_bbox,
    union_of,
    anchor,
    decal,
    ground_shadow,
)
from cosme_ros.data.synth.world import Thing, World

FAMILIES = ("animal", "crate", "tyre", "debris", "blob", "barrel")
CODE = {f: ANOMALY_BASE + i for i, f in enumerate(FAMILIES)}

FUR = [(120, 80, 45), (70, 60, 50), (200, 190, 170), (30, 28, 25), (160, 120, 80), (140, 110, 90)]
WOOD = [(185, 145, 95), (160, 120, 75), (200, 170, 120), (120, 90, 60)]
DEBRIS = [
    (150, 150, 145),
    (120, 60, 45),
    (170, 130, 80),
    (40, 40, 45),
    (200, 200, 200),
    (60, 110, 170),
    (220, 200, 60),
    (180, 60, 40),
]


def sample(rng: np.random.Generator, family: str, look) -> Dict:
    """The parameters of one anomaly of ``family``, drawn from ``rng``."""
    if family not in _SAMPLERS:
        raise ValueError(family)
    return _SAMPLERS[family](rng)


def _sample_animal(rng: np.random.Generator) -> Dict:
    kind = str(rng.choice(["dog", "deer", "cow", "boar", "goat"]))
    L, hb = {
        "dog": (rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.65)),
        "deer": (rng.uniform(0.9, 1.4), rng.uniform(0.9, 1.2)),
        "cow": (rng.uniform(1.6, 2.1), rng.uniform(1.2, 1.5)),
        "boar": (rng.uniform(0.9, 1.3), rng.uniform(0.6, 0.85)),
        "goat": (rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.8)),
    }[kind]
    return dict(
        kind=kind,
        length=float(L),
        height=float(hb),
        color=pick(rng, FUR),
        spots=bool(rng.random() < 0.3),
        facing=int(rng.choice([-1, 1])),
        leg=float(rng.uniform(0.45, 0.6)),
        head=float(rng.uniform(0.16, 0.24)),
        view=str(rng.choice(["side", "side", "front"])),
    )


def _sample_crate(rng: np.random.Generator) -> Dict:
    card = rng.random() < 0.35
    size = rng.uniform(0.3, 1.2)
    return dict(
        w=float(size * rng.uniform(0.8, 1.5)),
        l=float(size * rng.uniform(0.8, 1.5)),
        h=float(size * rng.uniform(0.6, 1.1)),
        heading=float(rng.uniform(0, math.pi)),
        color=pick(rng, [(190, 150, 100), (170, 130, 85)] if card else WOOD),
        card=bool(card),
        planks=int(rng.integers(3, 6)),
    )


def _sample_tyre(rng: np.random.Generator) -> Dict:
    return dict(
        r=float(rng.uniform(0.28, 0.5)),
        upright=bool(rng.random() < 0.7),
        turn=float(rng.uniform(0.25, 1.0)),
        rim=bool(rng.random() < 0.5),
        color=jitter(rng, (28, 28, 30), 4),
    )


def _sample_debris(rng: np.random.Generator) -> Dict:
    n = int(rng.integers(6, 26))
    pieces = []
    spread = rng.uniform(0.5, 2.5)
    for _ in range(n):
        m = int(rng.integers(4, 8))
        ang = np.sort(rng.uniform(0, 2 * math.pi, m))
        pieces.append(
            dict(
                dx=float(rng.normal(0, spread / 2)),
                dz=float(rng.normal(0, spread)),
                size=float(rng.uniform(0.06, 0.4)),
                upright=bool(rng.random() < 0.35),
                ang=ang.tolist(),
                rad=rng.uniform(0.5, 1.0, m).tolist(),
                color=pick(rng, DEBRIS),
            )
        )
    return dict(pieces=pieces)


def _sample_blob(rng: np.random.Generator) -> Dict:
    m = int(rng.integers(8, 16))
    ang = np.sort(rng.uniform(0, 2 * math.pi, m))
    size = float(rng.uniform(0.3, 1.4))
    colors = [
        pick(rng, lk.ODD_COLORS + [(30, 30, 30), (240, 240, 240), (120, 60, 160)]) for _ in range(3)
    ]
    return dict(
        size=size,
        ang=ang.tolist(),
        rad=rng.uniform(0.45, 1.0, m).tolist(),
        colors=colors,
        rings=int(rng.integers(1, 4)),
        wide=float(rng.uniform(0.6, 1.6)),
        dots=bool(rng.random() < 0.4),
        dot_xy=rng.uniform(-0.5, 0.5, (6, 2)).tolist(),
    )


def _sample_barrel(rng: np.random.Generator) -> Dict:
    return dict(
        r=float(rng.uniform(0.25, 0.4)),
        h=float(rng.uniform(0.7, 1.0)),
        color=pick(
            rng,
            [
                (30, 70, 160),
                (170, 30, 30),
                (40, 120, 60),
                (220, 180, 30),
                (130, 70, 40),
                (30, 30, 30),
            ],
        ),
        lying=bool(rng.random() < 0.3),
    )


_SAMPLERS: Dict[str, Callable[[np.random.Generator], Dict]] = {
    "animal": _sample_animal,
    "crate": _sample_crate,
    "tyre": _sample_tyre,
    "debris": _sample_debris,
    "blob": _sample_blob,
    "barrel": _sample_barrel,
}


def _size(family: str, p: Dict) -> float:
    """Rough height in metres (visibility check at placement)."""
    return {
        "animal": lambda: p["height"] * 1.1,
        "crate": lambda: p["h"],
        "tyre": lambda: 2 * p["r"] if p["upright"] else 0.25,
        "debris": lambda: 0.25,
        "blob": lambda: p["size"],
        "barrel": lambda: p["h"] if not p["lying"] else 2 * p["r"],
    }[family]()


# --- drawing ---------------------------------------------------------------------------------
def draw_animal(ctx: Ctx, th: Thing, X, Z, heading) -> Optional[BBox]:
    """A quadruped (dog, deer, cow, boar, goat) side-on or facing the camera."""
    p = th.p
    a = anchor(ctx, X, Z, extent=p["length"])
    if a is None:
        return None
    u, v, s, _ = a
    L, H = p["length"], p["height"]
    g = Figure(ctx, u, v, s, p["facing"], CODE["animal"])
    col, dark = p["color"], scale(p["color"], 0.7)
    ground_shadow(ctx, X, Z, L * 0.4 if p["view"] == "side" else 0.3, 0.4, H)
    leg_h = H * p["leg"]
    body_h = H - leg_h
    leg_w = 0.09 * L
    if p["view"] == "front":
        w = 0.22 * L + 0.1
        for dx in (-w * 0.6, w * 0.6):
            g.limb((dx, leg_h + 0.05), (dx, 0), leg_w, dark, cv.FUR)
        g.disc((0, leg_h + body_h / 2), w, col, cv.FUR, ry=body_h / 2)
        hr = p["head"] * L + 0.05
        g.disc((0, H + hr * 0.2), hr * 0.8, scale(col, 1.05), cv.FUR, ry=hr)
        for dx in (-1, 1):  # ears or horns
            g.shape(
                [
                    (dx * hr * 0.6, H + hr * 0.9),
                    (dx * hr * 1.2, H + hr * 1.4),
                    (dx * hr * 0.3, H + hr * 1.1),
                ],
                dark,
                cv.FUR,
            )
        return (u - w * 1.2 * s, v - (H + hr * 1.5) * s, u + w * 1.2 * s, v)
    for i, lx in enumerate((-0.38 * L, -0.3 * L, 0.3 * L, 0.38 * L)):
        swing = 0.06 * L * (1 if i % 2 else -1)
        g.limb(
            (lx, leg_h + body_h * 0.3),
            (lx + swing, 0.0),
            leg_w,
            dark if i in (1, 2) else col,
            cv.FUR,
        )
    g.disc((0, leg_h + body_h / 2), L / 2, col, cv.FUR, ry=body_h / 2)
    if p["spots"]:
        spot = (30, 28, 25) if sum(col) > 400 else (235, 230, 220)
        for dx, dy in ((-0.2, 0.1), (0.1, -0.1), (0.25, 0.15)):
            g.disc((dx * L, leg_h + body_h * (0.5 + dy)), 0.12 * L, spot, cv.FUR, ry=0.18 * body_h)
    hr = p["head"] * L
    nx, ny = 0.55 * L, H + hr * 0.6  # top of the neck
    g.limb((0.38 * L, leg_h + body_h * 0.7), (nx, ny), 0.18 * body_h, col, cv.FUR)
    g.disc((nx + hr * 0.5, ny), hr * 1.1, col, cv.FUR, ry=hr * 0.65, angle=15)
    g.shape(
        [
            (nx - hr * 0.1, ny + hr * 0.4),
            (nx - hr * 0.3, ny + hr * 1.3),
            (nx + hr * 0.2, ny + hr * 0.5),
        ],
        dark,
        cv.FUR,
    )
    g.limb(
        (-0.5 * L, leg_h + body_h * 0.8), (-0.62 * L, leg_h + body_h * 0.1), 0.04 * L, dark, cv.FUR
    )  # tail
    return (u - 0.7 * L * s, v - (H + hr * 1.5) * s, u + (0.75 * L + hr) * s, v)


def draw_crate(ctx: Ctx, th: Thing, X, Z, heading) -> Optional[BBox]:
    """A wooden crate (planks, corner battens) or a taped cardboard box, at any angle."""
    p = th.p
    if anchor(ctx, X, Z, extent=max(p["w"], p["l"])) is None:
        return None
    c, lab, cam, look = ctx.canvas, CODE["crate"], ctx.cam, ctx.look
    ground_shadow(ctx, X, Z, p["w"] * 0.6, p["l"] * 0.6, p["h"])
    hl, hw = p["l"] / 2, p["w"] / 2
    corners = solids.box(X, Z, heading + p["heading"], -hl, hl, -hw, hw, ctx.y, ctx.y + p["h"])
    faces = solids.draw_hexa(c, cam, look, corners, p["color"], lab, cv.WOOD)
    tape = (215, 200, 170)
    for face in faces:
        col = scale(look.face(p["color"], solids.face_normal(corners, face)), 0.62)
        if p["card"]:
            band = [[0.0, 1.0, 0.44, 0.56]] if face == "top" else [[0.0, 1.0, 0.85, 1.0]]
            decal(ctx, corners, face, band, tape, lab, cv.PLASTIC)
            continue
        ts = np.linspace(0, 1, p["planks"] + 1)[1:-1]
        ends = np.stack(
            [np.stack([np.zeros_like(ts), ts], 1), np.stack([np.ones_like(ts), ts], 1)], 1
        )
        uv, z = cam.project(solids.face_points(corners, face, ends))
        if (z > 0.5).all():  # the gaps between planks
            c.paint_lines(uv, col, width=max(1.0, 0.02 * cam.f / z.mean()))
        if face != "top":  # corner battens
            decal(
                ctx,
                corners,
                face,
                [[0.0, 0.1, 0.0, 1.0], [0.9, 1.0, 0.0, 1.0]],
                scale(col, 1.2),
                lab,
                cv.WOOD,
            )
    return poly_bbox(list(faces.values()))


def draw_tyre(ctx: Ctx, th: Thing, X, Z, heading) -> Optional[BBox]:
    """A tyre standing (turned by ``turn``: 1 = side-on) or lying flat; its hole shows what is
    behind unless it has a rim."""
    p = th.p
    a = anchor(ctx, X, Z, extent=p["r"] * 2)
    if a is None:
        return None
    u, v, s, depth = a
    c, lab = ctx.canvas, CODE["tyre"]
    R, turn, col = p["r"], p["turn"], p["color"]
    T = 0.36 * R  # tread depth
    if p["upright"]:
        ground_shadow(ctx, X, Z, R * 0.8, 0.3, 2 * R)
        ax = max(0.5, R * turn * s)
        cy = v - R * s
        tread = 0.2 * (1 - turn) * s  # the tread seen edge-on widens a turned tyre
        if tread >= 1:
            c.ellipse((u + tread / 2, cy), (ax, R * s), 0, scale(col, 0.8), lab, cv.RUBBER)
        ring = (max(0.5, ax - T * turn * s / 2), (R - T / 2) * s)
        c.ellipse((u, cy), ring, 0, col, lab, cv.RUBBER, thickness=max(1.0, T * s))
        if p["rim"]:
            c.ellipse(
                (u, cy),
                (max(0.5, (R - T) * turn * s), (R - T) * s),
                0,
                (150, 150, 155),
                lab,
                cv.METAL,
            )
            c.ellipse(
                (u, cy), (max(0.5, 0.3 * R * turn * s), 0.3 * R * s), 0, (90, 90, 95), lab, cv.METAL
            )
        return (u - ax - tread, v - 2 * R * s, u + ax + tread, v)
    # Lying flat: a ring on the ground, squashed by the view angle.
    flat = ctx.cam.height_m / depth
    outer = (R * s, max(0.5, R * s * flat) + 0.1 * R * s)
    c.ellipse((u, v - 0.2 * R * s), outer, 0, scale(col, 0.8), lab, cv.RUBBER)
    ring = ((R - T / 2) * s, max(0.5, (R - T / 2) * s * flat))
    c.ellipse(
        (u, v - 0.25 * R * s),
        ring,
        0,
        col,
        lab,
        cv.RUBBER,
        thickness=max(1.0, T * s * max(flat, 0.3)),
    )
    return (u - R * s, v - 0.4 * R * s - R * s * flat, u + R * s, v + R * s * flat)


def draw_debris(ctx: Ctx, th: Thing, X, Z, heading) -> Optional[BBox]:
    if anchor(ctx, X, Z, extent=3.0) is None:
        return None
    c, lab, cam = ctx.canvas, CODE["debris"], ctx.cam
    boxes = []
    for q in th.p["pieces"]:
        x, z = X + q["dx"], Z + q["dz"]
        ang = np.asarray(q["ang"])
        rad = np.asarray(q["rad"]) * q["size"]
        if q["upright"]:
            a = anchor(ctx, x, z, extent=0.5)
            if a is None:
                continue
            u, v, s, _ = a
            ys = rad * np.sin(ang)
            uv = np.stack([u + s * rad * np.cos(ang), v - s * (ys - ys.min())], 1)
        else:
            y = np.full_like(ang, 0.02 + ctx.y)
            P = np.stack([x + rad * np.cos(ang), y, z + rad * np.sin(ang)], 1)
            uv, d = cam.project(P)
            if (d < 1.0).any():
                continue
        c.poly(uv, ctx.look.face(q["color"], (0, 1, 0)), lab, cv.CONCRETE)
        boxes.append((uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()))
    return union_of(boxes)


def draw_blob(ctx: Ctx, th: Thing, X, Z, heading) -> Optional[BBox]:
    """An irregular standing shape in concentric odd colours, maybe dotted (lost-and-found)."""
    p = th.p
    a = anchor(ctx, X, Z, extent=p["size"] * 2)
    if a is None:
        return None
    u, v, s, _ = a
    g = Figure(ctx, u, v, s, 1, CODE["blob"])
    size = p["size"]
    ang = np.asarray(p["ang"])
    rad = np.asarray(p["rad"]) * size / 2
    xs, ys = rad * np.cos(ang) * p["wide"], rad * np.sin(ang)
    base = -ys.min()  # its lowest point touches the ground
    ground_shadow(ctx, X, Z, size * p["wide"] * 0.4, 0.3, size)
    for i in range(p["rings"] + 1):
        k = 1.0 - i / (p["rings"] + 1.2)
        g.shape(list(zip(xs * k, base + ys * k)), p["colors"][i % len(p["colors"])], cv.PLASTIC)
    if p["dots"]:
        for dx, dy in p["dot_xy"]:
            g.disc(
                (dx * size * 0.6, base + dy * size * 0.5), 0.06 * size, p["colors"][-1], cv.PLASTIC
            )
    return (u + s * xs.min(), v - s * (base + ys.max()), u + s * xs.max(), v)


def draw_barrel(ctx: Ctx, th: Thing, X, Z, heading) -> Optional[BBox]:
    """An oil drum, standing (top ellipse seen from above) or lying on its side."""
    p = th.p
    a = anchor(ctx, X, Z, extent=1.2)
    if a is None:
        return None
    u, v, s, depth = a
    c, lab = ctx.canvas, CODE["barrel"]
    g = Figure(ctx, u, v, s, 1, lab)
    r, h = p["r"], p["h"]
    col = ctx.look.face(p["color"], (0, 0, -1))
    hoop = scale(col, 0.6)
    ground_shadow(ctx, X, Z, r, r, h)
    if p["lying"]:
        g.shape([(-h / 2, 0), (h / 2, 0), (h / 2, 2 * r), (-h / 2, 2 * r)], col, cv.METAL)
        g.disc((h / 2, r), 0.35 * r, scale(col, 1.2), cv.METAL, ry=r)
        c.paint_lines([(g.pt(k * h, 0), g.pt(k * h, 2 * r)) for k in (-0.2, 0.2)], hoop)
        return (u - h / 2 * s, v - 2 * r * s, u + (h / 2 + 0.35 * r) * s, v)
    flat = max(0.0, (ctx.cam.height_m - h) / depth)  # how much of the lid we see
    c.ellipse((u, v - 0.02 * s), (r * s, r * s * flat + 0.5), 0, col, lab, cv.METAL)
    g.shape([(-r, 0), (r, 0), (r, h), (-r, h)], col, cv.METAL)
    c.ellipse(
        (u, v - h * s),
        (r * s, r * s * flat + 0.5),
        0,
        ctx.look.face(p["color"], (0, 1, 0)),
        lab,
        cv.METAL,
    )
    c.paint_lines(
        [(g.pt(-r, k * h), g.pt(r, k * h)) for k in (0.33, 0.66)], hoop, width=max(1.0, 0.03 * s)
    )
    return (u - r * s, v - h * s - r * s * flat, u + r * s, v)


DRAW = {
    "animal": draw_animal,
    "crate": draw_crate,
    "tyre": draw_tyre,
    "debris": draw_debris,
    "blob": draw_blob,
    "barrel": draw_barrel,
}


# --- placement -------------------------------------------------------------------------------
def place(
    rng: np.random.Generator,
    world: World,
    n: int,
    z0: float,
    z1: float,
    f: float,
    min_px: float,
    avoid_ego_before: Optional[float] = None,
    log: bool = True,
    half_fov: Optional[float] = None,
) -> List[Thing]:
    """Place ``n`` anomalies on and beside the road between ``z0`` and ``z1`` (metres ahead).

    ``f`` and ``min_px``: each anomaly must be at least ``min_px`` tall in the image at its
    distance.
    Things standing where an anomaly lands are removed, so nothing intersects it.
    ``avoid_ego_before``: keep the ego lane free before this z (a drive must not run into one).
    ``log``: distances log-uniform (a still frame: many far, small ones) or uniform (a drive).
    ``half_fov``: tan of half the horizontal field of view; anomalies must lie inside it as seen
    from the start pose (a still frame), or anywhere (a drive: they pass beside the camera).
    """
    road = world.road
    out: List[Thing] = []
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
        p = sample(rng, family, world.look)
        where = rng.choice(["ego", "road", "kerb", "side"], p=[0.35, 0.3, 0.2, 0.15])
        if log:  # far, small ones are as common as near, large ones
            z = float(math.exp(rng.uniform(math.log(max(z0, 1.0)), math.log(z1))))
        else:
            z = float(rng.uniform(z0, z1))
        if where == "ego":
            a = world.ego_a + rng.uniform(-1.2, 1.2)
            if avoid_ego_before is not None and z < avoid_ego_before:
                continue
        elif where == "road":
            a = rng.uniform(road.left + 0.4, road.right - 0.4)
            if avoid_ego_before is not None and abs(a - world.ego_a) < 2.2 and z < avoid_ego_before:
                continue
        elif where == "kerb":
            sgn = 1 if rng.random() < 0.65 else -1
            a = road.edge(sgn) + sgn * rng.uniform(-0.8, 0.8)
        else:
            sgn = 1 if rng.random() < 0.6 else -1
            side = world.sides[sgn]
            a = road.edge(sgn) + sgn * rng.uniform(0.3, max(0.6, side.verge + side.sidewalk - 0.3))
        if world.in_junction(z, 1, 1.0) is not None and abs(a) > max(abs(road.left), road.right):
            continue
        if f * _size(family, p) / max(z, 1e-3) < min_px:
            continue
        lateral = abs(float(road.xref(z)) + a - world.ego_a)
        if half_fov is not None and lateral > 0.85 * half_fov * z:
            continue
        if any(abs(o.z - z) < 3.0 and abs(o.a - a) < 2.0 for o in out):
            continue
        out.append(Thing(family, float(a), float(z), p))

    def overlaps(t: Thing, o: Thing) -> bool:
        wide = t.kind in ("car", "truck", "bus")
        return (
            abs(t.a - o.a) < (1.6 if wide else 0.9)
            and abs(t.z - o.z) < t.p.get("length", 1.0) / 2 + 1.8
        )

    keep = [t for t in world.things if not (t.layer == 3 and any(overlaps(t, o) for o in out))]
    world.things = keep + out
    return out
