"""AuxCon student training (docs/ARCHITECTURE.md, Algorithm 3): distil the frozen teacher into M′, no labels.

Each step: augment a batch of training images, run the teacher (eval mode, no gradient) for the
taps Ls = {c2, c3, c4, c5, lh, o} it has, run the student with the teacher's tap sizes, and
minimise Eq. 5 exactly as :func:`cosme_ros.anomaly.consensus.distillation_loss` defines it
(``normalize="hw"``: per layer the per-pixel squared L2 distance summed over channels and averaged
over pixels and images; layers added with weight 1).

Optimizer: **Adam** (lr 1e-3, β = (0.9, 0.999), no weight decay) with a short linear warm-up and
poly decay (power 0.9) to zero. Adam because Eq. 5's layers differ in scale by orders of magnitude
(``c5`` sums over 2048 channels, ``o`` over 19) and drift as the student learns; Adam's
per-parameter normalisation makes the step size independent of that scale, where SGD needs an lr
retuned per teacher. There is no weight decay: the student should fit the teacher, not generalise
beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from cosme_ros.distributed import Distributed
from cosme_ros.anomaly.consensus import DISTILLATION_LAYERS, distillation_loss
from cosme_ros.bundle import Bundle
from cosme_ros.nets.student import Student
from cosme_ros.data.datasets import subset_indices
from cosme_ros.train.augment import AugmentConfig, augment
from cosme_ros.train.loop import (
    on_device,
    run_record,
    training_samples,
    FitResult,
    LoopSettings,
    PreparedSamples,
    Task,
    fit,
    sample_rng,
    to_input,
)

Size = Tuple[int, int]


def distillation_layers(teacher: nn.Module) -> Tuple[str, ...]:
    """Ls ∩ the teacher's taps, in Eq. 5's order."""
    return tuple(t for t in DISTILLATION_LAYERS if t in teacher.tap_channels)


def build_student_for(teacher: nn.Module, depth: int, width: float) -> Student:
    return Student(
        depth,
        teacher_channels=teacher.tap_channels,
        teacher_strides=teacher.tap_strides,
        taps=distillation_layers(teacher),
        width=width,
    )


def student_init_seed(seed: int) -> int:
    """The seed of the student's initial weights: a stream of its own, derived from ``seed``.

    The paper initialises Θ′ randomly, independently of the teacher. Seeding torch with ``seed``
    itself, as the teacher's trainer does, would draw the student's backbone and head from the
    same stream as a same-architecture teacher's, i.e. start the student from the teacher's
    initial weights.
    """
    return int(
        np.random.SeedSequence([int(seed), 0x5EED, 0xA0C0]).generate_state(1, dtype=np.uint32)[0]
    )


def initial_student(teacher: nn.Module, depth: int, width: float, seed: int) -> Student:
    """The student before training, drawn from :func:`student_init_seed`."""
    torch.manual_seed(student_init_seed(seed))
    return build_student_for(teacher, depth, width)


class DistillTask(Task):
    """One step of Eq. 5 on this process's shard."""

    def __init__(
        self,
        teacher: nn.Module,
        samples: PreparedSamples,
        subset: np.ndarray,
        augment_cfg: AugmentConfig,
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
        ctx: Distributed,
        bf16: bool = False,
    ) -> None:
        self.teacher, self.samples, self.subset, self.bf16 = teacher, samples, subset, bf16
        self.cfg, self.seed, self.mean, self.std, self.ctx = augment_cfg, seed, mean, std, ctx
        self.layers = distillation_layers(teacher)

    def load(self, indices: np.ndarray, step: int) -> Tensor:
        images = []
        for i in self.subset[indices]:
            image, _ = self.samples[i]
            images.append(augment(image, None, sample_rng(self.seed, step, i), self.cfg)[0])
        return to_input(images, self.mean, self.std, self.ctx.device)

    def loss(self, model: nn.Module, x: Tensor, global_count: int) -> Tensor:
        # bf16 autocast (optional) covers the networks; Eq. 5 itself is computed in fp32.
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            with torch.no_grad():
                target = self.teacher(x, taps=self.layers)
            pred = model(x, sizes={t: tuple(v.shape[-2:]) for t, v in target.items()})
        return self.ctx.share(
            distillation_loss(target, pred, self.layers), x.shape[0], global_count
        )


@dataclass
class StudentRun:
    student: Student
    record: Dict[str, Any]
    result: FitResult


def train_student(
    bundle: Bundle,
    dataset,
    *,
    data_spec: str,
    depth: int = 50,
    width: float = 1.0,
    size: Optional[Size] = None,
    epochs: int = 10,
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    max_images: Optional[int] = None,
    checkpoint_every: int = 0,
    checkpoint_dir: Optional[Path] = None,
    resume: bool = False,
    bf16: bool = False,
    ctx: Optional[Distributed] = None,
    cache_bytes: int = 2 << 30,
) -> StudentRun:
    """Train a student for ``bundle``'s teacher on ``dataset`` (labels unused); return it in eval
    mode with its training record. Nothing is written except checkpoints (rank 0)."""
    ctx = ctx or Distributed()
    size = tuple(size or bundle.input_size)
    teacher = bundle.teacher().to(ctx.device, memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    layers = distillation_layers(teacher)
    if not layers:
        raise ValueError(
            f"teacher {bundle.manifest['teacher']['arch']} exposes none of the "
            f"distillation taps {DISTILLATION_LAYERS}"
        )

    student = on_device(initial_student(teacher, depth, width, seed), ctx)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr, betas=(0.9, 0.999))
    cfg = AugmentConfig(size=size)
    samples = training_samples(dataset, size, cfg, False, cache_bytes)
    subset = subset_indices(len(dataset), max_images)
    task = DistillTask(teacher, samples, subset, cfg, seed, bundle.mean, bundle.std, ctx, bf16=bf16)
    settings = LoopSettings(
        epochs=epochs,
        batch=batch,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        desc="train-student",
        fingerprint={
            "command": "train-student",
            "data": data_spec,
            "depth": depth,
            "width": width,
            "size": list(size),
            "layers": list(layers),
            "optimizer": "adam",
            "augment": cfg.as_dict(),
            "bf16": bf16,
        },
    )
    result = fit(student, optimizer, task, len(subset), settings, ctx)
    record = {
        "data": data_spec,
        **run_record(result, settings, len(subset), size, cfg, bf16, ctx),
        "optimizer": "adam(betas=0.9,0.999; no weight decay)",
        "init_seed": student_init_seed(seed),
        "loss": "Eq. 5, normalize=hw, layers weighted 1",
        "layers": list(layers),
    }
    return StudentRun(student=student, record=record, result=result)
