"""``cosme bench`` and the fast path: the JSON contract (not the timings), the scorer-only
equality check, precision resolution, and that the fast path computes what the naive one does.

Timings are not asserted: the machine may be busy. Sizes are tiny and frames few.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bundles import make_cosme_bundle, street_scene
from cosme_ros.tools import bench
from cosme_ros.cli.main import main
from cosme_ros.errors import CosmeError
from cosme_ros.tools.bench.naive import NaivePipeline
from cosme_ros.runtime.pipeline import Pipeline, upsampled_argmax
from cosme_ros.runtime.networks import fold_batchnorm, native_bf16, resolve_precision

SIZE = (64, 128)


@pytest.fixture(scope="module")
def cosme_bundle(tmp_path_factory):
    """Tiny DeepLabV3+ R18 teacher + random unit memory (K=16) + statistics + a random student:
    every method runs."""
    return make_cosme_bundle(tmp_path_factory.mktemp("bench") / "tiny", input_size=SIZE)


def _ms(d):
    assert set(d) >= {"median", "p95"}
    assert all(isinstance(v, float) and v > 0 for v in (d["median"], d["p95"]))
    assert d["p95"] >= d["median"]
    return d["median"]


def test_frame_json_contract(cosme_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--bundle",
        str(cosme_bundle.path),
        "--method",
        "cosme",
        "--camera",
        "64x128",
        "--frames",
        "3",
        "--warmup",
        "1",
        "--precision",
        "fp32",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    assert "ratio_fast_vs_naive" in capsys.readouterr().out
    r = json.loads(out.read_text())

    frame, pipeline = _ms(r["frame_ms"]), _ms(r["pipeline_ms"])
    for stage in (
        "decode",
        "preprocess",
        "teacher",
        "student",
        "scoring",
        "postprocess",
        "encode",
        "publish",
    ):
        _ms(r["stages_ms"][stage])
    teacher_only, naive = _ms(r["teacher_only_ms"]), _ms(r["naive_ms"])
    # ratios are the ratios of the reported medians
    assert r["ratio_node_vs_pipeline"] == pytest.approx(frame / pipeline, rel=1e-3)
    assert r["ratio_cosme_vs_teacher_only"] == pytest.approx(pipeline / teacher_only, rel=1e-3)
    assert r["ratio_fast_vs_naive"] == pytest.approx(naive / pipeline, rel=1e-3)
    assert r["fps"] == pytest.approx(1000 / frame, rel=1e-3)
    assert set(r["ratio_definitions"]) == {
        "ratio_node_vs_pipeline",
        "ratio_cosme_vs_teacher_only",
        "ratio_fast_vs_naive",
    }
    assert r["scoring_postprocess_share"] == pytest.approx(
        (r["stages_ms"]["scoring"]["median"] + r["stages_ms"]["postprocess"]["median"]) / frame,
        abs=1e-3,
    )

    assert r["peak_rss_mb"] > 0 and r["peak_rss_mb_with_naive"] >= r["peak_rss_mb"]
    assert r["device"] == "cpu" and r["precision"] == "fp32" and r["method"] == "cosme"
    assert r["input_size"] == list(SIZE) and r["camera_size"] == list(SIZE)
    assert r["K"] == {"c4": 16, "c5": 16, "lh": 16}
    assert set(r["versions"]) == {"torch", "numpy", "cv2", "python"}
    assert isinstance(r["cpu_model"], str) and r["threads"] >= 1
    assert r["frames"] == 3 and r["source"] == "synthetic"
    assert r["node"]["published"] is True
    # the fp32 fast path computes the naive pipeline's numbers
    assert r["vs_naive"]["max_abs_score_diff"] < 1e-4 and r["vs_naive"]["class_agreement"] == 1.0

    # outputs are not overwritten without --force
    assert main(args) == 2


def test_bench_times_the_refined_method(cosme_bundle, tmp_path, monkeypatch, capsys):
    """--refine guided: the guided filter runs inside the timed scoring stage, and the naive
    pipeline refines too, so the fast path still computes its numbers."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--bundle",
                str(cosme_bundle.path),
                "--method",
                "cosme",
                "--refine",
                "guided",
                "--camera",
                "64x128",
                "--frames",
                "2",
                "--warmup",
                "1",
                "--precision",
                "fp32",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "cosme[refine=guided]" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["refine"] == "guided" and r["stages_ms"]["scoring"]["median"] > 0
    assert r["vs_naive"]["max_abs_score_diff"] < 1e-4


