"""Rosbag replay: a recorded drive through the pipeline, offline (behind ``cosme replay``).

Every image of one topic of a rosbag2 (sqlite3 or mcap; ``sensor_msgs/msg/Image`` in any
encoding the node accepts, or ``sensor_msgs/msg/CompressedImage``) is decoded with
:mod:`cosme_ros.frames.codec`, run through :class:`cosme_ros.runtime.pipeline.Pipeline` and drawn
with :func:`cosme_ros.frames.render.render_outputs` — the node's own functions, with its
parameters (``anomaly_threshold``, ``overlay_alpha``, ``heatmap_range``, ``output_resolution``,
same defaults) — so each frame gives exactly the five images the node would publish for it, and
the heatmap's running colour range evolves as the node's does. No frame is dropped (the node
drops frames when the camera is faster than the model; replay never does). ROS 2 Humble
playing the output bag is not tested here (no ROS distro on the development machine): rosbags
writes version 8 metadata for that purpose.

Outputs, each optional:

- an **output bag** (rosbags ``Writer``, version 8 metadata; the input's storage unless told
  otherwise): the input image topic and the ground-truth topic copied byte
  for byte, plus the node's five outputs under the input topic's namespace
  (:func:`output_topics`). Each output message carries the input message's header, and its bag
  timestamp is the input message's bag timestamp. The bag is built in a temporary directory
  beside the target and renamed into place at the end, so an interrupted replay leaves the
  complete bag or none;
- a **video** (camera | segmentation | heatmap side by side, OpenCV ``VideoWriter``, mp4v),
  written to a temporary file and renamed the same way;
- **metrics** against ground truth — a mono8 topic or a folder of masks named by nanosecond
  stamps — matched to the images by header stamp (exactly), pooled over the drive with
  :func:`cosme_ros.metrics.pixel_metrics` (or binned:
  :class:`~cosme_ros.metrics.PixelMetricAccumulator`) and per frame, at the ground truth's
  resolution (the score is resized bilinearly where they differ).

This module never imports rclpy.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from cosme_ros import atomic, metrics
from cosme_ros.paths import default_bundle_path
from cosme_ros.errors import CosmeError
from cosme_ros.frames import codec
from cosme_ros.frames.render import OUTPUTS, RunningRange, render_outputs
from cosme_ros.frames.sheets import side_by_side
from cosme_ros.frames.writers import VideoFile

__all__ = [
    "IMAGE_TYPE",
    "COMPRESSED_TYPE",
    "STORAGES",
    "ReplayOptions",
    "ReplayReport",
    "FrameRecord",
    "Bag",
    "default_bundle_path",
    "output_topics",
    "gt_labels",
    "read_mask_folder",
    "check_options",
    "check_bag",
    "replay",
    "format_report",
]

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
STORAGES = ("mcap", "sqlite3")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".pgm")

# Errors the rosbags readers (and the sqlite3 / mcap code below them) raise on a bag that is not
# readable: missing, truncated, corrupt. Anything else is a bug and keeps its traceback.
_BAG_ERRORS: Tuple[type, ...] = (
    OSError,
    sqlite3.Error,
    struct.error,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    zlib.error,
)


def _bag_errors() -> Tuple[type, ...]:
    from rosbags.rosbag2 import ReaderError
    from rosbags.typesys import TypesysError

    return (ReaderError, TypesysError, *_BAG_ERRORS)


# ----------------------------------------------------------------------------- topics


def _normalise_namespace(ns: str) -> str:
    ns = ns.strip()
    if not ns.startswith("/"):
        ns = "/" + ns
    ns = ns.rstrip("/")
    if ns and not all(
        part
        and (part[0].isalpha() or part[0] == "_")
        and all(c.isalnum() or c == "_" for c in part)
        for part in ns[1:].split("/")
    ):
        raise CosmeError(f"output namespace {ns!r} is not a valid ROS namespace")
    return ns


def output_topics(
    image_topic: str, compressed: bool = False, namespace: Optional[str] = None
) -> Dict[str, str]:
    """output key → absolute topic: the node's relative output names under ``namespace``,
    by default the input topic's namespace — where a node started in that namespace (or a
    launch with ``namespace:=``) publishes them: ``/camera/image_raw`` →
    ``/camera/segmentation/class_mask`` …, ``/image`` → ``/segmentation/class_mask``. A
    compressed topic is named as image_transport names it (``<image>/compressed``), so its base
    ``<image>`` decides: ``/camera/image_raw/compressed`` → ``/camera/…``."""
    if namespace is None:
        base = image_topic.rstrip("/")
        if compressed and base.endswith("/compressed"):
            base = base[: -len("/compressed")]
        namespace = base.rsplit("/", 1)[0]
    ns = _normalise_namespace(namespace) if namespace not in ("", "/") else ""
    return {key: f"{ns}/{topic}" for key, (topic, _) in OUTPUTS.items()}


# ----------------------------------------------------------------------------- reading bags


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtypes: Tuple[str, ...]
    count: int

    def describe(self) -> str:
        return f"{self.name} [{', '.join(self.msgtypes)}, {self.count} msgs]"


def _storage_files(path: Path) -> List[Path]:
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if p.suffix in (".mcap", ".db3") or p.name.endswith((".mcap.zstd", ".db3.zstd"))
        )
    return [path]


def _register_bag_type(store: Any, connections: Sequence[Any], msgtype: str) -> None:
    """Add ``msgtype`` to ``store`` from the bag's own definition of it (mcap bags, and sqlite3
    bags of Iron and later, carry their message definitions)."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import get_types_from_msg

    for conn in connections:
        if conn.msgtype == msgtype and conn.msgdef.format == MessageDefinitionFormat.MSG:
            with contextlib.suppress(Exception):  # then deserializing says what is wrong
                store.register(get_types_from_msg(conn.msgdef.data, msgtype))
                return


