"""The straightforward reference implementation of the pipeline, for ``cosme bench`` to measure
the fast path against (and for tests to check it computes the same maths).

"Naive" means what a first implementation of the paper's equations would do, nothing slower on
purpose: eager fp32 networks under ``torch.no_grad`` (not ``inference_mode``), the bundle's
networks as stored (BatchNorm not folded, NCHW, torch's default threads), and prototype scoring
the textbook way — an L2-normalised copy of the features and the whole ``(B, H·W, K)`` cosine
matrix at once, like ``torch.cdist`` builds its full distance matrix (no chunking, no bound on
memory). Pre-processing, standardisation, fusion and post-processing are the same maths as
:mod:`cosme_ros.runtime.pipeline` and :mod:`cosme_ros.anomaly.scorers`.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cosme_ros.anomaly.refine import guide_from_images
from cosme_ros.anomaly import scorers as sc
from cosme_ros.anomaly.fusion import cosme_fusion
from cosme_ros.anomaly.method_spec import parse_method
from cosme_ros.anomaly.registry import build_scorer
from cosme_ros.bundle import Bundle
from cosme_ros.nets.taps import LH, O, Taps
from cosme_ros.runtime.pipeline import Result
from cosme_ros.runtime.networks import resize_frames, resolve_device

__all__ = [
    "naive_max_cosine",
    "cdist_max_cosine",
    "naive_gamma",
    "naive_psi",
    "naive_score",
    "NaivePipeline",
]


def _up(x: Tensor, size: Tuple[int, int], align_corners: bool = False) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(
        x.unsqueeze(1), size=size, mode="bilinear", align_corners=align_corners
    ).squeeze(1)


def naive_max_cosine(features: Tensor, prototypes: Tensor) -> Tensor:
    """max_k cos(f_ij, p_k) (Eq. 3): normalise the features (a copy), one full (B, H·W, K)
    similarity, max over K. (B, C, H, W) × (K, C) → (B, H, W) fp32."""
    b, c, h, w = features.shape
    f = F.normalize(features.float(), dim=1).reshape(b, c, h * w).transpose(1, 2)
    p = F.normalize(prototypes.float(), dim=1).to(f.device)
    sim = torch.bmm(f, p.T.unsqueeze(0).expand(b, -1, -1))  # (B, H·W, K), all of it
    return sim.max(dim=2).values.reshape(b, h, w)


def cdist_max_cosine(features: Tensor, prototypes: Tensor) -> Tensor:
    """The same with ``torch.cdist`` itself: for unit vectors cos = 1 − ‖f − p‖² / 2."""
    b, c, h, w = features.shape
    f = F.normalize(features.float(), dim=1).reshape(b, c, h * w).transpose(1, 2)
    p = F.normalize(prototypes.float(), dim=1).to(f.device)
    d = torch.cdist(f, p.unsqueeze(0).expand(b, -1, -1))
    return (1.0 - d.square().mul(0.5)).max(dim=2).values.reshape(b, h, w)


def naive_gamma(
    taps: Taps, memory: Mapping[str, Tensor], size: Optional[Tuple[int, int]] = None
) -> Tensor:
    """Eq. 4, Γ = Π_l (1 − max cos), each γ upsampled to the largest memory tap's size."""
    if size is None:
        size = max((tuple(taps[n].shape[-2:]) for n in memory), key=lambda s: s[0] * s[1])
    out = None
    for name, protos in memory.items():
        g = _up(1.0 - naive_max_cosine(taps[name], protos), size)
        out = g if out is None else out * g
    return out


def naive_psi(teacher: Taps, student: Taps, layers: Sequence[str]) -> Tensor:
    """Eq. 6–7, Ψ = Π_l mean_c (f − g)², at the largest consensus tap's size."""
    maps = [(teacher[l].float() - student[l].float()).pow(2).mean(dim=1) for l in layers]
    size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    out = _up(maps[0], size)
    for m in maps[1:]:
        out = out * _up(m, size)
    return out


