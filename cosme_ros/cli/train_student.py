"""``cosme train-student``: train the AuxCon student of a bundle's teacher (Eq. 5), no labels needed.

The frozen teacher and a student M′ (ResNet-``depth`` on the teacher's down-sampling schedule,
1×1 adapters to its channels) see the same augmented training images; the student learns to
reproduce the teacher's taps c2, c3, c4, c5, lh, o. The result is written into the bundle
(``student.safetensors`` + the manifest's ``student`` section with the training record).

Optimizer: Adam, lr 1e-3 by default, linear warm-up and poly decay. ``--batch`` is the global
batch: under ``torchrun --nproc-per-node N`` each process takes B/N of it, with synchronised
BatchNorm, and computes what one process with batch B computes. Checkpoints go to
``--checkpoint-dir`` every ``--checkpoint-every`` steps; ``--resume`` continues the newest one and
gives the same weights as an uninterrupted run. They are removed once the student is written.

Then, when the bundle has an anomaly part, one pass of teacher and student over the same images
gathers the Ψ statistics that ``auxcon[standardize=true]`` needs (:mod:`cosme_ros.tools.psi_stats`);
``--stats-only`` runs just that pass for the bundle's existing student.
"""

from __future__ import annotations

import argparse

from cosme_ros import atomic
from cosme_ros.cli.common import add_data_sources, checkpoint_dir, size_arg, write_training_json
from cosme_ros.errors import CosmeError
from cosme_ros.options import DEVICES


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def add_training_args(
    p: argparse.ArgumentParser,
    *,
    epochs: int,
    batch: int,
    lr: float,
    checkpoint_every: int,
    size_default: str,
    checkpoint_default: str,
) -> None:
    """The loop options ``train-student`` and ``train-teacher`` share."""
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=epochs,
        help=f"passes over the data (default {epochs})",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        default=batch,
        help=f"global batch size, split over torchrun processes (default {batch})",
    )
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument(
        "--size", type=size_arg, help=f"training crop HEIGHTxWIDTH (default {size_default})"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=checkpoint_every,
        metavar="N",
        help=f"write a checkpoint every N steps, 0 = never (default " f"{checkpoint_every})",
    )
    p.add_argument(
        "--checkpoint-dir",
        metavar="D",
        help=f"where checkpoints go (default "
        f"{checkpoint_default}; removed after a successful run)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint (same arguments required)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for initialisation, sample order " "and augmentation (default 0)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads per process (default: torch's, honouring OMP_NUM_THREADS)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing output and discard an earlier run's checkpoints",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast for the networks "
        "(losses stay fp32); faster on CPUs with native bf16 (AVX512-BF16, AMX) and "
        "on GPUs",
    )
    p.add_argument("--json", metavar="F", help="write the training record to F")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-student",
        help="train the AuxCon student of a bundle (Eq. 5)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle directory (its teacher is distilled)")
    add_data_sources(
        p,
        "training images, e.g. images:DIR, cityscapes:ROOT, camvid:ROOT",
        "network input of the Ψ statistics pass (default: the bundle's; training uses --size "
        "crops)",
    )
    p.add_argument(
        "--split",
        help="dataset split to read (default: the dataset's training " "split where it has one)",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=50,
        choices=(18, 34, 50, 101),
        help="student ResNet depth (default 50)",
    )
    p.add_argument(
        "--width", type=float, default=1.0, help="student width multiplier " "(default 1.0)"
    )
    p.add_argument(
        "--max-images",
        type=positive_int,
        metavar="N",
        help="use N evenly spaced images of the dataset",
    )
    p.add_argument(
        "--stats-only",
        action="store_true",
        help="train nothing: gather the Ψ statistics for the bundle's student (one "
        "pass over the images) and add them to its anomaly part",
    )
    add_training_args(
        p,
        epochs=10,
        batch=8,
        lr=1e-3,
        checkpoint_every=200,
        size_default="the bundle's input size",
        checkpoint_default="BUNDLE.student-checkpoints beside the bundle",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from cosme_ros.bundle import Bundle
    from cosme_ros.data.datasets import mixture_spec, open_datasets
    from cosme_ros.train.loop import clear_checkpoints, training_run
    from cosme_ros.train.student import train_student

    if args.seed < 0:
        raise CosmeError(f"--seed must be >= 0, got {args.seed}")
    bundle = Bundle.load(args.bundle)
    if args.stats_only:
        return _stats_only(args, bundle)
    if bundle.has_student and not args.force:
        raise CosmeError(f"{bundle.path}: already has a student (use --force to replace it)")
    atomic.check_writable(bundle.path / "manifest.yaml", True)  # not after the whole run
    if args.json:
        atomic.check_writable(args.json, True)
    dataset = open_datasets(args.data, args.split, args.input_size)
    ckpt_dir = checkpoint_dir(args, bundle.path, ".student-checkpoints")
    if args.resume:  # what a killed run was writing into the bundle
        atomic.remove_temporaries(bundle.path)
    with training_run(
        ckpt_dir, threads=args.threads, device=args.device, resume=args.resume, force=args.force
    ) as (ctx, threads):
        out = train_student(
            bundle,
            dataset,
            data_spec=mixture_spec(args.data, args.input_size),
            depth=args.depth,
            width=args.width,
            size=args.size,
            epochs=args.epochs,
            batch=args.batch,
            lr=args.lr,
            seed=args.seed,
            max_images=args.max_images,
            checkpoint_every=args.checkpoint_every,
            checkpoint_dir=ckpt_dir,
            resume=args.resume,
            bf16=args.bf16,
            ctx=ctx,
        )
        if ctx.is_main:
            record = {**out.record, "threads": threads}
            bundle.write_part(
                "student", {"config": out.student.config, "train": record}, out.student.state_dict()
            )
            clear_checkpoints(ckpt_dir)
            print(
                f"wrote student (ResNet-{args.depth}, width {args.width:g}) to {bundle.path}: "
                f"{out.result.steps} steps, final loss {out.result.final_loss:.4g}, "
                f"{out.result.images_per_second:.2f} images/s"
            )
            if bundle.has_anomaly:
                _psi_stats(args, bundle, dataset, ctx.device.type)
            else:
                print("note: no anomaly part yet; `cosme build-memory` gathers the Ψ statistics")
            if args.json:
                write_training_json(args.json, bundle.path, record, out.result)
    return 0


def _psi_stats(args, bundle, dataset, device: str) -> None:
    from cosme_ros.data.datasets import mixture_spec
    from cosme_ros.tools.psi_stats import add_psi_stats, gather_psi_stats, summary

    stats, record = gather_psi_stats(
        bundle, dataset, device=device, max_images=args.max_images, batch=args.batch
    )
    add_psi_stats(bundle, stats, {**record, "data": mixture_spec(args.data, args.input_size)})
    print(
        f"added the Ψ statistics to {bundle.path} ({record['images']} image(s)): "
        f"{summary(stats, bundle)}"
    )


def _stats_only(args, bundle) -> int:
    from cosme_ros.runtime.networks import resolve_device
    from cosme_ros.data.datasets import open_datasets
    from cosme_ros.train.loop import setup_threads

    if not bundle.has_student:
        raise CosmeError(
            f"{bundle.path}: --stats-only needs a student: run `cosme train-student` without it"
        )
    atomic.check_writable(bundle.path / "manifest.yaml", True)
    setup_threads(args.threads)
    _psi_stats(
        args,
        bundle,
        open_datasets(args.data, args.split, args.input_size),
        resolve_device(args.device).type,
    )
    return 0
