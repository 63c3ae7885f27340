"""What a ROS user's tools read from the package: rosdep keys in package.xml, colcon's test
dependency in setup.py, and a pytest that the distros' launch_testing plugin accepts."""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# rosdep keys of rosdistro's base.yaml / python.yaml that package.xml may use (looked up by hand:
# keys that do not exist make `rosdep install --from-paths src` fail on every distro).
SYSTEM_KEYS = {
    "python3-numpy",
    "python3-opencv",
    "python3-yaml",
    "python3-tqdm",
    "python3-matplotlib",
    "python3-torch",
    "python3-pytest",
    "python3-sklearn",
}
ROS_PACKAGES = {
    "rclpy",
    "sensor_msgs",
    "std_msgs",
    "diagnostic_msgs",
    "rcl_interfaces",
    "ament_index_python",
    "launch",
    "launch_ros",
    "launch_testing",
    "launch_testing_ros",
}


def test_package_xml_uses_only_resolvable_keys():
    root = ET.parse(REPO / "package.xml").getroot()
    keys = [e.text.strip() for e in root if e.tag.endswith("depend")]
    unknown = [k for k in keys if k not in SYSTEM_KEYS | ROS_PACKAGES]
    # python3-safetensors-pip / python3-rosbags-pip do not exist in rosdistro (pip step instead);
    # rviz2 is optional (rviz:=true only), so a headless robot does not install a GUI
    assert not unknown, unknown
    assert "rviz2" not in keys


def test_colcon_test_finds_pytest():
    """colcon runs pytest only when setup.py's "test" extra (or the tests_require that
    setuptools >= 79 dropped) names it; otherwise `colcon test` ran 0 tests and passed."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"
    )
    kwargs = {k.arg: k.value for k in call.keywords}
    assert "tests_require" not in kwargs
    extras = ast.literal_eval(kwargs["extras_require"])
    assert "pytest" in extras["test"]


def test_pytest_is_one_that_launch_testing_accepts():
    """pytest 9 rejects the distros' launch_testing plugin (ros2/launch#979), so that on a ROS
    machine the suite died before collecting; 8.4 runs both worlds."""
    import pytest

    major, minor = (int(p) for p in pytest.__version__.split(".")[:2])
    assert (major, minor) < (9, 0), pytest.__version__
    pin = next(
        line
        for line in (REPO / "requirements" / "base.txt").read_text().splitlines()
        if line.startswith("pytest==")
    )
    assert pin.split()[0] == f"pytest=={pytest.__version__}"
