"""What replay writes: the output bag (the inputs copied byte for byte, the node's five outputs
under the input topic's namespace), built beside its target and renamed into place, and the
progress file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from cosme_ros import atomic
from cosme_ros.errors import CosmeError
from cosme_ros.frames import codec
from cosme_ros.frames.render import OUTPUTS
from cosme_ros.tools.replay.bag import IMAGE_TYPE


def normalise_namespace(ns: str) -> str:
    ns = ns.strip()
    if not ns.startswith("/"):
        ns = "/" + ns
    ns = ns.rstrip("/")
    if ns and not all(
        part
        and (part[0].isalpha() or part[0] == "_")
        and all(c.isalnum() or c == "_" for c in part)
        for part in ns[1:].split("/")
    ):
        raise CosmeError(f"output namespace {ns!r} is not a valid ROS namespace")
    return ns


def output_topics(
    image_topic: str, compressed: bool = False, namespace: Optional[str] = None
) -> Dict[str, str]:
    """output key → absolute topic: the node's relative output names under ``namespace``,
    by default the input topic's namespace — where a node started in that namespace (or a
    launch with ``namespace:=``) publishes them: ``/camera/image_raw`` →
    ``/camera/segmentation/class_mask`` …, ``/image`` → ``/segmentation/class_mask``. A
    compressed topic is named as image_transport names it (``<image>/compressed``), so its base
    ``<image>`` decides: ``/camera/image_raw/compressed`` → ``/camera/…``."""
    if namespace is None:
        base = image_topic.rstrip("/")
        if compressed and base.endswith("/compressed"):
            base = base[: -len("/compressed")]
        namespace = base.rsplit("/", 1)[0]
    ns = normalise_namespace(namespace) if namespace not in ("", "/") else ""
    return {key: f"{ns}/{topic}" for key, (topic, _) in OUTPUTS.items()}


class BagTarget:
    """A bag directory built at ``<tmpdir>/<name>`` beside ``path`` (the storage file inside is
    named after the bag) and moved into place by :meth:`commit`; :meth:`discard` removes it."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        self.bag = self.tmp / path.name

    def commit(self) -> None:
        with atomic.signals_deferred():
            atomic.replace_dir(self.bag, self.path)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_progress(path: Path, done: int, total: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"frames_done": done, "frames_total": total}) + "\n")
    os.replace(tmp, path)


def _image_msg(typestore: Any, array: np.ndarray, encoding: str, header: Any) -> Any:
    fields = codec.image_fields(array, encoding)
    fields["data"] = np.frombuffer(fields["data"], np.uint8)
    return typestore.types[IMAGE_TYPE](header=header, **fields)


class OutputBag:
    """The output bag: built at a temporary path beside the target (:class:`BagTarget`), the
    inputs copied byte for byte, the node's outputs added, committed or discarded as a whole."""

    def __init__(
        self,
        path: Path,
        storage: str,
        typestore: Any,
        inputs: Sequence[Any],
        topics: Dict[str, str],
    ):
        from rosbags.rosbag2 import StoragePlugin

        from cosme_ros.data.bag_crc import ChecksummedWriter

        self.typestore, self.topics = typestore, topics
        self.target = BagTarget(path)
        self.closed = False
        self.writer = ChecksummedWriter(
            self.target.bag,
            version=8,
            storage_plugin={"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage],
        )
        self.conns: Dict[str, Any] = {}
        self.types: Dict[str, str] = {}
        try:
            self.writer.open()
            for conn in inputs:  # several connections of one topic (two recorders) → one
                if conn.topic not in self.conns:
                    self._add(conn.topic, conn.msgtype, conn.ext.offered_qos_profiles)
            for topic in topics.values():
                self._add(topic, IMAGE_TYPE, ())
        except BaseException:
            self.discard()
            raise
        self.counts = {t: 0 for t in self.conns}

    def _add(self, topic: str, msgtype: str, qos) -> None:
        self.conns[topic] = self.writer.add_connection(
            topic, msgtype, typestore=self.typestore, offered_qos_profiles=list(qos)
        )
        self.types[topic] = msgtype

    def copy(self, topic: str, bag_ns: int, raw: Any) -> None:
        self.writer.write(self.conns[topic], bag_ns, raw)
        self.counts[topic] += 1

    def add_outputs(
        self, images: Dict[str, Tuple[np.ndarray, str]], header: Any, bag_ns: int
    ) -> None:
        """The node's output images, each with the input's header, at the input's bag time."""
        for key, (array, encoding) in images.items():
            msg = _image_msg(self.typestore, array, encoding, header)
            self.copy(self.topics[key], bag_ns, self.typestore.serialize_cdr(msg, IMAGE_TYPE))

    def close(self) -> None:
        """Finish the bag (still at its temporary path)."""
        if not self.closed:
            self.writer.close()
            self.closed = True

    def commit(self) -> None:
        self.close()
        self.target.commit()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.abort()
        self.target.discard()

    def summary(self) -> Dict[str, Dict[str, Any]]:
        return {t: {"type": self.types[t], "count": n} for t, n in self.counts.items()}
