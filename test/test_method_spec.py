"""Method specs with options (``cosme[fusion=raw,layers=c4+c5]``): parsing, canonical text."""

import pytest

from cosme_ros.anomaly.method_spec import canonical, parse_method, split_methods


def test_split_keeps_commas_inside_brackets():
    assert split_methods("maxlogit, cosme[fusion=raw,layers=c4+c5],,mulmem") == [
        "maxlogit",
        "cosme[fusion=raw,layers=c4+c5]",
        "mulmem",
    ]
    for bad in ("cosme[fusion=raw", "cosme]", "a,b]c["):
        with pytest.raises(ValueError, match="without"):
            split_methods(bad)


def test_parse_types_values_by_option_name():
    assert parse_method("MaxLogit") == ("maxlogit", {})
    name, opts = parse_method(" cosme[fusion=raw, layers=C4+c5] ")
    assert name == "cosme" and opts == {"fusion": "raw", "layers": ("c4", "c5")}
    assert parse_method("mulmem[standardize=false,chunk_bytes=1024]") == (
        "mulmem",
        {"standardize": False, "chunk_bytes": 1024},
    )
    assert parse_method("sml[sigma=2,dilation=3,smoothing=off]") == (
        "sml",
        {"sigma": 2.0, "dilation": 3, "smoothing": False},
    )
    # an option no method takes stays text; build_scorer rejects it with the allowed list
    assert parse_method("msp[colour=red]") == ("msp", {"colour": "red"})


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("cosme[fusion]", "KEY=VALUE"),
        ("cosme[=raw]", "KEY=VALUE"),
        ("cosme[fusion=raw][x=1]", "one pair of brackets"),
        ("cosme[fusion=raw]x", "one pair of brackets"),
        ("cosme]", "without"),
        ("[fusion=raw]", "no method name"),
        ("cosme[fusion=raw,fusion=exp]", "twice"),
        ("mulmem[standardize=maybe]", "standardize: 'maybe' is not true or false"),
        ("mulmem[chunk_bytes=1.5]", "not an integer"),
        ("mulmem[layers=c4+c9]", "unknown tap"),
    ],
)
def test_parse_errors_name_the_spec(spec, needle):
    with pytest.raises(ValueError, match="method") as info:
        parse_method(spec)
    assert needle in str(info.value)


def test_canonical_sorts_options_and_round_trips():
    a = canonical(*parse_method("cosme[layers=c5+c4,fusion=raw]"))
    b = canonical(*parse_method("cosme[fusion=raw,layers=c5+c4]"))
    assert a == b == "cosme[fusion=raw,layers=c4+c5]"  # taps in network order
    assert canonical(*parse_method(a)) == a
    assert canonical(*parse_method("mulmem[standardize=0]")) == "mulmem[standardize=false]"
    assert canonical("msp", {}) == "msp"


def test_readme_ablation_example_parses():
    """The README's ablation command names real methods and options."""
    import re
    from pathlib import Path

    from cosme_ros.anomaly.registry import METHODS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = re.search(r"--methods \\\n\s+'([^']+)'", readme)
    assert example, "README: the evaluate ablation example is gone"
    specs = [parse_method(s) for s in split_methods(example.group(1))]
    assert len(specs) >= 5 and all(name in METHODS for name, _ in specs)
