"""``cosme train-teacher``: a DeepLabV3+ from scratch learns a toy road world, resumes exactly after
SIGKILL, trains the same under data parallelism, and is written as a valid teacher-only bundle."""

from __future__ import annotations

import json

import pytest
import torch

from cosme_ros.bundle import Bundle
from test_train_student import (
    assert_ddp_matches_single,
    assert_same_tensors,
    cosme,
    kill_after_first_checkpoint,
    write_scenes,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return write_scenes(root / "train", 16, seed=1), write_scenes(root / "val", 6, seed=2)


def teacher_args(out, world, *extra):
    train, val = world
    return [
        "train-teacher",
        "--out",
        out,
        "--data",
        f"synthetic:{train}",
        "--val",
        f"synthetic:{val}",
        "--width",
        "0.25",
        "--size",
        "64x128",
        "--batch",
        "4",
        "--seed",
        "3",
        *extra,
    ]


@pytest.mark.slow
def test_tiny_teacher_learns_the_toy_world(tmp_path, world):
    """Sky above, road below, sometimes a car, with noise: 40 steps reach a mIoU far above chance
    (a random 19-way guess scores ~0.05 IoU per class present)."""
    out, report = tmp_path / "teacher", tmp_path / "t.json"
    proc = cosme(
        *teacher_args(out, world, "--epochs", "10", "--eval-every-epoch", "--json", report)
    )
    record = json.loads(report.read_text())
    assert record["steps"] == 40 and len(record["epoch_val_miou"]) == 10
    assert record["miou_present"] > 0.6, record
    assert record["pixel_accuracy"] > 0.85, record
    assert record["iou"]["sky"] > 0.8 and record["iou"]["road"] > 0.8, record
    assert "sky" in proc.stdout and "mIoU" in proc.stdout  # per-class table printed

    bundle = Bundle.load(out)
    assert bundle.input_size == (64, 128) and bundle.num_classes == 19
    assert bundle.mean == (0.485, 0.456, 0.406) and bundle.std == (0.229, 0.224, 0.225)
    teacher_section = bundle.manifest["teacher"]
    assert teacher_section["arch"] == "deeplabv3plus"
    assert teacher_section["source"]["train"]["miou"] == pytest.approx(record["miou"])
    model = bundle.teacher()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 128), taps=("o",))["o"].shape == (1, 19, 16, 32)
    assert not (tmp_path / "teacher.teacher-checkpoints").exists()

    # an existing bundle is not replaced without --force
    proc = cosme(*teacher_args(out, world, "--epochs", "1"), check_rc=2)
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, world):
    common = ["--epochs", "4", "--checkpoint-every", "2"]  # 16 steps
    cosme(*teacher_args(tmp_path / "straight", world, *common))
    ckpt = tmp_path / "ckpt"
    killed = tmp_path / "killed"
    step = kill_after_first_checkpoint(
        teacher_args(killed, world, *common, "--checkpoint-dir", ckpt), ckpt
    )
    assert 0 < step < 16 and not killed.exists()
    cosme(*teacher_args(killed, world, *common, "--checkpoint-dir", ckpt, "--resume"))
    assert_same_tensors(
        tmp_path / "straight" / "teacher.safetensors", killed / "teacher.safetensors"
    )
    a = Bundle.load(tmp_path / "straight").manifest["teacher"]["source"]["train"]
    b = Bundle.load(killed).manifest["teacher"]["source"]["train"]
    assert a["miou"] == b["miou"] and a["epoch_loss"] == b["epoch_loss"]


@pytest.mark.slow
def test_ddp_gradients_equal_single_process(tmp_path, world):
    """Cross-entropy normalised by the global number of valid pixels, synchronised BatchNorm."""
    (tmp_path / "scenes").symlink_to(world[0])
    assert_ddp_matches_single("teacher", tmp_path)


def test_unlabelled_data_is_refused(tmp_path, world):
    images = write_scenes(tmp_path / "plain", 4, labels=False)
    proc = cosme(
        "train-teacher",
        "--out",
        tmp_path / "t",
        "--data",
        f"images:{images}",
        "--val",
        f"synthetic:{world[1]}",
        check_rc=2,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no semantic labels" in lines[0]


@pytest.mark.slow
def test_pretrained_mobilenetv2_teacher(tmp_path, world, shared_data):
    """--backbone mobilenetv2 --pretrained imagenet: the backbone starts from the ImageNet
    weights, adapts at a tenth of the head's rate with frozen BatchNorm, and the bundle normalises
    the input as those weights expect."""
    from cosme_ros.nets.imports.tf_mobilenet import imagenet_state_dict

    weights = shared_data / "backbones" / "mobilenet_v2_1.0_imagenet"
    if not weights.is_dir():
        pytest.skip(f"{weights} is absent")
    out, report = tmp_path / "teacher", tmp_path / "t.json"
    train, val = world
    cosme(
        "train-teacher",
        "--out",
        out,
        "--data",
        f"synthetic:{train}",
        "--val",
        f"synthetic:{val}",
        "--backbone",
        "mobilenetv2",
        "--pretrained",
        "imagenet",
        "--pretrained-weights",
        weights,
        "--head-channels",
        "32",
        "--size",
        "64x128",
        "--batch",
        "4",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--json",
        report,
    )
    record = json.loads(report.read_text())
    assert record["pretrained"]["weights"] == "imagenet"
    assert record["pretrained"]["file"].endswith(".safetensors")
    assert "backbone lr x0.1" in record["optimizer"]
    bundle = Bundle.load(out)
    assert bundle.mean == (0.5, 0.5, 0.5) and bundle.std == (0.5, 0.5, 0.5)
    assert bundle.manifest["teacher"]["config"]["backbone"] == "mobilenetv2"
    trained = bundle.teacher().backbone.state_dict()
    start = imagenet_state_dict(weights, classifier=False)
    assert set(trained) == set(start)
    for key, value in start.items():
        if key.endswith(("running_mean", "running_var")):  # frozen BatchNorm: untouched
            assert torch.equal(trained[key].float(), value), key
    # the stem and the blocks up to c2 keep their ImageNet weights exactly; the rest adapts
    frozen = [k for k in start if int(k.split(".")[1]) <= 3]
    assert len(frozen) > 10 and all(torch.equal(trained[k].float(), start[k]) for k in frozen)
    assert record["pretrained"]["frozen"] == "backbone up to c2 (features.0-3)"
    moved = [
        float((trained[k].float() - v).norm() / v.norm())
        for k, v in start.items()
        if k.endswith(".weight") and v.dim() == 4
    ]
    assert 0 < max(moved) < 0.2, max(moved)  # adapted, not overwritten


def test_pretrained_needs_a_backbone_that_has_weights(tmp_path, world):
    train, val = world
    proc = cosme(
        "train-teacher",
        "--out",
        tmp_path / "t",
        "--data",
        f"synthetic:{train}",
        "--val",
        f"synthetic:{val}",
        "--backbone",
        "resnet18",
        "--pretrained",
        "imagenet",
        check_rc=2,
    )
    assert "only the mobilenetv2 backbone" in proc.stderr and "Traceback" not in proc.stderr
    proc = cosme(
        "train-teacher",
        "--out",
        tmp_path / "t",
        "--data",
        f"synthetic:{train}",
        "--val",
        f"synthetic:{val}",
        "--backbone",
        "mobilenetv2",
        "--pretrained",
        "imagenet",
        "--pretrained-weights",
        tmp_path / "absent",
        check_rc=2,
    )
    assert "absent: no such file or folder" in proc.stderr and "Traceback" not in proc.stderr
