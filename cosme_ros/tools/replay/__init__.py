"""Rosbag replay: a recorded drive through the pipeline, offline (behind ``cosme replay``).

Every image of one topic of a rosbag2 (sqlite3 or mcap; ``sensor_msgs/msg/Image`` in any
encoding the node accepts, or ``sensor_msgs/msg/CompressedImage``) is decoded with
:mod:`cosme_ros.frames.codec`, run through :class:`cosme_ros.runtime.pipeline.Pipeline` and drawn
with :func:`cosme_ros.frames.render.render_outputs` — the node's own functions, with its
parameters (``anomaly_threshold``, ``overlay_alpha``, ``heatmap_range``, ``output_resolution``,
same defaults) — so each frame gives exactly the five images the node would publish for it, and
the heatmap's running colour range evolves as the node's does. No frame is dropped (the node
drops frames when the camera is faster than the model; replay never does). ROS 2 Humble
playing the output bag is not tested here (no ROS distro on the development machine): rosbags
writes version 8 metadata for that purpose.

Outputs, each optional:

- an **output bag** (rosbags ``Writer``, version 8 metadata; the input's storage unless told
  otherwise): the input image topic and the ground-truth topic copied byte
  for byte, plus the node's five outputs under the input topic's namespace
  (:func:`output_topics`). Each output message carries the input message's header, and its bag
  timestamp is the input message's bag timestamp. The bag is built in a temporary directory
  beside the target and renamed into place at the end, so an interrupted replay leaves the
  complete bag or none;
- a **video** (camera | segmentation | heatmap side by side, OpenCV ``VideoWriter``, mp4v),
  written to a temporary file and renamed the same way;
- **metrics** against ground truth — a mono8 topic or a folder of masks named by nanosecond
  stamps — matched to the images by header stamp (exactly), pooled over the drive with
  :func:`cosme_ros.metrics.pixel_metrics` (or binned:
  :class:`~cosme_ros.metrics.PixelMetricAccumulator`) and per frame, at the ground truth's
  resolution (the score is resized bilinearly where they differ).

Modules: :mod:`.bag` (reading), :mod:`.ground_truth`, :mod:`.report` (metrics and the text),
:mod:`.outputs` (the output bag), :mod:`.run` (the loop). This package never imports rclpy.
"""

from cosme_ros.paths import default_bundle_path
from cosme_ros.tools.replay.bag import COMPRESSED_TYPE, IMAGE_TYPE, STORAGES, Bag
from cosme_ros.tools.replay.ground_truth import gt_labels, read_mask_folder
from cosme_ros.tools.replay.outputs import output_topics
from cosme_ros.tools.replay.report import FrameRecord, ReplayOptions, ReplayReport, format_report
from cosme_ros.tools.replay.run import check_bag, check_options, replay

__all__ = [
    "IMAGE_TYPE",
    "COMPRESSED_TYPE",
    "STORAGES",
    "ReplayOptions",
    "ReplayReport",
    "FrameRecord",
    "Bag",
    "default_bundle_path",
    "output_topics",
    "gt_labels",
    "read_mask_folder",
    "check_options",
    "check_bag",
    "replay",
    "format_report",
]
