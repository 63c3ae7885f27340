"""``cosme export``: compile a bundle's networks for one method into an engine the node, replay,
infer, evaluate and bench use with ``engine: auto`` (or ``--engine PATH``).

  cosme export --bundle models/demo --backend onnxruntime
  cosme export --bundle B --method cosme --backend tensorrt --precision fp16 --device cuda

Backends: onnxruntime (CPU, fp32), aoti (AOTInductor: fp32, or bf16 on CPUs with it), tensorrt
(CUDA, fp16/fp32; Torch-TensorRT is an optional extra: README, "Compiled engines"). The engine
is verified against the eager fp32 networks on real frames before anything is written, into
BUNDLE/engines/<backend>-<precision>-<HxW>-<method hash>/ with its record.yaml.
"""

from __future__ import annotations

import argparse

from cosme_ros.cli.common import size_arg, write_json
from cosme_ros.options import DEVICES


def add_parser(sub) -> None:
    from cosme_ros.runtime.engines import BACKENDS, ENGINE_PRECISIONS

    p = sub.add_parser(
        "export",
        help="compile the networks into an engine (ONNX Runtime, AOTInductor, TensorRT)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument(
        "--method",
        default="auto",
        help="the method whose taps the engine outputs (default auto: the bundle's default)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="default: tensorrt on " "CUDA, onnxruntime on the CPU",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=ENGINE_PRECISIONS,
        help="default: fp16 on CUDA, fp32 on the CPU",
    )
    p.add_argument("--input-size", type=size_arg, help="HEIGHTxWIDTH (default: the bundle's)")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument(
        "--verify-frames",
        type=int,
        default=4,
        metavar="N",
        help="frames to verify the engine on against eager fp32 (default 4)",
    )
    p.add_argument("--json", metavar="F", help="write the engine's record as JSON to F")
    p.add_argument("--force", action="store_true", help="replace an engine of the same name")
    p.set_defaults(run=run)


def run(args) -> int:
    from cosme_ros.bundle import Bundle
    from cosme_ros.errors import CosmeError
    from cosme_ros.manifest_io import read_manifest_text
    from cosme_ros.runtime.engines import RECORD, export_engine

    if args.verify_frames < 1:
        raise CosmeError("--verify-frames must be at least 1")
    bundle = Bundle.load(args.bundle)
    path = export_engine(
        bundle,
        args.method,
        backend=args.backend,
        precision=args.precision,
        input_size=args.input_size,
        device=args.device,
        verify_frames=args.verify_frames,
        force=args.force,
    )
    record = read_manifest_text(path / RECORD)
    v = record["verification"]
    print(
        f"wrote engine {path} ({record['backend']}, {record['precision']}, input "
        f"{'x'.join(map(str, record['input']['size']))}, {record['method']}; built in "
        f"{record['build_seconds']} s): verified on {v['frames']} frame(s), max tap error "
        f"{v['max_tap_error_relative']:.1e} of scale, score rank correlation "
        f"{v['score_rank_correlation']}, class agreement {v['class_agreement']}"
    )
    if args.json:
        write_json(args.json, {"path": str(path), **record})
    return 0
