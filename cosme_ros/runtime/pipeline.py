"""Frame in → :class:`Result` out: preprocess → teacher ∥ student → scorer → postprocess.

The pipeline is the one place that turns a camera image into class and anomaly maps; the ROS
node, the CLI, replay and the benchmark only translate to and from it. It is closed: a
:class:`~.networks.Networks` (the teacher, and the student when the method needs it, on the CPU
fast path), one :class:`~cosme_ros.anomaly.scorers.Scorer` built for it and never changed, and a
:class:`Postprocess` that owns the class map and the refinement guide. A caller that needs
another scorer on the same networks asks :meth:`Pipeline.with_scorer` for a second pipeline;
``cosme bench`` times the stages through the ``mark`` hook of :meth:`Pipeline.__call__`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from cosme_ros.anomaly.method_spec import REFINE_OPTIONS, canonical, parse_method
from cosme_ros.anomaly.refine import guide_from_images
from cosme_ros.anomaly.registry import build_scorer, default_method
from cosme_ros.anomaly.scorers import Scorer, predicted_classes
from cosme_ros.bundle import Bundle
from cosme_ros.errors import CosmeError
from cosme_ros.nets.taps import O
from cosme_ros.options import AUTO_METHOD
from cosme_ros.runtime.engines import attach
from cosme_ros.runtime.networks import Networks

__all__ = [
    "Pipeline",
    "Result",
    "Postprocess",
    "bundle_default_method",
    "upsampled_argmax",
    "PIPELINE_STAGES",
]

#: the stages :meth:`Pipeline.__call__` reports to its ``mark`` hook, in order ("student" only
#: when the method runs one)
PIPELINE_STAGES = ("preprocess", "teacher", "student", "scoring", "postprocess")


@dataclass
class Result:
    """One frame's outputs at the requested output size."""

    classes: np.ndarray  # (H, W) uint8 class index (Cityscapes trainIds for our teachers)
    score: np.ndarray  # (H, W) float32 anomaly score, higher = more anomalous


# ----------------------------------------------------------------------------- BatchNorm folding


# ----------------------------------------------------------------------------- postprocess


