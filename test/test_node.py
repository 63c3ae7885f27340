"""cosme_node as its own process over real DDS (localhost discovery, random domain id: see
ros_util), and in-process tests of its policies with a stand-in pipeline."""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE  # noqa: E402
from cosme_ros.frames import codec  # noqa: E402
import ros_util  # noqa: E402
from ros_util import camera_frame, diagnostic_values, restamp  # noqa: E402

pytestmark = pytest.mark.ros

OUTPUTS = {  # topic → (encoding, channels)
    "/segmentation/class_mask": ("mono8", 1),
    "/segmentation/color": ("rgb8", 3),
    "/anomaly/score": ("32FC1", 1),
    "/anomaly/mask": ("mono8", 1),
    "/anomaly/heatmap": ("rgb8", 3),
}
TIME_TOPIC = "/cosme_node/debug/processing_time_ms"
NODE = "/cosme_node"
THRESHOLD = -1.5
START_TIMEOUT = 90.0  # torch import + model load on a busy 2-core machine
DIAG_TIMEOUT = 20.0  # diagnostics come at 1 Hz


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    deeplab = pytest.importorskip("cosme_ros.nets.deeplabv3plus")
    from cosme_ros import bundle

    out = tmp_path_factory.mktemp("node") / "tiny-deeplab"
    bundle.create(
        out,
        arch="deeplabv3plus",
        module=deeplab.build_deeplabv3plus(backbone="resnet18", num_classes=19, output_stride=16),
        input_size=(64, 128),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        class_names=list(CITYSCAPES_CLASSES),
        palette=list(CITYSCAPES_PALETTE),
        void_classes=[],
    )
    return out


@pytest.fixture(scope="module")
def ros():
    r = ros_util.RosSession()
    yield r
    r.close()


def start_node(bundle_dir, remaps=(), params_file=None, **params) -> ros_util.Process:
    params = {"bundle": bundle_dir, "device": "cpu", "anomaly_threshold": THRESHOLD, **params}
    params = {k: v for k, v in params.items() if v is not None}
    return ros_util.Process(ros_util.node_command(params, remaps, params_file))


def wait_ready(proc: ros_util.Process) -> None:
    if not proc.wait_for_output(r"\bready: bundle", START_TIMEOUT):
        proc.stop()
        pytest.fail(f"node did not start:\n{proc.output}")


@pytest.fixture(scope="module")
def node_proc(bundle_dir, ros):
    # The shipped parameters file, as the launch file passes it; -p after it wins.
    proc = start_node(bundle_dir, params_file=ros_util.PARAMS_FILE, processing_budget_ms=1e5)
    wait_ready(proc)
    yield proc
    proc.stop()


@pytest.fixture
def client(ros, node_proc):
    c = ros_util.Client(ros, outputs=(*OUTPUTS, TIME_TOPIC))
    c.wait_connected()
    yield c
    c.close()


@pytest.fixture
def diagnostics(ros, node_proc):
    d = ros_util.DiagnosticsWatch(ros, NODE)
    yield d
    d.close()


def assert_alive(proc: ros_util.Process) -> None:
    assert proc.proc.poll() is None, proc.output
    assert "Traceback" not in proc.output, proc.output


# ----------------------------------------------------------------------------- over DDS


def test_image_comes_back_on_all_topics(client, node_proc):
    msg, rgb = camera_frame(encoding="bgr8")
    out = client.send_until_processed(msg)
    h, w = rgb.shape[:2]
    for topic, (encoding, channels) in OUTPUTS.items():
        m = out[topic]
        assert m.encoding == encoding, topic
        assert (m.height, m.width) == (h, w), topic
        assert m.step == w * channels * (4 if encoding == "32FC1" else 1), topic
        assert len(m.data) == m.step * h, topic
        assert m.header.frame_id == "cam_test", topic
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (msg.header.stamp.sec, 123456)
    classes = codec.image_array(out["/segmentation/class_mask"])
    score = codec.image_array(out["/anomaly/score"])
    mask = codec.image_array(out["/anomaly/mask"])
    color = codec.image_array(out["/segmentation/color"])
    heat = codec.image_array(out["/anomaly/heatmap"])
    assert classes.max() < 19 and score.dtype == np.float32 and np.isfinite(score).all()
    np.testing.assert_array_equal(mask, np.where(score > THRESHOLD, 255, 0))
    np.testing.assert_array_equal(color, np.asarray(CITYSCAPES_PALETTE, np.uint8)[classes])
    assert heat.shape == (h, w, 3) and not np.array_equal(heat, rgb)  # camera + colour map
    assert ros_util.spin_until(client.session.executor, lambda: client.received[TIME_TOPIC], 10)
    assert client.received[TIME_TOPIC][0].data > 0


