"""Eq. 8: how CosMe fuses the consensus Ψ with the memory's Γ, Υ = Ψ · Γ′ (and the variants)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FUSIONS", "Z_FUSIONS", "DEFAULT_FUSION", "check_fusion", "cosme_fusion"]

FUSIONS: Tuple[str, ...] = ("signed", "softplus", "exp", "raw", "zsum")
#: The fusions that take a standardised Ψ (a z-score, negative for half the pixels).
Z_FUSIONS: Tuple[str, ...] = ("softplus", "zsum")
#: Eq. 8 as the paper writes it; chosen on measurements (BENCHMARKS.md, "Eq. 8").
DEFAULT_FUSION = "signed"


def check_fusion(fusion: str, psi_standardized: bool) -> None:
    """Raise ValueError unless ``fusion`` fits Ψ: a standardised Ψ is a z-score, whose product
    with Γ_std is not monotone (two negatives make a positive), so it takes only the fusions of
    two z-scores (:data:`Z_FUSIONS`); ``zsum`` adds two z-scores, so it needs one."""
    if fusion not in FUSIONS:
        raise ValueError(f"unknown CosMe fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    if psi_standardized and fusion not in Z_FUSIONS:
        raise ValueError(
            f"method 'cosme': standardize_psi=true makes Ψ a z-score, whose product "
            f"with Γ's is not monotone; choose fusion {' or '.join(Z_FUSIONS)}"
        )
    if fusion == "zsum" and not psi_standardized:
        raise ValueError(
            "method 'cosme': fusion=zsum adds two z-scores: it needs standardize_psi=true"
        )


def cosme_fusion(
    psi: Tensor, gamma: Tensor, fusion: str = DEFAULT_FUSION, psi_standardized: bool = False
) -> Tensor:
    """Eq. 8, Υ = Ψ · Γ′, with Γ′ a function of Γ chosen by ``fusion``.

    The paper standardises Γ per predicted class (as SML does) and multiplies. A standardised
    Γ_std is a z-score and is negative for about half the in-distribution pixels, where the
    literal Ψ · Γ_std ranks a pixel as *less* anomalous the more teacher and student disagree
    (not monotone in Ψ). The fusions:

    - ``"signed"`` (default): Υ = Ψ · Γ_std, the paper's Eq. 8 as written. The monotone variants
      below were the default before; measured on six renders of the synthetic test split with
      both demo teachers, the literal product is at least as good in AP and better in FPR95
      (the 95 %-TPR threshold sits where Γ_std > 0, so the flip below 0 costs nothing there);
      on Road Anomaly / FS Static they tie in AP and softplus is 1.3–1.6 points lower in FPR95
      (BENCHMARKS.md, "Eq. 8").
    - ``"softplus"``: Υ = Ψ · log(1 + e^{Γ_std}) — positive, monotone in Ψ and Γ_std, equal to
      Ψ · Γ_std for Γ_std ≫ 0; bends exactly where the 95 %-TPR threshold sits.
    - ``"exp"``: Υ = Ψ · e^{Γ_std}, i.e. log Υ = log Ψ + Γ_std — monotone, weights the memory
      more strongly at high z.
    - ``"raw"``: Υ = Ψ · Γ with the unstandardised Γ ∈ [0, 2^|L|] — monotone, no class statistics.

    With a standardised Ψ (``psi_standardized``; beyond the paper, see :class:`AuxConScorer`) both
    factors are z-scores, whose product is not monotone (two negatives make a positive), so only
    the fusions of two z-scores are allowed:

    - ``"softplus"``: Υ = log(1 + e^{Ψ_std}) · log(1 + e^{Γ_std});
    - ``"zsum"``: Υ = Ψ_std + Γ_std — the two evidences added in z units (the log of
      e^{Ψ_std} · e^{Γ_std}).

    ``gamma`` must be the standardised Γ for every fusion except ``"raw"``. Both inputs are
    ``(B,H,W)`` at the same resolution; the result is fp32.
    """
    check_fusion(fusion, psi_standardized)
    psi, gamma = psi.float(), gamma.float()
    if psi_standardized:
        if fusion == "zsum":
            return psi + gamma
        return F.softplus(psi) * F.softplus(gamma)
    if fusion == "softplus":
        g = F.softplus(gamma)
    elif fusion == "exp":
        g = torch.exp(gamma)
    else:  # raw, signed
        g = gamma
    return psi * g
