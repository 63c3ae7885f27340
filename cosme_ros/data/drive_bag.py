"""Write a synthetic drive as a rosbag2 (mcap storage, version 8 metadata: ROS 2 Humble plays it).

Topics: ``/camera/image_raw`` (sensor_msgs/msg/Image, rgb8) and ``/camera/anomaly_gt``
(sensor_msgs/msg/Image, mono8: 0 in-distribution, 1 anomaly, 255 void), both stamped at ``fps``
with frame_id ``camera``; each message's bag timestamp equals its header stamp. Written with the
``rosbags`` library, no ROS needed. The bag directory is built beside the target and renamed into
place, so a reader never sees half a bag.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import numpy as np

from cosme_ros import atomic
from cosme_ros.errors import CosmeError

IMAGE_TOPIC = "/camera/image_raw"
GT_TOPIC = "/camera/anomaly_gt"
FRAME_ID = "camera"
START_NS = 1_700_000_000 * 10**9  # a fixed start, so the same drive gives the same stamps
IMAGE_TYPE = "sensor_msgs/msg/Image"


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def image_message(
    typestore, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = FRAME_ID
):
    types = typestore.types
    Image, Header, Time = (
        types[IMAGE_TYPE],
        types["std_msgs/msg/Header"],
        types["builtin_interfaces/msg/Time"],
    )
    array = np.ascontiguousarray(array, dtype=np.uint8)
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    stamp = Time(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9))
    return Image(
        header=Header(stamp=stamp, frame_id=frame_id),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=w * channels,
        data=array.reshape(-1),
    )


def write_drive_bag(
    path: str | Path,
    frames: Iterable,
    fps: float = 10.0,
    force: bool = False,
    start_ns: int = START_NS,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> Dict:
    """Write ``frames`` (with ``image`` and ``anomaly`` arrays) to the bag directory ``path``.

    Returns a summary: path, message count per topic, first and last stamp.
    """
    from rosbags.rosbag2 import StoragePlugin

    from cosme_ros.data.bag_crc import ChecksummedWriter

    path = Path(path)
    atomic.check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = _typestore()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    bag = tmp / path.name  # the mcap file inside is named after the bag directory
    count = 0
    stamps = []
    try:
        with ChecksummedWriter(bag, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
            c_img = writer.add_connection(IMAGE_TOPIC, IMAGE_TYPE, typestore=ts)
            c_gt = writer.add_connection(GT_TOPIC, IMAGE_TYPE, typestore=ts)
            for i, frame in enumerate(progress(frames) if progress else frames):
                stamp = int(start_ns + round(i * 1e9 / fps))
                writer.write(
                    c_img,
                    stamp,
                    ts.serialize_cdr(image_message(ts, frame.image, "rgb8", stamp), IMAGE_TYPE),
                )
                writer.write(
                    c_gt,
                    stamp,
                    ts.serialize_cdr(image_message(ts, frame.anomaly, "mono8", stamp), IMAGE_TYPE),
                )
                stamps.append(stamp)
                count += 1
        if count == 0:
            raise CosmeError(f"{path}: no frames to write")
        atomic.replace_dir(bag, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "path": str(path),
        "messages": {IMAGE_TOPIC: count, GT_TOPIC: count},
        "first_stamp_ns": stamps[0],
        "last_stamp_ns": stamps[-1],
        "fps": fps,
    }
