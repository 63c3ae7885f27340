"""``cosme bench``'s frame benchmark: the whole frame as ``cosme_node`` runs it, stage by stage,
alternating frame by frame with the naive pipeline and a teacher-only node."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from cosme_ros.runtime.pipeline import PIPELINE_STAGES
from cosme_ros.tools.bench.common import (
    Clock,
    Size,
    environment,
    folder_frames,
    peak_rss_mb,
    ratio,
    reset_peak_rss,
    summary,
    synthetic_frames,
)


#: what each ratio in the JSON means (all are median / median of alternated measurements)
RATIO_DEFINITIONS = {
    "ratio_engine_vs_eager": "eager_pipeline_ms.median / pipeline_ms.median (speed-up of the "
    "compiled engine over the eager fast path at the same precision setting; > 1 = faster)",
    "ratio_cosme_vs_teacher_only": "pipeline_ms.median / teacher_only_ms.median (cost of the "
    "anomaly method over a plain segmentation node)",
    "ratio_node_vs_pipeline": "frame_ms.median / pipeline_ms.median (the node's decode, "
    "encode and publish on top of the pipeline)",
    "ratio_fast_vs_naive": "naive_ms.median / pipeline_ms.median (speed-up of the pipeline "
    "over the naive eager fp32 implementation; > 1 = faster)",
}


# ----------------------------------------------------------------------------- small helpers


# ----------------------------------------------------------------------------- the ROS side


class NodeIO:
    """The node's own per-frame work around the pipeline: decode the incoming ``Image``, render
    the five outputs, encode them as messages and publish them (rclpy publishers in a private,
    localhost-only context with no subscriber: conversion + serialisation, not the transport).

    ``publish=False`` or no rclpy: decode/render/encode only (``self.published`` says which).
    """

    def __init__(self, palette: Sequence[Sequence[int]], publish: bool = True):
        from cosme_ros.frames import codec
        from cosme_ros.frames.render import OUTPUTS, RunningRange

        self.codec = codec
        self.outputs = OUTPUTS
        self.heat = RunningRange()
        self.palette = [tuple(c) for c in palette]
        self.reason = ""
        try:
            from sensor_msgs.msg import Image

            self.image_cls = Image
        except ImportError as exc:  # no ROS messages: decode and encode with a stand-in
            self.image_cls = _StandInImage
            self.reason = f"sensor_msgs not importable ({exc})"
        self.pubs = None
        if publish and self.image_cls is not _StandInImage:
            try:
                from cosme_ros.tools.bench.overhead import Publishers

                self.pubs = Publishers()
            except Exception as exc:  # noqa: BLE001 — an rmw that cannot start: report, go on
                self.reason = f"rclpy publishers unavailable ({type(exc).__name__}: {exc})"
        self.published = self.pubs is not None

    def message(self, rgb: np.ndarray, encoding: str = "bgr8") -> Any:
        """The camera message for an RGB frame, as a driver would send it."""
        layout = rgb[..., ::-1] if encoding == "bgr8" else rgb
        return self.codec.encode_image(self.image_cls, np.ascontiguousarray(layout), encoding)

    def decode(self, msg: Any) -> np.ndarray:
        self.codec.check_image(msg, None)
        return self.codec.decode(msg)

    def encode(self, rgb: np.ndarray, classes: np.ndarray, score: np.ndarray, header: Any) -> Dict:
        from cosme_ros.frames.render import render_outputs

        images = render_outputs(
            rgb,
            classes,
            score,
            set(self.outputs),
            threshold=0.0,
            alpha=0.5,
            palette=self.palette,
            heat_range=self.heat.update(score),
        )
        return {
            k: self.codec.encode_image(self.image_cls, a, e, header) for k, (a, e) in images.items()
        }

    def publish(self, messages: Mapping[str, Any]) -> None:
        if self.pubs is not None:
            for k, m in messages.items():
                self.pubs.pub[k].publish(m)

    def close(self) -> None:
        if self.pubs is not None:
            self.pubs.close()
            self.pubs = None


class _StandInImage:
    """Duck-typed sensor_msgs/Image for machines without ROS messages."""

    def __init__(self):
        self.header = None
        self.height = self.width = self.step = self.is_bigendian = 0
        self.encoding = ""
        self.data = b""


# ----------------------------------------------------------------------------- frame benchmark


def frame_stages(
    pipe, io: Optional[NodeIO], msg: Any, rgb: np.ndarray, out_size: Size, clock: Clock
) -> Tuple[Dict[str, float], float, Tuple[np.ndarray, np.ndarray]]:
    """One frame through the node's path, stage by stage → ({stage: s}, cpu s, (classes, score)).
    The pipeline's stages are read through its ``mark`` hook."""
    st: Dict[str, float] = {}
    c0 = clock.cpu()
    t0 = clock()
    frame = io.decode(msg) if io is not None else rgb
    t1 = clock()
    last = [t1]

    def mark(stage: str) -> None:
        now = clock()
        st[stage], last[0] = now - last[0], now

    result = pipe(frame, out_size, mark=mark)
    t6 = last[0]
    if io is not None:
        messages = io.encode(frame, result.classes, result.score, msg.header)
        t7 = clock()
        io.publish(messages)
        t8 = clock()
        st.update(decode=t1 - t0, encode=t7 - t6, publish=t8 - t7, frame=t8 - t0)
    else:
        st["frame"] = t6 - t1
    st["pipeline"] = t6 - t1
    return st, clock.cpu() - c0, (result.classes, result.score)


