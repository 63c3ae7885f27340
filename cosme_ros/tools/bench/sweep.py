"""``cosme bench --sweep``: pipeline time against the network input size (with the teacher's
FLOPs) and against the memory size K."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cosme_ros.runtime.pipeline import PIPELINE_STAGES
from cosme_ros.tools.bench.frames import frame_stages
from cosme_ros.tools.bench.common import (
    R101_TAPS,
    SCORER_KS,
    SWEEP_SIZES,
    Clock,
    Size,
    environment,
    folder_frames,
    ratio,
    summary,
    synthetic_frames,
)


def teacher_gflops(
    teacher: torch.nn.Module, input_size: Size, taps=("o",), device: torch.device | str = "cpu"
) -> float:
    """Multiply-adds × 2 of one teacher forward at ``input_size`` (convolutions and matmuls,
    counted by ``torch.utils.flop_counter.FlopCounterMode``), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        teacher(x, taps=taps)
    return counter.get_total_flops() / 1e9


def random_memory_parts(pipe, k: int, layers: Sequence[str] = R101_TAPS, seed: int = 0):
    """AnomalyParts with K random unit prototypes per layer, for the teacher of ``pipe``."""
    from cosme_ros.anomaly.parts import AnomalyParts

    g = torch.Generator().manual_seed(seed)
    chans = pipe.networks.tap_channels
    bank = {t: F.normalize(torch.randn(k, chans[t], generator=g), dim=1) for t in layers}
    return AnomalyParts(memory=bank, memory_layers=tuple(layers))


def _alternate(
    calls: Mapping[str, Callable[[int], Dict[str, float]]], frames: int, warmup: int
) -> Dict[str, Dict[str, List[float]]]:
    """Run every variant on frame i before any runs frame i + 1 (rotating who goes first);
    {variant: {stage: [seconds]}}."""
    for i in range(warmup):
        for fn in calls.values():
            fn(i)
    names = list(calls)
    out: Dict[str, Dict[str, List[float]]] = {n: {} for n in names}
    for i in range(frames):
        for n in names[i % len(names) :] + names[: i % len(names)]:
            for stage, v in calls[n](i).items():
                out[n].setdefault(stage, []).append(v)
    return out


