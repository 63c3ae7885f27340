"""AuxCon — auxiliary consensus between the frozen teacher and a distilled student (docs/ARCHITECTURE.md).

The student M′ is trained to reproduce the teacher's taps on in-distribution images (Eq. 5). Where
the two disagree at test time the input is probably unlike the training data (Eq. 6–7).

All distances are computed in fp32 whatever the input dtype: a 2048-channel sum of squared
differences overflows fp16 (max 65504) as soon as the mean squared difference exceeds ~32.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor

from ..nets.taps import ALL_TAPS, Taps

DISTILLATION_LAYERS: Tuple[str, ...] = ALL_TAPS  # Ls = {C2, C3, C4, C5, LH, O}
CONSENSUS_LAYERS: Tuple[str, ...] = ("c5",)  # Le = {C5}


def _pair(teacher: Taps, student: Taps, layer: str) -> Tuple[Tensor, Tensor]:
    if layer not in teacher:
        raise KeyError(f"teacher taps lack {layer!r} (have {sorted(teacher)})")
    if layer not in student:
        raise KeyError(f"student taps lack {layer!r} (have {sorted(student)})")
    f, g = teacher[layer], student[layer]
    if f.shape != g.shape:
        raise ValueError(
            f"tap {layer!r}: teacher {tuple(f.shape)} and student {tuple(g.shape)} differ; the "
            "student must follow the teacher's down-sampling schedule and adapt to its channels"
        )
    return f, g


def distillation_loss(
    teacher: Taps,
    student: Taps,
    layers: Iterable[str] = DISTILLATION_LAYERS,
    *,
    normalize: str = "hw",
) -> Tensor:
    """Eq. 5: L = Σ_{l∈Ls} (1/s^(l)) ‖f^(l)(x) − g^(l′)(x)‖²_F, averaged over the batch.

    ``s^(l)`` — "the feature-map size" — is taken as the spatial size H^(l)·W^(l) of one image's
    map (``normalize="hw"``, the default): each layer contributes the per-pixel squared L2 distance
    averaged over pixels, i.e. C^(l)·mean(ψ^(l)) with ψ of Eq. 6. Channel-rich layers therefore
    weigh more, which is what the un-normalised Frobenius norm over channels implies; the paper
    normalises by C only in Eq. 6, for the anomaly map. ``normalize="chw"`` divides by C·H·W instead
    (plain per-layer MSE) for comparison. The Frobenius norm is per image; the batch is averaged.

    Teacher taps are detached (the teacher is frozen); the result is an fp32 scalar.
    """
    if normalize not in ("hw", "chw"):
        raise ValueError(f"normalize must be 'hw' or 'chw', not {normalize!r}")
    layers = tuple(layers)
    if not layers:
        raise ValueError("distillation_loss needs at least one layer")
    total: Optional[Tensor] = None
    for layer in layers:
        f, g = _pair(teacher, student, layer)
        diff = f.detach().float() - g.float()
        b, c, h, w = diff.shape
        s = h * w * (c if normalize == "chw" else 1)
        term = diff.pow(2).sum() / (b * s)
        total = term if total is None else total + term
    assert total is not None
    return total


#: How ψ measures the disagreement at a pixel (:func:`psi_layer`); ``"l2"`` is Eq. 6.
DISTANCES: Tuple[str, ...] = ("l2", "relative", "cosine")
# Guards 0/0 where a feature vector is exactly zero (after a ReLU): such a pixel counts as agreeing.
_EPS = 1e-12


def psi_layer(f: Tensor, g: Tensor, distance: str = "l2") -> Tensor:
    """ψ for one layer — ``(B,C,H,W)`` × 2 → ``(B,H,W)`` fp32.

    - ``"l2"`` — Eq. 6: ψ_ij = (1/C) ‖f_ij − g_ij‖²₂.
    - ``"relative"`` — ‖f_ij − g_ij‖²₂ / ‖f_ij‖²₂: Eq. 6 divided by the teacher's own feature
      energy (×C). Eq. 6 grows with ‖f‖, so it is high wherever the teacher's features are
      strong — class boundaries, textured in-distribution objects — whether or not they are
      novel (BENCHMARKS.md, "A scale-free Ψ"); this removes that scale.
    - ``"cosine"`` — 1 − cos(f_ij, g_ij) ∈ [0, 2]: the disagreement in direction only.

    The last two are beyond the paper (``"l2"`` is its form). Computed in fp32 whatever the input
    dtype (see the module note on fp16 overflow).
    """
    if f.shape != g.shape:
        raise ValueError(f"psi_layer: teacher {tuple(f.shape)} and student {tuple(g.shape)} differ")
    if f.dim() != 4:
        raise ValueError(f"psi_layer expects (B,C,H,W) maps, got {tuple(f.shape)}")
    if distance == "cosine":
        f, g = f.float(), g.float()
        dot = (f * g).sum(dim=1)
        norms = f.square().sum(dim=1).mul_(g.square().sum(dim=1)).sqrt_()
        return 1.0 - dot / norms.clamp_min(_EPS)
    if distance not in ("l2", "relative"):
        raise ValueError(
            f"unknown consensus distance {distance!r}; choose one of " f"{', '.join(DISTANCES)}"
        )
    diff = f.float() - g.float()
    sq = diff.square() if diff.requires_grad else diff.square_()  # in place saves a copy
    if distance == "l2":
        return sq.mean(dim=1)
    return sq.sum(dim=1) / f.float().square().sum(dim=1).clamp_min(_EPS)


def _resize(x: Tensor, size: Tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def psi(
    teacher: Taps,
    student: Taps,
    layers: Sequence[str] = CONSENSUS_LAYERS,
    size: Optional[Tuple[int, int]] = None,
    distance: str = "l2",
) -> Tensor:
    """Eq. 7: Ψ_ij = Π_{l∈Le} ψ^(l)_ij → ``(B,H,W)`` fp32, each ψ by ``distance``
    (:func:`psi_layer`).

    Each ψ^(l) is upsampled bilinearly (align_corners=False) to ``size`` before the product;
    ``size`` defaults to the largest (H·W) resolution among the layers. Bilinear interpolation
    of non-negative maps stays non-negative, so Ψ ≥ 0.
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("psi needs at least one layer")
    maps = [psi_layer(*_pair(teacher, student, layer), distance) for layer in layers]
    if size is None:
        size = max((tuple(m.shape[-2:]) for m in maps), key=lambda hw: hw[0] * hw[1])
    size = (int(size[0]), int(size[1]))
    out = _resize(maps[0], size)
    for m in maps[1:]:
        out = out * _resize(m, size)
    return out
