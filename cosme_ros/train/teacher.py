"""Training a DeepLabV3+ teacher on a labelled dataset with Cityscapes trainIds, from scratch or on
an ImageNet-pretrained MobileNetV2 backbone.

This makes small teachers for small worlds (the synthetic demo), not rivals of the Cityscapes
checkpoints users import with ``cosme bundle create``. The paper's teachers are ImageNet-initialised,
and CosMe relies on it: features that still describe a deer or a tyre after segmentation training,
which a student that never saw ImageNet cannot reproduce there. ``pretrained="imagenet"`` gives
the demo teacher that property: the backbone starts from the ImageNet weights, learns at a tenth of
the head's rate, keeps its BatchNorms frozen (the weights come BatchNorm-folded, see
:mod:`cosme_ros.nets.mobilenetv2`) and its stem and blocks up to c2 fixed, and the input is
normalised as those weights expect. Under bf16 autocast on a CPU its depthwise convs run in fp32
(:meth:`~cosme_ros.nets.mobilenetv2.MobileNetV2.depthwise_in_fp32`: faster there).

- Loss: pixel cross-entropy over the 19 trainIds, ``ignore_index`` 255, averaged over the valid
  pixels of the *global* batch (so data parallel training computes the same loss). Logits (stride
  4) are upsampled bilinearly to the crop before the loss, as DeepLab does.
- Optimizer: **AdamW** (lr 1e-3, β = (0.9, 0.999), weight decay 1e-2 on conv weights only) with a
  linear warm-up (5 %, ≤ 200 steps) and poly decay (power 0.9) to zero. From scratch, without
  ImageNet features, Adam-family optimizers reach a usable model in far fewer steps than DeepLab's
  SGD recipe (which assumes a pretrained backbone), and need no per-dataset lr search.
- Head width: the ASPP/decoder channels scale with the backbone width (256·w, low-level 48·w),
  as the student's do; a full 256-channel head on a width-0.5 ResNet-18 would cost twice the time
  for a backbone that cannot feed it.
- Evaluation: the whole validation image resized to the training size (what the pipeline does at
  inference), logits upsampled to the label's resolution, confusion matrix over trainIds 0–18
  (other label values ignored). IoU per class = TP / (TP + FP + FN), NaN where a class is neither
  in the labels nor predicted; mIoU is the mean over the other classes (the Cityscapes
  convention), and ``miou_present`` the mean over classes that occur in the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES, IGNORE_ID
from cosme_ros.nets import IMAGENET_MEAN, IMAGENET_STD
from cosme_ros.distributed import Distributed
from cosme_ros.errors import CosmeError
from cosme_ros.metrics import iou_from_confusion
from cosme_ros.nets.imports.checkpoints import load_strict
from cosme_ros.nets.deeplabv3plus import DeepLabV3Plus
from cosme_ros.nets.mobilenetv2 import MOBILENET_MEAN, MOBILENET_STD, TAP_INDEX
from cosme_ros.nets.imports.tf_mobilenet import imagenet_file, imagenet_state_dict
from cosme_ros.data.datasets import subset_indices
from cosme_ros.train.augment import AugmentConfig, augment, resize_for_eval
from cosme_ros.train.loop import (
    on_device,
    run_record,
    training_samples,
    FitResult,
    LoopSettings,
    PreparedSamples,
    Task,
    fit,
    param_groups,
    sample_rng,
    to_input,
)

NUM_CLASSES = len(CITYSCAPES_CLASSES)

Size = Tuple[int, int]


def build_teacher(
    backbone: str = "resnet18",
    width: float = 1.0,
    output_stride: int = 16,
    head_channels: Optional[int] = None,
    num_classes: int = NUM_CLASSES,
) -> DeepLabV3Plus:
    head = int(head_channels) if head_channels else max(8, round(256 * width))
    return DeepLabV3Plus(
        backbone,
        num_classes,
        output_stride,
        width=width,
        aspp_channels=head,
        low_level_channels=max(8, round(head * 48 / 256)),
        decoder_channels=head,
    )


# Pretrained backbones: (backbone, source) → input normalisation the weights were trained with.
PRETRAINED = {("mobilenetv2", "imagenet"): (MOBILENET_MEAN, MOBILENET_STD)}
# The pretrained backbone learns at this fraction of the head's rate, so that segmentation
# training adapts its ImageNet features rather than overwriting them (DeepLab's fine-tuning
# habit); the head starts from scratch and needs the full rate.
PRETRAINED_BACKBONE_LR_SCALE = 0.1
# The pretrained backbone up to this tap (MobileNetV2's stem and its stride-2 and stride-4
# blocks, features.0–3) keeps its ImageNet weights: edge and texture filters that any street
# scene needs unchanged (Detectron's frozen stem, for the same reason), and a fifth of the
# training step's time — the high-resolution layers' backward — is not spent on them.
PRETRAINED_FROZEN_UP_TO = "c2"


def normalisation(backbone: str, pretrained: Optional[str]) -> Tuple[Tuple[float, ...], ...]:
    """(mean, std) of the teacher's input: the pretrained weights' own, else ImageNet's."""
    if pretrained is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return PRETRAINED[(backbone, pretrained)]


