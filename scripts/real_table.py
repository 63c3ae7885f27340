#!/usr/bin/env python3
"""One markdown table of a real-data benchmark run: every row of ``cosme evaluate --json`` on
Road Anomaly and on Fishyscapes Static side by side, the best value of each column in bold, and
a last column saying where a row beats MaxLogit in both AP and FPR95. Usage::

    python scripts/real_table.py OUT/road_anomaly.json OUT/fs_static.json > OUT/table.md

``scripts/benchmark_real.sh`` writes it for each run; BENCHMARKS.md copies it.
"""

from __future__ import annotations

import json
import sys
from typing import Dict

ORDER = ("msp", "maxlogit", "entropy", "sml", "pans", "mulmem", "auxcon", "cosme")
NAMES = {"msp": "MSP", "maxlogit": "MaxLogit", "entropy": "Entropy", "sml": "SML", "pans": "PAnS"}
NAMES.update({"mulmem": "MulMem", "auxcon": "AuxCon", "cosme": "CosMe"})
COLUMNS = (("auroc", max), ("ap", max), ("fpr95", min))


def _order(method: str):
    """The paper's eight methods first in its order, then the ablation rows by method."""
    base = method.split("[")[0]
    return (method != base, ORDER.index(base) if base in ORDER else len(ORDER), method)


def _beats(row: Dict[str, float], ref: Dict[str, float]) -> bool:
    return row["ap"] > ref["ap"] and row["fpr95"] < ref["fpr95"]


def table(ra: Dict, fs: Dict) -> str:
    sets = (ra["methods"], fs["methods"])
    methods = sorted(sets[0], key=_order)
    best = [{k: pick(m[r][k] for r in methods) for k, pick in COLUMNS} for m in sets]
    lines = [
        "| Row | Road Anomaly AUROC ↑ | AP ↑ | FPR95 ↓ | FS Static AUROC ↑ | AP ↑ | FPR95 ↓ "
        "| beats MaxLogit (AP and FPR95) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method in methods:
        cells = []
        for m, b in zip(sets, best):
            for key, _ in COLUMNS:
                v = f"{m[method][key]:.2f}"
                cells.append(f"**{v}**" if m[method][key] == b[key] else v)
        wins = [
            name
            for name, m in zip(("RA", "FS"), sets)
            if method != "maxlogit" and _beats(m[method], m["maxlogit"])
        ]
        label = NAMES.get(method, f"`{method}`")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {' + '.join(wins) or '—'} |")
    return "\n".join(lines)


def main(argv) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    runs = [json.loads(open(p, encoding="utf-8").read()) for p in argv]
    print(table(*runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
