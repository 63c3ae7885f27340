"""Hostile and broken inputs (issue "Hostile and broken inputs"): every case is generated here,
no large file is committed, and each test fails without the check it covers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cosme_ros.data.image_header import ImageHeaderError, check_compressed_data, compressed_size
from cosme_ros.data.images import read_rgb
from cosme_ros.errors import InputError

BOMB_SIDE = 30000


def small_jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    assert ok
    return data.tobytes()


def declare(jpeg: bytes, side: int = BOMB_SIDE) -> bytes:
    """The JPEG with its frame header (SOF0) claiming side × side pixels."""
    at = jpeg.index(b"\xff\xc0")
    sof = bytearray(jpeg[at : at + 9])
    sof[5:9] = side.to_bytes(2, "big") * 2
    return jpeg[:at] + bytes(sof) + jpeg[at + 9 :]


def stray_byte_bomb() -> bytes:
    """One stray byte before the SOF marker: libjpeg skips it ("extraneous bytes before
    marker"), a reader that stops at the first non-marker byte does not size the image."""
    data = declare(small_jpeg())
    at = data.index(b"\xff\xc0")
    return data[:at] + b"\x00" + data[at:]


def app_segments_bomb(total: int = 128 * 1024) -> bytes:
    """128 KB of APP1 segments before the frame header: past any fixed-size prefix."""
    data = declare(small_jpeg())
    segment = b"\xff\xe1" + (65535).to_bytes(2, "big") + bytes(65533)
    return data[:2] + segment * (total // len(segment) + 1) + data[2:]


@pytest.mark.parametrize("make", [stray_byte_bomb, app_segments_bomb])
def test_jpeg_bombs_are_sized_from_their_real_header(make):
    data = make()
    assert len(data) < 300_000
    assert compressed_size(data) == (BOMB_SIDE, BOMB_SIDE)
    with pytest.raises(ImageHeaderError, match="30000x30000 has more than max_pixels"):
        check_compressed_data(data)


@pytest.mark.parametrize("make", [stray_byte_bomb, app_segments_bomb])
def test_bomb_messages_and_files_are_refused_before_decoding(make, tmp_path, monkeypatch):
    from cosme_ros.frames import codec

    class Msg:
        format = "jpeg"
        data = make()

    def no_decode(*args, **kwargs):
        raise AssertionError("a bomb reached the decoder")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(codec.ImageMessageError, match="more than max_pixels"):
        codec.decode_compressed(Msg(), max_pixels=4096 * 4096)
    path = tmp_path / "bomb.jpg"
    path.write_bytes(Msg.data)
    with pytest.raises(InputError, match=r"bomb\.jpg: image refused: 30000x30000 has more"):
        read_rgb(path)


@pytest.mark.parametrize("ext", [".tiff", ".ppm", ".jp2"])
def test_formats_that_are_not_sized_are_refused(ext, tmp_path):
    ok, data = cv2.imencode(ext, np.zeros((8, 8, 3), np.uint8))
    if not ok:
        pytest.skip(f"OpenCV cannot write {ext} here")
    with pytest.raises(ImageHeaderError, match="not a PNG, JPEG, BMP or WebP"):
        compressed_size(data.tobytes())
    path = tmp_path / f"x{ext}"
    path.write_bytes(data.tobytes())
    with pytest.raises(InputError, match="image refused: not a PNG"):
        read_rgb(path)


@pytest.mark.parametrize(
    "ext,params",
    [
        (".png", []),
        (".jpg", []),
        (".bmp", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
    ],
)
def test_allowed_formats_are_sized_as_decoded(ext, params):
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    ok, data = cv2.imencode(ext, image, params)
    assert ok
    assert compressed_size(data.tobytes()) == (37, 53)
    assert cv2.imdecode(data, cv2.IMREAD_COLOR).shape[:2] == (37, 53)


def test_broken_jpeg_headers():
    jpeg = small_jpeg()
    for data, why in (
        (jpeg[: jpeg.index(b"\xff\xc0")], "without a frame header"),
        (declare(jpeg, 0), "size 0x0"),
        (b"\xff\xd8\xff\xda\x00\x02", "before its image data"),
    ):
        with pytest.raises(ImageHeaderError, match=why):
            compressed_size(data)


# ----------------------------------------------------------------------------- manifests


def _tiny(tmp_path):
    from bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path / "b").path


def test_yaml_alias_bomb_in_a_manifest_is_refused(tmp_path):
    """A 'billion laughs' name: nine levels of ten aliases, 10^9 strings from ~1 kB."""
    from cosme_ros.bundle import Bundle
    from cosme_ros.errors import BundleError

    path = _tiny(tmp_path)
    text = (path / "manifest.yaml").read_text()
    levels = ['a0: &a0 "lol"'] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)
    ]
    bomb = "\n".join(levels) + "\n" + text.replace("name: b", "name: *a9", 1)
    assert "name: *a9" in bomb
    (path / "manifest.yaml").write_text(bomb)
    with pytest.raises(BundleError, match=r"manifest\.yaml: not valid YAML \(aliases"):
        Bundle.load(path)


