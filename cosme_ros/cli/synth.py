"""``cosme synth``: render the procedural driving world — a dataset split, or a drive as a rosbag.

Split (``--split train|val|test``): ``DIR/images/<id>.png`` (RGB), ``DIR/semantic/<id>.png``
(Cityscapes trainIds, 255 void; anomaly pixels are 255 too), for the test split
``DIR/labels_masks/<id>.png`` (0 in-distribution, 1 anomaly, 255 void; ``folder:DIR`` reads it as
an anomaly benchmark), ``DIR/objects.jsonl`` (families and objects per image) and
``DIR/meta.yaml``. Only the test split contains anomalies (animals, crates, tyres, debris, odd
blobs, barrels); every split contains odd colours, dusk, colour casts, shadows and wet roads.
Each image is seeded by (seed, split, index): ``--workers`` never changes the bytes.

Drive (``--drive``): ``--out`` names a rosbag2 directory (mcap, version 8 metadata) with one
continuous drive: ``/camera/image_raw`` (rgb8) and ``/camera/anomaly_gt`` (mono8, 0/1/255), both
stamped at ``--fps`` with frame_id ``camera``.

Examples::

    cosme synth --out data/synth/train --split train --n 4000 --seed 0 --size 192x384 --workers 2
    cosme synth --out data/synth/test --split test --n 500 --seed 2 --size 192x384
    cosme synth --drive --out drive.bag --n 200 --seed 7 --size 256x512
"""

from __future__ import annotations

import argparse
import time

import cv2
from tqdm import tqdm

from cosme_ros import atomic
from cosme_ros.cli.common import size_arg, write_json
from cosme_ros.errors import CosmeError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="render the synthetic driving world (split or drive bag)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", required=True, help="output directory (split) or bag directory (--drive)"
    )
    p.add_argument("--split", choices=("train", "val", "test"), help="dataset split to render")
    p.add_argument("--drive", action="store_true", help="render one continuous drive as a rosbag2")
    p.add_argument("--n", type=int, required=True, help="number of images (frames of the drive)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--size", type=size_arg, default=(192, 384), help="HEIGHTxWIDTH (default 192x384)"
    )
    p.add_argument("--workers", type=int, default=1, help="processes rendering a split (default 1)")
    p.add_argument("--fps", type=float, default=10.0, help="drive frame rate (default 10)")
    p.add_argument("--speed", type=float, help="drive speed in m/s (default: 7-11, from the seed)")
    p.add_argument("--sheet", metavar="PNG", help="also write a contact sheet of the first frames")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", metavar="F", help="write a JSON summary to F")
    p.set_defaults(run=run)


def _check(args) -> None:
    if args.n < 1:
        raise CosmeError(f"--n must be at least 1, got {args.n}")
    if args.seed < 0:
        raise CosmeError(f"--seed must be non-negative, got {args.seed}")
    if args.drive:
        if args.split:
            raise CosmeError("--split and --drive exclude each other (a drive is one sequence)")
        if args.workers != 1:
            raise CosmeError("--workers applies to splits; a drive renders in one process")
        if args.fps <= 0 or (args.speed is not None and args.speed < 0):
            raise CosmeError("--fps must be positive and --speed non-negative")
    else:
        if not args.split:
            raise CosmeError("give --split train|val|test, or --drive")
        if args.workers < 1:
            raise CosmeError(f"--workers must be at least 1, got {args.workers}")
    atomic.check_writable(args.out, args.force)
    if args.sheet:
        atomic.check_writable(args.sheet, args.force)


def _write_sheet(path: str, frames) -> None:
    from cosme_ros.data.synth.dataset import encode_png
    from cosme_ros.data.synth.preview import contact_sheet

    atomic.write_bytes(path, encode_png(contact_sheet(frames)))


def run(args) -> int:
    _check(args)
    start = time.perf_counter()
    h, w = args.size
    if args.drive:
        from cosme_ros.data.drive_bag import write_drive_bag
        from cosme_ros.data.synth.drive import drive_frames

        kept = []

        def frames():
            drive = drive_frames(args.seed, args.n, args.size, args.fps, args.speed)
            for i, frame in enumerate(drive):
                if args.sheet and i % max(1, args.n // 6) == 0 and len(kept) < 6:
                    kept.append(frame)
                yield frame

        summary = write_drive_bag(
            args.out,
            frames(),
            fps=args.fps,
            force=args.force,
            progress=lambda it: tqdm(it, total=args.n, desc="drive", unit="frame"),
        )
        if args.sheet:
            _write_sheet(args.sheet, kept)
    else:
        from cosme_ros.data.synth.dataset import write_split
        from cosme_ros.data.synth.frame import render_frame

        cv2.setNumThreads(1)
        meta = write_split(
            args.out,
            args.split,
            args.n,
            args.seed,
            args.size,
            force=args.force,
            workers=args.workers,
            progress=lambda it: tqdm(it, total=args.n, desc=args.split, unit="img"),
        )
        summary = dict(meta, path=str(args.out))
        if args.sheet:
            _write_sheet(
                args.sheet,
                [render_frame(args.seed, args.split, i, args.size) for i in range(min(6, args.n))],
            )
    elapsed = time.perf_counter() - start
    summary["seconds"] = round(elapsed, 3)
    summary["frames_per_second"] = round(args.n / max(elapsed, 1e-9), 2)
    what = "drive frames" if args.drive else f"{args.split} images"
    print(
        f"{args.n} {what} ({h}x{w}) written to {args.out} in {elapsed:.1f} s "
        f"({summary['frames_per_second']:.1f} frames/s)"
    )
    if args.json:
        write_json(args.json, summary)
    return 0
