"""The AuxCon student M′ (docs/ARCHITECTURE.md, Eq. 5–7): a smaller network whose taps line up with the
teacher's, channel for channel and pixel for pixel, so that their squared distance is defined.

A ResNet of the given depth, dilated to the teacher's output stride (``teacher_strides['c5']``),
carries a DeepLabV3+-style head of its own for ``lh`` and ``o``. Each backbone tap and ``lh`` goes
through a 1×1 adapter to the teacher's channel count; ``o`` needs none, the head's classifier
outputs the teacher's number of classes directly (a 1×1 after a 1×1 adds nothing). A tap whose
size differs from the teacher's is resized bilinearly (``align_corners=False``).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from cosme_ros.nets.deeplabv3plus import DeepLabV3PlusHead, aspp_rates_for, backbone_and_head
from cosme_ros.nets.resnet import resnet
from cosme_ros.nets.taps import ALL_TAPS, C2, C5, LH, O, Taps, parse_taps

Size = Tuple[int, int]


def _output_stride_for(teacher_c5_stride: int) -> int:
    """The supported ResNet output stride (8, 16, 32) closest to the teacher's ``c5`` stride."""
    for os_ in (8, 16):
        if teacher_c5_stride <= os_:
            return os_
    return 32


class Student(nn.Module):
    """AuxCon student: ``forward(x)`` returns ``taps`` with the teacher's channels and resolution.

    ``teacher_channels`` / ``teacher_strides`` are the teacher's ``tap_channels`` /
    ``tap_strides``; only the requested ``taps`` need to be present in them.
    """

    def __init__(
        self,
        depth: int = 50,
        teacher_channels: Optional[Mapping[str, int]] = None,
        teacher_strides: Optional[Mapping[str, int]] = None,
        taps: Sequence[str] = ALL_TAPS,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if not teacher_channels or not teacher_strides:
            raise ValueError("Student needs the teacher's tap_channels and tap_strides")
        self.taps: Tuple[str, ...] = parse_taps(taps)
        missing = [t for t in self.taps if t not in teacher_channels or t not in teacher_strides]
        if missing:
            raise ValueError(f"teacher channels/strides lack the requested tap(s) {missing}")
        self.tap_channels: Dict[str, int] = {t: int(teacher_channels[t]) for t in self.taps}
        self.tap_strides: Dict[str, int] = {t: int(teacher_strides[t]) for t in self.taps}
        self.config = dict(
            depth=int(depth),
            teacher_channels=dict(self.tap_channels),
            teacher_strides=dict(self.tap_strides),
            taps=list(self.taps),
            width=float(width),
        )

        # The teacher's down-sampling schedule: its c5 stride, or its deepest one where it has no
        # c5 (CFPNet ends at stride 8).
        c5_stride = int(teacher_strides.get(C5, max(teacher_strides.values())))
        output_stride = _output_stride_for(c5_stride)
        self.backbone = resnet(depth, output_stride, width=width)
        bc = self.backbone.tap_channels

        self.head: Optional[DeepLabV3PlusHead] = None
        if LH in self.taps or O in self.taps:

            def scaled(n: int) -> int:
                return max(8, int(round(n * width)))

            self.head = DeepLabV3PlusHead(
                bc[C2],
                bc[C5],
                self.tap_channels.get(O),
                aspp_rates_for(output_stride),
                aspp_channels=scaled(256),
                low_level_channels=scaled(48),
                decoder_channels=scaled(256),
                decoder_convs=1,
            )
            own = {**bc, LH: scaled(256)}
        else:
            own = dict(bc)
        self.adapters = nn.ModuleDict(
            {t: nn.Conv2d(own[t], self.tap_channels[t], 1) for t in self.taps if t != O}
        )

    def forward(
        self,
        x: Tensor,
        taps: Optional[Sequence[str]] = None,
        sizes: Optional[Mapping[str, Size]] = None,
    ) -> Taps:
        """Student taps g^(l′) for ``taps`` (default: all it was built for).

        ``sizes`` maps a tap to the teacher's (H, W) for it; a tap not in it gets
        ``ceil(input / teacher_stride)``, which is what strided 3×3/7×7 convs with "same"
        padding and ResNet's max-pool produce. Pass the teacher's real sizes where its
        arithmetic differs.
        """
        wanted = self.taps if taps is None else parse_taps(taps)
        extra = [t for t in wanted if t not in self.taps]
        if extra:
            raise ValueError(f"student was built for taps {self.taps}, not {extra}")
        feats = backbone_and_head(self.backbone, self.head, x, wanted)

        h, w = x.shape[-2:]
        out: Taps = {}
        for t in wanted:
            y = feats[t] if t == O else self.adapters[t](feats[t])
            s = self.tap_strides[t]
            size = (
                tuple(sizes[t])
                if sizes is not None and t in sizes
                else (math.ceil(h / s), math.ceil(w / s))
            )
            if tuple(y.shape[-2:]) != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out[t] = y
        return out


def build_student(**config) -> Student:
    """Rebuild a :class:`Student` from its ``config`` dict (e.g. read from a manifest)."""
    return Student(**config)
