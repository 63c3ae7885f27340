"""Per-class standardisation of an anomaly score, as SML does (Jung et al., ICCV 2021).

A score s (the max logit for SML, MulMem's Γ of Eq. 4 for CosMe) has a different scale in every
predicted class. The training set gives, for each class c, the mean μ_c and standard deviation σ_c
of s over the training pixels *predicted* as c; at test time ``(s − μ_ĉ) / σ_ĉ`` with ĉ the
pixel's predicted class.

:class:`ClassStatsAccumulator` streams over training batches (float64 count / sum / sum of squares
per class via ``bincount``; all-reducible under ``torch.distributed``); :meth:`finalize` gives a
:class:`ClassStats` that standardises and round-trips through a flat tensor dict (safetensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["ClassStats", "ClassStatsAccumulator"]

# Relative std floor: a class whose scores barely vary (e.g. very few pixels) must not turn
# tiny deviations into huge standardised scores; σ is floored at this fraction of the pooled σ.
DEFAULT_REL_STD_FLOOR = 1e-3
_ABS_STD_FLOOR = 1e-12


@dataclass
class ClassStats:
    """Per-class mean and std of a score over training pixels predicted as that class.

    ``mean`` and ``std`` are (N,) fp32 with ``std > 0``. ``count`` (optional, (N,) float64) is the
    number of training pixels behind each class; ``fallback`` (optional, (N,) bool) marks classes
    that had too few pixels and carry the pooled statistics instead (see
    :meth:`ClassStatsAccumulator.finalize`).
    """

    mean: Tensor
    std: Tensor
    count: Optional[Tensor] = None
    fallback: Optional[Tensor] = None

    @property
    def num_classes(self) -> int:
        return int(self.mean.shape[0])

    def to(self, device) -> "ClassStats":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ClassStats(move(self.mean), move(self.std), move(self.count), move(self.fallback))

    def standardize(self, values: Tensor, pred: Tensor) -> Tensor:
        """``(v − mean[pred]) / std[pred]`` in fp32; ``values`` and ``pred`` of the same shape."""
        if values.shape != pred.shape:
            raise ValueError(
                f"values {tuple(values.shape)} and pred {tuple(pred.shape)} differ in shape"
            )
        mean = self.mean.to(device=values.device, dtype=torch.float32)
        std = self.std.to(device=values.device, dtype=torch.float32)
        idx = pred.long()
        return (values.float() - mean[idx]) / std[idx]

    def to_tensors(self, prefix: str = "") -> Dict[str, Tensor]:
        """Flat ``{prefix + name: tensor}`` dict (contiguous CPU tensors) for safetensors."""
        out = {
            f"{prefix}mean": self.mean.detach().float().cpu().contiguous(),
            f"{prefix}std": self.std.detach().float().cpu().contiguous(),
        }
        if self.count is not None:
            out[f"{prefix}count"] = self.count.detach().double().cpu().contiguous()
        if self.fallback is not None:
            out[f"{prefix}fallback"] = self.fallback.detach().bool().cpu().contiguous()
        return out

    @classmethod
    def from_tensors(cls, d: Mapping[str, Tensor], prefix: str = "") -> "ClassStats":
        """Inverse of :meth:`to_tensors`; raises ValueError naming the offending key."""
        tensors = {}
        for name in ("mean", "std"):
            key = f"{prefix}{name}"
            if key not in d:
                raise ValueError(f"missing tensor {key!r}")
            t = d[key]
            if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] == 0:
                raise ValueError(
                    f"{key!r} must be a non-empty 1-D tensor, got "
                    f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}"
                )
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise ValueError(f"{key!r} must hold finite floating-point values")
            tensors[name] = t.float()
        n = tensors["mean"].shape[0]
        if tensors["std"].shape[0] != n:
            raise ValueError(
                f"{prefix + 'std'!r} has {tensors['std'].shape[0]} classes, "
                f"{prefix + 'mean'!r} has {n}"
            )
        if not bool((tensors["std"] > 0).all()):
            raise ValueError(f"{prefix + 'std'!r} must be > 0 for every class")
        extra = {}
        for name, dtype_ok in (
            ("count", lambda t: not t.is_complex() and t.dtype != torch.bool),
            ("fallback", lambda t: t.dtype == torch.bool),
        ):
            key = f"{prefix}{name}"
            if key in d:
                t = d[key]
                if t.dim() != 1 or t.shape[0] != n or not dtype_ok(t):
                    raise ValueError(
                        f"{key!r} must be a 1-D tensor of {n} entries "
                        f"({'bool' if name == 'fallback' else 'numeric'}), "
                        f"got {tuple(t.shape)} {t.dtype}"
                    )
                extra[name] = t.double() if name == "count" else t
        return cls(tensors["mean"], tensors["std"], extra.get("count"), extra.get("fallback"))


class ClassStatsAccumulator:
    """Streams per-predicted-class count, Σv and Σv² in float64 (bincount-based).

    Accumulators live on the device of the first ``update`` so GPU builds do not synchronise
    per batch.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.count = torch.zeros(self.num_classes, dtype=torch.float64)
        self.sum = torch.zeros(self.num_classes, dtype=torch.float64)
        self.sumsq = torch.zeros(self.num_classes, dtype=torch.float64)
        self._device_set = False

    def update(self, values: Tensor, pred: Tensor, valid: Optional[Tensor] = None) -> None:
        """Add the pixels of a batch: ``values`` (B, H, W) float, ``pred`` (B, H, W) class ids,
        ``valid`` optional (B, H, W) bool (False pixels are ignored)."""
        if values.shape != pred.shape:
            raise ValueError(
                f"values {tuple(values.shape)} and pred {tuple(pred.shape)} differ in shape"
            )
        if not self._device_set:
            self.count, self.sum, self.sumsq = (
                t.to(values.device) for t in (self.count, self.sum, self.sumsq)
            )
            self._device_set = True
        v = values.reshape(-1).to(self.count.device, torch.float64)
        p = pred.reshape(-1).to(self.count.device, torch.long)
        if valid is not None:
            if valid.shape != values.shape:
                raise ValueError(
                    f"valid {tuple(valid.shape)} and values {tuple(values.shape)} differ in shape"
                )
            keep = valid.reshape(-1).to(self.count.device, torch.bool)
            v, p = v[keep], p[keep]
        if p.numel() == 0:
            return
        # one pass each; bad inputs would silently poison every later standardised score
        if int(p.min()) < 0 or int(p.max()) >= self.num_classes:
            raise ValueError(
                f"predicted class ids must lie in [0, {self.num_classes}); got "
                f"[{int(p.min())}, {int(p.max())}]"
            )
        if not bool(torch.isfinite(v).all()):
            raise ValueError("score values contain NaN or inf")
        n = self.num_classes
        self.count += torch.bincount(p, minlength=n).to(torch.float64)
        self.sum += torch.bincount(p, weights=v, minlength=n)
        self.sumsq += torch.bincount(p, weights=v * v, minlength=n)

    def all_reduce(self) -> None:
        """Sum the accumulators over all processes (no-op unless torch.distributed is up)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return
        dev = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        packed = torch.stack([self.count, self.sum, self.sumsq]).to(dev)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed = packed.to(self.count.device)
        self.count, self.sum, self.sumsq = packed[0].clone(), packed[1].clone(), packed[2].clone()

    def finalize(self, min_count: int = 1, std_floor: Optional[float] = None) -> ClassStats:
        """Mean and (population) std per class.

        Fallback: a class with fewer than ``min_count`` training pixels gets the *pooled*
        statistics of all training pixels — with no evidence about the class the best estimate
        of its score distribution is the unconditional one, which standardises it like an
        "average" class rather than with arbitrary constants. The std is floored at
        ``std_floor`` (default ``1e-3 ×`` the pooled std, at least 1e-12) so that a class whose
        scores barely vary cannot blow up its standardised scores.

        Raises ValueError when no pixel at all was accumulated.
        """
        count = self.count.cpu()
        s, ss = self.sum.cpu(), self.sumsq.cpu()
        total = float(count.sum())
        if total <= 0:
            raise ValueError("no training pixels were accumulated; cannot compute class statistics")
        pooled_mean = float(s.sum()) / total
        pooled_var = max(float(ss.sum()) / total - pooled_mean**2, 0.0)
        pooled_std = pooled_var**0.5
        floor = (
            std_floor
            if std_floor is not None
            else max(DEFAULT_REL_STD_FLOOR * pooled_std, _ABS_STD_FLOOR)
        )
        if floor <= 0:
            raise ValueError(f"std_floor must be > 0, got {floor}")

        fallback = count < max(int(min_count), 1)
        safe = count.clamp_min(1.0)
        mean = s / safe
        # E[v²] − E[v]² in float64; clamp the tiny negatives that cancellation can leave
        var = (ss / safe - mean * mean).clamp_min(0.0)
        mean = torch.where(fallback, torch.full_like(mean, pooled_mean), mean)
        std = torch.where(fallback, torch.full_like(var, pooled_std), var.sqrt())
        std = std.clamp_min(floor)
        return ClassStats(
            mean=mean.float(), std=std.float(), count=count.clone(), fallback=fallback
        )