def test_every_input_encoding_over_dds(client):
    """Each camera encoding comes back on every topic at the camera's size; the colour ones
    decode to exactly the same pixels as rgb8 (same class map and score)."""
    _, rgb = camera_frame(h=40, w=56, seed=7)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    packed = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]),
        "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)]),
        "mono8": grey,
        "bayer_rggb8": grey,
        "bayer_bggr8": grey,
        "yuv422": cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY),
        "yuv422_yuy2": cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2),
    }
    results = {}
    for encoding, pixels in packed.items():
        msg, _ = camera_frame(frame_id=encoding)  # a fresh stamp; pixels replaced below
        msg.height, msg.width, msg.encoding = 40, 56, encoding
        msg.step = 56 * codec.bytes_per_pixel(encoding)
        msg.data = np.ascontiguousarray(pixels).tobytes()
        out = client.send_until_processed(msg)
        for topic, (enc, _) in OUTPUTS.items():
            m = out[topic]
            assert (m.encoding, m.height, m.width) == (enc, 40, 56), (encoding, topic)
            assert m.header.frame_id == encoding
        results[encoding] = (
            codec.image_array(out["/segmentation/class_mask"]),
            codec.image_array(out["/anomaly/score"]),
        )
    for encoding in ("bgr8", "rgba8", "bgra8"):
        np.testing.assert_array_equal(results[encoding][0], results["rgb8"][0], err_msg=encoding)
        np.testing.assert_array_equal(results[encoding][1], results["rgb8"][1], err_msg=encoding)


def _malformed_messages():
    """(name, message, regex the node's rejection reason must match)."""

    def frame(**changes):
        msg, _ = camera_frame(seed=11)
        for k, v in changes.items():
            setattr(msg, k, v)
        return msg

    good = frame()
    huge = frame(height=16384, width=16384, step=16384 * 3)  # claims 805 MB, carries 6.7 kB
    return [
        ("data shorter than step x height", frame(data=bytes(good.data)[:-1]), r"data has \d+"),
        ("step too small", frame(step=good.width * 3 - 1), r"step \d+ is less than"),
        ("width 0", frame(width=0), r"empty image \(0x40\)"),
        ("height 0", frame(height=0), r"empty image \(56x0\)"),
        ("unknown encoding", frame(encoding="rgb161616"), r"unsupported encoding 'rgb161616'"),
        ("16k x 16k claimed", huge, r"16384x16384 has more than max_pixels"),
    ]


def _wait_rejected(client, diagnostics, msg, pattern: str, before: int):
    """Publish ``msg`` until /diagnostics counts one more rejected frame with a matching reason;
    the status that showed it."""

    def counted(s) -> bool:
        v = diagnostic_values(s)
        return int(v["frames rejected"]) > before and re.search(pattern, v["last rejection"])

    return diagnostics.wait_for(
        counted, DIAG_TIMEOUT, between=lambda: client.pub.publish(msg), every=1.5
    )


def test_malformed_messages_rejected_counted_and_survived(client, diagnostics, node_proc, ros):
    first = diagnostics.wait_for(lambda s: True, DIAG_TIMEOUT)
    assert first is not None, "no /diagnostics from the node"
    rejected = int(diagnostic_values(first)["frames rejected"])
    for name, msg, pattern in _malformed_messages():
        status = _wait_rejected(client, diagnostics, msg, pattern, rejected)
        assert status is not None, f"{name}: not counted as rejected\n{node_proc.output[-3000:]}"
        rejected = int(diagnostic_values(status)["frames rejected"])
        assert status.level != b"\x00" and "rejected" in status.message, name  # not OK
        good, _ = camera_frame(seed=3, frame_id=f"after {name}")
        out = client.send_until_processed(good)
        assert out["/anomaly/score"].header.frame_id == f"after {name}"

    # A real image over a lowered size limit, then the limit back up.
    assert ros.set_parameters(NODE, {"max_image_pixels": 10000})[0].successful
    big, _ = camera_frame(h=120, w=160, seed=4)  # 19200 pixels (57 kB: one UDP datagram)
    status = _wait_rejected(
        client, diagnostics, big, r"160x120 has more than max_pixels=10000", rejected
    )
    assert status is not None, node_proc.output[-3000:]
    assert ros.set_parameters(NODE, {"max_image_pixels": 16777216})[0].successful
    client.send_until_processed(restamp(big))
    assert re.search(r"rejected image on /image: ", node_proc.output)  # the (throttled) warning
    assert_alive(node_proc)


