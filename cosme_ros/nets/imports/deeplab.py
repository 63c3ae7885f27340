"""Import of the DeepLabV3+ checkpoints users have, key for key.

Two third-party layouts load key for key (every key is either mapped or, for a short list of
training-only keys, dropped by exact name; then :func:`load_strict`):

- **VainF** ``DeepLabV3Plus-Pytorch`` (``{'model_state': …}``): ``backbone.*`` (torchvision
  names, no ``fc``), ``classifier.aspp.convs.{0..4}`` (1×1, three atrous 3×3, image pooling),
  ``classifier.aspp.project``, ``classifier.project`` (48-ch low-level 1×1) and
  ``classifier.classifier.{0,1,3}`` (one 3×3 conv 304→256, BN, 1×1 → classes);
  torchvision dilation; ``align_corners=False``.
- **NVIDIA semantic-segmentation / SML** (``{'state_dict': …}``, ``module.`` prefixes):
  ``layer0`` stem (ResNet-101 has the deep three-3×3 stem), ``layer1``…``layer4``,
  ``aspp.img_conv`` + ``aspp.features.{0..3}`` (image pooling is *first* in the concat),
  ``bot_aspp`` (1280→256), ``bot_fine`` (48-ch), ``final1`` (two 3×3 convs), ``final2`` (1×1);
  every block of a dilated stage is dilated; bilinear upsampling with ``align_corners=True``;
  a training-only auxiliary head ``dsn`` that is dropped.

The structural differences are constructor options (``stem``, ``dilate_first_block``,
``decoder_convs``, ``align_corners``) recorded in ``config``. The ASPP concat order is not an
option: the SML 1×1 projection weight is permuted on import instead, which is exact.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from cosme_ros.errors import CheckpointError
from cosme_ros.nets.deeplabv3plus import DeepLabV3Plus
from cosme_ros.nets.imports.checkpoints import (
    StateDict,
    extract_state_dict,
    load_strict,
    read_checkpoint,
    strip_prefix,
)
from cosme_ros.nets.resnet import ARCHS, Bottleneck, parse_backbone

log = logging.getLogger(__name__)

VAINF, SML = "vainf", "sml"

# The conventions of each layout that the weights do not reveal.
LAYOUT_OPTIONS = {
    VAINF: dict(dilate_first_block=False, align_corners=False),
    SML: dict(dilate_first_block=True, align_corners=True),
}


# Output stride of the released checkpoints (VainF's Cityscapes model is OS 16, SML's is OS 8).
DEFAULT_OUTPUT_STRIDE = {VAINF: 16, SML: 8}


# Keys of the NVIDIA/SML model that are not part of the inference network, dropped by exact name:
# the auxiliary "dsn" head on layer3 (training loss only) and SML's fixed smoothing filters.
SML_DROPPED = frozenset(
    ["dsn.0.weight", "dsn.0.bias", "dsn.4.weight", "dsn.4.bias"]
    + [
        f"dsn.1.{p}"
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]
    + ["multi_scale.first_conv.weight", "multi_scale.second_conv.weight"]
)


def _prefix_rules_vainf() -> List[Tuple[str, str]]:
    rules = [("backbone.", "backbone.")]
    for i in range(4):
        rules += [
            (f"classifier.aspp.convs.{i}.0.", f"head.aspp.branches.{i}.conv."),
            (f"classifier.aspp.convs.{i}.1.", f"head.aspp.branches.{i}.bn."),
        ]
    # ASPPPooling is Sequential(AdaptiveAvgPool2d, Conv2d, BatchNorm2d, ReLU)
    rules += [
        ("classifier.aspp.convs.4.1.", "head.aspp.pooling.conv."),
        ("classifier.aspp.convs.4.2.", "head.aspp.pooling.bn."),
        ("classifier.aspp.project.0.", "head.aspp.project.conv."),
        ("classifier.aspp.project.1.", "head.aspp.project.bn."),
        ("classifier.project.0.", "head.low_level.conv."),
        ("classifier.project.1.", "head.low_level.bn."),
        ("classifier.classifier.0.", "head.decoder.0.conv."),
        ("classifier.classifier.1.", "head.decoder.0.bn."),
        ("classifier.classifier.3.", "head.classifier."),
    ]
    return rules


def _prefix_rules_sml(deep_stem: bool) -> List[Tuple[str, str]]:
    # layer0 is Sequential(conv1, bn1, relu[, conv2, bn2, relu, conv3, bn3, relu], maxpool)
    stem = {0: "conv1", 1: "bn1"}
    if deep_stem:
        stem.update({3: "conv2", 4: "bn2", 6: "conv3", 7: "bn3"})
    rules = [(f"layer0.{i}.", f"backbone.{name}.") for i, name in stem.items()]
    rules += [(f"layer{i}.", f"backbone.layer{i}.") for i in range(1, 5)]
    rules += [
        ("aspp.img_conv.0.", "head.aspp.pooling.conv."),
        ("aspp.img_conv.1.", "head.aspp.pooling.bn."),
    ]
    for i in range(4):
        rules += [
            (f"aspp.features.{i}.0.", f"head.aspp.branches.{i}.conv."),
            (f"aspp.features.{i}.1.", f"head.aspp.branches.{i}.bn."),
        ]
    # final1 is Sequential(conv, bn, relu, conv, bn, relu)
    rules += [
        ("bot_aspp.0.", "head.aspp.project.conv."),
        ("bot_aspp.1.", "head.aspp.project.bn."),
        ("bot_fine.0.", "head.low_level.conv."),
        ("bot_fine.1.", "head.low_level.bn."),
        ("final1.0.", "head.decoder.0.conv."),
        ("final1.1.", "head.decoder.0.bn."),
        ("final1.3.", "head.decoder.1.conv."),
        ("final1.4.", "head.decoder.1.bn."),
        ("final2.0.", "head.classifier."),
    ]
    return rules


def _apply_rules(
    state: StateDict, rules: List[Tuple[str, str]], layout: str, path: str | Path
) -> StateDict:
    out: StateDict = {}
    unmatched = []
    for key, value in state.items():
        for src, dst in rules:
            if key.startswith(src):
                out[dst + key[len(src) :]] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise CheckpointError(
            f"{path}: {len(unmatched)} key(s) of the {layout} DeepLabV3+ layout "
            f"that no part of the network takes, e.g. {unmatched[:3]}"
        )
    return out


def map_vainf_keys(state: StateDict, path: str | Path = "<state dict>") -> StateDict:
    """VainF ``DeepLabV3Plus-Pytorch`` keys → ours. Every key must map."""
    return _apply_rules(state, _prefix_rules_vainf(), "VainF", path)


def map_sml_keys(
    state: StateDict, path: str | Path = "<state dict>"
) -> Tuple[StateDict, List[str]]:
    """NVIDIA/SML ``DeepV3Plus`` keys (``module.`` already stripped) → ours, plus the dropped keys.

    The ASPP projection (``bot_aspp``) consumes [pooling, 1×1, 3×3 ×3] there and
    [1×1, 3×3 ×3, pooling] here, so its input channels are rotated.
    """
    dropped = sorted(k for k in state if k in SML_DROPPED)
    kept = {k: v for k, v in state.items() if k not in SML_DROPPED}
    out = _apply_rules(kept, _prefix_rules_sml("layer0.3.weight" in kept), "NVIDIA/SML", path)
    key = "head.aspp.project.conv.weight"
    if key in out:
        w = out[key]
        if w.dim() != 4 or w.shape[1] % 5:
            raise CheckpointError(
                f"{path}: bot_aspp.0.weight has shape {tuple(w.shape)}; expected "
                f"(C, 5·C', 1, 1) for five ASPP branches"
            )
        c = w.shape[1] // 5
        out[key] = torch.cat([w[:, c:], w[:, :c]], dim=1).contiguous()
    return out, dropped


def detect_layout(state: StateDict) -> Optional[str]:
    """'vainf', 'sml' or None, from characteristic key prefixes (``module.`` stripped)."""

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in state)

    if has("classifier.aspp.convs."):
        return VAINF
    if has("aspp.features.") or has("bot_aspp."):
        return SML
    return None


def infer_config(state: StateDict, path: str | Path = "<state dict>") -> Dict[str, object]:
    """Architecture arguments readable from our-layout weights: backbone depth, width, stem,
    number of classes and head widths. (Output stride and dilation are not in the weights.)"""

    def shape(key: str) -> Tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{path}: no '{key}' after key mapping; not a ResNet DeepLabV3+")
        return tuple(state[key].shape)

    shape("backbone.conv1.weight")
    blocks = []
    for i in range(1, 5):
        idx = {
            int(m.group(1))
            for k in state
            for m in [re.match(rf"backbone\.layer{i}\.(\d+)\.", k)]
            if m
        }
        if not idx:
            raise CheckpointError(f"{path}: no backbone.layer{i} blocks; not a ResNet DeepLabV3+")
        blocks.append(max(idx) + 1)
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    depth = next(
        (
            d
            for d, (block, layers) in ARCHS.items()
            if tuple(layers) == tuple(blocks) and (block is Bottleneck) == bottleneck
        ),
        None,
    )
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise CheckpointError(
            f"{path}: backbone with {blocks} {kind} blocks per stage is no "
            f"ResNet-18/34/50/101/152"
        )
    stem = "deep" if "backbone.conv2.weight" in state else "standard"
    base = shape("backbone.layer1.0.conv1.weight")[0]
    decoder_convs = len(
        {
            int(m.group(1))
            for k in state
            for m in [re.match(r"head\.decoder\.(\d+)\.conv\.weight$", k)]
            if m
        }
    )
    return dict(
        backbone=f"resnet{depth}",
        num_classes=shape("head.classifier.weight")[0],
        width=base / 64,
        stem=stem,
        aspp_channels=shape("head.aspp.project.conv.weight")[0],
        low_level_channels=shape("head.low_level.conv.weight")[0],
        decoder_channels=shape("head.decoder.0.conv.weight")[0],
        decoder_convs=decoder_convs,
    )


def _stride_from_name(path: Path) -> Optional[int]:
    m = re.search(r"os(8|16|32)(?!\d)", path.name, flags=re.IGNORECASE)
    return int(m.group(1)) if m else None


def load_deeplabv3plus_checkpoint(
    path: str | Path, backbone: Optional[str] = None, output_stride: Optional[int] = None
) -> DeepLabV3Plus:
    """Read a VainF or NVIDIA/SML DeepLabV3+ ``.pth`` and return our network with its weights,
    in eval mode.

    The layout is detected from the keys and the architecture (backbone depth, stem, number of
    classes, decoder depth) from the tensors' shapes; ``backbone``, when given, must agree.
    ``output_stride`` is not stored in the weights: when None it is read from an ``os8``/``os16``
    token in the file name, else the layout's release default (VainF 16, SML 8).
    Any mismatch is one :class:`CheckpointError` line naming the file.
    """
    path = Path(path)
    state = strip_prefix(extract_state_dict(read_checkpoint(path), path), "module.")
    layout = detect_layout(state)
    if layout is None:
        sample = sorted(state)[:3]
        hint = ""
        if any(k.startswith("classifier.classifier.0.convs.") for k in state):
            hint = " (VainF DeepLabV3 without the '+' decoder)"
        elif any(k.startswith("head.aspp.branches.") for k in state):
            # our own weights carry no dilation/upsampling conventions: the bundle's config does
            hint = " (cosme_ros's own layout: rebuild it with build_deeplabv3plus(**config))"
        raise CheckpointError(
            f"{path}: not a DeepLabV3+ checkpoint in a known layout (VainF "
            f"DeepLabV3Plus-Pytorch or NVIDIA/SML){hint}; "
            f"keys look like {sample}"
        )
    dropped: List[str] = []
    if layout == VAINF and any(".body." in k for k in state):
        raise CheckpointError(
            f"{path}: a VainF DeepLabV3+ saved after convert_to_separable_conv (depthwise-"
            f"separable convolutions in the ASPP and decoder, keys like "
            f"{next(k for k in state if '.body.' in k)!r}); only the standard convolutions of "
            f"the released checkpoints are supported: export the model before converting it"
        )
    if layout == VAINF:
        mapped = map_vainf_keys(state, path)
    else:
        mapped, dropped = map_sml_keys(state, path)

    arch = infer_config(mapped, path)
    if arch["num_classes"] < 2:
        raise CheckpointError(
            f"{path}: the classifier has {arch['num_classes']} output row(s); "
            f"a segmentation teacher needs at least 2 classes"
        )
    try:
        requested = parse_backbone(backbone) if backbone is not None else None
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if requested is not None and requested != parse_backbone(arch["backbone"]):
        raise CheckpointError(
            f"{path}: holds a {arch['backbone']} DeepLabV3+, not the requested " f"{backbone}"
        )
    if output_stride is None:
        output_stride = _stride_from_name(path) or DEFAULT_OUTPUT_STRIDE[layout]
    try:
        model = DeepLabV3Plus(output_stride=output_stride, **arch, **LAYOUT_OPTIONS[layout])
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None

    # Checkpoints written before PyTorch 0.4.1 have no BatchNorm step counters; they only matter
    # for training with momentum=None, so zeros are an exact stand-in.
    if not any(k.endswith("num_batches_tracked") for k in mapped):
        for k, v in model.state_dict().items():
            if k.endswith("num_batches_tracked"):
                mapped[k] = torch.zeros_like(v)
    load_strict(model, mapped, path)
    log.info(
        "%s: loaded %s DeepLabV3+ (%s, %d classes, OS %d); dropped training-only keys: %s",
        path,
        layout,
        arch["backbone"],
        arch["num_classes"],
        output_stride,
        dropped or "none",
    )
    return model.eval()
