"""Baseline anomaly scores on the teacher's outputs (docs/ARCHITECTURE.md, "Baselines kept beside it").

Every score is ``(B,H,W)`` fp32 at the resolution of its input and follows one convention:
**higher = more anomalous**. Inputs of any floating dtype are cast to fp32 first.

- :func:`msp` — 1 − max softmax probability (Hendrycks & Gimpel).
- :func:`maxlogit` — −max logit (Hendrycks et al.).
- :func:`entropy` — softmax entropy.
- :func:`sml` — Standardized Max Logits with iterative boundary suppression and dilated smoothing
  (Jung et al., ICCV 2021), negated.
- :func:`pans` — 1 − max cosine similarity of the LH feature to per-class prototypes (PAnS-style,
  Fontanel et al., CVPR-W 2021); :class:`ClassPrototypeAccumulator` builds the prototypes.

SML defaults (:data:`SML_DEFAULTS`) follow the official release, shjung13/Standardized-max-logits:
``eval.py`` arguments ``--boundary_width 4 --boundary_iteration 4 --smoothing_kernel_size 7
--smoothing_kernel_dilation 6`` and ``network/deepv3.py`` ``BoundarySuppressionWithSmoothing``
(Gaussian σ = 1.0, normalised to sum 1, replication padding). The release computes all of this on the
logits upsampled to the input image, so the widths and the dilation are in image pixels.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import memory

SML_DEFAULTS = {
    "boundary_width": 4,
    "boundary_iteration": 4,
    "kernel_size": 7,
    "sigma": 1.0,
    "dilation": 6,
}


def _logits(logits: Tensor) -> Tensor:
    if logits.dim() != 4:
        raise ValueError(f"expected logits (B,N,H,W), got shape {tuple(logits.shape)}")
    return logits.float()


# --------------------------------------------------------------------------- softmax / logits


def max_logit(logits: Tensor) -> Tuple[Tensor, Tensor]:
    """``(B,N,H,W)`` → (max logit ``(B,H,W)`` fp32, predicted class ``(B,H,W)`` long)."""
    values, classes = _logits(logits).max(dim=1)
    return values, classes


def msp(logits: Tensor) -> Tensor:
    """1 − max_c softmax(o)_c."""
    return 1.0 - torch.softmax(_logits(logits), dim=1).amax(dim=1)


def maxlogit(logits: Tensor) -> Tensor:
    """−max_c o_c."""
    return -_logits(logits).amax(dim=1)


def entropy(logits: Tensor, *, normalize: bool = False) -> Tensor:
    """Softmax entropy −Σ_c p_c log p_c in nats.

    Not normalised by default; ``normalize=True`` divides by log N so that the score lies in
    [0, 1]. Both rank pixels identically for a fixed N, so the anomaly metrics do not change.
    """
    x = _logits(logits)
    logp = torch.log_softmax(x, dim=1)
    h = -(logp.exp() * logp).sum(dim=1)
    if normalize:
        n = x.shape[1]
        h = h / math.log(n) if n > 1 else torch.zeros_like(h)
    return h


# --------------------------------------------------------------------------- SML


def find_boundaries(pred: Tensor) -> Tensor:
    """Class-boundary mask of a prediction map ``(B,H,W)`` → bool ``(B,H,W)``.

    As in the SML release: a pixel is a boundary pixel where the dilation of the class map by the
    4-neighbour cross differs from its erosion by the 3×3 square. Image borders are ignored
    (geodesic morphology: only in-image neighbours count).
    """
    if pred.dim() != 3:
        raise ValueError(f"expected a (B,H,W) class map, got shape {tuple(pred.shape)}")
    x = pred.to(torch.int32)
    # Shifted min/max over in-image neighbours only (separable for the square).
    dil = x.clone()
    dil[:, 1:, :] = torch.maximum(dil[:, 1:, :], x[:, :-1, :])
    dil[:, :-1, :] = torch.maximum(dil[:, :-1, :], x[:, 1:, :])
    dil[:, :, 1:] = torch.maximum(dil[:, :, 1:], x[:, :, :-1])
    dil[:, :, :-1] = torch.maximum(dil[:, :, :-1], x[:, :, 1:])
    row = x.clone()
    row[:, :, 1:] = torch.minimum(row[:, :, 1:], x[:, :, :-1])
    row[:, :, :-1] = torch.minimum(row[:, :, :-1], x[:, :, 1:])
    ero = row.clone()
    ero[:, 1:, :] = torch.minimum(ero[:, 1:, :], row[:, :-1, :])
    ero[:, :-1, :] = torch.minimum(ero[:, :-1, :], row[:, 1:, :])
    return dil != ero


def _cross_dilate(mask: Tensor) -> Tensor:
    """Binary dilation of a bool ``(B,H,W)`` mask by the 4-neighbour cross (outside = False)."""
    out = mask.clone()
    out[:, 1:, :] |= mask[:, :-1, :]
    out[:, :-1, :] |= mask[:, 1:, :]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def expand_boundaries(boundaries: Tensor, radius: int) -> Tensor:
    """Dilate a bool ``(B,H,W)`` mask by the L1 ball (diamond) of ``radius`` pixels.

    ``radius`` cross dilations, which is how the release builds its diamond kernels.
    """
    out = boundaries.bool()
    for _ in range(max(0, int(radius))):
        out = _cross_dilate(out)
    return out


def _box_sum3(x: Tensor) -> Tensor:
    """3×3 sum of a ``(B,H,W)`` map with replication padding (separable, same size)."""
    p = F.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    r = p[:, :, :-2] + p[:, :, 1:-1] + p[:, :, 2:]
    return r[:, :-2, :] + r[:, 1:-1, :] + r[:, 2:, :]


def suppress_boundaries(
    values: Tensor,
    pred: Tensor,
    *,
    width: int = SML_DEFAULTS["boundary_width"],
    iterations: int = SML_DEFAULTS["boundary_iteration"],
) -> Tensor:
    """SML's iterative boundary suppression of a score map ``(B,H,W)`` given the class map.

    Iteration t (0-based) takes the class boundary expanded by ``width − (width/iterations)·t − 1``
    pixels (0 at the last iteration) and replaces every pixel inside it by the mean of the
    non-boundary pixels of its 3×3 neighbourhood (replication padding at the image border); a
    pixel with no such neighbour keeps its value. Boundaries thus get filled from the outside in.
    """
    if iterations <= 0:
        return values.float()
    if width < 0 or width % iterations:
        raise ValueError(
            f"boundary width {width} must be a non-negative multiple of iterations {iterations}"
        )
    step = width // iterations
    radii = [
        0 if (width == 0 or it == iterations - 1) else width - step * it - 1
        for it in range(iterations)
    ]
    # the expanded boundaries for every radius, from one chain of cross dilations
    grown = [find_boundaries(pred)]
    for _ in range(max(radii)):
        grown.append(_cross_dilate(grown[-1]))
    out = values.float()
    for radius in radii:
        keep = (~grown[radius]).float()
        total = _box_sum3(out * keep)
        count = _box_sum3(keep)  # small integers: exact in fp32
        avg = torch.where(count > 0, total / count.clamp_min(1.0), out)
        out = torch.where(keep > 0, out, avg)
    return out


def gaussian_kernel(
    size: int = SML_DEFAULTS["kernel_size"], sigma: float = SML_DEFAULTS["sigma"]
) -> Tensor:
    """Normalised 2-D Gaussian ``(size, size)`` fp32 centred on the middle tap."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"smoothing kernel size must be odd and positive, got {size}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).float()


