"""The embedded default, end to end: ``cosme demo`` runs the product on the demo bundle.

It starts ``cosme_node`` as its own process (real rclpy over DDS, confined to this machine),
streams a synthetic drive into it as camera images — one frame at a time, reliable QoS, the next
frame only once the node has published its outputs for this one, so nothing is dropped — and
collects what the node publishes (``anomaly/score``, ``segmentation/class_mask``,
``anomaly/heatmap``, and ``anomaly/mask`` when a threshold is given). From that it computes the
pixel metrics of the drive against the drive's anomaly masks (pooled, Fishyscapes convention),
the segmentation mIoU against its class labels, and writes an overlay video and a contact sheet.

Network: unless the user set them, the node and this process use
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (no static peers) and a random ``ROS_DOMAIN_ID``, so
nothing leaves loopback and two demos do not see each other. The node runs in the namespace
``/cosme_demo``; while it runs, its topics can be watched on that domain.

The node is stopped with one SIGINT (and waited for) on every path: success, error, Ctrl-C or
SIGTERM of the demo. It runs in its own session, so a terminal's Ctrl-C reaches only the demo,
which then stops the node itself; and it gets SIGINT if the demo dies without cleaning up.

Modules: :mod:`.options` (what it is asked and returns), :mod:`.process` (the node as a child
process), :mod:`.link` (the demo's rclpy side), :mod:`.scores` (the drive's books) and
:mod:`.run` (the drive).

The demo bundle's network weights are stored in fp16 by :func:`cosme_ros.bundle.store_half`, to
keep it small enough for the repository; loading casts them back to fp32.
"""

from cosme_ros.tools.demo.options import (
    DEFAULT_FRAMES,
    DEFAULT_OUT,
    DEFAULT_SEED,
    DemoOptions,
    DemoResult,
)
from cosme_ros.tools.demo.process import ros_environment
from cosme_ros.tools.demo.run import format_result, run_demo

__all__ = [
    "DEFAULT_FRAMES",
    "DEFAULT_OUT",
    "DEFAULT_SEED",
    "DemoOptions",
    "DemoResult",
    "ros_environment",
    "format_result",
    "run_demo",
]
