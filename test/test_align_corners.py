"""Every resize of a teacher's outputs follows the teacher's own bilinear convention: the SML
release (and ESPNetv2) upsample with align_corners=True, VainF and our teachers with False."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosme_ros import bundle as bundle_mod
from cosme_ros.bundle import Bundle
from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from cosme_ros.nets import teacher_align_corners
from cosme_ros.nets.deeplabv3plus import DeepLabV3Plus
from cosme_ros.runtime.pipeline import Pipeline


def _bundle(tmp_path, align: bool) -> Bundle:
    torch.manual_seed(0)
    net = DeepLabV3Plus(
        "resnet18",
        19,
        16,
        width=0.25,
        aspp_channels=16,
        low_level_channels=8,
        decoder_channels=16,
        align_corners=align,
    ).eval()
    return bundle_mod.create(
        tmp_path / f"b{int(align)}",
        arch="deeplabv3plus",
        module=net,
        input_size=(64, 96),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        class_names=list(CITYSCAPES_CLASSES),
        palette=[tuple(c) for c in CITYSCAPES_PALETTE],
    )


def test_the_teachers_convention():
    assert teacher_align_corners("espnetv2", {}) is True
    assert teacher_align_corners("deeplabv3plus", {"align_corners": True}) is True
    assert teacher_align_corners("deeplabv3plus", {"align_corners": False}) is False


@pytest.mark.parametrize("align", [False, True])
def test_scores_and_classes_upsample_as_the_teacher_does(tmp_path, align):
    b = _bundle(tmp_path, align)
    assert b.teacher_align_corners is align and b.anomaly_parts().align_corners is align
    rgb = np.random.default_rng(1).integers(0, 255, (100, 150, 3), np.uint8)
    out = (100, 150)
    for method, upsample in (("maxlogit", False), ("msp", True)):
        spec = f"{method}[upsample_logits=true]" if upsample else method
        p = Pipeline(b, method=spec, fast=False)
        assert p.scorer.upsample_logits is upsample
        with torch.no_grad():
            logits = p.networks.teacher_forward(p.networks.preprocess([rgb]))["o"]
            big = F.interpolate(logits, size=out, mode="bilinear", align_corners=align)
            if method == "maxlogit":
                small = -logits.max(1).values
                want = F.interpolate(
                    small[:, None], size=out, mode="bilinear", align_corners=align
                )[:, 0]
            else:
                want = 1.0 - big.softmax(1).max(1).values
        result = p(rgb)
        np.testing.assert_allclose(result.score, want[0].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(result.classes, big.argmax(1)[0].numpy())
    # the other convention differs measurably at the borders (what the audit found: up to 0.23)
    other = F.interpolate(logits, size=out, mode="bilinear", align_corners=not align)
    assert float((other - big).abs().max()) > 1e-3


def test_separable_vainf_checkpoint_says_why(tmp_path):
    """VainF's convert_to_separable_conv renames the ASPP and decoder convs (``.body.``): the
    refusal now says so instead of listing unmatched keys."""
    from cosme_ros.errors import CheckpointError
    from cosme_ros.nets.imports.deeplab import load_deeplabv3plus_checkpoint

    state = {
        "backbone.conv1.weight": torch.zeros(64, 3, 7, 7),
        "classifier.aspp.convs.1.0.body.0.weight": torch.zeros(2048, 1, 3, 3),
        "classifier.aspp.convs.0.0.weight": torch.zeros(256, 2048, 1, 1),
    }
    path = tmp_path / "sep.pth"
    torch.save({"model_state": state}, path)
    with pytest.raises(CheckpointError, match=r"sep\.pth: .*separable convolutions"):
        load_deeplabv3plus_checkpoint(path)
