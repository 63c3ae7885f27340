"""CFPNet (Lou and Loew, "CFPNet: Channel-wise Feature Pyramid for Real-Time Semantic
Segmentation", ICIP 2021) in pure torch, with named taps.

Written after the reading of ``zh320/realtime-semantic-segmentation-pytorch`` (Apache-2.0, the
release whose Cityscapes checkpoint we import): module and parameter names follow its state dict,
so that ``cfpnet_crop-1024_800epoch.pth`` loads strictly. The code here is ours.

The network (0.27 M parameters) has no stage below stride 8:

- a stem of three 3×3 conv-BN-PReLU (the first strided) to stride 2, 32 channels;
- ``downsample1``: the stem's output concatenated with the image at stride 2, then ENet's initial
  block (a strided 3×3 conv to 64 − 35 channels beside a 3×3 max-pool of its 35 input channels);
- ``cfp1``: two CFP modules at stride 4 (64 channels, dilation rates 2, 2);
- ``downsample2``: the same with the image at stride 4, to 128 channels at stride 8;
- ``cfp2``: six CFP modules (dilation rates 4, 4, 8, 8, 16, 16);
- ``seg_head``: the image at stride 8 concatenated (131 channels), then one 1×1 conv-BN-PReLU to
  the classes. The logits therefore pass through BatchNorm and a PReLU: that is how the released
  model was trained, so ``o`` is that output.

A CFP module projects to C/4 channels, runs four feature-pyramid channels (FPC) with dilations
``ceil(r·(1/r, 1/4, 1/2, 1))``, adds each FPC's output to the next one's (hierarchical feature
fusion), concatenates them, projects back to C with a 1×1 conv and adds its input. An FPC is three
factorised (3×1 then 1×3) dilated convs in a chain with C/4, C/4 and C/2 of its channels.

Taps (:mod:`cosme_ros.nets.taps`; the stages at strides 4 and 8 are all that exist):

====  ======  ========  ========================================================
tap   stride  channels  tensor
====  ======  ========  ========================================================
c2    4       64        ``cfp1`` output (end of the stride-4 stage)
c3    8       128       ``cfp2`` output (end of the stride-8 stage, the encoder)
lh    8       131       ``seg_head`` input: ``c3`` with the image at stride 8
o     8       classes   ``seg_head`` output (logits after BN and PReLU)
====  ======  ========  ========================================================

The reference downsamples the image with ``scale_factor`` 1/2, 1/4, 1/8 (bilinear,
``align_corners=True``), which only matches the strided convs' sizes for inputs divisible by 8;
here the image is resized to each feature's own size, identical for those inputs and defined for
every other. Its prediction is ``o`` upsampled bilinearly with ``align_corners=True``.

Input: RGB in [0, 1] normalised with the ImageNet mean/std.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosme_ros.nets import IMAGENET_MEAN, IMAGENET_STD
from cosme_ros.nets.taps import C2, C3, LH, O, Taps, logits_at_input, parse_taps, select

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD

STEM_CHANNELS = 32
STAGE_CHANNELS = (64, 128)
# Dilation rate r of each CFP module of cfp1 and cfp2 (the release's n = 2, m = 6).
DILATIONS = ((2, 2), (4, 4, 8, 8, 16, 16))
# An FPC's dilation for each of a CFP module's four channels is ceil(r * ratio).
FPC_RATIOS = (None, 1 / 4, 1 / 2, 1.0)  # None: 1/r, i.e. dilation 1
IMAGE_CHANNELS = 3


class PReLUAct(nn.Module):
    """A single-parameter PReLU under the attribute name the release's state dict uses."""

    def __init__(self) -> None:
        super().__init__()
        self.activation = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x)


class ConvBNAct(nn.Sequential):
    """Conv (no bias, "same" padding for odd kernels) → BatchNorm → PReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | Tuple[int, int] = 3,
        stride: int = 1,
        dilation: int = 1,
    ) -> None:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        padding = ((kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation)
        super().__init__(
            nn.Conv2d(cin, cout, (kh, kw), stride, padding, dilation, bias=False),
            nn.BatchNorm2d(cout),
            PReLUAct(),
        )


class Downsampling(nn.Module):
    """ENet's initial block: a strided 3×3 conv beside a 3×3 max-pool of the same input,
    concatenated (conv channels first)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(cin, cout - cin, 3, stride=2)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


