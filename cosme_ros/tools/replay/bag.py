"""A rosbag2 (sqlite3 or mcap) opened for reading: topics, messages in bag time order, and one
:class:`~cosme_ros.errors.CosmeError` line naming the file for every read error. Every MCAP
chunk's CRC is checked on open (:mod:`cosme_ros.data.bag_crc`)."""

from __future__ import annotations

import contextlib
import sqlite3
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple


from cosme_ros.errors import CosmeError


IMAGE_TYPE = "sensor_msgs/msg/Image"


COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"


IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)


STORAGES = ("mcap", "sqlite3")


# Errors the rosbags readers (and the sqlite3 / mcap code below them) raise on a bag that is not
# readable: missing, truncated, corrupt. Anything else is a bug and keeps its traceback.
_BAG_ERRORS: Tuple[type, ...] = (
    OSError,
    sqlite3.Error,
    struct.error,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    zlib.error,
)


def _bag_errors() -> Tuple[type, ...]:
    from rosbags.rosbag2 import ReaderError
    from rosbags.typesys import TypesysError

    return (ReaderError, TypesysError, *_BAG_ERRORS)


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtypes: Tuple[str, ...]
    count: int

    def describe(self) -> str:
        return f"{self.name} [{', '.join(self.msgtypes)}, {self.count} msgs]"


def _storage_files(path: Path) -> List[Path]:
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if p.suffix in (".mcap", ".db3") or p.name.endswith((".mcap.zstd", ".db3.zstd"))
        )
    return [path]


def _register_bag_type(store: Any, connections: Sequence[Any], msgtype: str) -> None:
    """Add ``msgtype`` to ``store`` from the bag's own definition of it (mcap bags, and sqlite3
    bags of Iron and later, carry their message definitions)."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import get_types_from_msg

    for conn in connections:
        if conn.msgtype == msgtype and conn.msgdef.format == MessageDefinitionFormat.MSG:
            with contextlib.suppress(Exception):  # then deserializing says what is wrong
                store.register(get_types_from_msg(conn.msgdef.data, msgtype))
                return


class Bag:
    """A rosbag2 opened for reading; every read error becomes one :class:`CosmeError` line
    naming the file (the storage file when there is one)."""

    def __init__(self, path: str | Path):
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise CosmeError(
                f"{self.path}: no such bag (a rosbag2 directory with "
                f"metadata.yaml, or an .mcap / .db3 file)"
            )
        try:
            self.reader = Reader(self.path)
            self.reader.open()
        except FileNotFoundError:  # a directory without metadata.yaml
            raise CosmeError(f"{self.path}: not a rosbag2 directory (no metadata.yaml)") from None
        except _bag_errors() as exc:
            raise self._error(exc) from None
        # Every MCAP chunk is decoded and its CRC checked before anything is read from it: a
        # damaged bag stops here with the damaged range (data/bag_crc.py).
        from cosme_ros.data.bag_crc import mcap_storages, verify_mcap

        mcaps = mcap_storages(self.reader)
        self.unchecked_chunks = 0
        try:
            for storage in mcaps:
                self.unchecked_chunks += verify_mcap(storage, Path(storage.path))
        except CosmeError:
            self.close()
            raise
        self.connections = list(self.reader.connections)
        self.storage = "mcap" if mcaps else "sqlite3"
        from rosbags.typesys import Stores, get_typestore

        self.typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.topics: Dict[str, TopicInfo] = {}
        for conn in self.connections:
            old = self.topics.get(conn.topic)
            types = tuple(dict.fromkeys((*(old.msgtypes if old else ()), conn.msgtype)))
            self.topics[conn.topic] = TopicInfo(
                conn.topic, types, (old.count if old else 0) + conn.msgcount
            )

    def _error(self, exc: BaseException) -> CosmeError:
        files = _storage_files(self.path)
        where = files[0] if len(files) == 1 else self.path
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CosmeError(f"{where}: cannot read the bag: {text} (truncated or corrupt?)")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reader.close()

    def __enter__(self) -> "Bag":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe_topics(self) -> str:
        return "; ".join(t.describe() for t in self.topics.values()) or "no topics"

    def connections_for(self, topic: str, allowed: Sequence[str], what: str) -> List[Any]:
        """The connections of ``topic``, which must exist with one of the ``allowed`` types."""
        info = self.topics.get(topic)
        if info is None:
            raise CosmeError(
                f"{self.path}: no topic {topic!r} for the {what}; the bag has: "
                f"{self.describe_topics()}"
            )
        wrong = [t for t in info.msgtypes if t not in allowed]
        if wrong:
            raise CosmeError(
                f"{self.path}: topic {topic!r} is {', '.join(info.msgtypes)}, the "
                f"{what} must be {' or '.join(allowed)}; the bag has: "
                f"{self.describe_topics()}"
            )
        return [c for c in self.connections if c.topic == topic]

    def messages(self, connections: Sequence[Any]) -> Iterator[Tuple[Any, int, Any]]:
        """(connection, bag timestamp ns, raw CDR bytes) of ``connections``, in bag time order."""
        if not connections:  # rosbags reads every topic for an empty list
            return
        it = self.reader.messages(connections=connections)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except _bag_errors() as exc:
                raise self._error(exc) from None
            yield item

    def deserialize(self, raw: Any, msgtype: str, topic: str, bag_ns: int) -> Any:
        """A message object: ROS 2 Humble's definition of its type, else the bag's own."""
        if msgtype not in self.typestore.types:
            _register_bag_type(self.typestore, self.connections, msgtype)
        try:
            return self.typestore.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # rosbags' CDR reader raises anything on garbage  # noqa: BLE001
            raise CosmeError(
                f"{self.path}: message on {topic} at bag time {bag_ns} cannot be "
                f"deserialized as {msgtype} ({type(exc).__name__}: {exc})"
            ) from None


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def topic_rate(bag: Bag, connections: Sequence[Any]) -> Optional[float]:
    """Messages per second of ``connections`` from the bag's metadata (count over duration)."""
    count = sum(c.msgcount for c in connections)
    try:
        duration = bag.reader.duration
    except Exception:  # noqa: BLE001
        return None
    if count < 2 or duration <= 1:
        return None
    return (count - 1) * 1e9 / (duration - 1)  # rosbags adds 1 ns to the duration
