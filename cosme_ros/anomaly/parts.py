"""The anomaly part of a bundle (``anomaly.safetensors``): what the scorers need beyond the
networks, and its flat tensor format.

:class:`AnomalyParts` holds the MulMem memory (Alg. 1–2), the MulMem / SML / Ψ class statistics
and the PAnS prototypes; :meth:`AnomalyParts.to_tensors` and :meth:`AnomalyParts.from_tensors`
are the file format (``memory.<tap>``, ``mulmem.mean``, ``sml.std``, ``pans.prototypes``,
``psi.<distance>.<taps>.mean`` …), validated key by key on the way in. The scorers
(:mod:`.scorers`) read it; the bundle (:mod:`cosme_ros.bundle`) stores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ..nets.taps import ALL_TAPS, C2, C3, C4, C5, LH, ordered, parse_taps
from . import consensus
from .standardize import ClassStats

MEMORY_LAYERS: Tuple[str, ...] = ("c4", "c5", "lh")
CONSENSUS_LAYERS: Tuple[str, ...] = consensus.CONSENSUS_LAYERS


def paper_layers(teacher_taps: Iterable[str]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The paper's MulMem layers {C4, C5, LH} and consensus layers Le = {C5} on a teacher with
    the taps ``teacher_taps``: (memory layers, consensus layers).

    C4 and C5 are the backbone's last two stages. A teacher without stages at strides 16 and 32
    (CFPNet ends at stride 8) has its two deepest stages stand for them, so that the memory and
    the consensus still read the end of its encoder: (c2, c3, lh) and (c3,) there. Every teacher
    with c4 and c5 gets exactly the paper's layers.
    """
    taps = set(teacher_taps)
    stages = [t for t in (C2, C3, C4, C5) if t in taps]
    if not stages:
        raise ValueError(f"a teacher with taps {sorted(taps)} has no backbone stage c2…c5")
    memory = tuple(stages[-2:]) + ((LH,) if LH in taps else ())
    return memory, (stages[-1],)


def psi_key(distance: str, layers: Iterable[str]) -> str:
    """The name of the Ψ statistics for ``distance`` over the consensus layers ``layers``
    (``"cosine.c5"``, ``"l2.c4+c5"``): the tensors are ``psi.<key>.mean`` / ``.std``."""
    return f"{distance}.{'+'.join(ordered(parse_taps(layers)))}"


@dataclass
class AnomalyParts:
    """What the scorers need beyond the networks; everything optional, checked per method.

    - ``memory``: per-layer ``(K, C)`` unit prototypes of MulMem (Alg. 1–2), keyed by tap name;
    - ``mulmem_stats``: per-class mean/std of Γ over training pixels predicted as that class;
    - ``sml_stats``: per-class mean/std of the max logit (SML);
    - ``pans_prototypes``: ``(N_cls, C_lh)`` unit class prototypes (zero rows: unseen classes);
    - ``has_student``: whether the bundle carries an AuxCon student;
    - ``align_corners``: how the teacher upsamples its outputs (:func:`teacher_align_corners`):
      every scorer resizes the teacher's outputs and its maps that way;
    - ``psi_stats``: per-class mean/std of Ψ over training pixels, keyed by :func:`psi_key`
      (one entry per distance and consensus-layer set; ``cosme train-student`` gathers them);
    - ``psi_stats_note``: why ``psi_stats`` is absent when the bundle has them for another
      student (the reader drops them then), for the error message.
    """

    memory: Optional[Dict[str, Tensor]] = None
    memory_layers: Tuple[str, ...] = MEMORY_LAYERS
    mulmem_stats: Optional[ClassStats] = None
    sml_stats: Optional[ClassStats] = None
    pans_prototypes: Optional[Tensor] = None
    has_student: bool = False
    consensus_layers: Tuple[str, ...] = CONSENSUS_LAYERS
    align_corners: bool = False
    psi_stats: Optional[Dict[str, ClassStats]] = None
    psi_stats_note: str = ""

    def __post_init__(self) -> None:
        self.memory_layers = parse_taps(self.memory_layers)
        self.consensus_layers = parse_taps(self.consensus_layers)
        if not self.memory_layers:
            raise ValueError("memory_layers is empty")
        if not self.consensus_layers:
            raise ValueError("consensus_layers is empty")

    def to_tensors(self) -> Dict[str, Tensor]:
        """Flat ``{key: tensor}`` for safetensors: ``memory.<tap>``, ``mulmem.mean`` / ``.std``
        (+ ``.count`` / ``.fallback`` when known), the same under ``sml.``, ``pans.prototypes`` —
        contiguous, on the CPU."""
        out: Dict[str, Tensor] = {}
        if self.memory is not None:
            for layer, protos in self.memory.items():
                out[f"memory.{layer}"] = protos
        if self.mulmem_stats is not None:
            out.update(self.mulmem_stats.to_tensors("mulmem."))
        if self.sml_stats is not None:
            out.update(self.sml_stats.to_tensors("sml."))
        if self.pans_prototypes is not None:
            out["pans.prototypes"] = self.pans_prototypes
        for key, stats in (self.psi_stats or {}).items():
            out.update(stats.to_tensors(f"psi.{key}."))
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(
        cls,
        d: Mapping[str, Tensor],
        has_student: bool = False,
        memory_layers: Iterable[str] = MEMORY_LAYERS,
        consensus_layers: Iterable[str] = CONSENSUS_LAYERS,
        align_corners: bool = False,
    ) -> "AnomalyParts":
        """Inverse of :meth:`to_tensors`, validating every key; raises ValueError naming the
        offending key (the bundle reader prefixes the file). Absent groups stay ``None``: the
        scorer that needs one reports :class:`MissingPartError`."""
        memory_layers = parse_taps(memory_layers)
        consensus_layers = parse_taps(consensus_layers)
        groups = {"memory", "mulmem", "sml", "pans", "psi"}
        for key in d:
            head, _, tail = key.partition(".")
            if head not in groups or not tail:
                raise ValueError(
                    f"anomaly part {key!r}: unknown key (expected memory.<tap>, "
                    "mulmem.mean/std, sml.mean/std, pans.prototypes, "
                    "psi.<distance>.<taps>.mean/std)"
                )
            if not isinstance(d[key], Tensor):
                raise ValueError(f"anomaly part {key!r}: not a tensor")

        mem_keys = sorted(k for k in d if k.startswith("memory."))
        bank: Optional[Dict[str, Tensor]] = None
        if mem_keys:
            bank = {}
            for key in mem_keys:
                layer = key.split(".", 1)[1]
                if layer not in memory_layers:
                    raise ValueError(
                        f"anomaly part {key!r}: layer {layer!r} is not in the memory "
                        f"layers {','.join(memory_layers)}"
                    )
            for layer in memory_layers:
                key = f"memory.{layer}"
                if key not in d:
                    raise ValueError(
                        f"anomaly part {key!r}: missing (memory layers are "
                        f"{','.join(memory_layers)})"
                    )
                bank[layer] = _check_unit_rows(key, d[key], allow_zero_rows=False)

        stats = {name: _stats_from(d, name) for name in ("mulmem", "sml")}
        pans_p = None
        if any(k.startswith("pans.") for k in d):
            for key in sorted(k for k in d if k.startswith("pans.") and k != "pans.prototypes"):
                raise ValueError(f"anomaly part {key!r}: unknown key (expected pans.prototypes)")
            pans_p = _check_unit_rows("pans.prototypes", d["pans.prototypes"], allow_zero_rows=True)

        psi_stats = _psi_stats_from(d)
        for key, st in (psi_stats or {}).items():
            stats[f"psi.{key}"] = st
        counts = {f"{n}.mean": int(s.mean.numel()) for n, s in stats.items() if s is not None}
        if pans_p is not None:
            counts["pans.prototypes"] = int(pans_p.shape[0])
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{k} has {v}" for k, v in counts.items())
            raise ValueError(f"anomaly parts disagree on the number of classes: {detail}")

        return cls(
            memory=bank,
            memory_layers=memory_layers,
            mulmem_stats=stats["mulmem"],
            sml_stats=stats["sml"],
            pans_prototypes=pans_p,
            has_student=bool(has_student),
            consensus_layers=consensus_layers,
            align_corners=bool(align_corners),
            psi_stats=psi_stats,
        )


