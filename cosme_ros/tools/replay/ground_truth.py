"""Ground truth for replay: anomaly masks from a mono8 topic or a folder of ``<stamp_ns>.png``
files, matched to frames by header stamp, as metric labels (1 anomaly, 0 in-distribution, 255
void)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from cosme_ros.errors import CosmeError
from cosme_ros.frames import codec
from cosme_ros.tools.replay.bag import Bag, stamp_ns


MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".pgm")


def gt_labels(gt: np.ndarray, anomaly_value: int) -> np.ndarray:
    """A ground-truth mask → metric labels: 0 stays in-distribution, ``anomaly_value`` (1 or
    255) becomes 1 (anomaly), every other value 255 (ignored)."""
    labels = np.full(gt.shape, 255, np.uint8)
    labels[gt == 0] = 0
    labels[gt == anomaly_value] = 1
    return labels


def read_mask_folder(folder: str | Path) -> Tuple[Dict[int, Path], List[str]]:
    """``{stamp_ns: path}`` of the masks in ``folder`` — file stem = the image's header stamp in
    nanoseconds (``1700000000100000000.png``) — and the names of files that are not masks."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CosmeError(
            f"{folder}: no such directory (--gt-masks takes a folder of masks "
            f"named <stamp in nanoseconds>.png)"
        )
    masks: Dict[int, Path] = {}
    other: List[str] = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in MASK_SUFFIXES and p.stem.isdigit():
            stamp = int(p.stem)
            if stamp in masks:
                raise CosmeError(f"{p}: a second mask for stamp {stamp} ({masks[stamp].name})")
            masks[stamp] = p
        else:
            other.append(p.name)
    if not masks:
        raise CosmeError(
            f"{folder}: no masks named <stamp in nanoseconds>" f"{'|'.join(MASK_SUFFIXES)}"
        )
    return masks, other


def _read_mask(path: Path) -> np.ndarray:
    from cosme_ros.data.images import decode_file

    mask = decode_file(path, cv2.IMREAD_UNCHANGED, error=CosmeError, what="mask")
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, mask.shape[2])):
            raise CosmeError(f"{path}: a colour image; a mask has one channel (0, 1 or 255)")
        mask = mask[..., 0]
    if mask.dtype != np.uint8:
        raise CosmeError(f"{path}: {mask.dtype} pixels; a mask is 8-bit")
    return mask


def _gt_from_message(msg: Any, topic: str) -> np.ndarray:
    if msg.encoding not in ("mono8", "8UC1"):
        raise CosmeError(
            f"ground truth on {topic} is {msg.encoding!r}; it must be mono8 "
            f"(0 in-distribution, 1 or 255 anomaly)"
        )
    fields = msg if msg.encoding == "mono8" else _Mono8(msg)
    try:
        return codec.image_array(fields)
    except codec.ImageMessageError as exc:
        raise CosmeError(
            f"ground truth on {topic} at stamp {stamp_ns(msg.header)}: " f"{exc}"
        ) from None


class _Mono8:
    """An 8UC1 message read as mono8 (the same bytes)."""

    def __init__(self, msg):
        self.height, self.width, self.step = msg.height, msg.width, msg.step
        self.is_bigendian, self.data, self.encoding = msg.is_bigendian, msg.data, "mono8"


class GroundTruth:
    """Masks by header stamp, from a topic (read first, kept zlib-compressed: masks compress
    ~100x) or a folder (read when their frame comes)."""

    def __init__(self, bag: Bag, conns: Sequence[Any], folder: Optional[Path], progress: bool):
        self.packed: Dict[int, Tuple[Tuple[int, ...], bytes]] = {}
        self.files: Dict[int, Path] = {}
        self.used: set = set()
        self.duplicates = 0
        self.notes: List[str] = []
        if folder is not None:
            self.files, other = read_mask_folder(folder)
            if other:
                self.notes.append(
                    f"{len(other)} file(s) in {folder} are not named "
                    f"<stamp_ns>.png and are ignored (first: {other[0]})"
                )
        n = sum(c.msgcount for c in conns)
        for conn, bag_ns, raw in tqdm(
            bag.messages(conns),
            total=n,
            desc="ground truth",
            unit="msg",
            leave=False,
            disable=not progress or n < 2,
            dynamic_ncols=True,
        ):
            msg = bag.deserialize(raw, conn.msgtype, conn.topic, bag_ns)
            stamp = stamp_ns(msg.header)
            if stamp in self.packed:
                self.duplicates += 1
                continue
            mask = _gt_from_message(msg, conn.topic)
            self.packed[stamp] = (mask.shape, zlib.compress(mask.tobytes(), 1))

    def mask_for(self, stamp: int) -> Optional[np.ndarray]:
        if stamp in self.packed:
            shape, packed = self.packed[stamp]
            mask = np.frombuffer(zlib.decompress(packed), np.uint8).reshape(shape)
        elif stamp in self.files:
            mask = _read_mask(self.files[stamp])
        else:
            return None
        self.used.add(stamp)
        return mask

    @property
    def unused(self) -> int:
        return len((set(self.packed) | set(self.files)) - self.used)
