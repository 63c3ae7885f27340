"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any, Mapping, Tuple

from cosme_ros import atomic
from cosme_ros.errors import CosmeError
from cosme_ros.options import DEVICES, PRECISIONS


def size_arg(text: str) -> Tuple[int, int]:
    """``512x1024`` → (512, 1024) as (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} should be HEIGHTxWIDTH, e.g. 512x1024")
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width must be >= 32")
    return h, w


def add_data_sources(p: argparse.ArgumentParser, data_help: str, size_help: str) -> None:
    """``--data KIND:PATH`` (required, repeatable: several sources are read as one, a
    :class:`~cosme_ros.data.datasets.Mixture`) and ``--input-size HxW`` (never, once for every
    source, or once per source in their order)."""
    p.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="KIND:PATH",
        help=data_help + "; give it again to mix sources",
    )
    p.add_argument(
        "--input-size",
        type=size_arg,
        action="append",
        default=[],
        metavar="HxW",
        help=size_help + "; once for every --data source or once per source, in their order",
    )


def write_json(path: str, data: Mapping[str, Any]) -> None:
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def checkpoint_dir(args: argparse.Namespace, target, suffix: str):
    """``--checkpoint-dir``, or ``<target><suffix>`` beside the training's target."""
    from pathlib import Path

    if args.checkpoint_dir:
        return Path(args.checkpoint_dir)
    target = Path(target)
    return target.with_name(target.name + suffix)


def write_training_json(path: str, bundle_path, record: Mapping[str, Any], result) -> None:
    """``--json`` of a training command: the bundle, the training record and the run's speed."""
    write_json(
        path,
        {
            "bundle": str(bundle_path),
            **record,
            "images_per_second": result.images_per_second,
            "resumed_from": result.resumed_from,
        },
    )


def add_pipeline_args(p: argparse.ArgumentParser, precision_help: str = "") -> None:
    """--method, --device, --precision and --input-size, as every command running a Pipeline has."""
    p.add_argument(
        "--method",
        default="auto",
        help="anomaly method: auto (default: cosme when "
        "the bundle has a memory and a student, else maxlogit), msp, maxlogit, "
        "entropy, sml, pans, mulmem, auxcon, cosme",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="network precision" + precision_help + " (default auto: bf16 on CPUs "
        "with native bf16, else fp32; scores are always fp32)",
    )
    p.add_argument(
        "--input-size", type=size_arg, help="network input HEIGHTxWIDTH " "(default: the bundle's)"
    )
    p.add_argument(
        "--refine",
        default="none",
        choices=("none", "guided"),
        help="anomaly map refinement: none (default, the paper's bilinear maps) or "
        "guided (guided filter on the frame's edges; see the README)",
    )
    p.add_argument(
        "--refine-radius",
        type=int,
        default=None,
        metavar="PX",
        help="guided filter radius in network-input pixels (default 8)",
    )
    add_engine_arg(p)


def add_engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        default="auto",
        metavar="auto|off|BACKEND|DIR",
        help="compiled networks (`cosme export`): auto (default: the bundle's first engine that "
        "fits, else eager), off (eager), a backend (onnxruntime, aoti, tensorrt: the bundle's "
        "first engine of that backend that fits) or an engine folder",
    )


def report_engine(pipeline) -> None:
    """One line when an engine was wanted and the pipeline runs eager (and why)."""
    if pipeline.engine_fallback:
        print(f"note: running eager, not the compiled engine: {pipeline.engine_note}")


def refine_options(args: argparse.Namespace) -> dict:
    """The Pipeline keywords of --refine / --refine-radius (none when --refine none)."""
    if args.refine == "none":
        if args.refine_radius is not None:
            raise CosmeError("--refine-radius needs --refine guided")
        return {}
    options = {"refine": args.refine}
    if args.refine_radius is not None:
        options["refine_radius"] = args.refine_radius
    return options
