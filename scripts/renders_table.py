#!/usr/bin/env python3
"""Mean and spread of every method over several renders of the synthetic test split.

One 200-frame render moves AP by about ±3 points, so bundles and methods are compared on the
mean of six (``scripts/benchmark_demo_renders.sh`` writes one ``cosme evaluate --json`` per
bundle and render). Usage::

    python scripts/renders_table.py --bundle NAME=build/renders/NAME-s{0..5}.json [--bundle ...]

Prints one markdown table per bundle: per method AP and FPR95 as mean ± standard deviation over
the renders, min–max, and on how many renders the method is first (AP: highest, FPR95: lowest).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List


ORDER = ("msp", "maxlogit", "entropy", "sml", "pans", "mulmem", "auxcon", "cosme")


def _order(method: str):
    """The paper's table order, each method's ablation rows after it (the JSON's keys are
    sorted alphabetically)."""
    base = method.split("[")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), "[" in method, method)


def table(name: str, reports: List[Dict]) -> str:
    methods = sorted(reports[0]["methods"], key=_order)
    for r in reports[1:]:
        if sorted(r["methods"], key=_order) != methods:
            sys.exit(f"renders_table.py: {name}: the reports evaluate different methods")
    firsts = {m: [0, 0] for m in methods}
    for r in reports:
        res = r["methods"]
        firsts[max(methods, key=lambda m: res[m]["ap"])][0] += 1
        firsts[min(methods, key=lambda m: res[m]["fpr95"])][1] += 1
    rows = [
        f"**{name}**, {len(reports)} renders of the test split "
        f"({reports[0]['pixels']['anomaly']} anomaly pixels in the first):",
        "",
        "| method | AP mean ± sd | AP min–max | FPR95 mean ± sd | FPR95 min–max | AUROC mean "
        "| first in AP / FPR95 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        ap = [r["methods"][m]["ap"] for r in reports]
        fpr = [r["methods"][m]["fpr95"] for r in reports]
        auroc = [r["methods"][m]["auroc"] for r in reports]

        def sd(v):
            return statistics.stdev(v) if len(v) > 1 else 0.0

        rows.append(
            f"| {m} | {statistics.mean(ap):.2f} ± {sd(ap):.2f} | {min(ap):.2f}–{max(ap):.2f} "
            f"| {statistics.mean(fpr):.2f} ± {sd(fpr):.2f} | {min(fpr):.2f}–{max(fpr):.2f} "
            f"| {statistics.mean(auroc):.2f} | {firsts[m][0]} / {firsts[m][1]} |"
        )
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--bundle",
        action="append",
        required=True,
        metavar="NAME=JSON,JSON,...",
        help="a bundle's name and its evaluate reports, comma-separated",
    )
    args = p.parse_args()
    for spec in args.bundle:
        name, _, files = spec.partition("=")
        paths = [Path(f) for f in files.split(",") if f]
        missing = [str(f) for f in paths if not f.is_file()]
        if not name or not paths or missing:
            sys.exit(
                f"renders_table.py: --bundle {spec!r}: need NAME=report.json,...; missing "
                f"{missing}"
            )
        print(table(name, [json.loads(f.read_text()) for f in paths]))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