def test_parameters_set_at_run_time(client, node_proc, ros):
    described = ros.describe_parameters(NODE, ["bundle", "overlay_alpha", "anomaly_threshold"])
    assert described["bundle"].read_only and not described["anomaly_threshold"].read_only
    assert described["overlay_alpha"].floating_point_range[0].to_value == 1.0

    msg, rgb = camera_frame(seed=5)
    score = codec.image_array(client.send_until_processed(msg)["/anomaly/score"])
    threshold = float(np.median(score))
    results = ros.set_parameters(NODE, {"anomaly_threshold": threshold, "overlay_alpha": 0.0})
    assert all(r.successful for r in results), results
    out = client.send_until_processed(restamp(msg))
    score = codec.image_array(out["/anomaly/score"])
    np.testing.assert_array_equal(
        codec.image_array(out["/anomaly/mask"]), np.where(score > threshold, 255, 0)
    )
    # alpha 0: the heatmap is the camera image itself
    np.testing.assert_array_equal(codec.image_array(out["/anomaly/heatmap"]), rgb)

    for name, value, reason in [
        ("overlay_alpha", 1.5, ""),
        ("anomaly_threshold", float("nan"), "finite"),
        ("heatmap_range", [2.0, 1.0], "lo < hi"),
        ("method", "msp", "read-only"),
    ]:
        result = ros.set_parameters(NODE, {name: value})[0]
        assert not result.successful, name
        assert reason in result.reason, (name, result.reason)
    assert ros.set_parameters(NODE, {"heatmap_range": [-30.0, 0.0]})[0].successful
    results = ros.set_parameters(
        NODE, {"anomaly_threshold": THRESHOLD, "overlay_alpha": 0.5, "heatmap_range": "auto"}
    )
    assert all(r.successful for r in results), results
    out = client.send_until_processed(restamp(msg))
    heat = codec.image_array(out["/anomaly/heatmap"])
    assert not np.array_equal(heat, rgb)
    assert_alive(node_proc)


def test_diagnostics_ok_then_warn_over_budget(client, diagnostics, node_proc, ros):
    frames = iter(range(10**6))

    def feed():
        client.pub.publish(camera_frame(seed=next(frames) % 5)[0])

    ok = diagnostics.wait_for(lambda s: s.level == b"\x00", 30, between=feed, every=0.2)
    assert ok is not None, [(s.level, s.message) for s in diagnostics.statuses[-5:]]
    values = diagnostic_values(ok)
    assert ok.name == "/cosme_node: anomaly segmentation" and ok.hardware_id == "cpu"
    assert values["model"].startswith("tiny-deeplab") and values["method"] == "maxlogit"
    from cosme_ros.runtime.networks import resolve_precision

    assert values["device"] == "cpu" and values["precision"] == resolve_precision("auto", "cpu")
    assert values["networks"] == "eager (the bundle has no engine)"  # engine: auto, none built
    assert values["input topic"] == "/image" and float(values["input rate (Hz)"]) > 0
    assert float(values["time since last frame (s)"]) < 5
    for key in ("frames received", "frames processed", "frames dropped", "frames rejected"):
        assert int(values[key]) >= 0

    assert ros.set_parameters(NODE, {"processing_budget_ms": 0.001})[0].successful
    try:
        warn = diagnostics.wait_for(
            lambda s: s.level == b"\x01" and "over the budget" in s.message,
            30,
            between=feed,
            every=0.2,
        )
        assert warn is not None, [(s.level, s.message) for s in diagnostics.statuses[-5:]]
        assert diagnostic_values(warn)["processing budget (ms)"] == "0.001"
    finally:
        assert ros.set_parameters(NODE, {"processing_budget_ms": 1e5})[0].successful


def test_burst_processes_newest_frame_without_backlog(client, node_proc):
    frames = [camera_frame(seed=i)[0] for i in range(30)]
    for f in frames:
        client.pub.publish(f)
    last = frames[-1]
    client.send_until_processed(last, every=3.0)  # re-sent only if DDS dropped it
    ros_util.spin_until(client.session.executor, lambda: False, 0.5)
    burst = {f.header.stamp.sec for f in frames}
    done = {m.header.stamp.sec for m in client.received["/anomaly/score"]} & burst
    assert last.header.stamp.sec in done
    assert len(done) < len(frames), "every frame of a burst was processed: no newest-frame policy?"


