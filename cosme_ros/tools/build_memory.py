"""Building a bundle's anomaly part from training images: the logic behind ``cosme build-memory``.

One teacher, one dataset, three passes (docs/ARCHITECTURE.md):

1. **Algorithm 1** — :meth:`MulMemBuilder.init_step` over shuffled batches until every memory
   layer holds K prototypes, for at most ``init_passes`` passes over the data; if the data run out
   first, :meth:`~MulMemBuilder.finish_init` keeps what was found and the shortfall per layer is
   reported (and recorded in the manifest).
2. **Algorithm 2** — :meth:`MulMemBuilder.learn_step` over every batch, for ``epochs`` epochs (each
   its own shuffle).
3. **Statistics**, one more pass with the final prototypes:

   - MulMem: Γ per predicted class, from :func:`cosme_ros.anomaly.scorers.mulmem_gamma` — the
     very function :class:`MulMemScorer` standardises — so the statistics describe exactly the
     values the scorer sees (Γ at the largest memory-layer resolution, class = argmax of the logits
     resized there);
   - SML: the max logit per predicted class *after resizing the logits to the image's own size*
     with the scorer's resize, as :class:`SMLScorer` does by default (``upsample_logits=True``,
     ``out_size`` = the image size for ``Pipeline`` and label size for ``cosme evaluate``; the SML
     release gathers them on the logits upsampled to the input image, too);
   - PAnS: per-class prototypes of the LH feature (:class:`ClassPrototypeAccumulator`). The class of
     a pixel is its **ground-truth label** when the dataset has semantic labels and the bundle's
     first 19 classes are the Cityscapes trainIds the readers produce (labels are resized to LH's
     resolution by nearest neighbour; void 255 is skipped), otherwise the teacher's
     **pseudo-label** (argmax at LH's resolution) with the bundle's void classes skipped.
     ``pans_labels`` forces one or the other.

Images are preprocessed by :meth:`cosme_ros.runtime.pipeline.Pipeline.preprocess` (resized to the bundle's
input size, normalised) and the teacher runs in eval mode under ``torch.inference_mode``.

**Distributed** (``torchrun --nproc_per_node N``; :class:`cosme_ros.distributed.Distributed`):
every pass follows
one global schedule — a seeded permutation of the images cut into global batches of ``batch``
images — and rank r takes the r-th contiguous slice of each global batch
(``numpy.array_split``, rank order). That is exactly :class:`MulMemBuilder`'s documented
equivalence (N ranks given b_0 … b_{N−1} at step t build what one process builds from their
concatenation), so the memory does not depend on the number of processes; a rank whose slice is
empty runs the teacher on an empty batch to keep the collectives in step. The statistics
accumulators are all-reduced (sums), so they match one process up to float64 summation order.

**Resuming**: with a ``checkpoint`` path the builder state is saved (atomically, by rank 0) after
Algorithm 1 and after every epoch of Algorithm 2, with a fingerprint of everything that
determines the result; ``resume=True`` continues from it when the fingerprint matches (any
number of processes). The statistics pass is short and is always redone. Nothing is written to
the bundle here: the caller writes the returned parts once everything is complete.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from cosme_ros import __version__, atomic, distributed
from cosme_ros.anomaly import baselines
from cosme_ros.anomaly.baselines import ClassPrototypeAccumulator
from cosme_ros.anomaly.memory import MulMemBuilder
from cosme_ros.anomaly.parts import AnomalyParts, paper_layers
from cosme_ros.anomaly.scorers import mulmem_gamma, predicted_classes, resize
from cosme_ros.anomaly.standardize import ClassStatsAccumulator
from cosme_ros.bundle import Bundle
from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES
from cosme_ros.data.datasets import Dataset, Sample, prefetched_batches, subset_indices
from cosme_ros.errors import CosmeError
from cosme_ros.nets.taps import ALL_TAPS, LH, O, parse_taps
from cosme_ros.runtime.networks import Networks

__all__ = [
    "BuildConfig",
    "BuildResult",
    "build_anomaly_parts",
    "checkpoint_path",
    "global_schedule",
]

PANS_LABELS = ("auto", "labels", "pseudo")
CHECKPOINT_NAME = ".anomaly.build-state.safetensors"


@dataclass
class BuildConfig:
    """Everything that determines the built parts (apart from the teacher and the data)."""

    # None: the paper's layers on the bundle's teacher (:func:`~cosme_ros.anomaly.parts.paper_layers`).
    layers: Optional[Tuple[str, ...]] = None
    k: int = 2048
    tau: float = 0.85
    momentum: float = 0.99
    epochs: int = 1
    batch: int = 8  # images per step, summed over all processes
    seed: int = 0
    max_images: Optional[int] = None  # that many images spread evenly over the dataset
    candidates_per_image: int = 64
    init_passes: int = 1
    pans_labels: str = "auto"
    # The network input for these images (default: the bundle's). Frames of another aspect
    # ratio than the bundle's (CamVid's 4:3 against a 2:1 teacher) can keep theirs; the
    # prototypes are per-pixel features, valid at any input size.
    input_size: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.layers is None:
            return self._check_numbers()
        try:
            self.layers = parse_taps(self.layers)
        except ValueError as exc:
            raise CosmeError(f"--layers: {exc}") from None
        if not self.layers:
            raise CosmeError("--layers: give at least one memory layer")
        bad = [layer for layer in self.layers if layer == O]
        if bad:
            raise CosmeError("--layers: the logits 'o' are not a feature layer for the memory")
        self._check_numbers()

    def _check_numbers(self) -> None:
        checks = [
            (self.k >= 1, "--k must be >= 1"),
            (-1.0 < self.tau <= 1.0, "--tau is a cosine threshold in (-1, 1]"),
            (0.0 <= self.momentum <= 1.0, "--momentum must lie in [0, 1]"),
            (self.epochs >= 0, "--epochs must be >= 0"),
            (self.batch >= 1, "--batch must be >= 1"),
            (self.max_images is None or self.max_images >= 1, "--max-images must be >= 1"),
            (self.candidates_per_image >= 1, "--candidates must be >= 1"),
            (self.init_passes >= 1, "--init-passes must be >= 1"),
            (
                self.pans_labels in PANS_LABELS,
                f"--pans-labels must be one of {', '.join(PANS_LABELS)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise CosmeError(message)


@dataclass
class BuildResult:
    parts: AnomalyParts
    section: Dict  # the manifest's anomaly section (without 'weights')
    report: Dict  # what happened, for printing and --json


# ----------------------------------------------------------------------------- distributed


# ----------------------------------------------------------------------------- schedule


def global_schedule(
    n: int,
    batch: int,
    seed: int,
    phase: int,
    index: int,
    shuffle: bool = True,
    groups: Optional[np.ndarray] = None,
) -> List[np.ndarray]:
    """The global batches of one pass: a permutation seeded by (seed, phase, index) cut into
    chunks of ``batch`` image indices. The same on every rank and for any number of ranks.

    ``groups`` (each index's source, for a :class:`~cosme_ros.data.datasets.Mixture`): every
    batch holds one source's images, cut from that source's part of the same permutation, and
    the batches come in the order of their first image in it. One source: as without groups."""
    order = np.random.default_rng([seed, phase, index]).permutation(n) if shuffle else np.arange(n)
    if groups is None or len(np.unique(groups)) < 2:
        return [order[i : i + batch] for i in range(0, n, batch)]
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    batches = []
    for g in np.unique(groups):
        mine = order[groups[order] == g]
        batches += [mine[i : i + batch] for i in range(0, len(mine), batch)]
    return sorted(batches, key=lambda b: int(position[b[0]]))


# ----------------------------------------------------------------------------- checkpoint


def checkpoint_path(bundle: Bundle) -> Path:
    return bundle.path / CHECKPOINT_NAME


def _fingerprint(
    bundle: Bundle, dataset: Dataset, names: Sequence[str], config: BuildConfig, data_spec: str
) -> Dict:
    teacher = json.dumps(bundle.manifest.get("teacher"), sort_keys=True, default=str)
    return {
        "config": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(config).items()
            if k != "pans_labels"
        },
        "data": data_spec,
        "split": dataset.split,
        "images": len(names),
        "names_sha1": hashlib.sha1("\n".join(names).encode()).hexdigest(),
        "teacher_sha1": hashlib.sha1(teacher.encode()).hexdigest(),
        "input_size": list(bundle.input_size),
    }


def _save_checkpoint(
    path: Path, builder: MulMemBuilder, fingerprint: Dict, epochs_done: int
) -> None:
    from safetensors.torch import save_file

    meta = {
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "epochs_done": str(int(epochs_done)),
        "format": "cosme-build-memory-state/1",
    }
    with atomic.atomic_path(path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in builder.state_dict().items()}, str(tmp), metadata=meta
        )


def _load_checkpoint(path: Path, builder: MulMemBuilder, fingerprint: Dict) -> int:
    """Restore the builder; returns the number of completed epochs of Algorithm 2."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CosmeError(
            f"{path}: cannot read the build checkpoint ({exc}); delete it or run "
            f"without --resume"
        ) from None
    try:
        theirs = json.loads(meta.get("fingerprint", "{}"))
    except ValueError:
        theirs = {}
    if theirs != fingerprint:
        diff = sorted(
            k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k)
        )
        detail = []
        for key in diff:
            a, b = theirs.get(key), fingerprint.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                detail += [f"{key}.{s}" for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s)]
            else:
                detail.append(key)
        raise CosmeError(
            f"{path}: the checkpoint belongs to another build (differs in "
            f"{', '.join(detail)}); run without --resume to start over"
        )
    try:
        builder.load_state_dict(state)
    except ValueError as exc:
        raise CosmeError(f"{path}: {exc}") from None
    return int(meta.get("epochs_done", "0"))