class Bag:
    """A rosbag2 opened for reading; every read error becomes one :class:`CosmeError` line
    naming the file (the storage file when there is one)."""

    def __init__(self, path: str | Path):
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise CosmeError(
                f"{self.path}: no such bag (a rosbag2 directory with "
                f"metadata.yaml, or an .mcap / .db3 file)"
            )
        try:
            self.reader = Reader(self.path)
            self.reader.open()
        except FileNotFoundError:  # a directory without metadata.yaml
            raise CosmeError(f"{self.path}: not a rosbag2 directory (no metadata.yaml)") from None
        except _bag_errors() as exc:
            raise self._error(exc) from None
        # Every MCAP chunk is decoded and its CRC checked before anything is read from it: a
        # damaged bag stops here with the damaged range (data/bag_crc.py).
        from cosme_ros.data.bag_crc import mcap_storages, verify_mcap

        mcaps = mcap_storages(self.reader)
        self.unchecked_chunks = 0
        try:
            for storage in mcaps:
                self.unchecked_chunks += verify_mcap(storage, Path(storage.path))
        except CosmeError:
            self.close()
            raise
        self.connections = list(self.reader.connections)
        self.storage = "mcap" if mcaps else "sqlite3"
        from rosbags.typesys import Stores, get_typestore

        self.typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.topics: Dict[str, TopicInfo] = {}
        for conn in self.connections:
            old = self.topics.get(conn.topic)
            types = tuple(dict.fromkeys((*(old.msgtypes if old else ()), conn.msgtype)))
            self.topics[conn.topic] = TopicInfo(
                conn.topic, types, (old.count if old else 0) + conn.msgcount
            )

    def _error(self, exc: BaseException) -> CosmeError:
        files = _storage_files(self.path)
        where = files[0] if len(files) == 1 else self.path
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CosmeError(f"{where}: cannot read the bag: {text} (truncated or corrupt?)")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reader.close()

    def __enter__(self) -> "Bag":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe_topics(self) -> str:
        return "; ".join(t.describe() for t in self.topics.values()) or "no topics"

    def connections_for(self, topic: str, allowed: Sequence[str], what: str) -> List[Any]:
        """The connections of ``topic``, which must exist with one of the ``allowed`` types."""
        info = self.topics.get(topic)
        if info is None:
            raise CosmeError(
                f"{self.path}: no topic {topic!r} for the {what}; the bag has: "
                f"{self.describe_topics()}"
            )
        wrong = [t for t in info.msgtypes if t not in allowed]
        if wrong:
            raise CosmeError(
                f"{self.path}: topic {topic!r} is {', '.join(info.msgtypes)}, the "
                f"{what} must be {' or '.join(allowed)}; the bag has: "
                f"{self.describe_topics()}"
            )
        return [c for c in self.connections if c.topic == topic]

    def messages(self, connections: Sequence[Any]) -> Iterator[Tuple[Any, int, Any]]:
        """(connection, bag timestamp ns, raw CDR bytes) of ``connections``, in bag time order."""
        if not connections:  # rosbags reads every topic for an empty list
            return
        it = self.reader.messages(connections=connections)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except _bag_errors() as exc:
                raise self._error(exc) from None
            yield item

    def deserialize(self, raw: Any, msgtype: str, topic: str, bag_ns: int) -> Any:
        """A message object: ROS 2 Humble's definition of its type, else the bag's own."""
        if msgtype not in self.typestore.types:
            _register_bag_type(self.typestore, self.connections, msgtype)
        try:
            return self.typestore.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # rosbags' CDR reader raises anything on garbage  # noqa: BLE001
            raise CosmeError(
                f"{self.path}: message on {topic} at bag time {bag_ns} cannot be "
                f"deserialized as {msgtype} ({type(exc).__name__}: {exc})"
            ) from None


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


