"""The two Cityscapes teachers of "Real data": CFPNet (.pth) and EdgeTPU-DeepLab-slim (int8 .tflite).

Structure without data (taps, strides, channels, the paper's layers on each), then each import
against its reference (skipping with a reason where ../shared/data or the TFLite interpreter is
absent): pixel accuracy on the Cityscapes sample frame, and for the TFLite file, argmax agreement
with the ``ai-edge-litert`` interpreter running the original int8 graph at 513×513. Strict
loading: a damaged or foreign file gives one line naming it and the first keys that do not fit.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from real_data import need, one_line, read_rgb
from cosme_ros.anomaly.parts import paper_layers
from cosme_ros.data.cityscapes import IGNORE_ID, color_to_trainid
from cosme_ros.errors import CheckpointError
from cosme_ros.nets import build_network, teacher_align_corners
from cosme_ros.nets.cfpnet import CFPNet
from cosme_ros.nets.edgetpu_deeplab import MEAN as TPU_MEAN
from cosme_ros.nets.edgetpu_deeplab import STD as TPU_STD
from cosme_ros.nets.edgetpu_deeplab import EdgeTPUDeepLab
from cosme_ros.nets.imports.cfpnet import load_cfpnet_checkpoint
from cosme_ros.nets.imports.tflite_deeplab import load_edgetpu_deeplab_tflite
from cosme_ros.nets.student import Student

CFP = "teachers/cfpnet/cfpnet_crop-1024_800epoch.pth"
TPU = "teachers/edgetpu_deeplab_slim/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite"
FRAME = "cityscapes_sample/frankfurt_000001_058914"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _to_input(rgb: np.ndarray, size_hw, mean, std) -> torch.Tensor:
    small = cv2.resize(rgb, size_hw[::-1], interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(small).permute(2, 0, 1).float() / 255.0
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def _pixel_accuracy(model, image, label, size_hw, mean, std) -> float:
    with torch.inference_mode():
        logits = model.predict_logits(_to_input(image, size_hw, mean, std))
        pred = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=True)
    pred = pred[0].argmax(0)
    valid = label != IGNORE_ID
    return (pred[valid] == label[valid]).double().mean().item()


@pytest.fixture(scope="module")
def frame(shared_data):
    image = read_rgb(need(shared_data, FRAME + "_leftImg8bit.png"))
    label = color_to_trainid(read_rgb(need(shared_data, FRAME + "_gtFine_color.png")))
    return image, torch.from_numpy(label.astype(np.int64))


# --- structure, without data ---------------------------------------------------------------------


@pytest.mark.parametrize("net", [CFPNet(19), EdgeTPUDeepLab(19)], ids=["cfpnet", "edgetpu"])
@pytest.mark.parametrize("size", [(64, 128), (65, 129), (50, 70)])
def test_taps_have_declared_channels_and_strides(net, size):
    """Every tap has its declared channels and ceil(input / stride) pixels, at any input size
    (the references only run at multiples of 8 or at 16k+1)."""
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, *size))
    assert set(out) == set(net.tap_channels) == set(net.tap_strides)
    for tap, t in out.items():
        s = net.tap_strides[tap]
        assert t.shape == (1, net.tap_channels[tap], math.ceil(size[0] / s), math.ceil(size[1] / s))
    with torch.no_grad():
        assert list(net(torch.randn(1, 3, *size), taps=("o",))) == ["o"]


def test_cfpnet_has_no_stage_below_stride_8_and_says_so():
    net = CFPNet(19).eval()
    assert net.tap_strides == {"c2": 4, "c3": 8, "lh": 8, "o": 8}
    assert net.tap_channels == {"c2": 64, "c3": 128, "lh": 131, "o": 19}
    with pytest.raises(ValueError, match="no tap.*c5"):
        net(torch.randn(1, 3, 32, 32), taps=("c5",))


def test_edgetpu_taps():
    net = EdgeTPUDeepLab(19)
    assert net.tap_strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 16, "lh": 16, "o": 16}
    assert net.tap_channels == {"c2": 24, "c3": 40, "c4": 72, "c5": 1280, "lh": 128, "o": 19}


def test_the_papers_layers_on_each_teacher():
    """C4, C5 and Le = {C5} are the last two stages: the paper's own layers where they exist,
    CFPNet's two deepest stages where they do not."""
    for net in (EdgeTPUDeepLab(19), build_network("espnetv2", {"s": 1.0, "num_classes": 20})):
        assert paper_layers(net.tap_channels) == (("c4", "c5", "lh"), ("c5",))
    assert paper_layers(CFPNet(19).tap_channels) == (("c2", "c3", "lh"), ("c3",))


