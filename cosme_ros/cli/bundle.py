"""``cosme bundle create``: a teacher-only bundle from a third-party checkpoint.

The checkpoint is read with ``weights_only=True`` (never unpickled beyond tensors), or, for
``edgetpu-deeplab``, parsed as a TFLite FlatBuffer and dequantized (never executed); loaded
strictly into our network, and stored as safetensors under our own parameter names.

Teachers: ``espnetv2`` (EdgeNets .pth), ``deeplabv3plus`` (VainF or NVIDIA/SML .pth),
``edgetpu-deeplab`` (EdgeTPU-DeepLab-slim, the int8 .tflite of google-coral/test_data),
``cfpnet`` (CFPNet .pth of zh320/realtime-semantic-segmentation-pytorch).

``cosme bundle set-default``: name the method spec that ``auto`` runs for this bundle (the node,
replay, the demo), e.g. ``cosme[consensus=c4]`` — chosen from measurements on the bundle's own
development data; the paper's ``cosme`` stays what plain ``cosme`` means.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from cosme_ros import bundle as bundle_mod
from cosme_ros.cli.common import size_arg
from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from cosme_ros.nets import IMAGENET_MEAN, IMAGENET_STD

# ESPNetv2's Cityscapes models have a 20th output: background/void.
BACKGROUND = ("background", (0, 0, 0))

# --teacher → the manifest's arch.
TEACHERS = {
    "espnetv2": "espnetv2",
    "deeplabv3plus": "deeplabv3plus",
    "edgetpu-deeplab": "edgetpu_deeplab",
    "cfpnet": "cfpnet",
}


def add_parser(sub) -> None:
    p = sub.add_parser("bundle", help="create and inspect model bundles")
    bsub = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    c = bsub.add_parser(
        "create",
        help="make a teacher-only bundle from a third-party checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--teacher", required=True, choices=tuple(TEACHERS))
    c.add_argument("--weights", required=True, help="the checkpoint (.pth, .tflite) to import")
    c.add_argument("--out", required=True, help="bundle directory to write")
    c.add_argument(
        "--backbone",
        help="deeplabv3plus backbone resnet18/34/50/101 (default: read "
        "from the checkpoint; when given, the checkpoint must agree)",
    )
    c.add_argument(
        "--output-stride",
        type=int,
        choices=(8, 16),
        help="deeplabv3plus output stride; weights do not record it (default: an "
        "os8/os16 token in the file name, else the release's: VainF 16, SML 8)",
    )
    c.add_argument(
        "--input-size",
        type=size_arg,
        default=(512, 1024),
        help="HEIGHTxWIDTH the network runs at (default 512x1024)",
    )
    c.add_argument("--name", help="bundle name (default: the directory name)")
    c.add_argument("--force", action="store_true", help="replace an existing bundle")
    c.set_defaults(run=run_create)
    d = bsub.add_parser(
        "set-default",
        help="name the method spec that `auto` runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--bundle", required=True, help="bundle directory (with memory and student)")
    group = d.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--method",
        help="method spec, e.g. 'cosme[consensus=c4,"
        "standardize_psi=true,boundary=true,fusion=softplus]'",
    )
    group.add_argument(
        "--clear",
        action="store_true",
        help="back to the rule: cosme with memory and student, else maxlogit",
    )
    d.set_defaults(run=run_set_default)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def class_table(num_classes: int):
    """Names, palette and void classes for a Cityscapes-trained teacher's outputs."""
    names, palette = list(CITYSCAPES_CLASSES), [tuple(c) for c in CITYSCAPES_PALETTE]
    if num_classes == len(names):
        return names, palette, []
    if num_classes == len(names) + 1:
        return names + [BACKGROUND[0]], palette + [BACKGROUND[1]], [len(names)]
    # Not Cityscapes: name the outputs by index with a fixed, well-spread palette.
    import numpy as np

    rng = np.random.default_rng(0)
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(num_classes)]
    return [f"class_{i}" for i in range(num_classes)], colours, []


def run_set_default(args) -> int:
    from cosme_ros.anomaly.method_spec import check_run_spec
    from cosme_ros.anomaly.registry import METHODS, build_scorer
    from cosme_ros.runtime.thresholds import threshold_key
    from cosme_ros.errors import CosmeError
    from cosme_ros.runtime.pipeline import bundle_default_method

    bundle = bundle_mod.Bundle.load(args.bundle)
    if args.clear:
        bundle.set_default_method(None)
        print(f"{bundle.path}: auto runs {bundle_default_method(bundle)}")
        return 0
    try:
        name, options = check_run_spec(args.method, METHODS)
        build_scorer(name, bundle.anomaly_parts(), **options)  # the parts can run it
    except ValueError as exc:
        raise CosmeError(f"--method: {exc}") from None
    bundle.set_default_method(args.method)
    key = threshold_key(args.method)
    note = (
        ""
        if bundle.threshold(key) is not None
        else (
            f"; no calibrated threshold for it yet: `cosme calibrate --bundle {bundle.path} "
            f"--methods '{key}' --data KIND:PATH`"
        )
    )
    print(f"{bundle.path}: auto runs {args.method}{note}")
    return 0


def _import_teacher(args, weights: Path):
    """The teacher network and its input normalisation (mean, std of RGB in [0, 1])."""
    if args.teacher == "espnetv2":
        from cosme_ros.nets.imports.edgenets import load_espnetv2_checkpoint

        return load_espnetv2_checkpoint(weights), IMAGENET_MEAN, IMAGENET_STD
    if args.teacher == "edgetpu-deeplab":
        from cosme_ros.nets.edgetpu_deeplab import MEAN, STD
        from cosme_ros.nets.imports.tflite_deeplab import load_edgetpu_deeplab_tflite

        return load_edgetpu_deeplab_tflite(weights), MEAN, STD
    if args.teacher == "cfpnet":
        from cosme_ros.nets.imports.cfpnet import load_cfpnet_checkpoint

        return load_cfpnet_checkpoint(weights), IMAGENET_MEAN, IMAGENET_STD
    from cosme_ros.nets.imports.deeplab import load_deeplabv3plus_checkpoint

    module = load_deeplabv3plus_checkpoint(
        weights, backbone=args.backbone, output_stride=args.output_stride
    )
    return module, IMAGENET_MEAN, IMAGENET_STD


def run_create(args) -> int:
    weights = Path(args.weights)
    module, mean, std = _import_teacher(args, weights)
    names, palette, void = class_table(module.num_classes)
    out = bundle_mod.create(
        args.out,
        arch=TEACHERS[args.teacher],
        module=module,
        input_size=args.input_size,
        mean=mean,
        std=std,
        class_names=names,
        palette=palette,
        void_classes=void,
        name=args.name,
        source={"file": weights.name, "sha256": _sha256(weights)},
        force=args.force,
    )
    print(
        f"wrote bundle {out.path} ({args.teacher}, {module.num_classes} classes, "
        f"input {args.input_size[0]}x{args.input_size[1]})"
    )
    return 0
