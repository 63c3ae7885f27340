"""``cosme calibrate``: the anomaly threshold of each method at a stated false-positive rate,
stored in the bundle so that ``cosme_node``'s ``anomaly/mask`` follows the bundle and method.

Give it images of normal driving the bundle was made for (``images:DIR``, a synthetic val split,
CamVid, …): the threshold of a method is the score that ``--fpr`` of their in-distribution pixels
exceed (images with anomaly labels contribute their label-0 pixels, and the share of anomaly
pixels above the threshold is reported too). Scores are computed as the node computes them, with
``--precision auto`` by default. Thresholds go into the bundle's manifest under ``thresholds``
(``--dry-run``: printed only); rebuilding the memory or the student removes them.

Methods with a refinement are their own entries: ``--methods 'cosme,cosme[refine=guided]'``.
"""

from __future__ import annotations

import argparse

from cosme_ros.cli.common import write_json
from cosme_ros.errors import CosmeError
from cosme_ros.options import DEVICES, PRECISIONS


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1)")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="store per-method anomaly thresholds in a bundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle directory (written unless --dry-run)")
    p.add_argument(
        "--data",
        required=True,
        metavar="KIND:PATH",
        help="images of normal driving, e.g. images:DIR, synthetic:DIR/val, camvid:DIR",
    )
    p.add_argument("--split", help="dataset split where the kind has splits")
    p.add_argument(
        "--methods",
        help="comma-separated methods (default: every method the bundle "
        "supports); options in brackets, e.g. cosme[refine=guided]",
    )
    p.add_argument(
        "--fpr",
        type=_fraction,
        default=0.01,
        help="share of in-distribution pixels above the threshold (default 0.01)",
    )
    p.add_argument("--max-images", type=int, metavar="N", help="use N images spread evenly")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="network precision (default auto, as the node)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the thresholds, write nothing")
    p.add_argument("--json", metavar="F", help="write the thresholds to F")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.set_defaults(run=run)


def run(args) -> int:
    from cosme_ros import atomic
    from cosme_ros.anomaly.method_spec import split_methods
    from cosme_ros.bundle import Bundle
    from cosme_ros.runtime.thresholds import threshold_key
    from cosme_ros.tools.calibrate import calibrate, describe
    from cosme_ros.data.datasets import open_dataset
    from cosme_ros.tools.evaluate import MultiMethodRunner, select_methods

    if args.max_images is not None and args.max_images < 1:
        raise CosmeError("--max-images must be >= 1")
    if args.json:
        atomic.check_writable(args.json, args.force)
    bundle = Bundle.load(args.bundle)
    if not args.dry_run:
        atomic.check_writable(bundle.path / "manifest.yaml", True)
    try:
        methods = split_methods(args.methods) if args.methods is not None else None
    except ValueError as exc:
        raise CosmeError(str(exc)) from None
    scorers, skipped = select_methods(bundle, methods)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    dataset = open_dataset(args.data, args.split)
    print(dataset.describe())
    runner = MultiMethodRunner(bundle, scorers, device=args.device, precision=args.precision)
    print(f"networks on {runner.device} in {runner.precision}")
    measured = calibrate(runner, dataset, args.fpr, max_images=args.max_images)
    entries = {
        threshold_key(m): {**e, "method": m, "data": args.data, "precision": runner.precision}
        for m, e in measured.items()
    }
    for (m, line), key in zip(describe(measured), entries):
        print(f"{key}: {line}")
    if not args.dry_run:
        bundle.write_thresholds(entries)
        print(
            f"wrote {len(entries)} threshold(s) at {100 * args.fpr:g} % false positives to "
            f"{bundle.path / 'manifest.yaml'}"
        )
    if args.json:
        write_json(
            args.json,
            {
                "bundle": str(bundle.path),
                "data": args.data,
                "fpr": args.fpr,
                "precision": runner.precision,
                "thresholds": entries,
            },
        )
    return 0