def sweep(
    bundle,
    *,
    sizes: Sequence[Size] = SWEEP_SIZES,
    ks: Sequence[int] = SCORER_KS,
    k_size: Optional[Size] = None,
    frames: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    precision: str = "auto",
    threads: Optional[int] = None,
    images: Optional[str | Path] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Pipeline time (maxlogit; preprocess → postprocess, no node) against the network input
    size — frames rendered at that size — with the teacher's GFLOPs; then against K (MulMem, K
    random unit prototypes per layer, unstandardised Γ) at ``k_size`` (default: the bundle's
    input size). The sizes alternate frame by frame, and so do the Ks."""
    from cosme_ros.anomaly.registry import build_scorer
    from cosme_ros.bundle import Bundle
    from cosme_ros.runtime.pipeline import Pipeline

    say = progress or (lambda _m: None)
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if threads is not None:
        torch.set_num_threads(int(threads))
    n_src = max(1, min(frames, 4))

    def source(size: Size) -> List[np.ndarray]:
        if images is not None:
            return folder_frames(images, n_src, size)
        return synthetic_frames(n_src, size)

    by_size = _by_size(bundle, sizes, source, frames, warmup, device, precision, say)
    k_size = tuple(k_size or bundle.input_size)
    pipe = Pipeline(bundle, "maxlogit", device=device, input_size=k_size, precision=precision)
    layers = [t for t in R101_TAPS if t in (pipe.networks.tap_channels or {})]
    src = source(k_size)
    scorers = {
        int(k): build_scorer(
            "mulmem",
            random_memory_parts(pipe, int(k), layers),
            input_height=k_size[0],
            standardize=False,
        )
        for k in ks
    }
    say(f"K: {', '.join(map(str, scorers))} at {k_size[0]}x{k_size[1]}, alternating")
    times = _alternate(
        {str(k): _runner(pipe.with_scorer(s), src) for k, s in scorers.items()}, frames, warmup
    )
    by_k = []
    for k in scorers:
        st = times[str(k)]
        total, scoring = summary(st["pipeline"]), summary(st["scoring"])
        by_k.append(
            {
                "K": k,
                "pipeline_ms": total,
                "scoring_ms": scoring,
                "scoring_share": round(scoring["median"] / total["median"], 4),
            }
        )
    return {
        "mode": "sweep",
        "bundle": bundle.name,
        "device": str(pipe.device),
        "precision": pipe.precision,
        "frames": frames,
        "memory_layers": layers,
        "k_input_size": list(k_size),
        "by_size": by_size,
        "by_k": by_k,
        **environment(pipe.device),
    }


def _runner(pipe, src: List[np.ndarray]) -> Callable[[int], Dict[str, float]]:
    """Frame i of ``src`` through ``pipe`` → its stage times (no node)."""
    clock = Clock(pipe.device)
    return lambda i: frame_stages(
        pipe, None, None, src[i % len(src)], src[i % len(src)].shape[:2], clock
    )[0]


def _by_size(bundle, sizes, source, frames: int, warmup: int, device, precision, say) -> List[Dict]:
    """Pipeline time (maxlogit) against the input size, with the teacher's GFLOPs, the sizes
    alternating frame by frame; time and FLOP ratios against the first size."""
    from cosme_ros.runtime.pipeline import Pipeline

    pipes = {}
    by_size = []
    for size in sizes:
        size = (int(size[0]), int(size[1]))
        pipe = Pipeline(bundle, "maxlogit", device=device, input_size=size, precision=precision)
        gflops = teacher_gflops(pipe.networks.teacher, size, device=pipe.device)
        pipes[size] = (pipe, source(size))
        by_size.append({"input_size": list(size), "gflops": round(gflops, 3)})
    say(f"sizes: {', '.join(f'{h}x{w}' for h, w in pipes)}, {frames} frame(s) each, alternating")
    times = _alternate({f"{h}x{w}": _runner(*v) for (h, w), v in pipes.items()}, frames, warmup)
    for row in by_size:
        st = times["{}x{}".format(*row["input_size"])]
        row["pipeline_ms"] = summary(st["pipeline"])
        row["stages_ms"] = {k: summary(st[k]) for k in PIPELINE_STAGES if k in st}
        row["ms_per_gflop"] = round(row["pipeline_ms"]["median"] / row["gflops"], 3)
    base = by_size[0]
    for row in by_size:
        row["time_ratio"] = ratio(row["pipeline_ms"]["median"], base["pipeline_ms"]["median"])
        row["flop_ratio"] = round(row["gflops"] / base["gflops"], 3)
    return by_size


def sweep_markdown(result: Mapping[str, Any]) -> str:
    """The sweep as two markdown tables (for BENCHMARKS.md)."""
    lines = [
        f"Bundle `{result['bundle']}`, {result['device']} ({result.get('cpu_model', '')}), "
        f"precision {result['precision']}, {result['threads']} thread(s), "
        f"median of {result['frames']} frames; the sizes (and the Ks) alternate frame by "
        "frame in one run.",
        "",
        "| input (H×W) | teacher GFLOP | pipeline ms (median) | p95 | time ratio | "
        "FLOP ratio | ms / GFLOP |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["by_size"]:
        h, w = r["input_size"]
        lines.append(
            f"| {h}×{w} | {r['gflops']:.2f} | {r['pipeline_ms']['median']:.1f} | "
            f"{r['pipeline_ms']['p95']:.1f} | {r['time_ratio']:.2f} | "
            f"{r['flop_ratio']:.2f} | {r['ms_per_gflop']:.1f} |"
        )
    h, w = result["k_input_size"]
    lines += [
        "",
        f"MulMem with K random prototypes per layer ({', '.join(result['memory_layers'])})"
        f" at {h}×{w}:",
        "",
        "| K | pipeline ms (median) | scoring ms | scoring share |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in result["by_k"]:
        lines.append(
            f"| {r['K']} | {r['pipeline_ms']['median']:.1f} | "
            f"{r['scoring_ms']['median']:.1f} | {100 * r['scoring_share']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def sweep_plot(result: Mapping[str, Any], path: str | Path) -> None:
    """Frame time against teacher GFLOPs (input size) and against K, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["gflops"] for r in result["by_size"]]
    ys = [r["pipeline_ms"]["median"] for r in result["by_size"]]
    a.plot(xs, ys, "o-", label="measured")
    a.plot(xs, [ys[0] * x / xs[0] for x in xs], "--", label="∝ FLOPs")
    for r, x, y in zip(result["by_size"], xs, ys):
        a.annotate(
            f"{r['input_size'][0]}×{r['input_size'][1]}",
            (x, y),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    a.set(xlabel="teacher GFLOP", ylabel="pipeline ms (median)", title="input size")
    a.legend()
    ks = [r["K"] for r in result["by_k"]]
    b.plot(ks, [r["pipeline_ms"]["median"] for r in result["by_k"]], "o-", label="pipeline")
    b.plot(ks, [r["scoring_ms"]["median"] for r in result["by_k"]], "s-", label="scoring")
    b.set_xscale("log", base=2)
    b.set_xticks(ks, [str(k) for k in ks])
    b.minorticks_off()
    b.set(xlabel="K (prototypes per layer)", ylabel="ms (median)", title="memory size")
    b.legend()
    fig.suptitle(f"{result['bundle']} — {result['device']}, {result['precision']}")
    fig.tight_layout()
    from cosme_ros import atomic

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
