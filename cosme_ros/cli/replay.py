"""``cosme replay``: run a recorded drive (rosbag2) through the pipeline, offline.

Reads one image topic of a rosbag2 (sqlite3 or mcap; sensor_msgs/msg/Image in any encoding the
node accepts, or sensor_msgs/msg/CompressedImage), runs every frame — none is dropped — and:

- ``--out OUT_BAG``: writes a bag (version 8 metadata, playable by ROS 2 Humble; the input's
  storage unless ``--out-storage``) with the input images (and the ground-truth topic) copied
  and the node's five outputs, exactly as ``cosme_node`` draws them with the same parameters,
  under the image topic's namespace: ``/camera/image_raw`` gives
  ``/camera/segmentation/class_mask``, ``/camera/segmentation/color``, ``/camera/anomaly/score``,
  ``/camera/anomaly/mask``, ``/camera/anomaly/heatmap`` (``--out-namespace`` to choose). Every
  output message carries its input's header; bag timestamps are the input's;
- ``--video F.mp4``: camera | segmentation | heatmap side by side (mp4v);
- ``--gt-topic T`` (mono8) or ``--gt-masks DIR`` (files ``<header stamp in ns>.png``): pixel
  AUROC / AP / FPR95 pooled over the drive and per frame, and the worst frames. Masks are
  matched to images by header stamp, exactly; 0 = in-distribution, ``--gt-anomaly-value``
  (1 or 255) = anomaly, anything else ignored.

Outputs are built beside their targets and renamed at the end: Ctrl-C (or SIGTERM) leaves the
complete output or none. Exit status 130 after Ctrl-C, 143 after SIGTERM.

Examples::

    cosme replay --bag drive.bag --image-topic /camera/image_raw --gt-topic /camera/anomaly_gt \\
        --bundle build/bundles/espnetv2-city --out drive_out.bag --video drive.mp4
    cosme replay --bag recording --image-topic /cam/image_raw/compressed --out out.bag
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

from cosme_ros.cli.common import add_pipeline_args, refine_options, report_engine
from cosme_ros.errors import CosmeError
from cosme_ros.options import parse_threshold


def _heatmap_range(text: str):
    if text.strip().lower() == "auto":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor LO,HI") from None
    if not (lo < hi) or not all(abs(v) < float("inf") for v in (lo, hi)):
        raise argparse.ArgumentTypeError(f"{text!r}: need finite LO < HI")
    return lo, hi


def add_parser(sub) -> None:
    p = sub.add_parser(
        "replay",
        help="run a rosbag2 through the pipeline: output bag, video, " "metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bag", required=True, help="rosbag2 directory (or .mcap / .db3 file)")
    p.add_argument(
        "--image-topic",
        required=True,
        metavar="T",
        help="sensor_msgs/msg/Image or CompressedImage topic",
    )
    p.add_argument("--gt-topic", metavar="T", help="ground-truth topic (mono8)")
    p.add_argument(
        "--gt-masks",
        metavar="DIR",
        help="folder of ground-truth masks named <header stamp in ns>.png",
    )
    p.add_argument(
        "--gt-anomaly-value",
        type=int,
        default=1,
        choices=(1, 255),
        help="mask value of anomaly pixels (default 1; 0 is in-distribution, other "
        "values are ignored)",
    )
    p.add_argument(
        "--bundle",
        help="bundle directory (default: the installed demo bundle, " "models/demo, as the node)",
    )
    add_pipeline_args(p, ", as the node's parameter")
    _add_drawing_args(p)
    _add_output_args(p)
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(run=run)


def _add_drawing_args(p: argparse.ArgumentParser) -> None:
    """The node's drawing parameters, with the node's defaults."""
    p.add_argument(
        "--output-resolution",
        default="input",
        choices=("input", "network"),
        help="size of the output images, as the node's parameter (default input)",
    )
    p.add_argument(
        "--anomaly-threshold",
        type=_threshold,
        default=None,
        metavar="auto|T",
        help="anomaly/mask threshold, as the node's parameter (default auto: the "
        "bundle's calibrated threshold for the method, `cosme calibrate`)",
    )
    p.add_argument(
        "--overlay-alpha",
        type=float,
        default=0.5,
        help="heatmap blend weight, as the node's parameter (default 0.5)",
    )
    p.add_argument(
        "--heatmap-range",
        type=_heatmap_range,
        default=None,
        metavar="auto|LO,HI",
        help="heatmap colour range, as the node's parameter (default auto; write "
        "--heatmap-range=-3,1 when LO is negative)",
    )


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """The output bag, the video, the metrics and the reports."""
    p.add_argument("--out", metavar="OUT_BAG", help="write an output bag directory")
    p.add_argument(
        "--out-storage",
        choices=("mcap", "sqlite3"),
        help="storage of the output bag (default: the input's)",
    )
    p.add_argument(
        "--out-namespace",
        metavar="NS",
        help="namespace of the output topics (default: the image topic's)",
    )
    p.add_argument("--video", metavar="F.mp4", help="write camera | segmentation | heatmap video")
    p.add_argument("--video-fps", type=float, help="video frame rate (default: the topic's)")
    p.add_argument(
        "--binned",
        action="store_true",
        help="histogram metrics in constant memory (error bounds reported)",
    )
    p.add_argument(
        "--memory-limit",
        type=float,
        default=4.0,
        metavar="GIB",
        help="refuse exact metrics estimated to need more (default 4 GiB)",
    )
    p.add_argument(
        "--worst",
        type=int,
        default=5,
        metavar="N",
        help="list the N frames with the lowest AP (default 5)",
    )
    p.add_argument(
        "--no-per-frame",
        action="store_true",
        help="do not print one line per frame (the JSON keeps them)",
    )
    p.add_argument(
        "--json", metavar="F", help="write the summary, metrics and per-frame " "metrics to F"
    )
    p.add_argument(
        "--progress-file",
        metavar="F",
        help='keep {"frames_done": n, "frames_total": N} in F (for supervisors)',
    )


def _threshold(text: str):
    """``auto`` → None (the bundle's), else a finite number (:func:`parse_threshold`)."""
    try:
        return parse_threshold(text, from_text=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load_pipeline(args):
    from cosme_ros.bundle import Bundle
    from cosme_ros.errors import MissingPartError
    from cosme_ros.runtime.pipeline import Pipeline
    from cosme_ros.tools.replay import default_bundle_path

    path = Path(args.bundle) if args.bundle else default_bundle_path()
    if not args.bundle and not path.is_dir():
        raise CosmeError(
            f"no --bundle given and the default demo bundle {path} does not exist "
            f"(it is not built yet); pass --bundle DIR (make one with `cosme bundle "
            f"create`)"
        )
    bundle = Bundle.load(path)
    try:
        return Pipeline(
            bundle,
            method=args.method,
            device=args.device,
            input_size=args.input_size,
            precision=args.precision,
            engine=args.engine,
            **refine_options(args),
        )
    except MissingPartError as exc:
        raise MissingPartError(f"{bundle.path}: {exc}") from None


def _auto_threshold(args, options, pipeline, refine):
    """``--anomaly-threshold auto``, as the node: the bundle's, else no mask (and a note)."""
    from cosme_ros.runtime.thresholds import resolve_threshold

    if args.anomaly_threshold is not None:
        return options
    key, value = resolve_threshold(pipeline.bundle, pipeline.method, refine)
    if value is None:
        print(
            f"note: bundle {pipeline.bundle.path} has no calibrated threshold for "
            f"{key}: the output anomaly/mask is empty (give --anomaly-threshold or "
            f"run cosme calibrate)"
        )
    return replace(options, anomaly_threshold=math.inf if value is None else value)


def _summary(args, pipeline, refine):
    """(``--json`` path, the text of a finished report): written with the other outputs."""
    b = pipeline.bundle

    def text(report) -> str:
        doc = {
            **report.to_json(worst=args.worst),
            "bundle": {"path": str(b.path), "name": b.name},
            "method": pipeline.method,
            "backend": pipeline.backend,
            "refine": refine or {"refine": "none"},
            "device": str(pipeline.device),
            "input_size": list(pipeline.input_size),
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    return Path(args.json), text


def run(args) -> int:
    from cosme_ros import atomic
    from cosme_ros.anomaly.method_spec import check_run_spec
    from cosme_ros.anomaly.registry import METHODS
    from cosme_ros.options import AUTO_METHOD
    from cosme_ros.tools.replay import (
        Bag,
        ReplayOptions,
        check_bag,
        check_options,
        format_report,
        replay,
    )

    try:
        check_run_spec(args.method, (AUTO_METHOD, *METHODS))
    except ValueError as exc:
        raise CosmeError(f"--method: {exc}") from None
    if args.worst < 0:
        raise CosmeError("--worst must be >= 0")
    refine = refine_options(args)
    options = ReplayOptions(
        image_topic=args.image_topic,
        gt_topic=args.gt_topic,
        gt_masks=Path(args.gt_masks) if args.gt_masks else None,
        gt_anomaly_value=args.gt_anomaly_value,
        out=Path(args.out) if args.out else None,
        out_storage=args.out_storage,
        out_namespace=args.out_namespace,
        video=Path(args.video) if args.video else None,
        video_fps=args.video_fps,
        anomaly_threshold=0.0 if args.anomaly_threshold is None else args.anomaly_threshold,
        overlay_alpha=args.overlay_alpha,
        heatmap_range=args.heatmap_range,
        output_resolution=args.output_resolution,
        binned=args.binned,
        memory_limit_gib=args.memory_limit,
        force=args.force,
        progress_file=Path(args.progress_file) if args.progress_file else None,
    )
    # Everything that can be checked without the model fails before it loads.
    check_options(options)
    if args.json:
        atomic.check_writable(args.json, args.force)
    # opened (every MCAP chunk verified) once, before the model loads; replay reads this one
    bag = Bag(args.bag)
    try:
        check_bag(bag, options)
    except BaseException:
        bag.close()
        raise

    try:  # SIGTERM unwinds like Ctrl-C (cli/main.py): the outputs are all there or none
        pipeline = _load_pipeline(args)
        report_engine(pipeline)
        options = _auto_threshold(args, options, pipeline, refine)
        summary = _summary(args, pipeline, refine) if args.json else None
        # the JSON is written with the bag and the video: an interruption leaves all or none
        report = replay(bag, pipeline, options, summary=summary)
    finally:
        bag.close()
    print(format_report(report, per_frame=not args.no_per_frame, worst=args.worst))
    return 0
