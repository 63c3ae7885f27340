#!/usr/bin/env python3
"""Write a bundle's model card (README.md) from what was recorded while building it.

Reads the bundle's ``manifest.yaml`` — the teacher's training record (``teacher.source.train``,
from ``cosme train-teacher``), the student's (``student.train``), the memory build record
(``anomaly.build``) — and the JSON of ``cosme evaluate --json``; optionally the step timings of
``scripts/build_demo_bundle.sh`` (``--timings``) and the synthetic splits' ``meta.yaml``
(``--world``). Nothing is measured here: every number in the card comes from those files.

    python scripts/model_card.py --bundle build/demo-work/bundle \\
        --evaluate build/demo-work/evaluate.json --timings build/demo-work/timings.tsv \\
        --world build/demo-work/world --out build/demo-work/bundle/README.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

MB = 1e6
METHOD_ORDER = ("msp", "maxlogit", "entropy", "sml", "pans", "mulmem", "auxcon", "cosme")
CONFIG_FP32 = {"running_mean", "running_var"}


# ----------------------------------------------------------------------------- small helpers


def fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"


def size_text(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def pct(v: Optional[float], digits: int = 1) -> str:
    return (
        "—"
        if v is None or (isinstance(v, float) and math.isnan(v))
        else f"{100 * float(v):.{digits}f}"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    align = align or "l" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def augment_text(aug: Optional[Mapping]) -> str:
    if not aug:
        return "—"
    parts = []
    if "scale" in aug:
        parts.append(f"random scale {aug['scale'][0]:g}–{aug['scale'][1]:g}")
    if "size" in aug:
        parts.append(f"crop {aug['size'][0]}×{aug['size'][1]}")
    if aug.get("flip"):
        parts.append("horizontal flip")
    jitter = [f"{k} ±{aug[k]:g}" for k in ("brightness", "contrast", "saturation") if aug.get(k)]
    if jitter:
        parts.append("colour jitter (" + ", ".join(jitter) + ")")
    return ", ".join(parts)


def file_dtype(path: Path) -> str:
    """'fp16', 'fp32' or 'fp16 (BatchNorm statistics fp32)' from the safetensors header."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
    except (OSError, ValueError):
        return "?"
    kinds = {}
    for key, info in header.items():
        if key == "__metadata__" or info.get("dtype") not in ("F16", "F32", "BF16"):
            continue
        kinds.setdefault(info["dtype"], []).append(key)
    if set(kinds) == {"F32"}:
        return "fp32"
    if set(kinds) == {"F16"}:
        return "fp16"
    if set(kinds) == {"F16", "F32"} and all(
        k.rsplit(".", 1)[-1] in CONFIG_FP32 for k in kinds["F32"]
    ):
        return "fp16 (BatchNorm statistics fp32)"
    return "/".join(sorted(k.lower() for k in kinds)) or "?"


def read_timings(path: Optional[Path]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"steps": [], "info": {}}
    if path is None or not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition("\t")
        if key.startswith("#"):
            out["info"][key.lstrip("# ").strip()] = value.strip()
        else:
            out["steps"].append((key, float(value)))
    return out


def read_world(world: Optional[Path]) -> Dict[str, Dict]:
    metas = {}
    if world is None:
        return metas
    for split in ("train", "val", "test"):
        meta = world / split / "meta.yaml"
        if meta.is_file():
            metas[split] = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
    return metas


# ----------------------------------------------------------------------------- sections


def backbone_text(cfg: Mapping) -> str:
    """``resnet18 width 0.5`` / ``mobilenetv2`` (whose width is always 1)."""
    name = cfg.get("backbone", "")
    return name if name == "mobilenetv2" else f"{name} width {cfg.get('width', 1):g}"


