"""Frame in → :class:`Result` out: preprocess → teacher ∥ student → scorer → postprocess.

The pipeline is the one place that turns a camera image into class and anomaly maps; the ROS
node, the CLI and replay only translate to and from it. It runs the teacher (and the student when
the method needs one) with exactly the taps the scorer asks for.

CPU fast path (docs/ARCHITECTURE.md), all numerically equivalent except bf16:

- ``torch.inference_mode`` around the networks and the scorer;
- BatchNorm folded into the convolution before it (``conv → bn`` pairs of our networks), checked
  once on a random input against the unfolded network (kept unfolded if the outputs differ);
- channels_last weights and inputs where it pays (oneDNN's blocked kernels; see
  :func:`channels_last_for`);
- ``precision``: ``fp32``, ``bf16`` (autocast of the networks only) or ``auto``: bf16 where the
  device computes it natively (:func:`native_bf16`) — on a CPU without AVX512-BF16 or AMX oneDNN
  emulates bf16 and it is slower than fp32, so ``auto`` picks fp32 there. The scorer always gets
  fp32 taps and computes in fp32 (AuxCon's 2048-channel squared sums, cosines to 1e-5).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from cosme_ros.anomaly.refine import guide_from_images
from cosme_ros.anomaly.scorers import build_scorer, predicted_classes
from cosme_ros.options import AUTO_METHOD
from cosme_ros.options import PRECISIONS
from cosme_ros.anomaly.method_spec import REFINE_OPTIONS, canonical, parse_method
from cosme_ros.bundle import Bundle
from cosme_ros.errors import CosmeError
from cosme_ros.nets.taps import ordered


@dataclass
class Result:
    """One frame's outputs at the requested output size."""

    classes: np.ndarray  # (H, W) uint8 class index (Cityscapes trainIds for our teachers)
    score: np.ndarray  # (H, W) float32 anomaly score, higher = more anomalous


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CosmeError("device 'cuda' requested but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise CosmeError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return torch.device(device)


def _cpu_flags() -> set:
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
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


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


# ----------------------------------------------------------------------------- BatchNorm folding


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


# ----------------------------------------------------------------------------- postprocess


def _source_index(n_out: int, n_in: int, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """Bilinear (align_corners=False) source rows/columns of each output one, as
    ``upsample_bilinear2d`` computes them: the two neighbours and the weight of the second."""
    d = torch.arange(n_out, dtype=torch.float32, device=device)
    src = ((d + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    return i0, (i0 + 1).clamp_max(n_in - 1), src - i0.float()


def upsampled_argmax(logits: Tensor, size: Tuple[int, int]) -> Tensor:
    """``F.interpolate(logits, size, mode="bilinear", align_corners=False).argmax(1)`` without
    upsampling every class's logits: (B, C, h, w) → (B, H, W) long.

    An upsampled logit vector is a convex combination of its four source neighbours. Where all
    four have the same argmax c, c wins the combination too (it is ≥ every other class in each
    term, and > every class before it, so the first-index rule agrees). Those output pixels —
    nearly all of a segmentation map (97 % for ESPNetv2 on a street frame) — take c directly;
    only the others blend their four neighbours' logits. Same classes as the full upsampling
    (up to the rounding of the blend at exact ties), ~4× faster at 720p for 20 classes.
    """
    b, c, h, w = logits.shape
    H, W = int(size[0]), int(size[1])
    a = logits.argmax(1)
    if (h, w) == (H, W):
        return a
    y0, y1, wy = _source_index(H, h, logits.device)
    x0, x1, wx = _source_index(W, w, logits.device)
    # cell (y, x) is uniform when (y, x), (y, x+1), (y+1, x), (y+1, x+1) agree (edges repeated)
    e = torch.cat([a, a[:, -1:]], 1)
    e = torch.cat([e, e[:, :, -1:]], 2)
    corner = e[:, :-1, :-1]
    uniform = (corner == e[:, :-1, 1:]) & (corner == e[:, 1:, :-1]) & (corner == e[:, 1:, 1:])
    classes = a[:, y0][:, :, x0]
    bi, yi, xi = (~uniform[:, y0][:, :, x0]).nonzero(as_tuple=True)
    if bi.numel():
        # rows of a (B·h·w, C) table: a view for channels_last logits, one copy otherwise
        table = logits.float().permute(0, 2, 3, 1).reshape(b * h * w, c)
        base = bi * (h * w)
        r0, r1 = base + y0[yi] * w, base + y1[yi] * w
        c0, c1 = x0[xi], x1[xi]
        ly, lx = wy[yi].unsqueeze(1), wx[xi].unsqueeze(1)
        mx, my = 1 - lx, 1 - ly

        def lerp_x(r: Tensor) -> Tensor:  # fresh rows from index_select: safe to update in place
            left = table.index_select(0, r + c0).mul_(mx)
            return left.add_(table.index_select(0, r + c1).mul_(lx))

        blend = lerp_x(r0).mul_(my).add_(lerp_x(r1).mul_(ly))
        classes[bi, yi, xi] = blend.argmax(1)
    return classes


# ----------------------------------------------------------------------------- the pipeline


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


class Pipeline:
    """A bundle's teacher (+ student) and one anomaly scorer, ready to run on frames.

    ``method``: a method spec — a name of :data:`~cosme_ros.anomaly.scorers.METHODS`, optionally
    with scorer options in brackets (``cosme[consensus=c4]``, :mod:`.anomaly.method_spec`) — or
    ``"auto"`` for the bundle's default (:attr:`Bundle.default_method`); ``self.method`` is the
    resolved spec in canonical form.

    ``precision``: ``fp32`` (default: the reference numbers), ``bf16`` or ``auto`` (see
    :func:`resolve_precision`). ``threads``: if given, ``torch.set_num_threads`` — process-wide;
    torch's default is the number of physical cores. ``fast=False`` skips BatchNorm folding and
    channels_last (the plain eager networks). ``teacher_taps`` / ``student_taps``: taps to
    compute besides the scorer's (``cosme evaluate`` runs several scorers on one pass).
    ``refine``: ``"none"`` (default, the paper's bilinear maps) or ``"guided"``: the anomaly map
    is re-fitted to the frame's edges by the guided filter (:mod:`cosme_ros.anomaly.refine`),
    with ``refine_radius`` network-input pixels and ``refine_eps``.
    """

    def __init__(
        self,
        bundle: Bundle,
        method: str = "maxlogit",
        device: str = "cpu",
        input_size: Optional[Tuple[int, int]] = None,
        precision: str = "fp32",
        threads: Optional[int] = None,
        fast: bool = True,
        teacher_taps: Sequence[str] = (),
        student_taps: Sequence[str] = (),
        refine: str = "none",
        refine_radius: Optional[int] = None,
        refine_eps: Optional[float] = None,
    ):
        self.bundle = bundle
        self.device = resolve_device(device)
        self.input_size = tuple(input_size or bundle.input_size)
        self.precision = resolve_precision(precision, self.device)
        if threads is not None:
            if int(threads) < 1:
                raise CosmeError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        if method == AUTO_METHOD:
            method = bundle.default_method
        # Build the scorer first: a method whose parts are missing fails before any weights load.
        options = {
            k: v
            for k, v in (
                ("refine", refine),
                ("refine_radius", refine_radius),
                ("refine_eps", refine_eps),
            )
            if v is not None
        }
        try:
            name, spec_options = parse_method(method)
            if refine != "none" and any(k in spec_options for k in REFINE_OPTIONS):
                raise ValueError(
                    f"method {method!r}: refinement given both in the spec and as "
                    f"refine={refine}"
                )
            parts = bundle.anomaly_parts()
            self.scorer = build_scorer(name, parts, **{**options, **spec_options})
        except ValueError as exc:
            raise CosmeError(str(exc)) from None
        self.scorer.input_height = self.input_size[0]
        self.method = canonical(name, spec_options)
        self._extra_taps = (tuple(teacher_taps), tuple(student_taps))
        self.teacher = bundle.teacher().to(self.device)
        tap_channels = getattr(self.teacher, "tap_channels", None)
        if tap_channels is not None:
            bundle.check_parts_fit(parts, tap_channels)
        self.student = bundle.student().to(self.device) if self.student_taps else None
        trained = getattr(self.student, "taps", None)
        if trained is not None and set(self.student_taps) - set(trained):
            raise CosmeError(
                f"{bundle.path}: the student outputs {','.join(trained)}, not "
                f"{','.join(t for t in self.student_taps if t not in trained)} (needed by "
                f"{method if set(self.scorer.student_taps) - set(trained) else 'a scorer'}); "
                f"retrain it with `cosme train-student`"
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
    def teacher_taps(self) -> Tuple[str, ...]:
        """The teacher taps computed: the scorer's (which may be swapped, as ``cosme bench
        --sweep`` does) and the extra ones asked for at construction."""
        return ordered(self.scorer.teacher_taps, self._extra_taps[0])

    @property
    def student_taps(self) -> Tuple[str, ...]:
        """The student taps computed (see :attr:`teacher_taps`)."""
        return ordered(self.scorer.student_taps, self._extra_taps[1])

    def preprocess(self, images_rgb: Sequence[np.ndarray]) -> Tensor:
        """uint8 RGB images → normalised (B, 3, h, w) at the network's input size."""
        batch = torch.from_numpy(np.stack(resize_frames(images_rgb, self.input_size)))
        batch = batch.to(self.device)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        return (batch - self._mean) / self._std

    def _autocast(self):
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def prepare(self, x: Tensor) -> Tensor:
        """A normalised batch in the networks' memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run_teacher(self, x: Tensor, taps: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
        """Teacher taps (default: the pipeline's) for a prepared batch, fp32 whatever the precision."""
        with self._autocast():
            out = self.teacher(x, taps=self.teacher_taps if taps is None else taps)
        return out if self.precision == "fp32" else {k: v.float() for k, v in out.items()}

    def run_student(self, x: Tensor) -> Optional[Dict[str, Tensor]]:
        """Student taps for a prepared batch (None when the method needs no student), fp32."""
        if self.student is None:
            return None
        with self._autocast():
            out = self.student(x, taps=self.student_taps)
        return out if self.precision == "fp32" else {k: v.float() for k, v in out.items()}

    def networks(self, x: Tensor) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Tensor]]]:
        """Teacher and student taps for a normalised batch, fp32 whatever the precision."""
        x = self.prepare(x)
        return self.run_teacher(x), self.run_student(x)

    def postprocess(self, logits: Tensor, out_size: Tuple[int, int]) -> Tensor:
        """Logits → class map (B, H, W) long at ``out_size``: the argmax of the bilinearly
        upsampled logits, with the teacher's ``align_corners`` (:func:`upsampled_argmax` for
        the usual False: the same map without upsampling every class)."""
        if self.scorer.align_corners:
            return predicted_classes(logits, out_size, align_corners=True)
        return upsampled_argmax(logits, out_size)

    @torch.inference_mode()
    def run_tensor(
        self, x: Tensor, out_size: Tuple[int, int], guide: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        """Normalised batch → (classes (B, H, W) long, score (B, H, W) float32) at ``out_size``;
        ``guide``: the frames at ``out_size`` (:func:`~cosme_ros.anomaly.refine.guide_from_images`),
        needed when the pipeline refines its maps."""
        teacher, student = self.networks(x)
        score = self.scorer(teacher, student, out_size, guide)
        return self.postprocess(teacher["o"], out_size), score

    def __call__(self, image_rgb: np.ndarray, out_size: Optional[Tuple[int, int]] = None) -> Result:
        """One RGB uint8 image (H, W, 3) → Result at ``out_size`` (default: the image's size)."""
        out_size = tuple(out_size or image_rgb.shape[:2])
        guide = (
            guide_from_images([image_rgb], out_size, self.device)
            if self.scorer.refinement is not None
            else None
        )
        classes, score = self.run_tensor(self.preprocess([image_rgb]), out_size, guide)
        return Result(
            classes=classes[0].to(torch.uint8).cpu().numpy(), score=score[0].float().cpu().numpy()
        )
