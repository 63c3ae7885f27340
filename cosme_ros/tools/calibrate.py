"""Anomaly thresholds that belong to a bundle and a method: the logic behind ``cosme calibrate``.

A score threshold means nothing across bundles or methods (the demo bundle's CosMe scores sit
around 1, an ESPNetv2 bundle's MaxLogit between −29 and −2), so the node's ``anomaly/mask`` takes
its threshold from the bundle: for each method, the score that in-distribution pixels exceed at a
stated false-positive rate (1 % by default) on images the user names as normal driving. The
threshold is the ``(1 − fpr)`` quantile of their scores (``method="higher"``: at most ``fpr`` of
the sampled pixels are above it). Images with anomaly labels contribute their label-0 pixels only,
and the anomaly pixels give the true-positive rate at that threshold, which is reported beside it.

Scores are computed as the node computes them — :class:`~cosme_ros.tools.evaluate.MultiMethodRunner`
with the node's precision, at each image's own resolution — and a seeded, evenly spread sample
of at most ``pixels_per_image`` in-distribution pixels per image keeps memory bounded.

The bundle stores them under ``thresholds`` in its manifest, keyed by
:func:`~cosme_ros.runtime.thresholds.threshold_key`;
rebuilding the memory or the student removes them (they were measured on the old parts).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
from tqdm import tqdm

from cosme_ros.data.datasets import Dataset, subset_indices
from cosme_ros.errors import CosmeError

DEFAULT_FPR = 0.01
PIXELS_PER_IMAGE = 20000

__all__ = ["calibrate", "describe", "DEFAULT_FPR"]


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def calibrate(
    runner,
    dataset: Dataset,
    fpr: float = DEFAULT_FPR,
    *,
    max_images: Optional[int] = None,
    pixels_per_image: int = PIXELS_PER_IMAGE,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Dict[str, Dict[str, object]]:
    """{method: {value, fpr, tpr, images, pixels}} for every scorer of ``runner``.

    ``tpr`` is the share of anomaly pixels above the threshold (None without anomaly labels).
    """
    if not 0.0 < fpr < 1.0:
        raise CosmeError(f"false-positive rate must be in (0, 1), got {fpr}")
    indices = subset_indices(len(dataset), max_images)
    methods = list(runner.scorers)
    normal: Dict[str, List[np.ndarray]] = {m: [] for m in methods}
    anomalous: Dict[str, List[np.ndarray]] = {m: [] for m in methods}
    rng = np.random.default_rng(seed)
    used = 0
    for index in tqdm(
        indices, desc="calibrate", unit="img", disable=not progress, dynamic_ncols=True, leave=False
    ):
        sample = dataset[int(index)]
        size = sample.image.shape[:2]
        label = sample.anomaly if dataset.has_anomaly else None
        if label is not None and tuple(label.shape) != tuple(size):
            raise CosmeError(
                f"{sample.name}: anomaly label {label.shape[1]}x{label.shape[0]} "
                f"does not match the image {size[1]}x{size[0]}"
            )
        _, scores = runner(sample.image, size)
        normal_at = (
            np.flatnonzero(label.reshape(-1) == 0)
            if label is not None
            else np.arange(size[0] * size[1])
        )
        if normal_at.size == 0:
            continue
        used += 1
        pick = normal_at[_sample(normal_at.size, pixels_per_image, rng)]
        anomaly_at = np.flatnonzero(label.reshape(-1) == 1) if label is not None else None
        if anomaly_at is not None and anomaly_at.size:
            anomaly_at = anomaly_at[_sample(anomaly_at.size, pixels_per_image, rng)]
        for m in methods:
            flat = scores[m].reshape(-1)
            values = flat[pick]
            if not np.isfinite(values).all():
                raise CosmeError(f"method {m!r} gave non-finite scores on {sample.name}")
            normal[m].append(values.astype(np.float32, copy=False))
            if anomaly_at is not None and anomaly_at.size:
                anomalous[m].append(flat[anomaly_at].astype(np.float32, copy=False))
    if used == 0:
        raise CosmeError(
            f"{dataset.root}: no in-distribution pixels in the " f"{len(indices)} image(s)"
        )
    out: Dict[str, Dict[str, object]] = {}
    for m in methods:
        values = np.concatenate(normal[m])
        value = float(np.quantile(values, 1.0 - fpr, method="higher"))
        positives = np.concatenate(anomalous[m]) if anomalous[m] else None
        out[m] = {
            "value": value,
            "fpr": float(fpr),
            "measured_fpr": float((values > value).mean()),
            "tpr": None if positives is None else float((positives > value).mean()),
            "images": used,
            "pixels": int(values.size),
        }
    return out


def describe(entries: Mapping[str, Mapping[str, object]]) -> List[Tuple[str, str]]:
    """(method, one line) per threshold, for printing."""
    lines = []
    for m, e in entries.items():
        tpr = e.get("tpr")
        lines.append(
            (
                m,
                f"{e['value']:.6g} (in-distribution above it: "
                f"{100 * float(e['measured_fpr']):.2f} % of {e['pixels']} pixels"
                + (
                    f"; anomaly pixels above it: {100 * float(tpr):.1f} %"
                    if tpr is not None
                    else ""
                )
                + ")",
            )
        )
    return lines
