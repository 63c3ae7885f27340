"""Compiled engines (runtime/engines.py, ``cosme export``): export, record, verification, and
every fallback to eager with its reason. The ONNX Runtime backend runs on this CPU; TensorRT
needs CUDA (``gpu`` marker)."""

from __future__ import annotations

import json

import shutil

import numpy as np
import pytest
import torch

from bundles import make_cosme_bundle, make_tiny_bundle, street_scene
from cosme_ros.bundle import Bundle
from cosme_ros.errors import CosmeError
from cosme_ros.manifest_io import dump_manifest, read_manifest_text
from cosme_ros.runtime import engines
from cosme_ros.runtime.pipeline import Pipeline

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = (64, 128)
METHOD = "cosme"


def _bundle(path, seed: int = 0) -> Bundle:
    """Tiny DeepLabV3+ teacher + random unit memory + statistics + a random student."""
    return make_cosme_bundle(path, input_size=SIZE, seed=seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A bundle with one ONNX Runtime engine for CosMe, and a second bundle's engine (other
    weights) for the self-check test."""
    root = tmp_path_factory.mktemp("engines")
    bundle = _bundle(root / "b")
    path = engines.export_engine(
        bundle, METHOD, backend="onnxruntime", verify_frames=2, log=lambda m: None
    )
    other = _bundle(root / "other", seed=1)
    other_path = engines.export_engine(
        other, METHOD, backend="onnxruntime", verify_frames=1, log=lambda m: None
    )
    return bundle, path, other_path


@pytest.fixture
def copy(exported, tmp_path):
    """A copy of the exported bundle (with its engine) to damage."""
    bundle, path, _ = exported
    shutil.copytree(bundle.path, tmp_path / "b")
    return Bundle.load(tmp_path / "b"), tmp_path / "b" / "engines" / path.name


def _edit_record(folder, edit):
    record = read_manifest_text(folder / engines.RECORD)
    edit(record)
    (folder / engines.RECORD).write_text(dump_manifest(record))


def _frame():
    return street_scene(np.random.default_rng(5), SIZE)


def test_export_writes_a_verified_record_and_the_pipeline_runs_it(exported):
    bundle, path, _ = exported
    assert path.parent == bundle.path / engines.ENGINE_DIR
    record = read_manifest_text(path / engines.RECORD)
    assert record["backend"] == "onnxruntime" and record["precision"] == "fp32"
    assert record["input"] == {
        "size": list(SIZE),
        "mean": list(bundle.mean),
        "std": list(bundle.std),
    }
    assert set(record["taps"]["teacher"]) >= {"c4", "c5", "lh", "o"}
    assert record["taps"]["student"] == ["c5"]
    assert record["bundle"]["parts"]["teacher"] == bundle.manifest["teacher"]["sha256"]
    assert record["versions"]["onnxruntime"] and record["versions"]["torch"]
    assert record["device"]["type"] == "cpu" and "isa" in record["device"]
    for part in ("teacher", "student"):
        assert set(record["artifacts"][part]) == {"model.onnx", "program.pt2"}
    v = record["verification"]
    assert v["frames"] == 2 and v["max_tap_error_relative"] <= engines.FP32_TOLERANCE

    compiled = Pipeline(bundle, METHOD, engine="auto")
    eager = Pipeline(bundle, METHOD, engine="off")
    assert (compiled.backend, compiled.engine_note, compiled.engine_path) == (
        "onnxruntime",
        None,
        path,
    )
    assert eager.backend == "eager"
    a, b = compiled(_frame()), eager(_frame())
    np.testing.assert_allclose(a.score, b.score, rtol=1e-4, atol=1e-4 * np.abs(b.score).max())
    assert (a.classes == b.classes).mean() > 0.999
    # the same engine, named by its folder; and a method it has every tap for (maxlogit: o)
    assert Pipeline(bundle, METHOD, engine=str(path)).backend == "onnxruntime"
    assert Pipeline(bundle, "maxlogit", engine="auto").backend == "onnxruntime"


def test_an_engine_named_by_its_backend(exported):
    bundle, path, _ = exported
    pipe = Pipeline(bundle, METHOD, engine="onnxruntime")
    assert (pipe.backend, pipe.engine_path, pipe.engine_fallback) == ("onnxruntime", path, False)
    pipe = Pipeline(bundle, METHOD, engine="aoti")  # asked for, none built: a fallback
    assert pipe.backend == "eager" and pipe.engine_fallback
    assert pipe.engine_note.startswith("no aoti engine in")


def test_bench_backend_times_that_engine_or_refuses(exported, tmp_path, capsys):
    from cosme_ros.cli.main import main

    bundle, _, _ = exported
    common = ["bench", "--bundle", str(bundle.path), "--method", METHOD, "--camera", "64x128"]
    common += ["--frames", "2", "--warmup", "1", "--no-naive", "--no-publish", "--threads", "1"]
    report = tmp_path / "bench.json"
    assert main(common + ["--backend", "onnxruntime", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["backend"] == "onnxruntime" and result["ratio_engine_vs_eager"] > 0
    capsys.readouterr()
    assert main(common + ["--backend", "aoti"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]  # the rest is progress
    assert errors == err[-1:] and "--backend aoti: no aoti engine in" in err[-1]
    assert "cosme export --bundle" in err[-1]
    assert main(common + ["--backend", "eager", "--engine", "auto"]) == 2
    assert "not both" in capsys.readouterr().err


def test_no_engine_is_eager_with_the_reason(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "plain", input_size=SIZE)
    pipe = Pipeline(bundle, "maxlogit", engine="auto")
    assert pipe.backend == "eager" and pipe.engine_note.startswith("no engine in")
    assert not pipe.engine_fallback  # nothing to warn about: no engine was ever built
    pipe = Pipeline(bundle, "maxlogit", engine=str(tmp_path / "nowhere"))
    assert pipe.backend == "eager" and f"no {engines.RECORD}" in pipe.engine_note
    assert pipe.engine_fallback


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda r: r["bundle"]["parts"].update(teacher="0" * 64), "other network weights"),
        (lambda r: r["versions"].update(onnxruntime="0.0.1"), "built with onnxruntime 0.0.1"),
        (lambda r: r["versions"].update(torch="1.0"), "built with torch 1.0"),
        (lambda r: r["device"].update(type="cuda"), "built for cuda"),
        (lambda r: r["input"].update(std=[1.0, 1.0, 1.0]), "normalisation"),
        (lambda r: r["taps"].update(teacher=["o"]), "has no teacher tap"),
        (lambda r: r.update(version=99), "record version 99"),
    ],
)
def test_a_record_that_does_not_fit_falls_back_to_eager(copy, damage, reason):
    bundle, folder = copy
    _edit_record(folder, damage)
    pipe = Pipeline(bundle, METHOD, engine="auto")
    assert pipe.backend == "eager" and pipe.engine_fallback
    assert reason in pipe.engine_note, pipe.engine_note


def test_input_size_and_taps_must_fit_the_pipeline(copy):
    bundle, folder = copy
    pipe = Pipeline(bundle, METHOD, engine=str(folder), input_size=(96, 128))
    assert pipe.backend == "eager" and "built for input [64, 128]" in pipe.engine_note
    # pans reads lh only through the teacher, which the engine has; sml its logits: both fit
    assert Pipeline(bundle, "maxlogit", engine=str(folder)).backend == "onnxruntime"


def test_corrupt_or_missing_artifacts_fall_back(copy):
    bundle, folder = copy
    onnx = folder / "teacher" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    pipe = Pipeline(bundle, METHOD, engine="auto")
    assert pipe.backend == "eager" and "teacher/model.onnx is corrupt" in pipe.engine_note
    onnx.unlink()
    pipe = Pipeline(bundle, METHOD, engine="auto")
    assert "teacher/model.onnx is missing" in pipe.engine_note


def test_the_start_up_self_check_catches_an_engine_that_disagrees(copy, exported):
    """An artifact whose hash was made to match but whose weights are another bundle's."""
    bundle, folder = copy
    _, _, other = exported
    shutil.copy(other / "teacher" / "model.onnx", folder / "teacher" / "model.onnx")
    sha = engines._sha256(folder / "teacher" / "model.onnx")
    _edit_record(folder, lambda r: r["artifacts"]["teacher"].update({"model.onnx": sha}))
    pipe = Pipeline(bundle, METHOD, engine="auto")
    assert pipe.backend == "eager" and "self-check" in pipe.engine_note, pipe.engine_note


