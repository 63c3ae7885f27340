"""The size of a compressed image from its own header, before anything is decoded.

A decompression bomb is a small file that declares a huge image: a 1.8 kB JPEG can declare
30000×30000 pixels (2.7 GB of RGB). Decoders allocate what the header declares, so the size must
be read — and refused — first. Every compressed image this package decodes (camera messages, image
files for ``infer`` / ``evaluate`` / ``build-memory``, labels, bag frames) goes through
:func:`compressed_size` and one limit, :data:`MAX_IMAGE_PIXELS` by default (the node's
``max_image_pixels`` parameter).

Formats are allowed by list: PNG, JPEG, BMP and WebP are sized from their headers; anything else
(TIFF, PNM, JPEG 2000, OpenEXR, … which OpenCV would also decode) is refused, because it is not
sized here. Written by hand rather than with a library because the readers that exist (Pillow,
imagesize) either decode more than the header or read JPEG headers only up to a fixed prefix,
which is exactly the hole: libjpeg skips stray bytes before a marker and reads any number of APP
segments before the frame header, so this walker does the same, to the end of the data.
"""

from __future__ import annotations

import struct
from typing import Tuple

#: Default pixel limit, shared by the node (``max_image_pixels``) and the offline tools.
MAX_IMAGE_PIXELS = 4096 * 4096

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageHeaderError(ValueError):
    """The data is not an allowed image format, or its header is broken."""


def _jpeg_size(data: bytes) -> Tuple[int, int]:
    """Walk the JPEG markers as libjpeg does (``next_marker``: bytes other than 0xFF before a
    marker are skipped, 0xFF fill bytes too) up to the first frame header (SOFn)."""
    i, n = 2, len(data)
    while True:
        i = data.find(b"\xff", i)  # libjpeg: "extraneous bytes before marker"
        if i < 0:
            raise ImageHeaderError("JPEG without a frame header")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            raise ImageHeaderError("JPEG without a frame header")
        marker = data[i]
        i += 1
        if marker == 0xD9 or marker == 0xDA:  # EOI, or a scan before any frame header
            raise ImageHeaderError("JPEG without a frame header before its image data")
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            continue
        if i + 2 > n:
            raise ImageHeaderError("JPEG truncated in a marker segment")
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            raise ImageHeaderError(f"JPEG marker segment of length {length}")
        # SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 7 > n:
                raise ImageHeaderError("JPEG truncated in its frame header")
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            if height == 0 or width == 0:  # a DNL marker would give the height later
                raise ImageHeaderError(f"JPEG frame header with size {width}x{height}")
            return height, width
        i += length


def _webp_size(data: bytes) -> Tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return h & 0x3FFF, w & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
    raise ImageHeaderError("WebP without a readable VP8/VP8L/VP8X header")


def compressed_size(data: bytes) -> Tuple[int, int]:
    """(height, width) declared by a PNG, JPEG, BMP or WebP header; ImageHeaderError for other
    formats and for broken headers."""
    data = bytes(data)
    if data[:8] == PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageHeaderError("PNG without an IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM":
        if len(data) < 26:
            raise ImageHeaderError("BMP truncated in its header")
        width, height = struct.unpack("<ii", data[18:26])
        return abs(height), abs(width)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    raise ImageHeaderError("not a PNG, JPEG, BMP or WebP image (other formats are not read)")


def check_pixels(height: int, width: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """ImageHeaderError when the image has more than ``max_pixels`` pixels (or none)."""
    if height <= 0 or width <= 0:
        raise ImageHeaderError(f"image of size {width}x{height}")
    if height * width > max_pixels:
        raise ImageHeaderError(f"{width}x{height} has more than max_pixels={max_pixels} pixels")


def check_compressed_data(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Tuple[int, int]:
    """:func:`compressed_size`, then :func:`check_pixels`; returns (height, width)."""
    height, width = compressed_size(data)
    check_pixels(height, width, max_pixels)
    return height, width
