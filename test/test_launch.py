"""Proof of life through the real launch file: `launch/cosme.launch.py` starts cosme_node in a
namespace with a camera topic remapped; a frame published on that topic comes back as an anomaly
score, and the node shuts down cleanly with the launch.

Runs under launch_testing (`launch_test test/test_launch.py`, or pytest with launch_testing's
plugin) on a ROS 2 machine; skipped where launch_testing is not installed (the .venv). Discovery
stays on localhost with a random domain id (ros_util), like every ROS test here.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import time
import unittest
from pathlib import Path

import pytest

pytest.importorskip("launch_testing")
pytest.importorskip("launch_ros")

import launch  # noqa: E402
import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ros_util  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "launch_test"
CAMERA = "/launch_test_camera/image_raw"

ros_util.confine_this_process()  # the launched node inherits this environment


@pytest.mark.launch_test
def generate_test_description():
    from bundles import make_tiny_bundle

    scratch = tempfile.mkdtemp(prefix="cosme_launch_")
    atexit.register(shutil.rmtree, scratch, True)  # no /tmp/cosme_launch_* left behind
    bundle = make_tiny_bundle(Path(scratch) / "bundle")
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO / "launch" / "cosme.launch.py")),
        launch_arguments={
            "bundle": str(bundle.path),
            "image_topic": CAMERA,
            "namespace": NAMESPACE,
            "params_file": str(REPO / "config" / "cosme.yaml"),
        }.items(),
    )
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestProofOfLife(unittest.TestCase):
    def test_frame_in_score_out(self, proc_output):
        proc_output.assertWaitFor("ready: bundle", timeout=120)
        session = ros_util.RosSession("cosme_launch_test")
        try:
            client = ros_util.Client(session, [f"/{NAMESPACE}/anomaly/score"], image_topic=CAMERA)
            client.wait_connected(60)
            msg, _ = ros_util.camera_frame(frame_id="launch_cam")
            out = client.send_until_processed(msg, timeout=60)
            score = out[f"/{NAMESPACE}/anomaly/score"]
            self.assertEqual(score.encoding, "32FC1")
            self.assertEqual(score.header.frame_id, "launch_cam")
            client.close()
        finally:
            session.close()
        time.sleep(0.1)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info):
        # SIGINT from launch at shutdown: cosme_node exits 0
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
