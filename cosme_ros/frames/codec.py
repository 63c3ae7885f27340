"""sensor_msgs/Image and CompressedImage ⇄ numpy, without rclpy or cv_bridge.

Messages are duck-typed: anything with the ``Image`` fields (``height``, ``width``, ``encoding``,
``is_bigendian``, ``step``, ``data``) or the ``CompressedImage`` fields (``format``, ``data``)
decodes, so the offline tools (rosbag replay) and the node share one decoder. Building a real
message needs its class, passed in by the caller (:func:`encode_image`).

Colour conversions follow cv_bridge (``cv_bridge/src/cv_bridge.cpp``, ``getConversionCodes``):

- ROS names Bayer patterns by the top-left 2×2 block read row by row; OpenCV names them by the
  second row's 2nd and 3rd pixels, so ``bayer_rggb8`` is OpenCV's ``BayerBG``, ``bayer_bggr8`` is
  ``BayerRG``, ``bayer_gbrg8`` is ``BayerGR`` and ``bayer_grbg8`` is ``BayerGB``.
- ``yuv422`` is UYVY (U0 Y0 V0 Y1); ``yuv422_yuy2`` is YUYV (Y0 U0 Y1 V0).
- ``mono16`` is scaled to 8 bits by 255/65535 (rounded), as cv_bridge's mono16 → rgb8 does.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from cosme_ros.data.image_header import ImageHeaderError, compressed_size


class ImageMessageError(ValueError):
    """An image message that cannot be decoded; the message is a short reason."""


# encoding → (channels, numpy dtype of one channel, OpenCV conversion to RGB or None)
_LAYOUTS: Dict[str, Tuple[int, str, Optional[int]]] = {
    "rgb8": (3, "u1", None),
    "bgr8": (3, "u1", cv2.COLOR_BGR2RGB),
    "rgba8": (4, "u1", cv2.COLOR_RGBA2RGB),
    "bgra8": (4, "u1", cv2.COLOR_BGRA2RGB),
    "mono8": (1, "u1", cv2.COLOR_GRAY2RGB),
    "mono16": (1, "u2", cv2.COLOR_GRAY2RGB),
    "bayer_rggb8": (1, "u1", cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, "u1", cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, "u1", cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, "u1", cv2.COLOR_BayerGB2RGB),
    "yuv422": (2, "u1", cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, "u1", cv2.COLOR_YUV2RGB_YUY2),
    # Outputs only (not camera images): read back by tools and tests, never decoded to RGB.
    "32FC1": (1, "f4", None),
}

#: Encodings :func:`decode_image` turns into RGB.
DECODABLE_ENCODINGS: Tuple[str, ...] = tuple(e for e in _LAYOUTS if e != "32FC1")
#: Encodings :func:`image_array` / :func:`encode_image` handle as raw arrays.
RAW_ENCODINGS: Tuple[str, ...] = tuple(_LAYOUTS)


def shown(text: Any, limit: int = 64) -> str:
    """A sender's string as it goes into a log line or /diagnostics: repr, at most ``limit``
    characters of it (a 100 kB encoding name was copied into every diagnostics message)."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def bytes_per_pixel(encoding: str) -> int:
    channels, dtype, _ = _layout(encoding)
    return channels * np.dtype(dtype).itemsize


def _layout(encoding: str) -> Tuple[int, str, Optional[int]]:
    try:
        return _LAYOUTS[encoding]
    except (KeyError, TypeError):
        raise ImageMessageError(
            f"unsupported encoding {shown(encoding)} (supported: " f"{', '.join(RAW_ENCODINGS)})"
        ) from None


def _as_bytes(data: Any) -> np.ndarray:
    """The message's data as a flat uint8 array without copying where the buffer allows."""
    if isinstance(data, np.ndarray):
        return (
            data.reshape(-1).view(np.uint8)
            if data.dtype.itemsize == 1
            else np.frombuffer(data.tobytes(), np.uint8)
        )
    try:
        return np.frombuffer(data, np.uint8)  # bytes, bytearray, array.array('B'), memoryview
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)  # list of ints


def _check_size(height: int, width: int, max_pixels: Optional[int]) -> None:
    if width <= 0 or height <= 0:
        raise ImageMessageError(f"empty image ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageMessageError(
            f"image {width}x{height} has more than max_pixels={max_pixels} " f"pixels"
        )


# ----------------------------------------------------------------------------- Image → numpy


def _data_size(data: Any) -> int:
    """Bytes in a message's ``data`` without copying it."""
    if isinstance(data, np.ndarray):
        return int(data.nbytes)
    if isinstance(data, memoryview):
        return data.nbytes
    if hasattr(data, "itemsize"):  # array.array
        return len(data) * data.itemsize
    return len(data)


def check_image(msg: Any, max_pixels: Optional[int] = None, decodable: bool = True) -> None:
    """Validate an Image message's fields against its data without touching the pixels.

    Cheap (no copy, no allocation), so a receiver can reject a malformed or oversized message
    before it queues or decodes it: the size limit is checked first, so a message that *claims*
    16384×16384 is refused on its header alone. Raises :class:`ImageMessageError`.
    """
    encoding = msg.encoding
    if decodable and encoding not in DECODABLE_ENCODINGS:
        raise ImageMessageError(
            f"unsupported encoding {shown(encoding)} (supported: "
            f"{', '.join(DECODABLE_ENCODINGS)})"
        )
    channels, dtype, _ = _layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(height, width, max_pixels)
    if decodable and encoding in ("yuv422", "yuv422_yuy2") and width % 2:
        raise ImageMessageError(f"{encoding} needs an even width, got {width}")
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ImageMessageError(f"step {step} is less than width x bytes per pixel = {row_bytes}")
    size = _data_size(msg.data)
    if size < step * height:
        raise ImageMessageError(f"data has {size} bytes, step x height needs {step * height}")


