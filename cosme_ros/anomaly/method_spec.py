"""A method with options, written as text: ``cosme[fusion=raw,layers=c4+c5]``.

Ablations are rows of the same table as the methods themselves (the paper's Tables 2–4), so
``cosme evaluate --methods`` takes each method with optional scorer options in brackets::

    maxlogit,sml,mulmem,mulmem[standardize=false],cosme,cosme[fusion=raw,layers=c4+c5]

A spec is the method name (one of :data:`~cosme_ros.anomaly.registry.METHODS`) and
``key=value`` options of :func:`~cosme_ros.anomaly.registry.build_scorer`. Values are typed by
the option's name (:data:`OPTION_TYPES`): ``true``/``false`` for switches, numbers, names, and
``+``-separated tap lists for ``layers`` and ``consensus`` (a comma would end the option).
Options that no method takes are passed through as text so that ``build_scorer`` rejects them
with the list of those the method does take.

:func:`canonical` writes a spec back with its options sorted: the row label of the table and the
key in the JSON, so that ``cosme[layers=c4+c5,fusion=raw]`` and ``cosme[fusion=raw,layers=c4+c5]``
are one row.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Sequence, Tuple

from ..nets.taps import ordered, parse_taps
from . import baselines

__all__ = ["MethodSpec", "parse_method", "split_methods", "canonical", "OPTION_TYPES"]

MethodSpec = Tuple[str, Dict[str, object]]


def _bool(text: str) -> bool:
    key = text.strip().lower()
    if key in ("true", "yes", "on", "1"):
        return True
    if key in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _taps(text: str) -> Tuple[str, ...]:
    """``c5+c4`` → ``("c4", "c5")``: network order, so that one subset is one row."""
    return ordered(parse_taps(text.replace("+", ",")))


def _number(kind: type) -> Callable[[str], object]:
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None

    return convert


#: How the text of each known option becomes its value.
OPTION_TYPES: Dict[str, Callable[[str], object]] = {
    "upsample_logits": _bool,
    "normalize": _bool,
    "standardize": _bool,
    "boundary_suppression": _bool,
    "smoothing": _bool,
    "standardize_psi": _bool,
    "boundary": _bool,
    "distance": str,
    "chunk_bytes": _number(int),
    "layers": _taps,
    "consensus": _taps,
    "fusion": str,
    "refine": str,
    "refine_radius": _number(int),
    "refine_eps": _number(float),
    **{k: _number(type(v)) for k, v in baselines.SML_DEFAULTS.items()},
}


#: Options that belong to a shell's own ``refine`` parameters, not to a method spec it runs.
REFINE_OPTIONS = ("refine", "refine_radius", "refine_eps")


def check_run_spec(spec: str, names: Sequence[str]) -> MethodSpec:
    """A method spec that the node, replay or the demo runs: parsed, its name one of ``names``
    (the methods and ``auto``), no refinement inside (those shells take ``refine`` on its own)
    and no options on ``auto``. Raises ValueError with the reason."""
    name, options = parse_method(spec)
    if name not in names:
        raise ValueError(
            f"unknown method {name!r} (use one of: {', '.join(names)}, with "
            f"options in brackets, e.g. cosme[consensus=c4])"
        )
    inside = [k for k in options if k in REFINE_OPTIONS]
    if inside:
        raise ValueError(
            f"method {spec!r}: {', '.join(inside)} is a parameter of its own here, "
            f"not a method option"
        )
    if options and name == "auto":
        raise ValueError(f"method {spec!r}: 'auto' takes no options")
    return name, options


def split_methods(text: str) -> List[str]:
    """Split a ``--methods`` list at the commas outside brackets; empty items are dropped."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"method list {text!r}: ']' without '['")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"method list {text!r}: '[' without ']'")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_method(spec: str) -> MethodSpec:
    """``"cosme[fusion=raw,layers=c4+c5]"`` → ``("cosme", {"fusion": "raw", "layers": ("c4", "c5")})``.

    The name is lower-cased but not checked here (``build_scorer`` knows the methods). Raises
    ValueError naming the spec for malformed brackets, an option without ``=``, a repeated
    option or a value of the wrong type.
    """
    text = spec.strip()
    name, bracket, rest = text.partition("[")
    name = name.strip().lower()
    if not name:
        raise ValueError(f"method {spec!r}: no method name")
    if not bracket:
        if "]" in text:
            raise ValueError(f"method {spec!r}: ']' without '['")
        return name, {}
    if not rest.endswith("]") or "[" in rest or "]" in rest[:-1]:
        raise ValueError(
            f"method {spec!r}: options go in one pair of brackets at the end, "
            "e.g. cosme[fusion=raw]"
        )
    options: Dict[str, object] = {}
    for item in rest[:-1].split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key or not value:
            raise ValueError(f"method {spec!r}: option {item.strip()!r} is not KEY=VALUE")
        if key in options:
            raise ValueError(f"method {spec!r}: option {key!r} given twice")
        try:
            options[key] = OPTION_TYPES.get(key, str)(value)
        except ValueError as exc:
            raise ValueError(f"method {spec!r}: option {key}: {exc}") from None
    return name, options


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "+".join(str(v) for v in value)
    return str(value)


def canonical(name: str, options: Mapping[str, object]) -> str:
    """The spec's text with options sorted by name (``name`` alone without options)."""
    if not options:
        return name
    return f"{name}[{','.join(f'{k}={_text(options[k])}' for k in sorted(options))}]"
