"""The replay loop: every image of one topic through the pipeline, drawn as the node draws it,
into an output bag, a video and metrics (see :mod:`cosme_ros.tools.replay`)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from cosme_ros import atomic
from cosme_ros.errors import CosmeError
from cosme_ros.frames import codec
from cosme_ros.frames.render import OUTPUTS, RunningRange, render_outputs
from cosme_ros.frames.sheets import side_by_side
from cosme_ros.frames.writers import VideoFile
from cosme_ros.tools.replay.bag import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    IMAGE_TYPES,
    STORAGES,
    Bag,
    stamp_ns,
    topic_rate,
)
from cosme_ros.tools.replay.ground_truth import GroundTruth, gt_labels, read_mask_folder
from cosme_ros.tools.replay.outputs import (
    OutputBag,
    normalise_namespace,
    output_topics,
    write_progress,
)
from cosme_ros.tools.replay.report import ReplayOptions, ReplayReport, Scoring


# ----------------------------------------------------------------------------- topics


# ----------------------------------------------------------------------------- reading bags


# ----------------------------------------------------------------------------- ground truth


# ----------------------------------------------------------------------------- metrics


# ----------------------------------------------------------------------------- options, report


# ----------------------------------------------------------------------------- writing


# ----------------------------------------------------------------------------- replay


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
        normalise_namespace(o.out_namespace)
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


def replay(
    bag_path: "str | Path | Bag",
    pipeline: Any,
    options: ReplayOptions,
    *,
    progress: bool = True,
    summary: Optional[Tuple[Path, Callable[["ReplayReport"], str]]] = None,
) -> ReplayReport:
    """Run every image of ``options.image_topic`` through ``pipeline`` and write / measure
    what ``options`` asks for (:mod:`cosme_ros.tools.replay`). ``bag_path``: a bag's path, or a
    :class:`Bag` already open (and verified; closed when done). ``summary``: ``(path, text of
    the finished report)``, a file written with the other outputs (the CLI's ``--json``). Raises
    :class:`CosmeError` for expected failures; on any exception (``KeyboardInterrupt``
    included) no output is left, and the outputs appear together: all of them or none."""
    check_options(options)
    with bag_path if isinstance(bag_path, Bag) else Bag(bag_path) as bag:
        return _Replay(bag, pipeline, options, progress).run(summary)


class _Replay:
    """One replay's state: the bag, the pipeline, the outputs being built and the report."""

    def __init__(self, bag: Bag, pipeline: Any, o: ReplayOptions, progress: bool):
        self.bag, self.pipeline, self.o, self.progress = bag, pipeline, o, progress
        self.img_conns, self.gt_conns, self.topics = check_bag(bag, o)
        self.total = sum(c.msgcount for c in self.img_conns)
        rate = o.video_fps or topic_rate(bag, self.img_conns) or 10.0
        self.video_fps = round(min(max(rate, 1.0), 120.0), 3)
        self.truth = (
            GroundTruth(bag, self.gt_conns, o.gt_masks, progress)
            if (self.gt_conns or o.gt_masks)
            else None
        )
        self.scoring = Scoring(self.total, o.binned, o.memory_limit_gib) if self.truth else None
        self.report = ReplayReport(
            bag=str(bag.path),
            storage=bag.storage,
            image_topic=o.image_topic,
            image_type=self.img_conns[0].msgtype,
            frames=0,
            processed=0,
            rejected=0,
            rejection=None,
            seconds=0.0,
            pipeline_seconds=0.0,
            notes=list(self.truth.notes) if self.truth else [],
        )
        if bag.unchecked_chunks:
            self.report.notes.append(
                f"{bag.unchecked_chunks} chunk(s) of the bag carry no CRC "
                f"(written without checksums): damage there cannot be detected"
            )
        self.unmatched = 0
        self.heat = RunningRange()
        self.palette = list(pipeline.bundle.palette)
        self.out: Optional[OutputBag] = None
        self.video: Optional[VideoFile] = None
        self.staged: Optional[atomic.OutputSet] = None  # the summary file

    def run(self, summary) -> ReplayReport:
        o, start = self.o, time.perf_counter()
        bar = tqdm(
            total=self.total,
            desc="replay",
            unit="frame",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            self._open_outputs()
            img_topics = {c.topic for c in self.img_conns}
            for conn, bag_ns, raw in self.bag.messages(self.img_conns + self.gt_conns):
                if self.out is not None:
                    self.out.copy(conn.topic, bag_ns, raw)
                if conn.topic in img_topics:
                    self._frame(conn, bag_ns, raw)
                    bar.update(1)
                    if o.progress_file:
                        write_progress(Path(o.progress_file), self.report.frames, self.total)
            bar.close()
            self._finish(start, summary)
        except BaseException:
            bar.close()
            for target in (self.out, self.video, self.staged):
                if target is not None:
                    target.discard()
            raise
        return self.report

    def _open_outputs(self) -> None:
        o = self.o
        if o.video:
            self.video = VideoFile(Path(o.video), self.video_fps)
        if o.out:
            self.out = OutputBag(
                Path(o.out),
                o.out_storage or self.bag.storage,
                self.bag.typestore,
                self.img_conns + self.gt_conns,
                self.topics,
            )
        if o.progress_file:
            write_progress(Path(o.progress_file), 0, self.total)

    def _frame(self, conn: Any, bag_ns: int, raw: Any) -> None:
        """One image message: decoded (or counted as rejected, as the node does), run, drawn,
        written and scored — the node's _process_latest and _publish for one frame."""
        report, o = self.report, self.o
        report.frames += 1
        msg = self.bag.deserialize(raw, conn.msgtype, conn.topic, bag_ns)
        stamp = stamp_ns(msg.header)
        try:
            rgb = codec.decode(msg)
        except codec.ImageMessageError as exc:  # the node skips these too
            report.rejected += 1
            report.rejection = report.rejection or f"stamp {stamp}: {exc}"
            return
        out_size = (
            rgb.shape[:2] if o.output_resolution == "input" else tuple(self.pipeline.input_size)
        )
        t0 = time.perf_counter()
        result = self.pipeline(rgb, out_size=out_size)
        report.pipeline_seconds += time.perf_counter() - t0
        index = report.processed
        report.processed += 1
        if self.out is not None or self.video is not None:
            images = render_outputs(
                rgb,
                result.classes,
                result.score,
                set(OUTPUTS),
                threshold=o.anomaly_threshold,
                alpha=o.overlay_alpha,
                palette=self.palette,
                heat_range=o.heatmap_range or self.heat.update(result.score),
            )
            if self.out is not None:
                self.out.add_outputs(images, msg.header, bag_ns)
            if self.video is not None:
                self.video.write(side_by_side(rgb, images["color"][0], images["heatmap"][0]))
        if self.truth is not None:
            self._score(index, stamp, bag_ns, rgb, result.score)

    def _score(self, index: int, stamp: int, bag_ns: int, rgb: np.ndarray, score) -> None:
        mask = self.truth.mask_for(stamp)
        if mask is None:
            self.unmatched += 1
        elif mask.shape[:2] != rgb.shape[:2]:
            # a label of another size belongs to another camera or crop: the pixels would be
            # compared with the wrong ones
            raise CosmeError(
                f"{self.bag.path}: the ground-truth mask for stamp {stamp} is "
                f"{mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{rgb.shape[1]}x{rgb.shape[0]} (WxH); masks must match their images pixel "
                f"for pixel"
            )
        else:
            self.scoring.add(index, stamp, bag_ns, score, gt_labels(mask, self.o.gt_anomaly_value))

    def _finish(self, start: float, summary) -> None:
        """Complete the report, then move every output into place in one signal-free block:
        the summary file is written from the finished report first."""
        report, o = self.report, self.o
        if report.processed == 0:
            raise CosmeError(
                f"{self.bag.path}: no frame of {o.image_topic} could be processed"
                + (f" (first rejection: {report.rejection})" if report.rejection else "")
            )
        for target in (self.video, self.out):
            if target is not None:
                target.close()
        if self.out is not None:
            report.out, report.out_storage = str(o.out), o.out_storage or self.bag.storage
            report.out_topics = self.out.summary()
        if self.video is not None:
            report.video, report.video_fps = str(o.video), self.video_fps
        if self.truth is not None:
            report.ground_truth = f"topic {o.gt_topic}" if o.gt_topic else f"folder {o.gt_masks}"
            report.metrics, report.error_bounds = self.scoring.pooled_metrics()
            report.metric_mode = "binned" if o.binned else "exact"
            report.pixels = self.scoring.pixels
            report.per_frame = self.scoring.records
            report.unmatched_images = self.unmatched
            report.unmatched_gt = self.truth.unused
            report.duplicate_gt = self.truth.duplicates
        report.seconds = time.perf_counter() - start
        if summary is not None:
            self.staged = atomic.OutputSet()
            self.staged.file(summary[0]).write_text(summary[1](report))
        with atomic.signals_deferred():
            for target in (self.video, self.out, self.staged):
                if target is not None:
                    target.commit()