def header_section(manifest: Mapping, bundle: Path) -> List[str]:
    t = manifest["teacher"]
    cfg = t.get("config", {})
    h, w = manifest["preprocess"]["input_size"]
    arch = t.get("arch", "?")
    title = (
        f"DeepLabV3+ {backbone_text(cfg)} (OS {cfg.get('output_stride', '?')})"
        if arch == "deeplabv3plus"
        else arch
    )
    pretrained = (t.get("source", {}).get("train") or {}).get("pretrained")
    origin = (
        "trained from an ImageNet-pretrained backbone" if pretrained else "trained from scratch"
    )
    return [
        f"# Model card: `{manifest.get('name', bundle.name)}` — {title} with CosMe",
        "",
        "The embedded default of `cosme_ros`: the bundle that `cosme demo`, `cosme_node` and "
        "`ros2 launch cosme_ros cosme.launch.py` use when no bundle is given. A segmentation "
        f"teacher {origin}, its MulMem memory and statistics, and its AuxCon student, "
        f"at {h}×{w} input.",
        "",
        "**It is a demonstration model.** It was trained only on the procedural street world "
        "of this repository (`cosme synth`) and has never seen a real photograph: on real camera "
        "images its classes and anomaly scores mean nothing. For real streets, import a "
        "Cityscapes teacher with `cosme bundle create` and give it a memory "
        "(`cosme build-memory`) and a student (`cosme train-student`).",
        "",
        "Rebuild it from nothing with `bash scripts/build_demo_bundle.sh`. This card is written "
        "by `scripts/model_card.py` from the bundle's manifest (the training records) and "
        "`cosme evaluate --json`; every number below comes from those files.",
        "",
    ]


def contents_section(manifest: Mapping, bundle: Path) -> List[str]:
    rows = []
    total = 0
    t = manifest["teacher"]
    cfg = t.get("config", {})
    parts = [
        (
            "teacher",
            t.get("weights"),
            f"{t.get('arch')}: {backbone_text(cfg)}, "
            f"output stride {cfg.get('output_stride', '?')}, ASPP/decoder "
            f"{cfg.get('aspp_channels', '?')} channels, {cfg.get('num_classes', '?')} classes",
        )
    ]
    if "student" in manifest:
        s = manifest["student"]
        sc = s.get("config", {})
        parts.append(
            (
                "student",
                s.get("weights"),
                f"AuxCon student: ResNet-{sc.get('depth', '?')} width "
                f"{sc.get('width', 1):g} + 1×1 adapters to the teacher's "
                f"{', '.join(sc.get('taps', []))}",
            )
        )
    if "anomaly" in manifest:
        a = manifest["anomaly"]
        b = a.get("build", {})
        parts.append(
            (
                "anomaly",
                a.get("weights"),
                f"MulMem memory (K = {b.get('k', '?')} at "
                f"{', '.join(a.get('memory_layers', []))}), MulMem and SML class "
                f"statistics, PAnS class prototypes"
                + (
                    f", Ψ class statistics ({', '.join(a['psi_stats'].get('distances', []))}"
                    f" at {', '.join(a['psi_stats'].get('layers', []))})"
                    if a.get("psi_stats")
                    else ""
                ),
            )
        )
    for part, name, what in parts:
        path = bundle / str(name)
        size = path.stat().st_size if path.is_file() else 0
        total += size
        rows.append([f"`{name}`", what, file_dtype(path), size_text(size)])
    man = bundle / "manifest.yaml"
    total += man.stat().st_size if man.is_file() else 0
    rows.insert(
        0,
        [
            "`manifest.yaml`",
            "architecture, preprocessing, classes, training records",
            "",
            size_text(man.stat().st_size if man.is_file() else 0),
        ],
    )
    half = any(r[2].startswith("fp16") for r in rows)
    pre = manifest["preprocess"]
    names = manifest["classes"]["names"]
    return [
        "## Contents",
        "",
        table(["file", "what", "stored as", "size"], rows, "lllr"),
        "",
        f"{total / MB:.1f} MB in all."
        + (
            " Weights stored in fp16 are cast back to fp32 when they load (they run in fp32)."
            if half
            else ""
        )
        + " Input: RGB resized to "
        f"{pre['input_size'][0]}×{pre['input_size'][1]}, normalised with mean "
        f"{[round(v, 3) for v in pre['mean']]} and std {[round(v, 3) for v in pre['std']]}. "
        f"Output: {len(names)} classes, the Cityscapes trainIds ({', '.join(names)}).",
        "",
    ]


