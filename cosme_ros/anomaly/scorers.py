"""One interface over every anomaly method, selected by name (docs/ARCHITECTURE.md).

``build_scorer(name, parts, **options)`` returns a :class:`Scorer`; calling it with the teacher's
taps (and the student's, for AuxCon/CosMe) gives a ``(B, H_out, W_out)`` fp32 map, higher = more
anomalous, bilinearly upsampled (align_corners=False) to ``out_size``. A scorer states the taps it
needs (``teacher_taps``, ``student_taps``) so that a compiled network can expose exactly those.

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

import abc
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import REFINEMENTS
from ..errors import MissingPartError
from ..nets.taps import LH, O, Taps, ordered, parse_taps
from . import baselines, consensus, memory, refine
from .parts import MEMORY_LAYERS, AnomalyParts, psi_key
from .standardize import ClassStats

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
FUSIONS: Tuple[str, ...] = ("signed", "softplus", "exp", "raw", "zsum")
#: The fusions that take a standardised Ψ (a z-score, negative for half the pixels).
Z_FUSIONS: Tuple[str, ...] = ("softplus", "zsum")
#: Eq. 8 as the paper writes it; chosen on measurements (BENCHMARKS.md, "Eq. 8").
DEFAULT_FUSION = "signed"

_BUILD_MEMORY = "cosme build-memory --bundle DIR --data KIND:PATH"
_TRAIN_STUDENT = "cosme train-student --bundle DIR --data KIND:PATH"
_PSI_STATS = "cosme train-student --stats-only --bundle DIR --data KIND:PATH"


# --------------------------------------------------------------------------- helpers


def resize(x: Tensor, size: Tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``(B,H,W)`` or ``(B,C,H,W)`` in fp32, with the teacher's
    ``align_corners`` (:attr:`AnomalyParts.align_corners`)."""
    size = (int(size[0]), int(size[1]))
    x = x.float()
    if tuple(x.shape[-2:]) == size:
        return x
    if x.dim() == 3:
        return F.interpolate(
            x.unsqueeze(1), size=size, mode="bilinear", align_corners=align_corners
        ).squeeze(1)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _larger(a: Tuple[int, int], b: Tuple[int, int]) -> Tuple[int, int]:
    return a if a[0] * a[1] >= b[0] * b[1] else b


def predicted_classes(
    logits: Tensor, size: Optional[Tuple[int, int]] = None, align_corners: bool = False
) -> Tensor:
    """Class map ``(B,H,W)`` long: argmax of the logits resized bilinearly to ``size``.

    Resizing the logits (not the argmax) gives the same class map that the segmentation output
    shows after its own upsampling, and smooth class borders at a finer resolution.
    """
    logits = logits if size is None else resize(logits, size, align_corners)
    return logits.argmax(dim=1)


def mulmem_gamma(
    teacher: Taps,
    bank: Mapping[str, Tensor],
    layers: Iterable[str] = MEMORY_LAYERS,
    align_corners: bool = False,
    **kw,
) -> Tuple[Tensor, Tensor]:
    """Raw Γ (Eq. 3–4) at the largest memory-layer resolution, and the class map there.

    This is the single definition of what :class:`MulMemScorer` standardises; the statistics
    builder must use it too, so that ``mulmem_stats`` describe exactly these values.
    """
    layers = tuple(layers)
    taps = {layer: teacher[layer] for layer in layers}
    gamma = memory.gamma(taps, {layer: bank[layer] for layer in layers}, **kw).float()
    return gamma, predicted_classes(teacher[O], tuple(gamma.shape[-2:]), align_corners)


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


# --------------------------------------------------------------------------- scorers


