"""launch/cosme.launch.py and the RViz config, without ROS's launch installed.

The stubs below stand in for ``launch``/``launch_ros``: each class only records its constructor
arguments, except ``LaunchConfiguration.perform``, which does what the real one does (look the
argument up in the context). They show *what* the launch file asks launch to start; that launch
then starts it is the job of test_launch.py (launch_testing, where installed).
"""

from __future__ import annotations

import importlib.util
import py_compile
import sys
import types
from pathlib import Path

import pytest
import yaml

from cosme_ros.paths import config_path
from cosme_ros.ros.dds_profile import FASTDDS_PROFILE, FASTDDS_PROFILE_KEYS

REPO = Path(__file__).resolve().parents[1]
PROFILE = config_path(FASTDDS_PROFILE)
LAUNCH_FILE = REPO / "launch" / "cosme.launch.py"
RVIZ_FILE = REPO / "config" / "cosme.rviz"
ARGUMENTS = {
    "image_topic": "image",
    "bundle": "",
    "namespace": "",
    "use_sim_time": "false",
    "rviz": "false",
    "shm_profile": "true",
}


class Recorded:
    """Records its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __eq__(self, other):
        return type(self) is type(other) and (self.args, self.kwargs) == (other.args, other.kwargs)

    def __repr__(self):
        return f"{type(self).__name__}{self.args}{self.kwargs}"


def _stub_modules():
    classes = {
        name: type(name, (Recorded,), {})
        for name in (
            "LaunchDescription",
            "DeclareLaunchArgument",
            "OpaqueFunction",
            "PathJoinSubstitution",
            "Node",
            "FindPackageShare",
        )
    }

    class LaunchConfiguration(Recorded):
        def perform(self, context):
            return context.launch_configurations[self.args[0]]

    classes["LaunchConfiguration"] = LaunchConfiguration
    layout = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction"],
        "launch.substitutions": ["LaunchConfiguration", "PathJoinSubstitution"],
        "launch_ros": [],
        "launch_ros.actions": ["Node"],
        "launch_ros.substitutions": ["FindPackageShare"],
    }
    modules = {}
    for name, members in layout.items():
        module = types.ModuleType(name)
        for member in members:
            setattr(module, member, classes[member])
        modules[name] = module
    return modules, classes


@pytest.fixture
def launch_module(monkeypatch):
    modules, classes = _stub_modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("cosme_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_has_package", lambda name: True)  # rviz2 "installed"
    for key in FASTDDS_PROFILE_KEYS + ("RMW_IMPLEMENTATION",):
        monkeypatch.delenv(key, raising=False)
    return module, classes


def _arguments(description, classes):
    return {
        e.args[0]: e.kwargs
        for e in description.args[0]
        if isinstance(e, classes["DeclareLaunchArgument"])
    }


def _launch(module, classes, **given):
    description = module.generate_launch_description()
    values = {k: v["default_value"] for k, v in _arguments(description, classes).items()}
    values["params_file"] = "/share/cosme_ros/config/cosme.yaml"  # what launch would resolve
    values.update(given)
    opaque = [e for e in description.args[0] if isinstance(e, classes["OpaqueFunction"])]
    assert len(opaque) == 1
    context = types.SimpleNamespace(launch_configurations=values)
    return opaque[0].kwargs["function"](context)


def test_launch_file_compiles():
    py_compile.compile(str(LAUNCH_FILE), doraise=True)


def test_arguments_and_defaults(launch_module):
    module, classes = launch_module
    args = _arguments(module.generate_launch_description(), classes)
    assert set(args) == {
        "image_topic",
        "bundle",
        "params_file",
        "namespace",
        "use_sim_time",
        "rviz",
        "shm_profile",
    }
    for name, default in ARGUMENTS.items():
        assert args[name]["default_value"] == default, name
    share = classes["FindPackageShare"]("cosme_ros")
    assert args["params_file"]["default_value"] == classes["PathJoinSubstitution"](
        [share, "config", "cosme.yaml"]
    )
    assert all(a.get("description") for a in args.values())


def test_default_launch_starts_only_the_node(launch_module):
    module, classes = launch_module
    nodes = _launch(module, classes)
    assert len(nodes) == 1
    node = nodes[0].kwargs
    assert (node["package"], node["executable"], node["name"]) == (
        "cosme_ros",
        "cosme_node",
        "cosme_node",
    )
    assert node["namespace"] == ""
    # the params file first, then the launch arguments; no bundle override when none is given
    assert node["parameters"] == ["/share/cosme_ros/config/cosme.yaml", {"use_sim_time": False}]
    assert node["remappings"] == [("image", "image")]
    assert node["additional_env"] == {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}


def test_shm_profile_only_where_the_user_has_none(launch_module, monkeypatch):
    module, classes = launch_module
    assert PROFILE.is_file()
    assert _launch(module, classes, shm_profile="false")[0].kwargs["additional_env"] == {}
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", "/etc/my_profile.xml")
    assert _launch(module, classes)[0].kwargs["additional_env"] == {}
    monkeypatch.delenv("FASTRTPS_DEFAULT_PROFILES_FILE")
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    assert _launch(module, classes)[0].kwargs["additional_env"] == {}
    with pytest.raises(ValueError, match="shm_profile"):
        _launch(module, classes, shm_profile="yes please")


def test_rviz_without_rviz2_starts_nothing(launch_module, monkeypatch):
    """ros2 launch ... rviz:=true on a machine without rviz2 used to start the node, then abort
    with the node left running as an orphan; now it stops before anything starts."""
    module, classes = launch_module
    monkeypatch.setattr(module, "_has_package", lambda name: name != "rviz2")
    with pytest.raises(RuntimeError, match="rviz2 package is not installed.*nothing was started"):
        _launch(module, classes, rviz="true")
    assert len(_launch(module, classes, rviz="false")) == 1


def test_arguments_reach_the_node_and_rviz(launch_module):
    module, classes = launch_module
    nodes = _launch(
        module,
        classes,
        image_topic="/camera/image_raw",
        bundle="/models/b",
        namespace="cam_left",
        use_sim_time="True",
        rviz="true",
        params_file="/my/params.yaml",
    )
    assert len(nodes) == 2
    node, rviz = nodes[0].kwargs, nodes[1].kwargs
    assert node["parameters"] == ["/my/params.yaml", {"use_sim_time": True, "bundle": "/models/b"}]
    assert node["remappings"] == [("image", "/camera/image_raw")]
    assert node["namespace"] == "cam_left"
    assert (rviz["package"], rviz["executable"], rviz["namespace"]) == (
        "rviz2",
        "rviz2",
        "cam_left",
    )
    share = classes["FindPackageShare"]("cosme_ros")
    assert rviz["arguments"] == [
        "-d",
        classes["PathJoinSubstitution"]([share, "config", "cosme.rviz"]),
    ]
    assert rviz["remappings"] == [("image", "/camera/image_raw")]
    assert rviz["parameters"] == [{"use_sim_time": True}]


def test_bad_flag_is_refused(launch_module):
    module, classes = launch_module
    with pytest.raises(ValueError, match="use_sim_time"):
        _launch(module, classes, use_sim_time="maybe")


def test_rviz_config_shows_the_nodes_topics():
    config = yaml.safe_load(RVIZ_FILE.read_text())
    displays = config["Visualization Manager"]["Displays"]
    images = {
        d["Name"]: d["Topic"]["Value"]
        for d in displays
        if d["Class"] == "rviz_default_plugins/Image"
    }
    assert images["Camera"] == "image"
    assert images["Segmentation"] == "segmentation/color"
    assert images["Anomaly heatmap"] == "anomaly/heatmap"
    from cosme_ros.frames.render import OUTPUTS

    topics = {t for t, _ in OUTPUTS.values()} | {"image"}
    for name, topic in images.items():
        # relative, so that the namespace given to rviz2 by the launch file applies
        assert topic in topics and not topic.startswith("/"), name
    for d in displays:
        assert d["Topic"]["Reliability Policy"] == "Best Effort"  # matches any publisher
    assert {"Panels", "Visualization Manager", "Window Geometry"} <= set(config)


def test_setup_installs_launch_and_config():
    setup = (REPO / "setup.py").read_text()
    assert 'glob("launch/*.py")' in setup and 'glob("config/*")' in setup


def test_with_real_launch_where_installed():
    pytest.importorskip("launch_ros")
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location("cosme_launch_real", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    names = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert names == set(ARGUMENTS) | {"params_file"}
    assert any(isinstance(e, OpaqueFunction) for e in description.entities)
