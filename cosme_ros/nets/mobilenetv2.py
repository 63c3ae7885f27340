"""MobileNetV2 1.0 (Sandler et al., CVPR 2018) returning the taps ``c2`` … ``c5``, and import of the
ImageNet weights of TF-slim's MobileNetV2 — the pretrained backbone of the demo teacher.

Written with torchvision's parameter names and block structure (``features.0`` the stem,
``features.1`` … ``features.17`` the inverted residuals with their ``conv`` Sequential,
``features.18`` the 1×1 conv to 1280 channels, ``classifier.1`` the linear layer), so that
torchvision checkpoints would map key for key. The taps are the outputs of the last block of each
resolution, where DeepLab reads them (VainF's DeepLabV3+ takes ``features[0:4]`` as the low-level
stage and ``features[4:-1]`` as the high-level one):

    c2 = features[3]   24 ch, stride 4
    c3 = features[6]   32 ch, stride 8
    c4 = features[13]  96 ch, stride 16
    c5 = features[17] 320 ch, stride 32 (16 with ``output_stride=16``: the last two stages are
                       dilated, the first block of a dilated stage keeping the previous dilation)

``features.18`` and the classifier exist only with ``num_classes`` (to check the ImageNet import);
a segmentation backbone stops at ``c5``, as VainF's does.

Two choices follow the TF weights rather than torchvision:

- ``tf_padding=True``: TF "SAME" padding for the stride-2 convs, which pads 0 before and 1 after an
  even-sized input (torchvision pads 1 on both sides). The ImageNet weights were trained with it;
  with symmetric padding every stride-2 layer would see its input shifted by half a pixel.
- The weights on disk have BatchNorm folded into each conv. :func:`imagenet_state_dict` puts the
  folded bias into an identity BatchNorm (weight 1, mean 0, variance 1 − eps), exact in eval mode.
  Batch statistics would re-standardise every channel and throw the pretrained scales away, so a
  network fine-tuned from these weights keeps its backbone BatchNorms in eval mode
  (``freeze_batchnorm``); their affine parameters still train.
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosme_ros.nets.taps import C2, C3, C4, C5, Taps, select

BACKBONE_TAPS = (C2, C3, C4, C5)

# (expansion t, output channels c, blocks n, first stride s): Table 2 of the paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Index in ``features`` of the block whose output is each tap.
TAP_INDEX = {C2: 3, C3: 6, C4: 13, C5: 17}
TAP_CHANNELS = {C2: 24, C3: 32, C4: 96, C5: 320}
LAST_CHANNELS = 1280

# Input scaling of the TF weights: real = pixel / 127.5 − 1, i.e. RGB in [0, 1] normalised with
# mean 0.5 and std 0.5.
MOBILENET_MEAN = (0.5, 0.5, 0.5)
MOBILENET_STD = (0.5, 0.5, 0.5)

BN_EPS = 1e-5  # torchvision's; irrelevant to the folded weights, which carry no statistics


def same_padding(n: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
    """TF "SAME" padding (before, after) of one dimension of size ``n``."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(n / stride) - 1) * stride + effective - n, 0)
    return total // 2, total - total // 2


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) → BatchNorm → ReLU6 (``act=False``: no activation), torchvision's
    ``Conv2dNormActivation`` layout (children ``0``, ``1``, ``2``).

    With ``tf_padding`` a strided conv is padded here, before the Sequential runs, so that the
    padding survives BatchNorm folding (which replaces the children).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: bool = True,
        tf_padding: bool = False,
    ) -> None:
        self.pad_in_forward = tf_padding and stride > 1
        padding = 0 if self.pad_in_forward else dilation * (kernel_size - 1) // 2
        layers: List[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, eps=BN_EPS),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)
        self.geometry = (kernel_size, stride, dilation)
        # Run in fp32 even under bf16 autocast (see MobileNetV2.depthwise_in_fp32).
        self.fp32_under_autocast = False

    def forward(self, x: Tensor) -> Tensor:
        if self.pad_in_forward:
            k, s, d = self.geometry
            top, bottom = same_padding(x.shape[-2], k, s, d)
            left, right = same_padding(x.shape[-1], k, s, d)
            x = F.pad(x, (left, right, top, bottom))
        if self.fp32_under_autocast and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class InvertedResidual(nn.Module):
    """1×1 expansion (t ≠ 1) → 3×3 depthwise (strided or dilated) → 1×1 linear projection, with a
    residual connection when the shape is kept (Sandler et al., Fig. 3b)."""

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
        tf_padding: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(
                hidden, hidden, 3, stride, groups=hidden, dilation=dilation, tf_padding=tf_padding
            ),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup, eps=BN_EPS),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0; ``forward(x, taps=None)`` returns ``{"c2": …, …, "c5": …}``.

    ``output_stride`` 32 (ImageNet), 16 or 8 (the stages past it dilated instead of strided).
    ``num_classes`` adds ``features.18`` and the classifier (see :meth:`classify`).
    """

    def __init__(
        self, output_stride: int = 32, num_classes: Optional[int] = None, tf_padding: bool = True
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.output_stride = output_stride
        self.freeze_batchnorm = False
        features: List[nn.Module] = [ConvBNReLU6(3, 32, 3, stride=2, tf_padding=tf_padding)]
        strides: List[int] = [2]
        inp, current_stride, dilation = 32, 2, 1
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            previous_dilation = dilation
            if current_stride == output_stride:  # as VainF: dilate instead of striding
                stride, dilation = 1, dilation * s
            else:
                stride, current_stride = s, current_stride * s
            for i in range(n):
                features.append(
                    InvertedResidual(
                        inp,
                        c,
                        stride if i == 0 else 1,
                        t,
                        dilation=previous_dilation if i == 0 else dilation,
                        tf_padding=tf_padding,
                    )
                )
                strides.append(current_stride)
                inp = c
        self.classifier: Optional[nn.Sequential] = None
        if num_classes is not None:
            features.append(ConvBNReLU6(inp, LAST_CHANNELS, kernel_size=1))
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(LAST_CHANNELS, num_classes))
        self.features = nn.Sequential(*features)
        self.tap_channels: Dict[str, int] = dict(TAP_CHANNELS)
        self.tap_strides: Dict[str, int] = {t: strides[i] for t, i in TAP_INDEX.items()}

        for m in self.modules():  # torchvision's initialisation, for networks trained from scratch
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> "MobileNetV2":
        """As ``nn.Module.train``, but BatchNorms stay in eval mode while ``freeze_batchnorm``."""
        super().train(mode)
        if self.freeze_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def depthwise_in_fp32(self, on: bool = True) -> None:
        """Run the 3×3 depthwise convs in fp32 under bf16 autocast (training on a CPU).

        oneDNN's bf16 depthwise *backward* is far slower than its fp32 one on CPUs: measured on
        the demo teacher (batch 8, 192×384, 2 cores, AMX) the dilated 960-channel convs of the
        last stage take 130 ms per step in bf16 against 41 ms in fp32, the stride-2 one at
        stride 4 71 ms against 18. The 1×1 convs, where bf16 is fast, stay in bf16; a training
        step goes from 0.72 to 0.61 s. Inference is untouched (off by default).
        """
        for m in self.modules():
            if isinstance(m, ConvBNReLU6) and m[0].groups > 1:
                m.fp32_under_autocast = on

    def forward(self, x: Tensor, taps: Optional[Sequence[str]] = None) -> Taps:
        """Backbone taps c2…c5; stops after the deepest one ``taps`` asks for."""
        wanted = BACKBONE_TAPS if taps is None else tuple(taps)
        unknown = [t for t in wanted if t not in BACKBONE_TAPS]
        if unknown:
            raise ValueError(f"MobileNetV2 has taps {BACKBONE_TAPS}, not {unknown}")
        at = {TAP_INDEX[t]: t for t in wanted}
        last = max(at, default=-1)
        out: Taps = {}
        for i in range(last + 1):
            x = self.features[i](x)
            if i in at:
                out[at[i]] = x
        return select(out, wanted)

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits (global average pool → linear); only when built with ``num_classes``."""
        if self.classifier is None:
            raise RuntimeError("this MobileNetV2 was built without a classifier (num_classes=None)")
        return self.classifier(self.features(x).mean((2, 3)))


def parse_mobilenet(name: str) -> bool:
    """True for ``mobilenetv2`` / ``mobilenet_v2`` / ``mobilenet-v2`` (any case)."""
    return re.sub(r"[-_ ]", "", str(name).lower()) == "mobilenetv2"
