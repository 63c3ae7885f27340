"""ESPNetv2 semantic segmentation (Mehta et al., CVPR 2019) in pure torch, with named taps.

Written after the EdgeNets implementation (``sacmehta/EdgeNets``, MIT): module and parameter names
follow its state dicts exactly, so that its released Cityscapes checkpoints load strictly.

The network is the EESPNet encoder without its stride-32 level (EdgeNets deletes ``level5``), and a
bottom-up decoder of efficient pyramid-pooling blocks that merges the encoder's stride-8, 4 and 2
features and ends with the classifier at stride 2.

Taps (see :mod:`cosme_ros.nets.taps`; channels for s = 2.0 / 1.0, Cityscapes' 20 classes):

====  ======  =========  ================================================================
tap   stride  channels   tensor
====  ======  =========  ================================================================
c2    4       128 / 64   ``base_net.level2_0`` output (first stride-4 stage)
c3    8       256 / 128  ``base_net.level3`` output (end of the stride-8 stage)
c4    16      512 / 256  ``base_net.level4_0`` output (entry of the stride-16 stage)
c5    16      512 / 256  ``base_net.level4`` output (end of the encoder, the decoder's input)
lh    2       10         input of the last 1×1 conv (``bu_dec_l4.merge_layer.3``)
o     2       20         logits, before the final upsample to the input size
====  ======  =========  ================================================================

There is no stride-32 feature in this network, so ``c4``/``c5`` are the entry and the exit of the
stride-16 stage, like a dilated backbone keeps its last stages at one stride.

EdgeNets produces its prediction by upsampling ``o`` to the input size with bilinear
interpolation and ``align_corners=True`` (see :meth:`ESPNetv2Seg.predict_logits`), and it upsamples
inside the decoder the same way.

Input: RGB in [0, 1] normalised with the ImageNet mean/std (:data:`MEAN`, :data:`STD`), trained at
1024×512 (s = 2.0) or 512×256 (s = 1.0). EdgeNets requires H and W to be multiples of 16 (its
decoder upsamples by a fixed factor 2 and adds the skip connection); here the decoder upsamples to
the skip's size instead, which is identical for multiples of 16 and also works for any other size.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosme_ros.nets import IMAGENET_MEAN, IMAGENET_STD
from cosme_ros.nets.taps import (
    ALL_TAPS,
    C2,
    C3,
    C4,
    C5,
    LH,
    O,
    Taps,
    logits_at_input,
    parse_taps,
    select,
)

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD

# Width s → channels of encoder levels 1–4 (EdgeNets' ``espnetv2_config.sc_ch_dict`` without level 5).
WIDTHS: Dict[float, Tuple[int, int, int, int]] = {
    0.5: (16, 32, 64, 128),
    1.0: (32, 64, 128, 256),
    1.25: (32, 80, 160, 320),
    1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
BRANCHES = 4  # parallel dilated branches in every EESP block
RECEPTIVE_LIMITS = (
    13,
    11,
    9,
    7,
)  # largest effective kernel at levels 2, 3, 4 and in level 4's blocks
BLOCKS = (3, 7)  # EESP blocks after the down-sampler at levels 3 and 4
DECODER_BASE = 16  # EdgeNets' decoder width for Cityscapes and Pascal
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)


def _up(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


# --- Building blocks. EdgeNets has two layouts: the encoder's (``conv``/``bn``/``act`` attributes) and
# the decoder's (an ``nn.Sequential`` under ``cbr``/``br``); both are kept for the checkpoint's names.


class CBR(nn.Module):
    """Conv (no bias) → BatchNorm → PReLU, with 'same' padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class CB(nn.Module):
    """Conv (no bias) → BatchNorm."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class BR(nn.Module):
    """BatchNorm → PReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.PReLU(c)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