def data_section(manifest: Mapping, world: Dict[str, Dict]) -> List[str]:
    rec = manifest["teacher"].get("source", {}).get("train", {})
    lines = ["## Training data", ""]
    if world:
        rows = []
        for split, meta in world.items():
            fams = meta.get("anomaly_families") or []
            rows.append(
                [
                    split,
                    meta.get("n", "?"),
                    f"{meta['size'][0]}×{meta['size'][1]}" if meta.get("size") else "?",
                    meta.get("seed", "?"),
                    ", ".join(fams) if fams else "none",
                ]
            )
        gen = next(iter(world.values()))
        lines += [
            f"The synthetic driving world of `cosme_ros.data.synth` (generator version "
            f"{gen.get('version', '?')}): forward-facing street scenes with exact Cityscapes "
            "trainId labels; every image is seeded by (seed, split, index). Anomalies — object "
            "families never drawn in train or val — appear only in the test split.",
            "",
            table(["split", "images", "size", "seed", "anomaly families"], rows, "lrrrl"),
            "",
        ]
        from cosme_ros.data.synth.things import MIN_LABELLED_WIDTH

        drawn = world.get("train", gen).get("trainids_present") or []
        names = gen.get("classes") or []
        if drawn and names:
            lines += [
                f"The world draws {len(drawn)} of the {len(names)} Cityscapes classes: "
                + ", ".join(names[i] for i in drawn if i < len(names))
                + ". The teacher keeps "
                "all outputs; the mIoU below is over the classes in the labels or predictions. "
                f"Poles drawn narrower than {MIN_LABELLED_WIDTH:g} pixels are labelled void (255).",
                "",
            ]
    else:
        lines += [
            f"`{rec.get('data', '?')}` ({rec.get('images', '?')} images), validated on "
            f"`{rec.get('val', '?')}` ({rec.get('val_images', '?')} images).",
            "",
        ]
    if rec.get("pretrained"):
        lines += [
            "No third-party data was used. The teacher's backbone starts from ImageNet "
            "weights (MobileNetV2, Apache-2.0; see Teacher); nothing else is pretrained.",
            "",
        ]
    else:
        lines += ["No third-party data or pretrained weights were used.", ""]
    return lines


def teacher_section(manifest: Mapping) -> List[str]:
    t = manifest["teacher"]
    src = t.get("source", {})
    rec = src.get("train")
    lines = ["## Teacher", ""]
    if not rec:
        return lines + [f"Imported ({src or 'no training record'}).", ""]
    where = f"{rec.get('processes', 1)} process(es) on {rec.get('device', '?')}" + (
        f", {rec['threads']} thread(s)" if rec.get("threads") else ""
    )
    pre = rec.get("pretrained")
    start = (
        f"From the ImageNet weights of the backbone (`{pre.get('file')}`, Apache-2.0: "
        f"`LICENSE.mobilenet_v2` beside this card; BatchNorm {pre.get('batchnorm')}"
        + (f"; {pre['frozen']} not trained" if pre.get("frozen") else "")
        + ")"
        if pre
        else "From scratch"
    )
    lines += [
        f"{start}, trained by `{src.get('trained_by', 'cosme train-teacher')}`: plain "
        "cross-entropy (void ignored).",
        "",
        table(
            ["", ""],
            [
                ["data", f"`{rec.get('data')}`, {rec.get('images')} images"],
                [
                    "epochs × steps",
                    f"{plural(rec.get('epochs'), 'epoch')}, "
                    f"{plural(rec.get('steps'), 'step')} of batch {rec.get('batch')}",
                ],
                [
                    "optimizer",
                    f"{rec.get('optimizer')}, peak lr {rec.get('lr')}, " f"{rec.get('schedule')}",
                ],
                ["augmentation", augment_text(rec.get("augment"))],
                ["precision", "bf16 autocast" if rec.get("bf16") else "fp32"],
                ["seed", rec.get("seed")],
                [
                    "final loss",
                    f"{rec['final_loss']:.4f}" if rec.get("final_loss") is not None else "—",
                ],
                ["time", f"{fmt_seconds(rec.get('seconds'))} ({where})"],
            ],
        ),
        "",
        f"**Validation** (`{rec.get('val')}`, {rec.get('val_images')} images): mIoU "
        f"**{pct(rec.get('miou'))}** (over classes with predictions or labels), "
        f"{pct(rec.get('miou_present'))} over the classes present in the labels, pixel accuracy "
        f"{pct(rec.get('pixel_accuracy'))}.",
        "",
    ]
    curve = rec.get("epoch_val_miou") or []
    if curve:
        lines += ["Validation mIoU after each epoch: " + ", ".join(pct(v) for v in curve) + ".", ""]
    iou = rec.get("iou") or {}
    if iou:
        items = sorted(iou.items(), key=lambda kv: -kv[1])
        half = (len(items) + 1) // 2
        rows = []
        for i in range(half):
            right = items[i + half] if i + half < len(items) else ("", None)
            rows.append(
                [
                    items[i][0],
                    pct(items[i][1]),
                    right[0],
                    pct(right[1]) if right[1] is not None else "",
                ]
            )
        lines += [table(["class", "IoU", "class", "IoU"], rows, "lrlr"), ""]
    return lines


