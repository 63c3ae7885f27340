"""The ROS 2 shell: :mod:`.node` (the rclpy node), :mod:`.monitor` (its books and
/diagnostics), :mod:`.dds_profile` (Fast DDS shared memory) and :mod:`.session` (one localhost
rclpy context for the node's helpers, the demo, the benchmark and the tests).

Messages are translated by :mod:`cosme_ros.frames.codec`, which needs no rclpy.
"""
