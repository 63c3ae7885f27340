"""cosme_node: in-process unit tests of the frame policy, and the node as its own process over
real DDS (localhost discovery, random domain id: see ros_util)."""
from __future__ import annotations

import itertools
import re
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402

from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE  # noqa: E402
from cosme_ros.ros import image_codec  # noqa: E402
import ros_util  # noqa: E402

pytestmark = pytest.mark.ros

OUTPUTS = {  # topic → (encoding, channels)
    "/segmentation/class_mask": ("mono8", 1),
    "/segmentation/color": ("rgb8", 3),
    "/anomaly/score": ("32FC1", 1),
    "/anomaly/mask": ("mono8", 1),
    "/anomaly/heatmap": ("rgb8", 3),
}
TIME_TOPIC = "/cosme_node/debug/processing_time_ms"
THRESHOLD = -1.5
START_TIMEOUT = 90.0  # torch import + model load on a busy 2-core machine
_stamps = itertools.count(100)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    deeplab = pytest.importorskip("cosme_ros.nets.deeplabv3plus")
    from cosme_ros import bundle
    out = tmp_path_factory.mktemp("node") / "tiny-deeplab"
    bundle.create(out, arch="deeplabv3plus",
                  module=deeplab.build_deeplabv3plus(backbone="resnet18", num_classes=19,
                                                     output_stride=16),
                  input_size=(64, 128), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                  class_names=list(CITYSCAPES_CLASSES), palette=list(CITYSCAPES_PALETTE),
                  void_classes=[])
    return out


