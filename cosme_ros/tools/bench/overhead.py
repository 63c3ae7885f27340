"""What the ROS node adds to the pipeline: decode, draw, encode and publish, timed in-process.

:func:`measure_node_overhead` runs the same frames twice — through the pipeline alone, and
through the node's path (:meth:`CosmeNode` does exactly these steps: cheap header check, decode
to RGB, pipeline, :func:`~cosme_ros.frames.render.render_outputs` for all five images, encode to
``sensor_msgs/Image``, publish) — and reports per-stage medians in milliseconds. ``cosme bench``
can call it; ``python -m cosme_ros.tools.bench.overhead --bundle B`` prints it.

Publishing goes through real rclpy publishers in a private context (localhost discovery, a
random domain id) with no subscriber matched: it counts the message conversion and the rmw
write (serialisation), not the transport to another process, which depends on the machine and on
who listens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from cosme_ros.frames import codec
from cosme_ros.frames.render import OUTPUTS, RunningRange, render_outputs


def _camera_image(size: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth colourful RGB frame with noise (compresses and segments like a real one)."""
    h, w = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([255 * x / w, 255 * y / h, 255 * (1 - x / w)], -1)
    rgb += rng.normal(0, 8, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _median_ms(samples: Sequence[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)


class Publishers:
    """rclpy publishers for the five outputs in a private, localhost-only session
    (:class:`~cosme_ros.ros.session.LocalSession`) on a domain of their own."""

    def __init__(self):
        from sensor_msgs.msg import Image

        from cosme_ros.ros.session import LocalSession, random_domain_id

        self.session = LocalSession("cosme_overhead", domain_id=random_domain_id(150, 200))
        self.pub = {
            k: self.session.node.create_publisher(Image, topic, 1)
            for k, (topic, _) in OUTPUTS.items()
        }

    def close(self) -> None:
        self.session.close()


def measure_node_overhead(
    bundle: Union[str, Path, Any],
    size: Tuple[int, int] = (720, 1280),
    frames: int = 20,
    method: str = "maxlogit",
    device: str = "cpu",
    encoding: str = "bgr8",
    output_resolution: str = "input",
    publish: bool = True,
) -> Dict[str, Any]:
    """Time the node's path against the pipeline alone on ``frames`` camera frames of ``size``
    (height, width) in ``encoding``; medians in ms, plus the setup.

    ``bundle``: a bundle directory or a loaded :class:`~cosme_ros.bundle.Bundle`.
    """
    from sensor_msgs.msg import Image

    from cosme_ros.bundle import Bundle
    from cosme_ros.runtime.pipeline import Pipeline

    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    pipeline = Pipeline(bundle, method=method, device=device)
    palette = list(bundle.palette)
    rgb = _camera_image(size)
    layout = rgb[..., ::-1] if encoding == "bgr8" else rgb
    msg = codec.encode_image(Image, np.ascontiguousarray(layout), encoding)
    out_size = tuple(size) if output_resolution == "input" else tuple(pipeline.input_size)
    pubs = Publishers() if publish else None
    try:
        for _ in range(2):  # warm-up: lazy initialisation, allocator
            pipeline(rgb, out_size=out_size)
        only: List[float] = []
        for _ in range(frames):
            t = time.perf_counter()
            pipeline(rgb, out_size=out_size)
            only.append(time.perf_counter() - t)
        stages = _node_path(pipeline, msg, out_size, palette, pubs, frames)
    finally:
        if pubs is not None:
            pubs.close()
    medians = {f"{k}_ms": _median_ms(v) for k, v in stages.items()}
    pipeline_only = _median_ms(only)
    return {
        "bundle": bundle.name,
        "method": method,
        "device": str(pipeline.device),
        "network_input": list(pipeline.input_size),
        "camera": [int(size[0]), int(size[1])],
        "encoding": encoding,
        "output_resolution": output_resolution,
        "output_size": [int(out_size[0]), int(out_size[1])],
        "frames": frames,
        "pipeline_only_ms": pipeline_only,
        **{f"node_{k}": v for k, v in medians.items()},
        "overhead_ms": round(medians["total_ms"] - pipeline_only, 3),
        "overhead_stages_ms": round(
            sum(medians[f"{k}_ms"] for k in ("check", "decode", "render", "encode", "publish")), 3
        ),
        "published": publish,
    }


def _node_path(pipeline, msg, out_size, palette, pubs: Optional[Publishers], frames: int):
    """{stage: [seconds]} of ``frames`` frames through the node's path: header check, decode,
    pipeline, render, encode and publish."""
    from sensor_msgs.msg import Image

    heat = RunningRange()
    names = ("check", "decode", "pipeline", "render", "encode", "publish")
    stages: Dict[str, List[float]] = {k: [] for k in names + ("total",)}
    for _ in range(frames):
        marks = [time.perf_counter()]
        codec.check_image(msg, None)
        marks.append(time.perf_counter())
        frame = codec.decode(msg)
        marks.append(time.perf_counter())
        result = pipeline(frame, out_size=out_size)
        marks.append(time.perf_counter())
        images = render_outputs(
            frame,
            result.classes,
            result.score,
            set(OUTPUTS),
            threshold=0.0,
            alpha=0.5,
            palette=palette,
            heat_range=heat.update(result.score),
        )
        marks.append(time.perf_counter())
        messages = {k: codec.encode_image(Image, a, e, msg.header) for k, (a, e) in images.items()}
        marks.append(time.perf_counter())
        if pubs is not None:
            for k, m in messages.items():
                pubs.pub[k].publish(m)
        marks.append(time.perf_counter())
        for name, a, b in zip(names, marks, marks[1:]):
            stages[name].append(b - a)
        stages["total"].append(marks[-1] - marks[0])
    return stages


def _size(text: str) -> Tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosme_ros.tools.bench.overhead",
        description="Time cosme_node's decode/draw/encode/publish path against the pipeline.",
    )
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--size", type=_size, default=(720, 1280), help="camera HxW")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--method", default="maxlogit")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoding", default="bgr8")
    parser.add_argument("--output-resolution", choices=("input", "network"), default="input")
    parser.add_argument("--no-publish", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    a = parser.parse_args(argv)
    result = measure_node_overhead(
        a.bundle,
        a.size,
        a.frames,
        a.method,
        a.device,
        a.encoding,
        a.output_resolution,
        not a.no_publish,
    )
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
