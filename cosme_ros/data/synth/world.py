"""The layout of one street: road cross-section, sides, lots along the street, and things on it.

Lateral positions ``a`` are measured from the road's reference line (the line between the two
directions of traffic), which bends as ``X = k·Z²/2``; ``a`` > 0 is the right-hand side, where the
camera drives. A world covers a stretch of street ``[z_min, z_max]``: one still image needs ~150 m,
a drive needs its length plus the view distance. All randomness is drawn here, at layout time, so
that rendering a world from any camera pose is a pure function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from cosme_ros.data.synth import look as lk
from cosme_ros.data.synth.look import Look, jitter, pick

RGB = Tuple[float, float, float]
ZEBRA_BEFORE = 3.5  # the zebra crossing spans [junction.z - 3.5, junction.z - 0.5]

SHOP_COLORS = [(40, 40, 45), (120, 30, 30), (30, 60, 40), (200, 200, 200)]
ROOF_COLORS = [(140, 60, 45), (70, 65, 65), (110, 80, 60)]
TRUNK_COLORS = [(90, 70, 50), (70, 60, 50), (110, 100, 85)]
CAR_GLASS = [(40, 50, 60), (60, 70, 85), (25, 28, 32)]
TRUCK_COLORS = [(230, 230, 230), (180, 40, 30), (40, 70, 140), (240, 200, 40), (90, 95, 100)]
TRUCK_BOX_COLORS = [(235, 235, 235), (200, 200, 195), (120, 130, 140), (60, 90, 60)]
BUS_COLORS = [(240, 200, 30), (200, 40, 40), (230, 230, 230), (40, 120, 60), (30, 90, 170)]
BUS_STRIPES = [(40, 40, 40), (230, 230, 230), (30, 90, 170)]
LAMP_COLORS = [(110, 115, 120), (60, 65, 70), (150, 150, 145), (40, 70, 50)]


@dataclass
class Road:
    k: float  # curvature: reference line X = k Z² / 2
    lane_w: float
    lanes_r: int  # lanes in the camera's direction
    lanes_l: int  # oncoming lanes (0: one-way street)
    park_r: float  # parking strip width beside the kerb (0: none)
    park_l: float
    kerb_h: float
    color: RGB
    marking: RGB
    center_solid: bool
    odd: bool = False

    def xref(self, z):
        return 0.5 * self.k * np.asarray(z, np.float64) ** 2

    def heading(self, z: float) -> float:
        return math.atan(self.k * z)

    @property
    def right(self) -> float:
        return self.lanes_r * self.lane_w + self.park_r

    @property
    def left(self) -> float:
        return -(self.lanes_l * self.lane_w + self.park_l)

    def edge(self, sgn: int) -> float:
        return self.right if sgn > 0 else self.left

    def lane_center(self, i: int, sgn: int = 1) -> float:
        """Centre of lane i (0 = next to the centre line) on side sgn."""
        return sgn * (i + 0.5) * self.lane_w


@dataclass
class Junction:
    z: float  # start of the cross street (its near kerb line)
    width: float  # kerb to kerb plus both sidewalks
    walk: float  # sidewalk width along the cross street
    sides: Tuple[int, ...]


@dataclass
class Side:
    sgn: int
    style: str  # urban, suburban, park
    verge: float  # grass strip between kerb and sidewalk
    sidewalk: float
    sidewalk_color: RGB
    terrain_color: RGB
    kerb_color: RGB
    slab: float  # paving slab size (0: plain)

    def kerb(self, road: Road) -> float:
        return road.edge(self.sgn)

    def walk0(self, road: Road) -> float:
        return road.edge(self.sgn) + self.sgn * self.verge

    def walk1(self, road: Road) -> float:
        return self.walk0(road) + self.sgn * self.sidewalk


@dataclass
class Lot:
    """A stretch of one side beyond the sidewalk: a building, a garden, a park, a wall…"""

    sgn: int
    z0: float
    z1: float
    kind: str  # building, house, park, wall, gap
    ground: int  # trainId of its ground (sidewalk or terrain)
    setback: float  # building line distance from the sidewalk's outer edge
    p: Dict = field(default_factory=dict)


@dataclass
class Thing:
    kind: str
    a: float
    z: float
    p: Dict = field(default_factory=dict)
    vz: float = 0.0
    va: float = 0.0
    layer: int = 3  # 1: behind the lot line (back gardens), 3: street level

    def at(self, t: float) -> Tuple[float, float]:
        """Position at time t; people crossing the road stop on the far sidewalk."""
        a = self.a + self.va * t
        if "a_lim" in self.p:
            a = min(max(a, self.p["a_lim"][0]), self.p["a_lim"][1])
        return a, self.z + self.vz * t


@dataclass
class World:
    road: Road
    sides: Dict[int, Side]
    junctions: List[Junction]
    lots: List[Lot]
    things: List[Thing]
    look: Look
    z_min: float
    z_max: float
    backdrop_z: float
    backdrop: List[Tuple[float, float, float, int, RGB]]  # (a0, a1, height, label, colour)
    ego_a: float
    road_features: List[Tuple[str, float, float, float, float, RGB]]  # patches, manholes

    def conditions(self, objects: List[Dict]) -> Dict:
        """The hard in-distribution cases of a frame showing ``objects`` of this street."""
        look = self.look
        odd = sorted(
            {o["family"] for o in objects if o.get("odd_colour")}
            | ({"building"} if any(lot.p.get("odd") for lot in self.lots) else set())
            | ({"road"} if self.road.odd else set())
        )
        return {
            "light": look.kind,
            "wet": look.wet > 0,
            "cast": bool(abs(look.cast - 1).max() > 0.05),
            "shadows": look.kind != "overcast",
            "odd_colours": odd,
        }

    def in_junction(self, z: float, sgn: int, margin: float = 0.0) -> Optional[Junction]:
        for j in self.junctions:
            if sgn in j.sides and j.z - margin <= z <= j.z + j.width + margin:
                return j
        return None


# --------------------------------------------------------------------------------------------
def _road(rng: np.random.Generator, look: Look) -> Road:
    lanes_l = int(rng.choice([0, 1, 1, 2], p=[0.15, 0.45, 0.2, 0.2]))
    lanes_r = int(rng.choice([1, 2], p=[0.55, 0.45])) if lanes_l else int(rng.integers(1, 3))
    g = rng.uniform(70, 115)
    color = (g, g, g + rng.uniform(-3, 6))
    odd = bool(rng.random() < look.odd["road"])
    if odd:  # reddish, greenish or pale concrete roads are still road
        color = pick(rng, [(150, 80, 70), (175, 170, 160), (110, 70, 90), (90, 110, 90)])
    marking = (235, 235, 230) if rng.random() < 0.85 else (230, 190, 40)
    k = 0.0 if rng.random() < 0.5 else rng.uniform(-1, 1) / rng.uniform(300, 1200)
    return Road(
        k=float(k),
        lane_w=float(rng.uniform(3.0, 3.7)),
        lanes_r=lanes_r,
        lanes_l=lanes_l,
        park_r=float(rng.uniform(2.0, 2.5)) if rng.random() < 0.55 else 0.0,
        park_l=float(rng.uniform(2.0, 2.5)) if lanes_l and rng.random() < 0.45 else 0.0,
        kerb_h=float(rng.uniform(0.1, 0.16)),
        color=color,
        marking=marking,
        center_solid=bool(rng.random() < 0.4),
        odd=odd,
    )


def _side(rng: np.random.Generator, sgn: int, style: str) -> Side:
    verge = 0.0
    if style != "urban" or rng.random() < 0.3:
        verge = float(rng.uniform(0.8, 3.0))
    return Side(
        sgn=sgn,
        style=style,
        verge=verge,
        sidewalk=float(rng.uniform(1.8, 4.5) if style == "urban" else rng.uniform(1.5, 3.0)),
        sidewalk_color=pick(rng, lk.SIDEWALK_COLORS),
        terrain_color=pick(rng, lk.TERRAIN_COLORS),
        kerb_color=jitter(rng, (185, 185, 180), 12),
        slab=float(rng.choice([0.0, 0.3, 0.5, 0.8, 1.0])),
    )


def _building_color(rng, look: Look) -> Tuple[RGB, bool]:
    """A façade colour and whether it comes from the unusual palette."""
    if rng.random() < look.odd["building"]:
        return pick(rng, lk.ODD_BUILDING), True
    return pick(rng, lk.PLASTER_COLORS), False


def _lots(
    rng, side: Side, road: Road, junctions: List[Junction], z0: float, z1: float, look: Look
) -> List[Lot]:
    lots: List[Lot] = []
    z = z0
    while z < z1:
        j = next((j for j in junctions if side.sgn in j.sides and j.z <= z < j.z + j.width), None)
        if j is not None:
            z = j.z + j.width
            continue
        nxt = min([j.z for j in junctions if side.sgn in j.sides and j.z > z] + [z1 + 40.0])
        u = rng.random()
        if side.style == "urban":
            kind = "building" if u < 0.8 else ("gap" if u < 0.88 else "hedge")
        elif side.style == "suburban":
            kind = "house" if u < 0.6 else ("hedge" if u < 0.75 else ("park" if u < 0.9 else "gap"))
        else:
            kind = "park" if u < 0.85 else "hedge"
        length = {
            "building": rng.uniform(8, 28),
            "gap": rng.uniform(3, 12),
            "hedge": rng.uniform(10, 35),
            "house": rng.uniform(12, 22),
            "park": rng.uniform(20, 60),
        }[kind]
        end = min(z + length, nxt)
        if end - z < 2.0:
            z = end
            continue
        p, ground, setback = _lot_params(rng, kind, side, look, z, end)
        lots.append(
            Lot(
                sgn=side.sgn,
                z0=float(z),
                z1=float(end),
                kind=kind,
                ground=ground,
                setback=setback,
                p=p,
            )
        )
        z = end
    return lots


def _lot_params(rng, kind: str, side: Side, look: Look, z: float, end: float):
    """(parameters, ground class, setback) of one lot of ``kind`` between ``z`` and ``end``."""
    p: Dict = {}
    ground = lk.SIDEWALK
    setback = 0.0
    if kind == "building":
        floors = int(rng.integers(3, 9))
        color, odd = _building_color(rng, look)
        p.update(
            color=color,
            odd=odd,
            floors=floors,
            floor_h=float(rng.uniform(2.9, 3.6)),
            depth=float(rng.uniform(12, 25)),
            win=_window_style(rng, look),
            shop=bool(rng.random() < 0.6),
            shop_color=pick(rng, SHOP_COLORS),
            cornice=bool(rng.random() < 0.6),
            seed=int(rng.integers(1 << 30)),
        )
        p["height"] = floors * p["floor_h"] + rng.uniform(0.3, 1.5)
        setback = 0.0 if rng.random() < 0.8 else float(rng.uniform(0.5, 3))
    elif kind == "house":
        floors = int(rng.integers(1, 3))
        color, odd = _building_color(rng, look)
        p.update(
            color=color,
            odd=odd,
            floors=floors,
            floor_h=float(rng.uniform(2.7, 3.1)),
            depth=float(rng.uniform(8, 12)),
            win=_window_style(rng, look),
            shop=False,
            roof=pick(rng, ROOF_COLORS),
            cornice=False,
            seed=int(rng.integers(1 << 30)),
        )
        p["height"] = floors * p["floor_h"] + 0.5
        setback = float(rng.uniform(3.0, 8.0))
        ground = lk.TERRAIN
        p["front"] = _hedge(rng) if rng.random() < 0.55 else None
    elif kind == "park":
        ground = lk.TERRAIN
        p["front"] = _hedge(rng) if rng.random() < 0.6 else None
        n = int(max(1, (end - z) / rng.uniform(5, 12)))
        p["trees"] = _back_trees(rng, look, n, 1.5, 25, z, end)
    elif kind == "hedge":
        ground = lk.SIDEWALK if side.style == "urban" else lk.TERRAIN
        p["front"] = _hedge(rng)
        p["trees"] = _back_trees(rng, look, int(rng.integers(0, 4)), 2, 12, z, end)
    else:  # gap: a paved yard with maybe a tree or two
        p["trees"] = _back_trees(rng, look, int(rng.integers(0, 3)), 2, 10, z, end)
    return p, ground, setback


def _back_trees(rng, look: Look, n: int, d0: float, d1: float, z0: float, z1: float) -> List:
    """``n`` trees ``d0``–``d1`` metres behind the lot line, between ``z0`` and ``z1``."""
    return [
        (float(rng.uniform(d0, d1)), float(rng.uniform(z0, z1)), _tree_params(rng, look))
        for _ in range(n)
    ]


def _window_style(rng, look: Look) -> Dict:
    glass = pick(rng, [(40, 50, 60), (70, 90, 110), (30, 35, 40), (100, 120, 140), (60, 60, 55)])
    frame = pick(rng, [(235, 235, 230), (60, 55, 50), (150, 150, 150), (120, 80, 50)])
    return dict(
        glass=glass,
        frame=frame,
        w=float(rng.uniform(0.9, 1.6)),
        h=float(rng.uniform(1.2, 1.8)),
        spacing=float(rng.uniform(2.4, 4.0)),
        lit=float(rng.uniform(0.1, 0.5)) if look.lamps_on else 0.0,
    )


def _hedge(rng) -> Dict:
    """The lot-line structure: a hedge. Generator 1.0 also drew walls and fences; at 192×384 the
    demo teacher confused them with buildings and vegetation (IoU 61 and 53 after 12 epochs), and
    the issue's world does not need them, so 2.0 leaves them out."""
    return {
        "height": float(rng.uniform(0.8, 1.8)),
        "color": pick(rng, lk.LEAF_COLORS),
        "thick": float(rng.uniform(0.6, 1.2)),
    }


