"""Anomaly scoring: MulMem (memory), AuxCon (consensus), the baselines and the CosMe fusion.

Pure torch; the public entry point is :func:`build_scorer` (:mod:`.registry`) over
:class:`AnomalyParts` (:mod:`.parts`, the bundle's anomaly-part file format).
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
from .fusion import FUSIONS, cosme_fusion
from .registry import METHODS, build_scorer
from .scorers import Scorer, mulmem_gamma, predicted_classes
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