def initial_teacher(
    backbone: str,
    width: float,
    output_stride: int,
    head_channels: Optional[int],
    seed: int,
    pretrained: Optional[str] = None,
    pretrained_weights: Optional[Path] = None,
) -> DeepLabV3Plus:
    """The teacher before training: head (and a from-scratch backbone) drawn from
    ``torch.manual_seed(seed)``; with ``pretrained="imagenet"`` the backbone then takes the
    ImageNet weights (strictly) and keeps its BatchNorms in eval mode while training."""
    torch.manual_seed(seed)
    model = build_teacher(backbone, width, output_stride, head_channels)
    if pretrained is None:
        return model
    name = model.config["backbone"]
    if (name, pretrained) not in PRETRAINED:
        raise CosmeError(
            f"no {pretrained} weights for a {name} backbone; pretrained backbones: "
            + ", ".join(f"{b} ({s})" for b, s in PRETRAINED)
        )
    if pretrained_weights is None:
        raise CosmeError(f"--pretrained {pretrained} needs the weights' path")
    load_strict(
        model.backbone,
        imagenet_state_dict(pretrained_weights, classifier=False),
        pretrained_weights,
    )
    model.backbone.freeze_batchnorm = True
    frozen = model.backbone.features[: TAP_INDEX[PRETRAINED_FROZEN_UP_TO] + 1]
    for p in frozen.parameters():
        p.requires_grad_(False)
    return model


