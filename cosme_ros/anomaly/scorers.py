"""The anomaly scorers: one :class:`Scorer` per method, over the teacher's (and student's) taps.

Calling a scorer with the teacher's taps (and the student's, for AuxCon/CosMe) gives a
``(B, H_out, W_out)`` fp32 map, higher = more anomalous, bilinearly upsampled (the teacher's
``align_corners``) to ``out_size``. A scorer states the taps it needs (``teacher_taps``,
``student_taps``) so that a compiled network can expose exactly those. Scorers are built by
:func:`cosme_ros.anomaly.registry.build_scorer` (by method name, with options) and not changed
afterwards: the pipeline that runs one gives everything it needs at construction.
"""

from __future__ import annotations

import abc
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from ..nets.taps import LH, O, Taps, ordered
from . import baselines, consensus, memory, refine
from .parts import MEMORY_LAYERS
from .fusion import DEFAULT_FUSION, check_fusion, cosme_fusion
from .standardize import ClassStats


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
    #: The network input's height, the unit of ``refine_radius`` (given to ``build_scorer`` by
    #: whoever builds the scorer for a pipeline; None: the output's height).
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
