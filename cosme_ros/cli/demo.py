"""``cosme demo``: the product on the embedded default — a synthetic drive through cosme_node.

Starts ``cosme_node`` (its own process, real ROS 2 over DDS on this machine) with the demo bundle
``models/demo``, streams a synthetic drive into it as camera images — one frame at a time,
reliable QoS, each frame only after the node has answered the previous one, so none is dropped —
and collects what it publishes (anomaly/score, segmentation/class_mask, anomaly/heatmap). Prints
the drive's pixel AUROC / AP / FPR95 (pooled over the frames, ground truth from the drive's anomaly
masks) and the segmentation mIoU, and writes to ``--out`` (default out/demo/):

    demo.mp4            camera (anomalies outlined) | segmentation | anomaly heatmap, per frame
    contact_sheet.png   the same for a few frames
    node.log            the node's log

Unless they are set, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a random ROS_DOMAIN_ID keep the
demo on this machine and apart from other demos; while it runs, the node's topics are under
/cosme_demo on that domain. Under Fast DDS, unless FASTDDS_DEFAULT_PROFILES_FILE (or the older
FASTRTPS_DEFAULT_PROFILES_FILE) is set, config/fastdds_shm.xml gives both processes shared-memory
segments that hold a frame's outputs (5x faster here; see the README). Ctrl-C stops the node
cleanly.

Examples::

    cosme demo
    cosme demo --method maxlogit --frames 40 --out out/demo-maxlogit --json out/demo.json
    cosme demo --bundle build/bundles/my-bundle --size 256x512 --threshold 2.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cosme_ros.cli.common import size_arg, write_json
from cosme_ros.options import DEVICES


def add_parser(sub) -> None:
    from cosme_ros.tools.demo import DEFAULT_FRAMES, DEFAULT_OUT, DEFAULT_SEED

    p = sub.add_parser(
        "demo",
        help="run a synthetic drive through cosme_node (the embedded " "demo bundle by default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--bundle", type=Path, help="bundle directory (default: the demo bundle, models/demo)"
    )
    p.add_argument(
        "--method",
        help="anomaly method (default: cosme when the bundle has a "
        "student and a memory, else maxlogit)",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=DEFAULT_FRAMES,
        help=f"frames of the drive, 10 per second (default {DEFAULT_FRAMES})",
    )
    p.add_argument(
        "--size", type=size_arg, help="camera HEIGHTxWIDTH (default: the bundle's " "input size)"
    )
    p.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"seed of the drive (default {DEFAULT_SEED})"
    )
    p.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="the node's anomaly_threshold (method's units): its anomaly/mask is "
        "outlined in the video and scored against the ground truth",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="the node's device (default auto)",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    p.add_argument("--json", metavar="F", help="write the metrics and output paths to F")
    p.add_argument("--force", action="store_true", help="overwrite earlier outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from cosme_ros import atomic
    from cosme_ros.tools.demo import DemoOptions, format_result, run_demo

    if args.json:
        atomic.check_writable(args.json, args.force)
    opts = DemoOptions(
        bundle=args.bundle,
        method=args.method,
        frames=args.frames,
        size=args.size,
        out=args.out,
        seed=args.seed,
        threshold=args.threshold,
        device=args.device,
        force=args.force,
        progress=not args.no_progress,
    )
    # SIGTERM unwinds like Ctrl-C (cli/main.py), so the node is stopped on that path too
    result = run_demo(opts, log=lambda line: print(line, flush=True))
    print(format_result(result))
    if args.json:
        write_json(args.json, result.to_json())
    return 0