# ----------------------------------------------------------------------------- ground truth


def gt_labels(gt: np.ndarray, anomaly_value: int) -> np.ndarray:
    """A ground-truth mask → metric labels: 0 stays in-distribution, ``anomaly_value`` (1 or
    255) becomes 1 (anomaly), every other value 255 (ignored)."""
    labels = np.full(gt.shape, 255, np.uint8)
    labels[gt == 0] = 0
    labels[gt == anomaly_value] = 1
    return labels


def read_mask_folder(folder: str | Path) -> Tuple[Dict[int, Path], List[str]]:
    """``{stamp_ns: path}`` of the masks in ``folder`` — file stem = the image's header stamp in
    nanoseconds (``1700000000100000000.png``) — and the names of files that are not masks."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CosmeError(
            f"{folder}: no such directory (--gt-masks takes a folder of masks "
            f"named <stamp in nanoseconds>.png)"
        )
    masks: Dict[int, Path] = {}
    other: List[str] = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in MASK_SUFFIXES and p.stem.isdigit():
            stamp = int(p.stem)
            if stamp in masks:
                raise CosmeError(f"{p}: a second mask for stamp {stamp} ({masks[stamp].name})")
            masks[stamp] = p
        else:
            other.append(p.name)
    if not masks:
        raise CosmeError(
            f"{folder}: no masks named <stamp in nanoseconds>" f"{'|'.join(MASK_SUFFIXES)}"
        )
    return masks, other


def _read_mask(path: Path) -> np.ndarray:
    from cosme_ros.data.images import decode_file

    mask = decode_file(path, cv2.IMREAD_UNCHANGED, error=CosmeError, what="mask")
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
            raise CosmeError(f"{path}: a colour image; a mask has one channel (0, 1 or 255)")
        mask = mask[..., 0]
    if mask.dtype != np.uint8:
        raise CosmeError(f"{path}: {mask.dtype} pixels; a mask is 8-bit")
    return mask


def _gt_from_message(msg: Any, topic: str) -> np.ndarray:
    if msg.encoding not in ("mono8", "8UC1"):
        raise CosmeError(
            f"ground truth on {topic} is {msg.encoding!r}; it must be mono8 "
            f"(0 in-distribution, 1 or 255 anomaly)"
        )
    fields = msg if msg.encoding == "mono8" else _Mono8(msg)
    try:
        return codec.image_array(fields)
    except codec.ImageMessageError as exc:
        raise CosmeError(
            f"ground truth on {topic} at stamp {stamp_ns(msg.header)}: " f"{exc}"
        ) from None


class _Mono8:
    """An 8UC1 message read as mono8 (the same bytes)."""

    def __init__(self, msg):
        self.height, self.width, self.step = msg.height, msg.width, msg.step
        self.is_bigendian, self.data, self.encoding = msg.is_bigendian, msg.data, "mono8"


# ----------------------------------------------------------------------------- metrics


@dataclass
class FrameRecord:
    """One evaluated frame: its position among the images, stamps, pixel counts and metrics
    (percent; None when the frame lacks one of the two classes)."""

    index: int
    stamp_ns: int
    bag_ns: int
    anomaly: int
    in_distribution: int
    auroc: Optional[float] = None
    ap: Optional[float] = None
    fpr95: Optional[float] = None

    def to_json(self) -> Dict:
        return dict(self.__dict__)


class _Scoring:
    """Per-frame metrics and the pooled ones (:class:`~cosme_ros.metrics.PooledPixels`)."""

    def __init__(self, frames_total: int, binned: bool, memory_limit_gib: float):
        self.pooled = metrics.PooledPixels(
            ["score"],
            frames_total,
            binned=binned,
            memory_limit_gib=memory_limit_gib,
            unit="frames",
        )
        self.records: List[FrameRecord] = []

    @property
    def pixels(self) -> Dict[str, int]:
        return self.pooled.pixels

    def add(
        self, index: int, stamp: int, bag_ns: int, score: np.ndarray, labels: np.ndarray
    ) -> FrameRecord:
        if labels.shape != score.shape:  # metrics at the ground truth's resolution
            score = cv2.resize(
                score, (labels.shape[1], labels.shape[0]), interpolation=cv2.INTER_LINEAR
            )
        kept = self.pooled.add({"score": score}, labels, f"frame {index} (stamp {stamp})")
        rec = FrameRecord(index, stamp, bag_ns, int((labels == 1).sum()), int((labels == 0).sum()))
        m = None if kept is None else metrics.image_metrics(kept[1]["score"], kept[0])
        if m is not None:
            rec.auroc, rec.ap, rec.fpr95 = (float(m[k]) for k in ("auroc", "ap", "fpr95"))
        self.records.append(rec)
        return rec

    def pooled_metrics(self) -> Tuple[Optional[Dict[str, float]], Optional[Dict[str, float]]]:
        """(metrics, error bounds when binned), or (None, None) without both classes."""
        if not self.pooled.has_both_classes:
            return None, None
        result = self.pooled.compute()
        return result.metrics["score"], result.error_bounds.get("score")


# ----------------------------------------------------------------------------- options, report


@dataclass
class ReplayOptions:
    """What to read, what to write, and the node's drawing settings (its defaults)."""

    image_topic: str
    gt_topic: Optional[str] = None
    gt_masks: Optional[Path] = None
    gt_anomaly_value: int = 1
    out: Optional[Path] = None
    out_storage: Optional[str] = None  # None: the input's
    out_namespace: Optional[str] = None  # None: the image topic's namespace
    video: Optional[Path] = None
    video_fps: Optional[float] = None  # None: the image topic's rate
    anomaly_threshold: float = 0.0  # the node's drawing parameters (the CLI resolves
    # the node's default, auto, from the bundle)
    overlay_alpha: float = 0.5
    heatmap_range: Optional[Tuple[float, float]] = None  # None: auto (RunningRange)
    output_resolution: str = "input"
    binned: bool = False
    memory_limit_gib: float = 4.0
    force: bool = False
    progress_file: Optional[Path] = None