def _compressed(rgb: np.ndarray, ext: str, fmt: str, sec: int) -> CompressedImage:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format=fmt)
    msg.data = buf.tobytes()
    msg.header.frame_id, msg.header.stamp.sec = f"{ext} frame", sec
    return msg


def test_compressed_input_network_resolution_in_a_namespace(bundle_dir, ros):
    """input_transport: compressed in namespace /cam2 with `image` remapped: the node reads
    <remapped image>/compressed, as image_transport names it, and answers at the network's size."""
    proc = start_node(
        bundle_dir,
        remaps={"__ns": "/cam2", "image": "/cam2/camera/image_raw"},
        input_transport="compressed",
        output_resolution="network",
    )
    outputs = [f"/cam2{t}" for t in OUTPUTS]
    try:
        wait_ready(proc)
        assert "listening on /cam2/camera/image_raw/compressed (compressed" in proc.output
        c = ros_util.Client(
            ros,
            outputs,
            image_topic="/cam2/camera/image_raw/compressed",
            image_type=CompressedImage,
        )
        diag = ros_util.DiagnosticsWatch(ros, "/cam2/cosme_node")
        try:
            c.wait_connected()
            _, rgb = camera_frame(h=60, w=90, seed=2)
            for ext, fmt in ((".jpg", "rgb8; jpeg compressed bgr8"), (".png", "png")):
                msg = _compressed(rgb, ext, fmt, restamp(camera_frame()[0]).header.stamp.sec)
                out = c.send_until_processed(msg)
                for topic, (encoding, channels) in OUTPUTS.items():
                    m = out[f"/cam2{topic}"]
                    assert (m.encoding, m.height, m.width) == (encoding, 64, 128), topic
                    assert m.step == 128 * channels * (4 if encoding == "32FC1" else 1)
                    assert m.header.frame_id == f"{ext} frame"
            first = diag.wait_for(lambda s: True, DIAG_TIMEOUT)
            assert first is not None
            rejected = int(diagnostic_values(first)["frames rejected"])
            corrupt = _compressed(rgb, ".jpg", "jpeg", 1)
            corrupt.data = bytes(corrupt.data)[:200] + bytes(300)  # header intact, data broken
            bomb = _compressed(np.zeros((8, 8, 3), np.uint8), ".png", "png", 2)
            data = bytearray(bytes(bomb.data))
            data[16:24] = (16384).to_bytes(4, "big") * 2  # IHDR says 16384x16384
            bomb.data = bytes(data)
            for msg, pattern in (
                (corrupt, r"undecodable compressed data"),
                (bomb, r"16384x16384 has more than max_pixels"),
            ):

                def counted(s, pattern=pattern):
                    v = diagnostic_values(s)
                    return int(v["frames rejected"]) > rejected and re.search(
                        pattern, v["last rejection"]
                    )

                status = diag.wait_for(
                    counted, DIAG_TIMEOUT, every=1.5, between=lambda msg=msg: c.pub.publish(msg)
                )
                assert status is not None, (pattern, proc.output[-3000:])
                rejected = int(diagnostic_values(status)["frames rejected"])
            good = _compressed(rgb, ".jpg", "jpeg", restamp(camera_frame()[0]).header.stamp.sec)
            c.send_until_processed(good)
            assert_alive(proc)
            # start-up says what it loads, and the final summary carries the node's full name
            assert re.search(
                r"\[cam2\.cosme_node\]: loading bundle \S+ \(method auto", proc.output
            ), proc.output[:2000]
            proc.interrupt()
            assert proc.wait(15) == 0, proc.output[-2000:]
            assert proc.wait_for_output(
                r"\[cam2\.cosme_node\]: frames: received \d+", 1
            ), proc.output[-2000:]
        finally:
            diag.close()
            c.close()
    finally:
        proc.stop()


def test_refine_guided_publishes_the_pipelines_refined_map(bundle_dir, ros):
    """refine: guided over DDS: the published score is the refined map the pipeline computes
    for that frame (and not the plain one)."""
    from cosme_ros.bundle import Bundle
    from cosme_ros.runtime.pipeline import Pipeline

    # In a namespace of its own: the module's node answers on the global topics.
    proc = start_node(
        bundle_dir,
        remaps={"__ns": "/refined"},
        refine="guided",
        refine_radius=4,
        precision="fp32",
        method="maxlogit",
    )
    try:
        wait_ready(proc)
        assert "(refine guided, radius 4)" in proc.output
        c = ros_util.Client(ros, [f"/refined{t}" for t in OUTPUTS], image_topic="/refined/image")
        try:
            c.wait_connected()
            msg, rgb = camera_frame(encoding="rgb8", seed=5)
            score = codec.image_array(c.send_until_processed(msg)["/refined/anomaly/score"])
        finally:
            c.close()
        bundle = Bundle.load(bundle_dir)
        refined = Pipeline(bundle, method="maxlogit", refine="guided", refine_radius=4)(rgb).score
        plain = Pipeline(bundle, method="maxlogit")(rgb).score
        np.testing.assert_allclose(score, refined, rtol=1e-4, atol=1e-4)
        assert np.abs(score - plain).max() > 1e-2
        assert_alive(proc)
    finally:
        proc.stop()


