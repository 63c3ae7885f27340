"""``cosme bench --scorer``: MulMem's Γ (Eq. 3–4) alone on DeepLabV3+ R101 tap shapes, against
the naive form — time, max |ΔΓ| and peak extra memory against the chunk budget."""

from __future__ import annotations

import gc
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from cosme_ros.tools.bench.common import (
    R101_TAPS,
    SCORER_KS,
    Clock,
    Size,
    environment,
    peak_rss_mb,
    ratio,
    reset_peak_rss,
    rss_mb,
    summary,
)


def r101_tap_shapes(
    input_size: Size = (512, 1024), output_stride: int = 16, layers: Sequence[str] = R101_TAPS
) -> Dict[str, Tuple[int, int, int]]:
    """(C, H, W) of DeepLabV3+ R101's taps at ``input_size`` — read from the network's
    ``tap_channels`` / ``tap_strides``, built on the meta device (no weights, no memory)."""
    from cosme_ros.nets.deeplabv3plus import build_deeplabv3plus

    with torch.device("meta"):
        net = build_deeplabv3plus(backbone="resnet101", output_stride=output_stride)
    h, w = input_size
    return {
        t: (
            int(net.tap_channels[t]),
            math.ceil(h / net.tap_strides[t]),
            math.ceil(w / net.tap_strides[t]),
        )
        for t in layers
    }