# ----------------------------------------------------------------------------- the build


def _labels_are_trainids(bundle: Bundle) -> bool:
    return tuple(bundle.class_names[: len(CITYSCAPES_CLASSES)]) == CITYSCAPES_CLASSES


class _Teacher:
    """The bundle's teacher as the pipeline runs it (:class:`~cosme_ros.runtime.networks.Networks`:
    its preprocessing, folding and memory format), taking (possibly empty) batches. It never
    reads the bundle's anomaly part, which this build replaces: an old part that no longer fits
    the teacher must not stop the build that repairs it."""

    def __init__(self, bundle: Bundle, device: str, input_size: Optional[Tuple[int, int]] = None):
        self.networks = Networks(bundle, (O,), device=device, input_size=input_size)
        self.device = self.networks.device
        self.input_size = tuple(self.networks.input_size)

    @torch.inference_mode()
    def __call__(self, samples: Sequence[Sample], taps: Sequence[str]) -> Dict[str, Tensor]:
        if samples:
            sizes = {s.input_size for s in samples}
            if len(sizes) > 1:  # global_schedule draws a batch from one source
                raise ValueError(f"a batch mixes input sizes {sorted(map(str, sizes))}")
            x = self.networks.preprocess([s.image for s in samples], sizes.pop())
        else:
            x = torch.zeros((0, 3) + self.input_size, device=self.device)
        return self.networks.teacher_forward(x, taps)


