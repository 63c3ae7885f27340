"""The ROS 2 shell: :mod:`.image_codec` (messages ⇄ numpy, no rclpy) and :mod:`.node` (rclpy).

Nothing is imported here, so that offline tools can use the codec where rclpy is absent.
"""
