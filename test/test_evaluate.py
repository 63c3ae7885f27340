"""cosme evaluate: every method on a tiny folder dataset with planted anomalies."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from bundles import make_tiny_bundle, tiny_teacher, write_scenes
from cosme_ros.anomaly.registry import METHODS
from cosme_ros.bundle import Bundle
from cosme_ros.cli.main import main as cosme_main
from cosme_ros.data.datasets import open_dataset
from cosme_ros.tools.evaluate import MultiMethodRunner, evaluate, markdown_table, select_methods
from cosme_ros.tools.build_memory import BuildConfig, build_anomaly_parts
from cosme_ros.nets import build_network
from cosme_ros.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A teacher-only bundle, a full one (memory, statistics, random student), training scenes
    and 4 test scenes with a block of uniform noise pasted on the road (label 1)."""
    root = tmp_path_factory.mktemp("evaluate")
    make_tiny_bundle(root / "plain")
    write_scenes(root / "train", 8, seed=1)
    write_scenes(root / "test", 4, seed=2, anomalies=True)
    shutil.copytree(root / "plain", root / "full")
    bundle = Bundle.load(root / "full")
    result = build_anomaly_parts(
        bundle,
        open_dataset(f"images:{root / 'train'}"),
        BuildConfig(k=32, epochs=1, batch=4),
        workers=0,
        progress=False,
        log=lambda _m: None,
    )
    bundle.write_part("anomaly", result.section, result.parts.to_tensors())
    teacher = tiny_teacher()
    torch.manual_seed(1)
    student = build_network(
        "student",
        dict(
            depth=18,
            teacher_channels=teacher.tap_channels,
            teacher_strides=teacher.tap_strides,
            taps=["c5"],
            width=0.25,
        ),
    )
    bundle.write_part("student", {"config": student.config}, student.state_dict())
    return root


def run(*args, rc=0):
    code = cosme_main(["evaluate", *map(str, args), "--device", "cpu"])
    assert code == rc
    return code


def one_line_error(capsys, *needles):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err[0]


def test_all_methods_table_json_plots(world, tmp_path, capsys):
    out = tmp_path / "out"
    run(
        "--bundle",
        world / "full",
        "--data",
        f"folder:{world / 'test'}",
        "--json",
        out / "eval.json",
        "--markdown",
        out / "table.md",
        "--plots",
        out / "plots",
    )
    printed = capsys.readouterr().out
    assert "| Method |" in printed and "best method by AP" in printed
    report = json.loads((out / "eval.json").read_text())
    assert set(report["methods"]) == set(METHODS) and not report["skipped"]
    for m, values in report["methods"].items():
        assert set(values) == {"auroc", "ap", "fpr95"}
        assert all(0.0 <= v <= 100.0 for v in values.values()), m
        assert f"| {m} |" in printed
    # Γ of a memory built on plain scenes ranks the pasted noise far above chance.
    assert report["methods"]["mulmem"]["auroc"] > 75.0
    assert report["methods"]["mulmem"]["ap"] > 3 * 100 * report["pixels"]["anomaly"] / (
        report["pixels"]["anomaly"] + report["pixels"]["in_distribution"]
    )
    best = report["best_method"]
    assert report["methods"][best]["ap"] == max(v["ap"] for v in report["methods"].values())
    per_image = report["per_image_ap"]
    assert per_image["method"] == best and len(per_image["images"]) == 4
    assert all(0 <= r["ap"] <= 100 and r["anomaly_pixels"] == 16 * 24 for r in per_image["images"])
    assert report["pixels"] == {
        "anomaly": 4 * 16 * 24,
        "in_distribution": 4 * (62 * 128 - 384),
        "void": 4 * 2 * 128,
    }
    assert report["sizes"] == {"images": 4, "input_size": [64, 128], "label_sizes": [[64, 128]]}
    assert report["dataset"]["kind"] == "folder" and report["metric_mode"] == "exact"
    assert "| Method |" in (out / "table.md").read_text()
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots[:2] == ["pr.png", "roc.png"] and len(plots) == 5
    assert all(p.startswith("worst_") for p in plots[2:])
    worst = cv2.imread(str(out / "plots" / plots[2]))
    assert worst.shape == (64, 3 * 128, 3)  # ground truth | classes | heatmap
    assert cv2.imread(str(out / "plots" / "roc.png")) is not None

    # Outputs are not overwritten without --force.
    run(
        "--bundle",
        world / "full",
        "--data",
        f"folder:{world / 'test'}",
        "--json",
        out / "eval.json",
        rc=2,
    )
    one_line_error(capsys, "eval.json", "--force")