def test_scorer_only_reports_equality(tmp_path, capsys):
    out = tmp_path / "scorer.json"
    assert (
        main(
            [
                "bench",
                "--scorer-only",
                "--k",
                "8,32",
                "--size",
                "64x128",
                "--repeats",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "max|dG|" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["taps"] == {"c4": [1024, 4, 8], "c5": [2048, 4, 8], "lh": [256, 16, 32]}
    assert [row["K"] for row in r["results"]] == [8, 32]
    for row in r["results"]:
        assert row["equal_to_1e-5"] is True
        assert 0 <= row["max_abs_diff_gamma"] <= 1e-5 and row["max_abs_diff_cosine"] <= 1e-5
        fast, naive = _ms(row["fast_ms"]), _ms(row["naive_ms"])
        assert row["ratio_fast_vs_naive"] == pytest.approx(naive / fast, rel=1e-3)
        assert row["bound_extra_mb"]["naive"] >= row["bound_extra_mb"]["fast"] > 0
        assert set(row["peak_extra_mb"]) == {"fast", "naive"}
    assert r["chunk_bytes"] > 0


def test_r101_tap_shapes_at_512x1024():
    assert bench.r101_tap_shapes((512, 1024)) == {
        "c4": (1024, 32, 64),
        "c5": (2048, 32, 64),
        "lh": (256, 128, 256),
    }


def test_precision_auto_resolves_by_capability():
    auto = resolve_precision("auto", "cpu")
    assert auto in ("fp32", "bf16")
    assert auto == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("FP32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(CosmeError, match="precision"):
        resolve_precision("fp8", "cpu")


def test_fast_path_matches_naive_and_bf16_is_close(cosme_bundle):
    image = street_scene(np.random.default_rng(0), SIZE)
    naive = NaivePipeline(cosme_bundle, "cosme")(image)
    fast = Pipeline(cosme_bundle, "cosme", precision="fp32")
    assert fast.channels_last
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.networks.teacher.modules())
    fp32 = fast(image)
    np.testing.assert_allclose(fp32.score, naive.score, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fp32.classes, naive.classes)

    bf16 = Pipeline(cosme_bundle, "cosme", precision="bf16")(image)
    assert bf16.score.dtype == np.float32  # scores stay fp32
    scale = float(np.abs(fp32.score).max())
    assert float(np.abs(bf16.score - fp32.score).max()) < 0.03 * scale
    assert np.corrcoef(bf16.score.ravel(), fp32.score.ravel())[0, 1] > 0.999
    assert (bf16.classes == fp32.classes).mean() > 0.95


def test_fold_batchnorm_keeps_outputs():
    from bundles import tiny_teacher

    net = tiny_teacher().eval()
    for m in net.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, *SIZE)
    with torch.inference_mode():
        ref = net(x)
        assert fold_batchnorm(net) > 0
        out = net(x)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsampled_argmax_equals_full_upsampling(channels_last):
    g = torch.Generator().manual_seed(0)
    for (h, w), size in [
        ((16, 32), (64, 128)),
        ((37, 23), (100, 61)),
        ((20, 30), (7, 11)),
        ((8, 8), (8, 8)),
    ]:
        smooth = F.interpolate(torch.randn(2, 7, 4, 4, generator=g), size=(h, w), mode="bilinear")
        for logits in (smooth, torch.randn(2, 7, h, w, generator=g)):
            if channels_last:
                logits = logits.contiguous(memory_format=torch.channels_last)
            ref = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
            torch.testing.assert_close(upsampled_argmax(logits, size), ref, rtol=0, atol=0)


def test_sweep_writes_table_and_plot(cosme_bundle, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "bench",
                "--bundle",
                str(cosme_bundle.path),
                "--sweep",
                "--sizes",
                "64x128,96x192",
                "--k",
                "8,16",
                "--frames",
                "1",
                "--warmup",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads((out / "sweep.json").read_text())
    assert [row["input_size"] for row in r["by_size"]] == [[64, 128], [96, 192]]
    assert all(row["gflops"] > 0 for row in r["by_size"])
    assert r["by_size"][1]["flop_ratio"] > 1.5  # 2.25x the pixels
    assert [row["K"] for row in r["by_k"]] == [8, 16]
    table = (out / "sweep.md").read_text()
    assert table.count("\n| ") >= 6 and "GFLOP" in table
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
