"""Start cosme_node (and optionally RViz) on a camera topic.

    ros2 launch cosme_ros cosme.launch.py image_topic:=/camera/image_raw
    ros2 launch cosme_ros cosme.launch.py image_topic:=/cam/image_raw namespace:=cam rviz:=true
    ros2 launch cosme_ros cosme.launch.py use_sim_time:=true   # with `ros2 bag play --clock`

Arguments: image_topic, bundle (empty: the params file's, by default the installed demo bundle),
params_file (default: the installed config/cosme.yaml), namespace, use_sim_time, rviz,
shm_profile (default true: give the node config/fastdds_shm.xml, 16 MB Fast DDS shared-memory
segments, unless a profile is already set or the RMW is not Fast DDS; the camera driver needs the
same profile for camera-sized frames).
A thin wrapper: everything else is a node parameter (see config/cosme.yaml).

With rviz:=true on a machine without rviz2, nothing is started: launch stops with one line saying
that rviz2 is missing (a headless robot runs without the flag).
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "cosme_ros"


def _flag(name: str, value: str) -> bool:
    """A boolean launch argument, spelt as launch's IfCondition accepts it."""
    if value.strip().lower() in ("true", "1"):
        return True
    if value.strip().lower() in ("false", "0"):
        return False
    raise ValueError(f"launch argument {name}: expected true or false, got {value!r}")


def _has_package(name: str) -> bool:
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory(name)
    except PackageNotFoundError:
        return False
    return True


def _node_env(shm_profile: bool) -> dict:
    """The Fast DDS shared-memory profile for the node, where it applies (see dds_profile)."""
    if not shm_profile:
        return {}
    from cosme_ros.ros.dds_profile import shm_profile_env

    return shm_profile_env(os.environ)


def _nodes(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    rviz = _flag("rviz", arg("rviz"))
    if rviz and not _has_package("rviz2"):
        # checked before anything starts: a launch that fails half-way leaves the node orphaned
        raise RuntimeError(
            "rviz:=true, but the rviz2 package is not installed (apt install "
            "ros-$ROS_DISTRO-rviz2, or launch without rviz:=true); nothing was "
            "started"
        )
    use_sim_time = _flag("use_sim_time", arg("use_sim_time"))
    overrides = {"use_sim_time": use_sim_time}
    if arg("bundle"):  # empty: keep the params file's bundle
        overrides["bundle"] = arg("bundle")
    remap = [("image", arg("image_topic"))]
    nodes = [
        Node(
            package=PACKAGE,
            executable="cosme_node",
            name="cosme_node",
            namespace=arg("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[arg("params_file"), overrides],
            remappings=remap,
            additional_env=_node_env(_flag("shm_profile", arg("shm_profile"))),
        )
    ]
    if rviz:
        # Same namespace and remapping: the RViz config's relative topics are the node's.
        nodes.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                namespace=arg("namespace"),
                output="screen",
                arguments=[
                    "-d",
                    PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "cosme.rviz"]),
                ],
                parameters=[{"use_sim_time": use_sim_time}],
                remappings=remap,
            )
        )
    return nodes


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "image_topic",
                default_value="image",
                description="Camera topic (sensor_msgs/Image) remapped to the "
                "node's `image`; with input_transport: compressed "
                "the node reads <image_topic>/compressed",
            ),
            DeclareLaunchArgument(
                "bundle",
                default_value="",
                description="Model bundle directory; empty: the params file's "
                "(default: the demo bundle installed with the package)",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution(
                    [FindPackageShare(PACKAGE), "config", "cosme.yaml"]
                ),
                description="cosme_node parameters file",
            ),
            DeclareLaunchArgument(
                "namespace",
                default_value="",
                description="Namespace of the node, its topics and RViz",
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                description="Use /clock (bag replay with `ros2 bag play --clock`)",
            ),
            DeclareLaunchArgument(
                "rviz", default_value="false", description="Also start rviz2 with config/cosme.rviz"
            ),
            DeclareLaunchArgument(
                "shm_profile",
                default_value="true",
                description="Give the node config/fastdds_shm.xml (16 MB Fast DDS "
                "shared-memory segments for camera-sized images) "
                "unless a Fast DDS profile is set or the RMW is "
                "another",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
