"""Performance, measured: the logic behind ``cosme bench`` (no argument parsing, no printing).

Three measurements, each returning a JSON-ready dict:

- :func:`bench_frames` — the whole frame as ``cosme_node`` runs it (decode → preprocess →
  teacher → student → scoring → postprocess → render + encode → publish), stage by stage, after a
  warm-up, on real or synthetic frames; and, **alternating frame by frame in the same run and on
  the same frames**, the naive eager fp32 implementation (:mod:`cosme_ros.naive`) and a plain
  segmentation node (teacher + argmax only). Every ratio is a ratio of two medians measured that
  way, so a machine that is busy with something else slows both sides alike.
- :func:`bench_scorer` — the prototype scorer alone (MulMem Γ, Eq. 3–4) on DeepLabV3+ R101 tap
  shapes against the naive form: time ratio, max |ΔΓ|, peak extra memory vs the chunk budget.
- :func:`sweep` — frame time against input size (with the teacher's FLOPs) and against K.

Times are wall-clock (``time.perf_counter``; CUDA synchronised at every stage boundary);
``cpu_ms`` adds the process's CPU time (all threads), which is what a loaded machine distorts
least.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from cosme_ros.runtime.pipeline import PIPELINE_STAGES

Size = Tuple[int, int]

NODE_STAGES = ("decode", "encode", "publish")
SCORER_KS = (128, 512, 2048)
SWEEP_SIZES: Tuple[Size, ...] = ((256, 512), (512, 1024), (1024, 2048))
R101_TAPS = ("c4", "c5", "lh")  # the MulMem layers, on DeepLabV3+ R101 at output stride 16

#: what each ratio in the JSON means (all are median / median of alternated measurements)
RATIO_DEFINITIONS = {
    "ratio_cosme_vs_teacher_only": "pipeline_ms.median / teacher_only_ms.median (cost of the "
    "anomaly method over a plain segmentation node)",
    "ratio_node_vs_pipeline": "frame_ms.median / pipeline_ms.median (the node's decode, "
    "encode and publish on top of the pipeline)",
    "ratio_fast_vs_naive": "naive_ms.median / pipeline_ms.median (speed-up of the pipeline "
    "over the naive eager fp32 implementation; > 1 = faster)",
}


# ----------------------------------------------------------------------------- small helpers


def summary(samples_s: Sequence[float]) -> Dict[str, float]:
    """Seconds → ``{"median", "p95", "mean"}`` in milliseconds (p95: linear interpolation)."""
    if not samples_s:
        raise ValueError("no samples")
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "median": round(float(np.median(ms)), 3),
        "p95": round(float(np.percentile(ms, 95)), 3),
        "mean": round(float(ms.mean()), 3),
    }


def ratio(numerator_ms: float, denominator_ms: float) -> float:
    return round(float(numerator_ms) / float(denominator_ms), 4) if denominator_ms > 0 else math.inf


def rss_mb() -> float:
    """Resident set size now, MiB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size, MiB: ``VmHWM`` (resettable, :func:`reset_peak_rss`), else the
    process's lifetime ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0, ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> Dict[str, Any]:
    """Library versions, CPU, threads and the bf16 capability that ``precision=auto`` reads."""
    import cv2
    from cosme_ros.runtime.networks import native_bf16

    env = {
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "cv2": cv2.__version__,
            "python": platform.python_version(),
        },
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(device),
        "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