@dataclass
class ReplayReport:
    bag: str
    storage: str
    image_topic: str
    image_type: str
    frames: int  # image messages read
    processed: int  # frames run through the pipeline
    rejected: int  # frames the decoder refused (as the node does)
    rejection: Optional[str]  # the first reason
    seconds: float
    pipeline_seconds: float
    out: Optional[str] = None
    out_storage: Optional[str] = None
    out_topics: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    video: Optional[str] = None
    video_fps: Optional[float] = None
    ground_truth: Optional[str] = None
    metrics: Optional[Dict[str, float]] = None
    error_bounds: Optional[Dict[str, float]] = None
    metric_mode: Optional[str] = None
    pixels: Optional[Dict[str, int]] = None
    per_frame: List[FrameRecord] = field(default_factory=list)
    unmatched_images: int = 0  # processed frames without ground truth
    unmatched_gt: int = 0  # ground truth without an image of its stamp
    duplicate_gt: int = 0
    notes: List[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def pipeline_fps(self) -> float:
        return self.processed / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

    def worst_frames(self, n: int) -> List[FrameRecord]:
        """The ``n`` frames with the lowest AP (frames with both classes)."""
        rated = [r for r in self.per_frame if r.ap is not None]
        return sorted(rated, key=lambda r: (r.ap, r.index))[: max(0, n)]

    def to_json(self, worst: int = 5) -> Dict:
        out = {k: v for k, v in self.__dict__.items() if k != "per_frame"}
        out["per_frame"] = [r.to_json() for r in self.per_frame]
        out["worst_frames"] = [r.to_json() for r in self.worst_frames(worst)]
        out["frames_per_second"] = round(self.fps, 3)
        out["pipeline_frames_per_second"] = round(self.pipeline_fps, 3)
        return out


def _fmt(v: Optional[float]) -> str:
    return "    -" if v is None else f"{v:6.2f}"


def format_report(report: ReplayReport, per_frame: bool = True, worst: int = 5) -> str:
    """The text ``cosme replay`` prints: throughput, outputs, and with ground truth the pooled
    metrics, one line per frame and the worst frames."""
    lines = [
        f"replayed {report.processed} of {report.frames} frames of {report.image_topic} "
        f"({report.image_type}) in {report.seconds:.1f} s: {report.fps:.2f} frames/s "
        f"(pipeline alone {report.pipeline_fps:.2f} frames/s)"
    ]
    if report.rejected:
        lines.append(
            f"{report.rejected} frame(s) rejected by the decoder (first: " f"{report.rejection})"
        )
    if report.out:
        lines.append(
            f"output bag {report.out} ({report.out_storage}): "
            + ", ".join(f"{t} {v['count']}" for t, v in report.out_topics.items())
        )
    if report.video:
        lines.append(f"video {report.video} ({report.video_fps:g} fps)")
    lines += [f"note: {n}" for n in report.notes]
    if report.ground_truth is None:
        return "\n".join(lines)
    lines.append(
        f"ground truth {report.ground_truth}: {len(report.per_frame)} frame(s) matched "
        f"by header stamp; {report.unmatched_images} frame(s) without ground truth, "
        f"{report.unmatched_gt} ground-truth mask(s) without a frame"
        + (f", {report.duplicate_gt} duplicate stamp(s) ignored" if report.duplicate_gt else "")
    )
    if report.metrics is None:
        px = report.pixels or {}
        lines.append(
            f"no pooled metrics: the matched frames have {px.get('anomaly', 0)} anomaly "
            f"and {px.get('in_distribution', 0)} in-distribution pixels; both are needed"
        )
    else:
        m = report.metrics
        bounds = ""
        if report.error_bounds:
            b = report.error_bounds
            bounds = (
                f" (binned; error at most {b['auroc']:.3f} / {b['ap']:.3f} / "
                f"{b['fpr95']:.3f} pp)"
            )
        lines.append(
            f"pooled over the drive: AUROC {m['auroc']:.2f}  AP {m['ap']:.2f}  "
            f"FPR95 {m['fpr95']:.2f} (%){bounds}; {report.pixels['anomaly']} anomaly / "
            f"{report.pixels['in_distribution']} in-distribution pixels"
        )
    if per_frame and report.per_frame:
        lines.append("per frame:   index  stamp_ns             AUROC     AP  FPR95  anomaly px")
        for r in report.per_frame:
            lines.append(
                f"           {r.index:7d}  {r.stamp_ns:19d} {_fmt(r.auroc)} "
                f"{_fmt(r.ap)} {_fmt(r.fpr95)}  {r.anomaly:10d}"
            )
    bad = report.worst_frames(worst)
    if bad:
        lines.append(
            "worst frames by AP: "
            + ", ".join(f"#{r.index} (stamp {r.stamp_ns}, AP {r.ap:.2f})" for r in bad)
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- writing


class _BagTarget:
    """A bag directory built at ``<tmpdir>/<name>`` beside ``path`` (the storage file inside is
    named after the bag) and moved into place by :meth:`commit`; :meth:`discard` removes it."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        self.bag = self.tmp / path.name

    def commit(self) -> None:
        with atomic.signals_deferred():
            atomic.replace_dir(self.bag, self.path)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _write_progress(path: Path, done: int, total: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"frames_done": done, "frames_total": total}) + "\n")
    os.replace(tmp, path)


def _image_msg(typestore: Any, array: np.ndarray, encoding: str, header: Any) -> Any:
    fields = codec.image_fields(array, encoding)
    fields["data"] = np.frombuffer(fields["data"], np.uint8)
    return typestore.types[IMAGE_TYPE](header=header, **fields)


# ----------------------------------------------------------------------------- replay


def _topic_rate(bag: Bag, connections: Sequence[Any]) -> Optional[float]:
    """Messages per second of ``connections`` from the bag's metadata (count over duration)."""
    count = sum(c.msgcount for c in connections)
    try:
        duration = bag.reader.duration
    except Exception:  # noqa: BLE001
        return None
    if count < 2 or duration <= 1:
        return None
    return (count - 1) * 1e9 / (duration - 1)  # rosbags adds 1 ns to the duration


def check_options(o: ReplayOptions) -> None:
    """Argument errors that need no bag (one line each)."""
    if o.gt_topic and o.gt_masks:
        raise CosmeError("give ground truth as --gt-topic or --gt-masks, not both")
    if o.gt_anomaly_value not in (1, 255):
        raise CosmeError(f"--gt-anomaly-value must be 1 or 255, got {o.gt_anomaly_value}")
    if o.out_storage not in (None, *STORAGES):
        raise CosmeError(f"--out-storage must be one of {', '.join(STORAGES)}")
    if o.output_resolution not in ("input", "network"):
        raise CosmeError("--output-resolution must be input or network")
    if not 0.0 <= o.overlay_alpha <= 1.0:
        raise CosmeError(f"--overlay-alpha must be within [0, 1], got {o.overlay_alpha}")
    if math.isnan(o.anomaly_threshold):  # +inf: no mask (auto without a calibration)
        raise CosmeError("--anomaly-threshold must be a number")
    if o.video_fps is not None and not (o.video_fps > 0 and math.isfinite(o.video_fps)):
        raise CosmeError("--video-fps must be positive")
    if o.out_namespace is not None:
        _normalise_namespace(o.out_namespace)
    targets = [p for p in (o.out, o.video) if p is not None]
    for p in targets:
        atomic.check_writable(p, o.force)
    if (
        o.out is not None
        and o.video is not None
        and Path(o.out).resolve() == Path(o.video).resolve()
    ):
        raise CosmeError("--out and --video name the same path")


def check_bag(bag: Bag, o: ReplayOptions) -> Tuple[List[Any], List[Any], Dict[str, str]]:
    """The image and ground-truth connections and the output topics, after checking that the
    topics exist with the right types (a :class:`CosmeError` listing the bag's topics if not).
    Cheap: ``cosme replay`` calls it before loading the model."""
    if o.out is not None and bag.path.resolve() == Path(o.out).resolve():
        raise CosmeError(f"{bag.path}: --out names the input bag")
    if o.gt_topic is not None and o.gt_topic == o.image_topic:
        raise CosmeError("--gt-topic and --image-topic name the same topic")
    img_conns = bag.connections_for(o.image_topic, IMAGE_TYPES, "image topic")
    gt_conns = (
        bag.connections_for(o.gt_topic, (IMAGE_TYPE,), "ground-truth topic") if o.gt_topic else []
    )
    topics = output_topics(o.image_topic, img_conns[0].msgtype == COMPRESSED_TYPE, o.out_namespace)
    clash = sorted(set(topics.values()) & {o.image_topic, o.gt_topic})
    if clash:
        raise CosmeError(
            f"output topic {clash[0]} is also an input topic; choose " f"--out-namespace"
        )
    if o.gt_masks is not None:
        read_mask_folder(o.gt_masks)
    return img_conns, gt_conns, topics


class _OutputBag:
    """The output bag: built at a temporary path beside the target (:class:`_BagTarget`), the
    inputs copied byte for byte, the node's outputs added, committed or discarded as a whole."""

    def __init__(
        self,
        path: Path,
        storage: str,
        typestore: Any,
        inputs: Sequence[Any],
        topics: Dict[str, str],
    ):
        from rosbags.rosbag2 import StoragePlugin

        from cosme_ros.data.bag_crc import ChecksummedWriter

        self.typestore, self.topics = typestore, topics
        self.target = _BagTarget(path)
        self.closed = False
        self.writer = ChecksummedWriter(
            self.target.bag,
            version=8,
            storage_plugin={"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage],
        )
        self.conns: Dict[str, Any] = {}
        self.types: Dict[str, str] = {}
        try:
            self.writer.open()
            for conn in inputs:  # several connections of one topic (two recorders) → one
                if conn.topic not in self.conns:
                    self._add(conn.topic, conn.msgtype, conn.ext.offered_qos_profiles)
            for topic in topics.values():
                self._add(topic, IMAGE_TYPE, ())
        except BaseException:
            self.discard()
            raise
        self.counts = {t: 0 for t in self.conns}

    def _add(self, topic: str, msgtype: str, qos) -> None:
        self.conns[topic] = self.writer.add_connection(
            topic, msgtype, typestore=self.typestore, offered_qos_profiles=list(qos)
        )
        self.types[topic] = msgtype

    def copy(self, topic: str, bag_ns: int, raw: Any) -> None:
        self.writer.write(self.conns[topic], bag_ns, raw)
        self.counts[topic] += 1

    def add_outputs(
        self, images: Dict[str, Tuple[np.ndarray, str]], header: Any, bag_ns: int
    ) -> None:
        """The node's output images, each with the input's header, at the input's bag time."""
        for key, (array, encoding) in images.items():
            msg = _image_msg(self.typestore, array, encoding, header)
            self.copy(self.topics[key], bag_ns, self.typestore.serialize_cdr(msg, IMAGE_TYPE))

    def close(self) -> None:
        """Finish the bag (still at its temporary path)."""
        if not self.closed:
            self.writer.close()
            self.closed = True

    def commit(self) -> None:
        self.close()
        self.target.commit()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.abort()
        self.target.discard()

    def summary(self) -> Dict[str, Dict[str, Any]]:
        return {t: {"type": self.types[t], "count": n} for t, n in self.counts.items()}


class _GroundTruth:
    """Masks by header stamp, from a topic (read first, kept zlib-compressed: masks compress
    ~100x) or a folder (read when their frame comes)."""

    def __init__(self, bag: Bag, conns: Sequence[Any], folder: Optional[Path], progress: bool):
        self.packed: Dict[int, Tuple[Tuple[int, ...], bytes]] = {}
        self.files: Dict[int, Path] = {}
        self.used: set = set()
        self.duplicates = 0
        self.notes: List[str] = []
        if folder is not None:
            self.files, other = read_mask_folder(folder)
            if other:
                self.notes.append(
                    f"{len(other)} file(s) in {folder} are not named "
                    f"<stamp_ns>.png and are ignored (first: {other[0]})"
                )
        n = sum(c.msgcount for c in conns)
        for conn, bag_ns, raw in tqdm(
            bag.messages(conns),
            total=n,
            desc="ground truth",
            unit="msg",
            leave=False,
            disable=not progress or n < 2,
            dynamic_ncols=True,
        ):
            msg = bag.deserialize(raw, conn.msgtype, conn.topic, bag_ns)
            stamp = stamp_ns(msg.header)
            if stamp in self.packed:
                self.duplicates += 1
                continue
            mask = _gt_from_message(msg, conn.topic)
            self.packed[stamp] = (mask.shape, zlib.compress(mask.tobytes(), 1))

    def mask_for(self, stamp: int) -> Optional[np.ndarray]:
        if stamp in self.packed:
            shape, packed = self.packed[stamp]
            mask = np.frombuffer(zlib.decompress(packed), np.uint8).reshape(shape)
        elif stamp in self.files:
            mask = _read_mask(self.files[stamp])
        else:
            return None
        self.used.add(stamp)
        return mask

    @property
    def unused(self) -> int:
        return len((set(self.packed) | set(self.files)) - self.used)


def replay(
    bag_path: "str | Path | Bag",
    pipeline: Any,
    options: ReplayOptions,
    *,
    progress: bool = True,
    summary: Optional[Tuple[Path, Callable[["ReplayReport"], str]]] = None,
) -> ReplayReport:
    """Run every image of ``options.image_topic`` through ``pipeline`` and write / measure
    what ``options`` asks for (module docstring). ``bag_path``: a bag's path, or a :class:`Bag`
    already open (and verified; closed when done). ``summary``: ``(path, text of the finished
    report)``, a file written with the other outputs (the CLI's ``--json``). Raises
    :class:`CosmeError` for expected failures; on any exception (``KeyboardInterrupt``
    included) no output is left, and the outputs appear together: all of them or none."""
    o = options
    check_options(o)
    with bag_path if isinstance(bag_path, Bag) else Bag(bag_path) as bag:
        img_conns, gt_conns, topics = check_bag(bag, o)
        image_type = img_conns[0].msgtype
        total = sum(c.msgcount for c in img_conns)
        video_fps = round(
            min(max(o.video_fps or _topic_rate(bag, img_conns) or 10.0, 1.0), 120.0), 3
        )
        truth = (
            _GroundTruth(bag, gt_conns, o.gt_masks, progress) if (gt_conns or o.gt_masks) else None
        )
        scoring = _Scoring(total, o.binned, o.memory_limit_gib) if truth else None

        report = ReplayReport(
            bag=str(bag.path),
            storage=bag.storage,
            image_topic=o.image_topic,
            image_type=image_type,
            frames=0,
            processed=0,
            rejected=0,
            rejection=None,
            seconds=0.0,
            pipeline_seconds=0.0,
            notes=list(truth.notes) if truth else [],
        )
        if bag.unchecked_chunks:
            report.notes.append(
                f"{bag.unchecked_chunks} chunk(s) of the bag carry no CRC "
                f"(written without checksums): damage there cannot be detected"
            )
        unmatched = 0
        heat = RunningRange()
        palette = list(pipeline.bundle.palette)
        img_topics = {c.topic for c in img_conns}
        out: Optional[_OutputBag] = None
        video: Optional[VideoFile] = None
        staged: Optional[atomic.OutputSet] = None  # the summary file
        start = time.perf_counter()
        bar = tqdm(
            total=total, desc="replay", unit="frame", disable=not progress, dynamic_ncols=True
        )
        try:
            if o.video:
                video = VideoFile(Path(o.video), video_fps)
            if o.out:
                out = _OutputBag(
                    Path(o.out),
                    o.out_storage or bag.storage,
                    bag.typestore,
                    img_conns + gt_conns,
                    topics,
                )
            if o.progress_file:
                _write_progress(Path(o.progress_file), 0, total)
            for conn, bag_ns, raw in bag.messages(img_conns + gt_conns):
                if out is not None:
                    out.copy(conn.topic, bag_ns, raw)
                if conn.topic not in img_topics:
                    continue
                report.frames += 1
                msg = bag.deserialize(raw, conn.msgtype, conn.topic, bag_ns)
                stamp = stamp_ns(msg.header)
                try:
                    rgb = codec.decode(msg)
                except codec.ImageMessageError as exc:  # the node skips these too
                    report.rejected += 1
                    report.rejection = report.rejection or f"stamp {stamp}: {exc}"
                else:
                    # The node's _process_latest and _publish, for one frame.
                    out_size = (
                        rgb.shape[:2]
                        if o.output_resolution == "input"
                        else tuple(pipeline.input_size)
                    )
                    t0 = time.perf_counter()
                    result = pipeline(rgb, out_size=out_size)
                    report.pipeline_seconds += time.perf_counter() - t0
                    index = report.processed
                    report.processed += 1
                    if out is not None or video is not None:
                        images = render_outputs(
                            rgb,
                            result.classes,
                            result.score,
                            set(OUTPUTS),
                            threshold=o.anomaly_threshold,
                            alpha=o.overlay_alpha,
                            palette=palette,
                            heat_range=o.heatmap_range or heat.update(result.score),
                        )
                        if out is not None:
                            out.add_outputs(images, msg.header, bag_ns)
                        if video is not None:
                            video.write(side_by_side(rgb, images["color"][0], images["heatmap"][0]))
                    if truth is not None:
                        mask = truth.mask_for(stamp)
                        if mask is None:
                            unmatched += 1
                        elif mask.shape[:2] != rgb.shape[:2]:
                            # a label of another size belongs to another camera or crop: the
                            # pixels would be compared with the wrong ones
                            raise CosmeError(
                                f"{bag.path}: the ground-truth mask for stamp {stamp} is "
                                f"{mask.shape[1]}x{mask.shape[0]} but its image is "
                                f"{rgb.shape[1]}x{rgb.shape[0]} (WxH); masks must match "
                                f"their images pixel for pixel"
                            )
                        else:
                            scoring.add(
                                index,
                                stamp,
                                bag_ns,
                                result.score,
                                gt_labels(mask, o.gt_anomaly_value),
                            )
                bar.update(1)
                if o.progress_file:
                    _write_progress(Path(o.progress_file), report.frames, total)
            bar.close()
            if report.processed == 0:
                raise CosmeError(
                    f"{bag.path}: no frame of {o.image_topic} could be processed"
                    + (f" (first rejection: {report.rejection})" if report.rejection else "")
                )
            for target in (video, out):
                if target is not None:
                    target.close()
            # The report is complete before anything is moved into place: the summary file is
            # written from it, then every output is renamed in one signal-free block.
            if out is not None:
                report.out, report.out_storage = str(o.out), o.out_storage or bag.storage
                report.out_topics = out.summary()
            if video is not None:
                report.video, report.video_fps = str(o.video), video_fps
            if truth is not None:
                report.ground_truth = (
                    f"topic {o.gt_topic}" if o.gt_topic else f"folder {o.gt_masks}"
                )
                report.metrics, report.error_bounds = scoring.pooled_metrics()
                report.metric_mode = "binned" if o.binned else "exact"
                report.pixels = scoring.pixels
                report.per_frame = scoring.records
                report.unmatched_images = unmatched
                report.unmatched_gt = truth.unused
                report.duplicate_gt = truth.duplicates
            report.seconds = time.perf_counter() - start
            if summary is not None:
                staged = atomic.OutputSet()
                staged.file(summary[0]).write_text(summary[1](report))
            with atomic.signals_deferred():
                for target in (video, out, staged):
                    if target is not None:
                        target.commit()
        except BaseException:
            bar.close()
            for target in (out, video, staged):
                if target is not None:
                    target.discard()
            raise
    return report
