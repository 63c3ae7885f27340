"""What replay measured: per-frame and pooled metrics (:class:`~cosme_ros.metrics.PooledPixels`),
its options and its report, and the text ``cosme replay`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np

from cosme_ros import metrics


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


class Scoring:
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
        y = kept[0] if kept is not None else labels[:0]  # the frame's labelled pixels
        rec = FrameRecord(index, stamp, bag_ns, int((y == 1).sum()), int((y == 0).sum()))
        m = None if kept is None else metrics.image_metrics(kept[1]["score"], y)
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
