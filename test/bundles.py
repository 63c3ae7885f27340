"""Small real bundles for tests: a ResNet-18 DeepLabV3+ teacher at a tiny input size.

The weights are random (seeded); tests that need a trained model use the ESPNetv2 checkpoint in
../shared/data or the demo bundle.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cosme_ros import bundle as bundle_mod
from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE


def tiny_teacher(seed: int = 0):
    from cosme_ros.nets.deeplabv3plus import build_deeplabv3plus
    torch.manual_seed(seed)
    return build_deeplabv3plus(backbone="resnet18", num_classes=19, output_stride=16).eval()


def make_tiny_bundle(out: Path, input_size=(64, 128), seed: int = 0, force: bool = False):
    return bundle_mod.create(
        out, arch="deeplabv3plus", module=tiny_teacher(seed), input_size=input_size,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        class_names=list(CITYSCAPES_CLASSES), palette=[tuple(c) for c in CITYSCAPES_PALETTE],
        force=force)
