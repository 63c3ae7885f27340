"""Every anomaly method by name: ``build_scorer(name, parts, **options)`` → a
:class:`~.scorers.Scorer` (docs/ARCHITECTURE.md).

Methods (:data:`METHODS`):

===========  ===========================================================================
msp          1 − max softmax                      (teacher ``o``)
maxlogit     −max logit                           (teacher ``o``)
entropy      softmax entropy                      (teacher ``o``)
sml          −standardised max logit + boundary suppression + dilated smoothing (``o``)
pans         1 − max cos(LH, class prototypes)    (teacher ``lh``)
mulmem       Γ of Eq. 3–4, standardised per predicted class (teacher memory layers)
auxcon       Ψ of Eq. 6–7                         (teacher and student consensus layers)
cosme        Υ = Ψ · Γ′ of Eq. 8                  (both)
===========  ===========================================================================

AuxCon and CosMe also take the scale-free Ψ (beyond the paper; its default is the paper's form):
``distance`` (``l2`` = Eq. 6, ``relative``, ``cosine``; :func:`.consensus.psi_layer`),
``standardize`` / ``standardize_psi`` (Ψ per predicted class with training statistics, as Γ is)
and ``boundary`` (SML's boundary suppression of that z-score).

Every method also takes ``refine=guided`` (``refine_radius``, ``refine_eps``): its upsampled map
is then re-fitted to the camera image's edges by the guided filter (:mod:`.refine`), which needs
the image as ``guide``. Off by default: the paper's maps are plain bilinear upsampling.

The bundle stores :class:`~.parts.AnomalyParts` in ``anomaly.safetensors`` (:mod:`.parts`: the
file format).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from torch import Tensor

from ..errors import BundleError, MissingPartError
from ..nets.taps import ordered, parse_taps
from ..options import REFINEMENTS
from . import baselines, refine
from .method_spec import check_run_spec
from .fusion import DEFAULT_FUSION, check_fusion
from .parts import AnomalyParts, psi_key
from .scorers import (
    AuxConScorer,
    CosMeScorer,
    LogitScorer,
    MulMemScorer,
    PAnSScorer,
    Scorer,
    SMLScorer,
)
from .standardize import ClassStats

__all__ = ["METHODS", "build_scorer", "default_method"]

METHODS: Tuple[str, ...] = (
    "msp",
    "maxlogit",
    "entropy",
    "sml",
    "pans",
    "mulmem",
    "auxcon",
    "cosme",
)


_BUILD_MEMORY = "cosme build-memory --bundle DIR --data KIND:PATH"


_TRAIN_STUDENT = "cosme train-student --bundle DIR --data KIND:PATH"


_PSI_STATS = "cosme train-student --stats-only --bundle DIR --data KIND:PATH"


def _need_memory(name: str, parts: AnomalyParts) -> Dict[str, Tensor]:
    if not parts.memory:
        raise MissingPartError(
            f"method {name!r} needs the memory bank (memory.*): run `{_BUILD_MEMORY}`"
        )
    missing = [layer for layer in parts.memory_layers if layer not in parts.memory]
    if missing:
        raise MissingPartError(
            f"method {name!r} needs memory layer(s) {', '.join('memory.' + m for m in missing)}, "
            f"which the bank lacks: rebuild it for layers {','.join(parts.memory_layers)} with "
            f"`{_BUILD_MEMORY}`"
        )
    return {layer: parts.memory[layer] for layer in parts.memory_layers}


def _need_mulmem_stats(name: str, parts: AnomalyParts) -> ClassStats:
    if parts.mulmem_stats is None:
        raise MissingPartError(
            f"method {name!r} needs the MulMem class statistics (mulmem.mean, mulmem.std): "
            f"run `{_BUILD_MEMORY}`"
        )
    return parts.mulmem_stats


def _need_student(name: str, parts: AnomalyParts) -> None:
    if not parts.has_student:
        raise MissingPartError(f"method {name!r} needs the student: run `{_TRAIN_STUDENT}`")


def _memory_subset(
    name: str, parts: AnomalyParts, layers: Optional[Iterable[str]], standardize: bool
) -> Tuple[str, ...]:
    """The memory layers a MulMem/CosMe scorer uses: all of the bank's, or the subset ``layers``
    (an ablation of Eq. 4's product). The class statistics describe Γ over *all* the bank's
    layers, so a subset is only meaningful unstandardised."""
    if layers is None:
        return parts.memory_layers
    layers = parse_taps(layers)
    if not layers:
        raise ValueError(f"method {name!r}: option layers is empty")
    outside = [t for t in layers if t not in parts.memory_layers]
    if outside:
        raise ValueError(
            f"method {name!r}: layers {','.join(outside)} are not in the memory "
            f"(it has {','.join(parts.memory_layers)})"
        )
    if standardize and set(layers) != set(parts.memory_layers):
        how = "fusion=raw" if name == "cosme" else "standardize=false"
        raise ValueError(
            f"method {name!r}: the class statistics were gathered for Γ over "
            f"{','.join(parts.memory_layers)}; a subset of layers needs {how}"
        )
    return tuple(t for t in parts.memory_layers if t in layers)


def _consensus(name: str, parts: AnomalyParts, layers: Optional[Iterable[str]]) -> Tuple[str, ...]:
    """Le of Eq. 7: the bundle's consensus layers, or ``layers`` (an ablation; the student must
    have been trained to output them, which the pipeline checks when it loads the student)."""
    if layers is None:
        return parts.consensus_layers
    layers = ordered(parse_taps(layers))
    if not layers:
        raise ValueError(f"method {name!r}: the consensus layers are empty")
    return layers


def _need_psi_stats(
    name: str, parts: AnomalyParts, distance: str, layers: Tuple[str, ...]
) -> ClassStats:
    key = psi_key(distance, layers)
    if parts.psi_stats and key in parts.psi_stats:
        return parts.psi_stats[key]
    if parts.psi_stats_note:
        raise MissingPartError(
            f"method {name!r} needs the Ψ statistics, but "
            f"{parts.psi_stats_note}: run `{_PSI_STATS}`"
        )
    have = ", ".join(sorted(parts.psi_stats or {})) or "none"
    raise MissingPartError(
        f"method {name!r} needs the Ψ statistics psi.{key}.mean/std (the bundle has {have}): "
        f"run `{_PSI_STATS}`"
    )


def _auxcon(
    name: str,
    parts: AnomalyParts,
    layers: Tuple[str, ...],
    distance: str,
    standardize: bool,
    boundary: bool,
) -> AuxConScorer:
    from .consensus import DISTANCES

    if distance not in DISTANCES:
        raise ValueError(
            f"method {name!r}: unknown distance {distance!r}; choose one of "
            f"{', '.join(DISTANCES)}"
        )
    _need_student(name, parts)
    stats = _need_psi_stats(name, parts, distance, layers) if standardize else None
    return AuxConScorer(layers, distance=distance, stats=stats, boundary=boundary)


def _split(name: str, options: dict, allowed: Iterable[str]) -> dict:
    allowed = set(allowed)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"method {name!r} does not take option(s) {unknown}; "
            f"it takes {sorted(allowed) or 'none'}"
        )
    return dict(options)


def default_method(manifest: Mapping[str, Any], where: str = "manifest.yaml") -> str:
    """The method ``auto`` stands for in a bundle with ``manifest``: the spec the bundle names
    (``anomaly.default_method``, set by ``cosme bundle set-default`` from measurements on its
    development data) when it has a memory and a student, else CosMe (Eq. 8) when it has both,
    otherwise MaxLogit, which needs the teacher alone. A named spec that is not a method a
    shell can run is a BundleError naming the field (``where``: the manifest's path)."""
    if "student" not in manifest or "anomaly" not in manifest:
        return "maxlogit"
    named = manifest["anomaly"].get("default_method")
    if not named:
        return "cosme"
    try:
        check_run_spec(str(named), METHODS)
    except ValueError as exc:
        raise BundleError(f"{where}: field 'anomaly.default_method': {exc}") from None
    return str(named)


def build_scorer(
    name: str, parts: AnomalyParts, *, input_height: Optional[int] = None, **options
) -> Scorer:
    """The scorer for method ``name`` (one of :data:`METHODS`) over ``parts``.

    ``input_height``: the height of the network input the scorer's taps come from, the unit of
    ``refine_radius`` (None: the output's height).

    Options: ``upsample_logits`` (msp, maxlogit, entropy, sml), ``normalize`` (entropy), the SML
    post-processing keywords of :func:`.baselines.sml` (sml), ``chunk_bytes`` (pans, mulmem,
    cosme), ``standardize`` (mulmem), ``fusion`` (cosme; see :func:`cosme_fusion`), ``layers``
    (mulmem, cosme: a subset of the memory layers for Eq. 4's product, unstandardised only;
    auxcon: the consensus layers Le of Eq. 7), ``consensus`` (cosme: Le), ``distance``
    (auxcon, cosme: ψ's distance, ``l2`` / ``relative`` / ``cosine``), ``standardize`` (auxcon) /
    ``standardize_psi`` (cosme: Ψ per predicted class; needs the bundle's Ψ statistics and, for
    cosme, fusion ``softplus`` or ``zsum``), ``boundary`` (auxcon, cosme: SML's boundary
    suppression of Ψ); every method:
    ``refine`` (``none`` or ``guided``), ``refine_radius`` (network-input pixels, default 8),
    ``refine_eps`` (default 1e-3) — see :mod:`.refine`.
    Text specs such as ``cosme[fusion=raw]`` are parsed by :mod:`.method_spec`.
    Raises ValueError for an unknown name/option, :class:`MissingPartError` with the command to
    run when ``parts`` lacks what the method needs.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in METHODS:
        raise ValueError(f"unknown anomaly method {name!r}; choose one of {', '.join(METHODS)}")
    options = dict(options)
    refinement = _refinement(
        key,
        options.pop("refine", "none"),
        options.pop("refine_radius", None),
        options.pop("refine_eps", None),
    )
    scorer = _build(key, parts, options)
    scorer.refinement = refinement
    scorer.input_height = None if input_height is None else int(input_height)
    scorer.align_corners = bool(parts.align_corners)
    if isinstance(scorer, CosMeScorer):  # its parts resize too
        scorer.mulmem.align_corners = scorer.auxcon.align_corners = scorer.align_corners
    return scorer


def _refinement(name: str, how: str, radius, eps) -> Optional[Tuple[int, float]]:
    if how not in REFINEMENTS:
        raise ValueError(
            f"method {name!r}: unknown refine {how!r}; choose one of " f"{', '.join(REFINEMENTS)}"
        )
    if how == "none":
        if radius is not None or eps is not None:
            raise ValueError(f"method {name!r}: refine_radius and refine_eps need refine=guided")
        return None
    radius = refine.DEFAULT_RADIUS if radius is None else int(radius)
    eps = refine.DEFAULT_EPS if eps is None else float(eps)
    if radius < 1 or not eps > 0:
        raise ValueError(
            f"method {name!r}: refine_radius must be >= 1 and refine_eps > 0, got "
            f"{radius} and {eps}"
        )
    return radius, eps


def _build(key: str, parts: AnomalyParts, options: dict) -> Scorer:
    if key in ("msp", "maxlogit", "entropy"):
        allowed = ("upsample_logits", "normalize") if key == "entropy" else ("upsample_logits",)
        return LogitScorer(key, **_split(key, options, allowed))

    if key == "sml":
        opts = _split(
            key,
            options,
            ("upsample_logits", "boundary_suppression", "smoothing", *baselines.SML_DEFAULTS),
        )
        if parts.sml_stats is None:
            raise MissingPartError(
                f"method 'sml' needs SML statistics (sml.mean, sml.std): run `{_BUILD_MEMORY}` "
                "(it also gathers the SML and PAnS statistics)"
            )
        return SMLScorer(parts.sml_stats, **opts)

    if key == "pans":
        opts = _split(key, options, ("chunk_bytes",))
        if parts.pans_prototypes is None:
            raise MissingPartError(
                f"method 'pans' needs the PAnS class prototypes (pans.prototypes): run "
                f"`{_BUILD_MEMORY}` (it also gathers the SML and PAnS statistics)"
            )
        return PAnSScorer(parts.pans_prototypes, **opts)

    if key == "auxcon":
        opts = _split(key, options, ("layers", "distance", "standardize", "boundary"))
        return _auxcon(
            key,
            parts,
            _consensus(key, parts, opts.get("layers")),
            opts.get("distance", "l2"),
            bool(opts.get("standardize", False)),
            bool(opts.get("boundary", False)),
        )

    if key == "mulmem":
        opts = _split(key, options, ("standardize", "chunk_bytes", "layers"))
        bank = _need_memory(key, parts)
        standardize = opts.get("standardize", True)
        layers = _memory_subset(key, parts, opts.pop("layers", None), standardize)
        stats = _need_mulmem_stats(key, parts) if standardize else None
        return MulMemScorer(bank, layers, stats, **opts)

    # cosme
    opts = _split(
        key,
        options,
        ("fusion", "chunk_bytes", "layers", "consensus", "distance", "standardize_psi", "boundary"),
    )
    fusion = opts.pop("fusion", DEFAULT_FUSION)
    consensus_layers = _consensus(key, parts, opts.pop("consensus", None))
    distance = opts.pop("distance", "l2")
    standardize_psi = bool(opts.pop("standardize_psi", False))
    boundary = bool(opts.pop("boundary", False))
    check_fusion(fusion, standardize_psi)  # before any part is looked for
    bank = _need_memory(key, parts)
    standardize = fusion != "raw"
    layers = _memory_subset(key, parts, opts.pop("layers", None), standardize)
    stats = _need_mulmem_stats(key, parts) if standardize else None
    auxcon = _auxcon(key, parts, consensus_layers, distance, standardize_psi, boundary)
    mulmem = MulMemScorer(bank, layers, stats, standardize=standardize, **opts)
    return CosMeScorer(mulmem, auxcon, fusion=fusion)