class Scorer(abc.ABC):
    """An anomaly method: ``scorer(teacher_taps, student_taps, out_size)`` → ``(B,H,W)`` fp32.

    Subclasses implement :meth:`score` at whatever resolution is natural for them; ``__call__``
    checks the taps, then upsamples bilinearly to ``out_size`` (with the teacher's
    ``align_corners``, which :func:`build_scorer` sets from the bundle's parts).
    """

    name: str = ""
    teacher_taps: Tuple[str, ...] = (O,)
    student_taps: Tuple[str, ...] = ()

    @abc.abstractmethod
    def score(self, teacher: Taps, student: Optional[Taps], out_size: Tuple[int, int]) -> Tensor:
        """The anomaly map ``(B,h,w)`` at the method's own resolution (may already be out_size)."""

    def __call__(
        self,
        teacher: Taps,
        student: Optional[Taps],
        out_size: Tuple[int, int],
        guide: Optional[Tensor] = None,
    ) -> Tensor:
        """The map at ``out_size``; ``guide`` (B,3,H_out,W_out) RGB in [0, 1] is the camera image
        that a ``refine=guided`` scorer needs (and any other ignores)."""
        missing = [t for t in self.teacher_taps if t not in teacher]
        if missing:
            raise KeyError(
                f"method {self.name!r} needs teacher taps {missing} (got {sorted(teacher)})"
            )
        if self.student_taps:
            if student is None:
                raise KeyError(
                    f"method {self.name!r} needs the student's taps {list(self.student_taps)}"
                )
            missing = [t for t in self.student_taps if t not in student]
            if missing:
                raise KeyError(
                    f"method {self.name!r} needs student taps {missing} (got {sorted(student)})"
                )
        out_size = (int(out_size[0]), int(out_size[1]))
        out = resize(self.score(teacher, student, out_size), out_size, self.align_corners)
        return self.refined(out, guide).contiguous()

    def refined(self, out: Tensor, guide: Optional[Tensor]) -> Tensor:
        """``out`` (B,H,W), the map at the output size, re-fitted to ``guide`` when the scorer
        was built with ``refine=guided``; unchanged otherwise."""
        if self.refinement is None:
            return out
        if guide is None:
            raise ValueError(
                f"method {self.name!r} with refine=guided needs the camera image " f"as guide"
            )
        # The radius is in network-input pixels (about the feature stride), so that one setting
        # means the same at every camera resolution.
        radius, eps = self.refinement
        return refine.refine_map(out, guide.to(out.device), radius, eps, self.input_height)

    #: ``(radius in network-input pixels, eps)`` of the guided filter, or None (plain bilinear).
    refinement: Optional[Tuple[int, float]] = None
    #: The teacher's bilinear convention (:attr:`AnomalyParts.align_corners`).
    align_corners: bool = False
    #: The network input's height, the unit of ``refine_radius`` (the pipeline that runs the
    #: scorer sets it; None: the output's height).
    input_height: Optional[int] = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, teacher_taps={self.teacher_taps}, "
            f"student_taps={self.student_taps})"
        )


class LogitScorer(Scorer):
    """MSP, MaxLogit and Entropy on the teacher's logits.

    ``upsample_logits=False`` (default) scores at the logits' resolution and upsamples the score;
    ``True`` upsamples the logits to ``out_size`` first (the usual evaluation protocol, N× the cost).
    """

    FUNCS: Dict[str, Callable[..., Tensor]] = {
        "msp": baselines.msp,
        "maxlogit": baselines.maxlogit,
        "entropy": baselines.entropy,
    }

    def __init__(self, name: str, *, upsample_logits: bool = False, normalize: bool = False):
        if name not in self.FUNCS:
            raise ValueError(f"LogitScorer does not know {name!r}")
        if normalize and name != "entropy":
            raise ValueError("option 'normalize' applies to 'entropy' only")
        self.name = name
        self.upsample_logits = bool(upsample_logits)
        self._kw = {"normalize": bool(normalize)} if name == "entropy" else {}

    def score(self, teacher, student, out_size):
        logits = (
            resize(teacher[O], out_size, self.align_corners) if self.upsample_logits else teacher[O]
        )
        return self.FUNCS[self.name](logits, **self._kw)


class SMLScorer(Scorer):
    """Standardized Max Logits (negated). By default the logits are first upsampled to
    ``out_size`` as in the SML release, since boundary widths and the smoothing dilation are
    in output pixels; ``sml_stats`` must have been gathered the same way."""

    def __init__(self, stats: ClassStats, *, upsample_logits: bool = True, **sml_options):
        unknown = set(sml_options) - {"boundary_suppression", "smoothing", *baselines.SML_DEFAULTS}
        if unknown:
            raise ValueError(f"unknown SML option(s) {sorted(unknown)}")
        self.name = "sml"
        self.stats = stats
        self.upsample_logits = bool(upsample_logits)
        self.options = sml_options

    def score(self, teacher, student, out_size):
        logits = (
            resize(teacher[O], out_size, self.align_corners) if self.upsample_logits else teacher[O]
        )
        return baselines.sml(logits, self.stats, **self.options)


class PAnSScorer(Scorer):
    """1 − max cosine between the teacher's LH feature and the class prototypes.

    PAnS-*style*: Fontanel et al. train a cosine classifier whose weights are the prototypes;
    here the prototypes are the class means of the teacher's LH features over the training
    pixels (``cosme build-memory``), which needs no training. Its table rows say so."""

    def __init__(self, prototypes: Tensor, *, chunk_bytes: Optional[int] = None):
        self.name = "pans"
        self.teacher_taps = ordered((LH, O))
        self.prototypes = prototypes
        self._kw = {} if chunk_bytes is None else {"chunk_bytes": int(chunk_bytes)}

    def score(self, teacher, student, out_size):
        protos = self.prototypes.to(teacher[LH].device)
        return baselines.pans(teacher[LH], protos, **self._kw)