def _mulmem(s: "sc.MulMemScorer", teacher: Taps) -> Tensor:
    raw = naive_gamma(teacher, {l: s.bank[l] for l in s.layers})
    if not s.standardize:
        return raw
    logits = F.interpolate(
        teacher[O].float(), size=raw.shape[-2:], mode="bilinear", align_corners=s.align_corners
    )
    return s.stats.standardize(raw, logits.argmax(dim=1))


def naive_score(
    scorer: "sc.Scorer", teacher: Taps, student: Optional[Taps], out_size: Tuple[int, int]
) -> Tensor:
    """What ``scorer(teacher, student, out_size)`` computes, with the naive prototype scoring.

    Logit methods (msp, maxlogit, entropy, sml) involve no prototypes: the scorer itself runs.
    """
    out_size = (int(out_size[0]), int(out_size[1]))
    if isinstance(scorer, sc.PAnSScorer):
        protos = scorer.prototypes.float()
        protos = protos[protos.norm(dim=1) > 0]
        score = 1.0 - naive_max_cosine(teacher[LH], protos)
    elif isinstance(scorer, sc.MulMemScorer):
        score = _mulmem(scorer, teacher)
    elif isinstance(scorer, sc.AuxConScorer):
        score = naive_psi(teacher, student, scorer.layers)
    elif isinstance(scorer, sc.CosMeScorer):
        gamma = _mulmem(scorer.mulmem, teacher)
        psi = naive_psi(teacher, student, scorer.auxcon.layers)
        size = max(tuple(gamma.shape[-2:]), tuple(psi.shape[-2:]), key=lambda s: s[0] * s[1])
        align = scorer.align_corners
        score = cosme_fusion(_up(psi, size, align), _up(gamma, size, align), scorer.fusion)
    else:
        return scorer(teacher, student, out_size)
    return _up(score.float(), out_size, scorer.align_corners)


class NaivePipeline:
    """:class:`cosme_ros.runtime.pipeline.Pipeline`'s maths, eager fp32, as plainly as it can be written."""

    def __init__(
        self,
        bundle: Bundle,
        method: str = "maxlogit",
        device: str = "cpu",
        input_size: Optional[Tuple[int, int]] = None,
        scorer: Optional["sc.Scorer"] = None,
    ):
        """``scorer``: one built already (the benchmark passes the fast pipeline's, so both
        score with the same parts); else built from the ``method`` spec."""
        self.device = resolve_device(device)
        self.input_size = tuple(input_size or bundle.input_size)
        if scorer is None:
            name, options = parse_method(method)
            scorer = build_scorer(
                name, bundle.anomaly_parts(), input_height=self.input_size[0], **options
            )
        self.scorer = scorer
        self.method = method
        self.teacher = bundle.teacher().to(self.device)
        self.student = bundle.student().to(self.device) if self.scorer.student_taps else None
        self.mean = torch.tensor(bundle.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(bundle.std, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images_rgb: Sequence[np.ndarray]) -> Tensor:
        batch = torch.from_numpy(np.stack(resize_frames(images_rgb, self.input_size)))
        batch = batch.to(self.device)
        batch = batch.permute(0, 3, 1, 2).float() / 255.0
        return (batch - self.mean) / self.std

    @torch.no_grad()
    def run_tensor(
        self, x: Tensor, out_size: Tuple[int, int], guide: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        teacher = self.teacher(x, taps=self.scorer.teacher_taps)
        student = self.student(x, taps=self.scorer.student_taps) if self.student else None
        # the scorer's own refinement: the guided filter has no naive form to compare
        score = self.scorer.refined(naive_score(self.scorer, teacher, student, out_size), guide)
        logits = F.interpolate(
            teacher[O].float(),
            size=out_size,
            mode="bilinear",
            align_corners=self.scorer.align_corners,
        )
        return logits.argmax(1), score

    def __call__(self, image_rgb: np.ndarray, out_size: Optional[Tuple[int, int]] = None) -> Result:
        out_size = tuple(out_size or image_rgb.shape[:2])
        guide = (
            guide_from_images([image_rgb], out_size, self.device)
            if self.scorer.refinement is not None
            else None
        )
        classes, score = self.run_tensor(self.preprocess([image_rgb]), out_size, guide)
        return Result(
            classes=classes[0].to(torch.uint8).cpu().numpy(), score=score[0].float().cpu().numpy()
        )
