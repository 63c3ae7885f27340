"""Start cosme_node (and optionally RViz) on a camera topic.

    ros2 launch cosme_ros cosme.launch.py image_topic:=/camera/image_raw
    ros2 launch cosme_ros cosme.launch.py image_topic:=/cam/image_raw namespace:=cam rviz:=true
    ros2 launch cosme_ros cosme.launch.py use_sim_time:=true   # with `ros2 bag play --clock`

Arguments: image_topic, bundle (empty: the params file's, by default the installed demo bundle),
params_file (default: the installed config/cosme.yaml), namespace, use_sim_time, rviz.
A thin wrapper: everything else is a node parameter (see config/cosme.yaml).
"""
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


def _nodes(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    use_sim_time = _flag("use_sim_time", arg("use_sim_time"))
    overrides = {"use_sim_time": use_sim_time}
    if arg("bundle"):  # empty: keep the params file's bundle
        overrides["bundle"] = arg("bundle")
    remap = [("image", arg("image_topic"))]
    nodes = [Node(package=PACKAGE, executable="cosme_node", name="cosme_node",
                  namespace=arg("namespace"), output="screen", emulate_tty=True,
                  parameters=[arg("params_file"), overrides], remappings=remap)]
    if _flag("rviz", arg("rviz")):
        # Same namespace and remapping: the RViz config's relative topics are the node's.
        nodes.append(Node(package="rviz2", executable="rviz2", name="rviz2",
                          namespace=arg("namespace"), output="screen",
                          arguments=["-d", PathJoinSubstitution(
                              [FindPackageShare(PACKAGE), "config", "cosme.rviz"])],
                          parameters=[{"use_sim_time": use_sim_time}], remappings=remap))
    return nodes


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="Camera topic (sensor_msgs/Image) remapped to the "
                                          "node's `image`; with input_transport: compressed "
                                          "the node reads <image_topic>/compressed"),
        DeclareLaunchArgument("bundle", default_value="",
                              description="Model bundle directory; empty: the params file's "
                                          "(default: the demo bundle installed with the package)"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution(
                                  [FindPackageShare(PACKAGE), "config", "cosme.yaml"]),
                              description="cosme_node parameters file"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node, its topics and RViz"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use /clock (bag replay with `ros2 bag play --clock`)"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="Also start rviz2 with config/cosme.rviz"),
        OpaqueFunction(function=_nodes),
    ])
