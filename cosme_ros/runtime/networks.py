"""The networks of a bundle, ready to run on frames: one device, one precision, the CPU fast path.

:class:`Networks` holds the teacher and, when a method needs it, the student, and turns camera
frames into their taps. The pipeline (:mod:`.pipeline`), ``cosme evaluate``, the memory build and
the Ψ statistics all run the networks through it, so each sees exactly what the node sees.

CPU fast path (docs/ARCHITECTURE.md), all numerically equivalent except bf16:

- BatchNorm folded into the convolution before it (``conv → bn`` pairs of our networks), checked
  once on a random input against the unfolded network (kept unfolded if the outputs differ);
- channels_last weights and inputs where it pays (oneDNN's blocked kernels; see
  :func:`channels_last_for`);
- ``precision``: ``fp32``, ``bf16`` (autocast of the networks only) or ``auto``: bf16 where the
  device computes it natively (:func:`native_bf16`) — on a CPU without AVX512-BF16 or AMX oneDNN
  emulates bf16 and it is slower than fp32, so ``auto`` picks fp32 there. Taps always come out
  in fp32, so scorers compute in fp32 (AuxCon's 2048-channel squared sums, cosines to 1e-5).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from cosme_ros.bundle import Bundle
from cosme_ros.errors import CosmeError
from cosme_ros.options import PRECISIONS

__all__ = [
    "Networks",
    "resolve_device",
    "native_bf16",
    "resolve_precision",
    "channels_last_for",
    "fold_batchnorm",
    "folded",
    "resize_frames",
    "cpu_flags",
]

Taps = Dict[str, Tensor]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CosmeError("device 'cuda' requested but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise CosmeError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return torch.device(device)


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` runs bf16 convolutions and GEMMs in hardware.

    CPU: oneDNN has native bf16 kernels with AVX512-BF16 (``avx512_bf16``) or AMX (``amx_bf16``);
    on any other x86 CPU it converts to fp32 internally, which is slower than plain fp32.
    CUDA: compute capability ≥ 8.0 (``torch.cuda.is_bf16_supported``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    probes = [
        getattr(torch.cpu, name, None)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    try:
        if any(p is not None and p() for p in probes):
            return True
    except Exception:  # private API: fall back to the kernel's view of the CPU
        pass
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` → ``bf16`` on a CPU with native bf16, else ``fp32``; ``fp32``/``bf16`` checked.

    ``auto`` stays fp32 on CUDA in this build: the GPU fast path is TensorRT (a later issue).
    """
    device = torch.device(device)
    key = str(precision).strip().lower()
    if key not in PRECISIONS:
        raise CosmeError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if key == "auto":
        return "bf16" if device.type == "cpu" and native_bf16(device) else "fp32"
    if key == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise CosmeError("precision 'bf16' requested but this GPU has no bf16 support")
    return key


def channels_last_for(device: torch.device, precision: str) -> bool:
    """channels_last on the CPU: oneDNN's convolutions work in NHWC-blocked layouts, so NCHW
    inputs pay a reorder per convolution (measured: bf16 ESPNetv2 ~2–4× slower without it)."""
    return device.type == "cpu"


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Optional[nn.Conv2d]:
    """``bn(conv(x))`` as one convolution (eval-mode statistics), or None if it does not apply."""
    if (
        not isinstance(conv, nn.Conv2d)
        or type(bn) is not nn.BatchNorm2d
        or bn.running_mean is None
        or bn.running_var is None
        or conv.out_channels != bn.num_features
        or conv.padding_mode != "zeros"
    ):
        return None
    with torch.no_grad():
        w = conv.weight.float()
        scale = torch.rsqrt(bn.running_var.float() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.float()
        bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
        shift = bn.bias.float() if bn.bias is not None else torch.zeros_like(scale)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        fused.weight.copy_(w * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean.float()) * scale + shift)
    return fused.eval()