class Clock:
    """Wall-clock and process CPU time, synchronising CUDA first so that a stage's kernels are
    counted in that stage."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @staticmethod
    def cpu() -> float:
        return time.process_time()


def synthetic_frames(n: int, size: Size, seed: int = 0) -> List[np.ndarray]:
    """``n`` test frames of the synthetic urban world (with anomalies) at ``size``."""
    from cosme_ros.data.synth.frame import render_frame

    return [render_frame(seed, "test", i, size=tuple(size)).image for i in range(n)]


def folder_frames(folder: str | Path, n: int, size: Optional[Size] = None) -> List[np.ndarray]:
    """Up to ``n`` images of ``folder`` (sorted), RGB, resized to ``size`` (H, W) if given."""
    import cv2
    from cosme_ros.data.images import list_images, read_rgb
    from cosme_ros.errors import InputError

    paths = list_images(folder)[: max(1, n)]
    if not paths:
        raise InputError(f"{folder}: no images")
    out = []
    for p in paths:
        im = read_rgb(p)
        if size is not None and im.shape[:2] != tuple(size):
            h, w = size
            im = cv2.resize(
                im, (w, h), interpolation=cv2.INTER_AREA if im.shape[0] > h else cv2.INTER_LINEAR
            )
        out.append(np.ascontiguousarray(im))
    return out


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
            os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
            try:
                from cosme_ros.ros.overhead import Publishers

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


def _frame_fast(
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
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Time ``frames`` frames (after ``warmup``) through the node's path, alternating with the
    naive pipeline and the teacher-only node frame by frame. See the module docstring.

    ``camera``: size (H, W) of the frames fed in and of the outputs (default: the synthetic
    world at 720×1280, or the folder's images as they are). ``pipeline``: a ready
    :class:`~cosme_ros.runtime.pipeline.Pipeline` to measure instead of building one (``sweep`` uses
    it to swap in a scorer). ``refine``: the pipeline's map refinement (``guided``: the guided
    filter is timed as part of ``scoring``).
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
    )
    clock = Clock(pipe.device)
    n_src = max(1, min(frames, 8))
    if images is not None:
        src = folder_frames(images, n_src, camera)
        source = str(images)
    else:
        src = synthetic_frames(n_src, camera or (720, 1280), seed)
        source = "synthetic"
    io = NodeIO(bundle.palette, publish=publish) if node else None
    try:
        msgs = [io.message(im) if io is not None else None for im in src]
        say(f"warm-up: {warmup} frame(s)")
        for i in range(warmup):
            k = i % len(src)
            _frame_fast(pipe, io, msgs[k], src[k], src[k].shape[:2], clock)
            if teacher_only:
                _frame_teacher_only(pipe, src[k], src[k].shape[:2], clock)
        peak_fast = peak_rss_mb()

        naive_pipe = None
        if naive:
            from cosme_ros.naive import NaivePipeline

            naive_pipe = NaivePipeline(  # the same scorer (sweep may have swapped one in)
                bundle,
                method=pipe.method,
                device=str(pipe.device),
                input_size=pipe.input_size,
                scorer=pipe.scorer,
            )
            for i in range(min(warmup, 1) if warmup else 0):
                _frame_naive(naive_pipe, src[0], src[0].shape[:2], clock)

        stages: Dict[str, List[float]] = {}
        cpu: List[float] = []
        t_naive: List[float] = []
        t_teacher: List[float] = []
        diff: Dict[str, float] = {}
        for i in range(frames):
            k = i % len(src)
            rgb, msg = src[k], msgs[k]
            out_size = tuple(rgb.shape[:2])
            # alternate the order too, so that no variant always runs on a warm cache
            jobs = (
                ["fast"]
                + (["naive"] if naive_pipe is not None else [])
                + (["teacher"] if teacher_only else [])
            )
            jobs = jobs[i % len(jobs) :] + jobs[: i % len(jobs)]
            for job in jobs:
                if job == "fast":
                    st, c, fast_out = _frame_fast(pipe, io, msg, rgb, out_size, clock)
                    for name, v in st.items():
                        stages.setdefault(name, []).append(v)
                    cpu.append(c)
                elif job == "naive":
                    t, naive_out = _frame_naive(naive_pipe, rgb, out_size, clock)
                    t_naive.append(t)
                else:
                    t_teacher.append(_frame_teacher_only(pipe, rgb, out_size, clock))
            if naive_pipe is not None and not diff:
                diff = {
                    "max_abs_score_diff": float(
                        np.abs(fast_out[1].astype(np.float64) - naive_out.score).max()
                    ),
                    "class_agreement": float((fast_out[0] == naive_out.classes).mean()),
                }
            say(f"frame {i + 1}/{frames}: {stages['frame'][-1] * 1e3:.1f} ms")
        peak_all = peak_rss_mb()
    finally:
        if io is not None:
            io.close()

    frame = summary(stages.pop("frame"))
    pipeline_ms = summary(stages.pop("pipeline"))
    order = [s for s in ("decode",) + PIPELINE_STAGES + ("encode", "publish") if s in stages]
    stages_ms = {s: summary(stages[s]) for s in order}
    out: Dict[str, Any] = {
        "bundle": bundle.name,
        "method": pipe.method,
        "device": str(pipe.device),
        "refine": "none" if pipe.scorer.refinement is None else "guided",
        "precision": pipe.precision,
        "precision_requested": precision,
        "channels_last": pipe.channels_last,
        "input_size": list(pipe.input_size),
        "camera_size": list(src[0].shape[:2]),
        "output_size": list(src[0].shape[:2]),
        "source": source,
        "frames": frames,
        "warmup": warmup,
        "K": memory_sizes(pipe),
        "frame_ms": frame,
        "fps": round(1000.0 / frame["median"], 3),
        "pipeline_ms": pipeline_ms,
        "stages_ms": stages_ms,
        "stage_share": {s: round(v["median"] / frame["median"], 4) for s, v in stages_ms.items()},
        "cpu_frame_ms": summary(cpu),
        "node": {
            "measured": node,
            "published": bool(io and io.published),
            "note": (io.reason if io is not None else "node stages not measured"),
        },
        "peak_rss_mb": round(peak_fast, 1),
        "peak_rss_mb_with_naive": round(peak_all, 1),
    }
    share = stages_ms["scoring"]["median"] + stages_ms["postprocess"]["median"]
    out["scoring_postprocess_share"] = round(share / frame["median"], 4)
    if teacher_only:
        out["teacher_only_ms"] = summary(t_teacher)
        out["ratio_cosme_vs_teacher_only"] = ratio(
            pipeline_ms["median"], out["teacher_only_ms"]["median"]
        )
    if node:
        out["ratio_node_vs_pipeline"] = ratio(frame["median"], pipeline_ms["median"])
    if naive_pipe is not None:
        out["naive_ms"] = summary(t_naive)
        out["ratio_fast_vs_naive"] = ratio(out["naive_ms"]["median"], pipeline_ms["median"])
        out["vs_naive"] = diff
    out["ratio_definitions"] = {k: v for k, v in RATIO_DEFINITIONS.items() if k in out}
    if pipe.device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(pipe.device) / 2**20, 1)
    out.update(environment(pipe.device))
    return out


# ----------------------------------------------------------------------------- scorer alone


def r101_tap_shapes(
    input_size: Size = (512, 1024), output_stride: int = 16, layers: Sequence[str] = R101_TAPS
) -> Dict[str, Tuple[int, int, int]]:
    """(C, H, W) of DeepLabV3+ R101's taps at ``input_size`` — read from the network's
    ``tap_channels`` / ``tap_strides``, built on the meta device (no weights, no memory)."""
    from cosme_ros.nets.deeplabv3plus import build_deeplabv3plus

    with torch.device("meta"):
        net = build_deeplabv3plus(backbone="resnet101", output_stride=output_stride)
    h, w = input_size
    return {
        t: (
            int(net.tap_channels[t]),
            math.ceil(h / net.tap_strides[t]),
            math.ceil(w / net.tap_strides[t]),
        )
        for t in layers
    }


def fix_malloc_threshold(threshold: int = 1 << 20) -> bool:
    """glibc only: serve allocations ≥ ``threshold`` with mmap and return them to the system when
    freed. By default glibc raises the threshold after each free (up to 32 MiB) and keeps the
    memory, so that a second allocation of the same size adds nothing to RSS and the peak of a
    later measurement hides it. Returns whether it took effect."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _trim() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure_peak(fn: Callable[[], Any]) -> Optional[float]:
    """Peak RSS above the RSS before ``fn`` (MiB), or None where the peak cannot be reset."""
    _trim()
    base = rss_mb()
    if not reset_peak_rss():
        return None
    fn()
    return max(0.0, peak_rss_mb() - base)


