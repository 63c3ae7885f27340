"""Scorer registry, AnomalyParts round trip, MulMem standardisation and the CosMe fusion (Eq. 8)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cosme_ros.anomaly import baselines, consensus, memory
from cosme_ros.anomaly.parts import AnomalyParts
from cosme_ros.anomaly.fusion import FUSIONS, cosme_fusion
from cosme_ros.anomaly.registry import METHODS, build_scorer
from cosme_ros.anomaly.scorers import Scorer, mulmem_gamma
from cosme_ros.anomaly.standardize import ClassStats
from cosme_ros.errors import MissingPartError

N_CLS = 3
CH = {"c2": 4, "c3": 5, "c4": 6, "c5": 8, "lh": 7, "o": N_CLS}
HW = {"c2": (8, 8), "c3": (4, 4), "c4": (4, 4), "c5": (2, 2), "lh": (8, 8), "o": (8, 8)}
OUT = (16, 16)


def _unit(k, c, gen):
    return F.normalize(torch.randn(k, c, generator=gen), dim=1)


def _taps(seed, b=2, hw=HW):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, CH[k], *hw[k], generator=g) for k in CH}


def _stats(seed):
    g = torch.Generator().manual_seed(seed)
    return ClassStats(mean=torch.rand(N_CLS, generator=g), std=0.5 + torch.rand(N_CLS, generator=g))


def _parts(**over):
    g = torch.Generator().manual_seed(0)
    kw = dict(
        memory={layer: _unit(5, CH[layer], g) for layer in ("c4", "c5", "lh")},
        mulmem_stats=_stats(1),
        sml_stats=_stats(2),
        pans_prototypes=torch.cat([_unit(N_CLS - 1, CH["lh"], g), torch.zeros(1, CH["lh"])]),
        has_student=True,
    )
    kw.update(over)
    return AnomalyParts(**kw)


def _up(x, size=OUT):
    return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", METHODS)
def test_every_method_builds_and_scores(name):
    scorer = build_scorer(name, _parts())
    assert isinstance(scorer, Scorer) and scorer.name == name
    assert "o" in scorer.teacher_taps
    needs_student = name in ("auxcon", "cosme")
    assert scorer.student_taps == (("c5",) if needs_student else ())
    teacher, student = _taps(10), _taps(11)
    t = {k: teacher[k] for k in scorer.teacher_taps}  # exactly what it asked for
    s = {k: student[k] for k in scorer.student_taps} if needs_student else None
    out = scorer(t, s, OUT)
    assert out.shape == (2, *OUT) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # fp16 taps give the same map (all distance maths in fp32)
    half = scorer(
        {k: v.half() for k, v in t.items()}, {k: v.half() for k, v in s.items()} if s else None, OUT
    )
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_taps_requested():
    p = _parts()
    assert build_scorer("mulmem", p).teacher_taps == ("c4", "c5", "lh", "o")
    assert build_scorer("pans", p).teacher_taps == ("lh", "o")
    assert build_scorer("cosme", p).teacher_taps == ("c4", "c5", "lh", "o")
    assert build_scorer("auxcon", p).teacher_taps == ("c5", "o")
    assert build_scorer("msp", p).teacher_taps == ("o",)
    with pytest.raises(KeyError, match="student"):
        build_scorer("auxcon", p)(_taps(1), None, OUT)
    with pytest.raises(KeyError, match="teacher taps"):
        build_scorer("pans", p)({"o": _taps(1)["o"]}, None, OUT)


def test_unknown_method_and_option():
    with pytest.raises(ValueError) as err:
        build_scorer("nope", _parts())
    for name in METHODS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="fusion"):
        build_scorer("cosme", _parts(), fusion="sum")
    with pytest.raises(ValueError, match="does not take"):
        build_scorer("msp", _parts(), fusion="softplus")
    assert build_scorer("MaxLogit", _parts()).name == "maxlogit"


@pytest.mark.parametrize(
    "name, missing, command",
    [
        ("mulmem", {"memory": None}, "cosme build-memory"),
        ("cosme", {"memory": None}, "cosme build-memory"),
        ("mulmem", {"mulmem_stats": None}, "cosme build-memory"),
        ("cosme", {"mulmem_stats": None}, "cosme build-memory"),
        ("cosme", {"has_student": False}, "cosme train-student"),
        ("auxcon", {"has_student": False}, "cosme train-student"),
        ("sml", {"sml_stats": None}, "cosme build-memory"),
        ("pans", {"pans_prototypes": None}, "cosme build-memory"),
    ],
)
def test_missing_part_names_the_command(name, missing, command):
    with pytest.raises(MissingPartError) as err:
        build_scorer(name, _parts(**missing))
    assert f"method {name!r}" in str(err.value) and command in str(err.value)


def test_missing_memory_layer():
    mem = _parts().memory
    del mem["c5"]
    with pytest.raises(MissingPartError, match="memory.c5"):
        build_scorer("mulmem", _parts(memory=mem))


def test_methods_without_parts_build_from_empty_parts():
    for name in ("msp", "maxlogit", "entropy"):
        build_scorer(name, AnomalyParts())
    # ablations that need no class statistics
    build_scorer("mulmem", _parts(mulmem_stats=None), standardize=False)
    build_scorer("cosme", _parts(mulmem_stats=None), fusion="raw")


# ----------------------------------------------------------------------------- parts I/O


def test_parts_round_trip():
    p = _parts()
    d = p.to_tensors()
    assert {
        "memory.c4",
        "memory.c5",
        "memory.lh",
        "mulmem.mean",
        "mulmem.std",
        "sml.mean",
        "sml.std",
        "pans.prototypes",
    } <= set(d)
    q = AnomalyParts.from_tensors(d, has_student=True)
    assert q.has_student and q.memory_layers == ("c4", "c5", "lh") and q.consensus_layers == ("c5",)
    for layer in p.memory:
        torch.testing.assert_close(q.memory[layer], p.memory[layer])
    torch.testing.assert_close(q.mulmem_stats.mean, p.mulmem_stats.mean)
    torch.testing.assert_close(q.sml_stats.std, p.sml_stats.std)
    torch.testing.assert_close(q.pans_prototypes, p.pans_prototypes)
    empty = AnomalyParts.from_tensors({}, has_student=False)
    assert empty.memory is None and empty.sml_stats is None and empty.pans_prototypes is None


def test_parts_round_trip_other_layers():
    g = torch.Generator().manual_seed(3)
    p = AnomalyParts(
        memory={"c5": _unit(4, 8, g), "lh": _unit(4, 7, g)},
        memory_layers=("c5", "lh"),
        consensus_layers=("c4", "c5"),
    )
    q = AnomalyParts.from_tensors(p.to_tensors(), False, ("c5", "lh"), ("c4", "c5"))
    assert set(q.memory) == {"c5", "lh"} and q.consensus_layers == ("c4", "c5")


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d.update({"memory.c9": d["memory.c4"]}), "memory.c9"),
        (lambda d: d.update({"mulmem.median": d["mulmem.mean"]}), "mulmem.median"),
        (lambda d: d.update({"extra": torch.zeros(1)}), "extra"),
        (lambda d: d.update({"memory.c2": d["memory.c4"]}), "memory.c2"),  # not a memory layer
        (lambda d: d.pop("memory.c5"), "memory.c5"),
        (lambda d: d.update({"memory.c4": torch.ones(6)}), "memory.c4"),
        (lambda d: d.update({"memory.c4": 2 * d["memory.c4"]}), "memory.c4"),
        (lambda d: d.update({"pans.prototypes": torch.ones(3, 7)}), "pans.prototypes"),
        (lambda d: d.update({"sml.std": torch.ones(2)}), "sml.std"),
        (lambda d: d.update({"sml.std": torch.ones(3, 1)}), "sml.std"),
        (lambda d: d.pop("mulmem.std"), "mulmem.std"),
        (
            lambda d: d.update({"mulmem.mean": torch.tensor([0.0, float("nan"), 1.0])}),
            "mulmem.mean",
        ),
    ],
)
def test_parts_bad_key_or_shape(mutate, key):
    d = _parts().to_tensors()
    mutate(d)
    with pytest.raises(ValueError) as err:
        AnomalyParts.from_tensors(d, has_student=True)
    assert key in str(err.value)


def test_parts_class_count_mismatch():
    d = _parts().to_tensors()
    d["sml.mean"], d["sml.std"] = torch.zeros(4), torch.ones(4)
    with pytest.raises(ValueError, match="number of classes"):
        AnomalyParts.from_tensors(d)


def test_parts_validate_layer_names():
    with pytest.raises(ValueError, match="unknown tap"):
        AnomalyParts(memory_layers=("c4", "c7"))


# ----------------------------------------------------------------------------- semantics


def test_logit_scorers_equal_baselines_upsampled():
    teacher = _taps(20)
    for name, fn in (
        ("msp", baselines.msp),
        ("maxlogit", baselines.maxlogit),
        ("entropy", baselines.entropy),
    ):
        torch.testing.assert_close(
            build_scorer(name, _parts())(teacher, None, OUT), _up(fn(teacher["o"]))
        )
        logit_up = F.interpolate(teacher["o"], size=OUT, mode="bilinear", align_corners=False)
        torch.testing.assert_close(
            build_scorer(name, _parts(), upsample_logits=True)(teacher, None, OUT), fn(logit_up)
        )


def test_sml_scorer_runs_at_output_resolution():
    teacher, p = _taps(21), _parts()
    logit_up = F.interpolate(teacher["o"], size=OUT, mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        build_scorer("sml", p)(teacher, None, OUT), baselines.sml(logit_up, p.sml_stats)
    )
    torch.testing.assert_close(
        build_scorer("sml", p, upsample_logits=False, smoothing=False)(teacher, None, OUT),
        _up(baselines.sml(teacher["o"], p.sml_stats, smoothing=False)),
    )


def test_pans_scorer():
    teacher, p = _taps(22), _parts()
    ref = 1 - memory.max_cosine(teacher["lh"], p.pans_prototypes[: N_CLS - 1])
    torch.testing.assert_close(build_scorer("pans", p)(teacher, None, OUT), _up(ref))


def test_mulmem_standardises_by_class_at_gamma_resolution():
    # logits at 4×4 while Γ lives at LH's 8×8: the class map is the argmax of resized logits
    hw = dict(HW, o=(4, 4))
    teacher, p = _taps(23, hw=hw), _parts()
    gamma = memory.gamma({k: teacher[k] for k in ("c4", "c5", "lh")}, p.memory)
    classes = F.interpolate(teacher["o"], size=(8, 8), mode="bilinear", align_corners=False).argmax(
        1
    )
    raw, cls = mulmem_gamma(teacher, p.memory)
    torch.testing.assert_close(raw, gamma)
    assert torch.equal(cls, classes)
    std = (gamma - p.mulmem_stats.mean[classes]) / p.mulmem_stats.std[classes]
    torch.testing.assert_close(build_scorer("mulmem", p)(teacher, None, OUT), _up(std))
    torch.testing.assert_close(
        build_scorer("mulmem", p, standardize=False)(teacher, None, OUT), _up(gamma)
    )


def test_auxcon_scorer_is_psi():
    teacher, student = _taps(24), _taps(25)
    ref = ((teacher["c5"] - student["c5"]) ** 2).mean(1)
    torch.testing.assert_close(build_scorer("auxcon", _parts())(teacher, student, OUT), _up(ref))


def test_cosme_fusion_by_hand():
    psi = torch.tensor([[[2.0, 3.0, 0.5]]])
    g = torch.tensor([[[0.0, -1.0, 2.0]]])
    torch.testing.assert_close(
        cosme_fusion(psi, g, "softplus"),
        torch.tensor(
            [[[2 * math.log(2), 3 * math.log1p(math.exp(-1)), 0.5 * math.log1p(math.exp(2))]]]
        ),
    )
    # default: the paper's literal Eq. 8
    torch.testing.assert_close(cosme_fusion(psi, g), cosme_fusion(psi, g, "signed"))
    torch.testing.assert_close(
        cosme_fusion(psi, g, "exp"), torch.tensor([[[2.0, 3 / math.e, 0.5 * math.e**2]]])
    )
    torch.testing.assert_close(cosme_fusion(psi, g, "signed"), torch.tensor([[[0.0, -3.0, 1.0]]]))
    torch.testing.assert_close(cosme_fusion(psi, g.abs(), "raw"), torch.tensor([[[0.0, 3.0, 1.0]]]))
    with pytest.raises(ValueError):
        cosme_fusion(psi, g, "sum")


def test_cosme_fusion_is_monotone_in_psi_where_the_literal_product_is_not():
    g = torch.full((1, 1, 2), -1.5)  # a pixel the memory finds normal for its class
    low, high = torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[1.0, 4.0]]])
    for fusion in ("softplus", "exp"):
        a, b = cosme_fusion(low, g, fusion), cosme_fusion(high, g, fusion)
        assert b[0, 0, 1] > a[0, 0, 1]  # more disagreement → more anomalous
    a, b = cosme_fusion(low, g, "signed"), cosme_fusion(high, g, "signed")
    assert b[0, 0, 1] < a[0, 0, 1]  # the literal Ψ·Γ_std flips


@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f != "zsum"])
def test_cosme_scorer_composes_eq8(fusion):
    teacher, student, p = _taps(26), _taps(27), _parts()
    gamma, classes = mulmem_gamma(teacher, p.memory)  # 8×8
    if fusion != "raw":
        gamma = p.mulmem_stats.standardize(gamma, classes)
    psi = _up(consensus.psi(teacher, student), (8, 8))  # 2×2 → Γ's 8×8
    expected = _up(cosme_fusion(psi, gamma, fusion))
    out = build_scorer("cosme", p, fusion=fusion)(teacher, student, OUT)
    torch.testing.assert_close(out, expected)
    if fusion in ("softplus", "exp", "raw"):
        assert (out >= 0).all()


# ----------------------------------------------------------------------------- layer subsets


def test_layer_subset_is_eq4_over_those_layers_only():
    teacher, student, p = _taps(28), _taps(29), _parts()
    sub = {k: teacher[k] for k in ("c4", "c5")}
    gamma = memory.gamma(sub, {k: p.memory[k] for k in ("c4", "c5")})  # at c4's 4×4
    out = build_scorer("mulmem", p, standardize=False, layers=("c5", "c4"))
    assert out.teacher_taps == ("c4", "c5", "o")  # LH is neither needed nor computed
    torch.testing.assert_close(out(teacher, None, OUT), _up(gamma))
    psi = consensus.psi(teacher, student)  # 2×2 → Γ's 4×4
    expected = _up(cosme_fusion(_up(psi, (4, 4)), gamma, "raw"))
    torch.testing.assert_close(
        build_scorer("cosme", p, fusion="raw", layers=("c4", "c5"))(teacher, student, OUT), expected
    )
    # the full set is the default, standardised or not
    torch.testing.assert_close(
        build_scorer("mulmem", p, layers=("lh", "c5", "c4"))(teacher, None, OUT),
        build_scorer("mulmem", p)(teacher, None, OUT),
    )


@pytest.mark.parametrize(
    "name,options,needle",
    [
        ("mulmem", dict(layers=("c5",)), "standardize=false"),  # statistics are for c4,c5,lh
        ("cosme", dict(layers=("c5",)), "fusion=raw"),
        ("mulmem", dict(layers=("c2",), standardize=False), "not in the memory"),
        ("mulmem", dict(layers=(), standardize=False), "empty"),
        ("auxcon", dict(consensus=("c5",)), "does not take"),
        ("auxcon", dict(layers=()), "empty"),
    ],
)
def test_layer_subset_errors(name, options, needle):
    with pytest.raises(ValueError, match=needle):
        build_scorer(name, _parts(), **options)


def test_consensus_layers_are_eq7_over_those_layers():
    teacher, student, p = _taps(30), _taps(31), _parts()
    psi = consensus.psi(teacher, student, ("c4", "lh"))  # at LH's 8×8
    scorer = build_scorer("auxcon", p, layers=("lh", "c4"))
    assert scorer.student_taps == ("c4", "lh")
    torch.testing.assert_close(scorer(teacher, student, OUT), _up(psi))
    gamma, classes = mulmem_gamma(teacher, p.memory)
    expected = _up(cosme_fusion(psi, p.mulmem_stats.standardize(gamma, classes)))
    torch.testing.assert_close(
        build_scorer("cosme", p, consensus=("c4", "lh"))(teacher, student, OUT), expected
    )