def _tree_params(rng, look: Look) -> Dict:
    autumn = rng.random() < look.odd["autumn"]
    leaf = pick(rng, lk.AUTUMN_LEAF if autumn else lk.LEAF_COLORS)
    conifer = rng.random() < 0.15
    h = float(rng.uniform(4, 11))
    crown_r = float(rng.uniform(1.4, 3.2) if not conifer else rng.uniform(1.0, 2.0))
    blobs = [
        (
            float(rng.uniform(-0.6, 0.6)),
            float(rng.uniform(-0.4, 0.5)),
            float(rng.uniform(0.45, 0.8)),
        )
        for _ in range(int(rng.integers(4, 8)))
    ]
    return dict(
        height=h,
        crown_r=crown_r,
        odd=bool(autumn),
        trunk_h=float(h * rng.uniform(0.3, 0.5)),
        leaf=leaf,
        trunk=pick(rng, TRUNK_COLORS),
        conifer=conifer,
        blobs=blobs,
        trunk_w=float(rng.uniform(0.18, 0.4)),
    )


# --------------------------------------------------------------------------------------------
def _vehicle(rng, look: Look, kind: Optional[str] = None) -> Tuple[str, Dict]:
    if kind is None:
        u = rng.random()
        kind = "car" if u < 0.84 else ("truck" if u < 0.93 else "bus")
    if kind == "car":
        odd = bool(rng.random() < look.odd["car"])
        color = pick(rng, lk.ODD_COLORS) if odd else pick(rng, lk.CAR_COLORS)
        style = rng.choice(["sedan", "hatch", "van", "suv"], p=[0.4, 0.3, 0.15, 0.15])
        length = {
            "sedan": rng.uniform(4.2, 4.8),
            "hatch": rng.uniform(3.6, 4.2),
            "van": rng.uniform(4.6, 5.2),
            "suv": rng.uniform(4.3, 4.8),
        }[style]
        height = {
            "sedan": rng.uniform(1.38, 1.5),
            "hatch": rng.uniform(1.42, 1.55),
            "van": rng.uniform(1.9, 2.2),
            "suv": rng.uniform(1.62, 1.8),
        }[style]
        return kind, dict(
            color=color,
            odd=odd,
            style=str(style),
            length=float(length),
            height=float(height),
            width=float(rng.uniform(1.72, 1.9)),
            glass=pick(rng, CAR_GLASS),
        )
    if kind == "truck":
        return kind, dict(
            color=pick(rng, TRUCK_COLORS),
            box=pick(rng, TRUCK_BOX_COLORS),
            length=float(rng.uniform(6.5, 10)),
            width=2.45,
            height=float(rng.uniform(3.0, 3.8)),
            glass=(35, 40, 48),
        )
    color = pick(rng, BUS_COLORS)
    odd = bool(rng.random() < look.odd["car"])
    if odd:
        color = pick(rng, lk.ODD_COLORS)
    return kind, dict(
        color=color,
        odd=odd,
        stripe=pick(rng, BUS_STRIPES),
        length=float(rng.uniform(10.5, 12.5)),
        width=2.5,
        height=float(rng.uniform(3.0, 3.3)),
        glass=(35, 45, 55),
    )