def _check_unit_rows(key: str, t: Tensor, *, allow_zero_rows: bool) -> Tensor:
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(
            f"anomaly part {key!r}: expected a (K, C) matrix, got shape {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise ValueError(f"anomaly part {key!r}: expected floating point, got {t.dtype}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"anomaly part {key!r}: contains NaN or inf")
    norms = t.norm(dim=1)
    unit = (norms - 1).abs() < 5e-3  # fp16 storage rounds norms by ~1e-3
    ok = unit | (norms == 0) if allow_zero_rows else unit
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0])
        raise ValueError(
            f"anomaly part {key!r}: row {row} has norm {float(norms[row]):.4g}, "
            "expected unit-length prototypes"
        )
    return t


def _stats_from(d: Mapping[str, Tensor], prefix: str) -> Optional[ClassStats]:
    """``<prefix>.mean`` / ``.std`` (+ optional ``.count`` / ``.fallback``) → ClassStats or None."""
    keys = {k for k in d if k.startswith(prefix + ".")}
    if not keys:
        return None
    allowed = {f"{prefix}.{n}" for n in ("mean", "std", "count", "fallback")}
    for key in sorted(keys - allowed):
        raise ValueError(
            f"anomaly part {key!r}: unknown key (expected {prefix}.mean, {prefix}.std)"
        )
    try:
        # ClassStats validates shapes, finiteness and std > 0, naming the key
        return ClassStats.from_tensors(d, prefix + ".")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"anomaly part {prefix}.*: {exc}") from exc


def _psi_stats_from(d: Mapping[str, Tensor]) -> Optional[Dict[str, ClassStats]]:
    """``psi.<distance>.<taps>.<stat>`` → {:func:`psi_key`: ClassStats}, or None when absent."""
    from .consensus import DISTANCES

    keys = sorted({k.rsplit(".", 1)[0] for k in d if k.startswith("psi.")})
    if not keys:
        return None
    out: Dict[str, ClassStats] = {}
    for prefix in keys:
        fields = prefix.split(".")
        distance, layers = (fields[1], fields[2]) if len(fields) == 3 else (None, "")
        taps = tuple(layers.split("+")) if layers else ()
        if distance not in DISTANCES or not taps or any(t not in ALL_TAPS for t in taps):
            raise ValueError(
                f"anomaly part {prefix + '.*'!r}: unknown key (expected "
                f"psi.<distance>.<taps>.mean with a distance of "
                f"{', '.join(DISTANCES)} and taps such as c5 or c4+c5)"
            )
        out[psi_key(distance, taps)] = _stats_from(d, prefix)
    return out
