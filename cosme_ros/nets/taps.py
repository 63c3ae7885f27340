"""Named feature maps ("taps") — the contract between networks and anomaly scorers.

Every network in :mod:`cosme_ros.nets` returns a ``dict[str, Tensor]`` keyed by tap name, each
value ``(B, C, H, W)``. The names follow the paper's notation (docs/ARCHITECTURE.md):

- ``c2`` … ``c5``: backbone stages at strides 4, 8, 16, 32 (a dilated backbone keeps ``c4``/``c5`` at
  stride 8 or 16 instead);
- ``lh``: the last hidden layer of the decoder, just before the final 1×1 classifier;
- ``o``: the logits, at the decoder's resolution (not upsampled to the input).

A network's ``forward(x, taps=None)`` returns every tap when ``taps`` is None, otherwise only those
asked for (so a compiled graph can expose exactly what a scorer needs). ``tap_channels`` and
``tap_strides`` describe each tap without running the network.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

C2, C3, C4, C5, LH, O = "c2", "c3", "c4", "c5", "lh", "o"
ALL_TAPS: Tuple[str, ...] = (C2, C3, C4, C5, LH, O)

Taps = Dict[str, Tensor]


def parse_taps(spec: Iterable[str] | str) -> Tuple[str, ...]:
    """``"c4,c5,lh"`` or ``["C4", "c5"]`` → validated, lower-case tap names in the given order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = tuple(s.strip().lower() for s in items if s.strip())
    unknown = [n for n in names if n not in ALL_TAPS]
    if unknown:
        raise ValueError(f"unknown tap(s) {unknown}; known taps are {', '.join(ALL_TAPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"tap list {list(names)} names a tap twice")
    return names


def ordered(*groups: Iterable[str]) -> Tuple[str, ...]:
    """The union of tap-name groups in network order (:data:`ALL_TAPS`)."""
    wanted = {t for g in groups for t in g}
    return tuple(t for t in ALL_TAPS if t in wanted)


def select(all_taps: Taps, wanted: Optional[Iterable[str]]) -> Taps:
    """Keep only the wanted taps (all when ``wanted`` is None), in a stable order."""
    if wanted is None:
        return all_taps
    return {name: all_taps[name] for name in wanted}


def logits_at_input(net, x: Tensor) -> Tensor:
    """``net``'s logits ``o`` upsampled bilinearly (``align_corners=True``) to the size of its
    input ``x``: the full-resolution prediction as ESPNetv2's, CFPNet's and the TFLite DeepLab's
    own code produce it."""
    return F.interpolate(
        net(x, taps=(O,))[O], size=x.shape[-2:], mode="bilinear", align_corners=True
    )
