"""The scale-free, standardised Ψ (issue "Method fidelity", item 3), against straightforward
references: the distances by numpy, the statistics pass by a per-image loop, the scorers by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bundles import make_tiny_bundle, write_scenes
from cosme_ros.anomaly import baselines, consensus
from cosme_ros.anomaly.parts import AnomalyParts, psi_key
from cosme_ros.anomaly.fusion import FUSIONS, cosme_fusion
from cosme_ros.anomaly.registry import build_scorer
from cosme_ros.runtime.pipeline import bundle_default_method
from cosme_ros.anomaly.scorers import mulmem_gamma
from cosme_ros.anomaly.standardize import ClassStats
from cosme_ros.bundle import Bundle
from cosme_ros.errors import MissingPartError
from test_train_student import cosme, cosme_in_process

N_CLS = 3
CH = {"c2": 4, "c3": 5, "c4": 6, "c5": 8, "lh": 7, "o": N_CLS}
HW = {"c2": (8, 8), "c3": (4, 4), "c4": (4, 4), "c5": (2, 2), "lh": (8, 8), "o": (8, 8)}
OUT = (16, 16)


def _taps(seed, b=2):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, CH[k], *HW[k], generator=g) for k in CH}


def _stats(seed):
    g = torch.Generator().manual_seed(seed)
    return ClassStats(mean=torch.rand(N_CLS, generator=g), std=0.5 + torch.rand(N_CLS, generator=g))


def _parts(**over):
    g = torch.Generator().manual_seed(0)
    unit = lambda k, c: F.normalize(torch.randn(k, c, generator=g), dim=1)  # noqa: E731
    kw = dict(
        memory={layer: unit(5, CH[layer]) for layer in ("c4", "c5", "lh")},
        mulmem_stats=_stats(1),
        has_student=True,
        psi_stats={psi_key(d, ("c5",)): _stats(10 + i) for i, d in enumerate(consensus.DISTANCES)},
    )
    kw.update(over)
    return AnomalyParts(**kw)


def _up(x, size=OUT):
    return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


# ----------------------------------------------------------------------------- distances


def _reference_psi(f: np.ndarray, g: np.ndarray, distance: str) -> np.ndarray:
    """Pixel by pixel, in float64."""
    b, c, h, w = f.shape
    out = np.zeros((b, h, w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                u, v = f[i, :, y, x].astype(np.float64), g[i, :, y, x].astype(np.float64)
                if distance == "l2":
                    out[i, y, x] = np.sum((u - v) ** 2) / c
                elif distance == "relative":
                    out[i, y, x] = np.sum((u - v) ** 2) / np.sum(u**2)
                else:
                    out[i, y, x] = 1 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    return out


@pytest.mark.parametrize("distance", consensus.DISTANCES)
def test_distances_match_a_pixel_loop(distance):
    t, s = _taps(1), _taps(2)
    got = consensus.psi_layer(t["c4"], s["c4"], distance)
    ref = _reference_psi(t["c4"].numpy(), s["c4"].numpy(), distance)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_scale_free_distances_ignore_the_feature_scale():
    """What they are for: Eq. 6 grows with the square of the features' scale, these do not."""
    t, s = _taps(3), _taps(4)
    f, g = t["c5"], s["c5"]
    for distance, power in (("l2", 2), ("relative", 0), ("cosine", 0)):
        torch.testing.assert_close(
            consensus.psi_layer(10 * f, 10 * g, distance),
            consensus.psi_layer(f, g, distance) * 10**power,
        )
    # a student that reproduces the teacher up to scale agrees perfectly in direction
    assert float(consensus.psi_layer(f, 3 * f, "cosine").abs().max()) < 1e-6
    # a zero feature vector (after a ReLU) is not a NaN
    z = torch.zeros_like(f)
    assert torch.isfinite(consensus.psi_layer(z, g, "relative")).all()
    assert torch.isfinite(consensus.psi_layer(z, g, "cosine")).all()
    with pytest.raises(ValueError, match="unknown consensus distance"):
        consensus.psi_layer(f, g, "manhattan")


# ----------------------------------------------------------------------------- scorers