def _person(rng, view: str) -> Dict:
    return dict(
        height=float(rng.uniform(1.55, 1.95)),
        view=view,
        shirt=pick(rng, lk.CLOTHES),
        trousers=pick(rng, lk.CLOTHES),
        skin=pick(rng, lk.SKIN),
        hair=pick(rng, lk.HAIR),
        phase=float(rng.uniform(0, 2 * math.pi)),
        facing=int(rng.choice([-1, 1])),
        coat=bool(rng.random() < 0.25),
        bag=bool(rng.random() < 0.2),
        width=float(rng.uniform(0.9, 1.15)),
    )


def place_things(
    rng,
    road: Road,
    sides: Dict[int, Side],
    junctions: List[Junction],
    lots: List[Lot],
    look: Look,
    z0: float,
    z1: float,
    ego_a: float,
    speed: float = 0.0,
) -> List[Thing]:
    """Everything at street level: vehicles, people, poles, signs, trees by the kerb. The
    helpers draw from ``rng`` in a fixed order (a world's frames depend on it)."""
    st = _Street(rng, road, junctions, look, z0, z1, speed)
    things = _traffic(st, ego_a) + _parked(st)
    for sgn, side in sides.items():
        things += _pedestrians(st, side, sgn)
        things += _lamps(st, side, sgn)
        things += _trees(st, side, sgn)
        things += _bollards(st, side, sgn)
        things += _bushes(st, side, sgn)
    return things + _signs(st, sides) + _zebra_people(st)