def test_sigint_exits_cleanly(bundle_dir, ros):
    proc = start_node(bundle_dir)
    try:
        wait_ready(proc)
        c = ros_util.Client(ros, outputs=("/anomaly/score",))
        c.wait_connected()
        bad, _ = camera_frame()
        bad.encoding = "no_such_encoding"
        ros_util.spin_until(
            c.session.executor,
            lambda: "unsupported encoding" in proc.output,
            20,
            between=lambda: c.pub.publish(bad),
            every=2.0,
        )
        c.close()
        assert "unsupported encoding 'no_such_encoding'" in proc.output
        t0 = time.monotonic()
        proc.interrupt()
        code = proc.wait(15)
        assert code == 0, f"exit status {code} after SIGINT:\n{proc.output}"
        assert time.monotonic() - t0 < 10
        assert "Traceback" not in proc.output
        assert proc.wait_for_output(
            r"frames: received \d+, processed 0, dropped \d+, " r"rejected [1-9]", 1
        ), proc.output
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "params,message",
    [
        ({"overlay_alpha": "2.0"}, "parameter 'overlay_alpha': 2.0 is out of range"),
        ({"method": "nonsense"}, "parameter 'method': unknown method 'nonsense'"),
        ({"method": "cosme[refine=guided]"}, "refine is a parameter of its own here"),
        ({"method": "cosme[fusion=nonsense]"}, "unknown CosMe fusion 'nonsense'"),
        ({"precision": "fp16"}, "parameter 'precision': fp16 needs the TensorRT engines"),
    ],
)
def test_invalid_parameter_fails_start_up(bundle_dir, params, message):
    proc = start_node(bundle_dir, **params)
    code = proc.wait(START_TIMEOUT)
    if code is None:
        proc.stop()
        pytest.fail(f"node kept running with {params}:\n{proc.output}")
    assert code == 1
    assert message in proc.output, proc.output
    assert "Traceback" not in proc.output, proc.output


# ----------------------------------------------------------------------------- in process


class FakePipeline:
    """Stands in for Pipeline: records the frames it gets, answers with constant maps."""

    def __init__(self, bundle, method, device, input_size=None, precision="fp32", **refine):
        self.bundle, self.method, self.precision = bundle, method, precision
        self.device, self.input_size = "cpu", tuple(input_size or bundle.input_size)
        self.calls = []

    def __call__(self, rgb, out_size=None):
        from cosme_ros.runtime.pipeline import Result

        self.calls.append(rgb.copy())
        h, w = out_size or rgb.shape[:2]
        return Result(classes=np.zeros((h, w), np.uint8), score=np.ones((h, w), np.float32))


def make_node(ros, bundle_dir, context=None, namespace="/fake", **params):
    from cosme_ros.ros.node import CosmeNode

    overrides = [Parameter(k, value=v) for k, v in {"bundle": str(bundle_dir), **params}.items()]
    return CosmeNode(
        context=context or ros.context,
        pipeline_factory=FakePipeline,
        parameter_overrides=overrides,
        namespace=namespace,
    )


@pytest.fixture
def fake_node(ros, bundle_dir):
    node = make_node(ros, bundle_dir)
    node.pipeline.calls.clear()  # the warm-up frame
    yield node
    node.destroy_node()


def test_only_newest_frame_is_processed(fake_node, monkeypatch):
    from cosme_ros.frames import render as viz

    monkeypatch.setattr(viz, "colorize", lambda *a: pytest.fail("colorize without subscriber"))
    monkeypatch.setattr(viz, "heatmap", lambda *a: pytest.fail("heatmap without subscriber"))
    frames = [camera_frame(h=8, w=10, seed=i) for i in range(3)]
    for msg, _ in frames:
        fake_node._on_image(msg)
    assert (fake_node.stats.received, fake_node.stats.dropped) == (3, 2)
    fake_node._process_latest()
    fake_node._process_latest()  # nothing new: no second run
    assert len(fake_node.pipeline.calls) == 1
    np.testing.assert_array_equal(fake_node.pipeline.calls[0], frames[-1][1])
    assert fake_node.stats.processed == 1