def student_section(manifest: Mapping) -> List[str]:
    if "student" not in manifest:
        return []
    s = manifest["student"]
    cfg, rec = s.get("config", {}), s.get("train", {})
    where = f"{rec.get('processes', 1)} process(es) on {rec.get('device', '?')}" + (
        f", {rec['threads']} thread(s)" if rec.get("threads") else ""
    )
    return [
        "## AuxCon student",
        "",
        f"ResNet-{cfg.get('depth')} (width {cfg.get('width', 1):g}) on the teacher's "
        "down-sampling schedule, trained by `cosme train-student` to reproduce the frozen "
        f"teacher's taps {', '.join(rec.get('layers', cfg.get('taps', [])))} (Eq. 5); no "
        "labels.",
        "",
        table(
            ["", ""],
            [
                [
                    "data",
                    f"`{rec.get('data')}`, {rec.get('images')} images at "
                    f"{'×'.join(str(v) for v in rec.get('size', []))}",
                ],
                [
                    "epochs × steps",
                    f"{plural(rec.get('epochs'), 'epoch')}, "
                    f"{plural(rec.get('steps'), 'step')} of batch {rec.get('batch')}",
                ],
                [
                    "optimizer",
                    f"{rec.get('optimizer')}, peak lr {rec.get('lr')}, " f"{rec.get('schedule')}",
                ],
                ["loss", rec.get("loss", "—")],
                ["augmentation", augment_text(rec.get("augment"))],
                ["seed", rec.get("seed")],
                [
                    "final loss",
                    f"{rec['final_loss']:.4g}" if rec.get("final_loss") is not None else "—",
                ],
                ["time", f"{fmt_seconds(rec.get('seconds'))} ({where})"],
            ],
        ),
        "",
    ]


def memory_section(manifest: Mapping) -> List[str]:
    if "anomaly" not in manifest:
        return []
    a = manifest["anomaly"]
    b = a.get("build", {})
    protos = b.get("prototypes", {})
    return [
        "## MulMem memory and statistics",
        "",
        "Built by `cosme build-memory` with the teacher above: Algorithm 1 (initialisation), "
        "Algorithm 2 (momentum learning), then one pass for the per-class statistics of MulMem's "
        "Γ and SML's max logit, and the PAnS class prototypes.",
        "",
        table(
            ["", ""],
            [
                ["data", f"`{b.get('data')}`, {b.get('images')} images"],
                ["layers", ", ".join(a.get("memory_layers", []))],
                [
                    "prototypes per layer",
                    f"K = {b.get('k')}; built: " + ", ".join(f"{k} {v}" for k, v in protos.items()),
                ],
                [
                    "Algorithm 1",
                    f"τ = {b.get('tau')}, {b.get('candidates_per_image')} candidate "
                    f"pixels per image and layer, "
                    f"{plural(b.get('init_steps'), 'step')}",
                ],
                [
                    "Algorithm 2",
                    f"momentum {b.get('momentum')}, {b.get('epochs')} epoch(s), "
                    f"{b.get('learn_steps')} steps of batch {b.get('batch')}",
                ],
                ["PAnS prototypes", f"from {b.get('pans_labels')}"],
                ["consensus layers (AuxCon)", ", ".join(a.get("consensus_layers", []))],
                ["seed", b.get("seed")],
            ],
        ),
        "",
    ]


