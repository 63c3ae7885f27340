"""One synthetic frame from (seed, split, index): image, trainIds, anomaly mask and object records.

Every frame has its own random stream, seeded by (seed, split, index[, attempt]), so frames can be
rendered in any order, in any process, and come out byte-identical. The scene is drawn before any
size-dependent random numbers (texture noise), so one seed gives the same street at every size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from cosme_ros.data.synth import anomalies as an
from cosme_ros.data.synth import look as lk
from cosme_ros.data.synth.camera import Camera
from cosme_ros.data.synth.canvas import ANOMALY_BASE, VOID
from cosme_ros.data.synth.scene import render
from cosme_ros.data.synth.world import World, make_world

GENERATOR_VERSION = "2.0"
SPLITS = {"train": 0, "val": 1, "test": 2}
DRIVE_STREAM = 3
MAX_ATTEMPTS = 20


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    semantic: np.ndarray  # (H, W) uint8 Cityscapes trainIds; 255 = void or anomaly
    anomaly: np.ndarray  # (H, W) uint8: 0 in-distribution, 1 anomaly, 255 void
    objects: List[Dict] = field(default_factory=list)
    families: List[str] = field(default_factory=list)
    conditions: Dict = field(default_factory=dict)

    @property
    def anomaly_families(self) -> List[str]:
        return [f for f in self.families if f in an.CODE]


def frame_rng(seed: int, stream: int, index: int, attempt: int = 0) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    return np.random.default_rng([int(seed), int(stream), int(index), int(attempt)])


def make_camera(rng: np.random.Generator, size: Tuple[int, int], world: World) -> Camera:
    """Intrinsics and pose of a forward-facing car camera with a per-image horizon and yaw."""
    h, w = size
    return Camera(
        width=w,
        height=h,
        f=float(w * rng.uniform(1.0, 1.4)),
        cx=float(w * (0.5 + rng.uniform(-0.05, 0.05))),
        cy=float(h * rng.uniform(0.36, 0.5)),
        height_m=float(rng.uniform(1.25, 1.8)),
        x=float(world.ego_a),
        z=0.0,
        yaw=float(rng.uniform(-0.05, 0.05)),
    )


def compose(canvas, objects: List[Dict], world: World, cam: Camera, noise, rng) -> Frame:
    """Finish a rendered canvas into a :class:`Frame` (image, semantic, anomaly mask, records)."""
    image = lk.finish(canvas, world.look, noise, cam.cy, rng)
    labels = canvas.lm[..., 0]
    is_anomaly = (labels >= ANOMALY_BASE) & (labels < VOID)
    semantic = np.where(is_anomaly, VOID, labels).astype(np.uint8)
    mask = np.zeros_like(semantic)
    mask[is_anomaly] = 1
    mask[labels == VOID] = VOID
    counts = np.bincount(labels.ravel(), minlength=256)
    for o in objects:
        if o["anomaly"]:
            o["pixels"] = int(counts[an.CODE[o["family"]]])
    families = {o["family"] for o in objects if not o["anomaly"]}
    families |= {f for f, code in an.CODE.items() if counts[code] > 0}
    return Frame(
        image=image,
        semantic=semantic,
        anomaly=mask,
        objects=objects,
        families=sorted(families),
        conditions=world.conditions(objects),
    )


def render_frame(seed: int, split: str, index: int, size: Tuple[int, int] = (192, 384)) -> Frame:
    """Frame ``index`` of ``split`` (train, val: no anomalies; test: ≥ 1 visible anomaly)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    h, w = size
    min_visible = max(12, int(2e-4 * h * w))  # anomaly pixels a test frame must show
    for attempt in range(MAX_ATTEMPTS):
        rng = frame_rng(seed, SPLITS[split], index, attempt)
        world = make_world(rng, z_min=-10.0, z_max=140.0)
        cam = make_camera(rng, size, world)
        if split == "test":
            n = int(rng.choice([1, 1, 2, 2, 3]))
            an.place(rng, world, n, 5.0, 80.0, cam.f, max(3.0, 0.015 * h), half_fov=0.5 * w / cam.f)
        canvas, objects = render(world, cam)
        noise = lk.Noise.make(rng, h, w)
        frame = compose(canvas, objects, world, cam, noise, rng)
        if split != "test" or int((frame.anomaly == 1).sum()) >= min_visible:
            return frame
    raise RuntimeError(
        f"no visible anomaly after {MAX_ATTEMPTS} attempts " f"(seed {seed}, index {index})"
    )