def fix_malloc_threshold(threshold: int = 1 << 20) -> bool:
    """glibc only: serve allocations ≥ ``threshold`` with mmap and return them to the system when
    freed. By default glibc raises the threshold after each free (up to 32 MiB) and keeps the
    memory, so that a second allocation of the same size adds nothing to RSS and the peak of a
    later measurement hides it. Returns whether it took effect."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _trim() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure_peak(fn: Callable[[], Any]) -> Optional[float]:
    """Peak RSS above the RSS before ``fn`` (MiB), or None where the peak cannot be reset."""
    _trim()
    base = rss_mb()
    if not reset_peak_rss():
        return None
    fn()
    return max(0.0, peak_rss_mb() - base)


def bench_scorer(
    ks: Iterable[int] = SCORER_KS,
    *,
    input_size: Size = (512, 1024),
    repeats: int = 5,
    warmup: int = 1,
    chunk_bytes: Optional[int] = None,
    device: str = "cpu",
    threads: Optional[int] = None,
    cdist: bool = False,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """MulMem Γ (Eq. 3–4, :func:`cosme_ros.anomaly.memory.gamma`) against the naive form
    (:func:`cosme_ros.tools.bench.naive.naive_gamma`) on random R101 tap features (B = 1) and random unit
    prototypes, for each K; alternated repeat by repeat. ``cdist=True`` adds ``torch.cdist``."""
    from cosme_ros.anomaly import memory
    from cosme_ros.runtime.networks import resolve_device

    say = progress or (lambda _m: None)
    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(int(threads))
    clock = Clock(dev)
    budget = int(chunk_bytes if chunk_bytes is not None else memory.DEFAULT_CHUNK_BYTES)
    shapes = r101_tap_shapes(input_size)
    g = torch.Generator().manual_seed(seed)
    taps = {t: torch.randn((1,) + s, generator=g).to(dev) for t, s in shapes.items()}
    results, banks = [], {}
    for k in ks:
        k = int(k)
        banks[k] = {
            t: F.normalize(torch.randn(k, s[0], generator=g), dim=1).to(dev)
            for t, s in shapes.items()
        }
        variants = _variants(taps, banks[k], budget, cdist)
        row = _time_variants(variants, taps, banks[k], budget, clock, repeats, warmup)
        row = {"K": k, **row}
        row["bound_extra_mb"] = {
            "fast": round(_fast_bound(shapes, k, budget, dev) / 2**20, 3),
            "naive": round(_naive_bound(shapes, k) / 2**20, 3),
        }
        results.append(row)
        say(
            f"K={k}: fast {row['fast_ms']['median']:.1f} ms, naive "
            f"{row['naive_ms']['median']:.1f} ms ({row['ratio_fast_vs_naive']:.2f}x), "
            f"max |dGamma| {row['max_abs_diff_gamma']:.1e}"
        )
        del variants
    # Memory last: with the mmap threshold fixed, every large buffer is a fresh mapping whose
    # page faults would slow the timings (the blocked scorer allocates many 2 MiB blocks).
    malloc_fixed = fix_malloc_threshold()
    with torch.inference_mode():
        for row in results:
            variants = _variants(taps, banks[row["K"]], budget, cdist)
            peak = {n: _measure_peak(variants[n]) for n in ("fast", "naive")}
            row["peak_extra_mb"] = {
                n: (None if v is None else round(v, 3)) for n, v in peak.items()
            }
    fix_malloc_threshold(32 << 20)  # glibc's largest dynamic threshold: its warmed-up state
    return {
        "mode": "scorer",
        "device": str(dev),
        "input_size": list(input_size),
        "taps": {t: list(s) for t, s in shapes.items()},
        "repeats": repeats,
        "chunk_bytes": budget,
        "chunk_mb": round(budget / 2**20, 1),
        "results": results,
        "memory_note": "peak_extra_mb: peak RSS above the RSS before one call (VmHWM reset "
        "through /proc/self/clear_refs; glibc mmap threshold fixed at 1 MiB: "
        f"{malloc_fixed}); bound_extra_mb: computed from the shapes",
        **environment(dev),
    }


def _variants(taps, bank, budget: int, cdist: bool) -> Dict[str, Callable[[], torch.Tensor]]:
    """Γ three ways: the blocked scorer, the naive form and (``cdist``) torch.cdist."""
    from cosme_ros.anomaly import memory
    from cosme_ros.tools.bench import naive

    out = {
        "fast": lambda: memory.gamma(taps, bank, chunk_bytes=budget),
        "naive": lambda: naive.naive_gamma(taps, bank),
    }
    if cdist:
        out["cdist"] = lambda: _cdist_gamma(taps, bank)
    return out


def _time_variants(variants, taps, bank, budget: int, clock: Clock, repeats: int, warmup: int):
    """Times of every variant, alternated repeat by repeat, and the fast form's largest
    differences from the naive one (Γ and the per-layer max cosine)."""
    from cosme_ros.anomaly import memory
    from cosme_ros.tools.bench import naive

    with torch.inference_mode():
        for _ in range(warmup):
            for fn in variants.values():
                fn()
        times: Dict[str, List[float]] = {n: [] for n in variants}
        names = list(variants)
        for r in range(repeats):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                t0 = clock()
                variants[n]()
                times[n].append(clock() - t0)
        gamma_diff = float((variants["fast"]() - variants["naive"]()).abs().max())
        cos_diff = max(
            float(
                (
                    memory.max_cosine(taps[t], bank[t], chunk_bytes=budget)
                    - naive.naive_max_cosine(taps[t], bank[t])
                )
                .abs()
                .max()
            )
            for t in bank
        )
    row = {
        "fast_ms": summary(times["fast"]),
        "naive_ms": summary(times["naive"]),
        "max_abs_diff_gamma": gamma_diff,
        "max_abs_diff_cosine": cos_diff,
        "equal_to_1e-5": bool(gamma_diff <= 1e-5 and cos_diff <= 1e-5),
    }
    row["ratio_fast_vs_naive"] = ratio(row["naive_ms"]["median"], row["fast_ms"]["median"])
    if "cdist" in times:
        row["cdist_ms"] = summary(times["cdist"])
        row["ratio_fast_vs_cdist"] = ratio(row["cdist_ms"]["median"], row["fast_ms"]["median"])
    return row


def _cdist_gamma(taps, bank):
    from cosme_ros.tools.bench import naive

    size = max((tuple(taps[n].shape[-2:]) for n in bank), key=lambda s: s[0] * s[1])
    out = None
    for name, protos in bank.items():
        g = 1.0 - naive.cdist_max_cosine(taps[name], protos)
        if tuple(g.shape[-2:]) != size:
            g = F.interpolate(
                g.unsqueeze(1), size=size, mode="bilinear", align_corners=False
            ).squeeze(1)
        out = g if out is None else out * g
    return out


def _fast_bound(shapes, k: int, budget: int, device: torch.device) -> int:
    """Largest extra allocation of :func:`memory.max_cosine` for one layer (fp32 features): one
    block of the similarity and its max, the per-pixel max and norm; plus Γ's maps."""
    from cosme_ros.anomaly import memory

    worst = 0
    big = max(h * w for _, h, w in shapes.values())
    for c, h, w in shapes.values():
        n = h * w
        if device.type == "cpu":
            rows, kc = memory._cpu_blocks(k, max(1, min(budget, memory.CPU_BLOCK_BYTES)))
            rows = min(rows, n)
        else:
            rows, kc = n, max(1, min(k, budget // (n * 4)))
        worst = max(worst, rows * kc * 4 + rows * 12 + 2 * n * 4)
    return worst + 3 * big * 4


def _naive_bound(shapes, k: int) -> int:
    """The normalised copy plus the whole (H·W, K) similarity of the largest layer, + Γ's maps."""
    big = max(h * w for _, h, w in shapes.values())
    return max(h * w * (c + k + 2) * 4 for c, h, w in shapes.values()) + 3 * big * 4