def evaluation_section(ev: Mapping, manifest: Mapping) -> List[str]:
    methods: Mapping[str, Mapping[str, float]] = ev.get("methods", {})
    ds = ev.get("dataset", {})
    px = ev.get("pixels", {})
    lines = ["## Anomaly segmentation on the synthetic test split", ""]
    if not methods:
        return lines + ["No method was evaluated.", ""]
    cols = (("auroc", "AUROC ↑", max), ("ap", "AP ↑", max), ("fpr95", "FPR95 ↓", min))
    best = {k: pick(m[k] for m in methods.values()) for k, _, pick in cols}
    rows = []
    order = [m for m in METHOD_ORDER if m in methods] + sorted(
        m for m in methods if m not in METHOD_ORDER
    )
    for name in order:
        m = methods[name]
        cells = []
        for key, _, _ in cols:
            text = f"{m[key]:.2f}"
            cells.append(f"**{text}**" if math.isclose(m[key], best[key], abs_tol=5e-3) else text)
        rows.append([name, *cells])
    lines += [
        f"`cosme evaluate` on `{ds.get('spec', '?')}`: {ds.get('images', '?')} images, "
        f"{px.get('anomaly', 0):,} anomaly and {px.get('in_distribution', 0):,} in-distribution "
        f"pixels, pooled over the split (Fishyscapes convention; {ev.get('metric_mode', 'exact')} "
        "metrics, in %). The anomaly families of this split never occur in the training data.",
        "",
        table(["method", "AUROC ↑", "AP ↑", "FPR95 ↓"], rows, "lrrr"),
        "",
        f"Best by AP: **{ev.get('best_method')}**.",
        "",
    ]
    default = (manifest.get("anomaly") or {}).get("default_method")
    if default:
        lines += [
            f"What `auto` runs for this bundle (`cosme_node`'s `method`, `cosme demo`, "
            f"`cosme replay`): **`{default}`**, named by `cosme bundle set-default`; "
            "plain `cosme` stays the paper's Eq. 8.",
            "",
        ]
    if ev.get("skipped"):
        lines += [
            "Not evaluated: " + "; ".join(f"{k} — {v}" for k, v in ev["skipped"].items()) + ".",
            "",
        ]
    return lines


def thresholds_section(manifest: Mapping) -> List[str]:
    entries: Mapping[str, Mapping[str, Any]] = manifest.get("thresholds") or {}
    if not entries:
        return []
    first = next(iter(entries.values()))
    rows = [
        [f"`{k}`", f"{e['value']:.4g}", pct(e.get("measured_fpr"), 2) + " %"]
        for k, e in entries.items()
    ]
    return [
        "## Anomaly thresholds",
        "",
        f"`cosme calibrate` on `{first.get('data')}` ({first.get('images')} images, "
        f"{first.get('precision')} networks as the node runs them): the score that "
        f"{100 * float(first.get('fpr', 0)):g} % of the in-distribution pixels exceed, per "
        "method. "
        "`cosme_node` uses the one for its method when `anomaly_threshold` is `auto` (the "
        "default).",
        "",
        table(["method", "threshold", "in-distribution above"], rows, "lrr"),
        "",
    ]


def build_section(timings: Dict[str, Any]) -> List[str]:
    steps = timings["steps"]
    if not steps:
        return []
    info = timings["info"]
    rows = [[name, fmt_seconds(sec)] for name, sec in steps]
    rows.append(["**total**", f"**{fmt_seconds(sum(s for _, s in steps))}**"])
    lines = ["## How long it took to build", ""]
    if info:
        lines += [", ".join(f"{k}: {v}" for k, v in info.items()) + ".", ""]
    lines += [table(["step", "time"], rows, "lr"), ""]
    return lines


def card(
    bundle: Path, evaluation: Mapping, timings: Optional[Path] = None, world: Optional[Path] = None
) -> str:
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or "teacher" not in manifest:
        raise SystemExit(f"error: {bundle / 'manifest.yaml'}: not a cosme bundle manifest")
    lines: List[str] = []
    for part in (
        header_section(manifest, bundle),
        contents_section(manifest, bundle),
        data_section(manifest, read_world(world)),
        teacher_section(manifest),
        student_section(manifest),
        memory_section(manifest),
        evaluation_section(evaluation, manifest),
        thresholds_section(manifest),
        build_section(read_timings(timings)),
    ):
        lines += part
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    p.add_argument("--evaluate", type=Path, required=True, help="JSON of cosme evaluate --json")
    p.add_argument("--timings", type=Path, help="timings.tsv of build_demo_bundle.sh")
    p.add_argument("--world", type=Path, help="folder with the synthetic train/val/test splits")
    p.add_argument("--out", help="where to write the card (default BUNDLE/README.md; - = stdout)")
    args = p.parse_args(argv)
    try:
        evaluation = json.loads(args.evaluate.read_text(encoding="utf-8"))
        text = card(args.bundle, evaluation, args.timings, args.world)
    except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out) if args.out else args.bundle / "README.md"
    from cosme_ros import atomic

    atomic.write_text(out, text)
    print(f"model card written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
