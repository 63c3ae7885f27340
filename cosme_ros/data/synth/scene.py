"""Render a world from a camera pose: sky, far skyline, ground, buildings, then things far to near.

Occlusion is the painter's algorithm in three layers: everything beyond the sidewalk (buildings,
back gardens) first, then the hedges on the lot line, then the
street-level things sorted by depth. Objects in one layer never cross another layer's lateral band,
so the layers occlude correctly; inside a layer, far-to-near order does.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from cosme_ros.data.synth import anomalies as an
from cosme_ros.data.synth import canvas as cv
from cosme_ros.data.synth import look as lk
from cosme_ros.data.synth import solids, things
from cosme_ros.data.synth.camera import Camera
from cosme_ros.data.synth.canvas import Canvas
from cosme_ros.data.synth.look import scale
from cosme_ros.data.synth.things import Ctx
from cosme_ros.data.synth.world import ZEBRA_BEFORE, Lot, World

VIEW = 400.0  # metres of street drawn ahead of the camera
VEHICLES = ("car", "truck", "bus")


# --- ground ----------------------------------------------------------------------------------
def _zs(cam: Camera, z0: float, z1: float, n: int) -> Optional[np.ndarray]:
    lo = max(z0, cam.z + 0.35)
    hi = min(z1, cam.z + VIEW)
    if hi <= lo:
        return None
    d0, d1 = lo - cam.z, hi - cam.z
    return cam.z + d0 * (d1 / d0) ** np.linspace(0, 1, n)


def strip(
    world: World,
    cam: Camera,
    a0: float,
    a1: float,
    z0: float,
    z1: float,
    y: float = 0.0,
    n: int = 18,
) -> Optional[np.ndarray]:
    """Image polygon of the ground band between laterals a0, a1 and depths z0, z1."""
    zs = _zs(cam, z0, z1, n if world.road.k else 4)
    if zs is None:
        return None
    xr = world.road.xref(zs)
    P = np.concatenate(
        [
            np.stack([xr + a0, np.full_like(zs, y), zs], 1),
            np.stack([xr[::-1] + a1, np.full_like(zs, y), zs[::-1]], 1),
        ]
    )
    return cam.project_poly(P)


def kerb_face(world: World, cam: Camera, a: float, z0: float, z1: float, h: float):
    zs = _zs(cam, z0, z1, 18 if world.road.k else 4)
    if zs is None:
        return None
    X = world.road.xref(zs) + a
    P = np.concatenate(
        [
            np.stack([X, np.zeros_like(zs), zs], 1),
            np.stack([X[::-1], np.full_like(zs, h), zs[::-1]], 1),
        ]
    )
    return cam.project_poly(P)


def cross_face(world: World, cam: Camera, z: float, a0: float, a1: float, y0: float, y1: float):
    """A vertical quad across the street at depth z (kerb faces, facades facing the camera)."""
    x = float(world.road.xref(z))
    P = np.array([[x + a0, y0, z], [x + a1, y0, z], [x + a1, y1, z], [x + a0, y1, z]])
    return cam.project_poly(P)


def _intervals(world: World, sgn: int, z0: float, z1: float) -> List[Tuple[float, float]]:
    cuts = sorted((j.z, j.z + j.width) for j in world.junctions if sgn in j.sides)
    out, z = [], z0
    for a, b in cuts:
        if a > z:
            out.append((z, min(a, z1)))
        z = max(z, b)
    if z < z1:
        out.append((z, z1))
    return [(a, b) for a, b in out if b > a]


def draw_ground(world: World, cam: Camera, c: Canvas) -> None:
    road = world.road
    look = world.look
    kh = road.kerb_h
    zlo, zhi = cam.z - 5, cam.z + VIEW

    def band(a0, a1, z0, z1, y, color, label, mat, n=18):
        c.poly(strip(world, cam, a0, a1, z0, z1, y, n), look.face(color, (0, 1, 0)), label, mat)

    # A paved base under everything, so that no crack between ground polygons shows sky.
    band(-400.0, 400.0, zlo, zhi, kh, world.sides[1].sidewalk_color, lk.SIDEWALK, cv.PAVING)
    # Beyond the sidewalks: lot grounds (paved yards or grass).
    for sgn, side in world.sides.items():
        a0 = side.walk1(road)
        if side.style != "urban":
            band(a0, a0 + sgn * 400, zlo, zhi, kh, side.terrain_color, lk.TERRAIN, cv.GRASS)
        else:
            band(a0, a0 + sgn * 400, zlo, zhi, kh, side.sidewalk_color, lk.SIDEWALK, cv.PAVING)
    for lot in world.lots:
        if lot.z1 < zlo or lot.z0 > zhi:
            continue
        side = world.sides[lot.sgn]
        if lot.ground == lk.TERRAIN:
            col, mat = side.terrain_color, cv.GRASS
        else:
            col, mat = scale(side.sidewalk_color, 0.95), cv.PAVING
        a0 = side.walk1(road)
        band(a0, a0 + lot.sgn * 400, lot.z0, lot.z1, kh, col, lot.ground, mat)
    # Cross streets: carriageway, the sidewalks along them, the kerb facing the camera.
    for j in world.junctions:
        for sgn in j.sides:
            side = world.sides[sgn]
            e = road.edge(sgn)
            far = e + sgn * 400
            band(e, far, j.z, j.z + j.width, 0.0, road.color, lk.ROAD, cv.ASPHALT)
            for z0, z1 in ((j.z, j.z + j.walk), (j.z + j.width - j.walk, j.z + j.width)):
                band(e, far, z0, z1, kh, side.sidewalk_color, lk.SIDEWALK, cv.PAVING)
            c.poly(
                cross_face(world, cam, j.z + j.width - j.walk, e, far, 0.0, kh),
                look.face(side.kerb_color, (0, 0, -1)),
                lk.SIDEWALK,
                cv.CONCRETE,
            )
    # The carriageway, its patches and manholes.
    band(road.left, road.right, zlo, zhi, 0.0, road.color, lk.ROAD, cv.ASPHALT)
    for kind, a, z, sa, sz, col in world.road_features:
        if not (cam.z < z < cam.z + 80):
            continue
        if kind == "patch":
            band(a - sa / 2, a + sa / 2, z - sz / 2, z + sz / 2, 0.0, col, lk.ROAD, cv.ASPHALT, 4)
        else:
            ang = np.linspace(0, 2 * math.pi, 12, endpoint=False)
            X = float(road.xref(z)) + a + sa * np.cos(ang)
            P = np.stack([X, np.zeros_like(ang), z + sa * np.sin(ang)], 1)
            c.poly(cam.project_poly(P), look.face(col, (0, 1, 0)), lk.ROAD, cv.METAL)
    # Verges, sidewalks and kerbs, interrupted by the cross streets.
    for sgn, side in world.sides.items():
        e = road.edge(sgn)
        for z0, z1 in _intervals(world, sgn, zlo, zhi):
            if side.verge > 0:
                band(e, side.walk0(road), z0, z1, kh, side.terrain_color, lk.TERRAIN, cv.GRASS)
            band(
                side.walk0(road),
                side.walk1(road),
                z0,
                z1,
                kh,
                side.sidewalk_color,
                lk.SIDEWALK,
                cv.PAVING,
            )
            band(e, e + sgn * 0.18, z0, z1, kh, side.kerb_color, lk.SIDEWALK, cv.CONCRETE)
            c.poly(
                kerb_face(world, cam, e, z0, z1, kh),
                look.face(side.kerb_color, (-sgn, 0, 0)),
                lk.SIDEWALK,
                cv.CONCRETE,
            )
            if side.slab > 0:
                _slabs(world, cam, c, side, z0, z1)
    _markings(world, cam, c)
    _shadows(world, cam, c)


def _slabs(world: World, cam: Camera, c: Canvas, side, z0: float, z1: float) -> None:
    road = world.road
    a0, a1 = side.walk0(road), side.walk1(road)
    lo, hi = max(z0, cam.z + 1.0), min(z1, cam.z + 35.0)
    if hi <= lo:
        return
    zs = np.arange(math.ceil(lo / side.slab) * side.slab, hi, side.slab)
    segs = []
    if len(zs):
        xr = road.xref(zs)
        P0 = np.stack([xr + a0, np.full_like(zs, road.kerb_h), zs], 1)
        P1 = np.stack([xr + a1, np.full_like(zs, road.kerb_h), zs], 1)
        uv0, d0 = cam.project(P0)
        uv1, d1 = cam.project(P1)
        segs += [(uv0[i], uv1[i]) for i in range(len(zs)) if d0[i] > 0.5 and d1[i] > 0.5]
    n = int(abs(a1 - a0) / side.slab)
    for i in range(1, n + 1):
        a = a0 + math.copysign(i * side.slab, a1 - a0)
        ends = np.array(
            [
                [float(road.xref(lo)) + a, road.kerb_h, lo],
                [float(road.xref(hi)) + a, road.kerb_h, hi],
            ]
        )
        uv, d = cam.project(ends)
        if (d > 0.5).all():
            segs.append((uv[0], uv[1]))
    c.paint_lines(segs, scale(world.look.face(side.sidewalk_color, (0, 1, 0)), 0.8))


def _dashes(
    world: World,
    cam: Camera,
    a: float,
    width: float,
    dash: float,
    period: float,
    z0: float,
    z1: float,
) -> List[np.ndarray]:
    lo, hi = max(z0, cam.z + 0.5), min(z1, cam.z + 120)
    if hi <= lo:
        return []
    starts = np.arange(math.floor(lo / period) * period, hi, period)
    if not len(starts):
        return []
    zz = np.stack([starts, starts + dash, starts + dash, starts], 1)
    xr = world.road.xref(zz)
    xx = xr + a + np.array([-width / 2, -width / 2, width / 2, width / 2])
    P = np.stack([xx, np.zeros_like(xx), zz], -1)
    uv, d = cam.project(P)
    ok = (d > 0.4).all(axis=1)
    return [q for q in uv[ok]]


def _markings(world: World, cam: Camera, c: Canvas) -> None:
    road, look = world.road, world.look
    col = look.face(road.marking, (0, 1, 0))
    polys = []
    zlo, zhi = cam.z - 5, cam.z + VIEW
    w = 0.13
    for sgn, n in ((1, road.lanes_r), (-1, road.lanes_l)):
        for i in range(1, n):
            polys += _dashes(world, cam, sgn * i * road.lane_w, w, 3.0, 9.0, zlo, zhi)
        park = road.park_r if sgn > 0 else road.park_l
        if n and park > 0:
            a = road.edge(sgn) - sgn * park
            polys += _dashes(world, cam, a, w, 1.0, 2.0, zlo, zhi)
    if road.lanes_l:
        if road.center_solid:
            for a_, b_ in _intervals(world, 1, zlo, zhi):
                polys.append(strip(world, cam, -w / 2, w / 2, a_, b_))
        else:
            polys += _dashes(world, cam, 0.0, w, 4.0, 8.0, zlo, zhi)
    for j in world.junctions:  # zebra crossing and stop line
        z0 = j.z - ZEBRA_BEFORE
        if j.z < cam.z + 1:
            continue
        a = road.left
        while a < road.right - 0.3:
            polys.append(strip(world, cam, a, a + 0.5, z0, z0 + 3.0, 0.0, 2))
            a += 1.0
        polys.append(strip(world, cam, 0.0, road.right - road.park_r, z0 - 1.6, z0 - 1.2, 0.0, 2))
    c.polys([p for p in polys if p is not None], col, lk.ROAD, cv.MARKING)


def _shadows(world: World, cam: Camera, c: Canvas) -> None:
    """Shadows of buildings and walls across sidewalk and road (towards the street's centre)."""
    look, road = world.look, world.road
    dx, dz = look.shadow_dir
    polys = []
    for lot in world.lots:
        h = lot.p.get("height") or (lot.p.get("front") or {}).get("height")
        if not h or lot.z1 < cam.z - 10 or lot.z0 > cam.z + 200 or lot.sgn * dx >= 0:
            continue
        side = world.sides[lot.sgn]
        a = side.walk1(road) + lot.sgn * (lot.setback if lot.kind in ("building", "house") else 0.0)
        reach = abs(dx) * h
        a1 = a - lot.sgn * min(reach, 60.0)
        z0, z1 = lot.z0, lot.z1
        ground = [(a, z0), (a, z1), (a1, z1 + dz * h), (a1, z0 + dz * h)]
        P = np.array([[float(road.xref(z)) + a_, 0.0, z] for a_, z in ground])
        polys.append(cam.project_poly(P))
    c.shadow_polys(polys, look.shadow)


# --- beyond the sidewalk ---------------------------------------------------------------------
def draw_backdrop(world: World, cam: Camera, c: Canvas) -> None:
    z = world.backdrop_z
    if z - cam.z < 20:
        return
    look = world.look
    xr = float(world.road.xref(z))
    for a0, a1, h, label, col in world.backdrop:
        if label == lk.BUILDING:
            P = np.array([[xr + a0, -1.0, z], [xr + a1, -1.0, z], [xr + a1, h, z], [xr + a0, h, z]])
            c.poly(cam.project_poly(P), look.face(col, (0, 0, -1)), label, cv.PLASTER)
        else:
            xs = np.linspace(a0, a1, 9)
            hs = h * (0.75 + 0.25 * np.sin(xs * 0.37 + a0) * np.cos(xs * 0.23))
            crest = np.stack([xr + xs, hs, np.full_like(xs, z)], 1)
            P = np.concatenate([[[xr + a0, -1.0, z]], crest, [[xr + a1, -1.0, z]]])
            c.poly(cam.project_poly(P), col, label, cv.LEAF)


def _windows(
    ctx: Ctx,
    lot: Lot,
    corners: np.ndarray,
    face: str,
    length: float,
    H: float,
    rng: np.random.Generator,
) -> None:
    p, c, cam, look = lot.p, ctx.canvas, ctx.cam, ctx.look
    win = p["win"]
    n = solids.face_normal(corners, face)
    ncol = int((length - 1.0) / win["spacing"])
    if ncol < 1:
        return
    s_c = (np.arange(ncol) + 0.5) / ncol
    hw = win["w"] / 2 / length
    first = 1 if p.get("shop") else 0
    floors = np.arange(first, p["floors"])
    t_c = (floors * p["floor_h"] + p["floor_h"] * 0.55) / H
    hh = win["h"] / 2 / H
    S, T = np.meshgrid(s_c, t_c)
    S, T = S.ravel(), T.ravel()
    fr = 0.12
    fs, ft = hw + fr / length, hh + fr / H
    frames = np.stack([S - fs, S + fs, T - ft, T + ft], 1)
    groups = [(frames, look.face(win["frame"], n), cv.PLASTER)]
    glass = np.stack([S - hw, S + hw, T - hh, T + hh], 1)
    lit = rng.random(len(glass)) < win["lit"]
    groups.append((glass[~lit], look.face(win["glass"], n), cv.GLASS))
    if lit.any():
        groups.append((glass[lit], (255, 210, 130), lk.EMISSIVE))
    if p.get("shop"):
        bays = max(1, int(length / 5.0))
        xs = np.linspace(0.02, 0.98, bays + 1)
        shops = np.stack(
            [xs[:-1] + 0.01, xs[1:] - 0.01, np.full(bays, 0.25 / H), np.full(bays, 2.6 / H)], 1
        )
        groups.append((shops, look.face(p["shop_color"], n), cv.GLASS))
        fascia = np.array([[0.0, 1.0, 2.75 / H, 3.1 / H]])
        groups.append((fascia, look.face(scale(p["color"], 0.7), n), cv.PLASTER))
    if p.get("cornice"):
        cornice = np.array([[0.0, 1.0, 1 - 0.45 / H, 1.0]])
        groups.append((cornice, look.face(scale(p["color"], 0.8), n), cv.CONCRETE))
    uv, ok = solids.project_rects(cam, corners, face, np.concatenate([g[0] for g in groups]))
    i = 0
    for rects, col, mat in groups:
        k = len(rects)
        c.polys(uv[i : i + k][ok[i : i + k]], col, lk.BUILDING, mat)
        i += k


def draw_building(ctx: Ctx, world: World, lot: Lot) -> None:
    """A building (or a house with a gable roof) on its lot: a box with windowed façades."""
    road, cam, look, c = world.road, ctx.cam, ctx.look, ctx.canvas
    side = world.sides[lot.sgn]
    p = lot.p
    a0 = side.walk1(road) + lot.sgn * lot.setback
    a1 = a0 + lot.sgn * p["depth"]
    zm = 0.5 * (lot.z0 + lot.z1)
    heading = road.heading(zm)
    X = float(road.xref(zm))
    H = p["height"]
    w0, w1 = sorted((a0, a1))
    corners = solids.box(
        X + 0.5 * (w0 + w1),
        zm,
        heading,
        lot.z0 - zm,
        lot.z1 - zm,
        -(w1 - w0) / 2,
        (w1 - w0) / 2,
        0.0,
        H,
    )
    faces = solids.draw_hexa(c, cam, look, corners, p["color"], lk.BUILDING, cv.PLASTER)
    if not faces:
        return
    rng = np.random.default_rng(p["seed"])
    facade = "left" if lot.sgn > 0 else "right"
    for face in faces:
        if face == facade:
            _windows(ctx, lot, corners, face, lot.z1 - lot.z0, H, rng)
        elif face == "rear":
            _windows(ctx, _with(lot, shop=False), corners, face, p["depth"], H, rng)
    if lot.kind == "house":
        roof_h = float(p["depth"] * 0.35)  # a gable roof: a prism with its ridge along the street
        half = (w1 - w0) / 2 + 0.3
        ends = (lot.z0 - zm - 0.3, lot.z1 - zm + 0.3)
        roof = solids.hexa(
            X + 0.5 * (w0 + w1),
            zm,
            heading,
            (*ends, -half, half, H),
            (*ends, -0.01, 0.01, H + roof_h),
        )
        # The eaves' underside first (seen from below), then the roof planes.
        solids.draw_hexa(
            c, cam, look, roof, scale(p["color"], 0.6), lk.BUILDING, cv.PLASTER, faces=("bottom",)
        )
        solids.draw_hexa(c, cam, look, roof, p["roof"], lk.BUILDING, cv.CONCRETE)


def _with(lot: Lot, **changes) -> Lot:
    """A copy of ``lot`` with some parameters changed."""
    return Lot(lot.sgn, lot.z0, lot.z1, lot.kind, lot.ground, lot.setback, dict(lot.p, **changes))


def draw_front(ctx: Ctx, world: World, lot: Lot) -> None:
    """The hedge on the lot line."""
    f = lot.p.get("front")
    if not f:
        return
    road, cam, look, c = world.road, ctx.cam, ctx.look, ctx.canvas
    side = world.sides[lot.sgn]
    a = side.walk1(road)
    thick = f["thick"]
    zm = 0.5 * (lot.z0 + lot.z1)
    heading = road.heading(zm)
    X = float(road.xref(zm)) + a + lot.sgn * thick / 2
    top = f["height"] + road.kerb_h
    corners = solids.box(X, zm, heading, lot.z0 - zm, lot.z1 - zm, -thick / 2, thick / 2, 0.0, top)
    solids.draw_hexa(c, cam, look, corners, f["color"], lk.VEGETATION, cv.LEAF)


# --- the frame -------------------------------------------------------------------------------
def render(world: World, cam: Camera, t: float = 0.0) -> Tuple[Canvas, List[Dict]]:
    """Draw the world at time ``t`` (seconds; moving things advance) → canvas and records."""
    h, w = cam.height, cam.width
    c = Canvas(h, w)
    c.lm[..., 0] = lk.SKY
    c.lm[..., 1] = cv.SKY
    ctx = Ctx(canvas=c, cam=cam, look=world.look, road=world.road, t=t)
    draw_backdrop(world, cam, c)
    draw_ground(world, cam, c)

    # Layer 1: buildings and back-garden trees, far to near.
    back = []
    for lot in world.lots:
        if lot.kind in ("building", "house") and lot.z1 > cam.z + 0.5 and lot.z0 < cam.z + VIEW:
            back.append((max(lot.z0, cam.z + 0.5) - cam.z, "lot", lot))
    for th in world.things:
        if th.layer == 1:
            a, z = th.at(t)
            if cam.z + 1.0 < z < cam.z + 150:
                back.append((z - cam.z, "thing", th))
    back.sort(key=lambda e: -e[0])
    objects: List[Dict] = []
    for _, kind, item in back:
        if kind == "lot":
            draw_building(ctx, world, item)
        else:
            _draw_thing(ctx, world, item, t, objects)
    # Layer 2: lot-line structures.
    fronts = [
        lot for lot in world.lots if lot.p.get("front") and lot.z1 > cam.z and lot.z0 < cam.z + VIEW
    ]
    fronts.sort(key=lambda lot: -(max(lot.z0, cam.z) - cam.z))
    for lot in fronts:
        draw_front(ctx, world, lot)
    # Layer 3: street level, far to near.
    street = []
    for th in world.things:
        if th.layer != 3:
            continue
        a, z = th.at(t)
        X = float(world.road.xref(z)) + a
        d = float(cam.depth(X, z))
        reach = th.p["length"] / 2 if th.kind in VEHICLES else 0.5
        if -reach < d < 130:
            # Sort by the nearest end: a long vehicle beside a pedestrian hides what is beyond
            # its near end.
            street.append((d - reach, th))
    street.sort(key=lambda e: -e[0])
    for _, th in street:
        _draw_thing(ctx, world, th, t, objects)
    return c, objects


def ground_height(world: World, a: float, z: float) -> float:
    """Kerb height beyond the carriageway (sidewalks, verges, lots), except on cross streets."""
    road = world.road
    if road.left <= a <= road.right:
        return 0.0
    j = world.in_junction(z, 1 if a > 0 else -1)
    if j is not None and j.z + j.walk < z < j.z + j.width - j.walk:
        return 0.0
    return road.kerb_h


def _draw_thing(ctx: Ctx, world: World, th, t: float, objects: List[Dict]) -> None:
    a, z = th.at(t)
    X = float(world.road.xref(z)) + a
    ctx.y = ground_height(world, a, z)
    heading = world.road.heading(z) + th.p.get("heading", 0.0)
    fn = things.DRAW.get(th.kind) or an.DRAW[th.kind]
    bbox = fn(ctx, th, X, z, heading)
    if bbox is None:
        return
    x0, y0, x1, y1 = bbox
    W, H = ctx.canvas.w, ctx.canvas.h
    if x1 < 0 or y1 < 0 or x0 >= W or y0 >= H:
        return
    anomaly = th.kind in an.CODE
    objects.append(
        {
            "family": th.kind,
            "class": 255 if anomaly else things.CLASS_OF[th.kind],
            "anomaly": anomaly,
            "bbox": [round(float(v), 1) for v in (x0, y0, x1, y1)],
            "depth": round(float(ctx.cam.depth(X, z)), 2),
        }
    )
    if th.p.get("odd"):
        objects[-1]["odd_colour"] = True