@dataclass
class _Street:
    """What :func:`place_things`' helpers share: the draw, the road, its junctions, the span."""

    rng: Any
    road: Road
    junctions: List[Junction]
    look: Look
    z0: float
    z1: float
    speed: float

    def in_junction(self, z: float, sgn: int, margin: float = 0.0) -> bool:
        return any(
            sgn in j.sides and j.z - margin <= z <= j.z + j.width + margin for j in self.junctions
        )


def _traffic(st: _Street, ego_a: float) -> List[Thing]:
    """Moving traffic: one speed per lane so cars in a lane never run into each other."""
    rng, road, z0, z1, speed = st.rng, st.road, st.z0, st.z1, st.speed
    things: List[Thing] = []
    for sgn, n in ((1, road.lanes_r), (-1, road.lanes_l)):
        for i in range(n):
            a_lane = road.lane_center(i, sgn)
            ego_lane = sgn > 0 and abs(a_lane - ego_a) < road.lane_w / 2
            if sgn > 0:
                v = speed + (rng.uniform(0.5, 2.5) if ego_lane else rng.uniform(-2.0, 3.0))
            else:
                v = -rng.uniform(7, 13)
            # Nothing closer than 8 m ahead in the camera's own lane (the camera starts at z = 0).
            z = max(z0, 0.0) + rng.uniform(8, 30) if ego_lane else z0 + rng.uniform(-5, 15)
            if speed == 0.0:
                v = 0.0
            while z < z1:
                kind, p = _vehicle(rng, st.look)
                L = p["length"]
                p["heading"] = 0.0 if sgn > 0 else math.pi
                a = a_lane + rng.uniform(-0.3, 0.3)
                things.append(Thing(kind, float(a), float(z + L / 2), p, vz=float(v)))
                z += L + rng.uniform(6, 40) * (1.6 if ego_lane else 1.0)
    return things