class DepthwiseDilated(nn.Module):
    """Depth-wise 3×3 conv with dilation ``d`` (one EESP branch)."""

    def __init__(self, c: int, stride: int, d: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride, d, dilation=d, groups=c, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class SeqCBR(nn.Module):
    """Decoder-layout Conv → BatchNorm → PReLU (parameters under ``cbr.0/1/2``)."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.cbr(x)


class SeqBR(nn.Module):
    """Decoder-layout BatchNorm → PReLU (parameters under ``br.0/1``)."""

    def __init__(self, c: int):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))

    def forward(self, x: Tensor) -> Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class GlobalAvgPool(nn.Module):
    # mean() rather than adaptive pooling: same numbers, and export-friendly for dynamic shapes.
    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=True)


# --- Encoder -------------------------------------------------------------------------------------


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid block: reduce (group 1×1) → split into ``k`` depth-wise
    dilated 3×3 branches → hierarchical fusion (running sum) → merge (group 1×1) → residual.

    With ``downsample`` the branches have stride 2 and the block returns the merged map before the
    residual and activation (the :class:`DownSampler` finishes it); ``module_act`` then stays unused
    but is part of the checkpoint.
    """

    def __init__(
        self, cin: int, cout: int, r_lim: int, downsample: bool = False, k: int = BRANCHES
    ):
        super().__init__()
        n = cout // k
        if n * k != cout:
            raise ValueError(f"EESP output channels {cout} must be divisible by {k} branches")
        # Effective kernel 3, 5, 7, 9 … capped at r_lim (back to 3), sorted; dilation = (kernel - 1) / 2.
        kernels = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
        stride = 2 if downsample else 1
        self.downsample = downsample
        self.residual = not downsample and cin == cout
        self.proj_1x1 = CBR(cin, n, 1, groups=k)
        self.spp_dw = nn.ModuleList(DepthwiseDilated(n, stride, (ks - 1) // 2) for ks in kernels)
        self.conv_1x1_exp = CB(cout, cout, 1, groups=k)
        self.br_after_cat = BR(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        reduced = self.proj_1x1(x)
        branches: List[Tensor] = []
        fused: Optional[Tensor] = None
        for dw in self.spp_dw:
            y = dw(reduced)
            fused = y if fused is None else fused + y
            branches.append(fused)
        out = self.conv_1x1_exp(self.br_after_cat(torch.cat(branches, 1)))
        if self.downsample:
            return out
        if self.residual:
            out = out + x
        return self.module_act(out)


class DownSampler(nn.Module):
    """Stride-2 stage entry: [avg-pooled input ‖ strided EESP] + a projection of the input image
    pooled to the same size ("input reinforcement"), then PReLU."""

    def __init__(self, cin: int, cout: int, r_lim: int, image_channels: int = 3):
        super().__init__()
        self.eesp = EESP(cin, cout - cin, r_lim, downsample=True)
        self.inp_reinf = nn.Sequential(
            CBR(image_channels, image_channels, 3), CB(image_channels, cout, 1)
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        pooled = F.avg_pool2d(x, 3, 2, 1)
        out = torch.cat([pooled, self.eesp(x)], 1)
        return self.act(out + self.inp_reinf(image))


class EESPNetEncoder(nn.Module):
    """ESPNetv2's encoder (``base_net``): levels 1–4, strides 2, 4, 8, 16."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        w1, w2, w3, w4 = widths
        r2, r3, r3b, r4b = RECEPTIVE_LIMITS
        self.level1 = CBR(3, w1, 3, stride=2)
        self.level2_0 = DownSampler(w1, w2, r2)
        self.level3_0 = DownSampler(w2, w3, r3)
        self.level3 = nn.ModuleList(EESP(w3, w3, r3b) for _ in range(BLOCKS[0]))
        self.level4_0 = DownSampler(w3, w4, r3b)
        self.level4 = nn.ModuleList(EESP(w4, w4, r4b) for _ in range(BLOCKS[1]))

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        # The image is average-pooled (3×3, stride 2, pad 1) once per level to feed each
        # down-sampler; these sizes equal the feature maps' (both halve with ceil).
        img2 = F.avg_pool2d(x, 3, 2, 1)
        img4 = F.avg_pool2d(img2, 3, 2, 1)
        img8 = F.avg_pool2d(img4, 3, 2, 1)
        img16 = F.avg_pool2d(img8, 3, 2, 1)
        l1 = self.level1(x)
        l2 = self.level2_0(l1, img4)
        l3 = self.level3_0(l2, img8)
        for block in self.level3:
            l3 = block(l3)
        l4_0 = self.level4_0(l3, img16)
        l4 = l4_0
        for block in self.level4:
            l4 = block(l4)
        return {"l1": l1, "l2": l2, "l3": l3, "l4_0": l4_0, "l4": l4}


# --- Decoder -------------------------------------------------------------------------------------


class EfficientPyrPool(nn.Module):
    """Efficient pyramid pooling: 1×1 projection, one depth-wise 3×3 per scale (2, 1.5, 1, 0.5, 0.1
    of the map; small scales at least 5×5), concatenation, shuffle, group 3×3, 1×1 to ``cout``."""

    def __init__(self, cin: int, proj: int, cout: int, last_layer_br: bool = True):
        super().__init__()
        n = len(PYRAMID_SCALES)
        self.projection_layer = SeqCBR(cin, proj, 1)
        self.stages = nn.ModuleList(
            nn.Conv2d(proj, proj, 3, 1, 1, groups=proj, bias=False) for _ in PYRAMID_SCALES
        )
        self.merge_layer = nn.Sequential(
            SeqBR(proj * n),
            ChannelShuffle(n),
            SeqCBR(proj * n, proj, 3, groups=proj),
            nn.Conv2d(proj, cout, 1, bias=not last_layer_br),
        )
        self.last_layer_br = last_layer_br
        if last_layer_br:
            self.br = SeqBR(cout)

    def hidden(self, x: Tensor) -> Tensor:
        """The map that enters the last 1×1 conv."""
        x = self.projection_layer(x)
        h, w = x.shape[-2:]
        outs = []
        for scale, stage in zip(PYRAMID_SCALES, self.stages):
            hs, ws = max(int(math.ceil(h * scale)), 5), max(int(math.ceil(w * scale)), 5)
            if scale > 1.0:
                y = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=True)
                y = F.adaptive_avg_pool2d(stage(y), (h, w))
            elif scale < 1.0:
                y = stage(F.adaptive_avg_pool2d(x, (hs, ws)))
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)
            else:
                y = stage(x)
            outs.append(y)
        return self.merge_layer[:3](torch.cat(outs, 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.merge_layer[3](self.hidden(x))
        return self.br(out) if self.last_layer_br else out


class EfficientPWConv(nn.Module):
    """Skip projection: group 3×3 CBR, gated per channel by a sigmoid of the global average."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.wt_layer = nn.Sequential(
            GlobalAvgPool(), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid()
        )
        self.expansion_layer = SeqCBR(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


# --- The network ---------------------------------------------------------------------------------


class ESPNetv2Seg(nn.Module):
    """ESPNetv2 segmentation network; ``forward(x, taps)`` returns the named feature maps."""

    def __init__(self, s: float = 2.0, num_classes: int = 20):
        super().__init__()
        s = float(s)
        if s not in WIDTHS:
            raise ValueError(f"ESPNetv2 width s={s} is not one of {sorted(WIDTHS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.s = s
        self.num_classes = int(num_classes)
        self.config = {"s": s, "num_classes": self.num_classes}
        widths = WIDTHS[s]
        dec = (4 * DECODER_BASE, 3 * DECODER_BASE, 2 * DECODER_BASE)
        proj = min(num_classes // 2, DECODER_BASE)

        self.base_net = EESPNetEncoder(widths)
        self.bu_dec_l1 = EfficientPyrPool(widths[3], proj, dec[0])
        self.bu_dec_l2 = EfficientPyrPool(dec[0], proj, dec[1])
        self.bu_dec_l3 = EfficientPyrPool(dec[1], proj, dec[2])
        self.bu_dec_l4 = EfficientPyrPool(dec[2], proj, num_classes, last_layer_br=False)
        self.merge_enc_dec_l2 = EfficientPWConv(widths[2], dec[0])
        self.merge_enc_dec_l3 = EfficientPWConv(widths[1], dec[1])
        self.merge_enc_dec_l4 = EfficientPWConv(widths[0], dec[2])
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(dec[0]), nn.PReLU(dec[0]))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(dec[1]), nn.PReLU(dec[1]))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(dec[2]), nn.PReLU(dec[2]))

        self.tap_channels: Dict[str, int] = {
            C2: widths[1],
            C3: widths[2],
            C4: widths[3],
            C5: widths[3],
            LH: proj,
            O: self.num_classes,
        }
        self.tap_strides: Dict[str, int] = {C2: 4, C3: 8, C4: 16, C5: 16, LH: 2, O: 2}
        self._init_params()

    def _init_params(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, taps: Optional[Iterable[str]] = None) -> Taps:
        wanted = ALL_TAPS if taps is None else parse_taps(taps)
        enc = self.base_net(x)
        out: Taps = {C2: enc["l2"], C3: enc["l3"], C4: enc["l4_0"], C5: enc["l4"]}
        if LH in wanted or O in wanted:
            y = self.bu_dec_l1(enc["l4"])
            y = self.bu_dec_l2(self.bu_br_l2(_up(y, enc["l3"]) + self.merge_enc_dec_l2(enc["l3"])))
            y = self.bu_dec_l3(self.bu_br_l3(_up(y, enc["l2"]) + self.merge_enc_dec_l3(enc["l2"])))
            y = self.bu_br_l4(_up(y, enc["l1"]) + self.merge_enc_dec_l4(enc["l1"]))
            out[LH] = self.bu_dec_l4.hidden(y)
            out[O] = self.bu_dec_l4.merge_layer[3](out[LH])
        return select(out, wanted)

    def predict_logits(self, x: Tensor) -> Tensor:
        """Full-resolution logits exactly as EdgeNets produces them: ``o`` upsampled to the input
        size, bilinear with ``align_corners=True``."""
        return logits_at_input(self, x)


def build_espnetv2(s: float = 2.0, num_classes: int = 20) -> ESPNetv2Seg:
    """Rebuild the network from its ``config`` dict (untrained weights)."""
    return ESPNetv2Seg(s=s, num_classes=num_classes)