def image_array(msg: Any, max_pixels: Optional[int] = None) -> np.ndarray:
    """A validated Image message → its pixels, (H, W) or (H, W, C), in native byte order.

    Row padding (``step`` > ``width`` × bytes per pixel) is dropped; 16- and 32-bit data are
    byte-swapped when ``is_bigendian`` differs from this machine. No colour conversion.
    """
    check_image(msg, max_pixels, decodable=False)
    channels, dtype, _ = _layout(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * np.dtype(dtype).itemsize
    buf = _as_bytes(msg.data)
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    item = np.dtype(dtype)
    if item.itemsize > 1:
        item = item.newbyteorder(">" if msg.is_bigendian else "<")
        rows = np.ascontiguousarray(rows).view(item).astype(item.newbyteorder("="), copy=False)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.ascontiguousarray(rows).reshape(shape)


def decode_image(msg: Any, max_pixels: Optional[int] = None) -> np.ndarray:
    """sensor_msgs/Image → RGB uint8 (H, W, 3), C-contiguous.

    For ``rgb8`` without row padding the result is a view of ``msg.data`` (no copy).
    """
    check_image(msg, max_pixels)
    _, _, code = _LAYOUTS[msg.encoding]
    pixels = image_array(msg, max_pixels)
    if pixels.dtype == np.uint16:  # mono16: v · 255 / 65535, rounded to nearest (no ties)
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if code is None:
        return pixels
    return cv2.cvtColor(pixels, code)


# ----------------------------------------------------------------------------- CompressedImage


def check_compressed(msg: Any, max_pixels: Optional[int] = None) -> None:
    """Cheap checks of a CompressedImage before decoding: a colour format, some data, an allowed
    image format (PNG, JPEG, BMP, WebP) and the size its header declares within the limit
    (decompression bombs)."""
    fmt = str(getattr(msg, "format", ""))
    if "compresseddepth" in fmt.lower():
        raise ImageMessageError(f"unsupported compressed format {shown(fmt)} (depth images)")
    if _data_size(msg.data) == 0:
        raise ImageMessageError("compressed image has no data")
    try:  # from the real header, walked to the end if need be (data/image_header.py)
        height, width = compressed_size(_as_bytes(msg.data).tobytes())
    except ImageHeaderError as exc:
        raise ImageMessageError(f"compressed image refused: {exc}") from None
    _check_size(height, width, max_pixels)


def decode_compressed(msg: Any, max_pixels: Optional[int] = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG) → RGB uint8 (H, W, 3).

    ``format`` is only checked for what cannot work (``compressedDepth`` holds depth, not colour);
    the data's own signature decides the codec. compressed_image_transport compresses colour
    images as BGR, which is what ``cv2.imdecode`` returns, so the result is right for
    ``"rgb8; jpeg compressed bgr8"`` as for plain ``"jpeg"``.
    """
    check_compressed(msg, max_pixels)  # refuses decompression bombs before decoding
    fmt = str(getattr(msg, "format", ""))
    buf = _as_bytes(msg.data)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageMessageError(
            f"undecodable compressed data (format {shown(fmt)}, {buf.size} bytes)"
        )
    _check_size(bgr.shape[0], bgr.shape[1], max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode(msg: Any, max_pixels: Optional[int] = None) -> np.ndarray:
    """Image or CompressedImage → RGB uint8 (H, W, 3)."""
    if hasattr(msg, "encoding"):
        return decode_image(msg, max_pixels)
    return decode_compressed(msg, max_pixels)


# ----------------------------------------------------------------------------- numpy → Image


def image_fields(array: np.ndarray, encoding: str) -> Dict[str, Any]:
    """The Image fields (all but ``header``) for ``array`` in ``encoding``, rows contiguous.

    ``array`` must already be in the encoding's layout — (H, W) or (H, W, 1) for one channel,
    (H, W, C) otherwise, of the encoding's dtype (float arrays are cast for ``32FC1``). Data are
    written in this machine's byte order and ``is_bigendian`` says which that is.
    """
    channels, dtype, _ = _layout(encoding)
    array = np.asarray(array)
    if channels == 1 and array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    expected = 2 if channels == 1 else 3
    if array.ndim != expected or (channels > 1 and array.shape[2] != channels):
        want = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ImageMessageError(f"{encoding} needs an array of shape {want}, got {array.shape}")
    if dtype == "f4" and array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    if array.dtype != np.dtype(dtype):
        raise ImageMessageError(f"{encoding} needs dtype {np.dtype(dtype)}, got {array.dtype}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageMessageError(f"empty image ({width}x{height})")
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": int(sys.byteorder == "big" and array.dtype.itemsize > 1),
        "step": int(width * channels * array.dtype.itemsize),
        "data": np.ascontiguousarray(array).tobytes(),
    }


def encode_image(image_cls: type, array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """A new ``image_cls`` (e.g. ``sensor_msgs.msg.Image``) holding ``array``, with ``header``
    (the input's, so that outputs carry its stamp and frame_id) when given."""
    msg = image_cls()
    for key, value in image_fields(array, encoding).items():
        setattr(msg, key, value)
    if header is not None:
        msg.header = header
    return msg
