"""The live path gives what ``cosme replay`` gives: a bag played into the running node.

``ros2 bag play --clock`` is not installed here, so the test plays the bag itself: it reads the
drive with rosbags, builds real ``sensor_msgs/Image`` messages with the recorded headers, and
publishes them over DDS (localhost only, random domain: see ros_util) to a ``cosme_node``
subprocess started with ``use_sim_time:=true``, ``input_qos:=DEFAULT`` and ``image`` remapped
to the bag's topic, in namespace ``/camera`` — publishing ``/clock`` from the recorded stamps.
One frame at a time, waiting for the node's output for that stamp before the next, so no frame
is dropped (a player faster than the model loses frames to the node's newest-frame policy).
The node's ``anomaly/score`` for every frame must equal ``cosme replay``'s.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")
from bundles import make_tiny_bundle  # noqa: E402
from cosme_ros.cli.main import main  # noqa: E402
from cosme_ros.data.drive_bag import IMAGE_TOPIC, write_drive_bag  # noqa: E402
from cosme_ros.data.synth import drive_frames  # noqa: E402
from cosme_ros.frames import codec  # noqa: E402
import ros_util  # noqa: E402

pytestmark = pytest.mark.ros
torch.set_num_threads(1)

N = 6
SIZE = (96, 192)
START_TIMEOUT = 90.0  # torch import + model load on a busy 2-core machine
FRAME_TIMEOUT = 30.0


def read_messages(bag, topic):
    """[(bag ns, rosbags message)] of ``topic``."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(t, ts.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages(conns)]


def to_ros(msg):
    """A rosbags Image → a real sensor_msgs/msg/Image with the recorded header."""
    from sensor_msgs.msg import Image

    out = Image()
    out.header.stamp.sec, out.header.stamp.nanosec = msg.header.stamp.sec, msg.header.stamp.nanosec
    out.header.frame_id = msg.header.frame_id
    out.height, out.width, out.encoding = msg.height, msg.width, msg.encoding
    out.is_bigendian, out.step = msg.is_bigendian, msg.step
    out.data = msg.data.tobytes()
    return out


def key(header) -> tuple:
    return (header.stamp.sec, header.stamp.nanosec)


def test_bag_played_into_the_node_matches_cosme_replay(tmp_path):
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    bag, bundle, out = tmp_path / "drive.bag", tmp_path / "tiny", tmp_path / "out.bag"
    write_drive_bag(bag, drive_frames(3, N, SIZE))
    make_tiny_bundle(bundle)

    # Start the node first (slow), replay offline while it loads.
    node = ros_util.Process(
        ros_util.node_command(
            {"bundle": bundle, "device": "cpu", "use_sim_time": "true", "input_qos": "DEFAULT"},
            {"__ns": "/camera", "image": IMAGE_TOPIC},
        ),
        env=ros_util.ros_env(extra={"OMP_NUM_THREADS": "1"}),
    )
    session = None
    try:
        assert (
            main(
                [
                    "replay",
                    "--bag",
                    str(bag),
                    "--image-topic",
                    IMAGE_TOPIC,
                    "--bundle",
                    str(bundle),
                    "--device",
                    "cpu",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        offline = {
            key(m.header): codec.image_array(m)
            for _, m in read_messages(out, "/camera/anomaly/score")
        }
        offline_classes = {
            key(m.header): codec.image_array(m)
            for _, m in read_messages(out, "/camera/segmentation/class_mask")
        }
        assert len(offline) == N

        if not node.wait_for_output(r"\bready: bundle", START_TIMEOUT):
            pytest.fail(f"node did not start:\n{node.output}")
        assert f"listening on {IMAGE_TOPIC}" in node.output

        session = ros_util.RosSession("replay_live_test")
        qos = QoSProfile(depth=10)  # reliable, as the node's input_qos DEFAULT
        pub = session.node.create_publisher(Image, IMAGE_TOPIC, qos)
        clock = session.node.create_publisher(Clock, "/clock", 10)
        got = {"/camera/anomaly/score": {}, "/camera/segmentation/class_mask": {}}
        subs = [
            session.node.create_subscription(
                Image, topic, lambda m, t=topic: got[t].setdefault(key(m.header), m), qos
            )
            for topic in got
        ]
        assert ros_util.spin_until(
            session.executor,
            lambda: pub.get_subscription_count() >= 1
            and all(s.get_publisher_count() >= 1 for s in subs),
            30.0,
        ), "the node's topics did not match"

        for bag_ns, recorded in read_messages(bag, IMAGE_TOPIC):
            msg = to_ros(recorded)
            tick = Clock()
            tick.clock.sec, tick.clock.nanosec = divmod(bag_ns, 10**9)
            clock.publish(tick)  # as ros2 bag play --clock: the recorded time
            pub.publish(msg)
            k = key(msg.header)
            assert ros_util.spin_until(
                session.executor, lambda: all(k in v for v in got.values()), FRAME_TIMEOUT
            ), f"no output for stamp {k}:\n{node.output}"

        assert set(got["/camera/anomaly/score"]) == set(offline)
        for k, live in got["/camera/anomaly/score"].items():
            assert live.header.frame_id == "camera"
            np.testing.assert_allclose(codec.image_array(live), offline[k], rtol=1e-4, atol=1e-4)
            classes = codec.image_array(got["/camera/segmentation/class_mask"][k])
            assert (classes == offline_classes[k]).mean() > 0.999
    finally:
        if session is not None:
            session.close()
        code = node.stop()
    assert code == 0, node.output
    # every frame was processed, none dropped (the node logs its totals on shutdown)
    assert f"received {N}, processed {N}, dropped 0" in node.output, node.output
