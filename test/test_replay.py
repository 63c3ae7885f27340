"""``cosme replay`` on a short synthetic drive: output bags (mcap and sqlite3), metrics against
``cosme_ros.tools.evaluate``, errors, compressed input, video, interruption.

Small on purpose (6 frames of 96x192, the tiny random DeepLabV3+ at 64x128, one torch thread):
the whole file runs in well under a minute on one core.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bundles import make_tiny_bundle
from cosme_ros import metrics
from cosme_ros.bundle import Bundle
from cosme_ros.cli.main import main
from cosme_ros.data.drive_bag import GT_TOPIC, IMAGE_TOPIC, write_drive_bag
from cosme_ros.data.synth import drive_frames
from cosme_ros.runtime.pipeline import Pipeline
from cosme_ros.tools.replay import output_topics
from cosme_ros.frames import codec
from cosme_ros.frames.render import threshold_mask

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SIZE = (96, 192)
N = 6
SEED = 6  # a drive with anomalies in every frame
OUT = {  # where the node, in namespace /camera, publishes
    "class_mask": "/camera/segmentation/class_mask",
    "color": "/camera/segmentation/color",
    "score": "/camera/anomaly/score",
    "mask": "/camera/anomaly/mask",
    "heatmap": "/camera/anomaly/heatmap",
}
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"


# ----------------------------------------------------------------------------- helpers


def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def read_bag(path):
    """topic → [(bag ns, msgtype, raw bytes, message)], and the metadata."""
    import yaml
    from rosbags.rosbag2 import Reader

    ts = typestore()
    out = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append(
                (t, conn.msgtype, bytes(raw), ts.deserialize_cdr(raw, conn.msgtype))
            )
    meta = yaml.safe_load((Path(path) / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return out, meta


def copy_bag(src, dst, storage, extra=()):
    """``src`` rewritten to ``dst`` in ``storage`` with rosbags, plus ``extra`` messages
    (topic, msgtype, bag ns, message object)."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    ts = typestore()
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Reader(src) as reader, Writer(dst, version=8, storage_plugin=plugin) as writer:
        conns = {}
        for c in reader.connections:
            conns[c.topic] = writer.add_connection(c.topic, c.msgtype, typestore=ts)
        pending = sorted(extra, key=lambda e: e[2])
        for c, t, raw in reader.messages():
            writer.write(conns[c.topic], t, raw)
        for topic, msgtype, t, msg in pending:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], t, ts.serialize_cdr(msg, msgtype))
    return Path(dst)


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def replay(*args):
    return main(["replay", "--device", "cpu", "--precision", "fp32", *map(str, args)])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    frames = list(drive_frames(SEED, N, SIZE))
    bag = root / "drive.bag"
    summary = write_drive_bag(bag, frames)
    sqlite = copy_bag(bag, root / "drive_sqlite.bag", "sqlite3")
    bundle = root / "tiny"
    make_tiny_bundle(bundle)
    stamps = [summary["first_stamp_ns"] + round(i * 1e8) for i in range(N)]
    return {
        "root": root,
        "frames": frames,
        "bag": bag,
        "sqlite": sqlite,
        "bundle": bundle,
        "stamps": stamps,
    }


@pytest.fixture(scope="module")
def pipeline(drive):
    return Pipeline(Bundle.load(drive["bundle"]), method="maxlogit", device="cpu")


@pytest.fixture(scope="module")
def expected(drive, pipeline):
    """The pipeline alone on the drive's frames."""
    return [pipeline(f.image) for f in drive["frames"]]


@pytest.fixture(scope="module")
def mcap_run(drive):
    out, js = drive["root"] / "out_mcap.bag", drive["root"] / "mcap.json"
    assert (
        replay(
            "--bag",
            drive["bag"],
            "--image-topic",
            IMAGE_TOPIC,
            "--gt-topic",
            GT_TOPIC,
            "--bundle",
            drive["bundle"],
            "--out",
            out,
            "--json",
            js,
        )
        == 0
    )
    return out, json.loads(js.read_text())


