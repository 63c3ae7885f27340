"""Checksums in MCAP bags: written on every chunk, verified before a bag is read.

The MCAP format gives each chunk a CRC-32 of its uncompressed records; 0 means "not computed".
rosbags 0.11 (the bag library here) verifies a non-zero CRC when it reads a chunk but writes 0,
so a bag written by it and damaged later reads back silently changed. Two small pieces on top
of rosbags, rather than a second MCAP library for the same files:

- :class:`ChecksummedWriter` — rosbags' ``Writer`` whose MCAP storage fills in each chunk's
  CRC (the same record layout rosbags' reader seeks to);
- :func:`verify_mcap` — every chunk of an MCAP file decoded and checked up front, so that
  replay stops before any work with one line naming the file and the damaged range (bytes and
  message times) instead of failing or, worse, reading on.
"""

from __future__ import annotations

import struct
from binascii import crc32
from pathlib import Path
from typing import Any, List

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError
from rosbags.rosbag2.storage_mcap import McapReader, McapWriter, decompress

from cosme_ros.errors import CosmeError

__all__ = ["ChecksummedWriter", "verify_mcap", "mcap_storages", "MCAP_CHUNK_CRC_OFFSET"]

# A chunk record: opcode (1) + record length (8), then message start / end time and the
# uncompressed size (3 × 8), then the uncompressed CRC-32 (MCAP spec, "Chunk").
MCAP_CHUNK_CRC_OFFSET = 1 + 8 + 3 * 8


class ChecksummedMcapWriter(McapWriter):
    """rosbags' MCAP writer with each chunk's CRC-32 filled in after rosbags writes the chunk."""

    def close_chunk(self) -> None:
        records = self.chunk.bio.getvalue()
        start = self.bio.tell()
        super().close_chunk()
        end = self.bio.tell()
        self.bio.seek(start + MCAP_CHUNK_CRC_OFFSET)
        self.bio.write(struct.pack("<I", crc32(records)))
        self.bio.seek(end)


class ChecksummedWriter(Writer):
    """``rosbags.rosbag2.Writer`` (same arguments) writing MCAP chunks with their CRC-32."""

    STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: ChecksummedMcapWriter}


def verify_mcap(storage: Any, path: Path) -> int:
    """Decode every chunk of an opened rosbags ``McapReader`` (``storage``, the file ``path``)
    and check its CRC; returns how many chunks carry none (0: "not computed", nothing to check).
    Raises :class:`CosmeError` naming the file, the damaged chunk's bytes and its messages'
    time range."""
    unchecked = 0
    with open(path, "rb") as f:
        for chunk in storage.chunks:
            start = chunk.chunk_start_offset
            try:
                f.seek(start + MCAP_CHUNK_CRC_OFFSET)
                head = f.read(4)
                f.seek(start + MCAP_CHUNK_CRC_OFFSET + 4 + 4 + len(chunk.compression) + 8)
                data = f.read(chunk.compressed_size)
                if len(head) < 4 or len(data) < chunk.compressed_size:
                    raise ReaderError("the file ends inside it")
                crc = struct.unpack("<I", head)[0]
                unchecked += crc == 0
                decompress(data, chunk.compression, chunk.uncompressed_size, crc)
            except (ReaderError, ValueError, OSError) as exc:
                raise CosmeError(
                    f"{path}: damaged data in bytes {start}–{start + chunk.chunk_length} "
                    f"(messages stamped {chunk.message_start_time}–{chunk.message_end_time} ns): "
                    f"{str(exc).rstrip('.') or type(exc).__name__}"
                ) from None
    return unchecked


def mcap_storages(reader: Any) -> List[Any]:
    """The opened MCAP storage readers of a rosbags ``Reader`` (none for sqlite3)."""
    storages = getattr(reader.storage, "storages", [reader.storage])
    return [s for s in storages if isinstance(s, McapReader)]
