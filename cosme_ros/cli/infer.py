"""``cosme infer``: run a bundle on images and write class maps, anomaly scores and overlays.

For each input image ``<stem>``: ``<stem>_classes.png`` (uint8 class indices at the image's
resolution), ``<stem>_score.npy`` (float32 anomaly score, same resolution, higher = more
anomalous) and ``<stem>_overlay.jpg`` (class colours | anomaly heatmap over the image).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cosme_ros import atomic
from cosme_ros.frames.render import overlay
from cosme_ros.frames.writers import encode_image
from cosme_ros.bundle import Bundle
from cosme_ros.cli.common import add_pipeline_args, refine_options, report_engine, write_json
from cosme_ros.data.images import list_images, read_rgb
from cosme_ros.errors import InputError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="segment images and score anomalies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--input", required=True, help="an image or a directory of images")
    p.add_argument("--output", required=True, help="directory for the results")
    add_pipeline_args(p)
    p.add_argument("--force", action="store_true", help="overwrite existing result files")
    p.add_argument("--json", metavar="F", help="write a JSON summary to F")
    p.set_defaults(run=run)


def run(args) -> int:
    from cosme_ros.runtime.pipeline import Pipeline

    bundle = Bundle.load(args.bundle)
    images = list_images(args.input)
    out = Path(args.output)
    targets = {
        p: [out / f"{p.stem}_{s}" for s in ("classes.png", "score.npy", "overlay.jpg")]
        for p in images
    }
    if not args.force:
        for paths in targets.values():
            for path in paths:
                atomic.check_writable(path, force=False)
    pipeline = Pipeline(
        bundle,
        method=args.method,
        device=args.device,
        input_size=args.input_size,
        precision=args.precision,
        engine=args.engine,
        **refine_options(args),
    )
    report_engine(pipeline)
    out.mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    for path in tqdm(images, desc="infer", unit="img", disable=len(images) < 2):
        try:
            rgb = read_rgb(path)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append(str(path))
            continue
        result = pipeline(rgb)
        classes_png, score_npy, overlay_jpg = targets[path]
        atomic.write_bytes(classes_png, encode_image(result.classes))
        buf = io.BytesIO()
        np.save(buf, result.score.astype(np.float32))
        atomic.write_bytes(score_npy, buf.getvalue())
        picture = overlay(rgb, result.classes, result.score, bundle.palette)
        atomic.write_bytes(overlay_jpg, encode_image(picture, ".jpg"))
        done.append(
            {
                "image": str(path),
                "classes": str(classes_png),
                "score": str(score_npy),
                "overlay": str(overlay_jpg),
                "score_max": float(result.score.max()),
            }
        )
    print(f"{len(done)} image(s) written to {out}" + (f", {len(failed)} failed" if failed else ""))
    if args.json:
        write_json(
            args.json,
            {
                "bundle": str(bundle.path),
                "method": pipeline.method,
                "backend": pipeline.backend,
                "images": done,
                "failed": failed,
            },
        )
    return 1 if failed else 0
