"""The bundle contract: round trip, atomic parts, and validation messages naming file and field."""

from pathlib import Path

import pytest
import torch
import yaml

from cosme_ros import bundle as bundle_mod
from cosme_ros.bundle import Bundle
from cosme_ros.errors import BundleError, CosmeError, MissingPartError

from bundles import make_tiny_bundle, tiny_teacher


@pytest.fixture()
def tiny(tmp_path) -> Bundle:
    return make_tiny_bundle(tmp_path / "tiny")


def _edit_manifest(bundle: Bundle, edit) -> None:
    path = bundle.path / "manifest.yaml"
    manifest = yaml.safe_load(path.read_text())
    edit(manifest)
    path.write_text(yaml.safe_dump(manifest))


def test_round_trip_gives_the_same_network(tiny):
    loaded = Bundle.load(tiny.path)
    assert loaded.input_size == (64, 128)
    assert loaded.num_classes == 19 and loaded.class_names[0] == "road"
    x = torch.randn(1, 3, 64, 128)
    with torch.inference_mode():
        want = tiny_teacher()(x)["o"]
        got = loaded.teacher()(x)["o"]
    torch.testing.assert_close(got, want)
    assert not loaded.has_student and not loaded.has_anomaly


def test_create_refuses_to_overwrite_without_force(tmp_path, tiny):
    with pytest.raises(CosmeError, match="already exists"):
        make_tiny_bundle(tiny.path)
    make_tiny_bundle(tiny.path, seed=1, force=True)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary directory may be left behind"


def test_missing_student_names_the_command(tiny):
    with pytest.raises(MissingPartError, match="cosme train-student"):
        tiny.student()


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: m.pop("teacher"), "'teacher'"),
        (lambda m: m.update(format="something-else"), "'format'"),
        (lambda m: m.update(version=99), "'version'"),
        (lambda m: m["preprocess"].update(input_size=[64]), "preprocess.input_size"),
        (lambda m: m["preprocess"].update(std=[0.2, 0.2, 0.0]), "preprocess.std"),
        (lambda m: m["preprocess"].update(mean="grey"), "preprocess.mean"),
        (lambda m: m["classes"]["palette"].pop(), "classes.palette"),
        (lambda m: m["classes"].update(void=[40]), "classes.void"),
        (lambda m: m["teacher"].update(weights="../elsewhere.safetensors"), "teacher.weights"),
        (lambda m: m["teacher"].update(weights="gone.safetensors"), "gone.safetensors"),
        (
            lambda m: m.update(student={"config": {}, "weights": "student.safetensors"}),
            "student.safetensors",
        ),
    ],
)
def test_manifest_errors_name_the_field(tiny, edit, field):
    _edit_manifest(tiny, edit)
    with pytest.raises(BundleError) as err:
        Bundle.load(tiny.path)
    assert field in str(err.value)
    assert "\n" not in str(err.value)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        Bundle.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.yaml: missing"):
        Bundle.load(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.yaml").write_text("teacher: [unclosed")
    with pytest.raises(BundleError, match="not valid YAML"):
        Bundle.load(tmp_path / "empty")


def test_corrupt_weights_name_the_file(tiny):
    weights = tiny.path / "teacher.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BundleError, match="teacher.safetensors: sha256 .* does not match"):
        Bundle.load(tiny.path).teacher()
    # a bundle without hashes (written before they were recorded) still names the broken file
    _edit_manifest(tiny, lambda m: m["teacher"].pop("sha256"))
    with pytest.raises(BundleError, match="teacher.safetensors: cannot read safetensors"):
        Bundle.load(tiny.path).teacher()


def test_weights_of_another_network_name_the_file(tiny):
    _edit_manifest(tiny, lambda m: m["teacher"]["config"].update(backbone="resnet34"))
    with pytest.raises(BundleError, match=r"teacher.safetensors: does not fit .*missing key"):
        Bundle.load(tiny.path).teacher()


def test_bad_network_config_names_the_field(tiny):
    _edit_manifest(tiny, lambda m: m["teacher"]["config"].update(backbone="resnet7"))
    with pytest.raises(BundleError, match="teacher.config"):
        Bundle.load(tiny.path).teacher()


def test_num_classes_must_match_class_names(tiny):
    _edit_manifest(
        tiny,
        lambda m: m["classes"]["names"].append("extra")
        or m["classes"]["palette"].append([1, 2, 3]),
    )
    with pytest.raises(BundleError, match="num_classes is 19"):
        Bundle.load(tiny.path)


def test_write_part_is_atomic_and_updates_the_manifest(tiny, monkeypatch):
    tensors = {"memory.c5": torch.nn.functional.normalize(torch.randn(4, 512), dim=1)}
    section = {"memory_layers": ["c5"], "consensus_layers": ["c5"]}

    # A crash while writing the tensors must leave the old, valid bundle in place.
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_mod, "write_manifest", boom)
    with pytest.raises(RuntimeError):
        tiny.write_part("anomaly", section, tensors)
    assert not Bundle.load(tiny.path).has_anomaly
    monkeypatch.undo()
    tiny.write_part("anomaly", section, tensors)
    reloaded = Bundle.load(tiny.path)
    assert reloaded.has_anomaly
    assert reloaded.manifest["anomaly"]["weights"] == "anomaly.safetensors"
    assert not [p for p in Path(tiny.path).iterdir() if p.name.startswith(".")]


def test_default_method_is_cosme_only_with_memory_and_student():
    from cosme_ros.anomaly.registry import default_method

    assert default_method({"teacher": {}}) == "maxlogit"
    assert default_method({"teacher": {}, "anomaly": {}}) == "maxlogit"
    assert default_method({"teacher": {}, "student": {}}) == "maxlogit"
    assert default_method({"teacher": {}, "student": {}, "anomaly": {}}) == "cosme"