def test_malformed_rejected_on_arrival_keeps_the_pending_frame(fake_node):
    good, rgb = camera_frame(h=8, w=10, seed=1)
    fake_node._on_image(good)
    bad, _ = camera_frame(h=8, w=10)
    bad.step = 3
    fake_node._on_image(bad)  # rejected on arrival: the good frame stays queued
    huge, _ = camera_frame(h=8, w=10)
    huge.height = huge.width = 16384  # short data: refused on the header, nothing allocated
    fake_node._on_image(huge)
    assert (fake_node.stats.rejected, fake_node.stats.dropped) == (2, 0)
    assert "16384x16384 has more than max_pixels" in fake_node.monitor.last_rejection
    fake_node._process_latest()
    assert len(fake_node.pipeline.calls) == 1
    np.testing.assert_array_equal(fake_node.pipeline.calls[0], rgb)
    fake_node.set_parameters([Parameter("max_image_pixels", value=79)])
    fake_node._on_image(camera_frame(h=8, w=10)[0])
    assert fake_node.stats.rejected == 3 and fake_node.stats.received == 4


def test_corrupt_compressed_rejected_by_the_worker(ros, bundle_dir):
    node = make_node(ros, bundle_dir, input_transport="compressed")
    try:
        node.pipeline.calls.clear()
        assert node._sub.topic_name == "/fake/image/compressed"
        msg = _compressed(np.zeros((8, 8, 3), np.uint8), ".jpg", "jpeg", 1)
        msg.data = bytes(msg.data)[:100] + bytes(50)  # cut before the frame header
        node._on_compressed(msg)
        node._process_latest()
        assert node.stats.rejected == 1 and not node.pipeline.calls
        assert "refused: JPEG without a frame header" in node.monitor.last_rejection
        msg = _compressed(np.zeros((8, 8, 3), np.uint8), ".png", "png", 1)
        msg.data = bytes(msg.data)[:40] + bytes(50)  # header intact, data broken
        node._on_compressed(msg)
        node._process_latest()
        assert node.stats.rejected == 2 and not node.pipeline.calls
        assert "undecodable" in node.monitor.last_rejection
    finally:
        node.destroy_node()


def test_read_only_parameters_cannot_change(fake_node):
    result = fake_node.set_parameters([Parameter("method", value="msp")])[0]
    assert not result.successful


def test_integers_are_accepted_for_double_parameters(fake_node, ros, bundle_dir):
    """`ros2 param set /cosme_node processing_budget_ms 50` sends an integer; rclpy refused it
    for a double ("Wrong parameter type, expected '3' got '2'")."""
    for name, value in (("processing_budget_ms", 50), ("overlay_alpha", 1)):
        assert fake_node.set_parameters([Parameter(name, value=value)])[0].successful, name
        got = fake_node.get_parameter(name)
        assert got.type_ == Parameter.Type.DOUBLE and got.value == float(value), name
    assert not fake_node.set_parameters([Parameter("overlay_alpha", value=2)])[0].successful
    assert not fake_node.set_parameters([Parameter("max_image_pixels", value=1.5)])[
        0
    ].successful  # an integer parameter still takes integers only
    node = make_node(ros, bundle_dir, overlay_alpha=1, processing_budget_ms=20)  # a file's
    try:
        assert node.get_parameter("overlay_alpha").value == 1.0
        assert node.get_parameter("processing_budget_ms").value == 20.0
    finally:
        node.destroy_node()


def test_anomaly_threshold_follows_the_bundle_and_method(ros, bundle_dir, tmp_path):
    """anomaly_threshold: auto takes the bundle's calibrated threshold for the method as the node
    runs it (refinement included); a number overrides it; without one the mask stays empty (an
    infinite threshold) and the node says why, in its log and on /diagnostics."""
    from cosme_ros.bundle import Bundle
    from cosme_ros.frames.render import render_outputs

    calibrated = tmp_path / "calibrated"
    shutil.copytree(bundle_dir, calibrated)
    Bundle.load(calibrated).write_thresholds({"maxlogit": {"value": -3.5, "fpr": 0.01}})
    node = make_node(ros, calibrated, anomaly_threshold="auto")
    try:
        assert node._threshold() == (-3.5, "-3.5 (bundle, maxlogit)")
        assert node.set_parameters([Parameter("anomaly_threshold", value=2)])[0].successful
        assert node._threshold() == (2.0, "2 (parameter)")
        assert node.set_parameters([Parameter("anomaly_threshold", value="auto")])[0].successful
        assert node._threshold()[0] == -3.5
    finally:
        node.destroy_node()
    node = make_node(ros, calibrated, anomaly_threshold="auto", refine="guided")
    try:
        value, why = node._threshold()
        assert value == math.inf and "no calibrated threshold for maxlogit[refine=guided]" in why
        score = np.full((4, 6), 1e30, np.float32)
        mask = render_outputs(
            np.zeros((4, 6, 3), np.uint8),
            np.zeros((4, 6), np.uint8),
            score,
            {"mask"},
            threshold=value,
            alpha=0.5,
            palette=node.palette,
            heat_range=(0.0, 1.0),
        )["mask"][0]
        assert not mask.any()
    finally:
        node.destroy_node()