class Ros:
    """The test's own rclpy context, node and executor on the session's domain."""

    def __init__(self):
        self.old_env = ros_util.confine_this_process()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=ros_util.DOMAIN_ID,
                   signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        self.node = rclpy.create_node("cosme_node_test", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        ros_util.restore_env(self.old_env)


@pytest.fixture(scope="module")
def ros():
    r = Ros()
    yield r
    r.close()


class Client:
    """Publishes camera frames to the node and collects everything it publishes."""

    def __init__(self, ros: Ros, outputs=tuple(OUTPUTS)):
        self.ros, self.node = ros, ros.node
        self.received = {t: [] for t in (*outputs, TIME_TOPIC)}
        qos = QoSProfile(depth=50)
        self.pub = self.node.create_publisher(Image, "/image", qos)
        self.subs = [self.node.create_subscription(
            Float64 if t == TIME_TOPIC else Image, t,
            lambda m, t=t: self.received[t].append(m), qos) for t in self.received]

    def close(self):
        for s in self.subs:
            self.node.destroy_subscription(s)
        self.node.destroy_publisher(self.pub)

    def wait_connected(self, timeout: float = 30.0) -> None:
        ok = ros_util.spin_until(
            self.ros.executor,
            lambda: self.pub.get_subscription_count() >= 1
            and all(s.get_publisher_count() >= 1 for s in self.subs), timeout)
        assert ok, "node's topics did not match the test's publisher/subscribers"

    def outputs_for(self, sec: int):
        return {t: [m for m in ms if m.header.stamp.sec == sec]
                for t, ms in self.received.items() if t != TIME_TOPIC}

    def send_until_processed(self, msg: Image, timeout: float = 30.0, every: float = 2.0):
        """Publish ``msg`` (again every ``every`` s: the node's input is best effort) until
        every output carries its stamp; the first output message of each topic."""
        sec = msg.header.stamp.sec
        done = ros_util.spin_until(self.ros.executor,
                                   lambda: all(self.outputs_for(sec).values()), timeout,
                                   between=lambda: self.pub.publish(msg), every=every)
        got = self.outputs_for(sec)
        assert done, f"no output for frame {sec} on {[t for t, v in got.items() if not v]}"
        return {t: v[0] for t, v in got.items()}


def camera_frame(h: int = 40, w: int = 56, encoding: str = "bgr8", frame_id: str = "cam_test",
                 seed: int = 0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.clip(np.stack([x * 4, y * 5, 255 - x * 3], -1) + rng.integers(0, 30, (h, w, 3)),
                  0, 255).astype(np.uint8)
    pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
    msg = image_codec.encode_image(Image, np.ascontiguousarray(pixels), encoding)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = next(_stamps), 123456
    return msg, rgb


def start_node(bundle_dir, **params) -> ros_util.Process:
    params = {"bundle": bundle_dir, "device": "cpu", "anomaly_threshold": THRESHOLD, **params}
    params = {k: v for k, v in params.items() if v is not None}
    return ros_util.Process(ros_util.node_command(params))


def wait_ready(proc: ros_util.Process) -> None:
    if not proc.wait_for_output(r"\bready: bundle", START_TIMEOUT):
        proc.stop()
        pytest.fail(f"node did not start:\n{proc.output}")


@pytest.fixture(scope="module")
def node_proc(bundle_dir, ros):
    proc = start_node(bundle_dir)
    wait_ready(proc)
    yield proc
    proc.stop()


@pytest.fixture
def client(ros, node_proc):
    c = Client(ros)
    c.wait_connected()
    yield c
    c.close()


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
    classes = image_codec.image_array(out["/segmentation/class_mask"])
    score = image_codec.image_array(out["/anomaly/score"])
    mask = image_codec.image_array(out["/anomaly/mask"])
    color = image_codec.image_array(out["/segmentation/color"])
    heat = image_codec.image_array(out["/anomaly/heatmap"])
    assert classes.max() < 19 and score.dtype == np.float32 and np.isfinite(score).all()
    np.testing.assert_array_equal(mask, np.where(score > THRESHOLD, 255, 0))
    np.testing.assert_array_equal(color, np.asarray(CITYSCAPES_PALETTE, np.uint8)[classes])
    assert heat.shape == (h, w, 3) and not np.array_equal(heat, rgb)  # camera + colour map
    assert ros_util.spin_until(client.ros.executor, lambda: client.received[TIME_TOPIC], 10)
    assert client.received[TIME_TOPIC][0].data > 0


def test_malformed_messages_are_skipped(client, node_proc):
    short, _ = camera_frame()
    short.data = bytes(short.data)[:-1]
    warned = r"skipped malformed image \(data has \d+ bytes"
    ros_util.spin_until(client.ros.executor, lambda: re.search(warned, node_proc.output), 20,
                        between=lambda: client.pub.publish(short), every=2.0)
    assert re.search(warned, node_proc.output), node_proc.output
    good, _ = camera_frame(seed=1)
    client.send_until_processed(good)

    unknown, _ = camera_frame(seed=2)
    unknown.encoding = "rgb161616"
    client.pub.publish(unknown)
    ros_util.spin_until(client.ros.executor, lambda: False, 1.0)  # let the node take it alone
    good, _ = camera_frame(seed=3, frame_id="after_bad")
    out = client.send_until_processed(good)
    assert out["/anomaly/score"].header.frame_id == "after_bad"
    assert node_proc.proc.poll() is None and "Traceback" not in node_proc.output


def test_burst_processes_newest_frame_without_backlog(client, node_proc):
    frames = [camera_frame(seed=i)[0] for i in range(30)]
    for f in frames:
        client.pub.publish(f)
    last = frames[-1]
    client.send_until_processed(last, every=3.0)  # re-sent only if DDS dropped it
    ros_util.spin_until(client.ros.executor, lambda: False, 0.5)
    burst = {f.header.stamp.sec for f in frames}
    done = {m.header.stamp.sec for m in client.received["/anomaly/score"]} & burst
    assert last.header.stamp.sec in done
    assert len(done) < len(frames), "every frame of a burst was processed: no newest-frame policy?"


def test_sigint_exits_cleanly(bundle_dir, ros):
    proc = start_node(bundle_dir)
    try:
        wait_ready(proc)
        c = Client(ros, outputs=("/anomaly/score",))
        c.wait_connected()
        bad, _ = camera_frame()
        bad.encoding = "no_such_encoding"
        ros_util.spin_until(c.ros.executor, lambda: "unsupported encoding" in proc.output, 20,
                            between=lambda: c.pub.publish(bad), every=2.0)
        c.close()
        assert "unsupported encoding 'no_such_encoding'" in proc.output
        t0 = time.monotonic()
        proc.interrupt()
        code = proc.wait(15)
        assert code == 0, f"exit status {code} after SIGINT:\n{proc.output}"
        assert time.monotonic() - t0 < 10
        assert "Traceback" not in proc.output
        assert proc.wait_for_output(r"frames: received \d+, processed 0, dropped \d+, "
                                    r"malformed [1-9]", 1), proc.output
    finally:
        proc.stop()


@pytest.mark.parametrize("params,name", [
    ({"overlay_alpha": "2.0"}, "overlay_alpha"),
    ({"method": "nonsense"}, "method"),
    ({"bundle": None}, "bundle"),  # not given
])
def test_invalid_parameter_fails_start_up(bundle_dir, params, name):
    proc = start_node(bundle_dir, **params)
    code = proc.wait(START_TIMEOUT)
    if code is None:
        proc.stop()
        pytest.fail(f"node kept running with {params}:\n{proc.output}")
    assert code != 0
    assert f"parameter '{name}'" in proc.output, proc.output
    assert "Traceback" not in proc.output, proc.output


# ----------------------------------------------------------------------------- in process

class FakePipeline:
    """Stands in for Pipeline: records the frames it gets, answers with constant maps."""

    def __init__(self, bundle, method, device):
        self.bundle, self.method = bundle, method
        self.device, self.input_size = "cpu", tuple(bundle.input_size)
        self.calls = []

    def __call__(self, rgb, out_size=None):
        from cosme_ros.pipeline import Result
        self.calls.append(rgb.copy())
        h, w = out_size or rgb.shape[:2]
        return Result(classes=np.zeros((h, w), np.uint8), score=np.ones((h, w), np.float32))


@pytest.fixture
def fake_node(ros, bundle_dir):
    from cosme_ros.ros.node import CosmeNode
    node = CosmeNode(context=ros.context, pipeline_factory=FakePipeline,
                     parameter_overrides=[Parameter("bundle", value=str(bundle_dir))],
                     namespace="/fake")
    node.pipeline.calls.clear()  # the warm-up frame
    yield node
    node.destroy_node()


def test_only_newest_frame_is_processed(fake_node, monkeypatch):
    from cosme_ros import viz
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


def test_malformed_counted_in_process(fake_node):
    msg, _ = camera_frame(h=8, w=10)
    msg.step = 3
    fake_node._on_image(msg)
    fake_node._process_latest()
    assert fake_node.stats.malformed == 1 and not fake_node.pipeline.calls
    big, _ = camera_frame(h=8, w=10)
    fake_node.set_parameters([Parameter("max_image_pixels", value=79)])
    fake_node._on_image(big)
    fake_node._process_latest()
    assert fake_node.stats.malformed == 2 and not fake_node.pipeline.calls


def test_read_only_parameters_cannot_change(fake_node):
    result = fake_node.set_parameters([Parameter("method", value="msp")])[0]
    assert not result.successful
    result = fake_node.set_parameters([Parameter("overlay_alpha", value=1.5)])[0]
    assert not result.successful
    assert fake_node.set_parameters([Parameter("overlay_alpha", value=0.25)])[0].successful
