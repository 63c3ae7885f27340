"""EdgeTPU-DeepLab-slim: DeepLab's head on MobileNet-EdgeTPU (depth multiplier 0.75) at output
stride 16, in pure torch, with named taps.

The released model (``google-coral/test_data``, Apache-2.0) exists only as an int8 TFLite graph;
:mod:`cosme_ros.nets.imports.tflite_deeplab` reads it. This module writes the graph out as a
network: :data:`BLOCKS` is its block table, read off the file's operators (kernel, stride,
dilation, widths, where the residual additions are) and checked against them at import. BatchNorm
is already folded into every convolution in the file, so each layer here is a conv with a bias —
the teacher is frozen, nothing would train those statistics.

MobileNet-EdgeTPU (Gupta and Akin, 2020) mixes two inverted bottlenecks: *fused* ones, a regular
3×3 conv to the expanded width followed by a 1×1 projection (the early, high-resolution blocks,
where a depthwise conv runs poorly on the Edge TPU), and regular ones (1×1 expansion, depthwise
k×k, 1×1 projection). At output stride 16 the last stage (originally stride 32) runs at stride 1
with dilation 2, its first block keeping dilation 1.

The DeepLab head of the "slim" variant has no atrous branches and no decoder: ``aspp0`` (a 1×1
conv of ``Conv_1``) beside image pooling (global average → 1×1 conv, broadcast back), concatenated
(pooling first), ``concat_projection`` (1×1 to 128) and the 1×1 classifier ``logits``. TFLite
averages the pool over a fixed 33×33 window, the whole map at its 513×513 input; here it is the
mean over the whole map at every input size, which is what the window meant.

Padding is TensorFlow's "SAME": for the stride-2 convs it pads 0 before and 1 after an even-sized
input (symmetric for the odd 513 the model was exported at), computed per input in ``forward``.

Taps (:mod:`cosme_ros.nets.taps`):

====  ======  ========  ==================================================================
tap   stride  channels  tensor
====  ======  ========  ==================================================================
c2    4       24        ``expanded_conv_4`` output (end of the stride-4 stage)
c3    8       40        ``expanded_conv_8`` output (end of the stride-8 stage)
c4    16      72        ``expanded_conv_16`` output (end of the stride-16 stages)
c5    16      1280      ``Conv_1`` output (end of the dilated last stage: what the head reads)
lh    16      128       ``concat_projection`` output (the last hidden layer)
o     16      classes   ``logits`` (before the upsampling to the input size)
====  ======  ========  ==================================================================

The prediction is ``o`` upsampled bilinearly with ``align_corners=True`` (the graph's
``ResizeBilinear`` ops). Input: RGB, real = pixel / 128 − 1 (the input tensor's quantisation), i.e.
RGB in [0, 1] normalised with mean and std 128/255 (:data:`MEAN`, :data:`STD`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosme_ros.nets.mobilenetv2 import same_padding
from cosme_ros.nets.taps import C2, C3, C4, C5, LH, O, Taps, logits_at_input, parse_taps, select

MEAN = (128 / 255,) * 3
STD = (128 / 255,) * 3

STEM_CHANNELS = 24
LAST_CHANNELS = 1280  # Conv_1
HEAD_CHANNELS = 128  # aspp0, image_pooling, concat_projection


@dataclass(frozen=True)
class Block:
    """One inverted bottleneck. ``expand`` is the expanded width (0: no expansion, a projection
    only); ``fused``: the expansion is a regular ``kernel``×``kernel`` conv and there is no
    depthwise conv."""

    expand: int
    out: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    fused: bool = False
    residual: bool = False


def _fused(expand: int, out: int, stride: int = 1, residual: bool = False) -> Block:
    return Block(expand, out, 3, stride, 1, True, residual)


# expanded_conv, expanded_conv_1 … expanded_conv_21, as the file has them.
BLOCKS: Tuple[Block, ...] = (
    Block(0, 16, kernel=1),
    _fused(128, 24, stride=2),
    *[_fused(96, 24, residual=True)] * 3,
    _fused(192, 40, stride=2),
    *[_fused(160, 40, residual=True)] * 3,
    Block(320, 72, stride=2),
    *[Block(288, 72, residual=True)] * 3,
    Block(576, 72),
    *[Block(288, 72, residual=True)] * 3,
    Block(576, 120, kernel=5),
    *[Block(480, 120, kernel=5, dilation=2, residual=True)] * 3,
    Block(960, 144, dilation=2),
)
# Index of the block whose output is each tap (c5 is Conv_1, after the last block).
TAP_BLOCK = {C2: 4, C3: 8, C4: 16}
TAP_CHANNELS = {C2: 24, C3: 40, C4: 72, C5: LAST_CHANNELS, LH: HEAD_CHANNELS}
TAP_STRIDES = {C2: 4, C3: 8, C4: 16, C5: 16, LH: 16, O: 16}


class SameConv(nn.Conv2d):
    """A biased conv with TensorFlow "SAME" padding, computed per input when the conv strides."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        # At stride 1 "SAME" is symmetric for odd kernels: static padding, nothing per input.
        static = 0 if stride > 1 else dilation * (kernel - 1) // 2
        super().__init__(cin, cout, kernel, stride, static, dilation, groups, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] > 1:
            k, s, d = self.kernel_size[0], self.stride[0], self.dilation[0]
            top, bottom = same_padding(x.shape[-2], k, s, d)
            left, right = same_padding(x.shape[-1], k, s, d)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class InvertedBottleneck(nn.Module):
    """A regular or fused inverted bottleneck (:class:`Block`); ReLU after the expansion and the
    depthwise conv, a linear projection, the input added where the file adds it."""

    def __init__(self, cin: int, spec: Block) -> None:
        super().__init__()
        self.spec = spec
        width = spec.expand or cin
        if spec.fused:
            self.expand = SameConv(cin, width, spec.kernel, spec.stride, spec.dilation)
        elif spec.expand:
            self.expand = SameConv(cin, width)
        if not spec.fused and spec.expand:
            self.depthwise = SameConv(
                width, width, spec.kernel, spec.stride, spec.dilation, groups=width
            )
        self.project = SameConv(width, spec.out)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.spec.expand:
            y = F.relu(self.expand(y))
            if not self.spec.fused:
                y = F.relu(self.depthwise(y))
        y = self.project(y)
        return y + x if self.spec.residual else y


