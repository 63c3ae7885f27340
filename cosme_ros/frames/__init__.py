"""Frames: camera messages in (codec), pictures out (render, sheets), files (writers).

Pure numpy / OpenCV: the ROS node, replay, the demo, evaluate and infer all draw and encode
with these, so a frame looks the same wherever it is seen. No rclpy.
"""
