"""A continuous drive: the camera moves forward along one street and the world persists.

The street is laid out once for the whole drive plus the view distance; traffic moves at constant
speeds (one speed per lane, so nothing collides), pedestrians walk, and anomalies lie ahead on the
road, the kerb and the sidewalk, growing as the camera approaches and passing beside it. The
camera's own lane stays free of anomalies until after the end of the drive.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional, Tuple

from cosme_ros.data.synth import anomalies as an
from cosme_ros.data.synth import look as lk
from cosme_ros.data.synth.frame import DRIVE_STREAM, Frame, compose, frame_rng, make_camera
from cosme_ros.data.synth.scene import render
from cosme_ros.data.synth.world import make_world

VEHICLES = ("car", "truck", "bus")


def _collides(th, anomaly, duration: float, lane_w: float) -> bool:
    """Whether moving thing ``th`` would pass through ``anomaly`` during the drive."""
    if th.vz == 0.0 and th.va == 0.0:
        return False
    if th.kind in VEHICLES:
        if abs(th.a - anomaly.a) > lane_w * 0.8:
            return False
        reach = th.p.get("length", 4.0) / 2 + 1.5
    elif th.kind == "person":
        if th.va == 0.0 and abs(th.a - anomaly.a) > 1.2:
            return False
        if th.va != 0.0 and abs(th.z - anomaly.z) > 3.0:
            return False
        if th.va != 0.0:  # crossing: does its lateral path cover the anomaly?
            a0, a1 = sorted((th.at(0.0)[0], th.at(duration)[0]))
            return a0 - 1.0 <= anomaly.a <= a1 + 1.0
        reach = 1.5
    else:
        return False
    z0, z1 = sorted((th.z, th.z + th.vz * duration))
    return z0 - reach <= anomaly.z <= z1 + reach


def drive_frames(
    seed: int,
    n: int,
    size: Tuple[int, int] = (192, 384),
    fps: float = 10.0,
    speed: Optional[float] = None,
) -> Iterator[Frame]:
    """Yield ``n`` consecutive frames of one drive at ``fps`` (speed in m/s; default 7–11)."""
    if n < 1 or fps <= 0:
        raise ValueError("a drive needs n >= 1 frames and fps > 0")
    rng = frame_rng(seed, DRIVE_STREAM, 0)
    speed = float(rng.uniform(7.0, 11.0) if speed is None else speed)
    length = speed * (n - 1) / fps
    world = make_world(
        rng, z_min=-10.0, z_max=length + 140.0, speed=max(speed, 1e-3), junction_every=110.0
    )
    cam0 = make_camera(rng, size, world)
    count = max(2, int((length + 70.0) / 25.0))
    placed = an.place(
        rng,
        world,
        count,
        15.0,
        length + 70.0,
        cam0.f,
        max(3.0, 0.015 * size[0]),
        avoid_ego_before=length + 15.0,
        log=False,
    )
    road = world.road
    duration = (n - 1) / fps
    keep = []
    for th in world.things:
        if any(_collides(th, o, duration, road.lane_w) for o in placed):
            continue
        keep.append(th)
    # Nothing slower than the camera may stay in its path: people walking ahead in its lane or
    # crossing in front of it when it arrives are left out of the drive.
    path = []
    for th in keep:
        if th.kind == "person" and (th.vz != 0.0 or th.va != 0.0) and th.layer == 3:
            t_pass = th.z / max(speed - th.vz, 1e-3) if th.z > 0 else -1.0
            if 0.0 <= t_pass <= duration + 1.0 and abs(th.at(t_pass)[0] - world.ego_a) < 1.6:
                continue
        path.append(th)
    world.things = path
    noise = lk.Noise.make(rng, *size)  # one set of textures for the drive: no flicker
    yaw0 = cam0.yaw * 0.3
    for i in range(n):
        t = i / fps
        z = speed * t
        cam = dataclasses.replace(
            cam0,
            z=z,
            x=float(road.xref(z)) + world.ego_a + 0.12 * math.sin(0.4 * t),
            yaw=road.heading(z) + yaw0 + 0.008 * math.sin(0.9 * t),
        )
        canvas, objects = render(world, cam, t)
        yield compose(canvas, objects, world, cam, noise, frame_rng(seed, DRIVE_STREAM, i + 1))