class EdgeTPUDeepLab(nn.Module):
    """EdgeTPU-DeepLab-slim; ``forward(x, taps)`` returns the named feature maps."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.config = {"num_classes": self.num_classes}
        self.stem = SameConv(3, STEM_CHANNELS, 3, stride=2)
        blocks: List[nn.Module] = []
        cin = STEM_CHANNELS
        for spec in BLOCKS:
            blocks.append(InvertedBottleneck(cin, spec))
            cin = spec.out
        self.blocks = nn.ModuleList(blocks)
        self.conv_1 = SameConv(cin, LAST_CHANNELS)
        self.aspp0 = SameConv(LAST_CHANNELS, HEAD_CHANNELS)
        self.image_pooling = SameConv(LAST_CHANNELS, HEAD_CHANNELS)
        self.concat_projection = SameConv(2 * HEAD_CHANNELS, HEAD_CHANNELS)
        self.logits = SameConv(HEAD_CHANNELS, self.num_classes)
        self.tap_channels: Dict[str, int] = {**TAP_CHANNELS, O: self.num_classes}
        self.tap_strides: Dict[str, int] = dict(TAP_STRIDES)

    def forward(self, x: Tensor, taps: Optional[Iterable[str]] = None) -> Taps:
        wanted = tuple(self.tap_channels) if taps is None else parse_taps(taps)
        out: Taps = {}
        y = F.relu(self.stem(x))
        for i, block in enumerate(self.blocks):
            y = block(y)
            for tap, index in TAP_BLOCK.items():
                if index == i:
                    out[tap] = y
        out[C5] = F.relu(self.conv_1(y))
        if LH in wanted or O in wanted:
            pooled = F.relu(self.image_pooling(out[C5].mean(dim=(2, 3), keepdim=True)))
            aspp = F.relu(self.aspp0(out[C5]))
            both = torch.cat([pooled.expand_as(aspp), aspp], dim=1)
            out[LH] = F.relu(self.concat_projection(both))
            out[O] = self.logits(out[LH])
        return select(out, wanted)

    def predict_logits(self, x: Tensor) -> Tensor:
        """Full-resolution logits as the graph produces them: ``o`` upsampled bilinearly with
        ``align_corners=True``."""
        return logits_at_input(self, x)


def build_edgetpu_deeplab(num_classes: int = 19) -> EdgeTPUDeepLab:
    """Rebuild the network from its ``config`` dict (untrained weights)."""
    return EdgeTPUDeepLab(num_classes=num_classes)