def test_students_follow_each_teachers_down_sampling():
    """The AuxCon student ends where its teacher does: stride 8 for CFPNet, 16 for EdgeTPU."""
    for teacher, deepest in ((CFPNet(19), 8), (EdgeTPUDeepLab(19), 16)):
        student = Student(
            18, teacher.tap_channels, teacher.tap_strides, tuple(teacher.tap_channels)
        )
        assert student.backbone.output_stride == deepest
        with torch.no_grad():
            t = teacher.eval()(torch.randn(1, 3, 64, 128))
            s = student.eval()(torch.randn(1, 3, 64, 128))
        assert {k: v.shape for k, v in s.items()} == {k: v.shape for k, v in t.items()}


def test_configs_rebuild_and_upsample_with_align_corners():
    for arch, cls in (("cfpnet", CFPNet), ("edgetpu_deeplab", EdgeTPUDeepLab)):
        net = build_network(arch, {"num_classes": 7})
        assert isinstance(net, cls) and net.num_classes == 7
        assert teacher_align_corners(arch, {}) is True
        with pytest.raises(ValueError, match="num_classes"):
            build_network(arch, {"num_classes": 1})


# --- CFPNet import -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfp_path(shared_data):
    return need(shared_data, CFP)


def test_cfpnet_reaches_cityscapes_accuracy(cfp_path, frame):
    """Acceptance: the released checkpoint at full resolution (its training crops were 1024),
    ≥ 0.94 pixel accuracy on the Cityscapes sample frame (0.959 measured; 0.943 at 512×1024)."""
    model = load_cfpnet_checkpoint(cfp_path)
    assert sum(p.numel() for p in model.parameters()) == 272_167
    assert _pixel_accuracy(model, *frame, (1024, 2048), *IMAGENET) >= 0.94