def _parked(st: _Street) -> List[Thing]:
    """Parked cars along the kerbs."""
    rng, road, z1 = st.rng, st.road, st.z1
    things: List[Thing] = []
    for sgn, width in ((1, road.park_r), (-1, road.park_l)):
        if width <= 0:
            continue
        a = road.edge(sgn) - sgn * width / 2
        z = st.z0 + rng.uniform(-3, 4)
        while z < z1:
            kind, p = _vehicle(rng, st.look, "car" if rng.random() < 0.95 else "truck")
            if kind == "truck":
                p["length"] = min(p["length"], 7.0)
            L = p["length"]
            free = not st.in_junction(z, sgn, 2.0) and not st.in_junction(z + L, sgn, 2.0)
            if free and rng.random() < 0.85:
                p["heading"] = 0.0 if (sgn > 0 or rng.random() < 0.3) else math.pi
                at = a + rng.uniform(-0.15, 0.15) * sgn
                things.append(Thing(kind, float(at), float(z + L / 2), p))
            z += L + rng.uniform(0.6, 4.0) + (rng.uniform(4, 12) if rng.random() < 0.15 else 0.0)
    return things


def _pedestrians(st: _Street, side: Side, sgn: int) -> List[Thing]:
    """Pedestrians on the sidewalk, some in pairs."""
    rng, z0, z1 = st.rng, st.z0, st.z1
    w0, w1 = side.walk0(st.road), side.walk1(st.road)
    things: List[Thing] = []
    for _ in range(rng.poisson(max(0.0, 5.0 * (z1 - z0) / 100) + 1.2)):
        z = rng.uniform(z0 + 2, z1)
        if st.in_junction(z, sgn):
            continue
        if side.sidewalk > 0.8:
            a = rng.uniform(min(w0, w1) + 0.3, max(w0, w1) - 0.3)
        else:
            a = w0 + sgn * 0.5
        view = "front" if rng.random() < 0.75 else "side"
        p = _person(rng, view)
        vz = p["facing"] * rng.uniform(0.9, 1.6) if st.speed else 0.0
        vz = float(vz if view == "front" else 0.0)  # side views stand (waiting, talking)
        things.append(Thing("person", float(a), float(z), p, vz=vz))
        if rng.random() < 0.3:  # walking in pairs
            q = _person(rng, view)
            a2 = a + sgn * rng.uniform(0.5, 0.8)
            z2 = z + rng.uniform(-0.5, 0.5)
            things.append(Thing("person", float(a2), float(z2), q, vz=vz))
    return things


