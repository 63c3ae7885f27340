"""Edge-aware refinement of an anomaly map: the guided filter (He, Sun and Tang, ECCV 2010 / TPAMI 2013).

Why: CosMe's Ψ and two of Γ's three memory layers come from stride-16 features, so the
bilinearly upsampled map is a smooth surface on the feature grid that ignores where objects end:
part of an anomaly scores low (its pixels fall between grid cells that mostly see the road) and the
road around it scores high. The guided filter re-fits the map, window by window, as a linear
function of the camera image (Eq. 1 of the paper, ``q = a·I + b``), so pixels of one colour
region are pulled towards one score, and the map's edges move to the image's. Measured on the demo
bundle (synthetic test split, seed 1): at 1 % false positives CosMe finds 40 % of the anomaly
pixels instead of 32 %; on real images (ESPNetv2, Road Anomaly and Fishyscapes Static) the AP
of every method rises or stays, but for AuxCon on FS Static (−0.02) — numbers in the README.

The filter is written here rather than taken from OpenCV because ``cv2.ximgproc.guidedFilter``
is only in the contrib build (not the ``opencv-python`` wheel this package depends on) and works on
the CPU only, while the anomaly map lives on the pipeline's device; in torch it is a handful of
box filters and one batched 3×3 solve per pixel, on whatever device the scores are.

It is affine-equivariant in the scores (filtering α·s + β gives α·q + β), so it works for any
method's map (negative MaxLogit scores included) and keeps the method's units; the distribution of
the scores does change, so a threshold calibrated on plain maps must be calibrated again.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# The radius is given in network-input pixels (it is about the feature stride) and scaled to the
# output: r = 8 is half a stride-16 cell, the width of the halo.
DEFAULT_RADIUS = 8
# ε of Eq. 5: the variance (of an RGB guide in [0, 1]) below which a window counts as flat and
# the score is smoothed instead of following the image. 1e-3 is about a 3 % grey-level step.
DEFAULT_EPS = 1e-3


def box_mean(x: Tensor, r: int) -> Tensor:
    """Mean of ``x`` (B,C,H,W) over the (2r+1)² window around each pixel, clipped at the borders
    (a border pixel averages only the pixels that exist). O(1) per pixel whatever ``r``: the
    cumulative-sum box filter of He et al. (a pooling kernel would cost (2r+1)² per pixel, and r is
    16 or more at camera resolution)."""
    if r <= 0:
        return x
    h, w = x.shape[-2:]
    # Centred per channel, so that the running sums stay small and fp32 keeps ~1e-6 of the
    # values' range even over 2048-pixel rows.
    centre = x.mean(dim=(-2, -1), keepdim=True)

    def window_sums(t: Tensor, dim: int, n: int) -> Tensor:
        # Σ over [i−r, i+r] ∩ [0, n) along dim: the cumulative sum with a leading zero, its ends
        # repeated r times (the clipped windows), then two shifted views subtracted.
        pad = (0, 0, 1, 0) if dim == -2 else (1, 0)
        ends = (0, 0, r, r) if dim == -2 else (r, r, 0, 0)
        c = F.pad(F.pad(t.cumsum(dim), pad), ends, mode="replicate")
        return c.narrow(dim, 2 * r + 1, n) - c.narrow(dim, 0, n)

    def lengths(n: int) -> Tensor:  # how many pixels each clipped window has along one axis
        i = torch.arange(n, device=x.device, dtype=x.dtype)
        return (i + r).clamp(max=n - 1) - (i - r).clamp(min=0) + 1

    count = lengths(h)[:, None] * lengths(w)[None, :]
    return window_sums(window_sums(x - centre, -2, h), -1, w) / count + centre


def guided_filter(
    guide: Tensor, score: Tensor, radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS
) -> Tensor:
    """The colour guided filter (He et al., Eq. 14–16): ``score`` (B,H,W) filtered with the
    guidance image ``guide`` (B,3,H,W) in [0, 1] of the same size; returns (B,H,W) fp32.

    ``radius`` and ``eps`` are in the output's pixels and in the guide's variance units.
    """
    _check(guide, score, radius, eps)
    I = guide.float()
    a, b = _coefficients(I, score.float(), int(radius), eps)
    q = (box_mean(a, radius) * I).sum(1, keepdim=True) + box_mean(b, radius)  # Eq. 16
    return q.squeeze(1)


def _check(guide: Tensor, score: Tensor, radius: int, eps: float) -> None:
    if guide.dim() != 4 or guide.shape[1] != 3:
        raise ValueError(f"guide must be (B,3,H,W), got {tuple(guide.shape)}")
    if score.dim() != 3 or score.shape[0] != guide.shape[0] or score.shape[-2:] != guide.shape[-2:]:
        raise ValueError(
            f"score must be (B,H,W) of the guide's size {tuple(guide.shape[-2:])}, "
            f"got {tuple(score.shape)}"
        )
    if radius < 1:
        raise ValueError(f"the guided filter's radius must be at least 1, got {radius}")
    if eps <= 0:
        raise ValueError(f"the guided filter's eps must be positive, got {eps}")


def _coefficients(I: Tensor, score: Tensor, r: int, eps: float) -> Tuple[Tensor, Tensor]:
    """a (B,3,H,W) and b (B,1,H,W) of each window's linear model, Eq. 14–15."""
    p = score.unsqueeze(1)
    mean_I = box_mean(I, r)  # (B,3,H,W)
    mean_p = box_mean(p, r)  # (B,1,H,W)
    cov_Ip = box_mean(I * p, r) - mean_I * mean_p  # (B,3,H,W)
    # Σ_k: the guide's 3×3 covariance in each window (Eq. 14), regularised by ε·U.
    pairs = torch.stack([I[:, i] * I[:, j] for i, j in _UPPER], 1)
    var = box_mean(pairs, r) - torch.stack([mean_I[:, i] * mean_I[:, j] for i, j in _UPPER], 1)
    a = _solve_sym3(var, cov_Ip, eps)  # Eq. 14
    b = mean_p - (a * mean_I).sum(1, keepdim=True)  # Eq. 15
    return a, b