@dataclass
class _Pass:
    """What every pass over the data shares: this rank's slice of each global batch, the
    teacher, the prefetching pool and rank-0-only logging and progress bars."""

    dataset: Dataset
    subset: np.ndarray
    config: BuildConfig
    teacher: "_Teacher"
    pool: Optional[ThreadPoolExecutor]
    progress: bool
    say: Callable[[str], None]
    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def batches(self, phase: int, index: int, shuffle: bool = True) -> List[np.ndarray]:
        """This rank's image indices of each global batch of one pass (:func:`global_schedule`)."""
        groups = getattr(self.dataset, "groups", None)
        schedule = global_schedule(
            len(self.subset),
            self.config.batch,
            self.config.seed,
            phase,
            index,
            shuffle,
            None if groups is None else groups[self.subset],
        )
        return [self.subset[distributed.local_slice(b, self.rank, self.world)] for b in schedule]

    def samples(self, local: List[np.ndarray]):
        return prefetched_batches(self.dataset, local, self.pool)

    def bar(self, total: int, desc: str):
        return tqdm(
            total=total,
            desc=desc,
            unit="batch",
            disable=not (self.progress and self.main),
            dynamic_ncols=True,
            leave=False,
        )


def build_anomaly_parts(
    bundle: Bundle,
    dataset: Dataset,
    config: BuildConfig,
    *,
    data_spec: str = "",
    device: str = "cpu",
    checkpoint: Optional[Path] = None,
    resume: bool = False,
    workers: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Algorithm 1, Algorithm 2 and the statistics pass (module docstring) → :class:`BuildResult`.

    Collective under ``torch.distributed``: every rank calls it with the same arguments and
    gets the same result. ``log`` and progress bars are used on rank 0 only.
    """
    rank, world = distributed.world()
    say = log if rank == 0 else (lambda _msg: None)
    taps = bundle.teacher_taps
    if config.layers is None:
        config = replace(config, layers=paper_layers(taps)[0])
    missing = [t for t in config.layers if t not in taps]
    if missing:
        raise CosmeError(
            f"--layers: the teacher ({bundle.manifest['teacher']['arch']}) has no tap(s) "
            f"{','.join(missing)}; it has {','.join(taps)}"
        )
    subset = subset_indices(len(dataset), config.max_images)  # spread over the dataset
    all_names = dataset.names  # a property that lists them: read once, not per image
    names = [all_names[i] for i in subset]
    use_labels = _use_labels(bundle, dataset, config, data_spec)
    teacher = _Teacher(bundle, device, config.input_size)
    fingerprint = _fingerprint(bundle, dataset, names, config, data_spec)
    builder = MulMemBuilder(
        config.layers,
        config.k,
        tau=config.tau,
        momentum=config.momentum,
        seed=config.seed,
        candidates_per_image=config.candidates_per_image,
    )
    epochs_done = -1  # -1: Algorithm 1 still to run
    resumed = False
    if resume and checkpoint is not None and checkpoint.is_file():
        epochs_done = _load_checkpoint(checkpoint, builder, fingerprint)
        resumed = True
        say(
            f"resuming from {checkpoint}: Algorithm 1 done, {epochs_done} of {config.epochs} "
            f"epoch(s) of Algorithm 2 done"
        )
    elif resume:
        say(f"no checkpoint at {checkpoint}: starting from the beginning")

    def save(epochs: int) -> None:
        if checkpoint is not None and rank == 0:
            _save_checkpoint(checkpoint, builder, fingerprint, epochs)
        distributed.barrier()

    pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
    run = _Pass(dataset, subset, config, teacher, pool, progress, say, rank, world)
    try:
        if epochs_done < 0:
            memory_init(run, builder, data_spec or str(dataset.root))
            epochs_done = 0
            save(0)
        shortfall = _report_shortfall(run, builder)
        for epoch in range(epochs_done, config.epochs):
            memory_learn(run, builder, epoch)
            save(epoch + 1)
        stats = gather_statistics(run, bundle, builder.prototypes(), use_labels)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    if not bool((stats["pans"].norm(dim=1) > 0).any()):
        raise CosmeError(
            f"PAnS: no pixel of any class was seen in {data_spec or dataset.root} "
            f"({'labels' if use_labels else 'pseudo-labels'}); cannot build "
            f"class prototypes"
        )
    build = {
        **_config_record(config, data_spec, dataset.split),
        "images": len(subset),
        "input_size": list(teacher.input_size),
        **(
            {"source_input_sizes": [s and list(s) for s in dataset.sizes]}
            if hasattr(dataset, "sizes")
            else {}
        ),
        "prototypes": {k: int(v) for k, v in builder.counts().items()},
        "shortfall": shortfall,
        "init_steps": builder.init_steps,
        "learn_steps": builder.learn_steps,
        "pans_labels": "labels" if use_labels else "pseudo",
        "sml_resolution": "image",
        "world_size": world,
        "resumed": resumed,
        "cosme_ros": __version__,
    }
    return _result(bundle, builder, stats, build)


def _config_record(config: BuildConfig, data_spec: str, split) -> Dict[str, Any]:
    return {
        "k": config.k,
        "tau": config.tau,
        "momentum": config.momentum,
        "epochs": config.epochs,
        "batch": config.batch,
        "seed": config.seed,
        "candidates_per_image": config.candidates_per_image,
        "init_passes": config.init_passes,
        "data": data_spec,
        "split": split,
    }


def _use_labels(bundle: Bundle, dataset: Dataset, config: BuildConfig, data_spec: str) -> bool:
    """Whether PAnS's class prototypes come from the dataset's labels (else: pseudo-labels)."""
    use = config.pans_labels == "labels" or (
        config.pans_labels == "auto" and dataset.has_semantic and _labels_are_trainids(bundle)
    )
    if use and not dataset.has_semantic:
        raise CosmeError(
            f"--pans-labels labels: dataset {data_spec or dataset.root} has no semantic labels"
        )
    if use and not _labels_are_trainids(bundle):
        raise CosmeError(
            f"--pans-labels labels: the bundle's classes are not the Cityscapes "
            f"trainIds the dataset labels use ({bundle.class_names[:3]}…)"
        )
    return use


def memory_init(run: _Pass, builder: MulMemBuilder, source: str) -> None:
    """Algorithm 1: τ-diverse prototype candidates until every layer holds K (or the data ends)."""
    config = run.config
    done = False
    steps = [run.batches(0, p) for p in range(config.init_passes)]
    with run.bar(sum(len(s) for s in steps), "Algorithm 1 (memory init)") as pbar:
        for local in steps:
            for samples in run.samples(local):
                done = builder.init_step(run.teacher(samples, config.layers))
                pbar.update(1)
                pbar.set_postfix(protos=min(builder.counts().values()))
                if done:
                    break
            if done:
                break
    if not done:
        try:
            builder.finish_init()
        except RuntimeError as exc:
            raise CosmeError(
                f"Algorithm 1: {exc} ({len(run.subset)} image(s) from {source})"
            ) from None


def _report_shortfall(run: _Pass, builder: MulMemBuilder) -> Dict[str, int]:
    shortfall = {k: int(v) for k, v in builder.shortfall().items()}
    if any(shortfall.values()):
        run.say(
            "Algorithm 1 ran out of data before K = {}: {} (the memory keeps what was "
            "found; more images or --init-passes give more candidates)".format(
                run.config.k,
                ", ".join(
                    f"{layer} has {c}" for layer, c in builder.counts().items() if shortfall[layer]
                ),
            )
        )
    return shortfall


def memory_learn(run: _Pass, builder: MulMemBuilder, epoch: int) -> None:
    """One epoch of Algorithm 2: nearest-prototype momentum updates."""
    local = run.batches(1, epoch)
    with run.bar(len(local), f"Algorithm 2 (epoch {epoch + 1}/{run.config.epochs})") as pbar:
        for samples in run.samples(local):
            builder.learn_step(run.teacher(samples, run.config.layers))
            pbar.update(1)


def gather_statistics(
    run: _Pass, bundle: Bundle, prototypes: Mapping[str, Tensor], use_labels: bool
) -> Dict[str, Any]:
    """One pass for the class statistics of MulMem's Γ and SML's max logit and PAnS's class
    prototypes, reduced over the ranks: ``{"mulmem": ClassStats, "sml": ClassStats, "pans":
    (classes, C) prototypes}``."""
    teacher, layers = run.teacher, run.config.layers
    memory = {k: v.to(teacher.device) for k, v in prototypes.items()}
    taps_needed = tuple(t for t in ALL_TAPS if t in set(layers) | {LH, O})
    num_classes = bundle.num_classes
    align = bundle.teacher_align_corners  # resize the teacher's outputs as the scorers do
    acc_mulmem = ClassStatsAccumulator(num_classes)
    acc_sml = ClassStatsAccumulator(num_classes)
    acc_pans: Optional[ClassPrototypeAccumulator] = None
    void = torch.tensor(sorted(bundle.void_classes), dtype=torch.long, device=teacher.device)
    local = run.batches(2, 0, shuffle=False)
    with run.bar(len(local), "statistics (MulMem, SML, PAnS)") as pbar, torch.inference_mode():
        for samples in run.samples(local):
            taps = teacher(samples, taps_needed)
            if taps[O].shape[1] != num_classes:
                raise CosmeError(
                    f"{bundle.path}: the teacher outputs {taps[O].shape[1]} "
                    f"classes but the manifest names {num_classes}"
                )
            if acc_pans is None:
                acc_pans = ClassPrototypeAccumulator(num_classes, int(taps[LH].shape[1]))
            gamma, classes = mulmem_gamma(taps, memory, layers, align)
            acc_mulmem.update(gamma, classes)
            for i, sample in enumerate(samples):
                values, cls = baselines.max_logit(
                    resize(taps[O][i : i + 1], sample.image.shape[:2], align)
                )
                acc_sml.update(values, cls)
                if use_labels:
                    label = torch.from_numpy(sample.semantic).to(teacher.device)[None]
                    acc_pans.update(taps[LH][i : i + 1], label)
            if not use_labels:
                pseudo = predicted_classes(taps[O], tuple(taps[LH].shape[-2:]), align)
                acc_pans.update(taps[LH], pseudo, ~torch.isin(pseudo, void))
            pbar.update(1)
    for acc in (acc_mulmem, acc_sml, acc_pans):
        acc.all_reduce()
    try:
        return {
            "mulmem": acc_mulmem.finalize(),
            "sml": acc_sml.finalize(),
            "pans": acc_pans.finalize(),
        }
    except ValueError as exc:
        raise CosmeError(f"statistics: {exc}") from None


def _result(
    bundle: Bundle, builder: MulMemBuilder, stats: Dict[str, Any], build: Dict[str, Any]
) -> BuildResult:
    """The anomaly part, checked as the bundle reader will check it (a part that would not
    load is never written), its manifest section and the report."""
    layers = tuple(builder.layers)
    consensus = bundle.anomaly_layers()["consensus_layers"]
    parts = AnomalyParts(
        memory={k: v.cpu() for k, v in builder.prototypes().items()},
        memory_layers=layers,
        mulmem_stats=stats["mulmem"],
        sml_stats=stats["sml"],
        pans_prototypes=stats["pans"],
        has_student=bundle.has_student,
        consensus_layers=tuple(consensus),
    )
    AnomalyParts.from_tensors(
        parts.to_tensors(),
        has_student=bundle.has_student,
        memory_layers=layers,
        consensus_layers=parts.consensus_layers,
    )
    names, mulmem = bundle.class_names, stats["mulmem"]
    section = {
        "memory_layers": list(layers),
        "consensus_layers": list(parts.consensus_layers),
        "build": build,
    }
    report = {
        **build,
        "mulmem_pixels_per_class": {
            names[c]: int(v) for c, v in enumerate(mulmem.count.tolist()) if v > 0
        },
        "stats_fallback_classes": [
            names[c] for c in range(bundle.num_classes) if bool(mulmem.fallback[c])
        ],
        "pans_unseen_classes": [
            names[c]
            for c in range(bundle.num_classes)
            if float(stats["pans"][c].norm()) == 0 and c not in bundle.void_classes
        ],
    }
    return BuildResult(parts=parts, section=section, report=report)