class MulMemScorer(Scorer):
    """MulMem: Γ (Eq. 3–4) standardised per predicted class.

    The class at each pixel is the argmax of the teacher's logits resized (bilinearly) to Γ's
    resolution — the largest memory-layer resolution; standardisation then uses that class's
    mean/std of Γ over training pixels. ``standardize=False`` returns the raw Γ (ablation).
    """

    def __init__(
        self,
        bank: Mapping[str, Tensor],
        layers: Tuple[str, ...],
        stats: Optional[ClassStats],
        *,
        standardize: bool = True,
        chunk_bytes: Optional[int] = None,
    ):
        self.name = "mulmem"
        self.layers = tuple(layers)
        self.bank = dict(bank)
        self.stats = stats
        self.standardize = bool(standardize)
        if self.standardize and stats is None:
            raise ValueError("MulMemScorer(standardize=True) needs class statistics")
        self.teacher_taps = ordered(self.layers, (O,))
        self._kw = {} if chunk_bytes is None else {"chunk_bytes": int(chunk_bytes)}

    def gamma(self, teacher: Taps) -> Tensor:
        """Γ — standardised unless ``standardize=False`` — at its native resolution."""
        device = teacher[self.layers[0]].device
        bank = {k: v.to(device) for k, v in self.bank.items()}
        raw, classes = mulmem_gamma(teacher, bank, self.layers, self.align_corners, **self._kw)
        if not self.standardize:
            return raw
        return self.stats.standardize(raw, classes).float()

    def score(self, teacher, student, out_size):
        return self.gamma(teacher)


class AuxConScorer(Scorer):
    """AuxCon: Ψ (Eq. 6–7) over the consensus layers.

    Beyond the paper (BENCHMARKS.md, "A scale-free Ψ"): ``distance`` picks ψ
    (:func:`.consensus.psi_layer`; ``"l2"`` is Eq. 6); with ``stats`` Ψ is standardised per
    predicted class, as Γ is (the class at each pixel is the argmax of the logits resized to Ψ's
    resolution); ``boundary`` then applies SML's boundary suppression
    (:func:`.baselines.suppress_boundaries`) at the output resolution, where its widths are
    defined — Ψ, like the max logit, is high on class boundaries whatever the image.
    """

    def __init__(
        self,
        layers: Tuple[str, ...],
        *,
        distance: str = "l2",
        stats: Optional[ClassStats] = None,
        boundary: bool = False,
    ):
        if distance not in consensus.DISTANCES:
            raise ValueError(
                f"unknown consensus distance {distance!r}; choose one of "
                f"{', '.join(consensus.DISTANCES)}"
            )
        self.name = "auxcon"
        self.layers = tuple(layers)
        self.distance = distance
        self.stats = stats
        self.boundary = bool(boundary)
        self.teacher_taps = ordered(self.layers, (O,))
        self.student_taps = ordered(self.layers)

    @property
    def standardized(self) -> bool:
        return self.stats is not None

    def score(self, teacher, student, out_size):
        psi = consensus.psi(teacher, student, self.layers, distance=self.distance)
        if self.stats is not None:
            classes = predicted_classes(teacher[O], tuple(psi.shape[-2:]), self.align_corners)
            psi = self.stats.standardize(psi, classes)
        if self.boundary:
            classes = predicted_classes(teacher[O], out_size, self.align_corners)
            psi = baselines.suppress_boundaries(resize(psi, out_size, self.align_corners), classes)
        return psi


class CosMeScorer(Scorer):
    """CosMe, Eq. 8: Υ = Ψ · Γ′ at the finer of Ψ's and Γ's resolutions, then upsampled.

    ``fusion`` picks Γ′ (see :func:`cosme_fusion`; default ``"signed"``: the per-class
    standardised Γ itself, as the paper writes Eq. 8).
    """

    def __init__(self, mulmem: MulMemScorer, auxcon: AuxConScorer, *, fusion: str = DEFAULT_FUSION):
        check_fusion(fusion, auxcon.standardized)
        self.name = "cosme"
        self.mulmem = mulmem
        self.auxcon = auxcon
        self.fusion = fusion
        self.teacher_taps = ordered(mulmem.teacher_taps, auxcon.teacher_taps)
        self.student_taps = auxcon.student_taps

    def score(self, teacher, student, out_size):
        gamma = self.mulmem.gamma(teacher)
        psi = self.auxcon.score(teacher, student, out_size)
        size = _larger(tuple(gamma.shape[-2:]), tuple(psi.shape[-2:]))
        return cosme_fusion(
            resize(psi, size, self.align_corners),
            resize(gamma, size, self.align_corners),
            self.fusion,
            self.auxcon.standardized,
        )


# --------------------------------------------------------------------------- registry


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


def build_scorer(name: str, parts: AnomalyParts, **options) -> Scorer:
    """The scorer for method ``name`` (one of :data:`METHODS`) over ``parts``.

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