@pytest.mark.parametrize("distance", consensus.DISTANCES)
def test_standardised_auxcon_by_hand(distance):
    t, s, p = _taps(5), _taps(6), _parts()
    psi = consensus.psi(t, s, ("c5",), distance=distance)  # 2×2
    classes = F.interpolate(t["o"], size=(2, 2), mode="bilinear", align_corners=False).argmax(1)
    st = p.psi_stats[psi_key(distance, ("c5",))]
    z = (psi - st.mean[classes]) / st.std[classes]
    got = build_scorer("auxcon", p, distance=distance, standardize=True)(t, s, OUT)
    torch.testing.assert_close(got, _up(z))
    # without standardize the distance alone; the default is Eq. 6
    torch.testing.assert_close(build_scorer("auxcon", p, distance=distance)(t, s, OUT), _up(psi))
    torch.testing.assert_close(
        build_scorer("auxcon", p)(t, s, OUT), _up(consensus.psi(t, s, ("c5",)))
    )


def test_boundary_suppression_lowers_psi_on_class_borders_only():
    """Two classes split down the middle; Ψ high along that border and on a blob far from it."""
    b, hw = 1, (16, 16)
    logits = torch.zeros(b, N_CLS, *hw)
    logits[:, 0, :, :8] = 5
    logits[:, 1, :, 8:] = 5
    f = torch.ones(b, 4, *hw)
    g = torch.ones(b, 4, *hw)
    g[:, :, :, 7:9] += 2.0  # the border columns disagree
    g[:, :, 2:5, 2:5] += 2.0  # and a blob inside class 0
    taps_t, taps_s = {"c5": f, "o": logits}, {"c5": g}
    p = _parts(memory=None, mulmem_stats=None)
    plain = build_scorer("auxcon", p)(taps_t, taps_s, hw)
    sup = build_scorer("auxcon", p, boundary=True)(taps_t, taps_s, hw)
    assert float(plain[0, :, 7:9].mean()) > 3.0 and float(sup[0, :, 7:9].mean()) < 0.5
    torch.testing.assert_close(sup[0, 3, 3], plain[0, 3, 3])  # the blob keeps its score
    torch.testing.assert_close(sup, baselines.suppress_boundaries(plain, logits.argmax(1)))


@pytest.mark.parametrize("fusion", ["softplus", "zsum"])
def test_cosme_fuses_two_z_scores(fusion):
    t, s, p = _taps(7), _taps(8), _parts()
    gamma, classes = mulmem_gamma(t, p.memory)  # 8×8
    gamma = p.mulmem_stats.standardize(gamma, classes)
    z_psi = build_scorer("auxcon", p, distance="cosine", standardize=True).score(t, s, OUT)
    z_psi = _up(z_psi, (8, 8))
    expected = F.softplus(z_psi) * F.softplus(gamma) if fusion == "softplus" else z_psi + gamma
    got = build_scorer("cosme", p, fusion=fusion, distance="cosine", standardize_psi=True)(
        t, s, OUT
    )
    torch.testing.assert_close(got, _up(expected))
    torch.testing.assert_close(cosme_fusion(z_psi, gamma, fusion, psi_standardized=True), expected)


def test_fusions_that_do_not_fit_the_psi_are_refused():
    p = _parts()
    for fusion in FUSIONS:
        if fusion in ("softplus", "zsum"):
            continue
        with pytest.raises(ValueError, match="not monotone"):
            build_scorer("cosme", p, fusion=fusion, standardize_psi=True)
    with pytest.raises(ValueError, match="zsum.*standardize_psi"):
        build_scorer("cosme", p, fusion="zsum")
    with pytest.raises(ValueError, match="unknown distance"):
        build_scorer("auxcon", p, distance="manhattan")


def test_missing_psi_stats_name_the_command():
    p = _parts(psi_stats=None)
    with pytest.raises(MissingPartError, match="train-student --stats-only"):
        build_scorer("auxcon", p, standardize=True)
    # stats for c5 do not standardise Ψ over c4
    with pytest.raises(MissingPartError, match="psi.l2.c4.mean"):
        build_scorer("auxcon", _parts(), layers=("c4",), standardize=True)
    build_scorer("auxcon", p, distance="cosine")  # unstandardised needs no statistics


