"""Networks CosMe needs, in pure torch, each returning named feature maps (see :mod:`.taps`).

``build_network(arch, config)`` rebuilds any of them from the ``config`` dict a network carries,
which is what a bundle manifest stores.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping

from torch import nn

TEACHER_ARCHS = ("espnetv2", "deeplabv3plus", "edgetpu_deeplab", "cfpnet")

# RGB in [0, 1] normalised with ImageNet statistics: what every teacher here was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def teacher_align_corners(arch: str, config: Mapping[str, Any]) -> bool:
    """How a teacher upsamples its own outputs (bilinear ``align_corners``): the convention its
    logits were trained and evaluated with, which every resize of its outputs follows. DeepLabV3+
    records it in its config (VainF: False, the SML release: True); ESPNetv2, CFPNet and the
    TFLite EdgeTPU-DeepLab (its ResizeBilinear ops) always use True."""
    if arch in ("espnetv2", "cfpnet", "edgetpu_deeplab"):
        return True
    return bool(config.get("align_corners", False))


def _builders() -> Dict[str, Callable[..., nn.Module]]:
    # Imported on use so that reading a manifest does not import every architecture.
    from cosme_ros.nets.cfpnet import build_cfpnet
    from cosme_ros.nets.deeplabv3plus import build_deeplabv3plus
    from cosme_ros.nets.edgetpu_deeplab import build_edgetpu_deeplab
    from cosme_ros.nets.espnetv2 import build_espnetv2
    from cosme_ros.nets.student import build_student

    return {
        "espnetv2": build_espnetv2,
        "deeplabv3plus": build_deeplabv3plus,
        "edgetpu_deeplab": build_edgetpu_deeplab,
        "cfpnet": build_cfpnet,
        "student": build_student,
    }


def build_network(arch: str, config: Mapping[str, Any]) -> nn.Module:
    builders = _builders()
    if arch not in builders:
        raise ValueError(f"unknown network architecture {arch!r}; known: {', '.join(builders)}")
    return builders[arch](**dict(config))