def _lamps(st: _Street, side: Side, sgn: int) -> List[Thing]:
    """Street lamps at a regular spacing on most streets."""
    rng, kerb = st.rng, side.kerb(st.road)
    things: List[Thing] = []
    if rng.random() < 0.8:
        spacing = rng.uniform(22, 40)
        z = st.z0 + rng.uniform(0, spacing)
        lamp = dict(
            height=float(rng.uniform(6, 9)),
            arm=float(rng.uniform(0.8, 2.0)),
            color=pick(rng, LAMP_COLORS),
            width=float(rng.uniform(0.3, 0.45)),
        )
        while z < st.z1:
            if not st.in_junction(z, sgn, 1.0):
                things.append(Thing("lamp", float(kerb + sgn * 0.45), float(z), dict(lamp)))
            z += spacing
    return things


def _trees(st: _Street, side: Side, sgn: int) -> List[Thing]:
    """Trees on the verge or in pits along the kerb."""
    rng, kerb, look = st.rng, side.kerb(st.road), st.look
    things: List[Thing] = []
    if side.verge > 0.7 and rng.random() < 0.75 or rng.random() < 0.25:
        spacing = rng.uniform(7, 15)
        a = kerb + sgn * (side.verge / 2 if side.verge > 0.7 else 0.8)
        z = st.z0 + rng.uniform(0, spacing)
        base = _tree_params(rng, look)
        while z < st.z1:
            if not st.in_junction(z, sgn, 2.0) and rng.random() < 0.85:
                tp = dict(
                    base,
                    height=base["height"] * rng.uniform(0.85, 1.15),
                    blobs=_tree_params(rng, look)["blobs"],
                )
                things.append(Thing("tree", float(a), float(z), tp))
            z += spacing * rng.uniform(0.85, 1.15)
    return things