def _frame_teacher_only(pipe, rgb: np.ndarray, out_size: Size, clock: Clock) -> float:
    """A plain segmentation node on the same fast path: preprocess, teacher logits, argmax."""
    t0 = clock()
    pipe.segment(rgb, out_size)
    return clock() - t0


def _frame_naive(naive, rgb: np.ndarray, out_size: Size, clock: Clock):
    t0 = clock()
    result = naive(rgb, out_size=out_size)
    return clock() - t0, result


def memory_sizes(pipe) -> Optional[Dict[str, int]]:
    """K per memory layer of the pipeline's scorer (None for methods without a memory)."""
    scorer = getattr(pipe.scorer, "mulmem", pipe.scorer)
    bank = getattr(scorer, "bank", None)
    return {k: int(v.shape[0]) for k, v in bank.items()} if bank else None


def bench_frames(
    bundle,
    *,
    method: str = "maxlogit",
    input_size: Optional[Size] = None,
    camera: Optional[Size] = None,
    frames: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    precision: str = "auto",
    threads: Optional[int] = None,
    images: Optional[str | Path] = None,
    naive: bool = True,
    teacher_only: bool = True,
    node: bool = True,
    publish: bool = True,
    pipeline=None,
    seed: int = 0,
    refine: str = "none",
    engine: str = "off",
    require_engine: bool = False,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Time ``frames`` frames (after ``warmup``) through the node's path, alternating with the
    naive pipeline and the teacher-only node frame by frame. See the module docstring.

    ``camera``: size (H, W) of the frames fed in and of the outputs (default: the synthetic
    world at 720×1280, or the folder's images as they are). ``pipeline``: a ready
    :class:`~cosme_ros.runtime.pipeline.Pipeline` to measure instead of building one (``sweep`` uses
    it to swap in a scorer). ``refine``: the pipeline's map refinement (``guided``: the guided
    filter is timed as part of ``scoring``). ``require_engine``: when the ``engine`` asked for
    cannot be used, raise :class:`~cosme_ros.runtime.engines.EngineUnavailable` (its reason)
    before any frame is timed, instead of timing eager against eager.
    """
    from cosme_ros.bundle import Bundle
    from cosme_ros.runtime.pipeline import Pipeline

    say = progress or (lambda _m: None)
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if frames < 1 or warmup < 0:
        raise ValueError("frames must be >= 1 and warmup >= 0")
    if threads is not None:
        torch.set_num_threads(int(threads))
    reset_peak_rss()
    pipe = pipeline or Pipeline(
        bundle,
        method=method,
        device=device,
        input_size=input_size,
        precision=precision,
        refine=refine,
        engine=engine,
    )
    if require_engine and pipe.backend == "eager":  # before any frame: never eager vs eager
        from cosme_ros.runtime.engines import EngineUnavailable

        raise EngineUnavailable(pipe.engine_note or f"engine {engine!r} runs eager")
    n_src = max(1, min(frames, 8))
    if images is not None:
        src, source = folder_frames(images, n_src, camera), str(images)
    else:
        src, source = synthetic_frames(n_src, camera or (720, 1280), seed), "synthetic"
    io = NodeIO(bundle.palette, publish=publish) if node else None
    try:
        run = _FrameRun(pipe, io, src, teacher_only)
        say(f"warm-up: {warmup} frame(s)")
        run.warm_up(warmup)
        peak_fast = peak_rss_mb()
        if naive:
            run.add_naive(bundle, warmup)
        if pipe.backend != "eager":  # the engine against the eager fast path, alternated
            run.add_eager(
                Pipeline(
                    bundle,
                    pipe.method,
                    device=str(pipe.device),
                    input_size=pipe.input_size,
                    precision=precision,
                    refine=refine,
                ),
                warmup,
            )
        for i in range(frames):
            run.measure(i)
            say(f"frame {i + 1}/{frames}: {run.stages['frame'][-1] * 1e3:.1f} ms")
        peak_all = peak_rss_mb()
    finally:
        if io is not None:
            io.close()
    out = run.report(bundle, precision, frames, warmup, source)
    out["backend"], out["engine_note"] = pipe.backend, pipe.engine_note
    if run.eager is not None:
        out["eager_pipeline_ms"] = summary(run.t_eager)
        out["ratio_engine_vs_eager"] = ratio(
            out["eager_pipeline_ms"]["median"], out["pipeline_ms"]["median"]
        )
    out["node"] = {
        "measured": node,
        "published": bool(io and io.published),
        "note": (io.reason if io is not None else "node stages not measured"),
    }
    out["peak_rss_mb"] = round(peak_fast, 1)
    out["peak_rss_mb_with_naive"] = round(peak_all, 1)
    if node:
        out["ratio_node_vs_pipeline"] = ratio(
            out["frame_ms"]["median"], out["pipeline_ms"]["median"]
        )
    out["ratio_definitions"] = {k: v for k, v in RATIO_DEFINITIONS.items() if k in out}
    if pipe.device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(pipe.device) / 2**20, 1)
    out.update(environment(pipe.device))
    return out


class _FrameRun:
    """The frame benchmark's variants on the same frames: the pipeline through the node's path
    (stage by stage), the naive pipeline and the teacher-only node, alternated frame by frame."""

    def __init__(self, pipe, io: Optional[NodeIO], src: List[np.ndarray], teacher_only: bool):
        self.pipe, self.io, self.src, self.teacher_only = pipe, io, src, teacher_only
        self.clock = Clock(pipe.device)
        self.msgs = [io.message(im) if io is not None else None for im in src]
        self.naive = None
        self.eager = None
        self.t_eager: List[float] = []
        self.stages: Dict[str, List[float]] = {}
        self.cpu: List[float] = []
        self.t_naive: List[float] = []
        self.t_teacher: List[float] = []
        self.diff: Dict[str, float] = {}

    def warm_up(self, warmup: int) -> None:
        for i in range(warmup):
            k = i % len(self.src)
            frame_stages(
                self.pipe, self.io, self.msgs[k], self.src[k], self.src[k].shape[:2], self.clock
            )
            if self.teacher_only:
                _frame_teacher_only(self.pipe, self.src[k], self.src[k].shape[:2], self.clock)

    def add_naive(self, bundle, warmup: int) -> None:
        from cosme_ros.tools.bench.naive import NaivePipeline

        pipe = self.pipe
        self.naive = NaivePipeline(  # the same scorer (sweep may have swapped one in)
            bundle,
            method=pipe.method,
            device=str(pipe.device),
            input_size=pipe.input_size,
            scorer=pipe.scorer,
        )
        for _ in range(min(warmup, 1)):
            _frame_naive(self.naive, self.src[0], self.src[0].shape[:2], self.clock)

    def add_eager(self, eager, warmup: int) -> None:
        self.eager = eager
        for i in range(warmup):
            frame_stages(eager, None, None, self.src[0], self.src[0].shape[:2], self.clock)

    def measure(self, i: int) -> None:
        """Frame ``i`` through every variant; the order rotates so that no variant always
        runs on a warm cache."""
        k = i % len(self.src)
        rgb, msg = self.src[k], self.msgs[k]
        out_size = tuple(rgb.shape[:2])
        jobs = (
            ["fast"]
            + (["naive"] if self.naive is not None else [])
            + (["teacher"] if self.teacher_only else [])
            + (["eager"] if self.eager is not None else [])
        )
        fast_out = naive_out = None
        for job in jobs[i % len(jobs) :] + jobs[: i % len(jobs)]:
            if job == "fast":
                st, c, fast_out = frame_stages(self.pipe, self.io, msg, rgb, out_size, self.clock)
                for name, v in st.items():
                    self.stages.setdefault(name, []).append(v)
                self.cpu.append(c)
            elif job == "eager":
                st = frame_stages(self.eager, None, None, rgb, out_size, self.clock)[0]
                self.t_eager.append(st["pipeline"])
            elif job == "naive":
                t, naive_out = _frame_naive(self.naive, rgb, out_size, self.clock)
                self.t_naive.append(t)
            else:
                self.t_teacher.append(_frame_teacher_only(self.pipe, rgb, out_size, self.clock))
        if naive_out is not None and not self.diff:
            self.diff = {
                "max_abs_score_diff": float(
                    np.abs(fast_out[1].astype(np.float64) - naive_out.score).max()
                ),
                "class_agreement": float((fast_out[0] == naive_out.classes).mean()),
            }

    def report(self, bundle, precision: str, frames: int, warmup: int, source: str) -> Dict:
        pipe, stages = self.pipe, dict(self.stages)
        frame = summary(stages.pop("frame"))
        pipeline_ms = summary(stages.pop("pipeline"))
        order = [s for s in ("decode",) + PIPELINE_STAGES + ("encode", "publish") if s in stages]
        stages_ms = {s: summary(stages[s]) for s in order}
        share = stages_ms["scoring"]["median"] + stages_ms["postprocess"]["median"]
        out: Dict[str, Any] = {
            "bundle": bundle.name,
            "method": pipe.method,
            "device": str(pipe.device),
            "refine": "none" if pipe.scorer.refinement is None else "guided",
            "precision": pipe.precision,
            "precision_requested": precision,
            "channels_last": pipe.channels_last,
            "input_size": list(pipe.input_size),
            "camera_size": list(self.src[0].shape[:2]),
            "output_size": list(self.src[0].shape[:2]),
            "source": source,
            "frames": frames,
            "warmup": warmup,
            "K": memory_sizes(pipe),
            "frame_ms": frame,
            "fps": round(1000.0 / frame["median"], 3),
            "pipeline_ms": pipeline_ms,
            "stages_ms": stages_ms,
            "stage_share": {
                s: round(v["median"] / frame["median"], 4) for s, v in stages_ms.items()
            },
            "cpu_frame_ms": summary(self.cpu),
            "scoring_postprocess_share": round(share / frame["median"], 4),
        }
        if self.teacher_only:
            out["teacher_only_ms"] = summary(self.t_teacher)
            out["ratio_cosme_vs_teacher_only"] = ratio(
                pipeline_ms["median"], out["teacher_only_ms"]["median"]
            )
        if self.naive is not None:
            out["naive_ms"] = summary(self.t_naive)
            out["ratio_fast_vs_naive"] = ratio(out["naive_ms"]["median"], pipeline_ms["median"])
            out["vs_naive"] = self.diff
        return out


# ----------------------------------------------------------------------------- scorer alone


# ----------------------------------------------------------------------------- sweep
