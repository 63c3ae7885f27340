"""ResNet-18/34/50/101/152 backbones returning the taps ``c2`` … ``c5``.

Written in the style of torchvision's ``models/resnet.py`` and with its parameter names (``conv1``,
``bn1``, ``layer1`` … ``layer4``, ``fc``) so that torchvision, VainF and NVIDIA/SML checkpoints map
onto it key for key. torchvision itself is not used: its wheels do not load with our torch.

Three additions over torchvision, each needed by a checkpoint or model we ship:

- ``stem="deep"``: the three-3×3-conv stem (``conv1/bn1``, ``conv2/bn2``, ``conv3/bn3``, 128 output
  channels) of the NVIDIA semantic-segmentation ResNet-101 that the SML teacher uses;
- ``dilate_first_block``: torchvision keeps the *previous* dilation in the first block of a dilated
  stage; NVIDIA's code dilates every block of the stage. Same weights, different outputs;
- ``width``: scales the base width 64 (the small demo model uses a narrow ResNet-18).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

from cosme_ros.nets.taps import C2, C3, C4, C5, Taps, select

BACKBONE_TAPS = (C2, C3, C4, C5)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3×3 convolution whose padding keeps the size (up to the stride) at any dilation."""
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        bias=False,
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        # torchvision refuses dilation here; we allow it because a ResNet-18 student must follow a
        # dilated teacher's down-sampling schedule.
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided/dilated) → 1×1 with a residual connection (ResNet-50/101/152).

    The stride sits on the 3×3 conv (ResNet v1.5), as in torchvision, VainF and NVIDIA.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


Block = Type[Union[BasicBlock, Bottleneck]]

ARCHS: Dict[int, tuple] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}

# output stride → replace_stride_with_dilation for layer2, layer3, layer4
DILATION_FOR_OUTPUT_STRIDE: Dict[int, List[bool]] = {
    32: [False, False, False],
    16: [False, False, True],
    8: [False, True, True],
}


class ResNet(nn.Module):
    """ResNet backbone; ``forward(x, taps=None)`` returns ``{"c2": layer1, …, "c5": layer4}``.

    ``num_classes`` adds torchvision's ``avgpool``/``fc`` head (only to load ImageNet checkpoints
    strictly; see :meth:`classify`); a segmentation backbone leaves it ``None``.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        replace_stride_with_dilation: Optional[Sequence[bool]] = None,
        width: float = 1.0,
        stem: str = "standard",
        dilate_first_block: bool = False,
        num_classes: Optional[int] = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                "replace_stride_with_dilation needs 3 booleans (layer2, layer3, "
                f"layer4), got {replace_stride_with_dilation}"
            )
        if stem not in ("standard", "deep"):
            raise ValueError(f"stem must be 'standard' or 'deep', got {stem!r}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        base = max(1, int(round(64 * width)))
        self.stem = stem
        self.dilate_first_block = dilate_first_block
        self.dilation = 1

        if stem == "standard":
            self.inplanes = base
            self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(base)
            self.relu = nn.ReLU(inplace=True)
        else:
            # Names as NVIDIA's ResNet3X3, whose ImageNet weights the SML teacher starts from.
            self.inplanes = 2 * base
            self.conv1 = nn.Conv2d(3, base, kernel_size=3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(base)
            self.conv2 = nn.Conv2d(base, base, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(base)
            self.conv3 = nn.Conv2d(base, 2 * base, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(2 * base)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        strides = {C2: 4}
        self.layer1 = self._make_layer(block, base, layers[0])
        stride = 4
        for name, tap, planes, n, dilate in (
            ("layer2", C3, 2 * base, layers[1], replace_stride_with_dilation[0]),
            ("layer3", C4, 4 * base, layers[2], replace_stride_with_dilation[1]),
            ("layer4", C5, 8 * base, layers[3], replace_stride_with_dilation[2]),
        ):
            setattr(self, name, self._make_layer(block, planes, n, stride=2, dilate=dilate))
            stride = stride if dilate else stride * 2
            strides[tap] = stride

        self.tap_strides: Dict[str, int] = strides
        self.tap_channels: Dict[str, int] = {
            C2: base * block.expansion,
            C3: 2 * base * block.expansion,
            C4: 4 * base * block.expansion,
            C5: 8 * base * block.expansion,
        }
        self.output_stride = strides[C5]

        self.fc: Optional[nn.Linear] = None
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.tap_channels[C5], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(
        self, block: Block, planes: int, blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        first_dilation = self.dilation if self.dilate_first_block else previous_dilation
        layers = [block(self.inplanes, planes, stride, downsample, first_dilation)]
        self.inplanes = planes * block.expansion
        layers.extend(
            block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)
        )
        return nn.Sequential(*layers)

    def forward_stem(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem == "deep":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return self.maxpool(x)

    def forward(self, x: Tensor, taps: Optional[Sequence[str]] = None) -> Taps:
        """Backbone taps c2…c5; stops after the deepest stage that ``taps`` asks for."""
        wanted = BACKBONE_TAPS if taps is None else tuple(taps)
        unknown = [t for t in wanted if t not in BACKBONE_TAPS]
        if unknown:
            raise ValueError(f"ResNet has taps {BACKBONE_TAPS}, not {unknown}")
        last = max(BACKBONE_TAPS.index(t) for t in wanted) if wanted else -1
        out: Taps = {}
        x = self.forward_stem(x)
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)[: last + 1]):
            x = layer(x)
            out[BACKBONE_TAPS[i]] = x
        return select(out, wanted)

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits through ``avgpool``/``fc`` (only when built with ``num_classes``)."""
        if self.fc is None:
            raise RuntimeError("this ResNet was built without a classifier (num_classes=None)")
        c5 = self.forward(x, taps=(C5,))[C5]
        return self.fc(torch.flatten(self.avgpool(c5), 1))


def resnet(
    depth: int,
    output_stride: int = 32,
    width: float = 1.0,
    stem: str = "standard",
    dilate_first_block: bool = False,
    num_classes: Optional[int] = None,
) -> ResNet:
    """ResNet-``depth`` whose ``c5`` has the given output stride (8, 16 or 32).

    OS 16 dilates layer4, OS 8 dilates layer3 and layer4, as in torchvision and DeepLab.
    """
    if depth not in ARCHS:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(ARCHS)}")
    if output_stride not in DILATION_FOR_OUTPUT_STRIDE:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    block, layers = ARCHS[depth]
    return ResNet(
        block,
        layers,
        replace_stride_with_dilation=DILATION_FOR_OUTPUT_STRIDE[output_stride],
        width=width,
        stem=stem,
        dilate_first_block=dilate_first_block,
        num_classes=num_classes,
    )


def resnet18(**kwargs) -> ResNet:
    return resnet(18, **kwargs)


def resnet34(**kwargs) -> ResNet:
    return resnet(34, **kwargs)


def resnet50(**kwargs) -> ResNet:
    return resnet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    return resnet(101, **kwargs)


def parse_backbone(name: str) -> int:
    """``"resnet101"`` / ``"resnet-101"`` / ``"r101"`` → 101."""
    digits = "".join(ch for ch in str(name) if ch.isdigit())
    lowered = str(name).lower()
    if (
        not digits
        or not (lowered.startswith("resnet") or lowered.startswith("r"))
        or int(digits) not in ARCHS
    ):
        raise ValueError(f"unknown backbone {name!r}; expected resnet18/34/50/101/152")
    return int(digits)