_PAIRS = [("conv", "bn")] + [(f"conv{i}", f"bn{i}") for i in range(1, 10)]


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every ``conv → bn`` pair of our networks in place; returns how many were folded.

    Pairs are found by the layout our networks use: ``conv``/``bn`` and ``convN``/``bnN``
    attributes of one module, and a Conv2d directly followed by a BatchNorm2d in an
    ``nn.Sequential``. The BatchNorm becomes an ``nn.Identity``. Only valid when the forward
    applies the BatchNorm right after the convolution: callers check the result numerically.
    """
    count = 0
    for m in list(module.modules()):
        if isinstance(m, nn.Sequential):
            names = list(m._modules)
            for a, b in zip(names, names[1:]):
                fused = _fold(m._modules[a], m._modules[b])
                if fused is not None:
                    m._modules[a], m._modules[b] = fused, nn.Identity()
                    count += 1
            continue
        for conv_name, bn_name in _PAIRS:
            conv, bn = m._modules.get(conv_name), m._modules.get(bn_name)
            if conv is None or bn is None:
                continue
            fused = _fold(conv, bn)
            if fused is not None:
                m._modules[conv_name], m._modules[bn_name] = fused, nn.Identity()
                count += 1
    return count


def _taps_close(a: Dict[str, Tensor], b: Dict[str, Tensor]) -> bool:
    for k, ref in a.items():
        out = b[k].float()
        ref = ref.float()
        if out.shape != ref.shape or not bool(torch.isfinite(out).all()):
            return False
        tol = 1e-3 * (float(ref.abs().max()) + 1.0)
        if float((out - ref).abs().max()) > tol:
            return False
    return True


def folded(
    net: nn.Module, taps: Sequence[str], size: Tuple[int, int], device: torch.device
) -> nn.Module:
    """A BatchNorm-folded copy of ``net`` if it gives the same taps on a random input, else
    ``net`` itself."""
    candidate = copy.deepcopy(net)
    if fold_batchnorm(candidate) == 0:
        return net
    h, w = size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.inference_mode():
            same = _taps_close(net(x, taps=taps), candidate(x, taps=taps))
    except Exception:  # a network that cannot run at the probe size: keep it as it is
        return net
    return candidate if same else net


def resize_frames(images_rgb: Sequence[np.ndarray], size: Tuple[int, int]) -> List[np.ndarray]:
    """Camera frames at the network's input ``size`` (H, W); frames already that size are kept.

    Area averaging when shrinking (camera frames are usually larger than the network's input):
    bilinear aliases fine texture and costs ESPNetv2 s=1.0 0.4 points of accuracy.
    """
    h, w = size
    return [
        im
        if im.shape[:2] == (h, w)
        else cv2.resize(
            im, (w, h), interpolation=cv2.INTER_AREA if im.shape[0] > h else cv2.INTER_LINEAR
        )
        for im in images_rgb
    ]


class Networks:
    """A bundle's teacher (and student) on one device, at one precision (module docstring).

    ``teacher_taps`` / ``student_taps``: the taps callers will ask for by default (the
    BatchNorm fold is checked on them); without ``student_taps`` no student is loaded.
    ``needed_by``: who needs the student's taps, for the error when the bundle's student was
    trained without them. ``fast=False``: the plain eager networks (no folding, NCHW).
    """

    def __init__(
        self,
        bundle: Bundle,
        teacher_taps: Sequence[str],
        student_taps: Sequence[str] = (),
        *,
        device: str = "cpu",
        input_size: Optional[Tuple[int, int]] = None,
        precision: str = "fp32",
        fast: bool = True,
        needed_by: str = "a scorer",
    ):
        self.bundle = bundle
        self.device = resolve_device(device)
        self.input_size = tuple(input_size or bundle.input_size)
        self.precision = resolve_precision(precision, self.device)
        self.teacher_taps, self.student_taps = tuple(teacher_taps), tuple(student_taps)
        self.teacher = bundle.teacher().to(self.device)
        self.student = bundle.student().to(self.device) if self.student_taps else None
        trained = getattr(self.student, "taps", None)
        if trained is not None and set(self.student_taps) - set(trained):
            raise CosmeError(
                f"{bundle.path}: the student outputs {','.join(trained)}, not "
                f"{','.join(t for t in self.student_taps if t not in trained)} (needed by "
                f"{needed_by}); retrain it with `cosme train-student`"
            )
        self.channels_last = bool(fast) and channels_last_for(self.device, self.precision)
        if fast:
            probe = (min(self.input_size[0], 128), min(self.input_size[1], 256))
            self.teacher = folded(self.teacher, self.teacher_taps, probe, self.device)
            if self.student is not None:
                self.student = folded(self.student, self.student_taps, probe, self.device)
        if self.channels_last:
            self.teacher = self.teacher.to(memory_format=torch.channels_last)
            if self.student is not None:
                self.student = self.student.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(bundle.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(bundle.std, device=self.device).view(1, 3, 1, 1)

    @property
    def tap_channels(self) -> Optional[Dict[str, int]]:
        """The teacher's channels per tap (None for a network that does not state them)."""
        return getattr(self.teacher, "tap_channels", None)

    def preprocess(
        self, images_rgb: Sequence[np.ndarray], size: Optional[Tuple[int, int]] = None
    ) -> Tensor:
        """uint8 RGB images → the normalised (B, 3, h, w) batch at ``size`` (default: the
        network's input size), in the networks' memory format."""
        size = tuple(size or self.input_size)
        batch = torch.from_numpy(np.stack(resize_frames(images_rgb, size)))
        batch = batch.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        x = (batch - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def teacher_forward(self, x: Tensor, taps: Optional[Sequence[str]] = None) -> Taps:
        """Teacher taps (default: :attr:`teacher_taps`) of a preprocessed batch, fp32."""
        with self._autocast():
            out = self.teacher(x, taps=self.teacher_taps if taps is None else tuple(taps))
        return out if self.precision == "fp32" else {k: v.float() for k, v in out.items()}

    def student_forward(self, x: Tensor, taps: Optional[Sequence[str]] = None) -> Optional[Taps]:
        """Student taps (default: :attr:`student_taps`) of a preprocessed batch, fp32; None
        without a student."""
        if self.student is None:
            return None
        with self._autocast():
            out = self.student(x, taps=self.student_taps if taps is None else tuple(taps))
        return out if self.precision == "fp32" else {k: v.float() for k, v in out.items()}

    def __call__(self, x: Tensor) -> Tuple[Taps, Optional[Taps]]:
        """(teacher taps, student taps or None) of a preprocessed batch, fp32."""
        return self.teacher_forward(x), self.student_forward(x)