def _bollards(st: _Street, side: Side, sgn: int) -> List[Thing]:
    rng, kerb = st.rng, side.kerb(st.road)
    things: List[Thing] = []
    if rng.random() < 0.15:
        z = rng.uniform(st.z0 + 3, st.z1 - 10)
        for i in range(int(rng.integers(3, 9))):
            if not st.in_junction(z + i * 1.5, sgn):
                colour = (60, 60, 60) if i % 2 else (70, 70, 70)
                at = float(kerb + sgn * 0.3)
                things.append(Thing("bollard", at, float(z + i * 1.5), dict(color=colour)))
    return things


def _bushes(st: _Street, side: Side, sgn: int) -> List[Thing]:
    """Bushes on a wide verge."""
    rng, kerb = st.rng, side.kerb(st.road)
    things: List[Thing] = []
    if side.verge > 1.0 and rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 5))):
            z = rng.uniform(st.z0 + 3, st.z1)
            if not st.in_junction(z, sgn):
                bush = dict(
                    color=pick(rng, lk.LEAF_COLORS),
                    size=float(rng.uniform(0.6, 1.3)),
                    blobs=_tree_params(rng, st.look)["blobs"],
                )
                things.append(Thing("bush", float(kerb + sgn * side.verge / 2), float(z), bush))
    return things


def _signs(st: _Street, sides: Dict[int, Side]) -> List[Thing]:
    """Traffic signs beside the road."""
    rng, road = st.rng, st.road
    things: List[Thing] = []
    for _ in range(rng.poisson(2.0 * max(1.0, (st.z1 - st.z0) / 100)) + 1):
        sgn = 1 if rng.random() < 0.7 else -1
        if sgn not in sides:
            continue
        z = rng.uniform(st.z0 + 5, st.z1)
        if st.in_junction(z, sgn):
            continue
        shape = str(
            rng.choice(
                ["circle", "triangle", "square", "rect", "diamond", "octagon"],
                p=[0.3, 0.22, 0.18, 0.14, 0.1, 0.06],
            )
        )
        things.append(Thing("sign", float(road.edge(sgn) + sgn * 0.5), float(z), _sign(rng, shape)))
    return things


def _zebra_people(st: _Street) -> List[Thing]:
    """Junctions: people on the zebra crossing."""
    rng, road = st.rng, st.road
    things: List[Thing] = []
    for j in st.junctions:
        zebra = j.z - ZEBRA_BEFORE
        lim = (road.left - 1.5, road.right + 1.5)
        for _ in range(rng.poisson(1.2)):
            p = dict(_person(rng, "side"), a_lim=lim)
            a = rng.uniform(road.left - 1, road.right + 1)
            things.append(
                Thing(
                    "person",
                    float(a),
                    float(zebra + rng.uniform(0.3, 2.7)),
                    p,
                    va=float(p["facing"] * rng.uniform(1.0, 1.5)) if st.speed else 0.0,
                )
            )
    return things


def _sign(rng, shape: str) -> Dict:
    face = {
        "circle": pick(rng, [(200, 30, 30), (30, 70, 170)]),
        "triangle": (200, 30, 30),
        "square": pick(rng, [(30, 70, 170), (30, 120, 60)]),
        "rect": pick(rng, [(240, 240, 235), (30, 70, 170), (30, 110, 60), (230, 190, 40)]),
        "diamond": (230, 200, 30),
        "octagon": (200, 30, 30),
    }[shape]
    inner = pick(rng, [(240, 240, 240), (245, 245, 245), (30, 30, 30)])
    return dict(
        shape=shape,
        face=face,
        inner=inner,
        size=float(rng.uniform(0.8, 1.2)),
        height=float(rng.uniform(2.4, 3.4)),
        pole=pick(rng, [(150, 150, 150), (110, 115, 120)]),
        double=bool(rng.random() < 0.2),
        shape2=str(rng.choice(["rect", "square", "circle"])),
    )


