"""The ImageNet weights of TF-slim's MobileNetV2 (dequantized, BatchNorm folded; see
``../shared/README.md``) as a state dict of :class:`~cosme_ros.nets.mobilenetv2.MobileNetV2`
with torchvision's names, loaded strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from cosme_ros.errors import CheckpointError
from cosme_ros.nets.imports.checkpoints import load_strict
from cosme_ros.nets.mobilenetv2 import BN_EPS, MobileNetV2

IMAGENET_WEIGHTS = "mobilenet_v2_1.0_224_quant.dequant_bnfolded.safetensors"


IMAGENET_CLASSES = 1001  # index 0 is TF-slim's "background"


_TF = "MobilenetV2"


# What a segmentation backbone leaves out, by exact torchvision name.
CLASSIFIER_KEYS = ("features.18.", "classifier.")


def _tf_names() -> List[Tuple[str, str, str]]:
    """(TF weight, TF bias, torchvision prefix of the conv → BatchNorm pair) for every conv."""
    pairs = [
        (
            f"{_TF}/Conv/Conv2D_Fold",
            f"{_TF}/Conv/BatchNorm_Fold/bias",
            "features.0.0",
            "features.0.1",
        )
    ]
    for b in range(17):
        tf = f"{_TF}/expanded_conv" + (f"_{b}" if b else "")
        seq = f"features.{b + 1}.conv"
        i = 0
        if b:  # block 0 (t = 1) has no expansion; the others start with ConvBNReLU6 conv.0
            pairs.append(
                (
                    f"{tf}/expand/Conv2D_Fold",
                    f"{tf}/expand/BatchNorm_Fold/bias",
                    f"{seq}.0.0",
                    f"{seq}.0.1",
                )
            )
            i = 1
        pairs.append(
            (
                f"{tf}/depthwise/depthwise_Fold",
                f"{tf}/depthwise/BatchNorm_Fold/bias",
                f"{seq}.{i}.0",
                f"{seq}.{i}.1",
            )
        )
        # the linear projection: a bare Conv2d and BatchNorm2d in the block's Sequential
        pairs.append(
            (
                f"{tf}/project/Conv2D_Fold",
                f"{tf}/project/add_fold",
                f"{seq}.{i + 1}",
                f"{seq}.{i + 2}",
            )
        )
    pairs.append(
        (
            f"{_TF}/Conv_1/Conv2D_Fold",
            f"{_TF}/Conv_1/BatchNorm_Fold/bias",
            "features.18.0",
            "features.18.1",
        )
    )
    return pairs


def imagenet_file(path: str | Path) -> Path:
    """The weights file itself when ``path`` is its folder."""
    path = Path(path)
    return path / IMAGENET_WEIGHTS if path.is_dir() else path


def imagenet_state_dict(path: str | Path, classifier: bool = True) -> Dict[str, Tensor]:
    """The TF-slim ImageNet MobileNetV2 weights (``*.dequant_bnfolded.safetensors``) in
    torchvision names, every folded bias in an identity BatchNorm.

    Every tensor of the file is consumed and every shape checked; ``classifier=False`` leaves out
    ``features.18`` and the classifier (a segmentation backbone). Problems are one
    :class:`CheckpointError` naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = imagenet_file(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such file (the MobileNetV2 ImageNet weights, " f"{IMAGENET_WEIGHTS})"
        )
    try:
        tf = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from None
    out: Dict[str, Tensor] = {}
    used = set()
    for w_name, b_name, conv, bn in _tf_names():
        for name in (w_name, b_name):
            if name not in tf:
                raise CheckpointError(
                    f"{path}: no tensor '{name}'; not the TF-slim MobileNetV2 " f"1.0 weights"
                )
        used.update((w_name, b_name))
        w, b = tf[w_name].float(), tf[b_name].float()
        if w.dim() != 4 or b.shape != (w.shape[0],):
            raise CheckpointError(
                f"{path}: '{w_name}' {tuple(w.shape)} / '{b_name}' "
                f"{tuple(b.shape)} are no conv weight and bias"
            )
        out[f"{conv}.weight"] = w
        out[f"{bn}.weight"] = torch.ones_like(b)
        out[f"{bn}.bias"] = b
        out[f"{bn}.running_mean"] = torch.zeros_like(b)
        out[f"{bn}.running_var"] = torch.full_like(b, 1.0 - BN_EPS)  # sqrt(var + eps) = 1
        out[f"{bn}.num_batches_tracked"] = torch.zeros((), dtype=torch.int64)
    logits_w, logits_b = f"{_TF}/Logits/Conv2d_1c_1x1/Conv2D", f"{_TF}/Logits/Conv2d_1c_1x1/BiasAdd"
    for name in (logits_w, logits_b):
        if name not in tf:
            raise CheckpointError(
                f"{path}: no tensor '{name}'; not the TF-slim MobileNetV2 1.0 " f"weights"
            )
    used.update((logits_w, logits_b))
    out["classifier.1.weight"] = tf[logits_w].float().flatten(1)
    out["classifier.1.bias"] = tf[logits_b].float()
    unused = sorted(set(tf) - used)
    if unused:
        raise CheckpointError(
            f"{path}: {len(unused)} tensor(s) that no part of MobileNetV2 takes, "
            f"e.g. {unused[:3]}"
        )
    if not classifier:
        out = {k: v for k, v in out.items() if not k.startswith(CLASSIFIER_KEYS)}
    return out


def mobilenetv2_imagenet(
    path: str | Path, output_stride: int = 32, classifier: bool = True
) -> MobileNetV2:
    """MobileNetV2 with the ImageNet weights loaded strictly, in eval mode."""

    model = MobileNetV2(output_stride, num_classes=IMAGENET_CLASSES if classifier else None)
    load_strict(model, imagenet_state_dict(path, classifier=classifier), path)
    return model.eval()