def _source_index(n_out: int, n_in: int, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """Bilinear (align_corners=False) source rows/columns of each output one, as
    ``upsample_bilinear2d`` computes them: the two neighbours and the weight of the second."""
    d = torch.arange(n_out, dtype=torch.float32, device=device)
    src = ((d + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    return i0, (i0 + 1).clamp_max(n_in - 1), src - i0.float()


def upsampled_argmax(logits: Tensor, size: Tuple[int, int]) -> Tensor:
    """``F.interpolate(logits, size, mode="bilinear", align_corners=False).argmax(1)`` without
    upsampling every class's logits: (B, C, h, w) → (B, H, W) long.

    An upsampled logit vector is a convex combination of its four source neighbours. Where all
    four have the same argmax c, c wins the combination too (it is ≥ every other class in each
    term, and > every class before it, so the first-index rule agrees). Those output pixels —
    nearly all of a segmentation map (97 % for ESPNetv2 on a street frame) — take c directly;
    only the others blend their four neighbours' logits. Same classes as the full upsampling
    (up to the rounding of the blend at exact ties), ~4× faster at 720p for 20 classes.
    """
    b, c, h, w = logits.shape
    H, W = int(size[0]), int(size[1])
    a = logits.argmax(1)
    if (h, w) == (H, W):
        return a
    y0, y1, wy = _source_index(H, h, logits.device)
    x0, x1, wx = _source_index(W, w, logits.device)
    # cell (y, x) is uniform when (y, x), (y, x+1), (y+1, x), (y+1, x+1) agree (edges repeated)
    e = torch.cat([a, a[:, -1:]], 1)
    e = torch.cat([e, e[:, :, -1:]], 2)
    corner = e[:, :-1, :-1]
    uniform = (corner == e[:, :-1, 1:]) & (corner == e[:, 1:, :-1]) & (corner == e[:, 1:, 1:])
    classes = a[:, y0][:, :, x0]
    bi, yi, xi = (~uniform[:, y0][:, :, x0]).nonzero(as_tuple=True)
    if bi.numel():
        # rows of a (B·h·w, C) table: a view for channels_last logits, one copy otherwise
        table = logits.float().permute(0, 2, 3, 1).reshape(b * h * w, c)
        base = bi * (h * w)
        r0, r1 = base + y0[yi] * w, base + y1[yi] * w
        c0, c1 = x0[xi], x1[xi]
        ly, lx = wy[yi].unsqueeze(1), wx[xi].unsqueeze(1)
        mx, my = 1 - lx, 1 - ly

        def lerp_x(r: Tensor) -> Tensor:  # fresh rows from index_select: safe to update in place
            left = table.index_select(0, r + c0).mul_(mx)
            return left.add_(table.index_select(0, r + c1).mul_(lx))

        blend = lerp_x(r0).mul_(my).add_(lerp_x(r1).mul_(ly))
        classes[bi, yi, xi] = blend.argmax(1)
    return classes


@dataclass(frozen=True)
class Postprocess:
    """What happens at the output resolution besides scoring: the class map (the argmax of the
    bilinearly upsampled logits, with the teacher's ``align_corners``) and the guide image that
    ``refine=guided`` scorers re-fit their maps to."""

    align_corners: bool
    device: torch.device

    def classes(self, logits: Tensor, out_size: Tuple[int, int]) -> Tensor:
        """Logits → class map (B, H, W) long at ``out_size`` (:func:`upsampled_argmax` for the
        usual align_corners=False: the same map without upsampling every class)."""
        if self.align_corners:
            return predicted_classes(logits, out_size, align_corners=True)
        return upsampled_argmax(logits, out_size)

    def guide(
        self,
        images_rgb: Sequence[np.ndarray],
        out_size: Tuple[int, int],
        scorers: Sequence[Scorer],
    ) -> Optional[Tensor]:
        """The frames at ``out_size`` as the guided filter's guide, when one of ``scorers``
        refines its map (:func:`~cosme_ros.anomaly.refine.guide_from_images`); else None."""
        if all(s.refinement is None for s in scorers):
            return None
        return guide_from_images(list(images_rgb), out_size, self.device)


def bundle_default_method(bundle: Bundle) -> str:
    """What ``auto`` runs on ``bundle`` (:func:`cosme_ros.anomaly.registry.default_method`)."""
    return default_method(bundle.manifest, str(bundle.path / "manifest.yaml"))


def _no_mark(stage: str) -> None:
    pass


class Pipeline:
    """A bundle's networks and one anomaly scorer, ready to run on frames.

    ``method``: a method spec — a name of :data:`~cosme_ros.anomaly.registry.METHODS`, optionally
    with scorer options in brackets (``cosme[consensus=c4]``, :mod:`.anomaly.method_spec`) — or
    ``"auto"`` for the bundle's default (:func:`bundle_default_method`); ``self.method`` is the
    resolved spec in canonical form.

    ``precision``: ``fp32`` (default: the reference numbers), ``bf16`` or ``auto`` (see
    :func:`~.networks.resolve_precision`). ``threads``: if given, ``torch.set_num_threads`` —
    process-wide; torch's default is the number of physical cores. ``fast=False`` skips BatchNorm
    folding and channels_last (the plain eager networks). ``refine``: ``"none"`` (default, the
    paper's bilinear maps) or ``"guided"``: the anomaly map is re-fitted to the frame's edges by
    the guided filter (:mod:`cosme_ros.anomaly.refine`), with ``refine_radius`` network-input
    pixels and ``refine_eps``. ``engine``: ``off`` (default: the eager fast path), ``auto`` (the
    bundle's first compiled engine that fits, :mod:`.engines`) or an engine folder; when an
    engine was asked for and cannot be used the pipeline runs eager and says why in
    :attr:`engine_note` and sets :attr:`engine_fallback` (:attr:`backend` says what runs).
    """

    def __init__(
        self,
        bundle: Bundle,
        method: str = "maxlogit",
        device: str = "cpu",
        input_size: Optional[Tuple[int, int]] = None,
        precision: str = "fp32",
        threads: Optional[int] = None,
        fast: bool = True,
        refine: str = "none",
        refine_radius: Optional[int] = None,
        refine_eps: Optional[float] = None,
        engine: str = "off",
    ):
        if threads is not None:
            if int(threads) < 1:
                raise CosmeError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        if method == AUTO_METHOD:
            method = bundle_default_method(bundle)
        input_size = tuple(input_size or bundle.input_size)
        # Build the scorer first: a method whose parts are missing fails before any weights load.
        name, spec_options, parts = _parse(bundle, method, refine)
        refine_options = {
            k: v
            for k, v in (
                ("refine", refine),
                ("refine_radius", refine_radius),
                ("refine_eps", refine_eps),
            )
            if v is not None
        }
        try:
            scorer = build_scorer(
                name, parts, input_height=input_size[0], **{**refine_options, **spec_options}
            )
        except ValueError as exc:
            raise CosmeError(str(exc)) from None
        networks = Networks(
            bundle,
            scorer.teacher_taps,
            scorer.student_taps,
            device=device,
            input_size=input_size,
            precision=precision,
            fast=fast,
            needed_by=method,
        )
        if networks.tap_channels is not None:
            bundle.check_parts_fit(parts, networks.tap_channels)
        spec = canonical(name, spec_options)
        attached = attach(networks, scorer, spec, engine)
        self._init(attached.networks, scorer, spec)
        self.backend, self.engine_note = attached.backend, attached.note
        self.engine_path, self.engine_fallback = attached.path, attached.fallback

    def _init(self, networks: Networks, scorer: Scorer, method: str) -> None:
        self._networks, self._scorer, self._method = networks, scorer, method
        self._post = Postprocess(scorer.align_corners, networks.device)
        self.backend: str = "eager"
        self.engine_note: Optional[str] = None
        self.engine_path = None
        self.engine_fallback = False

    def with_scorer(self, scorer: Scorer, method: Optional[str] = None) -> "Pipeline":
        """A pipeline with ``scorer`` on these same networks (``cosme bench --sweep`` swaps in
        memories of other sizes). The networks must provide the scorer's student taps."""
        if scorer.student_taps and self._networks.student is None:
            raise CosmeError(f"{scorer.name}: needs the student, which this pipeline did not load")
        other = object.__new__(Pipeline)
        networks = getattr(self._networks, "eager", self._networks)  # an engine has its taps
        other._init(networks, scorer, method or scorer.name)
        return other

    # -- what it is

    @property
    def bundle(self) -> Bundle:
        return self._networks.bundle

    @property
    def method(self) -> str:
        """The method spec, resolved (``auto``) and in canonical form."""
        return self._method

    @property
    def scorer(self) -> Scorer:
        return self._scorer

    @property
    def networks(self) -> Networks:
        return self._networks

    @property
    def device(self) -> torch.device:
        return self._networks.device

    @property
    def precision(self) -> str:
        """The precision the networks run at (``auto`` resolved)."""
        return self._networks.precision

    @property
    def input_size(self) -> Tuple[int, int]:
        return self._networks.input_size

    @property
    def channels_last(self) -> bool:
        return self._networks.channels_last

    @property
    def runs_student(self) -> bool:
        return bool(self._scorer.student_taps)

    # -- running it

    @torch.inference_mode()
    def __call__(
        self,
        image_rgb: np.ndarray,
        out_size: Optional[Tuple[int, int]] = None,
        mark: Callable[[str], None] = _no_mark,
    ) -> Result:
        """One RGB uint8 image (H, W, 3) → Result at ``out_size`` (default: the image's size).

        ``mark(stage)`` is called as each stage of :data:`PIPELINE_STAGES` ends (the benchmark
        reads a clock there; the node passes nothing)."""
        out_size = tuple(int(v) for v in (out_size or image_rgb.shape[:2]))
        nets, scorer = self._networks, self._scorer
        x = nets.preprocess([image_rgb])
        mark("preprocess")
        teacher = nets.teacher_forward(x, scorer.teacher_taps)
        mark("teacher")
        student = None
        if scorer.student_taps:
            student = nets.student_forward(x, scorer.student_taps)
            mark("student")
        guide = self._post.guide([image_rgb], out_size, [scorer])
        score = scorer(teacher, student, out_size, guide)
        mark("scoring")
        classes = self._post.classes(teacher[O], out_size)
        result = Result(
            classes=classes[0].to(torch.uint8).cpu().numpy(), score=score[0].float().cpu().numpy()
        )
        mark("postprocess")
        return result

    @torch.inference_mode()
    def segment(
        self, image_rgb: np.ndarray, out_size: Optional[Tuple[int, int]] = None
    ) -> np.ndarray:
        """The class map alone (H, W) uint8: a plain segmentation node on the same fast path
        (the benchmark's teacher-only baseline)."""
        out_size = tuple(int(v) for v in (out_size or image_rgb.shape[:2]))
        logits = self._networks.teacher_forward(self._networks.preprocess([image_rgb]), (O,))[O]
        return self._post.classes(logits, out_size)[0].to(torch.uint8).cpu().numpy()


def _parse(bundle: Bundle, method: str, refine: str):
    """(name, options) of a method spec and the bundle's anomaly parts; CosmeError when the spec
    is not valid or gives the refinement a second time."""
    try:
        name, spec_options = parse_method(method)
        if refine != "none" and any(k in spec_options for k in REFINE_OPTIONS):
            raise ValueError(
                f"method {method!r}: refinement given both in the spec and as refine={refine}"
            )
    except ValueError as exc:
        raise CosmeError(str(exc)) from None
    return name, spec_options, bundle.anomaly_parts()
