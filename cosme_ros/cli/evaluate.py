"""``cosme evaluate``: pixel-level AUROC / AP / FPR95 of anomaly methods on a labelled dataset.

The teacher (and the student, when a method needs it) runs once per image; every method then
scores at the resolution of the image's anomaly label. Metrics are pooled over all labelled
pixels of the dataset (1 anomaly, 0 in-distribution, 255 void), Fishyscapes convention, and
exact unless ``--binned``. Prints a table like the paper's Table 2 (also ``--markdown F``);
``--json F`` adds per-image AP; ``--plots DIR`` writes ROC and precision–recall curves and
overlays of the best method's worst images.

``--methods`` items may carry scorer options in brackets — ``cosme[fusion=raw]``,
``mulmem[standardize=false,layers=c4+c5]`` — each such ablation is a row of its own.
Without ``--methods`` every method whose bundle parts exist is evaluated and the others are
listed with the command that builds what they lack; an explicit ``--methods`` list fails
instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cosme_ros import atomic
from cosme_ros.cli.common import add_engine_arg, report_engine
from cosme_ros.errors import CosmeError
from cosme_ros.options import DEVICES, PRECISIONS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="AUROC / AP / FPR95 of anomaly methods on a dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument(
        "--data",
        required=True,
        metavar="KIND:PATH",
        help="labelled dataset, e.g. road_anomaly:DIR, folder:DIR (Fishyscapes, "
        "SegmentMeIfYouCan), streethazards:DIR --split test, synthetic:DIR/test",
    )
    p.add_argument("--split", help="dataset split where the kind has splits")
    p.add_argument(
        "--methods",
        help="comma-separated methods (default: every method the bundle "
        "supports, of msp,maxlogit,entropy,sml,pans,mulmem,auxcon,"
        "cosme); options in brackets make an ablation row, e.g. "
        "'cosme[fusion=raw],mulmem[standardize=false,layers=c4+c5]'",
    )
    p.add_argument(
        "--max-images",
        type=int,
        metavar="N",
        help="evaluate N images spread evenly over the dataset",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="network precision (default fp32, the reference numbers; scores are "
        "always fp32): compare with the node's `auto`",
    )
    p.add_argument(
        "--binned",
        action="store_true",
        help="histogram metrics in constant memory (error bounds reported) instead of "
        "exact ones",
    )
    p.add_argument(
        "--memory-limit",
        type=float,
        default=4.0,
        metavar="GIB",
        help="refuse exact metrics estimated to need more (default 4 GiB)",
    )
    p.add_argument("--json", metavar="F", help="write the metrics and per-image AP to F")
    p.add_argument("--markdown", metavar="F", help="write the table to F")
    p.add_argument(
        "--plots", metavar="DIR", help="write ROC / PR curves and worst-image " "overlays to DIR"
    )
    p.add_argument(
        "--worst",
        type=int,
        default=3,
        metavar="N",
        help="overlays for the N worst images of the best method (default 3)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    add_engine_arg(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from cosme_ros.anomaly.method_spec import split_methods
    from cosme_ros.bundle import Bundle
    from cosme_ros.data.datasets import open_dataset
    from cosme_ros.tools.evaluate import (
        MultiMethodRunner,
        evaluate,
        markdown_table,
        select_methods,
        write_plots,
    )

    if args.max_images is not None and args.max_images < 1:
        raise CosmeError("--max-images must be >= 1")
    if args.worst < 0:
        raise CosmeError("--worst must be >= 0")
    for path in (args.json, args.markdown):
        if path:
            atomic.check_writable(path, args.force)
    if args.plots:  # the curves' names are known now; the overlays' are checked before writing
        for name in ("roc.png", "pr.png"):
            atomic.check_writable(Path(args.plots) / name, args.force)
    bundle = Bundle.load(args.bundle)
    try:
        methods = split_methods(args.methods) if args.methods is not None else None
    except ValueError as exc:
        raise CosmeError(str(exc)) from None
    scorers, skipped = select_methods(bundle, methods)
    dataset = open_dataset(args.data, args.split)
    print(dataset.describe())
    for note in dataset.notes:
        print(f"note: {note}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")

    runner = MultiMethodRunner(
        bundle, scorers, device=args.device, precision=args.precision, engine=args.engine
    )
    report_engine(runner)
    print(f"networks on {runner.device} in {runner.precision} ({runner.backend})")
    report = evaluate(
        runner,
        dataset,
        skipped,
        max_images=args.max_images,
        binned=args.binned,
        memory_limit_gib=args.memory_limit,
    )
    title = f"{dataset.kind}" + (f" {dataset.split}" if dataset.split else "")
    table = markdown_table(report, title)
    print()
    print(table)
    print(f"best method by AP: {report.best_method}")
    # markdown, plots and JSON are staged and renamed together: an interrupted evaluate leaves
    # all of them or none (an empty plots folder beside a complete table, before)
    plots = []
    with atomic.OutputSet() as outputs:
        if args.markdown:
            outputs.file(args.markdown).write_text(f"# {title}: {dataset.root}\n\n{table}")
        if args.plots:
            plots = write_plots(
                report,
                runner,
                dataset,
                args.plots,
                title,
                worst=args.worst,
                force=args.force,
                outputs=outputs,
            )
        if args.json:
            doc = _json(args, bundle, dataset, runner, report, plots)
            outputs.file(args.json).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if plots:
        print(f"{len(plots)} plot(s) written to {args.plots}")
    return 0


def _json(args, bundle, dataset, runner, report, plots) -> dict:
    """``--json``: the dataset, the bundle, the settings and the report."""
    return {
        "dataset": {
            "spec": args.data,
            "kind": dataset.kind,
            "root": str(dataset.root),
            "split": dataset.split,
            "images": report.images,
        },
        "bundle": {
            "path": str(bundle.path),
            "name": bundle.name,
            "input_size": list(bundle.input_size),
            "has_student": bundle.has_student,
            "has_anomaly": bundle.has_anomaly,
        },
        "device": str(runner.device),
        "precision": runner.precision,
        "backend": runner.backend,
        **report.to_json(),
        "outputs": {"markdown": args.markdown, "plots": [str(p) for p in plots]},
    }
