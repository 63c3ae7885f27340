"""DeepLabV3+: taps, config round trip, and import of the VainF and NVIDIA/SML checkpoint layouts.

The reference models below mirror the third-party module trees (VainF ``network/_deeplab.py``;
SML ``network/deepv3.py`` + ``network/Resnet.py`` + ``mynn.Upsample``) with their own names and
their own forward passes, so the checkpoints they write have exactly those layouts and the
outputs they compute are what the original code would give.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cosme_ros.errors import CheckpointError
from cosme_ros.nets.deeplabv3plus import DeepLabV3Plus, build_deeplabv3plus
from cosme_ros.nets.imports.deeplab import (
    SML_DROPPED,
    detect_layout,
    load_deeplabv3plus_checkpoint,
    map_sml_keys,
    map_vainf_keys,
)
from cosme_ros.nets.resnet import resnet

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def cbr(cin, cout, k=1, d=1, bias=False):
    return [
        nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def randomize(module, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters, so that a misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0, 0.1, generator=g)
    return module.eval()


def close(a, b):
    scale = b.abs().max().clamp_min(1e-6)
    return ((a - b).abs().max() / scale).item() < 1e-5


# ------------------------------------------------------------------ VainF reference


class VainFASPP(nn.Module):
    def __init__(self, cin, rates):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Sequential(*cbr(cin, 256))]
            + [nn.Sequential(*cbr(cin, 256, 3, r)) for r in rates]
            + [nn.Sequential(nn.AdaptiveAvgPool2d(1), *cbr(cin, 256))]
        )
        self.project = nn.Sequential(*cbr(5 * 256, 256), nn.Dropout(0.1))

    def forward(self, x):
        res = []
        for i, conv in enumerate(self.convs):
            y = conv(x)
            if i == 4:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            res.append(y)
        return self.project(torch.cat(res, 1))


class VainFHead(nn.Module):
    def __init__(self, cin, low, num_classes, rates):
        super().__init__()
        self.project = nn.Sequential(*cbr(low, 48))
        self.aspp = VainFASPP(cin, rates)
        self.classifier = nn.Sequential(*cbr(304, 256, 3), nn.Conv2d(256, num_classes, 1))


class VainFRef(nn.Module):
    """``DeepLabV3(IntermediateLayerGetter(torchvision resnet), DeepLabHeadV3Plus)``."""

    def __init__(self, depth, num_classes, output_stride, width=1.0):
        super().__init__()
        # torchvision names and dilation, no fc
        self.backbone = resnet(depth, output_stride, width=width)
        rates = [12, 24, 36] if output_stride == 8 else [6, 12, 18]
        self.classifier = VainFHead(
            self.backbone.tap_channels["c5"], self.backbone.tap_channels["c2"], num_classes, rates
        )

    def forward(self, x):
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        low = b.layer1(x)
        out = b.layer4(b.layer3(b.layer2(low)))
        h = self.classifier
        low_f = h.project(low)
        up = F.interpolate(h.aspp(out), size=low_f.shape[2:], mode="bilinear", align_corners=False)
        lh = h.classifier[:3](torch.cat([low_f, up], 1))
        return {"c2": low, "c5": out, "lh": lh, "o": h.classifier[3](lh)}


# ------------------------------------------------------------------ NVIDIA / SML reference


def upsample(x, size):  # mynn.Upsample
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class SMLASPP(nn.Module):
    def __init__(self, cin, rates):
        super().__init__()
        self.features = nn.ModuleList(
            [nn.Sequential(*cbr(cin, 256))] + [nn.Sequential(*cbr(cin, 256, 3, r)) for r in rates]
        )
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(*cbr(cin, 256))

    def forward(self, x):
        out = upsample(self.img_conv(self.img_pooling(x)), x.shape[2:])
        for f in self.features:
            out = torch.cat((out, f(x)), 1)
        return out


class SMLRef(nn.Module):
    """``DeepV3Plus`` of SML/NVIDIA with variant 'D' (OS 8) or 'D16' (OS 16)."""

    def __init__(self, depth, num_classes, output_stride, deep_stem, width=1.0):
        super().__init__()
        # undilated, as built there
        r = resnet(depth, 32, width=width, stem="deep" if deep_stem else "standard")
        if deep_stem:
            self.layer0 = nn.Sequential(
                r.conv1,
                r.bn1,
                nn.ReLU(),
                r.conv2,
                r.bn2,
                nn.ReLU(),
                r.conv3,
                r.bn3,
                nn.ReLU(),
                r.maxpool,
            )
        else:
            self.layer0 = nn.Sequential(r.conv1, r.bn1, nn.ReLU(), r.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        # NVIDIA's in-place conversion to a dilated network
        dilate = {8: [(self.layer3, 2), (self.layer4, 4)], 16: [(self.layer4, 2)]}[output_stride]
        for layer, d in dilate:
            for n, m in layer.named_modules():
                if "conv2" in n:
                    m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
                elif "downsample.0" in n:
                    m.stride = (1, 1)
        c = r.tap_channels
        rates = [2 * x for x in (6, 12, 18)] if output_stride == 8 else [6, 12, 18]
        self.aspp = SMLASPP(c["c5"], rates)
        self.bot_fine = nn.Sequential(*cbr(c["c2"], 48))
        self.bot_aspp = nn.Sequential(*cbr(1280, 256))
        self.final1 = nn.Sequential(*cbr(304, 256, 3), *cbr(256, 256, 3))
        self.final2 = nn.Sequential(nn.Conv2d(256, num_classes, 1, bias=True))
        self.dsn = nn.Sequential(
            nn.Conv2d(c["c4"], 512, 3, padding=1),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(512, num_classes, 1),
        )

    def forward(self, x):
        low = self.layer1(self.layer0(x))
        out = self.layer4(self.layer3(self.layer2(low)))
        dec0_up = upsample(self.bot_aspp(self.aspp(out)), low.shape[2:])
        dec1 = self.final1(torch.cat([self.bot_fine(low), dec0_up], 1))
        return {"c2": low, "c5": out, "lh": dec1, "o": self.final2(dec1)}


# ------------------------------------------------------------------ tests

X = torch.randn(1, 3, 49, 67, generator=torch.Generator().manual_seed(1))


def _check_same(model, ref):
    with torch.no_grad():
        got, want = model(X), ref(X)
    for tap in ("c2", "c5", "lh", "o"):
        assert got[tap].shape == want[tap].shape, tap
        assert close(got[tap], want[tap]), tap


@pytest.mark.parametrize("output_stride", [16, 8])
def test_vainf_checkpoint_loads_and_matches(tmp_path, output_stride):
    torch.manual_seed(0)
    ref = randomize(VainFRef(50, 19, output_stride, width=0.25))
    path = tmp_path / f"best_deeplabv3plus_resnet50_cityscapes_os{output_stride}.pth"
    torch.save(
        {
            "cur_itrs": 30000,
            "model_state": ref.state_dict(),
            "optimizer_state": {},
            "best_score": 0.75,
        },
        path,
    )
    model = load_deeplabv3plus_checkpoint(path, backbone="resnet50")
    assert not model.training
    assert model.config["output_stride"] == output_stride  # from the file name
    assert model.config["decoder_convs"] == 1 and model.num_classes == 19
    assert model.config["aspp_rates"] == ([12, 24, 36] if output_stride == 8 else [6, 12, 18])
    _check_same(model, ref)


@pytest.mark.parametrize("output_stride, deep_stem", [(8, False), (16, True)])
def test_sml_checkpoint_loads_and_matches(tmp_path, output_stride, deep_stem):
    torch.manual_seed(0)
    ref = randomize(SMLRef(50, 19, output_stride, deep_stem, width=0.25))
    state = {"module." + k: v for k, v in ref.state_dict().items()}
    path = tmp_path / "r50_base_cty.pth"  # no os token: stride passed explicitly
    torch.save(
        {
            "state_dict": state,
            "optimizer": {},
            "epoch": 3,
            "mean_iu": 0.8,
            "command": "train.py --arch network.deepv3.DeepR50V3PlusD",
        },
        path,
    )
    model = load_deeplabv3plus_checkpoint(path, output_stride=output_stride)
    cfg = model.config
    assert cfg["stem"] == ("deep" if deep_stem else "standard")
    assert cfg["decoder_convs"] == 2 and cfg["dilate_first_block"] and cfg["align_corners"]
    _check_same(model, ref)


def test_config_round_trip_and_taps():
    model = DeepLabV3Plus(
        "resnet18",
        num_classes=5,
        output_stride=8,
        width=0.25,
        aspp_channels=32,
        low_level_channels=8,
        decoder_channels=32,
        decoder_convs=2,
    ).eval()
    twin = build_deeplabv3plus(**model.config)
    assert twin.config == model.config
    assert {k: v.shape for k, v in twin.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert model.tap_strides == {"c2": 4, "c3": 8, "c4": 8, "c5": 8, "lh": 4, "o": 4}
    assert model.tap_channels == {"c2": 16, "c3": 32, "c4": 64, "c5": 128, "lh": 32, "o": 5}
    with torch.no_grad():
        taps = model(torch.randn(2, 3, 61, 90))
        only = model(torch.randn(1, 3, 61, 90), taps=["c4", "o"])
    assert list(taps) == ["c2", "c3", "c4", "c5", "lh", "o"]
    for name, t in taps.items():
        s = model.tap_strides[name]
        assert t.shape == (2, model.tap_channels[name], math.ceil(61 / s), math.ceil(90 / s))
    assert list(only) == ["c4", "o"]
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 32, 32), taps=["x"])
    with pytest.raises(ValueError):
        DeepLabV3Plus("resnet18", output_stride=32)


@pytest.mark.parametrize("output_stride, strides", [(16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))])
def test_tap_strides_resnet50(output_stride, strides):
    model = DeepLabV3Plus(
        "resnet50", 7, output_stride, aspp_channels=16, low_level_channels=8, decoder_channels=16
    ).eval()
    with torch.no_grad():
        taps = model(torch.randn(1, 3, 50, 70))
    for name, s in zip(("c2", "c3", "c4", "c5", "lh", "o"), strides + (4, 4)):
        assert model.tap_strides[name] == s
        assert tuple(taps[name].shape[-2:]) == (math.ceil(50 / s), math.ceil(70 / s))


def _vainf_r101_keys():
    """VainF deeplabv3plus_resnet101 state-dict keys, written from its module tree."""
    keys = ["backbone.conv1.weight"] + [f"backbone.bn1.{p}" for p in BN_KEYS]
    for stage, n in zip(range(1, 5), (3, 4, 23, 3)):
        for b in range(n):
            pre = f"backbone.layer{stage}.{b}."
            for i in (1, 2, 3):
                keys += [pre + f"conv{i}.weight"] + [pre + f"bn{i}.{p}" for p in BN_KEYS]
            if b == 0:
                keys += [pre + "downsample.0.weight"] + [pre + f"downsample.1.{p}" for p in BN_KEYS]
    head = ["classifier.project.0.weight"] + [f"classifier.project.1.{p}" for p in BN_KEYS]
    for i in range(4):
        head += [f"classifier.aspp.convs.{i}.0.weight"]
        head += [f"classifier.aspp.convs.{i}.1.{p}" for p in BN_KEYS]
    # ASPPPooling = Sequential(AdaptiveAvgPool2d, Conv2d, BatchNorm2d, ReLU)
    head += ["classifier.aspp.convs.4.1.weight"]
    head += [f"classifier.aspp.convs.4.2.{p}" for p in BN_KEYS]
    head += ["classifier.aspp.project.0.weight"]
    head += [f"classifier.aspp.project.1.{p}" for p in BN_KEYS]
    head += ["classifier.classifier.0.weight"] + [f"classifier.classifier.1.{p}" for p in BN_KEYS]
    head += ["classifier.classifier.3.weight", "classifier.classifier.3.bias"]
    return keys, head


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("output_stride", [16, 8])
def test_resnet101_key_set_matches_vainf(output_stride):
    with torch.device("meta"):
        model = DeepLabV3Plus("resnet101", 19, output_stride)
        ref = VainFRef(101, 19, output_stride)
    backbone, head = _vainf_r101_keys()
    assert len(backbone) == 624 and len(head) == 50
    assert sorted(ref.state_dict()) == sorted(backbone + head)
    state = ref.state_dict()
    assert detect_layout(state) == "vainf"
    mapped = map_vainf_keys(state)
    assert len(mapped) == len(state)
    assert _shapes(mapped) == _shapes(model.state_dict())
    assert tuple(mapped["head.classifier.weight"].shape) == (19, 256, 1, 1)
    assert tuple(mapped["head.decoder.0.conv.weight"].shape) == (256, 304, 3, 3)


def test_resnet101_key_set_matches_sml():
    with torch.device("meta"):
        model = DeepLabV3Plus(
            "resnet101",
            19,
            8,
            stem="deep",
            decoder_convs=2,
            dilate_first_block=True,
            align_corners=True,
        )
        ref = SMLRef(101, 19, 8, deep_stem=True)
    state = ref.state_dict()
    assert len(state) == 701
    assert {
        "layer0.0.weight",
        "layer0.3.weight",
        "layer0.7.running_var",
        "aspp.img_conv.0.weight",
        "aspp.features.3.1.bias",
        "bot_aspp.0.weight",
        "final1.4.weight",
        "final2.0.bias",
        "dsn.4.weight",
    } <= set(state)
    assert tuple(state["layer1.0.conv1.weight"].shape) == (64, 128, 1, 1)  # deep stem: 128 out
    assert detect_layout(state) == "sml"
    mapped, dropped = map_sml_keys(state)
    assert set(dropped) == {k for k in state if k.startswith("dsn.")}
    assert len(mapped) + len(dropped) == len(state)
    assert _shapes(mapped) == _shapes(model.state_dict())


def test_sml_projection_channels_rotated():
    w = torch.arange(10.0).view(1, 10, 1, 1)  # five branches of two channels, pooling first
    mapped, _ = map_sml_keys({"bot_aspp.0.weight": w})
    rotated = mapped["head.aspp.project.conv.weight"].flatten().tolist()
    assert rotated == [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert "dsn.0.weight" in SML_DROPPED


def _small_vainf_file(tmp_path, name="vainf_os16.pth", **edit):
    ref = VainFRef(50, 19, 16, width=0.25)
    state = ref.state_dict()
    state.update(edit)
    path = tmp_path / name
    torch.save({"model_state": state}, path)
    return path


def test_wrong_architecture_is_a_one_line_error(tmp_path):
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(resnet(50, num_classes=1000).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_deeplabv3plus_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "not a DeepLabV3+" in msg and "\n" not in msg


def test_deeplabv3_without_plus_is_named(tmp_path):
    path = tmp_path / "best_deeplabv3_resnet50.pth"
    torch.save({"model_state": {"classifier.classifier.0.convs.0.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="without the"):
        load_deeplabv3plus_checkpoint(path)


def test_unexpected_and_mismatched_keys(tmp_path):
    extra = _small_vainf_file(tmp_path, "extra.pth", **{"classifier.extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="classifier.extra.weight"):
        load_deeplabv3plus_checkpoint(extra)
    bad = _small_vainf_file(
        tmp_path, "bad.pth", **{"classifier.project.0.weight": torch.zeros(48, 32, 1, 1)}
    )
    with pytest.raises(CheckpointError, match="shape mismatch") as err:
        load_deeplabv3plus_checkpoint(bad)
    assert str(bad) in str(err.value)


def test_missing_key_is_reported(tmp_path):
    ref = VainFRef(50, 19, 16, width=0.25)
    state = ref.state_dict()
    del state["classifier.aspp.convs.2.1.running_var"]
    path = tmp_path / "missing.pth"
    torch.save({"model_state": state}, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_deeplabv3plus_checkpoint(path)


def test_requested_backbone_must_match(tmp_path):
    path = _small_vainf_file(tmp_path)
    with pytest.raises(CheckpointError, match="resnet50"):
        load_deeplabv3plus_checkpoint(path, backbone="resnet101")


def test_truncated_file(tmp_path):
    path = _small_vainf_file(tmp_path, "full.pth")
    cut = tmp_path / "truncated.pth"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_deeplabv3plus_checkpoint(cut)
    assert str(cut) in str(err.value)
    with pytest.raises(CheckpointError):
        load_deeplabv3plus_checkpoint(tmp_path / "absent.pth")


def test_checkpoint_without_batchnorm_counters(tmp_path):
    ref = randomize(VainFRef(50, 19, 16, width=0.25))
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old_torch.pth"
    torch.save({"model_state": state}, path)
    model = load_deeplabv3plus_checkpoint(path)
    _check_same(model, ref)


def test_own_layout_points_to_the_bundle_config(tmp_path):
    model = DeepLabV3Plus(
        "resnet18", 3, 16, width=0.25, aspp_channels=16, low_level_channels=8, decoder_channels=16
    )
    path = tmp_path / "ours.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="build_deeplabv3plus"):
        load_deeplabv3plus_checkpoint(path)


def test_backbone_argument_that_is_no_resnet(tmp_path):
    path = _small_vainf_file(tmp_path)
    with pytest.raises(CheckpointError, match="mobilenetv2"):
        load_deeplabv3plus_checkpoint(path, backbone="mobilenetv2")