def test_no_parameter_can_be_unset(fake_node):
    """Setting a dynamically typed parameter to NOT_SET used to succeed and undeclare it; every
    later frame with a heatmap subscriber then failed until a restart."""
    for name in ("heatmap_range", "anomaly_threshold", "input_size"):
        result = fake_node.set_parameters([Parameter(name)])[0]
        assert not result.successful, name
        assert fake_node.has_parameter(name), name
    result = fake_node.set_parameters([Parameter("heatmap_range")])[0]  # dynamically typed
    assert "parameter 'heatmap_range': cannot be unset" in result.reason
    assert fake_node.get_parameter("heatmap_range").value == "auto"
    assert fake_node.set_parameters([Parameter("heatmap_range", value=[0.0, 1.0])])[0].successful
    result = fake_node.set_parameters([Parameter("overlay_alpha", value=1.5)])[0]
    assert not result.successful
    assert fake_node.set_parameters([Parameter("overlay_alpha", value=0.25)])[0].successful
    for value in ([1.0], [3.0, 3.0], "sometimes", [float("inf"), 1.0]):
        assert not fake_node.set_parameters([Parameter("heatmap_range", value=value)])[
            0
        ].successful, value
    for value in ([0.0, 2.0], [-1, 4], "auto"):
        assert fake_node.set_parameters([Parameter("heatmap_range", value=value)])[
            0
        ].successful, value


@pytest.mark.parametrize(
    "params,message",
    [
        ({"input_size": "big"}, "parameter 'input_size': 'big' is not HxW"),
        ({"input_size": [16, 64]}, "parameter 'input_size': [16, 64]: height and width must be"),
        ({"input_size": [64, 128, 3]}, "parameter 'input_size'"),
        ({"output_resolution": "half"}, "parameter 'output_resolution': unknown value 'half'"),
        ({"input_transport": "theora"}, "parameter 'input_transport': unknown value 'theora'"),
        ({"input_qos": "FAST"}, "parameter 'input_qos': unknown value 'FAST'"),
        ({"precision": "fp16"}, "parameter 'precision': fp16 needs the TensorRT engines"),
        ({"device": "tpu"}, "parameter 'device': unknown value 'tpu'"),
        ({"refine": "blur"}, "parameter 'refine': unknown value 'blur'"),
        ({"refine_radius": 0}, "parameter 'refine_radius': 0 is out of range"),
        ({"heatmap_range": [1.0, -1.0]}, "parameter 'heatmap_range': [1.0, -1.0]: need finite lo"),
        ({"anomaly_threshold": float("nan")}, "parameter 'anomaly_threshold': nan is not a finite"),
        ({"processing_budget_ms": -1.0}, "parameter 'processing_budget_ms': -1.0 is out of range"),
        ({"max_image_pixels": 0}, "parameter 'max_image_pixels': 0 is out of range"),
        (
            {"anomaly_threshold": "high"},
            "parameter 'anomaly_threshold': 'high' is neither 'auto' " "nor a number",
        ),
        ({"overlay_alpha": "high"}, "parameter 'overlay_alpha': must be a number"),
        (
            {"bundle": "/nonexistent/bundle"},
            "parameter 'bundle': /nonexistent/bundle: not a bundle",
        ),
    ],
)
def test_start_up_validation_names_the_parameter(ros, bundle_dir, params, message):
    from cosme_ros.ros.node import StartupError

    with pytest.raises(StartupError) as err:
        make_node(ros, bundle_dir, **params).destroy_node()
    assert message in str(err.value)


