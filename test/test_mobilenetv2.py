"""MobileNetV2: taps and strides, TF padding, the ImageNet import checked against the original int8
TFLite file run by the ``ai-edge-litert`` interpreter, frozen BatchNorm, and DeepLabV3+ on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cosme_ros.errors import CheckpointError
from cosme_ros.nets.deeplabv3plus import DeepLabV3Plus, build_deeplabv3plus
from cosme_ros.nets.mobilenetv2 import MobileNetV2
from cosme_ros.nets.imports.tf_mobilenet import (
    IMAGENET_WEIGHTS,
    imagenet_state_dict,
    mobilenetv2_imagenet,
)
from cosme_ros.runtime.networks import fold_batchnorm

BACKBONE = ("backbones", "mobilenet_v2_1.0_imagenet")
TFLITE = "mobilenet_v2_1.0_224_quant.tflite"


@pytest.fixture(scope="module")
def weights_dir(shared_data):
    path = shared_data.joinpath(*BACKBONE)
    if not (path / IMAGENET_WEIGHTS).is_file():
        pytest.skip(f"{path / IMAGENET_WEIGHTS} is absent")
    return path


@pytest.fixture(scope="module")
def imagenet_model(weights_dir):
    return mobilenetv2_imagenet(weights_dir)


@pytest.mark.parametrize(
    "output_stride, strides",
    [
        (32, {"c2": 4, "c3": 8, "c4": 16, "c5": 32}),
        (16, {"c2": 4, "c3": 8, "c4": 16, "c5": 16}),
        (8, {"c2": 4, "c3": 8, "c4": 8, "c5": 8}),
    ],
)
def test_taps_channels_and_strides(output_stride, strides):
    net = MobileNetV2(output_stride).eval()
    assert net.tap_strides == strides
    assert net.tap_channels == {"c2": 24, "c3": 32, "c4": 96, "c5": 320}
    h, w = 96, 160
    with torch.no_grad():
        out = net(torch.randn(1, 3, h, w))
    for tap, t in out.items():
        assert t.shape == (1, net.tap_channels[tap], h // strides[tap], w // strides[tap]), tap
    with torch.no_grad():
        only = net(torch.randn(1, 3, h, w), taps=("c3",))
    assert list(only) == ["c3"]
    with pytest.raises(ValueError, match="taps"):
        net(torch.randn(1, 3, h, w), taps=("lh",))


def test_torchvision_parameter_names():
    keys = set(MobileNetV2(num_classes=1000).state_dict())
    for key in (
        "features.0.0.weight",
        "features.0.1.running_var",
        "features.1.conv.0.0.weight",
        "features.1.conv.1.weight",
        "features.1.conv.2.bias",
        "features.2.conv.0.0.weight",
        "features.2.conv.1.0.weight",
        "features.2.conv.2.weight",
        "features.2.conv.3.running_mean",
        "features.17.conv.3.weight",
        "features.18.0.weight",
        "classifier.1.weight",
    ):
        assert key in keys, key
    seg = MobileNetV2(16).state_dict()
    assert not any(k.startswith(("features.18.", "classifier.")) for k in seg)


def test_tf_same_padding_pads_after_an_even_input():
    """A stride-2 3×3 conv of TF pads (0, 1) on even sizes and (1, 1) on odd ones."""
    stem = MobileNetV2().eval().features[0]
    torch.manual_seed(0)
    for size, (before, after) in ((8, (0, 1)), (9, (1, 1))):
        x = torch.randn(1, 3, size, size)
        padded = torch.nn.functional.pad(x, (before, after, before, after))
        with torch.no_grad():
            ref = torch.clamp(stem[1](stem[0](padded)), 0, 6)  # conv (no padding), BN, ReLU6
            assert torch.allclose(stem(x), ref)
        assert ref.shape[-1] == (size + 1) // 2


def test_batchnorm_folding_keeps_tf_padding():
    """The fast path folds every conv → BN pair; the padding that lives in the parent's forward
    must survive (a stride-2 layer would otherwise shift by a pixel)."""
    torch.manual_seed(0)
    net = DeepLabV3Plus(
        "mobilenetv2", 19, 16, aspp_channels=32, low_level_channels=8, decoder_channels=32
    ).eval()
    for m in net.modules():  # non-trivial statistics, so that folding is not a no-op
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = net(x)
        folded = net
        assert fold_batchnorm(folded) > 50
        out = folded(x)
    for tap in ref:
        assert torch.allclose(out[tap], ref[tap], rtol=1e-4, atol=1e-4), tap


def test_frozen_batchnorm_stays_in_eval_mode_while_training():
    net = DeepLabV3Plus(
        "mobilenetv2", 19, 16, aspp_channels=16, low_level_channels=8, decoder_channels=16
    )
    net.backbone.freeze_batchnorm = True
    net.train()
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    head_bns = [m for m in net.head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.training for m in head_bns)
    before = bns[0].running_mean.clone()
    net(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert torch.equal(bns[0].running_mean, before)


def test_depthwise_in_fp32_under_bf16_autocast():
    """Training on a CPU runs the depthwise convs in fp32 inside bf16 autocast (oneDNN's bf16
    depthwise backward is slow); the 1×1 convs stay in bf16, and nothing changes by default."""
    torch.manual_seed(0)
    net = MobileNetV2(output_stride=16)
    depthwise = [m for m in net.modules() if getattr(m, "fp32_under_autocast", None) is not None]
    dtypes = {}
    hooks = [
        m[0].register_forward_hook(lambda mod, i, o: dtypes.__setitem__(mod, o.dtype))
        for m in depthwise
    ]
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    assert set(dtypes.values()) == {torch.bfloat16}
    net.depthwise_in_fp32()
    dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    grouped = {m[0] for m in depthwise if m[0].groups > 1}
    assert len(grouped) == 17 and all(dtypes[c] == torch.float32 for c in grouped)
    assert all(
        dtypes[c] == torch.bfloat16 for c in dtypes if c not in grouped
    )  # the stem and the 1×1 expansions
    assert out["c5"].dtype == torch.bfloat16  # the projections after them run in bf16
    ref = net(x)  # outside autocast the flag changes nothing: fp32 throughout
    assert all(v.dtype == torch.float32 for v in ref.values())
    for h in hooks:
        h.remove()


def test_deeplabv3plus_on_mobilenetv2():
    net = DeepLabV3Plus(
        "mobilenet_v2", 19, 16, aspp_channels=32, low_level_channels=8, decoder_channels=32
    ).eval()
    assert net.config["backbone"] == "mobilenetv2"
    assert net.tap_channels == {"c2": 24, "c3": 32, "c4": 96, "c5": 320, "lh": 32, "o": 19}
    assert net.tap_strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 16, "lh": 4, "o": 4}
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 128))
    assert out["lh"].shape == (1, 32, 16, 32) and out["o"].shape == (1, 19, 16, 32)
    twin = build_deeplabv3plus(**net.config)
    twin.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(
            twin.eval()(torch.ones(1, 3, 64, 128))["o"], net(torch.ones(1, 3, 64, 128))["o"]
        )
    with pytest.raises(ValueError, match="mobilenetv2 takes no width"):
        DeepLabV3Plus("mobilenetv2", 19, 16, width=0.5)


# ----------------------------------------------------------------------------- ImageNet import


def test_import_is_strict_and_names_the_file(weights_dir, tmp_path):
    tensors = load_file(str(weights_dir / IMAGENET_WEIGHTS))
    state = imagenet_state_dict(weights_dir)
    assert len(state) == len(MobileNetV2(num_classes=1001).state_dict())
    assert not any(
        k.startswith("classifier.") for k in imagenet_state_dict(weights_dir, classifier=False)
    )
    missing = dict(tensors)
    missing.pop("MobilenetV2/expanded_conv_9/project/Conv2D_Fold")
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing\.safetensors.*expanded_conv_9/project"):
        imagenet_state_dict(tmp_path / "missing.safetensors")
    extra = {**tensors, "MobilenetV2/unknown/weights": torch.zeros(3)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"extra\.safetensors.*1 tensor.*unknown"):
        imagenet_state_dict(tmp_path / "extra.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: cannot read"):
        imagenet_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        imagenet_state_dict(tmp_path / "absent")


def _real_images(shared_data, n_road=6, n_fs=3):
    import cv2

    files = (
        sorted((shared_data / "road_anomaly" / "frames").glob("*.jpg"))[:n_road]
        + sorted((shared_data / "fs_static" / "images").glob("*.jpg"))[:n_fs]
    )
    if len(files) < n_road + n_fs:
        pytest.skip("Road Anomaly / FS Static frames are absent from ../shared/data")
    for f in files:
        image = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        yield f.name, cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)


def test_import_matches_the_tflite_interpreter(weights_dir, imagenet_model, shared_data):
    """Same top-1 class on real images and logits within the int8 file's own error: the TFLite
    logits are quantised in steps of 0.099; fp32 arithmetic on the dequantized weights differs
    from the int8 kernels by a few steps at most (measured: mean 0.08–0.14, max 0.31–0.65)."""
    interpreter_mod = pytest.importorskip(
        "ai_edge_litert.interpreter", reason="the ai-edge-litert interpreter is not installed"
    )
    it = interpreter_mod.Interpreter(
        model_path=str(weights_dir / TFLITE), experimental_preserve_all_tensors=True
    )
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    logits_t = next(
        t for t in it.get_tensor_details() if t["name"] == "MobilenetV2/Logits/Squeeze1"
    )
    scale, zero = logits_t["quantization"]
    in_scale, in_zero = inp["quantization"]
    for name, image in _real_images(shared_data):
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        ref = (it.get_tensor(logits_t["index"])[0].astype(np.float32) - zero) * scale
        # the int8 file's input quantisation: real = (pixel − 128) / 128
        x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() - in_zero) * in_scale
        with torch.no_grad():
            out = imagenet_model.classify(x)[0].numpy()
        diff = np.abs(out - ref)
        assert out.argmax() == ref.argmax(), name
        assert diff.mean() < 2 * scale and diff.max() < 8 * scale, (name, diff.mean(), diff.max())
        assert np.corrcoef(out, ref)[0, 1] > 0.99, name
