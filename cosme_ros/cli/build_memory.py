"""``cosme build-memory``: build a bundle's anomaly part (MulMem memory + statistics) from images.

Runs the bundle's teacher over the training images: Algorithm 1 (prototype initialisation),
Algorithm 2 for ``--epochs`` epochs, then one pass gathering the per-class statistics of MulMem's
Γ and of SML's max logit, and the PAnS class prototypes (see ``cosme_ros/memory_build.py``). The
result replaces ``anomaly.safetensors`` and the manifest's ``anomaly`` section — only once
everything is complete, atomically, and only with ``--force`` when the bundle already has one.

Multi-process: ``torchrun --nproc_per_node N -m cosme_ros.cli.main build-memory …`` (gloo on the
CPU, nccl on GPUs) builds the same memory as one process; ``--batch`` counts the images of a step
over all processes. ``--resume`` continues an interrupted build from its last completed epoch.
"""

from __future__ import annotations

import argparse
import sys

from cosme_ros import atomic
from cosme_ros.cli.common import add_data_sources, write_json
from cosme_ros.errors import CosmeError
from cosme_ros.options import DEVICES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "build-memory",
        help="build the MulMem memory and anomaly statistics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle directory (gets the anomaly part)")
    p.add_argument("--split", help="dataset split where the kind has splits (default: train)")
    p.add_argument(
        "--layers",
        help="memory layers (default: the paper's c4,c5,lh; a teacher without c4 and c5, "
        "such as CFPNet, uses its two deepest stages and lh: c2,c3,lh)",
    )
    add_data_sources(
        p,
        "training images, e.g. cityscapes:/data/cityscapes, camvid:DIR, images:DIR, "
        "synthetic:DIR/train (each batch is drawn from one source)",
        "network input for these images (default: the bundle's), e.g. 480x640 to keep 4:3 "
        "frames at their aspect ratio under a 2:1 teacher",
    )
    p.add_argument("--k", type=int, default=2048, help="prototypes per layer (default 2048)")
    p.add_argument(
        "--tau", type=float, default=0.85, help="Algorithm 1 cosine threshold (default 0.85)"
    )
    p.add_argument(
        "--momentum", type=float, default=0.99, help="Algorithm 2 momentum m (default 0.99)"
    )
    p.add_argument("--epochs", type=int, default=1, help="Algorithm 2 epochs (default 1)")
    p.add_argument(
        "--batch", type=int, default=8, help="images per step, over all processes (default 8)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffles and samples")
    p.add_argument(
        "--max-images", type=int, metavar="N", help="use N images spread evenly over the dataset"
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=64,
        metavar="C",
        help="Algorithm 1 random pixels per image and layer (default 64)",
    )
    p.add_argument(
        "--init-passes",
        type=int,
        default=1,
        help="passes over the data Algorithm 1 may take to reach K (default 1)",
    )
    p.add_argument(
        "--pans-labels",
        default="auto",
        choices=("auto", "labels", "pseudo"),
        help="PAnS prototypes from ground-truth labels or teacher pseudo-labels "
        "(auto: labels when the dataset has them)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint an interrupted run left in the bundle",
    )
    p.add_argument("--force", action="store_true", help="replace an existing anomaly part")
    p.add_argument("--json", metavar="F", help="write a JSON report to F")
    p.set_defaults(run=run)


def run(args) -> int:
    from cosme_ros.bundle import Bundle
    from cosme_ros.data.datasets import mixture_spec, open_datasets
    from cosme_ros.distributed import Distributed
    from cosme_ros.tools.build_memory import (
        BuildConfig,
        build_anomaly_parts,
        checkpoint_path,
    )

    bundle = Bundle.load(args.bundle)
    if bundle.has_anomaly and not args.force:
        raise CosmeError(
            f"{bundle.path}: already has an anomaly part "
            f"({bundle.manifest['anomaly'].get('weights')}); use --force to replace it"
        )
    atomic.check_writable(bundle.path / "manifest.yaml", True)  # before hours of work
    if args.json:
        atomic.check_writable(args.json, args.force)
    if args.workers < 0:
        raise CosmeError("--workers must be >= 0")
    config = BuildConfig(
        layers=args.layers,
        k=args.k,
        tau=args.tau,
        momentum=args.momentum,
        epochs=args.epochs,
        batch=args.batch,
        seed=args.seed,
        max_images=args.max_images,
        candidates_per_image=args.candidates,
        init_passes=args.init_passes,
        pans_labels=args.pans_labels,
        input_size=args.input_size[0] if len(args.data) == 1 and args.input_size else None,
    )
    dataset = open_datasets(args.data, args.split, args.input_size)
    data_spec = mixture_spec(args.data, args.input_size)

    ctx = Distributed.from_environment(args.device)
    say = print if ctx.is_main else (lambda *_a, **_k: None)
    try:
        say(dataset.describe() + (f" ({ctx.world_size} processes)" if ctx.world_size > 1 else ""))
        for note in dataset.notes:
            say(f"note: {note}")
        ckpt = checkpoint_path(bundle)
        if args.resume and ctx.is_main:  # what a killed run was writing into the bundle
            atomic.remove_temporaries(bundle.path)
        result = build_anomaly_parts(
            bundle,
            dataset,
            config,
            data_spec=data_spec,
            device=args.device,
            checkpoint=ckpt,
            resume=args.resume,
            workers=args.workers,
            log=say,
        )
        if ctx.is_main:
            _write(args, bundle, dataset, data_spec, result, ckpt, say)
        ctx.barrier()
    finally:
        ctx.close()
    sys.stdout.flush()
    return 0


def _write(args, bundle, dataset, data_spec, result, ckpt, say) -> None:
    """Rank 0: the anomaly part into the bundle, the build checkpoint removed, the Ψ statistics
    when a student is already there, the summary."""
    bundle.write_part("anomaly", result.section, result.parts.to_tensors())
    if ckpt.exists():
        ckpt.unlink()
    r = result.report
    say(
        f"anomaly part written to {bundle.path}: memory "
        + ", ".join(f"{layer} {c}/{r['k']}" for layer, c in r["prototypes"].items())
        + f" from {r['images']} image(s); PAnS from {r['pans_labels']}"
    )
    if r["pans_unseen_classes"]:
        say(
            f"note: no PAnS prototype for {', '.join(r['pans_unseen_classes'])} "
            f"(never seen in the data)"
        )
    if bundle.has_student:  # the student is already there: its Ψ statistics too
        from cosme_ros.tools.psi_stats import add_psi_stats, gather_psi_stats, summary

        stats, record = gather_psi_stats(
            bundle,
            dataset,
            device=args.device,
            max_images=args.max_images,
            batch=args.batch,
            workers=args.workers,
        )
        add_psi_stats(bundle, stats, {**record, "data": data_spec})
        say(f"added the Ψ statistics ({record['images']} image(s)): {summary(stats, bundle)}")
    if args.json:
        write_json(args.json, {"bundle": str(bundle.path), **r})