class FeaturePyramidChannel(nn.Module):
    """Three factorised dilated convs in a chain (C/4, C/4, C/2 channels), outputs concatenated."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"an FPC needs a multiple of 4 channels, got {channels}")
        widths = (channels // 4, channels // 4, channels // 2)
        cin = channels
        for i, width in enumerate(widths, start=1):
            block = nn.Sequential(
                ConvBNAct(cin, width, (3, 1), dilation=dilation),
                ConvBNAct(width, width, (1, 3), dilation=dilation),
            )
            self.add_module(f"block{i}", block)
            cin = width

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.block1(x)
        x2 = self.block2(x1)
        return torch.cat([x1, x2, self.block3(x2)], dim=1)


class CFPModule(nn.Module):
    """Projection to C/4, four FPCs fused hierarchically, concatenation, 1×1 back to C, residual."""

    def __init__(self, channels: int, rate: int) -> None:
        super().__init__()
        width = channels // len(FPC_RATIOS)
        self.conv_init = ConvBNAct(channels, width, 1)
        self.layers = nn.ModuleList(
            FeaturePyramidChannel(width, 1 if r is None else math.ceil(rate * r))
            for r in FPC_RATIOS
        )
        self.conv_last = ConvBNAct(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_init(x)
        feats = []
        for layer in self.layers:
            f = layer(y)
            feats.append(f if not feats else f + feats[-1])
        return self.conv_last(torch.cat(feats, dim=1)) + x


def _image_at(image: Tensor, like: Tensor) -> Tensor:
    """The input image resized to a feature map's size, as the release downsamples it."""
    return F.interpolate(image, size=like.shape[-2:], mode="bilinear", align_corners=True)


class CFPNet(nn.Module):
    """CFPNet segmentation network; ``forward(x, taps)`` returns the named feature maps."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.config = {"num_classes": self.num_classes}
        stem, (c_mid, c_out) = STEM_CHANNELS, STAGE_CHANNELS
        self.conv_init = nn.Sequential(
            ConvBNAct(IMAGE_CHANNELS, stem, 3, stride=2),
            ConvBNAct(stem, stem),
            ConvBNAct(stem, stem),
        )
        self.downsample1 = Downsampling(stem + IMAGE_CHANNELS, c_mid)
        self.cfp1 = nn.Sequential(*(CFPModule(c_mid, r) for r in DILATIONS[0]))
        self.downsample2 = Downsampling(c_mid + IMAGE_CHANNELS, c_out)
        self.cfp2 = nn.Sequential(*(CFPModule(c_out, r) for r in DILATIONS[1]))
        self.seg_head = ConvBNAct(c_out + IMAGE_CHANNELS, self.num_classes, 1)
        self.tap_channels: Dict[str, int] = {
            C2: c_mid,
            C3: c_out,
            LH: c_out + IMAGE_CHANNELS,
            O: self.num_classes,
        }
        self.tap_strides: Dict[str, int] = {C2: 4, C3: 8, LH: 8, O: 8}

    def forward(self, x: Tensor, taps: Optional[Iterable[str]] = None) -> Taps:
        wanted = tuple(self.tap_channels) if taps is None else parse_taps(taps)
        unknown = [t for t in wanted if t not in self.tap_channels]
        if unknown:
            raise ValueError(
                f"CFPNet has no tap(s) {unknown}; its taps are {sorted(self.tap_channels)}"
            )
        y = self.conv_init(x)
        y = self.downsample1(torch.cat([y, _image_at(x, y)], dim=1))
        out: Taps = {C2: self.cfp1(y)}
        y = self.downsample2(torch.cat([out[C2], _image_at(x, out[C2])], dim=1))
        out[C3] = self.cfp2(y)
        if LH in wanted or O in wanted:
            out[LH] = torch.cat([out[C3], _image_at(x, out[C3])], dim=1)
            out[O] = self.seg_head(out[LH])
        return select(out, wanted)

    def predict_logits(self, x: Tensor) -> Tensor:
        """Full-resolution logits as the release produces them: ``o`` upsampled bilinearly with
        ``align_corners=True``."""
        return logits_at_input(self, x)


def build_cfpnet(num_classes: int = 19) -> CFPNet:
    """Rebuild the network from its ``config`` dict (untrained weights)."""
    return CFPNet(num_classes=num_classes)