# --------------------------------------------------------------------------------------------
def make_world(
    rng: np.random.Generator,
    z_min: float,
    z_max: float,
    speed: float = 0.0,
    junction_every: Optional[float] = None,
) -> World:
    """Lay out one street over ``[z_min, z_max]`` (the camera starts at z = 0)."""
    look = lk.sample_look(rng)
    road = _road(rng, look)
    ego_lane = int(rng.integers(0, road.lanes_r))
    ego_a = road.lane_center(ego_lane) + float(rng.uniform(-0.35, 0.35))
    styles = ["urban", "suburban", "park"]
    style_r = str(rng.choice(styles, p=[0.62, 0.23, 0.15]))
    style_l = style_r if rng.random() < 0.6 else str(rng.choice(styles, p=[0.6, 0.25, 0.15]))
    sides = {1: _side(rng, 1, style_r), -1: _side(rng, -1, style_l)}

    junctions: List[Junction] = []
    if junction_every is None:
        if rng.random() < 0.45:
            junctions.append(_junction(rng, float(rng.uniform(18, 70))))
    else:
        z = z_min + rng.uniform(0.3, 1.0) * junction_every
        while z < z_max:
            junctions.append(_junction(rng, float(z)))
            z += junction_every * rng.uniform(0.6, 1.4)

    lots = []
    far = z_max + 150
    for sgn, side in sides.items():
        lots += _lots(rng, side, road, junctions, z_min - 30, far, look)

    things = place_things(rng, road, sides, junctions, lots, look, z_min, z_max, ego_a, speed)
    for lot in lots:  # trees in back gardens and parks
        base = sides[lot.sgn].walk1(road) + lot.sgn * lot.setback
        for da, z, tp in lot.p.get("trees", []):
            things.append(Thing("tree", float(base + lot.sgn * da), float(z), tp, layer=1))

    backdrop = []
    a = -420.0
    while a < 420.0:
        w = float(rng.uniform(15, 60))
        if rng.random() < 0.65:
            h = float(rng.uniform(6, 30))
            backdrop.append((a, a + w, h, lk.BUILDING, _building_color(rng, look)[0]))
        else:
            h = float(rng.uniform(6, 14))
            backdrop.append((a, a + w, h, lk.VEGETATION, pick(rng, lk.LEAF_COLORS)))
        a += w
    features = []
    for _ in range(rng.poisson(0.04 * (z_max - z_min))):
        kind = "manhole" if rng.random() < 0.45 else "patch"
        a = float(rng.uniform(road.left + 0.5, road.right - 0.5))
        z = float(rng.uniform(z_min + 2, z_max))
        if kind == "manhole":
            size, col = (0.35, 0.35), (55, 55, 58)
        else:
            size = (float(rng.uniform(0.6, 3)), float(rng.uniform(1, 6)))
            col = lk.scale(road.color, float(rng.choice([0.8, 0.9, 1.12])))
        features.append((kind, a, z, size[0], size[1], col))
    return World(
        road=road,
        sides=sides,
        junctions=junctions,
        lots=lots,
        things=things,
        look=look,
        z_min=z_min,
        z_max=z_max,
        backdrop_z=float(far + 40),
        backdrop=backdrop,
        ego_a=ego_a,
        road_features=features,
    )


def _junction(rng, z: float) -> Junction:
    walk = float(rng.uniform(2.0, 4.0))
    sides = (1, -1) if rng.random() < 0.7 else ((1,) if rng.random() < 0.5 else (-1,))
    return Junction(z=z, width=float(rng.uniform(7, 13) + 2 * walk), walk=walk, sides=sides)
