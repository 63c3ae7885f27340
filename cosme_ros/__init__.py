"""cosme_ros: CosMe anomaly segmentation (Consensus Synergizes with Memory) for ROS 2."""

__version__ = "0.1.0"