def dilated_smoothing(
    values: Tensor,
    *,
    kernel_size: int = SML_DEFAULTS["kernel_size"],
    sigma: float = SML_DEFAULTS["sigma"],
    dilation: int = SML_DEFAULTS["dilation"],
) -> Tensor:
    """Convolve ``(B,H,W)`` with a dilated Gaussian, replication-padded so the size is kept."""
    kernel = gaussian_kernel(kernel_size, sigma).to(values.device)
    pad = dilation * (kernel_size // 2)
    x = F.pad(values.float().unsqueeze(1), (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(x, kernel[None, None], dilation=dilation).squeeze(1)


def standardized_max_logit(logits: Tensor, stats) -> Tuple[Tensor, Tensor]:
    """SML before post-processing: (max logit − μ_c)/σ_c for the predicted class c.

    Returns (standardised max logit ``(B,H,W)``, class map). **High = in-distribution** here, as in
    the paper; :func:`sml` negates. ``stats`` is a :class:`~.standardize.ClassStats` of the max
    logit over training pixels predicted as each class.
    """
    values, classes = max_logit(logits)
    return stats.standardize(values, classes).float(), classes


def sml(
    logits: Tensor,
    stats,
    *,
    boundary_suppression: bool = True,
    boundary_width: int = SML_DEFAULTS["boundary_width"],
    boundary_iteration: int = SML_DEFAULTS["boundary_iteration"],
    smoothing: bool = True,
    kernel_size: int = SML_DEFAULTS["kernel_size"],
    sigma: float = SML_DEFAULTS["sigma"],
    dilation: int = SML_DEFAULTS["dilation"],
) -> Tensor:
    """Standardized Max Logits (Jung et al. 2021), negated so that higher = more anomalous.

    standardise per predicted class → boundary suppression → dilated Gaussian smoothing → −1·.
    Both post-processing steps are linear averages, so negating last equals negating first.
    Apply it at the resolution the statistics were gathered at (the release: input image size).
    """
    z, classes = standardized_max_logit(logits, stats)
    if boundary_suppression:
        z = suppress_boundaries(z, classes, width=boundary_width, iterations=boundary_iteration)
    if smoothing:
        z = dilated_smoothing(z, kernel_size=kernel_size, sigma=sigma, dilation=dilation)
    return -z


# --------------------------------------------------------------------------- PAnS


def pans(lh: Tensor, prototypes: Tensor, **kw) -> Tensor:
    """PAnS-style score 1 − max_c cos(LH_ij, P_c) → ``(B,H,W)`` fp32.

    ``prototypes`` is ``(N_cls, C)`` with unit rows; all-zero rows (classes never seen while
    building, see :meth:`ClassPrototypeAccumulator.finalize`) are left out of the max, so they
    cannot win with cos = 0. Extra keywords go to :func:`.memory.max_cosine` (e.g. ``chunk_bytes``).
    """
    if prototypes.dim() != 2 or prototypes.shape[1] != lh.shape[1]:
        raise ValueError(
            f"PAnS prototypes {tuple(prototypes.shape)} do not fit LH features {tuple(lh.shape)}"
        )
    seen = prototypes.float().norm(dim=1) > 0
    if not bool(seen.any()):
        raise ValueError("PAnS prototypes are all zero: no class was seen while building them")
    protos = prototypes[seen] if not bool(seen.all()) else prototypes
    return 1.0 - memory.max_cosine(lh, protos, **kw)


class ClassPrototypeAccumulator:
    """Per-class prototypes for PAnS: the normalised sum of unit LH features of each class.

    ``update(lh, classes, valid)`` adds the L2-normalised LH vectors of every pixel to the row of
    its class (a label, or the teacher's own prediction as a pseudo-label). ``classes`` (and
    ``valid``) at another resolution than ``lh`` are resized with nearest neighbour; classes outside
    ``[0, num_classes)`` (e.g. 255 = ignore) are skipped. Sums are kept in float64.

    ``finalize()`` returns ``(N, C)`` fp32 unit rows — the mean direction of the class — and an
    all-zero row for a class never seen; :func:`pans` excludes such rows from the max.
    """

    def __init__(self, num_classes: int, channels: int):
        if num_classes < 1 or channels < 1:
            raise ValueError("num_classes and channels must be positive")
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.sums = torch.zeros(self.num_classes, self.channels, dtype=torch.float64)
        self.counts = torch.zeros(self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, lh: Tensor, classes: Tensor, valid: Optional[Tensor] = None) -> None:
        if lh.dim() != 4 or lh.shape[1] != self.channels:
            raise ValueError(f"expected LH (B,{self.channels},H,W), got {tuple(lh.shape)}")
        size = tuple(lh.shape[-2:])
        classes = _nearest(classes, size).long()
        ok = (classes >= 0) & (classes < self.num_classes)
        if valid is not None:
            ok &= _nearest(valid, size).bool()
        feats = F.normalize(lh.float(), dim=1).permute(0, 2, 3, 1)[ok]  # (P, C)
        idx = classes[ok]
        if idx.numel() == 0:
            return
        sums = torch.zeros(self.num_classes, self.channels, device=lh.device)
        sums.index_add_(0, idx, feats)
        self.sums += sums.double().cpu()
        self.counts += torch.bincount(idx, minlength=self.num_classes).cpu()

    def all_reduce(self) -> None:
        """Sum over processes when torch.distributed is initialised; a no-op otherwise."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        for name in ("sums", "counts"):
            t = getattr(self, name).to(device)
            dist.all_reduce(t)
            setattr(self, name, t.cpu())

    def finalize(self) -> Tensor:
        norms = self.sums.norm(dim=1, keepdim=True)
        protos = torch.where(
            norms > 0, self.sums / norms.clamp_min(1e-300), torch.zeros_like(self.sums)
        )
        return protos.float()


def _nearest(x: Tensor, size: Tuple[int, int]) -> Tensor:
    if x.dim() != 3:
        raise ValueError(f"expected a (B,H,W) map, got shape {tuple(x.shape)}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    y = F.interpolate(x.unsqueeze(1).float(), size=size, mode="nearest")
    return y.squeeze(1).to(x.dtype)
