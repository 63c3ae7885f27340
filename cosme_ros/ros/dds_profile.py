"""The Fast DDS profile for camera-sized images between processes on one host (no rclpy).

Fast DDS hands same-host samples through a shared-memory segment owned by the writer, 512 kB by
default. A camera frame or a frame of the node's outputs (~1 MB at 192×384, ~3 MB at 720p) does
not fit, and the samples that miss shared memory wait seconds for a reliable repair or are lost
(measured: a 1280×720 camera at 5 Hz gave 0.07–0.13 Hz of heatmaps through ``ros2 launch``;
best-effort VGA at 30 Hz, 0 of 296 frames arrived). ``config/fastdds_shm.xml`` gives 16 MB
segments. ``cosme demo`` and the launch file give it to the node unless the user chose a profile
or another RMW; the camera driver needs it too (it is the camera's segment that a frame must
fit), which the README says beside the launch commands.
"""

from __future__ import annotations

from typing import Dict, Mapping

from cosme_ros.paths import config_path

#: Fast DDS reads a profile from either variable; ours is added only when neither is set.
FASTDDS_PROFILE_KEYS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FASTDDS_PROFILE = "fastdds_shm.xml"


def shm_profile_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """``{FASTDDS_DEFAULT_PROFILES_FILE: config/fastdds_shm.xml}`` where it applies (Fast DDS,
    the default RMW, and no profile of the user's), else ``{}``."""
    if any(environ.get(k) for k in FASTDDS_PROFILE_KEYS):
        return {}
    if "fastrtps" not in environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"):
        return {}
    return {"FASTDDS_DEFAULT_PROFILES_FILE": str(config_path(FASTDDS_PROFILE))}