def test_missing_default_bundle_says_how_to_get_one(ros, bundle_dir, tmp_path, monkeypatch):
    from cosme_ros.ros import node as node_mod

    monkeypatch.setattr(node_mod, "default_bundle_path", lambda: tmp_path / "models" / "demo")
    with pytest.raises(node_mod.StartupError) as err:
        make_node(ros, bundle_dir, bundle="").destroy_node()
    assert "parameter 'bundle' is not set and the default demo bundle" in str(err.value)
    assert "build_demo_bundle.sh" in str(err.value)


def test_method_auto_is_the_best_the_bundle_supports(ros, bundle_dir):
    node = make_node(ros, bundle_dir)  # the tiny bundle has neither memory nor student
    try:
        assert node.settings.method == "maxlogit" and node.pipeline.method == "maxlogit"
    finally:
        node.destroy_node()


@pytest.mark.parametrize("value", ["96x160", [96, 160], " 96 X 160 "])
def test_input_size_forms(ros, bundle_dir, value):
    node = make_node(ros, bundle_dir, input_size=value)
    try:
        assert node.pipeline.input_size == (96, 160)
        assert node.pipeline.calls[0].shape == (96, 160, 3)  # warm-up at that size
    finally:
        node.destroy_node()


def test_default_bundle_is_used_for_empty_bundle(ros, bundle_dir, monkeypatch):
    from cosme_ros.ros import node as node_mod

    monkeypatch.setattr(node_mod, "default_bundle_path", lambda: Path(bundle_dir))
    n = make_node(ros, bundle_dir, bundle="")
    try:
        assert n.settings.bundle_is_default and Path(n.pipeline.bundle.path) == Path(bundle_dir)
    finally:
        n.destroy_node()


def test_params_file_configures_a_namespaced_node(ros, bundle_dir):
    """config/cosme.yaml (`/**`) applies to a node in any namespace, declares nothing unknown and
    passes the node's own validation."""
    from cosme_ros.ros.node import PARAMS

    listed = yaml.safe_load(ros_util.PARAMS_FILE.read_text())["/**"]["ros__parameters"]
    assert set(listed) == {p.name for p in PARAMS}
    context = rclpy.Context()
    rclpy.init(
        context=context,
        domain_id=ros_util.DOMAIN_ID,
        args=["--ros-args", "--params-file", str(ros_util.PARAMS_FILE)],
        signal_handler_options=rclpy.signals.SignalHandlerOptions.NO,
    )
    try:
        node = make_node(ros, bundle_dir, context=context, namespace="/cam_left")
        try:
            for name, value in listed.items():
                if name != "bundle":
                    assert node.get_parameter(name).value == value, name
            assert node.get_parameter("heatmap_range").value == "auto"
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_measure_node_overhead(bundle_dir):
    from cosme_ros.tools.bench.overhead import measure_node_overhead

    result = measure_node_overhead(bundle_dir, size=(72, 128), frames=2)
    assert result["camera"] == [72, 128] and result["output_size"] == [72, 128]
    assert result["published"] and result["network_input"] == [64, 128]
    for key in (
        "pipeline_only_ms",
        "node_decode_ms",
        "node_render_ms",
        "node_encode_ms",
        "node_publish_ms",
        "node_total_ms",
    ):
        assert result[key] >= 0, key
    assert result["node_total_ms"] >= result["node_pipeline_ms"]
    small = measure_node_overhead(
        bundle_dir, size=(72, 128), frames=1, output_resolution="network", publish=False
    )
    assert small["output_size"] == [64, 128] and small["node_publish_ms"] < 1.0


def test_time_since_last_frame_is_on_the_node_clock(ros, bundle_dir):
    """Under use_sim_time (bag replay) "time since the last frame" is simulated time: a paused
    bag is not a silent camera."""
    from rclpy.time import Time

    node = make_node(ros, bundle_dir, use_sim_time=True)
    sent = []
    node._diag_pub.publish = sent.append
    clock = node.get_clock()
    try:
        assert clock.ros_time_is_active
        clock._set_ros_time_is_active(True)
        clock.set_ros_time_override(Time(seconds=100))
        node._publish_diagnostics()
        assert sent[-1].status[0].message.startswith("waiting for the first image")
        node._on_image(camera_frame(h=8, w=10)[0])
        node._process_latest()
        clock.set_ros_time_override(Time(seconds=103, nanoseconds=250_000_000))
        node._publish_diagnostics()  # wall time: a few ms; simulated: 3.25 s
        status = sent[-1].status[0]
        assert diagnostic_values(status)["time since last frame (s)"] == "3.250"
        assert "no image for 3.2 s" in status.message and status.level == b"\x01"
        assert (sent[-1].header.stamp.sec, sent[-1].header.stamp.nanosec) == (103, 250_000_000)
    finally:
        node.destroy_node()