def fast_guided_filter(
    guide: Tensor, score: Tensor, radius: int, eps: float, low_size: Tuple[int, int]
) -> Tensor:
    """The fast guided filter (He and Sun, arXiv:1505.00996): the linear coefficients fitted at
    ``low_size`` (guide and score area-averaged down; ``radius`` in *those* pixels), then
    upsampled bilinearly and applied to the full-resolution guide, so edges stay at the guide's
    resolution while the cost is the low resolution's. Same arguments as :func:`guided_filter`."""
    _check(guide, score, radius, eps)
    h, w = guide.shape[-2:]
    low = (int(low_size[0]), int(low_size[1]))
    if low[0] >= h or low[1] >= w:
        return guided_filter(guide, score, radius, eps)
    I_lo = F.interpolate(guide.float(), size=low, mode="area")
    p_lo = F.interpolate(score.float().unsqueeze(1), size=low, mode="area").squeeze(1)
    a, b = _coefficients(I_lo, p_lo, int(radius), eps)
    a = F.interpolate(box_mean(a, radius), size=(h, w), mode="bilinear", align_corners=False)
    b = F.interpolate(box_mean(b, radius), size=(h, w), mode="bilinear", align_corners=False)
    return ((a * guide.float()).sum(1, keepdim=True) + b).squeeze(1)


_UPPER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _solve_sym3(var: Tensor, rhs: Tensor, eps: float) -> Tensor:
    """(Σ + εU)⁻¹ · rhs per pixel, Σ symmetric 3×3 given by its upper triangle ``var`` (B,6,H,W)
    in :data:`_UPPER` order, ``rhs`` (B,3,H,W): the adjugate over the determinant, elementwise
    (a batched ``torch.linalg.solve`` over millions of 3×3 systems is ~50× slower on the CPU).
    Σ + εU is positive definite (ε > 0), so the determinant is ≥ ε³."""
    a, b, c, d, e, f = (var[:, k] for k in range(6))  # [[a b c] [b d e] [c e f]]
    a, d, f = a + eps, d + eps, f + eps
    A, B, C = d * f - e * e, c * e - b * f, b * e - c * d
    D, E, F_ = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * A + b * B + c * C
    x, y, z = rhs[:, 0], rhs[:, 1], rhs[:, 2]
    return torch.stack(
        [A * x + B * y + C * z, B * x + D * y + E * z, C * x + E * y + F_ * z], 1
    ) / det.unsqueeze(1)


def scaled_radius(radius: int, input_height: int, output_height: int) -> int:
    """``radius`` given in network-input pixels, in output pixels (at least 1)."""
    return max(1, int(round(radius * output_height / max(1, input_height))))


def refine_map(
    score: Tensor, guide: Tensor, radius: int, eps: float, input_height: Optional[int] = None
) -> Tensor:
    """The refined map: ``score`` (B,H,W) and ``guide`` (B,3,H,W) at the output size, ``radius``
    in network-input pixels (``input_height`` rows; None: the output's). An output larger than
    the network input is refined with :func:`fast_guided_filter` at the input's resolution —
    the maps carry no finer detail than that, and a 720p frame costs ~100 ms on two CPU cores at
    full resolution — otherwise with :func:`guided_filter`."""
    h, w = score.shape[-2:]
    if input_height is not None and h > input_height:
        low = (int(input_height), max(1, int(round(w * input_height / h))))
        return fast_guided_filter(guide, score, radius, eps, low)
    return guided_filter(guide, score, scaled_radius(radius, input_height or h, h), eps)


def guide_from_images(
    images_rgb: Sequence[np.ndarray], size: Tuple[int, int], device: torch.device | str = "cpu"
) -> Tensor:
    """uint8 RGB frames (H, W, 3) → the guide (B, 3, *size) in [0, 1] on ``device``: each frame
    resized to the anomaly map's size (area-averaged when shrinking, bilinear when enlarging)."""
    h, w = int(size[0]), int(size[1])
    frames = []
    for im in images_rgb:
        if im.shape[:2] != (h, w):
            shrink = im.shape[0] * im.shape[1] > h * w
            im = cv2.resize(
                im, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            )
        frames.append(im)
    batch = torch.from_numpy(np.stack(frames)).to(device)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)