def test_a_failed_verification_writes_nothing(tmp_path, monkeypatch):
    bundle = make_tiny_bundle(tmp_path / "b", input_size=SIZE)
    monkeypatch.setattr(engines, "FP32_TOLERANCE", -1.0)
    with pytest.raises(CosmeError, match="verification failed: .* nothing was written"):
        engines.export_engine(bundle, "maxlogit", backend="onnxruntime", verify_frames=1)
    root = bundle.path / engines.ENGINE_DIR
    assert not root.exists() or not any(p.name.startswith("onnx") for p in root.iterdir())
    leftovers = [p for p in (root.iterdir() if root.exists() else []) if p.name.endswith(".tmp")]
    assert not leftovers


def test_backend_choices_are_refused_with_one_line(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "b", input_size=SIZE)
    with pytest.raises(CosmeError, match="needs --device cuda"):
        engines.export_engine(bundle, "maxlogit", backend="tensorrt", device="cpu")
    with pytest.raises(CosmeError, match="fp16 is for CUDA"):
        engines.export_engine(bundle, "maxlogit", backend="onnxruntime", precision="fp16")
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(CosmeError, match="Torch-TensorRT, which is not installed"):
            engines._compile("tensorrt", None, None, None, tmp_path)


def test_cli_export_and_infer_with_the_engine(exported, tmp_path, capsys):
    from cosme_ros.cli.main import main

    bundle, path, _ = exported
    b = tmp_path / "b"
    shutil.copytree(bundle.path, b)
    shutil.rmtree(b / engines.ENGINE_DIR)
    assert main(["export", "--bundle", str(b), "--method", "maxlogit", "--verify-frames", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote engine" in out and "onnxruntime, fp32, input 64x128, maxlogit" in out
    images = tmp_path / "images"
    images.mkdir()
    import cv2

    cv2.imwrite(str(images / "a.png"), _frame()[..., ::-1])
    args = ["infer", "--bundle", str(b), "--input", str(images), "--output", str(tmp_path / "o")]
    assert main([*args, "--method", "maxlogit", "--json", str(tmp_path / "i.json")]) == 0
    import json

    assert json.loads((tmp_path / "i.json").read_text())["backend"] == "onnxruntime"
    # an engine that does not fit the method: eager, and one line says why
    assert main([*args, "--method", "cosme", "--force"]) == 0
    assert "note: running eager, not the compiled engine" in capsys.readouterr().out


def test_evaluate_runs_every_method_from_one_engine(exported):
    from cosme_ros.tools.evaluate import MultiMethodRunner, select_methods

    bundle, path, _ = exported
    scorers, _ = select_methods(bundle, ["maxlogit", "mulmem", "cosme"])
    runner = MultiMethodRunner(bundle, scorers, engine="auto")
    eager = MultiMethodRunner(bundle, scorers, engine="off")
    assert runner.backend == "onnxruntime" and eager.backend == "eager"
    _, a = runner(_frame(), SIZE)
    _, b = eager(_frame(), SIZE)
    for m in scorers:
        np.testing.assert_allclose(a[m], b[m], rtol=1e-4, atol=1e-4 * np.abs(b[m]).max())


@pytest.mark.gpu
def test_tensorrt_engine_compiles_saves_loads_and_matches(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("torch_tensorrt")
    bundle = _bundle(tmp_path / "b")
    path = engines.export_engine(
        bundle, METHOD, backend="tensorrt", precision="fp16", device="cuda", verify_frames=2
    )
    pipe = Pipeline(bundle, METHOD, device="cuda", engine=str(path))
    assert pipe.backend == "tensorrt", pipe.engine_note
    eager = Pipeline(bundle, METHOD, device="cuda", engine="off")
    a, b = pipe(_frame()), eager(_frame())
    assert np.corrcoef(a.score.ravel(), b.score.ravel())[0, 1] > 0.999


@pytest.mark.slow
def test_aoti_engine_round_trip(tmp_path):
    """AOTInductor: a compiled shared library, loaded back and equal to eager (about 40 s)."""
    bundle = make_tiny_bundle(tmp_path / "b", input_size=SIZE)
    path = engines.export_engine(
        bundle, "maxlogit", backend="aoti", verify_frames=1, log=lambda m: None
    )
    record = read_manifest_text(path / engines.RECORD)
    assert record["backend"] == "aoti" and set(record["artifacts"]["teacher"]) == {
        "model.pt2",
        "program.pt2",
    }
    pipe = Pipeline(bundle, "maxlogit", engine="auto")
    assert pipe.backend == "aoti", pipe.engine_note
    a, b = pipe(_frame()), Pipeline(bundle, "maxlogit")(_frame())
    np.testing.assert_allclose(a.score, b.score, rtol=1e-4, atol=1e-4 * np.abs(b.score).max())
