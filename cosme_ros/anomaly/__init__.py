"""Anomaly scoring: MulMem (memory), AuxCon (consensus), the baselines and the CosMe fusion.

Pure torch; the public entry point is :func:`build_scorer` over :class:`AnomalyParts`.
"""

from .baselines import (
    SML_DEFAULTS,
    ClassPrototypeAccumulator,
    dilated_smoothing,
    entropy,
    find_boundaries,
    max_logit,
    maxlogit,
    msp,
    pans,
    sml,
    suppress_boundaries,
)
from .consensus import distillation_loss, psi, psi_layer
from .memory import MulMemBuilder, gamma, gamma_layer, max_cosine
from .parts import AnomalyParts
from .scorers import (
    FUSIONS,
    METHODS,
    Scorer,
    build_scorer,
    cosme_fusion,
    mulmem_gamma,
    predicted_classes,
)
from .standardize import ClassStats, ClassStatsAccumulator

__all__ = [
    "SML_DEFAULTS",
    "ClassPrototypeAccumulator",
    "dilated_smoothing",
    "entropy",
    "find_boundaries",
    "max_logit",
    "maxlogit",
    "msp",
    "pans",
    "sml",
    "suppress_boundaries",
    "distillation_loss",
    "psi",
    "psi_layer",
    "MulMemBuilder",
    "gamma",
    "gamma_layer",
    "max_cosine",
    "ClassStats",
    "ClassStatsAccumulator",
    "FUSIONS",
    "METHODS",
    "AnomalyParts",
    "Scorer",
    "build_scorer",
    "cosme_fusion",
    "mulmem_gamma",
    "predicted_classes",
]
