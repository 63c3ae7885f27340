"""``cosme train-teacher``: train a DeepLabV3+ teacher from scratch and write a teacher-only bundle.

Plain cross-entropy (void = 255 ignored) on a labelled dataset with Cityscapes trainIds, random
scale/crop/flip/colour augmentation, AdamW with warm-up and poly decay. At the end the model is
evaluated on ``--val`` (mIoU and per-class IoU printed; ``--eval-every-epoch`` also tracks it per
epoch) and written with the input normalisation it was trained with, the Cityscapes classes and
palette, input size = the training size, and the training record in the manifest's ``teacher.source.train``.

From scratch by default; ``--backbone mobilenetv2 --pretrained imagenet`` starts the backbone from
the ImageNet MobileNetV2 weights (the demo teacher; the bundle then normalises the input as those
weights expect). This makes small teachers for small worlds, like the synthetic demo.
``--batch`` is the global batch; ``torchrun --nproc-per-node N`` splits it over N processes with
synchronised BatchNorm. ``--resume`` continues the newest checkpoint and gives the same weights
as an uninterrupted run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cosme_ros.cli.common import checkpoint_dir, write_training_json
from cosme_ros.cli.train_student import add_training_args, positive_int
from cosme_ros.errors import CosmeError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-teacher",
        help="train a DeepLabV3+ teacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument(
        "--data",
        required=True,
        metavar="KIND:PATH",
        help="labelled training data (Cityscapes trainIds), e.g. synthetic:DIR",
    )
    p.add_argument("--val", required=True, metavar="KIND:PATH", help="labelled validation data")
    p.add_argument(
        "--split",
        help="split of --data to read (default: the dataset's training "
        "split where it has splits)",
    )
    p.add_argument(
        "--val-split",
        default="val",
        help="split of --val to read where the kind " "has splits (default val)",
    )
    p.add_argument(
        "--backbone",
        default="resnet18",
        choices=("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2"),
    )
    p.add_argument(
        "--pretrained",
        choices=("none", "imagenet"),
        default="none",
        help="start the backbone from ImageNet weights (mobilenetv2; default none: "
        "from scratch)",
    )
    p.add_argument(
        "--pretrained-weights",
        metavar="PATH",
        help="the ImageNet weights, a file or its folder (default "
        "../shared/data/backbones/mobilenet_v2_1.0_imagenet beside the repository)",
    )
    p.add_argument(
        "--width", type=float, default=1.0, help="backbone width multiplier " "(default 1.0)"
    )
    p.add_argument(
        "--head-channels", type=positive_int, help="ASPP/decoder channels (default 256 x width)"
    )
    p.add_argument("--output-stride", type=int, default=16, choices=(8, 16))
    p.add_argument(
        "--max-images", type=positive_int, metavar="N", help="use N evenly spaced training images"
    )
    p.add_argument(
        "--eval-every-epoch",
        action="store_true",
        help="also evaluate mIoU on --val after every epoch",
    )
    p.add_argument("--name", help="bundle name (default: the directory name)")
    add_training_args(
        p,
        epochs=50,
        batch=8,
        lr=1e-3,
        checkpoint_every=200,
        size_default="256x512",
        checkpoint_default="OUT.teacher-checkpoints beside OUT",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from cosme_ros import atomic
    from cosme_ros.train import open_training_data
    from cosme_ros.train.loop import training_run
    from cosme_ros.train.teacher import train_teacher

    if args.seed < 0:
        raise CosmeError(f"--seed must be >= 0, got {args.seed}")
    if args.width != 1.0 and args.backbone == "mobilenetv2":
        raise CosmeError("--width applies to ResNet backbones; mobilenetv2 is width 1.0")
    pretrained = None if args.pretrained == "none" else args.pretrained
    weights = _pretrained_weights(args, pretrained)
    out = Path(args.out)
    atomic.check_writable(out, args.force)
    size = args.size or (256, 512)
    train_set = open_training_data(args.data, args.split)
    val_set = open_training_data(args.val, args.val_split)
    for spec, ds in ((args.data, train_set), (args.val, val_set)):
        if not getattr(ds, "has_semantic", True):
            raise CosmeError(
                f"{spec}: has no semantic labels; training a teacher needs "
                f"Cityscapes-trainId labels"
            )
    ckpt_dir = checkpoint_dir(args, out, ".teacher-checkpoints")
    if args.resume:  # a killed run's half-written bundle beside the target
        atomic.remove_temporaries(out.parent, of=out.name)
    with training_run(
        ckpt_dir, threads=args.threads, device=args.device, resume=args.resume, force=args.force
    ) as (ctx, threads):
        run_ = train_teacher(
            train_set,
            val_set,
            data_spec=args.data,
            val_spec=args.val,
            backbone=args.backbone,
            width=args.width,
            output_stride=args.output_stride,
            head_channels=args.head_channels,
            size=size,
            epochs=args.epochs,
            batch=args.batch,
            lr=args.lr,
            seed=args.seed,
            max_images=args.max_images,
            checkpoint_every=args.checkpoint_every,
            checkpoint_dir=ckpt_dir,
            resume=args.resume,
            eval_every_epoch=args.eval_every_epoch,
            bf16=args.bf16,
            pretrained=pretrained,
            pretrained_weights=weights,
            ctx=ctx,
        )
        if ctx.is_main:
            _write(args, run_, out, size, ckpt_dir, {**run_.record, "threads": threads}, val_set)
    return 0


def _pretrained_weights(args, pretrained):
    """The ImageNet weights' path for ``--pretrained`` (None without), checked to exist."""
    from cosme_ros.paths import mobilenetv2_imagenet_path

    if pretrained is None:
        return None
    if args.backbone != "mobilenetv2":
        raise CosmeError(
            f"--pretrained {pretrained}: only the mobilenetv2 backbone has "
            f"pretrained weights here, not {args.backbone}"
        )
    weights = (
        Path(args.pretrained_weights) if args.pretrained_weights else mobilenetv2_imagenet_path()
    )
    if not weights.exists():
        raise CosmeError(
            f"{weights}: no such file or folder (the MobileNetV2 ImageNet "
            f"weights; give their path with --pretrained-weights)"
        )
    return weights


def _write(args, run_, out: Path, size, ckpt_dir: Path, record, val_set) -> None:
    """Rank 0: the validation table, the teacher bundle, the checkpoints cleared, the summary."""
    from cosme_ros import bundle as bundle_mod
    from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
    from cosme_ros.metrics import format_iou_table
    from cosme_ros.train.loop import clear_checkpoints

    print(f"validation ({args.val}, {len(val_set)} images):")
    print(format_iou_table(run_.evaluation))
    bundle = bundle_mod.create(
        out,
        arch="deeplabv3plus",
        module=run_.model,
        input_size=size,
        mean=run_.mean,
        std=run_.std,
        class_names=list(CITYSCAPES_CLASSES),
        palette=[tuple(c) for c in CITYSCAPES_PALETTE],
        name=args.name,
        source={"trained_by": "cosme train-teacher", "train": record},
        force=args.force,
    )
    clear_checkpoints(ckpt_dir)
    print(
        f"wrote teacher bundle {bundle.path} ({run_.model.config['backbone']}, width "
        f"{args.width:g}, input {size[0]}x{size[1]}): mIoU "
        f"{100 * run_.evaluation['miou']:.2f}, {run_.result.steps} steps in "
        f"{run_.result.seconds:.0f} s, {run_.result.images_per_second:.2f} images/s"
    )
    if args.json:
        write_training_json(args.json, bundle.path, record, run_.result)