def test_networks_run_once_per_image_and_scores_match_the_pipeline(world):
    bundle = Bundle.load(world / "full")
    scorers, skipped = select_methods(bundle)
    assert not skipped
    runner = MultiMethodRunner(bundle, scorers, device="cpu")
    calls = {"teacher": 0, "student": 0}
    runner.networks.teacher.register_forward_hook(
        lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1)
    )
    runner.networks.student.register_forward_hook(
        lambda *a: calls.__setitem__("student", calls["student"] + 1)
    )
    ds = open_dataset(f"folder:{world / 'test'}")
    report = evaluate(runner, ds, progress=False)
    assert calls == {"teacher": 4, "student": 4}
    assert report.best_method in METHODS and len(report.worst_images(3)) == 3

    sample = ds[1]
    _, scores = runner(sample.image, sample.anomaly.shape)
    for method in ("mulmem", "sml", "cosme", "msp"):
        expected = Pipeline(bundle, method=method, device="cpu")(sample.image).score
        np.testing.assert_allclose(scores[method], expected, rtol=1e-5, atol=1e-5)

    binned = evaluate(runner, ds, binned=True, progress=False)
    for m, exact in report.methods.items():
        for key, value in exact.items():
            assert abs(binned.methods[m][key] - value) <= binned.error_bounds[m][key] + 1e-6
    table = markdown_table(report, "planted")
    assert table.startswith("| Method |") and table.count("\n| ") == len(METHODS) and "**" in table


def test_default_methods_skip_what_is_missing(world, tmp_path, capsys):
    run(
        "--bundle",
        world / "plain",
        "--data",
        f"folder:{world / 'test'}",
        "--json",
        tmp_path / "e.json",
    )
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report["methods"]) == {"msp", "maxlogit", "entropy"}
    assert set(report["skipped"]) == {"sml", "pans", "mulmem", "auxcon", "cosme"}
    assert "cosme build-memory" in report["skipped"]["mulmem"]
    assert "cosme train-student" in report["skipped"]["auxcon"]
    assert "skipped mulmem:" in out and "Not evaluated:" in out


def test_explicit_methods_demand_their_parts(world, capsys):
    run(
        "--bundle",
        world / "plain",
        "--data",
        f"folder:{world / 'test'}",
        "--methods",
        "maxlogit,mulmem",
        rc=2,
    )
    one_line_error(capsys, "mulmem", "cosme build-memory")
    run(
        "--bundle",
        world / "plain",
        "--data",
        f"folder:{world / 'test'}",
        "--methods",
        "maxlogit,nope",
        rc=2,
    )
    one_line_error(capsys, "unknown method 'nope'")