class SegmentationTask(Task):
    """Cross-entropy on this process's shard of an augmented, labelled batch."""

    def __init__(
        self,
        samples: PreparedSamples,
        subset: np.ndarray,
        cfg: AugmentConfig,
        seed: int,
        ctx: Distributed,
        bf16: bool = False,
        val: Optional["Evaluator"] = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.samples, self.subset, self.cfg, self.seed, self.ctx = samples, subset, cfg, seed, ctx
        self.bf16, self.val, self.mean, self.std = bf16, val, mean, std

    def load(self, indices: np.ndarray, step: int) -> Tuple[Tensor, Tensor]:
        images, labels = [], []
        for i in self.subset[indices]:
            image, label = self.samples[i]
            image, label = augment(image, label, sample_rng(self.seed, step, i), self.cfg)
            images.append(image)
            labels.append(label)
        x = to_input(images, self.mean, self.std, self.ctx.device)
        y = np.stack(labels)
        y[y >= NUM_CLASSES] = IGNORE_ID  # anything but a trainId is void
        return x, torch.from_numpy(y.astype(np.int64)).to(self.ctx.device, non_blocking=True)

    def loss(self, model: nn.Module, batch: Tuple[Tensor, Tensor], global_count: int) -> Tensor:
        x, y = batch
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = model(x, taps=("o",))["o"]
        # NCHW before upsampling: on channels_last logits the upsampling and its backward are
        # ~20 % slower (0.122 vs 0.104 s per batch of 8 at 192×384, 2 cores).
        logits = F.interpolate(
            logits.float().contiguous(), size=y.shape[-2:], mode="bilinear", align_corners=False
        )
        total = F.cross_entropy(logits, y, ignore_index=IGNORE_ID, reduction="sum")
        valid = self.ctx.sum((y != IGNORE_ID).sum().float()).clamp(min=1)
        # DDP averages gradients over processes; scale the sum so the average is the global mean.
        return total * (self.ctx.world_size / valid)

    def end_of_epoch(self, model: nn.Module, epoch: int) -> Optional[Dict[str, Any]]:
        if self.val is None:
            return None
        result = self.val(model)
        if self.ctx.is_main:
            tqdm.write(f"epoch {epoch + 1}: val mIoU {100 * result['miou']:.2f}")
        return {"miou": result["miou"]}


class Evaluator:
    """mIoU of a segmentation network on a labelled dataset, sharded over processes."""

    def __init__(
        self,
        dataset,
        size: Size,
        ctx: Distributed,
        batch: int = 8,
        bf16: bool = False,
        cache_bytes: int = 1 << 30,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.dataset, self.size, self.ctx, self.batch, self.bf16 = dataset, size, ctx, batch, bf16
        self.mean, self.std = mean, std
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        self._budget = cache_bytes

    def _item(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            sample = self.dataset[i]
            if sample.semantic is None:
                raise CosmeError(f"validation sample {sample.name!r} has no semantic label")
            # The resized input and the label are all evaluation needs; keep them if small.
            item = (
                resize_for_eval(np.asarray(sample.image), self.size),
                np.asarray(sample.semantic),
            )
            size = item[0].nbytes + item[1].nbytes
            if size <= self._budget:
                self._cache[i] = item
                self._budget -= size
            return item
        return self._cache[i]

    @torch.no_grad()
    def __call__(self, model: nn.Module, progress: bool = False) -> Dict[str, Any]:
        was_training = model.training
        model.eval()
        conf = torch.zeros(NUM_CLASSES * NUM_CLASSES, dtype=torch.int64)
        mine = np.arange(len(self.dataset))[self.ctx.rank :: self.ctx.world_size]
        chunks = [mine[k : k + self.batch] for k in range(0, len(mine), self.batch)]
        for chunk in tqdm(
            chunks,
            desc="evaluate",
            unit="batch",
            disable=not (progress and self.ctx.is_main),
            leave=False,
        ):
            items = [self._item(int(i)) for i in chunk]
            x = to_input([im for im, _ in items], self.mean, self.std, self.ctx.device)
            with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = model(x, taps=("o",))["o"]
            for k, (_, label) in enumerate(items):
                pred = (
                    F.interpolate(
                        logits[k : k + 1].float(),
                        size=label.shape[:2],
                        mode="bilinear",
                        align_corners=False,
                    )[0]
                    .argmax(0)
                    .cpu()
                )
                gt = torch.from_numpy(label.astype(np.int64))
                ok = gt < NUM_CLASSES
                conf += torch.bincount(
                    gt[ok] * NUM_CLASSES + pred[ok], minlength=NUM_CLASSES * NUM_CLASSES
                )
        if self.ctx.enabled:
            conf = conf.to(self.ctx.device)
            torch.distributed.all_reduce(conf)
            conf = conf.cpu()
        model.train(was_training)
        return iou_from_confusion(conf.view(NUM_CLASSES, NUM_CLASSES).numpy(), CITYSCAPES_CLASSES)


@dataclass
class TeacherRun:
    model: DeepLabV3Plus
    record: Dict[str, Any]
    result: FitResult
    evaluation: Dict[str, Any]
    mean: Sequence[float] = IMAGENET_MEAN  # the input normalisation it was trained with
    std: Sequence[float] = IMAGENET_STD


def _for_training(
    model: DeepLabV3Plus, ctx: Distributed, pretrained: Optional[str], lr: float, decay: float
) -> Tuple[DeepLabV3Plus, torch.optim.Optimizer]:
    """The model on this process's device (synchronised BatchNorm under torchrun) and its AdamW
    (a pretrained backbone at a lower learning rate)."""
    if ctx.enabled and pretrained is not None:
        raise CosmeError(
            "a pretrained backbone keeps its BatchNorms frozen; train it in one "
            "process (synchronised BatchNorm would unfreeze them)"
        )
    model = on_device(model, ctx)
    lr_scales = {"backbone.": PRETRAINED_BACKBONE_LR_SCALE} if pretrained else None
    optimizer = torch.optim.AdamW(param_groups(model, decay, lr_scales), lr=lr, betas=(0.9, 0.999))
    return model, optimizer


def _pretrained_record(pretrained: Optional[str], weights: Optional[Path]) -> Optional[Dict]:
    if pretrained is None:
        return None
    return {
        "weights": pretrained,
        "file": imagenet_file(weights).name,
        "batchnorm": "frozen (eval mode) in the backbone",
        "frozen": f"backbone up to {PRETRAINED_FROZEN_UP_TO} "
        f"(features.0-{TAP_INDEX[PRETRAINED_FROZEN_UP_TO]})",
    }


def _result_record(result: FitResult, evaluation: Dict[str, Any]) -> Dict[str, Any]:
    """The validation's IoU (per epoch and at the end), as the model card records it."""
    return {
        "epoch_val_miou": [e["miou"] for e in result.history.get("epoch_eval", [])],
        "miou": evaluation["miou"],
        "miou_present": evaluation["miou_present"],
        "pixel_accuracy": evaluation["pixel_accuracy"],
        "iou": {k: v for k, v in evaluation["iou"].items() if v is not None},
    }


def train_teacher(
    train_set,
    val_set,
    *,
    data_spec: str,
    val_spec: str,
    backbone: str = "resnet18",
    width: float = 1.0,
    output_stride: int = 16,
    head_channels: Optional[int] = None,
    size: Size = (256, 512),
    epochs: int = 50,
    batch: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
    max_images: Optional[int] = None,
    checkpoint_every: int = 0,
    checkpoint_dir: Optional[Path] = None,
    resume: bool = False,
    eval_every_epoch: bool = False,
    bf16: bool = False,
    pretrained: Optional[str] = None,
    pretrained_weights: Optional[Path] = None,
    ctx: Optional[Distributed] = None,
    cache_bytes: int = 2 << 30,
) -> TeacherRun:
    """Train a DeepLabV3+ (from scratch, or on a pretrained backbone) and evaluate it on
    ``val_set``; nothing is written except checkpoints (rank 0)."""
    ctx = ctx or Distributed()
    size = (int(size[0]), int(size[1]))
    model = initial_teacher(
        backbone, width, output_stride, head_channels, seed, pretrained, pretrained_weights
    )
    mean, std = normalisation(model.config["backbone"], pretrained)
    if bf16 and ctx.device.type == "cpu" and hasattr(model.backbone, "depthwise_in_fp32"):
        model.backbone.depthwise_in_fp32()
    model, optimizer = _for_training(model, ctx, pretrained, lr, weight_decay)

    cfg = AugmentConfig(size=size)
    samples = training_samples(train_set, size, cfg, True, cache_bytes)
    subset = subset_indices(len(train_set), max_images)
    evaluator = Evaluator(val_set, size, ctx, batch=max(1, batch), bf16=bf16, mean=mean, std=std)
    val = evaluator if eval_every_epoch else None
    task = SegmentationTask(samples, subset, cfg, seed, ctx, bf16=bf16, val=val, mean=mean, std=std)
    fingerprint = {
        "command": "train-teacher",
        "data": data_spec,
        "config": model.config,
        "optimizer": "adamw",
        "weight_decay": weight_decay,
        "eval_every_epoch": eval_every_epoch,
        "pretrained": pretrained,
        "size": list(size),
        "augment": cfg.as_dict(),
        "bf16": bf16,
    }
    settings = LoopSettings(
        epochs=epochs,
        batch=batch,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        desc="train-teacher",
        fingerprint=fingerprint,
    )
    result = fit(model, optimizer, task, len(subset), settings, ctx)
    evaluation = evaluator(model, progress=True)
    record = {
        "data": data_spec,
        "val": val_spec,
        "val_images": len(val_set),
        **run_record(result, settings, len(subset), size, cfg, bf16, ctx),
        "optimizer": f"adamw(betas=0.9,0.999; weight decay {weight_decay:g} on conv weights)"
        + (f"; backbone lr x{PRETRAINED_BACKBONE_LR_SCALE:g}" if pretrained else ""),
        "pretrained": _pretrained_record(pretrained, pretrained_weights),
        **_result_record(result, evaluation),
    }
    return TeacherRun(
        model=model, record=record, result=result, evaluation=evaluation, mean=mean, std=std
    )
