"""Which calibrated anomaly threshold of a bundle applies to a method as the node or replay runs
it: the key under ``thresholds`` in the bundle's manifest (``cosme calibrate`` writes them,
:mod:`cosme_ros.tools.calibrate`)."""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

from cosme_ros.anomaly.method_spec import canonical, parse_method
from cosme_ros.anomaly.refine import DEFAULT_EPS, DEFAULT_RADIUS

__all__ = ["threshold_key", "method_key", "resolve_threshold"]


def threshold_key(spec: str) -> str:
    """The bundle's key for a method spec: its canonical text, refinement options that equal
    their defaults left out — ``cosme[refine=guided,refine_radius=8]`` → ``cosme[refine=guided]``,
    ``cosme[refine=none]`` → ``cosme``."""
    name, options = parse_method(spec)
    options = dict(options)
    if options.get("refine") == "none":
        options.pop("refine")
    if "refine" not in options:
        options.pop("refine_radius", None)
        options.pop("refine_eps", None)
    if options.get("refine_radius") == DEFAULT_RADIUS:
        options.pop("refine_radius")
    if options.get("refine_eps") == DEFAULT_EPS:
        options.pop("refine_eps")
    return canonical(name, options)


def method_key(method: str, refine: Optional[Mapping[str, object]] = None) -> str:
    """:func:`threshold_key` of a method as the node and replay run it: its spec (name and
    scorer options, e.g. ``cosme[consensus=c4]``) and the Pipeline's refinement keywords
    (``{}`` or ``{"refine": "guided", "refine_radius": 8, …}``)."""
    name, options = parse_method(method)
    options = {**options, **{k: v for k, v in (refine or {}).items() if v is not None}}
    return threshold_key(canonical(name, options))


def resolve_threshold(
    bundle, method: str, refine: Optional[Mapping[str, object]] = None
) -> Tuple[str, Optional[float]]:
    """(key, the bundle's calibrated threshold for it or None)."""
    key = method_key(method, refine)
    return key, bundle.threshold(key)