def test_dataset_errors(world, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    run("--bundle", world / "plain", "--data", f"folder:{tmp_path}", rc=2)
    one_line_error(capsys, "labels_masks: missing directory")
    run("--bundle", world / "plain", "--data", f"images:{world / 'train'}", rc=2)
    one_line_error(capsys, "no anomaly labels")
    run(
        "--bundle",
        world / "plain",
        "--data",
        f"folder:{world / 'test'}",
        "--memory-limit",
        "1e-9",
        rc=2,
    )
    one_line_error(capsys, "--binned")


def test_ablation_rows_and_precision(world, tmp_path, capsys):
    out = tmp_path / "ablation.json"
    run(
        "--bundle",
        world / "full",
        "--data",
        f"folder:{world / 'test'}",
        "--methods",
        "mulmem, mulmem[standardize=false], cosme[layers=c5+c4,fusion=raw], MulMem",
        "--precision",
        "bf16",
        "--json",
        out,
    )
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = ["mulmem", "mulmem[standardize=false]", "cosme[fusion=raw,layers=c4+c5]"]
    assert sorted(report["methods"]) == sorted(rows)  # canonical labels, duplicates once
    table = [
        line.split("|")[1].strip()
        for line in printed.splitlines()
        if line.startswith("| ") and "Method" not in line
    ]
    assert table == rows  # in the order given
    assert report["precision"] == "bf16" and "in bf16" in printed
    # unstandardised Γ is a different score from the standardised one: the rows are real
    assert report["methods"]["mulmem"] != report["methods"]["mulmem[standardize=false]"]

    # fp32 (the default) against bf16 networks: same metrics within a few points
    ref = tmp_path / "fp32.json"
    run(
        "--bundle",
        world / "full",
        "--data",
        f"folder:{world / 'test'}",
        "--methods",
        "mulmem",
        "--json",
        ref,
    )
    fp32 = json.loads(ref.read_text())
    assert fp32["precision"] == "fp32"
    assert abs(fp32["methods"]["mulmem"]["auroc"] - report["methods"]["mulmem"]["auroc"]) < 5


@pytest.mark.parametrize(
    "methods,needle",
    [
        ("cosme[fusion=raw", "without"),
        ("mulmem[layers=c5]", "standardize=false"),
        ("cosme[fusion=sum]", "unknown CosMe fusion"),
        ("msp[colour=red]", "does not take"),
        ("auxcon[layers=c4]", "the student outputs c5, not c4"),  # the tiny student has c5 only
    ],
)
def test_bad_method_spec_is_one_line_error(world, tmp_path, capsys, methods, needle):
    run(
        "--bundle", world / "full", "--data", f"folder:{world / 'test'}", "--methods", methods, rc=2
    )
    one_line_error(capsys, needle)


def test_pipeline_method_auto_is_the_best_the_bundle_supports(world):
    assert Pipeline(Bundle.load(world / "full"), method="auto").method == "cosme"
    assert Pipeline(Bundle.load(world / "plain"), method="auto").method == "maxlogit"


def test_an_interrupted_evaluate_leaves_no_output(world, tmp_path, monkeypatch):
    """Killed mid-way, evaluate left an empty plots/ folder beside a complete markdown table:
    now markdown, plots and JSON are staged and renamed together."""
    from cosme_ros.tools import evaluate as evaluation
    from cosme_ros.cli.main import main

    real = evaluation.encode_image
    calls = []

    def interrupted(picture):
        calls.append(1)
        if len(calls) == 2:  # the second overlay: the curves and one overlay are staged
            raise KeyboardInterrupt
        return real(picture)

    monkeypatch.setattr(evaluation, "encode_image", interrupted)
    out = tmp_path / "out"
    out.mkdir()
    args = [
        "evaluate",
        "--bundle",
        str(world / "full"),
        "--data",
        f"folder:{world / 'test'}",
        "--methods",
        "maxlogit",
        "--device",
        "cpu",
        "--json",
        str(out / "eval.json"),
        "--markdown",
        str(out / "table.md"),
        "--plots",
        str(out / "plots"),
    ]
    assert main(args) == 130
    assert len(calls) == 2 and sorted(p.name for p in out.iterdir()) == []
    monkeypatch.setattr(evaluation, "encode_image", real)
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "plots", "table.md"]


def test_output_set_all_or_none(tmp_path):
    from cosme_ros.atomic import OutputSet

    with pytest.raises(RuntimeError):
        with OutputSet() as outputs:
            outputs.file(tmp_path / "a.txt").write_text("a")
            outputs.file(tmp_path / "deep" / "er" / "b.txt").write_text("b")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with OutputSet() as outputs:
        outputs.file(tmp_path / "a.txt").write_text("a")
        outputs.file(tmp_path / "deep" / "er" / "b.txt").write_text("b")
        assert not (tmp_path / "a.txt").exists()
    assert (tmp_path / "a.txt").read_text() == "a"
    assert (tmp_path / "deep" / "er" / "b.txt").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "deep"]
