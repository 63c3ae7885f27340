"""Colours, lighting and the final compositing pass (textures, shadows, wet road, exposure).

Everything that makes "unusual colour" a poor cue lives here: known classes sometimes take odd
colours (a pink car, a blue building, autumn trees, a red bike lane), the whole frame gets a colour
cast, dusk or overcast light, and cast shadows fall across road and sidewalk. All of it is drawn in
every split, so none of it is anomalous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Tuple

import cv2
import numpy as np

from cosme_ros.data.synth import canvas as cv
from cosme_ros.data.synth.canvas import Canvas

RGB = Tuple[float, float, float]

(
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    FENCE,
    POLE,
    LIGHT,
    SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    TRUCK,
    BUS,
    TRAIN,
    MOTORCYCLE,
    BICYCLE,
) = range(19)
GROUND_IDS = (ROAD, SIDEWALK, TERRAIN)

EMISSIVE = cv.N_MATERIALS  # lamps, lit windows, car lights: not dimmed at dusk
N_MAT = cv.N_MATERIALS + 1

# Texture amplitudes per material: (pixel grain, leafy clumps, large-scale mottling).
_TEX = np.zeros((256, 3), np.float32)
for _m, _a in {
    cv.FLAT: (0.02, 0.0, 0.02),
    cv.ASPHALT: (0.08, 0.0, 0.035),
    cv.PAVING: (0.05, 0.0, 0.035),
    cv.LEAF: (0.06, 0.38, 0.10),
    cv.PLASTER: (0.03, 0.0, 0.04),
    cv.GLASS: (0.01, 0.0, 0.08),
    cv.PAINT: (0.012, 0.0, 0.012),
    cv.FABRIC: (0.05, 0.0, 0.03),
    cv.GRASS: (0.10, 0.14, 0.12),
    cv.SKY: (0.004, 0.0, 0.0),
    cv.FUR: (0.10, 0.18, 0.05),
    cv.WOOD: (0.06, 0.05, 0.06),
    cv.RUBBER: (0.05, 0.0, 0.02),
    cv.METAL: (0.02, 0.0, 0.05),
    cv.SKIN: (0.02, 0.0, 0.01),
    cv.CONCRETE: (0.07, 0.0, 0.08),
    cv.BARK: (0.10, 0.12, 0.03),
    cv.MARKING: (0.08, 0.0, 0.12),
    cv.PLASTIC: (0.02, 0.0, 0.02),
    EMISSIVE: (0.0, 0.0, 0.0),
}.items():
    _TEX[_m] = _a


def jitter(rng: np.random.Generator, color: RGB, amount: float = 12.0) -> RGB:
    c = np.clip(np.asarray(color, np.float64) + rng.normal(0.0, amount, 3), 0, 255)
    return tuple(float(v) for v in c)


def scale(color: RGB, k: float) -> RGB:
    return tuple(float(min(255.0, max(0.0, c * k))) for c in color)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(float((1 - t) * x + t * y) for x, y in zip(a, b))


def pick(rng: np.random.Generator, options) -> RGB:
    return jitter(rng, options[int(rng.integers(len(options)))], 10.0)


CAR_COLORS = [
    (235, 235, 232),
    (25, 25, 28),
    (160, 163, 168),
    (95, 98, 104),
    (30, 45, 95),
    (150, 25, 25),
    (35, 70, 45),
    (200, 190, 165),
    (60, 60, 70),
    (120, 130, 145),
]
ODD_COLORS = [
    (235, 110, 190),
    (150, 230, 40),
    (130, 50, 190),
    (250, 140, 20),
    (30, 200, 220),
    (245, 225, 40),
    (250, 60, 120),
    (60, 90, 250),
    (30, 220, 130),
]
PLASTER_COLORS = [
    (205, 190, 160),
    (225, 215, 190),
    (170, 165, 160),
    (150, 90, 70),
    (235, 232, 225),
    (200, 160, 100),
    (210, 150, 130),
    (120, 115, 112),
    (185, 175, 150),
    (160, 120, 95),
]
ODD_BUILDING = [
    (80, 120, 200),
    (90, 170, 120),
    (150, 110, 190),
    (230, 140, 170),
    (70, 180, 190),
    (220, 210, 60),
]
SIDEWALK_COLORS = [
    (150, 148, 145),
    (175, 170, 160),
    (160, 120, 115),
    (135, 135, 140),
    (190, 180, 165),
]
TERRAIN_COLORS = [(105, 135, 60), (125, 145, 70), (150, 140, 85), (120, 105, 75), (95, 125, 55)]
LEAF_COLORS = [(60, 95, 35), (45, 80, 30), (80, 110, 45), (55, 90, 55), (70, 100, 30)]
AUTUMN_LEAF = [(190, 110, 30), (170, 60, 30), (200, 170, 40), (140, 90, 40)]
CLOTHES = [
    (30, 30, 35),
    (200, 200, 205),
    (40, 50, 110),
    (120, 30, 30),
    (60, 80, 50),
    (150, 130, 100),
    (90, 90, 95),
    (220, 180, 40),
    (30, 110, 160),
    (170, 70, 120),
    (230, 90, 40),
    (240, 240, 240),
]
SKIN = [(235, 200, 170), (200, 150, 115), (150, 100, 70), (95, 65, 45), (225, 180, 150)]
HAIR = [(30, 25, 20), (80, 55, 35), (150, 110, 60), (200, 180, 130), (110, 110, 110)]


@dataclass
class Look:
    """Per-image light and weather."""

    kind: str  # day, overcast, dusk
    sun: Tuple[float, float, float]  # unit vector towards the sun (X, Y, Z)
    ambient: float
    diffuse: float
    shadow: int  # 0–255 multiplier of shadowed ground
    shadow_dir: Tuple[float, float]  # ground displacement per metre of height (X, Z)
    exposure: float
    cast: np.ndarray  # per-channel gain
    gamma: float
    wet: float  # 0 = dry; else reflection strength on the road
    sky_top: RGB
    sky_horizon: RGB
    clouds: float
    haze: float
    lamps_on: bool
    odd: Dict[str, float] = field(default_factory=dict)

    def face(self, color: RGB, normal) -> RGB:
        """Lambert shading of a flat face with outward normal ``normal``."""
        sun = self.sun
        d = float(normal[0]) * sun[0] + float(normal[1]) * sun[1] + float(normal[2]) * sun[2]
        k = self.ambient + self.diffuse * max(0.0, d)
        return scale(color, k)


def sample_look(rng: np.random.Generator) -> Look:
    u = rng.random()
    kind = "day" if u < 0.58 else ("overcast" if u < 0.83 else "dusk")
    az = rng.uniform(-math.pi, math.pi)
    elev = rng.uniform(0.35, 1.1) if kind == "day" else rng.uniform(0.12, 0.4)
    sun = np.array([math.cos(elev) * math.sin(az), math.sin(elev), math.cos(elev) * math.cos(az)])
    k = 1.0 / math.tan(elev)  # shadow length per metre of height
    shadow_dir = (-sun[0] / math.cos(elev) * k, -sun[2] / math.cos(elev) * k)
    cast = np.ones(3)
    if rng.random() < 0.3:
        cast = np.clip(rng.normal(1.0, 0.12, 3), 0.7, 1.3)
    if kind == "day":
        ambient, diffuse = rng.uniform(0.5, 0.65), rng.uniform(0.35, 0.55)
        shadow = rng.integers(95, 160)
        exposure = rng.uniform(0.8, 1.2)
        sky_top = jitter(rng, (70, 130, 210), 15)
        sky_h = jitter(rng, (190, 215, 235), 10)
        clouds = rng.uniform(0.0, 0.7)
    elif kind == "overcast":
        ambient, diffuse, shadow = rng.uniform(0.8, 0.95), rng.uniform(0.05, 0.15), 235
        exposure = rng.uniform(0.75, 1.1)
        g = rng.uniform(170, 225)
        sky_top = jitter(rng, (g - 15, g - 10, g), 6)
        sky_h = jitter(rng, (g + 10, g + 12, g + 15), 6)
        clouds = rng.uniform(0.3, 1.0)
    else:
        ambient, diffuse = rng.uniform(0.55, 0.7), rng.uniform(0.2, 0.35)
        shadow = rng.integers(130, 190)
        exposure = rng.uniform(0.45, 0.7)
        cast = cast * (
            np.array([1.18, 0.97, 0.82]) if rng.random() < 0.6 else np.array([0.85, 0.92, 1.15])
        )
        sky_top = jitter(rng, (60, 70, 130), 15)
        sky_h = jitter(rng, (250, 170, 110), 15)
        clouds = rng.uniform(0.0, 0.6)
    odd = {"car": 0.1, "building": 0.12, "autumn": 0.15, "road": 0.08}
    return Look(
        kind=kind,
        sun=tuple(float(v) for v in sun),
        ambient=float(ambient),
        diffuse=float(diffuse),
        shadow=int(shadow),
        shadow_dir=(float(shadow_dir[0]), float(shadow_dir[1])),
        exposure=float(exposure),
        cast=cast,
        gamma=float(rng.uniform(0.85, 1.15)),
        wet=float(rng.uniform(0.18, 0.35)) if rng.random() < 0.12 else 0.0,
        sky_top=sky_top,
        sky_horizon=sky_h,
        clouds=float(clouds),
        haze=float(rng.uniform(0.0, 0.35)),
        lamps_on=kind == "dusk",
        odd=odd,
    )


@dataclass
class Noise:
    """Texture noise fields for one frame (or one whole drive, so textures do not flicker)."""

    grain: np.ndarray
    leaf: np.ndarray
    mottle: np.ndarray
    clouds: np.ndarray

    @classmethod
    def make(cls, rng: np.random.Generator, h: int, w: int) -> "Noise":
        grain = rng.standard_normal((h, w), dtype=np.float32)
        c = max(2, int(round(w / 170)))
        leaf = rng.standard_normal(((h + c - 1) // c, (w + c - 1) // c), dtype=np.float32)
        leaf = np.tanh(1.6 * cv2.resize(leaf, (w, h), interpolation=cv2.INTER_LINEAR))
        m = max(4, w // 40)
        mottle = rng.standard_normal((max(2, h // m), max(2, w // m)), dtype=np.float32)
        mottle = cv2.resize(mottle, (w, h), interpolation=cv2.INTER_CUBIC)
        clouds = np.zeros((h, w), np.float32)
        for k, amp in ((4, 1.0), (8, 0.5), (16, 0.3), (32, 0.15)):
            octave = rng.standard_normal((k, 2 * k), dtype=np.float32)
            clouds += amp * cv2.resize(octave, (w, h), interpolation=cv2.INTER_CUBIC)
        return cls(grain, leaf, mottle, clouds)


def sky_image(look: Look, h: int, w: int, horizon: float, noise: Noise) -> np.ndarray:
    """The top ``h`` rows of the sky: gradient to the horizon, clouds from the noise field."""
    rows = np.arange(h, dtype=np.float32)[:, None]
    t = np.clip(rows / max(horizon, 1.0), 0.0, 1.0) ** 1.5
    top = np.asarray(look.sky_top, np.float32)
    hor = np.asarray(look.sky_horizon, np.float32)
    sky = (1 - t)[..., None] * top + t[..., None] * hor
    sky = np.broadcast_to(sky, (h, w, 3)).copy()
    if look.clouds > 0:
        a = np.clip((noise.clouds[:h] - (1.3 - 1.5 * look.clouds)) * 0.8, 0.0, 0.9)[..., None]
        white = np.asarray((235, 235, 238) if look.kind != "dusk" else (240, 180, 150), np.float32)
        sky = sky * (1 - a) + white * a * (0.85 + 0.15 * noise.mottle[:h, :, None])
    return sky


def finish(
    canvas: Canvas, look: Look, noise: Noise, horizon: float, rng: np.random.Generator
) -> np.ndarray:
    """Textures, cast shadows, wet road, exposure and sensor effects → uint8 RGB."""
    h, w = canvas.h, canvas.w
    lab = canvas.lm[..., 0]
    mat = canvas.lm[..., 1]
    img = canvas.rgb.astype(np.float32)
    sky = lab == SKY
    rows = np.flatnonzero(sky.any(axis=1))
    if len(rows):
        r1 = int(rows[-1]) + 1
        part = sky[:r1]
        img[:r1][part] = sky_image(look, r1, w, horizon, noise)[part]
    amp = _TEX[mat]
    tex = 1.0 + amp[..., 0] * noise.grain + amp[..., 1] * noise.leaf + amp[..., 2] * noise.mottle
    img *= tex[..., None]
    ground = (lab == ROAD) | (lab == SIDEWALK) | (lab == TERRAIN)
    if (canvas.shade < 255).any():
        sh = np.where(ground, canvas.shade.astype(np.float32) * (1.0 / 255.0), 1.0)
        img *= sh[..., None]
    if look.wet > 0:
        road = lab == ROAD
        hz = int(round(horizon))
        if road.any() and 0 < hz < h:
            # Mirror the frame about the horizon and smear it vertically: a glossy wet sheen.
            src_rows = np.clip(2 * hz - np.arange(h), 0, h - 1)
            refl = cv2.blur(img[src_rows], (1, max(3, h // 24)))
            img[road] = img[road] * (0.75 - 0.3 * look.wet) + refl[road] * look.wet * 1.2
    emissive = mat == EMISSIVE
    gain = (look.exposure * look.cast).astype(np.float32)
    if emissive.any():
        keep = img[emissive]
        img *= gain
        img[emissive] = keep
    else:
        img *= gain
    if look.haze > 0:  # strongest at the horizon, negligible 30 % of the height away
        r0 = int(max(0, horizon - 0.3 * h))
        r1 = int(min(h, horizon + 0.3 * h))
        if r1 > r0:
            rows = np.arange(r0, r1, dtype=np.float32)[:, None]
            a = (look.haze * np.exp(-np.abs(rows - horizon) / (0.08 * h)))[..., None]
            hazec = np.asarray(look.sky_horizon, np.float32) * look.exposure
            img[r0:r1] = img[r0:r1] * (1 - a) + hazec * a
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** look.gamma + 0.5, 0, 255).astype(np.uint8)
    out = cv2.LUT(out, lut)
    sigma = 0.35 + 0.25 * w / 1024
    out = cv2.GaussianBlur(out, (3, 3), sigma)
    img = out.astype(np.float32)
    img += np.float32(rng.uniform(0.8, 3.0)) * noise.grain[..., None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
