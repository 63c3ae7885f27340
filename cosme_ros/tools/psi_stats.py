"""The Ψ statistics pass: per-class mean and std of Ψ over training pixels, for the standardised Ψ.

Eq. 6's ψ is an absolute squared error, so its scale follows the teacher's feature energy — it
differs from class to class as the max logit does for SML. :class:`~.anomaly.scorers.AuxConScorer`
can standardise Ψ per predicted class (``auxcon[standardize=true]``, beyond the paper), with the
statistics this pass gathers in one pass of teacher and student over the training images:

- for every distance of :data:`~.anomaly.consensus.DISTANCES`;
- for the bundle's consensus layers Le, and for each single tap the student reproduces (the
  ``auxcon[layers=…]`` / ``cosme[consensus=…]`` ablations);
- at Ψ's own resolution, with the class of each pixel the argmax of the logits resized there —
  exactly what the scorer standardises (it calls the same :func:`~.anomaly.consensus.psi` and
  :func:`~.anomaly.scorers.predicted_classes`).

The statistics belong to one student: the anomaly section records the student's SHA-256
(``psi_stats.student_sha256``), and a bundle whose student was replaced without a new pass loses
them (:meth:`cosme_ros.bundle.Bundle.anomaly_parts`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from cosme_ros.anomaly import consensus
from cosme_ros.anomaly.parts import psi_key
from cosme_ros.anomaly.scorers import predicted_classes
from cosme_ros.anomaly.standardize import ClassStats, ClassStatsAccumulator
from cosme_ros.bundle import Bundle
from cosme_ros.data.datasets import prefetched_batches, source_chunks, subset_indices
from cosme_ros.errors import CosmeError
from cosme_ros.nets.taps import ALL_TAPS, O, ordered
from cosme_ros.runtime.networks import Networks

__all__ = ["consensus_layer_sets", "gather_psi_stats", "add_psi_stats"]


def consensus_layer_sets(bundle: Bundle) -> List[Tuple[str, ...]]:
    """The bundle's consensus layers, then each single tap both networks have (no ``o``: the
    logits are the class evidence, not a feature)."""
    le = ordered(bundle.anomaly_layers()["consensus_layers"])
    student_taps = bundle.manifest["student"]["config"].get("taps") or ALL_TAPS
    singles = [(t,) for t in ALL_TAPS if t != O and t in student_taps and (t,) != tuple(le)]
    return [tuple(le), *singles]


def gather_psi_stats(
    bundle: Bundle,
    dataset,
    *,
    device: str = "cpu",
    max_images: Optional[int] = None,
    batch: int = 8,
    workers: int = 2,
    layer_sets: Optional[Iterable[Sequence[str]]] = None,
    progress: bool = True,
) -> Tuple[Dict[str, ClassStats], Dict[str, Any]]:
    """One pass over ``dataset`` (``max_images`` evenly spaced images, all by default) →
    ``({psi_key: ClassStats}, record)``; nothing is written."""
    if not bundle.has_student:
        raise CosmeError(
            f"{bundle.path}: the Ψ statistics need a student: run `cosme " f"train-student`"
        )
    sets = [ordered(s) for s in (layer_sets or consensus_layer_sets(bundle))]
    taps = ordered(*sets)
    networks = Networks(bundle, ordered(taps, (O,)), taps, device=device)
    align = bundle.teacher_align_corners
    accs = {
        psi_key(d, s): ClassStatsAccumulator(bundle.num_classes)
        for d in consensus.DISTANCES
        for s in sets
    }
    subset = subset_indices(len(dataset), max_images)
    # One source per chunk: a Mixture's sources run at their own input sizes.
    chunks = source_chunks(subset, batch, getattr(dataset, "groups", None))
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
    try:
        with (
            torch.inference_mode(),
            tqdm(
                total=len(chunks),
                desc="Ψ statistics",
                unit="batch",
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for samples in prefetched_batches(dataset, chunks, pool):
                images = [s.image for s in samples]
                teacher, student = networks(networks.preprocess(images, samples[0].input_size))
                classes: Dict[Tuple[int, int], torch.Tensor] = {}
                for distance in consensus.DISTANCES:
                    for layers in sets:
                        psi = consensus.psi(teacher, student, layers, distance=distance)
                        size = tuple(psi.shape[-2:])
                        if size not in classes:
                            classes[size] = predicted_classes(teacher[O], size, align)
                        accs[psi_key(distance, layers)].update(psi, classes[size])
                bar.update(1)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    try:
        stats = {key: acc.finalize() for key, acc in accs.items()}
    except ValueError as exc:
        raise CosmeError(f"Ψ statistics: {exc}") from None
    record = {
        "images": int(len(subset)),
        "input_size": list(networks.input_size),
        "distances": list(consensus.DISTANCES),
        "layers": ["+".join(s) for s in sets],
        "student_sha256": bundle.student_sha256(),
    }
    return stats, record


def add_psi_stats(bundle: Bundle, stats: Dict[str, ClassStats], record: Dict[str, Any]) -> None:
    """Write ``stats`` into the bundle's anomaly part beside what it holds (replacing earlier Ψ
    statistics); the calibrated thresholds stay — no existing score changes."""
    if not bundle.has_anomaly:
        raise CosmeError(
            f"{bundle.path}: no anomaly part to hold the Ψ statistics yet: "
            f"`cosme build-memory` gathers them when the bundle has a student"
        )
    parts = bundle.anomaly_parts()
    parts.psi_stats = dict(stats)
    section = {
        k: v for k, v in bundle.manifest["anomaly"].items() if k not in ("weights", "sha256")
    }
    section["psi_stats"] = dict(record)
    bundle.write_part("anomaly", section, parts.to_tensors(), keep_thresholds=True)


def summary(stats: Dict[str, ClassStats], bundle: Bundle) -> str:
    """One line per distance: the pooled mean of Ψ over the bundle's consensus layers."""
    le = consensus_layer_sets(bundle)[0]
    parts = []
    for d in consensus.DISTANCES:
        st = stats.get(psi_key(d, le))
        if st is not None and st.count is not None:
            w = st.count.double() / st.count.double().sum().clamp_min(1)
            parts.append(f"{d} {float((w * st.mean.double()).sum()):.4g}")
    return f"Ψ over {'+'.join(le)}: pooled mean " + ", ".join(parts)