def test_psi_stats_round_trip_and_bad_keys():
    p = _parts()
    d = p.to_tensors()
    assert "psi.cosine.c5.mean" in d and "psi.relative.c5.std" in d
    back = AnomalyParts.from_tensors(d, has_student=True)
    assert set(back.psi_stats) == set(p.psi_stats)
    for key, st in p.psi_stats.items():
        torch.testing.assert_close(back.psi_stats[key].mean, st.mean)
    for bad in ("psi.manhattan.c5.mean", "psi.l2.c9.mean", "psi.l2.mean"):
        e = dict(d)
        e[bad] = torch.ones(N_CLS)
        with pytest.raises(ValueError, match="psi"):
            AnomalyParts.from_tensors(e, has_student=True)
    e = dict(d)
    e["psi.l2.c5.mean"] = torch.ones(N_CLS + 1)
    e["psi.l2.c5.std"] = torch.ones(N_CLS + 1)
    with pytest.raises(ValueError, match="number of classes"):
        AnomalyParts.from_tensors(e, has_student=True)


# ----------------------------------------------------------------------------- the pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny bundle with memory and student, built by the CLI (the Ψ pass runs in
    train-student because the anomaly part exists)."""
    root = tmp_path_factory.mktemp("psi")
    scenes = root / "scenes"
    write_scenes(scenes, 6)
    bundle = make_tiny_bundle(root / "b", input_size=(64, 128)).path
    data = f"images:{scenes}"
    cosme(
        "build-memory",
        "--bundle",
        bundle,
        "--data",
        data,
        "--k",
        "8",
        "--batch",
        "3",
        "--device",
        "cpu",
    )
    cosme(
        "train-student",
        "--bundle",
        bundle,
        "--data",
        data,
        "--depth",
        "18",
        "--width",
        "0.25",
        "--batch",
        "3",
        "--epochs",
        "1",
        "--device",
        "cpu",
    )
    return bundle, scenes


def test_the_pass_equals_a_per_image_reference(trained):
    from cosme_ros.data.datasets import open_dataset
    from cosme_ros.runtime.networks import resize_frames

    path, scenes = trained
    bundle = Bundle.load(path)
    section = bundle.manifest["anomaly"]["psi_stats"]
    assert section["student_sha256"] == bundle.manifest["student"]["sha256"]
    assert section["images"] == 6 and "c5" in section["layers"]
    parts = bundle.anomaly_parts()
    teacher, student = bundle.teacher(), bundle.student()
    dataset = open_dataset(f"images:{scenes}")
    mean = torch.tensor(bundle.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std).view(1, 3, 1, 1)
    values = {d: [] for d in consensus.DISTANCES}
    labels = []
    for i in range(len(dataset)):
        image = resize_frames([dataset[i].image], bundle.input_size)[0]
        x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
        with torch.no_grad():
            t, s = teacher(x, taps=("c5", "o")), student(x, taps=("c5",))
        f, g = t["c5"].numpy(), s["c5"].numpy()
        for d in consensus.DISTANCES:
            values[d].append(_reference_psi(f, g, d).ravel())
        size = f.shape[-2:]
        cls = F.interpolate(t["o"], size=size, mode="bilinear", align_corners=False).argmax(1)
        labels.append(cls.numpy().ravel())
    labels = np.concatenate(labels)
    for d in consensus.DISTANCES:
        v = np.concatenate(values[d])
        st = parts.psi_stats[psi_key(d, ("c5",))]
        for c in np.unique(labels):
            np.testing.assert_allclose(float(st.mean[c]), v[labels == c].mean(), rtol=2e-3)
            floor = 1e-3 * v.std()  # ClassStats' floor for a class that barely varies
            np.testing.assert_allclose(
                float(st.std[c]), max(v[labels == c].std(), floor), rtol=2e-2, atol=1e-6
            )
            assert int(st.count[c]) == int((labels == c).sum())


def test_stats_follow_their_student(trained, tmp_path, capsys):
    import shutil
    from cosme_ros.bundle import store_half

    path = tmp_path / "copy"
    shutil.copytree(trained[0], path)
    bundle = Bundle.load(path)
    bundle.write_thresholds({"cosme": {"value": 1.5}})
    # --stats-only: one pass, the thresholds stay (no existing score changes)
    cosme(
        "train-student",
        "--stats-only",
        "--bundle",
        path,
        "--data",
        f"images:{trained[1]}",
        "--device",
        "cpu",
    )
    again = Bundle.load(path)
    assert again.threshold("cosme") == 1.5
    build_scorer("auxcon", again.anomaly_parts(), distance="cosine", standardize=True)
    # fp16 storage keeps the student, so its statistics
    store_half(path)
    build_scorer("auxcon", Bundle.load(path).anomaly_parts(), standardize=True)
    # a replaced student makes them stale: refused with the command that repairs it
    b = Bundle.load(path)
    weights = {
        k: v.float() + 0.01 if v.is_floating_point() else v
        for k, v in b.student().state_dict().items()
    }
    b.write_part(
        "student",
        {k: v for k, v in b.manifest["student"].items() if k not in ("weights", "sha256")},
        weights,
    )
    with pytest.raises(MissingPartError, match="another student.*--stats-only"):
        build_scorer("auxcon", Bundle.load(path).anomaly_parts(), standardize=True)
    # a bundle without a student cannot have them
    bare = make_tiny_bundle(tmp_path / "bare").path
    err = cosme_in_process(
        capsys, "train-student", "--stats-only", "--bundle", bare, "--data", f"images:{trained[1]}"
    )
    assert "needs a student" in err


# ----------------------------------------------------------------------------- a bundle's default


def test_a_bundle_names_the_spec_auto_runs(trained, tmp_path, capsys):
    import shutil
    from cosme_ros.anomaly.method_spec import check_run_spec
    from cosme_ros.runtime.thresholds import method_key
    from cosme_ros.runtime.pipeline import Pipeline

    path = tmp_path / "copy"
    shutil.copytree(trained[0], path)
    assert bundle_default_method(Bundle.load(path)) == "cosme"  # the rule without a name
    spec = "cosme[consensus=c4,standardize_psi=true,boundary=true,fusion=softplus]"
    cosme("bundle", "set-default", "--bundle", path, "--method", spec)
    bundle = Bundle.load(path)
    assert bundle_default_method(bundle) == spec
    pipeline = Pipeline(bundle, method="auto", device="cpu")
    assert pipeline.method == (
        "cosme[boundary=true,consensus=c4,fusion=softplus," "standardize_psi=true]"
    )
    assert pipeline.scorer.auxcon.layers == ("c4",) and pipeline.scorer.auxcon.standardized
    assert method_key(spec, {"refine": "guided", "refine_radius": 8}) == (
        "cosme[boundary=true,consensus=c4,fusion=softplus,refine=guided,standardize_psi=true]"
    )
    # what the parts cannot run is refused before it is named
    for bad, why in (
        ("auxcon[layers=lh+c4,standardize=true]", "psi.l2.c4+lh"),
        ("cosme[fusion=zsum]", "zsum"),
        ("cosme[refine=guided]", "own"),
        ("auto", "unknown method 'auto'"),
    ):
        err = cosme_in_process(capsys, "bundle", "set-default", "--bundle", path, "--method", bad)
        assert why in err, err
    assert bundle_default_method(Bundle.load(path)) == spec
    # a hand-edited manifest with a bad name stops loading with the field named
    text = (path / "manifest.yaml").read_text().replace(spec, "cosme[fusion")
    (path / "manifest.yaml").write_text(text)
    with pytest.raises(Exception, match="anomaly.default_method"):
        Bundle.load(path)
    text = text.replace("cosme[fusion", spec)
    (path / "manifest.yaml").write_text(text)
    cosme("bundle", "set-default", "--bundle", path, "--clear")
    assert bundle_default_method(Bundle.load(path)) == "cosme"
    with pytest.raises(ValueError, match="parameter of its own"):
        check_run_spec("mulmem[refine_eps=0.1]", ("mulmem",))
    with pytest.raises(ValueError, match="takes no options"):
        check_run_spec("auto[fusion=raw]", ("auto",))
