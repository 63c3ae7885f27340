"""ResNet backbone: torchvision-compatible shapes and names, dilation schedules, taps."""

import math

import pytest
import torch

from cosme_ros.nets.resnet import ResNet, parse_backbone, resnet

# Parameter counts and state-dict sizes of torchvision.models.resnetXX() (1000-class fc included).
TORCHVISION = {
    18: (11_689_512, 122),
    34: (21_797_672, 218),
    50: (25_557_032, 320),
    101: (44_549_160, 626),
}


@pytest.mark.parametrize("depth", sorted(TORCHVISION))
def test_torchvision_parameter_count_and_key_count(depth):
    with torch.device("meta"):
        model = resnet(depth, num_classes=1000)
    n_params, n_keys = TORCHVISION[depth]
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert len(model.state_dict()) == n_keys


def test_torchvision_key_names():
    with torch.device("meta"):
        r50 = resnet(50, num_classes=1000).state_dict()
        r18 = resnet(18, num_classes=1000).state_dict()
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
        "fc.bias",
    ):
        assert key in r50, key
    assert "layer1.0.downsample.0.weight" not in r18  # 64 → 64 needs no projection
    assert "layer2.0.downsample.0.weight" in r18
    assert tuple(r50["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)


def test_backbone_has_no_fc():
    with torch.device("meta"):
        keys = resnet(101).state_dict()
    assert not any(k.startswith(("fc.", "avgpool")) for k in keys)


def _expected(h, w, stride):
    return math.ceil(h / stride), math.ceil(w / stride)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize(
    "output_stride, strides", [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))]
)
def test_tap_shapes_and_strides(depth, output_stride, strides):
    model = resnet(depth, output_stride, width=0.25).eval()
    assert model.tap_strides == dict(zip(("c2", "c3", "c4", "c5"), strides))
    assert model.output_stride == output_stride
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        taps = model(x)
    assert list(taps) == ["c2", "c3", "c4", "c5"]
    for name, t in taps.items():
        assert t.shape[1] == model.tap_channels[name]
        assert tuple(t.shape[-2:]) == _expected(65, 97, model.tap_strides[name])


def test_channels_full_width():
    assert resnet(18).tap_channels == {"c2": 64, "c3": 128, "c4": 256, "c5": 512}
    with torch.device("meta"):
        assert resnet(101).tap_channels == {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048}


def test_dilation_schedule_torchvision_and_first_block():
    with torch.device("meta"):
        tv16 = resnet(50, 16)
        tv8 = resnet(50, 8)
        nv8 = resnet(50, 8, dilate_first_block=True)
    # torchvision keeps the previous stage's dilation in the first block of a dilated stage
    assert tv16.layer4[0].conv2.dilation == (1, 1) and tv16.layer4[1].conv2.dilation == (2, 2)
    assert tv8.layer3[0].conv2.dilation == (1, 1) and tv8.layer3[1].conv2.dilation == (2, 2)
    assert tv8.layer4[0].conv2.dilation == (2, 2) and tv8.layer4[2].conv2.dilation == (4, 4)
    assert tv8.layer4[0].conv2.stride == (1, 1) and tv8.layer4[0].downsample[0].stride == (1, 1)
    # NVIDIA semantic-segmentation dilates every block
    assert nv8.layer3[0].conv2.dilation == (2, 2) and nv8.layer4[0].conv2.dilation == (4, 4)
    assert nv8.layer3[0].conv2.padding == (2, 2)


def test_basic_block_dilation_keeps_size():
    model = resnet(18, 8, width=0.25).eval()
    assert model.layer4[1].conv1.dilation == (4, 4)
    with torch.no_grad():
        c5 = model(torch.randn(1, 3, 40, 56), taps=["c5"])["c5"]
    assert tuple(c5.shape[-2:]) == (5, 7)


def test_width_multiplier():
    model = resnet(18, width=0.25)
    assert model.tap_channels == {"c2": 16, "c3": 32, "c4": 64, "c5": 128}
    assert model.conv1.out_channels == 16


def test_deep_stem_names_and_channels():
    with torch.device("meta"):
        sd = resnet(101, 8, stem="deep").state_dict()
    assert tuple(sd["conv1.weight"].shape) == (64, 3, 3, 3)
    assert tuple(sd["conv2.weight"].shape) == (64, 64, 3, 3)
    assert tuple(sd["conv3.weight"].shape) == (128, 64, 3, 3)
    assert "bn3.running_mean" in sd
    assert tuple(sd["layer1.0.conv1.weight"].shape) == (64, 128, 1, 1)
    assert tuple(sd["layer1.0.downsample.0.weight"].shape) == (256, 128, 1, 1)


def test_tap_subset_and_errors():
    model = resnet(18, width=0.25).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), taps=["c3"])
    assert list(out) == ["c3"]
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 32, 32), taps=["lh"])
    with pytest.raises(ValueError):
        resnet(42)
    with pytest.raises(ValueError):
        resnet(50, output_stride=4)
    with pytest.raises(ValueError):
        ResNet(None, [1, 1, 1, 1], replace_stride_with_dilation=[True])


def test_classify_with_fc():
    model = resnet(18, width=0.25, num_classes=10).eval()
    with torch.no_grad():
        assert model.classify(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(RuntimeError):
        resnet(18, width=0.25).classify(torch.randn(1, 3, 32, 32))


def test_parse_backbone():
    assert parse_backbone("resnet101") == 101
    assert parse_backbone("resnet-50") == 50
    assert parse_backbone("r18") == 18
    with pytest.raises(ValueError):
        parse_backbone("mobilenetv2")