@pytest.fixture(scope="module")
def extra_bag(drive):
    """The drive plus the same frames as PNG CompressedImage on /camera/image_raw/compressed,
    as bgr8 on /cam_bgr/image_raw, and a std_msgs/String topic /chatter."""
    from cosme_ros.data.drive_bag import image_message

    ts = typestore()
    types = ts.types
    extra = []
    for frame, stamp in zip(drive["frames"], drive["stamps"]):
        raw = image_message(ts, frame.image, "rgb8", stamp)
        ok, png = cv2.imencode(".png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        assert ok
        extra.append(
            (
                IMAGE_TOPIC + "/compressed",
                COMPRESSED,
                stamp,
                types[COMPRESSED](
                    header=raw.header, format="png", data=np.frombuffer(png.tobytes(), np.uint8)
                ),
            )
        )
        extra.append(
            (
                "/cam_bgr/image_raw",
                IMAGE,
                stamp,
                image_message(ts, np.ascontiguousarray(frame.image[..., ::-1]), "bgr8", stamp),
            )
        )
        extra.append(
            ("/chatter", "std_msgs/msg/String", stamp, types["std_msgs/msg/String"](data="hello"))
        )
    # a topic whose second frame the node would reject (32FC1 is not a camera encoding)
    good = image_message(ts, drive["frames"][0].image, "rgb8", drive["stamps"][0])
    bad = image_message(ts, np.zeros((4, 16), np.uint8), "mono8", drive["stamps"][1])
    bad.encoding = "32FC1"
    extra += [
        ("/mixed/image", IMAGE, drive["stamps"][0], good),
        ("/mixed/image", IMAGE, drive["stamps"][1], bad),
    ]
    return copy_bag(drive["bag"], drive["root"] / "extra.bag", "mcap", extra)


# ----------------------------------------------------------------------------- round trip


def check_output_bag(out, drive, expected, storage):
    topics, meta = read_bag(out)
    assert meta["version"] == 8 and meta["storage_identifier"] == storage
    inputs, _ = read_bag(drive["bag"])
    assert set(topics) == {IMAGE_TOPIC, GT_TOPIC, *OUT.values()}
    # the inputs, byte for byte, at their bag times
    for topic in (IMAGE_TOPIC, GT_TOPIC):
        assert [(t, raw) for t, _, raw, _ in topics[topic]] == [
            (t, raw) for t, _, raw, _ in inputs[topic]
        ]
    in_msgs = inputs[IMAGE_TOPIC]
    for key, topic in OUT.items():
        msgs = topics[topic]
        assert len(msgs) == N and all(m[1] == IMAGE for m in msgs)
        for (t, _, _, msg), (t_in, _, _, src) in zip(msgs, in_msgs):
            assert t == t_in  # bag timestamp = input's
            assert msg.header.stamp == src.header.stamp  # header = input's
            assert msg.header.frame_id == src.header.frame_id == "camera"
            assert (msg.height, msg.width) == SIZE
            assert msg.step == msg.width * codec.bytes_per_pixel(msg.encoding)
    for i, res in enumerate(expected):
        score = codec.image_array(topics[OUT["score"]][i][3])
        assert topics[OUT["score"]][i][3].encoding == "32FC1"
        np.testing.assert_allclose(score, res.score, rtol=1e-5, atol=1e-5)
        classes = codec.image_array(topics[OUT["class_mask"]][i][3])
        assert (classes == res.classes).mean() > 0.999
        mask = codec.image_array(topics[OUT["mask"]][i][3])
        # node default auto, and the tiny bundle has no calibrated threshold: an empty mask
        assert not mask.any()
        for key in ("color", "heatmap"):
            assert topics[OUT[key]][i][3].encoding == "rgb8"


def test_round_trip_mcap(drive, expected, mcap_run):
    out, report = mcap_run
    check_output_bag(out, drive, expected, "mcap")
    assert report["frames"] == report["processed"] == N and report["rejected"] == 0
    assert report["out_topics"][OUT["score"]] == {"type": IMAGE, "count": N}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out_mcap.bag")]


def test_round_trip_sqlite3(drive, expected, mcap_run, capsys):
    out, js = drive["root"] / "out_sqlite.bag", drive["root"] / "sqlite.json"
    assert (
        replay(
            "--bag",
            drive["sqlite"],
            "--image-topic",
            IMAGE_TOPIC,
            "--gt-topic",
            GT_TOPIC,
            "--bundle",
            drive["bundle"],
            "--out",
            out,
            "--no-per-frame",
            "--binned",
            "--json",
            js,
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "binned; error at most" in text and "per frame:" not in text
    check_output_bag(out, drive, expected, "sqlite3")
    # the mcap run's exact metrics, within the binned ones' error bounds
    binned, exact = json.loads(js.read_text()), mcap_run[1]
    assert binned["metric_mode"] == "binned" and exact["metric_mode"] == "exact"
    for k, v in exact["metrics"].items():
        assert abs(binned["metrics"][k] - v) <= binned["error_bounds"][k] + 1e-9
    assert binned["per_frame"] == exact["per_frame"]  # per frame: always exact
    # --out-storage converts
    conv = drive["root"] / "out_conv.bag"
    assert (
        replay(
            "--bag",
            drive["sqlite"],
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            drive["bundle"],
            "--out",
            conv,
            "--out-storage",
            "mcap",
        )
        == 0
    )
    assert read_bag(conv)[1]["storage_identifier"] == "mcap"


def test_existing_output_needs_force(drive, mcap_run, capsys):
    out = mcap_run[0]
    assert (
        replay(
            "--bag",
            drive["bag"],
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            drive["bundle"],
            "--out",
            out,
        )
        == 2
    )
    assert "already exists (use --force" in capsys.readouterr().err


# ----------------------------------------------------------------------------- metrics


def test_metrics_equal_evaluation(drive, expected, mcap_run, tmp_path, capsys):
    """Pooled and per-frame metrics = cosme evaluate's on the same frames (as a folder dataset)
    = metrics.pixel_metrics on the pipeline's scores; --gt-masks gives the same."""
    from cosme_ros.data.datasets import open_dataset
    from cosme_ros.tools.evaluate import MultiMethodRunner, evaluate, select_methods

    report = mcap_run[1]
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "labels_masks").mkdir()
    masks255 = tmp_path / "masks255"
    masks255.mkdir()
    for frame, stamp in zip(drive["frames"], drive["stamps"]):
        cv2.imwrite(
            str(tmp_path / "ds" / "images" / f"{stamp}.png"),
            cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
        )
        cv2.imwrite(str(tmp_path / "ds" / "labels_masks" / f"{stamp}.png"), frame.anomaly)
        # the 255 convention: anomaly 255, void another non-zero value (here 128)
        recoded = np.select([frame.anomaly == 1, frame.anomaly == 255], [255, 128], 0)
        cv2.imwrite(str(masks255 / f"{stamp}.png"), recoded.astype(np.uint8))
    bundle = Bundle.load(drive["bundle"])
    scorers, _ = select_methods(bundle, ["maxlogit"])
    ev = evaluate(
        MultiMethodRunner(bundle, scorers, device="cpu"),
        open_dataset(f"folder:{tmp_path / 'ds'}"),
        progress=False,
        log=lambda s: None,
    )
    for k in ("auroc", "ap", "fpr95"):
        assert report["metrics"][k] == pytest.approx(ev.methods["maxlogit"][k], abs=1e-6)
    per_image = {int(r["name"]): r["ap"]["maxlogit"] for r in ev.per_image}
    assert {r["stamp_ns"]: r["ap"] for r in report["per_frame"]} == pytest.approx(
        per_image, abs=1e-6
    )
    direct = metrics.pixel_metrics(
        np.stack([r.score for r in expected]), np.stack([f.anomaly for f in drive["frames"]])
    )
    for k in direct:
        assert report["metrics"][k] == pytest.approx(direct[k], abs=1e-4)
    worst = sorted(report["per_frame"], key=lambda r: (r["ap"], r["index"]))[:5]
    assert report["worst_frames"] == worst
    assert report["unmatched_images"] == report["unmatched_gt"] == 0

    # the same masks as a folder (anomaly = 255), one missing and one without a frame
    os.remove(masks255 / f"{drive['stamps'][0]}.png")
    cv2.imwrite(str(masks255 / "123.png"), np.zeros(SIZE, np.uint8))
    js = tmp_path / "masks.json"
    assert (
        replay(
            "--bag",
            drive["bag"],
            "--image-topic",
            IMAGE_TOPIC,
            "--gt-masks",
            masks255,
            "--gt-anomaly-value",
            255,
            "--bundle",
            drive["bundle"],
            "--json",
            js,
        )
        == 0
    )
    text = capsys.readouterr().out
    folder = json.loads(js.read_text())
    assert folder["unmatched_images"] == 1 and folder["unmatched_gt"] == 1
    assert "1 frame(s) without ground truth, 1 ground-truth mask(s) without a frame" in text
    assert "worst frames by AP" in text and "per frame:" in text
    assert folder["per_frame"] == [r for r in report["per_frame"] if r["index"] > 0]
    rest = metrics.pixel_metrics(
        np.stack([r.score for r in expected[1:]]),
        np.stack([f.anomaly for f in drive["frames"][1:]]),
    )
    for k in rest:
        assert folder["metrics"][k] == pytest.approx(rest[k], abs=1e-4)


# ----------------------------------------------------------------------------- inputs, errors


def test_compressed_and_bgr8_topics_give_the_same_outputs(drive, extra_bag, expected):
    for topic in (IMAGE_TOPIC + "/compressed", "/cam_bgr/image_raw"):
        out = drive["root"] / f"out_{topic.strip('/').replace('/', '_')}.bag"
        assert (
            replay(
                "--bag",
                extra_bag,
                "--image-topic",
                topic,
                "--bundle",
                drive["bundle"],
                "--out",
                out,
            )
            == 0
        )
        topics, _ = read_bag(out)
        ns = "/camera" if topic.startswith("/camera") else "/cam_bgr"
        assert output_topics(topic, topic.endswith("compressed"))["score"] == f"{ns}/anomaly/score"
        assert set(topics) == {topic, *(t.replace("/camera", ns) for t in OUT.values())}
        assert topics[topic][0][1] == (COMPRESSED if "compressed" in topic else IMAGE)
        scores = [codec.image_array(m[3]) for m in topics[f"{ns}/anomaly/score"]]
        assert [stamp_of(m[3]) for m in topics[f"{ns}/anomaly/score"]] == drive["stamps"]
        for got, res in zip(scores, expected):  # PNG is lossless: the same pixels
            np.testing.assert_allclose(got, res.score, rtol=1e-5, atol=1e-5)


def test_rejected_frames_are_counted_and_skipped(drive, extra_bag, tmp_path, capsys):
    out, js = tmp_path / "out.bag", tmp_path / "r.json"
    assert (
        replay(
            "--bag",
            extra_bag,
            "--image-topic",
            "/mixed/image",
            "--bundle",
            drive["bundle"],
            "--out",
            out,
            "--json",
            js,
        )
        == 0
    )
    report = json.loads(js.read_text())
    assert (report["frames"], report["processed"], report["rejected"]) == (2, 1, 1)
    assert "unsupported encoding '32FC1'" in report["rejection"]
    assert "1 frame(s) rejected by the decoder" in capsys.readouterr().out
    topics, _ = read_bag(out)
    assert len(topics["/mixed/image"]) == 2  # the input, whole
    assert [len(topics[f"/mixed/{t.split('/', 2)[2]}"]) for t in OUT.values()] == [1] * 5


def test_output_topics():
    assert output_topics("/camera/image_raw")["class_mask"] == "/camera/segmentation/class_mask"
    assert output_topics("/image")["heatmap"] == "/anomaly/heatmap"
    assert (
        output_topics("/a/b/image_raw/compressed", compressed=True)["mask"] == "/a/b/anomaly/mask"
    )
    assert (
        output_topics("/camera/image_raw", namespace="robot/cam/")["score"]
        == "/robot/cam/anomaly/score"
    )


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def test_missing_and_wrong_topics(drive, extra_bag, capsys):
    assert replay("--bag", extra_bag, "--image-topic", "/nope", "--bundle", drive["bundle"]) == 2
    line = one_error_line(capsys)
    assert "no topic '/nope'" in line and str(extra_bag) in line
    assert "/camera/image_raw [sensor_msgs/msg/Image, 6 msgs]" in line
    assert "/chatter [std_msgs/msg/String, 6 msgs]" in line
    assert replay("--bag", extra_bag, "--image-topic", "/chatter", "--bundle", drive["bundle"]) == 2
    line = one_error_line(capsys)
    assert "'/chatter' is std_msgs/msg/String" in line and COMPRESSED in line
    assert "/camera/anomaly_gt [sensor_msgs/msg/Image" in line
    assert (
        replay(
            "--bag",
            extra_bag,
            "--image-topic",
            IMAGE_TOPIC,
            "--gt-topic",
            IMAGE_TOPIC + "/compressed",
            "--bundle",
            drive["bundle"],
        )
        == 2
    )
    assert "ground-truth topic must be sensor_msgs/msg/Image" in one_error_line(capsys)
    assert (
        replay(
            "--bag",
            drive["root"] / "absent.bag",
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            drive["bundle"],
        )
        == 2
    )
    assert "absent.bag: no such bag" in one_error_line(capsys)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_or_corrupt_bag(drive, tmp_path, storage, capsys):
    import shutil

    src = drive["bag"] if storage == "mcap" else drive["sqlite"]
    bag = tmp_path / "broken.bag"
    shutil.copytree(src, bag)
    (data,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    if storage == "mcap":
        os.truncate(data, data.stat().st_size // 2)  # a recording cut short
    else:
        raw = bytearray(data.read_bytes())
        raw[100:4096] = bytes(3996)  # a damaged database page
        data.write_bytes(bytes(raw))
    out = tmp_path / "out.bag"
    assert (
        replay(
            "--bag", bag, "--image-topic", IMAGE_TOPIC, "--bundle", drive["bundle"], "--out", out
        )
        == 2
    )
    line = one_error_line(capsys)
    assert str(data) in line and "cannot read the bag" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.bag"]


def test_default_bundle(monkeypatch, drive, tmp_path, capsys):
    import cosme_ros.tools.replay as replay_mod

    rclpy = pytest.importorskip("rclpy")  # noqa: F841
    from cosme_ros.ros.node import default_bundle_path

    assert replay_mod.default_bundle_path() == default_bundle_path()
    monkeypatch.setattr(replay_mod, "default_bundle_path", lambda: tmp_path / "no-demo")
    assert main(["replay", "--bag", str(drive["bag"]), "--image-topic", IMAGE_TOPIC]) == 2
    line = one_error_line(capsys)
    assert "default demo bundle" in line and "no-demo" in line and "--bundle" in line


# ----------------------------------------------------------------------------- video


def test_video(drive, tmp_path):
    video = tmp_path / "drive.mp4"
    assert (
        replay(
            "--bag",
            drive["bag"],
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            drive["bundle"],
            "--video",
            video,
        )
        == 0
    )
    cap = cv2.VideoCapture(str(video))
    assert cap.isOpened()
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == N
    assert frames[0].shape == (SIZE[0], 3 * SIZE[1], 3)  # camera | segmentation | heatmap
    # the left panel is the camera frame (mp4v is lossy: compare roughly)
    cam = cv2.cvtColor(frames[2][:, : SIZE[1]], cv2.COLOR_BGR2RGB).astype(np.float32)
    assert np.abs(cam - drive["frames"][2].image).mean() < 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drive.mp4"]


# ----------------------------------------------------------------------------- interruption


@pytest.fixture(scope="module")
def long_bag(drive):
    """200 frames (the drive's six, repeated with new stamps): long enough to interrupt."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from cosme_ros.data.drive_bag import image_message

    ts = typestore()
    path = drive["root"] / "long.bag"
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        c = w.add_connection(IMAGE_TOPIC, IMAGE, typestore=ts)
        for i in range(200):
            stamp = drive["stamps"][0] + i * 10**8
            w.write(
                c,
                stamp,
                ts.serialize_cdr(
                    image_message(ts, drive["frames"][i % N].image, "rgb8", stamp), IMAGE
                ),
            )
    return path


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_no_output(drive, long_bag, tmp_path, sig, code):
    out, video, progress = tmp_path / "out.bag", tmp_path / "v.mp4", tmp_path / "progress.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cosme_ros.cli.main",
            "replay",
            "--bag",
            str(long_bag),
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            str(drive["bundle"]),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--video",
            str(video),
            "--progress-file",
            str(progress),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.exists():
                done = json.loads(progress.read_text())["frames_done"]
                if done >= 3:
                    break
            time.sleep(0.05)
        assert 3 <= done < 200, f"replay did not get going: {proc.poll()}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["progress.json"], left  # no bag, no video, no temporary


def test_ctrl_c_after_the_last_frame_leaves_no_output(drive, tmp_path, monkeypatch):
    """Ctrl-C just after the last frame left the bag and the mp4 but no JSON: now the JSON is
    written from the finished report before anything is renamed, and the outputs appear
    together. The interruption is simulated where the report becomes the JSON text."""
    from cosme_ros.tools import replay as replay_mod

    def interrupted(self, worst=5):
        raise KeyboardInterrupt

    out, video, js = tmp_path / "out.bag", tmp_path / "v.mp4", tmp_path / "r.json"
    args = (
        "--bag",
        drive["bag"],
        "--image-topic",
        IMAGE_TOPIC,
        "--bundle",
        drive["bundle"],
        "--out",
        out,
        "--video",
        video,
        "--json",
        js,
    )
    with monkeypatch.context() as m:
        m.setattr(replay_mod.ReplayReport, "to_json", interrupted)
        assert replay(*args) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing, not even temporaries
    assert replay(*args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bag", "r.json", "v.mp4"]


def test_refine_guided_replays_the_refined_maps(drive, tmp_path, capsys):
    """--refine guided: the output bag carries the refined map the pipeline computes."""
    from cosme_ros.bundle import Bundle
    from cosme_ros.runtime.pipeline import Pipeline

    out, js = tmp_path / "refined.bag", tmp_path / "refined.json"
    assert (
        replay(
            "--bag",
            drive["bag"],
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            drive["bundle"],
            "--refine",
            "guided",
            "--refine-radius",
            "4",
            "--out",
            out,
            "--json",
            js,
        )
        == 0
    )
    assert json.loads(js.read_text())["refine"] == {"refine": "guided", "refine_radius": 4}
    pipe = Pipeline(Bundle.load(drive["bundle"]), method="auto", refine="guided", refine_radius=4)
    topics, _ = read_bag(out)
    for i, frame in enumerate(drive["frames"][:2]):
        score = codec.image_array(topics[OUT["score"]][i][3])
        np.testing.assert_allclose(score, pipe(frame.image).score, rtol=1e-5, atol=1e-5)
    assert (
        replay(
            "--bag",
            drive["bag"],
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            drive["bundle"],
            "--refine-radius",
            "4",
        )
        == 2
    )
    assert "--refine-radius needs --refine guided" in capsys.readouterr().err


def test_anomaly_threshold_auto_is_the_bundles(drive, expected, tmp_path, capsys):
    """--anomaly-threshold defaults to auto, as the node: the bundle's calibrated threshold for
    the method; a number overrides it."""
    import shutil

    bundle = tmp_path / "calibrated"
    shutil.copytree(drive["bundle"], bundle)
    t = float(np.median(np.concatenate([r.score.ravel() for r in expected])))
    Bundle.load(bundle).write_thresholds({"maxlogit": {"value": t}})
    for given, threshold in ((None, t), (t + 0.5, t + 0.5)):
        out = tmp_path / f"out_{given}.bag"
        extra = [] if given is None else ["--anomaly-threshold", given]
        assert (
            replay(
                "--bag",
                drive["bag"],
                "--image-topic",
                IMAGE_TOPIC,
                "--bundle",
                bundle,
                "--method",
                "maxlogit",
                "--out",
                out,
                *extra,
            )
            == 0
        )
        topics, _ = read_bag(out)
        marked = 0
        for i in range(N):
            score = codec.image_array(topics[OUT["score"]][i][3])
            mask = codec.image_array(topics[OUT["mask"]][i][3])
            np.testing.assert_array_equal(mask, threshold_mask(score, threshold))
            marked += int(mask.any())
        assert marked > 0
    with pytest.raises(SystemExit):  # argparse: "'nan' is not finite"
        replay(
            "--bag",
            drive["bag"],
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            bundle,
            "--method",
            "maxlogit",
            "--anomaly-threshold",
            "nan",
        )
    assert "is not finite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- damaged bags


def _mcap_file(bag):
    return next(p for p in bag.iterdir() if p.suffix == ".mcap")


def test_bags_we_write_carry_chunk_crcs_and_damage_is_named(drive, mcap_run, tmp_path, capsys):
    """4 KB of random bytes inside an mcap: replay exited 0 with one frame silently changed,
    and our own bags had CRC 0 on every chunk."""
    import shutil
    import struct
    from rosbags.rosbag2 import Reader
    from cosme_ros.data.bag_crc import MCAP_CHUNK_CRC_OFFSET, mcap_storages

    for bag in (drive["bag"], mcap_run[0]):  # cosme synth --drive, replay --out
        with Reader(bag) as reader:
            chunks = mcap_storages(reader)[0].chunks
            with open(_mcap_file(bag), "rb") as f:
                crcs = []
                for c in chunks:
                    f.seek(c.chunk_start_offset + MCAP_CHUNK_CRC_OFFSET)
                    crcs.append(struct.unpack("<I", f.read(4))[0])
        assert crcs and all(crcs), (bag, crcs)
    # damage the middle of the first chunk's data: the replay stops before any work, naming
    # the file and the damaged range
    damaged = tmp_path / "damaged.bag"
    shutil.copytree(drive["bag"], damaged)
    with Reader(damaged) as reader:
        chunk = mcap_storages(reader)[0].chunks[0]
    data = bytearray(_mcap_file(damaged).read_bytes())
    middle = chunk.chunk_start_offset + chunk.chunk_length // 2
    data[middle : middle + 4096] = (
        np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
    )
    _mcap_file(damaged).write_bytes(bytes(data))
    capsys.readouterr()
    assert (
        replay(
            "--bag",
            damaged,
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            drive["bundle"],
            "--json",
            tmp_path / "r.json",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{_mcap_file(damaged)}: damaged data in bytes {chunk.chunk_start_offset}" in err, err
    assert "checksum" in err and not (tmp_path / "r.json").exists()


def test_a_ground_truth_mask_of_another_size_is_refused(drive, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    for stamp in drive["stamps"]:
        cv2.imwrite(str(masks / f"{stamp}.png"), np.zeros((SIZE[0] // 2, SIZE[1]), np.uint8))
    capsys.readouterr()
    assert (
        replay(
            "--bag",
            drive["bag"],
            "--image-topic",
            IMAGE_TOPIC,
            "--bundle",
            drive["bundle"],
            "--gt-masks",
            masks,
            "--json",
            tmp_path / "r.json",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "ground-truth mask for stamp" in err and f"{SIZE[1]}x{SIZE[0] // 2}" in err, err
    assert not (tmp_path / "r.json").exists()
