"""config/fastdds_shm.xml: the Fast DDS profile for images between processes on one host.

The defect it mends is Fast DDS's 512 kB shared-memory segment: a writer's image that does not
fit misses shared memory, and a best-effort reader then loses it (measured: 0 of 296 VGA frames
at 30 Hz arrived without the profile, 296 with it; see the file's comment)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import pytest

import ros_util
from cosme_ros.tools.demo import ros_environment
from cosme_ros.ros.dds_profile import FASTDDS_PROFILE
from cosme_ros.paths import config_path

PROFILE = config_path(FASTDDS_PROFILE)
NS = {"p": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}

# A camera in another process: best-effort (sensor data QoS) VGA rgb8 frames at 30 Hz.
PUBLISHER = """
import sys, time
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("vga_camera")
pub = node.create_publisher(Image, "/fastdds_profile_test", qos_profile_sensor_data)
while pub.get_subscription_count() < 1:
    rclpy.spin_once(node, timeout_sec=0.1)
time.sleep(1.0)
msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=bytes(640 * 480 * 3))
n = int(sys.argv[1]); t0 = time.monotonic()
for i in range(n):
    msg.header.stamp.nanosec = i
    pub.publish(msg)
    time.sleep(max(0.0, t0 + (i + 1) / 30 - time.monotonic()))
print("sent", n, flush=True)
time.sleep(2.0)
"""


def test_profile_enlarges_shared_memory_and_keeps_the_builtin_transports():
    root = ET.parse(PROFILE).getroot()
    descriptor = root.find("p:transport_descriptors/p:transport_descriptor", NS)
    assert descriptor.find("p:type", NS).text == "SHM"
    assert int(descriptor.find("p:segment_size", NS).text) >= 16 * 2**20  # 720p outputs: 11 MB
    participant = root.find("p:participant", NS)
    assert participant.get("is_default_profile") == "true"
    rtps = participant.find("p:rtps", NS)
    assert (
        rtps.find("p:userTransports/p:transport_id", NS).text
        == descriptor.find("p:transport_id", NS).text
    )
    # Builtin transports stay: ROS_AUTOMATIC_DISCOVERY_RANGE keeps deciding where traffic goes.
    assert rtps.find("p:useBuiltinTransports", NS).text == "true"


def test_demo_environment_uses_the_profile_unless_one_is_chosen():
    env = ros_environment({})
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(PROFILE) and PROFILE.is_file()
    for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        mine = ros_environment({key: "/etc/mine.xml"})
        assert mine[key] == "/etc/mine.xml"
        assert mine.get("FASTDDS_DEFAULT_PROFILES_FILE", "/etc/mine.xml") == "/etc/mine.xml"
    cyclone = ros_environment({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in cyclone


@pytest.mark.ros
@pytest.mark.slow
def test_best_effort_vga_frames_arrive_from_a_process_using_the_profile():
    pytest.importorskip("rclpy")
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    frames = 90
    session = ros_util.RosSession("fastdds_profile_test")
    got = []
    session.node.create_subscription(
        Image,
        "/fastdds_profile_test",
        lambda msg: got.append(msg.header.stamp.nanosec),
        qos_profile_sensor_data,
    )
    camera = ros_util.Process(
        [sys.executable, "-c", PUBLISHER, str(frames)],
        env=ros_util.ros_env(extra={"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}),
    )
    try:
        # Spin while the camera publishes: the reader's queue holds only the newest 5.
        assert ros_util.spin_until(
            session.executor, lambda: "sent" in camera.output, 60
        ), camera.output
        session.spin_for(1.0)
    finally:
        camera.stop()
        session.close()
    assert "XMLPARSER" not in camera.output, camera.output
    # Through shared memory nothing is lost on the way (without the profile: none arrive).
    assert len(set(got)) >= 0.9 * frames, f"{len(set(got))} of {frames} frames arrived"