@pytest.mark.parametrize("name", ["x" * 201, "", "tab\there", 19])
def test_manifest_name_must_be_a_short_printable_string(tmp_path, name):
    import yaml
    from cosme_ros.bundle import Bundle
    from cosme_ros.errors import BundleError

    path = _tiny(tmp_path)
    manifest = yaml.safe_load((path / "manifest.yaml").read_text())
    manifest["name"] = name
    (path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(BundleError, match="field 'name' should be a printable string"):
        Bundle.load(path)


def test_huge_manifest_is_refused_unread(tmp_path):
    from cosme_ros.bundle import Bundle
    from cosme_ros.errors import BundleError

    path = _tiny(tmp_path)
    with open(path / "manifest.yaml", "a") as f:
        f.write("#" * (1 << 20) + "\n")
    with pytest.raises(BundleError, match="a manifest is at most"):
        Bundle.load(path)


def test_manifests_are_written_without_aliases(tmp_path):
    """The reader refuses aliases, so the writer must never emit one, even for an object that
    appears twice in the manifest."""
    from cosme_ros.bundle import Bundle

    path = _tiny(tmp_path)
    b = Bundle.load(path)
    shared = [1, 2]
    b.write_thresholds(
        {"maxlogit": {"value": 1.0, "extra": shared}, "msp": {"value": 0.5, "extra": shared}}
    )
    assert "&" not in (path / "manifest.yaml").read_text()
    assert Bundle.load(path).manifest["thresholds"]["msp"]["extra"] == [1, 2]


def test_echoed_sender_strings_are_bounded():
    """A 100 kB encoding name used to be copied into the log line and into every /diagnostics
    message; now at most a short prefix of it is."""
    from cosme_ros.frames import codec
    from cosme_ros.ros.monitor import MAX_REASON_CHARS, FrameMonitor

    class Msg:
        height, width, step, is_bigendian = 2, 2, 6, 0
        encoding = "x" * 100_000
        data = bytes(12)

    with pytest.raises(codec.ImageMessageError) as err:
        codec.decode_image(Msg())
    assert len(str(err.value)) < 600 and "(100000 characters)" in str(err.value)
    monitor = FrameMonitor(0.0)
    monitor.rejected("y" * 100_000)
    assert len(monitor.last_rejection) <= MAX_REASON_CHARS + 1


# ----------------------------------------------------------------------------- corrupt models


def test_flipped_bytes_in_a_part_are_detected(tmp_path):
    """1,000 flipped bytes inside teacher.safetensors used to load silently: each part's sha256
    is in the manifest and is checked on load."""
    from cosme_ros.bundle import Bundle, store_half
    from cosme_ros.errors import BundleError

    path = _tiny(tmp_path)
    assert len(Bundle.load(path).manifest["teacher"]["sha256"]) == 64
    store_half(path)  # rewriting a part records its new hash
    Bundle.load(path).teacher()
    weights = path / "teacher.safetensors"
    data = bytearray(weights.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.choice(np.arange(len(data) // 2, len(data)), 1000, replace=False):
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"teacher\.safetensors: sha256 .* does not match"):
        Bundle.load(path).teacher()


def test_non_finite_weights_and_normalisation_are_refused(tmp_path):
    import torch
    import yaml
    from cosme_ros.bundle import Bundle, write_tensors
    from cosme_ros.errors import BundleError

    path = _tiny(tmp_path)
    b = Bundle.load(path)
    state = b.teacher().state_dict()
    state["head.classifier.weight"] = torch.full_like(state["head.classifier.weight"], float("nan"))
    manifest = yaml.safe_load((path / "manifest.yaml").read_text())
    manifest["teacher"]["sha256"] = write_tensors(path / "teacher.safetensors", state)
    (path / "manifest.yaml").write_text(yaml.safe_dump(manifest))  # poisoned, hash consistent
    with pytest.raises(BundleError, match=r"tensor 'head\.classifier\.weight' has non-finite"):
        Bundle.load(path).teacher()
    for key, bad in (("std", [float("nan"), 0.2, 0.2]), ("mean", [float("inf"), 0.4, 0.4])):
        m = yaml.safe_load((path / "manifest.yaml").read_text())
        m["preprocess"][key] = bad
        (path / "manifest.yaml").write_text(yaml.safe_dump(m))
        with pytest.raises(BundleError, match=f"preprocess.{key}' should be a list of 3 finite"):
            Bundle.load(path)


# ----------------------------------------------------------------------------- unwritable outputs


def test_unwritable_output_is_one_error_line_before_any_work(tmp_path):
    """/sys refuses new files even to root: evaluate, infer and calibrate stop at once with one
    `error:` line naming the output (a traceback before)."""
    import subprocess
    import sys

    path = _tiny(tmp_path)
    images = tmp_path / "imgs"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((40, 60, 3), np.uint8))
    for args in (
        [
            "calibrate",
            "--bundle",
            path,
            "--data",
            f"images:{images}",
            "--json",
            "/sys/cosme_out.json",
        ],
        ["infer", "--bundle", path, "--input", images, "--output", "/sys/cosme_out"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "cosme_ros.cli.main", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
        assert "/sys/cosme_out" in lines[0] and "cannot write" in lines[0], lines[0]


def test_read_only_bundle_stops_train_student_before_training(tmp_path, monkeypatch, capsys):
    """train-student on a read-only bundle trained the whole run and then failed on save."""
    import errno
    import tempfile
    from cosme_ros import atomic
    from cosme_ros.cli.main import main
    import cosme_ros.train.student as student_mod

    path = _tiny(tmp_path)
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(path)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(
        student_mod,
        "train_student",
        lambda *a, **k: pytest.fail("training started on a read-only bundle"),
    )
    images = tmp_path / "imgs"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((40, 60, 3), np.uint8))
    assert (
        main(
            [
                "train-student",
                "--bundle",
                str(path),
                "--data",
                f"images:{images}",
                "--depth",
                "18",
                "--epochs",
                "1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"error: {path / 'manifest.yaml'}: cannot write here (Read-only file system)" in err


def test_disk_full_while_writing_leaves_nothing_and_says_so(tmp_path, monkeypatch):
    import errno
    import safetensors.torch
    import torch
    from cosme_ros.bundle import write_tensors
    from cosme_ros.errors import CosmeError

    def full(tensors, filename, *a, **k):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(CosmeError, match=r"out\.safetensors: cannot write \(No space left"):
        write_tensors(tmp_path / "out.safetensors", {"w": torch.zeros(3)})
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda m: m["teacher"]["config"].update(aspp_channels=-1),
            r"field 'teacher.config.aspp_channels' is -1; it must be within \[1, 4096\]",
        ),
        (
            lambda m: m["teacher"]["config"].update(aspp_channels=10_000_000),
            r"field 'teacher.config.aspp_channels' is 10000000",
        ),
        (
            lambda m: m["preprocess"].update(input_size=[100000, 100000]),
            r"field 'preprocess.input_size' should be \[height, width\], integers from 32 to 8192",
        ),
        (
            lambda m: m["teacher"]["config"].update(num_classes="19"),
            r"field 'teacher.config.num_classes' should be an integer, got '19'",
        ),
        (
            lambda m: m["teacher"].update(weights=""),
            r"manifest\.yaml: field 'teacher.weights' is empty",
        ),
        (
            lambda m: m.update(anomaly={"weights": "teacher.safetensors", "memory_layers": ["c9"]}),
            r"manifest\.yaml: field 'anomaly.memory_layers' should be a list of tap names",
        ),
    ],
)
def test_bad_manifest_numbers_are_one_line_naming_the_field(tmp_path, edit, message):
    """Each of these used to end in a traceback or a huge allocation (aspp_channels 10^7: 10 GB)
    or blamed the wrong file; now the manifest is refused before anything is built."""
    import yaml
    from cosme_ros.bundle import Bundle
    from cosme_ros.errors import BundleError

    path = _tiny(tmp_path)
    manifest = yaml.safe_load((path / "manifest.yaml").read_text())
    edit(manifest)
    (path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(BundleError, match=message):
        Bundle.load(path)


def test_prototypes_for_another_teacher_are_named_at_start_up(tmp_path):
    """A memory with the wrong channel count gave a ValueError in `cosme infer` and a node message
    that named no file and suggested an input-size problem."""
    import torch
    import torch.nn.functional as F
    from cosme_ros.anomaly.parts import AnomalyParts
    from cosme_ros.anomaly.standardize import ClassStats
    from cosme_ros.bundle import Bundle
    from cosme_ros.errors import BundleError
    from cosme_ros.runtime.pipeline import Pipeline

    path = _tiny(tmp_path)
    bundle = Bundle.load(path)
    channels = bundle.teacher().tap_channels
    stats = ClassStats(mean=torch.zeros(19), std=torch.ones(19))

    def write(memory_channels, classes=19):
        memory = {
            k: F.normalize(torch.randn(4, memory_channels.get(k, channels[k])), dim=1)
            for k in ("c4", "c5", "lh")
        }
        st = stats if classes == 19 else ClassStats(torch.zeros(classes), torch.ones(classes))
        parts = AnomalyParts(memory=memory, mulmem_stats=st)
        Bundle.load(path).write_part(
            "anomaly", {"memory_layers": ["c4", "c5", "lh"]}, parts.to_tensors()
        )

    write({})
    Pipeline(Bundle.load(path), method="mulmem[standardize=false]", device="cpu")  # fits
    write({"c5": channels["c5"] + 3})
    with pytest.raises(BundleError) as err:
        Pipeline(Bundle.load(path), method="maxlogit", device="cpu")
    msg = str(err.value)
    assert "anomaly.safetensors" in msg and "memory.c5" in msg and "build-memory" in msg, msg
    write({}, classes=7)
    with pytest.raises(BundleError, match="mulmem.mean has 7 classes but the teacher outputs 19"):
        Pipeline(Bundle.load(path), method="maxlogit", device="cpu")
    # the command the message names repairs it (its own teacher pass ignores the old part)
    from bundles import write_scenes
    from cosme_ros.cli.main import main

    write({"c5": channels["c5"] + 3})
    write_scenes(tmp_path / "scenes", 4)
    args = ["build-memory", "--bundle", str(path), "--data", f"images:{tmp_path / 'scenes'}"]
    assert main([*args, "--k", "4", "--batch", "2", "--device", "cpu", "--force"]) == 0
    Pipeline(Bundle.load(path), method="mulmem", device="cpu")


@pytest.mark.parametrize("rows", [0, 1])
def test_a_classifier_without_classes_is_refused_by_bundle_create(tmp_path, capsys, rows):
    import torch
    from cosme_ros.cli.main import main
    from cosme_ros.nets.espnetv2 import ESPNetv2Seg

    state = ESPNetv2Seg(s=1.0).state_dict()
    state["bu_dec_l4.merge_layer.3.weight"] = torch.zeros(rows, 10, 1, 1)
    state["bu_dec_l4.merge_layer.3.bias"] = torch.zeros(rows)
    weights = tmp_path / "espnetv2_cut.pth"
    torch.save(state, weights)
    assert (
        main(
            [
                "bundle",
                "create",
                "--teacher",
                "espnetv2",
                "--weights",
                str(weights),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{weights}: the classifier" in err and f"has {rows} output row(s)" in err, err
    assert "Traceback" not in err and not (tmp_path / "b").exists()


def test_a_resumed_command_removes_what_a_killed_run_was_writing(tmp_path):
    """SIGKILL + --resume left hidden .*.tmp.* files inside the bundle."""
    import tempfile
    from bundles import write_scenes
    from cosme_ros import atomic
    from cosme_ros.cli.main import main

    path = _tiny(tmp_path)
    # what a writer killed mid-way leaves (the real helpers' names), and what is not ours
    fd, half = tempfile.mkstemp(prefix=".anomaly.safetensors.", suffix=".tmp.safetensors", dir=path)
    import os

    os.close(fd)
    step = tempfile.mkdtemp(prefix=".memory.", suffix=".tmp", dir=path)
    (path / ".manifest.yaml.old").write_text("x")
    keep = [path / ".hidden_notes", path / "notes.tmp", path / ".a.tmp"]
    for p in keep:
        p.write_text("mine")
    scenes = tmp_path / "scenes"
    write_scenes(scenes, 4)
    assert (
        main(
            [
                "build-memory",
                "--bundle",
                str(path),
                "--data",
                f"images:{scenes}",
                "--k",
                "4",
                "--batch",
                "2",
                "--device",
                "cpu",
                "--resume",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    left = sorted(p.name for p in path.iterdir() if p.name.startswith("."))
    assert left == [".a.tmp", ".hidden_notes"], left
    assert not os.path.exists(half) and not os.path.exists(step)
    assert all(p.exists() for p in keep)
    # train-teacher's: only the temporaries of its own output, beside it
    other = tmp_path / ".other.abcdefgh.tmp"
    other.mkdir()
    mine = tmp_path / ".b.abcdefgh.tmp"
    mine.mkdir()
    assert atomic.remove_temporaries(tmp_path, of="b") == [mine] and other.exists()