def bench_scorer(
    ks: Iterable[int] = SCORER_KS,
    *,
    input_size: Size = (512, 1024),
    repeats: int = 5,
    warmup: int = 1,
    chunk_bytes: Optional[int] = None,
    device: str = "cpu",
    threads: Optional[int] = None,
    cdist: bool = False,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """MulMem Γ (Eq. 3–4, :func:`cosme_ros.anomaly.memory.gamma`) against the naive form
    (:func:`cosme_ros.naive.naive_gamma`) on random R101 tap features (B = 1) and random unit
    prototypes, for each K; alternated repeat by repeat. ``cdist=True`` adds ``torch.cdist``."""
    from cosme_ros import naive
    from cosme_ros.anomaly import memory
    from cosme_ros.runtime.networks import resolve_device

    say = progress or (lambda _m: None)
    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(int(threads))
    clock = Clock(dev)
    budget = int(chunk_bytes if chunk_bytes is not None else memory.DEFAULT_CHUNK_BYTES)
    shapes = r101_tap_shapes(input_size)
    g = torch.Generator().manual_seed(seed)
    taps = {t: torch.randn((1,) + s, generator=g).to(dev) for t, s in shapes.items()}
    results = []
    banks = {}

    def make_variants(bank) -> Dict[str, Callable[[], torch.Tensor]]:
        out = {
            "fast": lambda: memory.gamma(taps, bank, chunk_bytes=budget),
            "naive": lambda: naive.naive_gamma(taps, bank),
        }
        if cdist:
            out["cdist"] = lambda: _cdist_gamma(taps, bank)
        return out

    for k in ks:
        k = int(k)
        bank = banks[k] = {
            t: F.normalize(torch.randn(k, s[0], generator=g), dim=1).to(dev)
            for t, s in shapes.items()
        }
        variants = make_variants(bank)
        with torch.inference_mode():
            for _ in range(warmup):
                for fn in variants.values():
                    fn()
            times: Dict[str, List[float]] = {n: [] for n in variants}
            names = list(variants)
            for r in range(repeats):
                for n in names[r % len(names) :] + names[: r % len(names)]:
                    t0 = clock()
                    variants[n]()
                    times[n].append(clock() - t0)
            fast, ref = variants["fast"](), variants["naive"]()
            gamma_diff = float((fast - ref).abs().max())
            cos_diff = max(
                float(
                    (
                        memory.max_cosine(taps[t], bank[t], chunk_bytes=budget)
                        - naive.naive_max_cosine(taps[t], bank[t])
                    )
                    .abs()
                    .max()
                )
                for t in shapes
            )
            del fast, ref
        row = {
            "K": k,
            "fast_ms": summary(times["fast"]),
            "naive_ms": summary(times["naive"]),
            "max_abs_diff_gamma": gamma_diff,
            "max_abs_diff_cosine": cos_diff,
            "equal_to_1e-5": bool(gamma_diff <= 1e-5 and cos_diff <= 1e-5),
            "bound_extra_mb": {
                "fast": round(_fast_bound(shapes, k, budget, dev) / 2**20, 3),
                "naive": round(_naive_bound(shapes, k) / 2**20, 3),
            },
        }
        row["ratio_fast_vs_naive"] = ratio(row["naive_ms"]["median"], row["fast_ms"]["median"])
        if cdist:
            row["cdist_ms"] = summary(times["cdist"])
            row["ratio_fast_vs_cdist"] = ratio(row["cdist_ms"]["median"], row["fast_ms"]["median"])
        results.append(row)
        say(
            f"K={k}: fast {row['fast_ms']['median']:.1f} ms, naive "
            f"{row['naive_ms']['median']:.1f} ms ({row['ratio_fast_vs_naive']:.2f}x), "
            f"max |dGamma| {gamma_diff:.1e}"
        )
        del bank, variants
    # Memory last: with the mmap threshold fixed, every large buffer is a fresh mapping whose
    # page faults would slow the timings (the blocked scorer allocates many 2 MiB blocks).
    malloc_fixed = fix_malloc_threshold()
    with torch.inference_mode():
        for row in results:
            variants = make_variants(banks[row["K"]])
            peak = {n: _measure_peak(variants[n]) for n in ("fast", "naive")}
            row["peak_extra_mb"] = {
                n: (None if v is None else round(v, 3)) for n, v in peak.items()
            }
    fix_malloc_threshold(32 << 20)  # glibc's largest dynamic threshold: its warmed-up state
    return {
        "mode": "scorer",
        "device": str(dev),
        "input_size": list(input_size),
        "taps": {t: list(s) for t, s in shapes.items()},
        "repeats": repeats,
        "chunk_bytes": budget,
        "chunk_mb": round(budget / 2**20, 1),
        "results": results,
        "memory_note": "peak_extra_mb: peak RSS above the RSS before one call (VmHWM reset "
        "through /proc/self/clear_refs; glibc mmap threshold fixed at 1 MiB: "
        f"{malloc_fixed}); bound_extra_mb: computed from the shapes",
        **environment(dev),
    }


def _cdist_gamma(taps, bank):
    from cosme_ros import naive

    size = max((tuple(taps[n].shape[-2:]) for n in bank), key=lambda s: s[0] * s[1])
    out = None
    for name, protos in bank.items():
        g = 1.0 - naive.cdist_max_cosine(taps[name], protos)
        if tuple(g.shape[-2:]) != size:
            g = F.interpolate(
                g.unsqueeze(1), size=size, mode="bilinear", align_corners=False
            ).squeeze(1)
        out = g if out is None else out * g
    return out


def _fast_bound(shapes, k: int, budget: int, device: torch.device) -> int:
    """Largest extra allocation of :func:`memory.max_cosine` for one layer (fp32 features): one
    block of the similarity and its max, the per-pixel max and norm; plus Γ's maps."""
    from cosme_ros.anomaly import memory

    worst = 0
    big = max(h * w for _, h, w in shapes.values())
    for c, h, w in shapes.values():
        n = h * w
        if device.type == "cpu":
            rows, kc = memory._cpu_blocks(k, max(1, min(budget, memory.CPU_BLOCK_BYTES)))
            rows = min(rows, n)
        else:
            rows, kc = n, max(1, min(k, budget // (n * 4)))
        worst = max(worst, rows * kc * 4 + rows * 12 + 2 * n * 4)
    return worst + 3 * big * 4


def _naive_bound(shapes, k: int) -> int:
    """The normalised copy plus the whole (H·W, K) similarity of the largest layer, + Γ's maps."""
    big = max(h * w for _, h, w in shapes.values())
    return max(h * w * (c + k + 2) * 4 for c, h, w in shapes.values()) + 3 * big * 4


# ----------------------------------------------------------------------------- sweep


def teacher_gflops(
    teacher: torch.nn.Module, input_size: Size, taps=("o",), device: torch.device | str = "cpu"
) -> float:
    """Multiply-adds × 2 of one teacher forward at ``input_size`` (convolutions and matmuls,
    counted by ``torch.utils.flop_counter.FlopCounterMode``), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        teacher(x, taps=taps)
    return counter.get_total_flops() / 1e9


def random_memory_parts(pipe, k: int, layers: Sequence[str] = R101_TAPS, seed: int = 0):
    """AnomalyParts with K random unit prototypes per layer, for the teacher of ``pipe``."""
    from cosme_ros.anomaly.parts import AnomalyParts

    g = torch.Generator().manual_seed(seed)
    chans = pipe.networks.tap_channels
    bank = {t: F.normalize(torch.randn(k, chans[t], generator=g), dim=1) for t in layers}
    return AnomalyParts(memory=bank, memory_layers=tuple(layers))


def _alternate(
    calls: Mapping[str, Callable[[int], Dict[str, float]]], frames: int, warmup: int
) -> Dict[str, Dict[str, List[float]]]:
    """Run every variant on frame i before any runs frame i + 1 (rotating who goes first);
    {variant: {stage: [seconds]}}."""
    for i in range(warmup):
        for fn in calls.values():
            fn(i)
    names = list(calls)
    out: Dict[str, Dict[str, List[float]]] = {n: {} for n in names}
    for i in range(frames):
        for n in names[i % len(names) :] + names[: i % len(names)]:
            for stage, v in calls[n](i).items():
                out[n].setdefault(stage, []).append(v)
    return out


def sweep(
    bundle,
    *,
    sizes: Sequence[Size] = SWEEP_SIZES,
    ks: Sequence[int] = SCORER_KS,
    k_size: Optional[Size] = None,
    frames: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    precision: str = "auto",
    threads: Optional[int] = None,
    images: Optional[str | Path] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Pipeline time (maxlogit; preprocess → postprocess, no node) against the network input
    size — frames rendered at that size — with the teacher's GFLOPs; then against K (MulMem, K
    random unit prototypes per layer, unstandardised Γ) at ``k_size`` (default: the bundle's
    input size). The sizes alternate frame by frame, and so do the Ks."""
    from cosme_ros.anomaly.registry import build_scorer
    from cosme_ros.bundle import Bundle
    from cosme_ros.runtime.pipeline import Pipeline

    say = progress or (lambda _m: None)
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if threads is not None:
        torch.set_num_threads(int(threads))
    n_src = max(1, min(frames, 4))

    def source(size: Size) -> List[np.ndarray]:
        if images is not None:
            return folder_frames(images, n_src, size)
        return synthetic_frames(n_src, size)

    def runner(pipe, src):
        clock = Clock(pipe.device)
        return lambda i: _frame_fast(
            pipe, None, None, src[i % len(src)], src[i % len(src)].shape[:2], clock
        )[0]

    pipes = {}
    by_size = []
    for size in sizes:
        size = (int(size[0]), int(size[1]))
        pipe = Pipeline(bundle, "maxlogit", device=device, input_size=size, precision=precision)
        gflops = teacher_gflops(pipe.networks.teacher, size, device=pipe.device)
        pipes[size] = (pipe, source(size))
        by_size.append({"input_size": list(size), "gflops": round(gflops, 3)})
    say(f"sizes: {', '.join(f'{h}x{w}' for h, w in pipes)}, {frames} frame(s) each, alternating")
    times = _alternate({f"{h}x{w}": runner(*v) for (h, w), v in pipes.items()}, frames, warmup)
    for row in by_size:
        st = times["{}x{}".format(*row["input_size"])]
        row["pipeline_ms"] = summary(st["pipeline"])
        row["stages_ms"] = {k: summary(st[k]) for k in PIPELINE_STAGES if k in st}
        row["ms_per_gflop"] = round(row["pipeline_ms"]["median"] / row["gflops"], 3)
    del pipes

    k_size = tuple(k_size or bundle.input_size)
    pipe = Pipeline(bundle, "maxlogit", device=device, input_size=k_size, precision=precision)
    layers = [t for t in R101_TAPS if t in (pipe.networks.tap_channels or {})]
    src = source(k_size)
    scorers = {
        int(k): build_scorer(
            "mulmem",
            random_memory_parts(pipe, int(k), layers),
            input_height=k_size[0],
            standardize=False,
        )
        for k in ks
    }
    say(f"K: {', '.join(map(str, scorers))} at {k_size[0]}x{k_size[1]}, alternating")
    times = _alternate(
        {str(k): runner(pipe.with_scorer(s), src) for k, s in scorers.items()}, frames, warmup
    )
    by_k = []
    for k in scorers:
        st = times[str(k)]
        total, scoring = summary(st["pipeline"]), summary(st["scoring"])
        by_k.append(
            {
                "K": k,
                "pipeline_ms": total,
                "scoring_ms": scoring,
                "scoring_share": round(scoring["median"] / total["median"], 4),
            }
        )
    base = by_size[0]
    for row in by_size:
        row["time_ratio"] = ratio(row["pipeline_ms"]["median"], base["pipeline_ms"]["median"])
        row["flop_ratio"] = round(row["gflops"] / base["gflops"], 3)
    return {
        "mode": "sweep",
        "bundle": bundle.name,
        "device": str(pipe.device),
        "precision": pipe.precision,
        "frames": frames,
        "memory_layers": layers,
        "k_input_size": list(k_size),
        "by_size": by_size,
        "by_k": by_k,
        **environment(pipe.device),
    }


def sweep_markdown(result: Mapping[str, Any]) -> str:
    """The sweep as two markdown tables (for BENCHMARKS.md)."""
    lines = [
        f"Bundle `{result['bundle']}`, {result['device']} ({result.get('cpu_model', '')}), "
        f"precision {result['precision']}, {result['threads']} thread(s), "
        f"median of {result['frames']} frames; the sizes (and the Ks) alternate frame by "
        "frame in one run.",
        "",
        "| input (H×W) | teacher GFLOP | pipeline ms (median) | p95 | time ratio | "
        "FLOP ratio | ms / GFLOP |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["by_size"]:
        h, w = r["input_size"]
        lines.append(
            f"| {h}×{w} | {r['gflops']:.2f} | {r['pipeline_ms']['median']:.1f} | "
            f"{r['pipeline_ms']['p95']:.1f} | {r['time_ratio']:.2f} | "
            f"{r['flop_ratio']:.2f} | {r['ms_per_gflop']:.1f} |"
        )
    h, w = result["k_input_size"]
    lines += [
        "",
        f"MulMem with K random prototypes per layer ({', '.join(result['memory_layers'])})"
        f" at {h}×{w}:",
        "",
        "| K | pipeline ms (median) | scoring ms | scoring share |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in result["by_k"]:
        lines.append(
            f"| {r['K']} | {r['pipeline_ms']['median']:.1f} | "
            f"{r['scoring_ms']['median']:.1f} | {100 * r['scoring_share']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def sweep_plot(result: Mapping[str, Any], path: str | Path) -> None:
    """Frame time against teacher GFLOPs (input size) and against K, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["gflops"] for r in result["by_size"]]
    ys = [r["pipeline_ms"]["median"] for r in result["by_size"]]
    a.plot(xs, ys, "o-", label="measured")
    a.plot(xs, [ys[0] * x / xs[0] for x in xs], "--", label="∝ FLOPs")
    for r, x, y in zip(result["by_size"], xs, ys):
        a.annotate(
            f"{r['input_size'][0]}×{r['input_size'][1]}",
            (x, y),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    a.set(xlabel="teacher GFLOP", ylabel="pipeline ms (median)", title="input size")
    a.legend()
    ks = [r["K"] for r in result["by_k"]]
    b.plot(ks, [r["pipeline_ms"]["median"] for r in result["by_k"]], "o-", label="pipeline")
    b.plot(ks, [r["scoring_ms"]["median"] for r in result["by_k"]], "s-", label="scoring")
    b.set_xscale("log", base=2)
    b.set_xticks(ks, [str(k) for k in ks])
    b.minorticks_off()
    b.set(xlabel="K (prototypes per layer)", ylabel="ms (median)", title="memory size")
    b.legend()
    fig.suptitle(f"{result['bundle']} — {result['device']}, {result['precision']}")
    fig.tight_layout()
    from cosme_ros import atomic

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
