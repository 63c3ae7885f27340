"""DeepLabV3+ on a ResNet (or MobileNetV2) backbone — the CosMe teacher.

``forward(x, taps=None)`` returns the taps of docs/ARCHITECTURE.md: ``c2``…``c5`` (backbone), ``lh`` (output
of the last 3×3 decoder conv, stride 4) and ``o`` (logits at stride 4, *not* upsampled).

The structural differences of the third-party releases (:mod:`cosme_ros.nets.imports.deeplab`
imports them) are constructor options (``stem``, ``dilate_first_block``, ``decoder_convs``,
``align_corners``) recorded in ``config``.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosme_ros.nets.mobilenetv2 import MobileNetV2, parse_mobilenet
from cosme_ros.nets.resnet import BACKBONE_TAPS, parse_backbone, resnet
from cosme_ros.nets.taps import ALL_TAPS, C2, C5, LH, O, Taps, select

log = logging.getLogger(__name__)

# DeepLab's ASPP rates at output stride 16; they scale inversely with the output stride.
BASE_RATES_OS16 = (6, 12, 18)


def aspp_rates_for(output_stride: int) -> List[int]:
    """(6, 12, 18) at OS 16, (12, 24, 36) at OS 8, (3, 6, 9) at OS 32 (VainF and NVIDIA agree)."""
    return [r * 16 // output_stride for r in BASE_RATES_OS16]


class ConvBNReLU(nn.Module):
    """Conv (no bias) → BatchNorm → ReLU, the unit every DeepLab head is made of."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        padding = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1, three atrous 3×3 and image pooling, concatenated in
    that order and projected back to ``channels`` by a 1×1 conv.

    As in VainF and NVIDIA, the pooling branch's BatchNorm sees one value per image and channel,
    so training mode needs batches of two or more.
    """

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1)]
            + [ConvBNReLU(in_channels, channels, 3, dilation=r) for r in rates]
        )
        self.pooling = ConvBNReLU(in_channels, channels, 1)
        self.project = ConvBNReLU(channels * (len(rates) + 2), channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        # mean instead of AdaptiveAvgPool2d (TensorRT rejects the latter with dynamic shapes), and
        # expand instead of bilinear upsampling from 1×1, which gives the same constant map.
        pooled = self.pooling(x.mean((2, 3), keepdim=True)).expand(-1, -1, h, w)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on ``c5``, 1×1 reduction of ``c2``, 3×3 decoder convs → ``lh``, 1×1 classifier → ``o``.

    ``num_classes=None`` builds no classifier (a student that only needs ``lh``).
    """

    def __init__(
        self,
        c2_channels: int,
        c5_channels: int,
        num_classes: Optional[int],
        rates: Sequence[int],
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        decoder_convs: int = 1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if decoder_convs < 1:
            raise ValueError(f"decoder_convs must be ≥ 1, got {decoder_convs}")
        self.align_corners = align_corners
        self.aspp = ASPP(c5_channels, aspp_channels, rates)
        self.low_level = ConvBNReLU(c2_channels, low_level_channels, 1)
        self.decoder = nn.Sequential(
            ConvBNReLU(low_level_channels + aspp_channels, decoder_channels, 3),
            *[ConvBNReLU(decoder_channels, decoder_channels, 3) for _ in range(decoder_convs - 1)],
        )
        self.classifier = (
            nn.Conv2d(decoder_channels, num_classes, 1) if num_classes is not None else None
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(
        self, c2: Tensor, c5: Tensor, logits: bool = True
    ) -> Tuple[Tensor, Optional[Tensor]]:
        low = self.low_level(c2)
        high = F.interpolate(
            self.aspp(c5), size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )
        lh = self.decoder(torch.cat([low, high], dim=1))
        o = self.classifier(lh) if logits and self.classifier is not None else None
        return lh, o


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ with a ResNet or MobileNetV2 backbone at output stride 8 or 16, returning taps
    c2…c5, lh, o (the low-level features are c2, ASPP reads c5).

    Every constructor argument is stored in ``config`` (YAML-friendly) so that
    ``build_deeplabv3plus(**model.config)`` rebuilds the same network for a bundle manifest.
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        num_classes: int = 19,
        output_stride: int = 16,
        *,
        width: float = 1.0,
        stem: str = "standard",
        dilate_first_block: bool = False,
        aspp_rates: Optional[Sequence[int]] = None,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        decoder_convs: int = 1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"DeepLabV3+ output_stride must be 8 or 16, got {output_stride}")
        rates = list(aspp_rates) if aspp_rates is not None else aspp_rates_for(output_stride)
        self.backbone, name = make_backbone(
            backbone, output_stride, width=width, stem=stem, dilate_first_block=dilate_first_block
        )
        self.config = dict(
            backbone=name,
            num_classes=int(num_classes),
            output_stride=int(output_stride),
            width=float(width),
            stem=stem,
            dilate_first_block=bool(dilate_first_block),
            aspp_rates=[int(r) for r in rates],
            aspp_channels=int(aspp_channels),
            low_level_channels=int(low_level_channels),
            decoder_channels=int(decoder_channels),
            decoder_convs=int(decoder_convs),
            align_corners=bool(align_corners),
        )
        self.num_classes = int(num_classes)
        bc = self.backbone.tap_channels
        self.head = DeepLabV3PlusHead(
            bc[C2],
            bc[C5],
            num_classes,
            rates,
            aspp_channels,
            low_level_channels,
            decoder_channels,
            decoder_convs,
            align_corners,
        )
        self.tap_channels: Dict[str, int] = {**bc, LH: decoder_channels, O: num_classes}
        s2 = self.backbone.tap_strides[C2]
        self.tap_strides: Dict[str, int] = {**self.backbone.tap_strides, LH: s2, O: s2}

    def forward(self, x: Tensor, taps: Optional[Sequence[str]] = None) -> Taps:
        wanted = ALL_TAPS if taps is None else tuple(taps)
        unknown = [t for t in wanted if t not in ALL_TAPS]
        if unknown:
            raise ValueError(f"DeepLabV3Plus has taps {ALL_TAPS}, not {unknown}")
        return select(backbone_and_head(self.backbone, self.head, x, wanted), wanted)


def make_backbone(
    name: str,
    output_stride: int,
    *,
    width: float = 1.0,
    stem: str = "standard",
    dilate_first_block: bool = False,
) -> Tuple[nn.Module, str]:
    """The backbone called ``name`` (a ResNet, or ``mobilenetv2``) and its canonical name.

    MobileNetV2 is built at width 1.0 with TF padding, as its ImageNet weights need; the
    ResNet-only options must keep their defaults for it.
    """
    if parse_mobilenet(name):
        if width != 1.0 or stem != "standard" or dilate_first_block:
            raise ValueError(
                f"mobilenetv2 takes no width, stem or dilate_first_block (got width "
                f"{width}, stem {stem!r}, dilate_first_block {dilate_first_block})"
            )
        return MobileNetV2(output_stride, tf_padding=True), "mobilenetv2"
    depth = parse_backbone(name)
    return resnet(
        depth, output_stride, width=width, stem=stem, dilate_first_block=dilate_first_block
    ), f"resnet{depth}"


def backbone_and_head(
    backbone: nn.Module, head: Optional["DeepLabV3PlusHead"], x: Tensor, wanted: Sequence[str]
) -> Taps:
    """Run only what ``wanted`` needs: the backbone up to its deepest asked-for stage, and the
    DeepLabV3+ head (which reads c2 and c5) only when lh or o is asked for."""
    need_head = LH in wanted or O in wanted
    backbone_taps = [t for t in BACKBONE_TAPS if t in wanted or (need_head and t in (C2, C5))]
    out = backbone(x, backbone_taps)
    if need_head:
        out[LH], o = head(out[C2], out[C5], logits=O in wanted)
        if o is not None:
            out[O] = o
    return out


def build_deeplabv3plus(**config) -> DeepLabV3Plus:
    """Rebuild a :class:`DeepLabV3Plus` from its ``config`` dict (e.g. read from a manifest)."""
    return DeepLabV3Plus(**config)
