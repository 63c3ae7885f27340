"""``cosme bench``: how fast the pipeline and the node run, measured.

Default mode: frames (``--images DIR``, or the synthetic world) go through the node's whole path
— decode, preprocess, teacher, student, scoring, postprocess, render + encode + publish of all
five output topics — after ``--warmup`` frames; in the same run, alternating frame by frame, the
naive eager fp32 implementation (cosme_ros/tools/bench/naive.py) and a plain segmentation node (teacher +
argmax). Prints a table; ``--json F`` writes every number (medians, p95, ratios, peak RSS,
versions, CPU).

``--scorer-only``: the MulMem scorer alone on DeepLabV3+ R101 tap shapes (512×1024 input, OS 16)
with random features and unit prototypes, fast against naive at each ``--k``: time ratio, max
|ΔΓ| (must be ≤ 1e-5), peak extra memory against the chunk budget. No bundle needed.

``--sweep``: frame time against input size (256×512, 512×1024, 1024×2048) with the teacher's
FLOPs, and against K; writes sweep.md, sweep.png and sweep.json to ``--out``.

On a machine that is busy with other work use ``--threads 1``: with more OpenMP threads than
free cores every parallel region waits for its slowest, descheduled thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cosme_ros import atomic
from cosme_ros.cli.common import size_arg, write_json
from cosme_ros.errors import CosmeError
from cosme_ros.options import DEVICES, PRECISIONS


def _ks(text: str):
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k {text!r}: comma-separated integers, e.g. 128,512")
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k {text!r}: at least one K >= 1")
    return ks


def _sizes(text: str):
    return [size_arg(v.strip()) for v in text.split(",") if v.strip()]


def add_parser(sub) -> None:
    from cosme_ros.runtime.engines import BACKENDS

    p = sub.add_parser(
        "bench",
        help="measure frame time, stages, ratios and memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", help="bundle directory (not needed with --scorer-only)")
    p.add_argument(
        "--size", type=size_arg, help="network input HEIGHTxWIDTH (default: the " "bundle's)"
    )
    p.add_argument(
        "--camera",
        type=size_arg,
        help="camera frame HEIGHTxWIDTH, also the output "
        "size (default: 720x1280 synthetic frames, or the images as they are)",
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        help="real frames from this folder (default: " "the synthetic world)",
    )
    p.add_argument("--method", default="maxlogit", help="anomaly method (default maxlogit)")
    p.add_argument(
        "--refine",
        default="none",
        choices=("none", "guided"),
        help="time the method with its map refined by the guided filter (part of "
        "the scoring stage)",
    )
    p.add_argument("--frames", type=int, default=20, help="timed frames (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed frames first (default 3)")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="network precision; auto = bf16 where the device has native bf16",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive comparison")
    p.add_argument(
        "--engine",
        default="off",
        metavar="off|auto|BACKEND|DIR",
        help="time a compiled engine (`cosme export`) instead of the eager fast path, "
        "alternated with eager frame by frame (default off); falls back to eager with a note",
    )
    p.add_argument(
        "--backend",
        choices=("eager",) + tuple(b for b in BACKENDS if b != "auto"),
        help="time the bundle's engine of this backend against eager (ratio_engine_vs_eager); "
        "unlike --engine, an error when no engine of that backend fits",
    )
    p.add_argument("--no-publish", action="store_true", help="encode but do not publish")
    p.add_argument("--scorer-only", action="store_true", help="time the MulMem scorer alone")
    p.add_argument(
        "--k",
        type=_ks,
        default=[128, 512, 2048],
        metavar="K1,K2,..",
        help="prototypes per layer for --scorer-only and --sweep (default " "128,512,2048)",
    )
    p.add_argument(
        "--chunk-mb", type=float, help="scorer chunk budget in MiB (default: " "the library's)"
    )
    p.add_argument("--cdist", action="store_true", help="--scorer-only: also time torch.cdist")
    p.add_argument("--repeats", type=int, default=5, help="--scorer-only repeats (default 5)")
    p.add_argument("--sweep", action="store_true", help="frame time vs input size and vs K")
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        metavar="HxW,..",
        help="--sweep input sizes (default 256x512,512x1024,1024x2048)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="bench-sweep",
        help="--sweep: folder for sweep.md, sweep.png, sweep.json",
    )
    p.add_argument("--json", metavar="F", help="write the result as JSON to F")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(run=run)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _row(name: str, s, share=None) -> str:
    tail = f"{100 * share:6.1f} %" if share is not None else ""
    return f"  {name:<22}{s['median']:>10.1f}{s['p95']:>10.1f}  {tail}"


def print_frames(r) -> None:
    h, w = r["input_size"]
    ch, cw = r["camera_size"]
    method = r["method"] + ("" if r.get("refine", "none") == "none" else f"[refine={r['refine']}]")
    print(
        f"{r['bundle']} · {method} · {r['device']} {r['precision']} · input {h}x{w} · "
        f"camera {ch}x{cw} · {r['threads']} thread(s) · {r['frames']} frames ({r['source']})"
    )
    print(f"  {'stage':<22}{'median ms':>10}{'p95 ms':>10}  share")
    for s, v in r["stages_ms"].items():
        print(_row(s, v, r["stage_share"].get(s)))
    print(_row("pipeline", r["pipeline_ms"]))
    print(_row("frame (node)", r["frame_ms"]) + f"  {r['fps']:.2f} fps")
    if "teacher_only_ms" in r:
        print(_row("teacher only", r["teacher_only_ms"]))
    if "naive_ms" in r:
        print(_row("naive fp32", r["naive_ms"]))
    if "eager_pipeline_ms" in r:
        print(_row("eager pipeline", r["eager_pipeline_ms"]))
    keys = ("ratio_engine_vs_eager", "ratio_fast_vs_naive", "ratio_cosme_vs_teacher_only")
    for key in keys + ("ratio_node_vs_pipeline",):
        if key in r:
            print(f"  {key:<34}{r[key]:.3f}")
    print(
        f"  scoring + postprocess share of frame: {100 * r['scoring_postprocess_share']:.1f} %"
        f" · peak RSS {r['peak_rss_mb']:.0f} MiB ({r['peak_rss_mb_with_naive']:.0f} with naive)"
    )
    if r.get("engine_note"):
        print(f"  note: running eager, not the compiled engine: {r['engine_note']}")
    if r["node"]["note"]:
        print(f"  note: {r['node']['note']}")


def print_scorer(r) -> None:
    taps = ", ".join(f"{t} {c}x{h}x{w}" for t, (c, h, w) in r["taps"].items())
    print(
        f"MulMem scorer alone · {r['device']} · {r['threads']} thread(s) · taps {taps} · "
        f"chunk budget {r['chunk_mb']} MiB"
    )
    print(
        f"  {'K':>6}{'fast ms':>10}{'naive ms':>10}{'speed-up':>10}{'max|dG|':>10}"
        f"{'fast MiB':>10}{'naive MiB':>10}"
    )
    for row in r["results"]:
        pk = row["peak_extra_mb"]
        bound = row["bound_extra_mb"]
        fmt = lambda v, b: f"{v:.0f}" if v is not None else f"≤{b:.0f}"  # noqa: E731
        print(
            f"  {row['K']:>6}{row['fast_ms']['median']:>10.1f}{row['naive_ms']['median']:>10.1f}"
            f"{row['ratio_fast_vs_naive']:>9.2f}x{row['max_abs_diff_gamma']:>10.1e}"
            f"{fmt(pk['fast'], bound['fast']):>10}{fmt(pk['naive'], bound['naive']):>10}"
            + (f"   cdist {row['cdist_ms']['median']:.1f} ms" if "cdist_ms" in row else "")
        )


def run(args) -> int:
    from cosme_ros.tools import bench

    if args.frames < 1 or args.warmup < 0 or args.repeats < 1:
        raise CosmeError("--frames and --repeats must be >= 1, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        raise CosmeError("--threads must be >= 1")
    if args.json:
        atomic.check_writable(args.json, args.force)
    if args.scorer_only:
        chunk = None if args.chunk_mb is None else int(args.chunk_mb * 2**20)
        result = bench.bench_scorer(
            args.k,
            input_size=args.size or (512, 1024),
            repeats=args.repeats,
            warmup=min(args.warmup, 1),
            chunk_bytes=chunk,
            device=args.device,
            threads=args.threads,
            cdist=args.cdist,
            progress=_progress,
        )
        print_scorer(result)
    else:
        if not args.bundle:
            raise CosmeError("--bundle is required (except with --scorer-only)")
        from cosme_ros.bundle import Bundle

        bundle = Bundle.load(args.bundle)
        if args.sweep:
            out = Path(args.out)
            for name in ("sweep.md", "sweep.png", "sweep.json"):
                atomic.check_writable(out / name, args.force)
            result = bench.sweep(
                bundle,
                sizes=args.sizes or bench.SWEEP_SIZES,
                ks=args.k,
                k_size=args.size,
                frames=args.frames,
                warmup=args.warmup,
                device=args.device,
                precision=args.precision,
                threads=args.threads,
                images=args.images,
                progress=_progress,
            )
            table = bench.sweep_markdown(result)
            atomic.write_text(out / "sweep.md", table)
            bench.sweep_plot(result, out / "sweep.png")
            write_json(out / "sweep.json", result)
            print(table)
            print(f"sweep written to {out}/ (sweep.md, sweep.png, sweep.json)")
        else:
            from cosme_ros.runtime.engines import EngineUnavailable

            engine = args.engine
            if args.backend is not None:
                if args.engine != "off":
                    raise CosmeError("give --backend or --engine, not both")
                engine = "off" if args.backend == "eager" else args.backend
            try:
                result = bench.bench_frames(
                    bundle,
                    method=args.method,
                    input_size=args.size,
                    camera=args.camera,
                    frames=args.frames,
                    warmup=args.warmup,
                    device=args.device,
                    precision=args.precision,
                    threads=args.threads,
                    images=args.images,
                    naive=not args.no_naive,
                    publish=not args.no_publish,
                    refine=args.refine,
                    engine=engine,
                    require_engine=engine != "off" and args.backend is not None,
                    progress=_progress,
                )
            except EngineUnavailable as exc:
                raise CosmeError(
                    f"--backend {args.backend}: {exc} (build one with `cosme export --bundle "
                    f"{args.bundle} --backend {args.backend}`)"
                ) from None
            print_frames(result)
    if args.json:
        write_json(args.json, result)
    return 0