def test_cfpnet_strict_loading_names_file_and_keys(cfp_path, tmp_path):
    state = torch.load(cfp_path, map_location="cpu", weights_only=True)["state_dict"]
    damaged = dict(state)
    del damaged["cfp2.3.conv_last.0.weight"]
    damaged["cfp2.9.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "damaged.pth"
    torch.save({"state_dict": damaged}, bad)
    with pytest.raises(CheckpointError) as exc:
        load_cfpnet_checkpoint(bad)
    msg = one_line(exc, bad)
    assert "cfp2.3.conv_last.0.weight" in msg and "cfp2.9.extra.weight" in msg
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"conv.weight": torch.zeros(2, 3, 1, 1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a CFPNet checkpoint") as exc:
        load_cfpnet_checkpoint(foreign)
    one_line(exc, foreign)


# --- EdgeTPU-DeepLab import from the TFLite file -------------------------------------------------


@pytest.fixture(scope="module")
def tpu_path(shared_data):
    return need(shared_data, TPU)


@pytest.fixture(scope="module")
def tpu_model(tpu_path):
    return load_edgetpu_deeplab_tflite(tpu_path)


def test_edgetpu_reaches_cityscapes_accuracy(tpu_model, frame):
    """Acceptance: ≥ 0.94 pixel accuracy on the sample frame at the bundle's 513×1025 (0.948
    measured; 0.964 at 1025×2049)."""
    assert sum(p.numel() for p in tpu_model.parameters()) == 2_055_379
    assert _pixel_accuracy(tpu_model, *frame, (513, 1025), TPU_MEAN, TPU_STD) >= 0.94


def test_edgetpu_agrees_with_the_tflite_interpreter(tpu_path, tpu_model, frame):
    """Acceptance: our fp32 network with the dequantized weights and the original int8 graph,
    run by ``ai-edge-litert`` at 513×513, agree on ≥ 97 % of the pixels of real street crops
    (97.8–99.1 % measured). The int8 graph's activations are quantised, ours are not: that is
    the whole difference."""
    interpreter_mod = pytest.importorskip(
        "ai_edge_litert.interpreter", reason="the ai-edge-litert interpreter is not installed"
    )
    it = interpreter_mod.Interpreter(model_path=str(tpu_path))
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    image = frame[0]
    for crop in (image[:, :1024], image[:, 1024:], image):
        x = cv2.resize(crop, (513, 513), interpolation=cv2.INTER_AREA)
        it.set_tensor(inp["index"], x[None])
        it.invoke()
        reference = it.get_tensor(out["index"])[0]
        with torch.inference_mode():
            ours = tpu_model.predict_logits(_to_input(x, (513, 513), TPU_MEAN, TPU_STD))
        agreement = (ours[0].argmax(0).numpy() == reference).mean()
        assert agreement >= 0.97, agreement


def test_edgetpu_damaged_and_foreign_files(tpu_path, tmp_path):
    data = tpu_path.read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load_edgetpu_deeplab_tflite(truncated)
    assert "truncated or corrupt" in one_line(exc, truncated)
    foreign = tmp_path / "model.tflite"
    foreign.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a TFLite model") as exc:
        load_edgetpu_deeplab_tflite(foreign)
    one_line(exc, foreign)


def test_edgetpu_a_tflite_of_another_network_is_refused(shared_data, tmp_path):
    """The ImageNet MobileNetV2 .tflite is a valid TFLite file of another graph."""
    other = need(
        shared_data, "backbones/mobilenet_v2_1.0_imagenet/mobilenet_v2_1.0_224_quant.tflite"
    )
    with pytest.raises(CheckpointError, match="not an EdgeTPU-DeepLab model") as exc:
        load_edgetpu_deeplab_tflite(other)
    one_line(exc, other)


# --- bundles -------------------------------------------------------------------------------------


def test_bundle_create_for_both_teachers(cfp_path, tpu_path, tmp_path):
    """``cosme bundle create``: each teacher's arch, input normalisation and class table in the
    manifest, and the paper's layers read off the bundle's teacher."""
    from cosme_ros.bundle import Bundle
    from cosme_ros.cli.main import main as cosme_main

    cases = (
        ("cfpnet", cfp_path, "cfpnet", IMAGENET, (("c2", "c3", "lh"), ("c3",))),
        ("edgetpu-deeplab", tpu_path, "edgetpu_deeplab", (TPU_MEAN, TPU_STD), None),
    )
    for teacher, weights, arch, (mean, std), layers in cases:
        out = tmp_path / teacher
        args = ["bundle", "create", "--teacher", teacher, "--weights", str(weights)]
        assert cosme_main([*args, "--out", str(out), "--input-size", "65x129"]) == 0
        bundle = Bundle.load(out)
        assert bundle.manifest["teacher"]["arch"] == arch
        assert bundle.mean == pytest.approx(mean) and bundle.std == pytest.approx(std)
        assert bundle.num_classes == 19 and bundle.class_names[0] == "road"
        assert bundle.paper_layers() == (layers or (("c4", "c5", "lh"), ("c5",)))
        assert bundle.anomaly_parts().consensus_layers == bundle.paper_layers()[1]
        teacher_net = bundle.teacher()
        with torch.no_grad():
            assert teacher_net(torch.zeros(1, 3, 65, 129), taps=("o",))["o"].shape[1] == 19


@pytest.mark.parametrize("arch, cls", [("cfpnet", CFPNet), ("edgetpu_deeplab", EdgeTPUDeepLab)])
def test_each_teacher_exports_to_a_verified_engine(arch, cls, tmp_path):
    """``cosme export`` (ONNX Runtime) takes both graphs — CFPNet's image pyramid and the
    per-input TF padding — and the verified engine runs in the pipeline."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from cosme_ros import bundle as bundle_mod
    from cosme_ros.cli.bundle import class_table
    from cosme_ros.runtime import engines
    from cosme_ros.runtime.pipeline import Pipeline

    torch.manual_seed(0)
    names, palette, void = class_table(19)
    bundle = bundle_mod.create(
        tmp_path / arch,
        arch=arch,
        module=cls(19).eval(),
        input_size=(64, 128),
        mean=IMAGENET[0],
        std=IMAGENET[1],
        class_names=names,
        palette=palette,
        void_classes=void,
    )
    path = engines.export_engine(
        bundle, "maxlogit", backend="onnxruntime", verify_frames=1, log=lambda m: None
    )
    pipe = Pipeline(bundle, method="maxlogit", engine=str(path), device="cpu", precision="fp32")
    assert pipe.backend == "onnxruntime" and not pipe.engine_fallback
    frame = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    assert pipe(frame).score.shape == (64, 128)
