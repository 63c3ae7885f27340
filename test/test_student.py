"""AuxCon student: its taps have the teacher's channels and resolutions, whatever the input size."""

import math

import pytest
import torch

from cosme_ros.nets.deeplabv3plus import DeepLabV3Plus
from cosme_ros.nets.student import Student, build_student

SIZES = [(64, 64), (65, 97), (50, 70), (37, 53)]

# DeepLabV3+ R101 at output stride 16
R101_CHANNELS = {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048, "lh": 256, "o": 19}
R101_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 16, "lh": 4, "o": 4}

# ESPNetv2-like: undilated encoder, 20 output classes
ESP_CHANNELS = {"c2": 64, "c3": 128, "c4": 256, "c5": 512, "lh": 64, "o": 20}
ESP_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32, "lh": 4, "o": 4}


def _expected(channels, strides, h, w, batch=1):
    return {
        t: (batch, channels[t], math.ceil(h / strides[t]), math.ceil(w / strides[t]))
        for t in channels
    }


def test_matches_real_deeplabv3plus_r101_teacher():
    teacher = DeepLabV3Plus("resnet101", 19, 16).eval()
    assert teacher.tap_channels == R101_CHANNELS and teacher.tap_strides == R101_STRIDES
    student = Student(50, teacher.tap_channels, teacher.tap_strides).eval()
    assert student.backbone.output_stride == 16
    with torch.no_grad():
        for h, w in SIZES[:3]:
            x = torch.randn(1, 3, h, w)
            want = {t: tuple(v.shape) for t, v in teacher(x).items()}
            got = {t: tuple(v.shape) for t, v in student(x).items()}
            assert got == want, (h, w)


def test_os8_teacher_gives_os8_student():
    strides = dict(R101_STRIDES, c4=8, c5=8)
    student = Student(18, R101_CHANNELS, strides, width=0.25).eval()
    assert student.backbone.output_stride == 8
    with torch.no_grad():
        out = student(torch.randn(2, 3, 65, 97))
    got = {t: tuple(v.shape) for t, v in out.items()}
    assert got == _expected(R101_CHANNELS, strides, 65, 97, 2)


@pytest.mark.parametrize("h, w", SIZES)
def test_espnetv2_like_teacher(h, w):
    student = Student(18, ESP_CHANNELS, ESP_STRIDES, width=0.25).eval()
    assert student.backbone.output_stride == 32
    with torch.no_grad():
        out = student(torch.randn(1, 3, h, w))
    assert list(out) == ["c2", "c3", "c4", "c5", "lh", "o"]
    assert {t: tuple(v.shape) for t, v in out.items()} == _expected(ESP_CHANNELS, ESP_STRIDES, h, w)


def test_strides_other_than_the_students_are_resized():
    strides = dict(ESP_STRIDES, c2=2, lh=8, o=2)  # student makes these at stride 4
    student = Student(18, ESP_CHANNELS, strides, width=0.25).eval()
    with torch.no_grad():
        out = student(torch.randn(1, 3, 65, 97))
    assert {t: tuple(v.shape) for t, v in out.items()} == _expected(ESP_CHANNELS, strides, 65, 97)


def test_explicit_teacher_sizes_win():
    student = Student(18, ESP_CHANNELS, ESP_STRIDES, width=0.25).eval()
    sizes = {"c5": (2, 3), "o": (16, 24)}  # a teacher that floors instead of ceiling
    with torch.no_grad():
        out = student(torch.randn(1, 3, 65, 97), sizes=sizes)
    assert tuple(out["c5"].shape[-2:]) == (2, 3)
    assert tuple(out["o"].shape[-2:]) == (16, 24)
    assert tuple(out["c4"].shape[-2:]) == (5, 7)


def test_tap_subset_builds_only_what_is_needed():
    student = Student(18, ESP_CHANNELS, ESP_STRIDES, taps=("c4", "c5"), width=0.25).eval()
    assert student.head is None and set(student.adapters) == {"c4", "c5"}
    assert student.tap_channels == {"c4": 256, "c5": 512}
    with torch.no_grad():
        out = student(torch.randn(1, 3, 64, 64))
        only = student(torch.randn(1, 3, 64, 64), taps=["c5"])
    assert list(out) == ["c4", "c5"] and list(only) == ["c5"]
    with pytest.raises(ValueError):
        student(torch.randn(1, 3, 64, 64), taps=["lh"])


def test_lh_without_o_has_no_classifier():
    student = Student(18, ESP_CHANNELS, ESP_STRIDES, taps=("c5", "lh"), width=0.25)
    assert student.head is not None and student.head.classifier is None


def test_config_round_trip():
    student = Student(18, ESP_CHANNELS, ESP_STRIDES, taps="c3,c5,lh,o", width=0.25)
    twin = build_student(**student.config)
    assert twin.config == student.config
    assert {k: v.shape for k, v in twin.state_dict().items()} == {
        k: v.shape for k, v in student.state_dict().items()
    }


def test_trains_end_to_end():
    student = Student(18, ESP_CHANNELS, ESP_STRIDES, width=0.25).train()
    out = student(torch.randn(2, 3, 48, 48))
    sum(v.pow(2).mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_bad_arguments():
    with pytest.raises(ValueError):
        Student(50, {"c5": 2048}, {"c5": 16}, taps=("c5", "lh"))
    with pytest.raises(ValueError):
        Student(50, None, None)
    with pytest.raises(ValueError):
        Student(50, R101_CHANNELS, R101_STRIDES, taps=("c9",))
