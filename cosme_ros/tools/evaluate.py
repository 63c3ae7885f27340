"""Evaluating anomaly methods on a labelled dataset: the logic behind ``cosme evaluate``.

:class:`MultiMethodRunner` runs the teacher — and the student, if any method needs it — **once per
image** with the union of the taps of all methods, then every scorer on those taps at the
resolution of the image's anomaly label (scorers upsample bilinearly to it). Preprocessing is
:meth:`cosme_ros.runtime.networks.Networks.preprocess`, as in the pipeline, so each method
scores exactly what ``Pipeline(bundle, method)`` would.

:func:`evaluate` pools the labelled pixels (1 anomaly, 0 in-distribution; everything else is
void) over the dataset and computes AUROC, AP and FPR95 per method (Fishyscapes convention,
:mod:`cosme_ros.metrics`):

- **exact** (default): the float32 scores of every labelled pixel are kept per method and
  :func:`cosme_ros.metrics.pixel_metrics` runs once per method at the end. Memory is about
  4 bytes × labelled pixels × methods (plus one label byte per pixel); before keeping anything
  the run is estimated from the first image and refused above ``memory_limit_gib`` with a message
  pointing to ``--binned`` / ``--max-images`` — never a silent switch;
- **binned** (``binned=True``): one :class:`cosme_ros.metrics.PixelMetricAccumulator` per method
  (2^16 bins by default; constant memory; its documented error bounds are reported).

Per-image AP (exact, on the image's own pixels) is computed for every method and image with both
classes. The *chosen* method is the one with the highest pooled AP. ROC / precision–recall curve
points are kept for plotting (:func:`write_plots`), as is a per-image overlay of the chosen
method's worst images (lowest per-image AP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from cosme_ros import atomic, metrics
from cosme_ros.frames.render import overlay
from cosme_ros.frames.sheets import label_panel
from cosme_ros.frames.writers import encode_image, figure_png
from cosme_ros.metrics import PooledPixels
from cosme_ros.anomaly.method_spec import MethodSpec, canonical, parse_method
from cosme_ros.anomaly.registry import METHODS, build_scorer
from cosme_ros.anomaly.scorers import Scorer
from cosme_ros.bundle import Bundle
from cosme_ros.data.datasets import Dataset, subset_indices
from cosme_ros.errors import CosmeError, MissingPartError
from cosme_ros.nets.taps import O, ordered
from cosme_ros.runtime.engines import attach
from cosme_ros.runtime.networks import Networks
from cosme_ros.runtime.pipeline import Postprocess

__all__ = [
    "select_methods",
    "MultiMethodRunner",
    "EvaluationReport",
    "evaluate",
    "markdown_table",
    "write_plots",
]


# ----------------------------------------------------------------------------- methods


def select_methods(
    bundle: Bundle, methods: Optional[Sequence[str]] = None
) -> Tuple[Dict[str, Scorer], Dict[str, str]]:
    """Scorers for ``methods`` and the methods skipped, with the reason.

    Each item is a method spec — a name of :data:`METHODS`, optionally with scorer options in
    brackets (``cosme[fusion=raw]``, :mod:`cosme_ros.anomaly.method_spec`) — and the scorer is
    keyed by the spec's canonical text, so an ablation is a row of its own. ``methods=None``
    means every method of :data:`METHODS`; those whose bundle parts are missing are skipped with
    the message saying what to build. An explicit list is a demand: a missing part raises
    :class:`MissingPartError` naming the command that builds it.
    """
    explicit = methods is not None
    specs: Dict[str, MethodSpec] = {}
    for m in methods if explicit else METHODS:
        if not m.strip():
            continue
        try:
            name, options = parse_method(m)
        except ValueError as exc:
            raise CosmeError(str(exc)) from None
        if name not in METHODS:
            raise CosmeError(f"unknown method {m.strip()!r}; choose from {', '.join(METHODS)}")
        specs.setdefault(canonical(name, options), (name, options))
    if not specs:
        raise CosmeError("no method given")
    parts = bundle.anomaly_parts()
    scorers: Dict[str, Scorer] = {}
    skipped: Dict[str, str] = {}
    for key, (name, options) in specs.items():
        try:
            scorers[key] = build_scorer(name, parts, input_height=bundle.input_size[0], **options)
        except MissingPartError as exc:
            if explicit:
                raise MissingPartError(f"{bundle.path}: {exc}") from None
            skipped[key] = str(exc)
        except ValueError as exc:
            raise CosmeError(f"{key}: {exc}") from None
    if not scorers:
        raise MissingPartError(
            f"{bundle.path}: none of the methods can run: " + "; ".join(skipped.values())
        )
    return scorers, skipped


class MultiMethodRunner:
    """Teacher (+ student) once per image with the union of taps, then every scorer.

    The networks run as the pipeline runs them (:class:`~cosme_ros.runtime.networks.Networks`:
    BatchNorm folded, channels_last on the CPU, ``precision`` autocast), and the class map and
    refinement guide come from the same :class:`~cosme_ros.runtime.pipeline.Postprocess`, so the
    metrics are those of the node with the same settings; ``precision="fp32"`` (default) gives
    the reference numbers. The scorers must be built for the bundle's input size
    (:func:`select_methods` does).
    """

    def __init__(
        self,
        bundle: Bundle,
        scorers: Dict[str, Scorer],
        device: str = "cpu",
        precision: str = "fp32",
        engine: str = "off",
    ):
        self.bundle = bundle
        self.scorers = dict(scorers)
        taps = SimpleNamespace(
            teacher_taps=ordered(*(s.teacher_taps for s in scorers.values()), (O,)),
            student_taps=ordered(*(s.student_taps for s in scorers.values())),
        )
        eager = Networks(
            bundle, taps.teacher_taps, taps.student_taps, device=device, precision=precision
        )
        # every method's taps from one engine, or eager with the reason (runtime/engines.py)
        attached = attach(eager, taps, ", ".join(scorers), engine)
        self.networks, self.backend = attached.networks, attached.backend
        self.engine_note, self.engine_fallback = attached.note, attached.fallback
        self.device = self.networks.device
        self.precision = self.networks.precision
        self.input_size = self.networks.input_size
        self.post = Postprocess(bundle.teacher_align_corners, self.device)
        if self.networks.tap_channels is not None:
            bundle.check_parts_fit(bundle.anomaly_parts(), self.networks.tap_channels)

    @torch.inference_mode()
    def __call__(
        self,
        image_rgb: np.ndarray,
        out_size: Tuple[int, int],
        methods: Optional[Sequence[str]] = None,
        classes: bool = False,
    ) -> Tuple[Optional[np.ndarray], Dict[str, np.ndarray]]:
        """({method: float32 score (H, W)} at ``out_size``, with the class map (H, W) uint8 first
        when ``classes`` — else None — as the pipeline computes it)."""
        out_size = (int(out_size[0]), int(out_size[1]))
        teacher, student = self.networks(self.networks.preprocess([image_rgb]))
        names = list(methods or self.scorers)
        guide = self.post.guide([image_rgb], out_size, [self.scorers[n] for n in names])
        scores = {
            n: self.scorers[n](teacher, student, out_size, guide)[0].float().cpu().numpy()
            for n in names
        }
        class_map = None
        if classes:
            class_map = self.post.classes(teacher[O].float(), out_size)[0]
            class_map = class_map.to(torch.uint8).cpu().numpy()
        return class_map, scores


# ----------------------------------------------------------------------------- report


@dataclass
class EvaluationReport:
    methods: Dict[str, Dict[str, float]]  # method → auroc / ap / fpr95 (percent)
    skipped: Dict[str, str]  # method → why it was not evaluated
    best_method: str
    per_image: List[Dict]  # index, name, size, pixels, ap per method
    pixels: Dict[str, int]  # anomaly / in_distribution / void
    mode: str  # "exact" or "binned"
    images: int
    label_sizes: List[List[int]]
    input_size: List[int]
    curves: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    error_bounds: Dict[str, Dict[str, float]] = field(default_factory=dict)
    images_without_labelled_pixels: List[str] = field(default_factory=list)

    def worst_images(self, n: int, method: Optional[str] = None) -> List[Dict]:
        """The ``n`` images with the lowest per-image AP of ``method`` (default: the best)."""
        method = method or self.best_method
        rated = [r for r in self.per_image if r["ap"].get(method) is not None]
        return sorted(rated, key=lambda r: (r["ap"][method], r["index"]))[: max(0, n)]

    def to_json(self) -> Dict:
        best = self.best_method
        return {
            "methods": self.methods,
            "skipped": self.skipped,
            "best_method": best,
            "metric_mode": self.mode,
            **({"error_bounds": self.error_bounds} if self.error_bounds else {}),
            "per_image_ap": {
                "method": best,
                "images": [
                    {
                        "name": r["name"],
                        "ap": r["ap"].get(best),
                        "anomaly_pixels": r["anomaly"],
                        "in_distribution_pixels": r["in_distribution"],
                    }
                    for r in self.per_image
                ],
            },
            "per_image": [
                {"name": r["name"], "size": r["size"], "ap": r["ap"]} for r in self.per_image
            ],
            "pixels": self.pixels,
            "sizes": {
                "images": self.images,
                "input_size": self.input_size,
                "label_sizes": self.label_sizes,
            },
            "images_without_labelled_pixels": self.images_without_labelled_pixels,
        }


def markdown_table(report: EvaluationReport, dataset_title: str) -> str:
    """A table like the paper's Table 2: one row per method, AUROC ↑ / AP ↑ / FPR95 ↓ (%),
    the best of each column in bold."""
    names = list(report.methods)
    cols = (("auroc", "AUROC ↑", max), ("ap", "AP ↑", max), ("fpr95", "FPR95 ↓", min))
    best = {key: pick(report.methods[m][key] for m in names) for key, _, pick in cols}
    header = "| Method | " + " | ".join(f"{dataset_title} {h}" for _, h, _ in cols) + " |"
    lines = [header, "|---|" + "---:|" * len(cols)]
    for m in names:
        cells = []
        for key, _, _ in cols:
            v = report.methods[m][key]
            text = f"{v:.2f}"
            cells.append(f"**{text}**" if math.isclose(v, best[key], abs_tol=5e-3) else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    foot = [
        f"{report.images} images, {report.pixels['anomaly']} anomaly / "
        f"{report.pixels['in_distribution']} in-distribution pixels, pooled "
        f"({report.mode} metrics)."
    ]
    if report.skipped:
        foot.append(
            "Not evaluated: " + "; ".join(f"{m} — {why}" for m, why in report.skipped.items())
        )
    return "\n".join(lines) + "\n\n" + "\n\n".join(foot) + "\n"


# ----------------------------------------------------------------------------- evaluation


def _ap(m: Optional[Dict[str, float]]) -> Optional[float]:
    return None if m is None else float(m["ap"])


def _score_images(runner, dataset: Dataset, indices, first, pooled: PooledPixels, progress: bool):
    """Every image through the runner, pooled; (per-image rows with each method's AP, the label
    sizes met, the names of images without labelled pixels)."""
    methods = list(runner.scorers)
    per_image: List[Dict] = []
    sizes: List[List[int]] = []
    empty: List[str] = []
    n = len(indices)
    for pos in tqdm(
        range(n),
        desc="evaluate",
        unit="img",
        disable=not progress or n < 2,
        dynamic_ncols=True,
        leave=False,
    ):
        index = int(indices[pos])
        sample = first if pos == 0 else dataset[index]
        label = sample.anomaly
        size = list(label.shape)
        if size not in sizes:
            sizes.append(size)
        if not ((label == 0) | (label == 1)).any():
            pooled.add({}, label, sample.name)  # counts its void pixels
            empty.append(sample.name)
            continue
        _, scores = runner(sample.image, label.shape)
        y, picked = pooled.add(scores, label, sample.name)
        per_image.append(
            {
                "index": index,
                "name": sample.name,
                "size": size,
                "anomaly": int((y == 1).sum()),
                "in_distribution": int((y == 0).sum()),
                "ap": {m: _ap(metrics.image_metrics(picked[m], y)) for m in methods},
            }
        )
    return per_image, sizes, empty


def evaluate(
    runner: MultiMethodRunner,
    dataset: Dataset,
    skipped: Optional[Dict[str, str]] = None,
    *,
    max_images: Optional[int] = None,
    binned: bool = False,
    bins: int = 1 << 16,
    memory_limit_gib: float = 4.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> EvaluationReport:
    """Score every image with every method and pool the metrics (module docstring).

    ``max_images`` takes that many images spread evenly over the dataset
    (:func:`~cosme_ros.data.datasets.subset_indices`), not the first ones.
    """
    if not dataset.has_anomaly:
        raise CosmeError(
            f"{dataset.root}: a {dataset.kind} dataset has no anomaly labels; "
            f"evaluate needs road_anomaly, folder (Fishyscapes, SegmentMeIfYouCan), "
            f"streethazards --split test or a synthetic test split"
        )
    indices = subset_indices(len(dataset), max_images)
    n = len(indices)
    methods = list(runner.scorers)
    pooled = PooledPixels(
        methods,
        n,
        binned=binned,
        bins=bins,
        memory_limit_gib=memory_limit_gib,
        advice="use --binned (histogram metrics with reported error bounds), --max-images, "
        "or raise --memory-limit",
    )
    first = dataset[int(indices[0])]
    # Estimated from the first image, before any work: refuse rather than swap or fall back.
    labelled = int(((first.anomaly == 0) | (first.anomaly == 1)).sum()) or first.anomaly.size
    pooled.check_memory(labelled)
    per_image, sizes, empty = _score_images(runner, dataset, indices, first, pooled, progress)
    if not pooled.has_both_classes:
        raise CosmeError(
            f"{dataset.root}: the {n} image(s) have {pooled.pixels['anomaly']} anomaly and "
            f"{pooled.pixels['in_distribution']} in-distribution pixels; the metrics need "
            f"both"
        )
    result = pooled.compute(curves=True)
    results = result.metrics
    best = max(methods, key=lambda m: (results[m]["ap"], -methods.index(m)))
    return EvaluationReport(
        methods=results,
        skipped=dict(skipped or {}),
        best_method=best,
        per_image=per_image,
        pixels=pooled.pixels,
        mode="binned" if binned else "exact",
        images=n,
        label_sizes=sizes,
        input_size=list(runner.input_size),
        curves=result.curves,
        error_bounds=result.error_bounds,
        images_without_labelled_pixels=empty,
    )


# ----------------------------------------------------------------------------- pictures


def write_plots(
    report: EvaluationReport,
    runner: MultiMethodRunner,
    dataset: Dataset,
    out_dir: Path,
    title: str,
    worst: int = 3,
    force: bool = False,
    outputs: Optional[atomic.OutputSet] = None,
) -> List[Path]:
    """``roc.png``, ``pr.png`` (all methods) and ``worst_<i>_<name>.png`` overlays of the best
    method's worst images (image + ground truth | class colours | anomaly heatmap). With
    ``outputs`` the files are staged there (renamed with the command's other outputs) instead
    of written in place. Returns the target paths."""
    import cv2

    out_dir = Path(out_dir)
    worst_rows = report.worst_images(worst)
    targets = {"roc": out_dir / "roc.png", "pr": out_dir / "pr.png"}
    overlay_paths = []
    for rank, row in enumerate(worst_rows, 1):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in row["name"])
        overlay_paths.append(out_dir / f"worst_{rank}_{safe}.png")
    for path in [*targets.values(), *overlay_paths]:
        atomic.check_writable(path, force)

    def write(path: Path, data: bytes) -> None:
        if outputs is not None:
            outputs.file(path).write_bytes(data)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(path, data)

    write(targets["roc"], figure_png(lambda ax: _roc(ax, report, title)))
    write(targets["pr"], figure_png(lambda ax: _pr(ax, report, title)))
    written = list(targets.values())
    for row, path in zip(worst_rows, overlay_paths):
        sample = dataset[row["index"]]
        classes, scores = runner(
            sample.image, sample.anomaly.shape, [report.best_method], classes=True
        )
        image = sample.image
        if image.shape[:2] != sample.anomaly.shape:
            image = cv2.resize(image, sample.anomaly.shape[::-1], interpolation=cv2.INTER_AREA)
        picture = np.concatenate(
            [
                label_panel(image, sample.anomaly),
                overlay(image, classes, scores[report.best_method], runner.bundle.palette),
            ],
            axis=1,
        )
        write(path, encode_image(picture))
        written.append(path)
    return written


def _roc(ax, report: EvaluationReport, title: str) -> None:
    for m in report.methods:
        c = report.curves[m]
        ax.plot(c["fpr"], c["tpr"], label=f"{m} (AUROC {report.methods[m]['auroc']:.1f})")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    ax.axhline(0.95, color="0.7", linestyle="--", linewidth=0.8)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=f"ROC — {title}",
    )
    ax.legend(loc="lower right", fontsize=7)


def _pr(ax, report: EvaluationReport, title: str) -> None:
    base = report.pixels["anomaly"] / (report.pixels["anomaly"] + report.pixels["in_distribution"])
    for m in report.methods:
        c = report.curves[m]
        ax.plot(c["recall"], c["precision"], label=f"{m} (AP {report.methods[m]['ap']:.1f})")
    ax.axhline(base, color="0.7", linestyle=":", linewidth=1)
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=f"Precision–recall — {title}",
    )
    ax.legend(loc="upper right", fontsize=7)
