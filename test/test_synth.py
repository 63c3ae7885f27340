"""The synthetic world: exact labels, anomalies only in test, determinism, files, the drive bag."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cosme_ros.cli.main import main as cosme
from cosme_ros.data.synth import ANOMALY_FAMILIES, render_frame
from cosme_ros.data.synth.dataset import read_objects, write_split
from cosme_ros.data.synth.drive import drive_frames

SMALL = (96, 192)
VALID_IDS = set(range(19)) | {255}


def read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


# ----------------------------------------------------------------------------- frames


def test_same_seed_same_bytes_other_seed_other_frame():
    a = render_frame(5, "test", 3, SMALL)
    b = render_frame(5, "test", 3, SMALL)
    for x, y in ((a.image, b.image), (a.semantic, b.semantic), (a.anomaly, b.anomaly)):
        assert x.tobytes() == y.tobytes()
    assert a.objects == b.objects
    c = render_frame(6, "test", 3, SMALL)
    d = render_frame(5, "test", 4, SMALL)
    e = render_frame(5, "val", 3, SMALL)
    for other in (c, d, e):
        assert other.image.tobytes() != a.image.tobytes()


def test_labels_and_anomaly_masks_are_consistent():
    for i in range(8):
        f = render_frame(1, "test", i, SMALL)
        assert f.image.shape == SMALL + (3,) and f.image.dtype == np.uint8
        assert f.semantic.shape == SMALL and f.anomaly.shape == SMALL
        assert set(np.unique(f.semantic).tolist()) <= VALID_IDS
        assert set(np.unique(f.anomaly).tolist()) <= {0, 1, 255}
        hit = f.anomaly == 1
        assert hit.sum() > 0, f"test frame {i} shows no anomaly"
        assert (f.semantic[hit] == 255).all()  # anomalies have no trainId
        assert (f.anomaly[f.semantic != 255] == 0).all()  # labelled pixels are in-distribution
        assert f.anomaly_families and set(f.anomaly_families) <= set(ANOMALY_FAMILIES)
        visible = {o["family"] for o in f.objects if o["anomaly"] and o["pixels"] > 0}
        assert visible == set(f.anomaly_families)
        # Labels are rendered without antialiasing: the only void in-distribution pixels are
        # poles too thin to label (MIN_LABELLED_WIDTH), a small share.
        assert ((f.semantic == 255) & ~hit).mean() < 0.01


def test_only_poles_below_the_labelled_width_are_void():
    """A pole 1 pixel wide is drawn but void; the same street at a higher resolution labels it."""

    def void_share(size):
        shares = []
        for i in range(6):
            f = render_frame(5, "train", i, size)
            shares.append((f.semantic == 255).mean())
        return float(np.mean(shares))

    small, large = void_share((96, 192)), void_share((384, 768))
    assert 0 < small < 0.01
    assert large < small / 3


@pytest.mark.parametrize("split", ["train", "val"])
def test_no_anomaly_family_outside_the_test_split(split):
    for i in range(10):
        f = render_frame(2, split, i, SMALL)
        assert not (f.anomaly == 1).any()
        assert not set(f.families) & set(ANOMALY_FAMILIES)
        assert not any(o["anomaly"] for o in f.objects)
        assert set(np.unique(f.semantic).tolist()) <= VALID_IDS


def test_every_test_family_appears_and_sizes_vary():
    seen, heights = set(), []
    for i in range(24):
        f = render_frame(3, "test", i, (128, 256))
        seen |= set(f.anomaly_families)
        heights += [o["bbox"][3] - o["bbox"][1] for o in f.objects if o["anomaly"] and o["pixels"]]
    assert seen == set(ANOMALY_FAMILIES)
    heights = np.asarray(heights)
    assert heights.min() < 10 and heights.max() > 30  # some small and far, some near


def test_main_classes_appear_over_twenty_train_images():
    present = set()
    for i in range(20):
        present |= set(np.unique(render_frame(0, "train", i, (128, 256)).semantic).tolist())
    main = {
        "road",
        "sidewalk",
        "building",
        "pole",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "car",
        "truck",
        "bus",
    }
    from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES

    missing = {c for c in main if CITYSCAPES_CLASSES.index(c) not in present}
    assert not missing, f"classes never drawn: {missing}"


def test_hard_in_distribution_cases_in_train():
    light, odd, wet = set(), set(), False
    for i in range(40):
        c = render_frame(4, "train", i, (32, 64)).conditions
        light.add(c["light"])
        odd |= set(c["odd_colours"])
        wet |= c["wet"]
    assert light == {"day", "overcast", "dusk"}
    assert {"car", "building"} <= odd and wet


def test_nearer_objects_are_lower_and_larger():
    objs = []
    for i in range(10):
        objs += [
            o
            for o in render_frame(7, "train", i, SMALL).objects
            if o["family"] in ("car", "person", "tree", "sign", "lamp") and o["depth"] > 2
        ]
    bottom = np.array([o["bbox"][3] for o in objs])
    height = np.array([o["bbox"][3] - o["bbox"][1] for o in objs])
    depth = np.array([o["depth"] for o in objs])
    low = bottom > np.median(bottom)
    assert height[low].mean() > 1.5 * height[~low].mean()
    assert np.corrcoef(bottom, height)[0, 1] > 0.3
    assert np.corrcoef(1.0 / depth, height)[0, 1] > 0.5


def test_one_street_at_every_size():
    small, large = render_frame(9, "train", 0, (48, 96)), render_frame(9, "train", 0, (192, 384))
    down = cv2.resize(large.semantic, (96, 48), interpolation=cv2.INTER_NEAREST)
    assert (down == small.semantic).mean() > 0.8


# ----------------------------------------------------------------------------- files


def test_split_files_do_not_depend_on_workers(tmp_path):
    write_split(tmp_path / "w1", "test", 5, 11, (64, 128), workers=1)
    write_split(tmp_path / "w2", "test", 5, 11, (64, 128), workers=2)
    one = tmp_path / "w1"
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert {str(p.parent) for p in files} == {".", "images", "semantic", "labels_masks"}
    assert len(files) == 3 * 5 + 2
    for rel in files:
        assert (tmp_path / "w1" / rel).read_bytes() == (tmp_path / "w2" / rel).read_bytes(), rel


def test_cli_writes_a_split_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "test"
    args = [
        "synth",
        "--out",
        str(out),
        "--split",
        "test",
        "--n",
        "3",
        "--seed",
        "4",
        "--size",
        "64x128",
        "--json",
        str(tmp_path / "s.json"),
    ]
    assert cosme(args) == 0
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == ["000000.png", "000001.png", "000002.png"]
    meta = yaml.safe_load((out / "meta.yaml").read_text())
    assert (meta["seed"], meta["split"], meta["n"], meta["size"]) == (4, "test", 3, [64, 128])
    assert meta["version"] and meta["kind"] == "synthetic"
    for name in names:
        image = read_png(out / "images" / name)
        sem = read_png(out / "semantic" / name)
        mask = read_png(out / "labels_masks" / name)
        frame = render_frame(4, "test", int(name[:6]), (64, 128))
        assert np.array_equal(image, frame.image) and np.array_equal(sem, frame.semantic)
        assert np.array_equal(mask, frame.anomaly) and (mask == 1).any()
    records = read_objects(out)
    assert [r["id"] for r in records] == ["000000", "000001", "000002"]
    assert all(set(r["families"]) & set(ANOMALY_FAMILIES) for r in records)
    assert json.loads((tmp_path / "s.json").read_text())["n"] == 3
    capsys.readouterr()
    # Refuses to overwrite: one error line, exit 2, nothing changed.
    before = (out / "images" / "000000.png").read_bytes()
    assert cosme(args[:-2] + ["--seed", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--force" in err[0]
    assert (out / "images" / "000000.png").read_bytes() == before
    assert cosme(args[:-2] + ["--seed", "5", "--force"]) == 0
    assert (out / "images" / "000000.png").read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_cli_argument_errors(tmp_path, capsys):
    for bad in (
        ["--n", "2"],  # neither --split nor --drive
        ["--n", "0", "--split", "train"],
        ["--n", "2", "--split", "train", "--drive"],
        ["--n", "2", "--split", "train", "--workers", "0"],
    ):
        assert cosme(["synth", "--out", str(tmp_path / "x")] + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "x").exists()


def test_test_split_is_a_folder_benchmark(tmp_path):
    datasets = pytest.importorskip("cosme_ros.data.datasets")
    write_split(tmp_path / "t", "test", 2, 0, (64, 128))
    folder = datasets.open_dataset(f"folder:{tmp_path / 't'}")
    synthetic = datasets.open_dataset(f"synthetic:{tmp_path / 't'}")
    assert len(folder) == len(synthetic) == 2
    assert np.array_equal(folder[0].anomaly, synthetic[0].anomaly)
    assert (folder[0].anomaly == 1).any()


# ----------------------------------------------------------------------------- the drive


def test_drive_anomalies_approach_and_grow():
    """Anomalies appear ahead, small, and grow as the camera drives towards them. One drive can
    pass a single far-off anomaly beside the road, so the growth is asserted over several."""
    growth = []
    for seed in range(1, 7):
        frames = list(drive_frames(seed, 30, SMALL, fps=10.0))
        pixels = np.array([(f.anomaly == 1).sum() for f in frames])
        assert (pixels > 0).mean() > 0.5, seed
        growth.append(pixels.max() / pixels[pixels > 0][0])
        for f in frames:
            assert (f.semantic[f.anomaly == 1] == 255).all()
    assert np.median(growth) > 2 and max(growth) > 4, growth
    # Consecutive frames of one street: far more alike than frames of different streets.
    same = np.mean([(a.semantic == b.semantic).mean() for a, b in zip(frames, frames[1:])])
    other = (frames[0].semantic == render_frame(0, "train", 0, SMALL).semantic).mean()
    assert same > 0.8 and same > other + 0.2


def test_drive_bag_round_trip(tmp_path, capsys):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    bag = tmp_path / "drive.bag"
    n, size = 12, (64, 128)
    assert (
        cosme(
            [
                "synth",
                "--drive",
                "--out",
                str(bag),
                "--n",
                str(n),
                "--seed",
                "8",
                "--size",
                "64x128",
                "--fps",
                "10",
            ]
        )
        == 0
    )
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.mcap"))
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8 and meta["storage_identifier"] == "mcap"
    frames = list(drive_frames(8, n, size, fps=10.0))
    ts = get_typestore(Stores.ROS2_HUMBLE)
    got = {"/camera/image_raw": [], "/camera/anomaly_gt": []}
    with Reader(bag) as reader:
        image = "sensor_msgs/msg/Image"
        assert {c.topic: c.msgtype for c in reader.connections} == {
            "/camera/image_raw": image,
            "/camera/anomaly_gt": image,
        }
        for conn, stamp, raw in reader.messages():
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
            assert msg.header.frame_id == "camera"
            got[conn.topic].append((stamp, msg))
    for topic, encoding, channels in (
        ("/camera/image_raw", "rgb8", 3),
        ("/camera/anomaly_gt", "mono8", 1),
    ):
        msgs = got[topic]
        assert len(msgs) == n
        stamps = np.array([s for s, _ in msgs])
        assert (np.diff(stamps) == 100_000_000).all()
        for (stamp, msg), frame in zip(msgs, frames):
            assert msg.encoding == encoding and (msg.height, msg.width) == size
            assert msg.step == size[1] * channels
            want = frame.image if channels == 3 else frame.anomaly
            assert bytes(msg.data) == want.tobytes()
    assert any((f.anomaly == 1).any() for f in frames)
    capsys.readouterr()
    assert cosme(["synth", "--drive", "--out", str(bag), "--n", "2", "--size", "64x128"]) == 2
    assert "already exists" in capsys.readouterr().err
