"""frames.codec against the real sensor_msgs message classes (no DDS needed)."""

from __future__ import annotations

import array
import sys

import cv2
import numpy as np
import pytest

from cosme_ros.frames import codec as codec
from cosme_ros.frames.codec import ImageMessageError

msg = pytest.importorskip("sensor_msgs.msg")
Image, CompressedImage = msg.Image, msg.CompressedImage


def smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    """Distinct, slowly varying channels: R along x, B along y, G a diagonal ramp."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([40 + 170 * x / w, 60 + 100 * (x + y) / (w + h), 220 - 170 * y / h], axis=-1)
    return np.round(rgb).astype(np.uint8)


def noisy_rgb(h: int = 7, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def raw_msg(
    pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False, data_type=bytes
) -> Image:
    """An Image holding ``pixels`` (already in the encoding's layout) with ``pad`` junk bytes per
    row and the requested byte order."""
    h, w = pixels.shape[:2]
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(h, -1)
    junk = np.full((h, pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    m = Image(
        height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1] + pad
    )
    m.data = data_type(data) if data_type is not bytes else data
    m.header.frame_id = "cam"
    m.header.stamp.sec, m.header.stamp.nanosec = 12, 345
    return m


# ----------------------------------------------------------------------------- plain encodings


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize(
    "encoding,convert",
    [
        ("rgb8", lambda rgb: rgb),
        ("bgr8", lambda rgb: rgb[..., ::-1]),
        ("rgba8", lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
        ("bgra8", lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])),
    ],
)
def test_colour_encodings_decode_exactly(encoding, convert, pad):
    rgb = noisy_rgb()
    out = codec.decode_image(raw_msg(convert(rgb), encoding, pad=pad))
    assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize(
    "data_type",
    [bytes, bytearray, list, lambda b: array.array("B", b), lambda b: np.frombuffer(b, np.uint8)],
)
def test_data_container_types(data_type):
    rgb = noisy_rgb()
    m = raw_msg(rgb, "rgb8")
    m2 = Image(height=m.height, width=m.width, encoding="rgb8", step=m.step)
    m2.data = bytes(m.data)
    # duck-typed message with the data in any container the field or a tool may hold
    duck = type(
        "Duck",
        (),
        dict(
            height=m.height,
            width=m.width,
            encoding="rgb8",
            is_bigendian=0,
            step=m.step,
            data=data_type(bytes(m.data)),
        ),
    )()
    np.testing.assert_array_equal(codec.decode_image(duck), rgb)
    np.testing.assert_array_equal(codec.decode_image(m2), rgb)


def test_mono8_is_grey_rgb():
    grey = noisy_rgb()[..., 0]
    out = codec.decode_image(raw_msg(grey, "mono8", pad=3))
    assert out.shape == grey.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 4])
def test_mono16_scaled_and_byte_order(bigendian, pad):
    values = np.array([[0, 65535, 257, 257 * 100], [128, 129, 32768, 65534]], np.uint16)
    out = codec.decode_image(raw_msg(values, "mono16", pad=pad, bigendian=bigendian))
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out[0, :4, 0].tolist() == [0, 255, 1, 100]


def test_mono16_wrong_byte_order_flag_changes_result():
    values = np.array([[0x0100, 0x00FF]], np.uint16)
    right = codec.decode_image(raw_msg(values, "mono16", bigendian=True))
    m = raw_msg(values, "mono16", bigendian=True)
    m.is_bigendian = 0
    assert not np.array_equal(codec.decode_image(m), right)


# ----------------------------------------------------------------------------- Bayer


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an RGB image with a ROS Bayer pattern: ``pattern`` names the top-left 2×2 block
    row by row (``rggb``: R at (0,0), G at (0,1) and (1,0), B at (1,1))."""
    index = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], np.uint8)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[colour]]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_demosaics_smooth_image(pattern):
    rgb = smooth_rgb()
    out = codec.decode_image(raw_msg(mosaic(rgb, pattern), f"bayer_{pattern}8", pad=2))
    inner = (slice(2, -2), slice(2, -2))  # demosaicing borders are approximate
    err = np.abs(out[inner].astype(int) - rgb[inner].astype(int))
    assert err.mean() < 2.0 and err.max() <= 6, (pattern, err.mean(), err.max())


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_wrong_pattern_would_be_detected(pattern):
    """The smooth test image is sensitive to a wrong pattern (swapped or shifted colours)."""
    rgb = smooth_rgb()
    raw = mosaic(rgb, pattern)
    for other in {"rggb", "bggr", "gbrg", "grbg"} - {pattern}:
        out = codec.decode_image(raw_msg(raw, f"bayer_{other}8"))
        err = np.abs(out[2:-2, 2:-2].astype(int) - rgb[2:-2, 2:-2].astype(int))
        assert err.mean() > 10


# ----------------------------------------------------------------------------- YUV 4:2:2


def test_yuv422_is_uyvy_and_yuy2_is_yuyv_by_hand():
    # BT.601 studio range: pure red is Y=81, U(Cb)=90, V(Cr)=240.
    y, u, v = 81, 90, 240
    uyvy = np.array([[[u, y], [v, y]]], np.uint8)  # U0 Y0 V0 Y1
    yuyv = np.array([[[y, u], [y, v]]], np.uint8)  # Y0 U0 Y1 V0
    for encoding, pixels in (("yuv422", uyvy), ("yuv422_yuy2", yuyv)):
        out = codec.decode_image(raw_msg(pixels, encoding)).astype(int)
        assert out.shape == (1, 2, 3)
        assert (out[..., 0] > 235).all() and (out[..., 1:] < 20).all(), (encoding, out)
    # the same bytes read in the other order are not red
    out = codec.decode_image(raw_msg(uyvy, "yuv422_yuy2")).astype(int)
    assert not ((out[..., 0] > 235).all() and (out[..., 1:] < 20).all())


@pytest.mark.parametrize(
    "encoding,code", [("yuv422", cv2.COLOR_RGB2YUV_UYVY), ("yuv422_yuy2", cv2.COLOR_RGB2YUV_YUY2)]
)
def test_yuv422_round_trip_smooth(encoding, code):
    rgb = smooth_rgb()
    packed = cv2.cvtColor(rgb, code)  # (H, W, 2)
    out = codec.decode_image(raw_msg(packed, encoding, pad=4))
    err = np.abs(out.astype(int) - rgb.astype(int))
    assert err.mean() < 2.5 and err.max() <= 8


def test_yuv422_odd_width_is_rejected():
    with pytest.raises(ImageMessageError, match="even width"):
        codec.decode_image(raw_msg(np.zeros((2, 3, 2), np.uint8), "yuv422"))


# ----------------------------------------------------------------------------- compressed


def compressed(rgb: np.ndarray, ext: str, fmt: str) -> CompressedImage:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    m = CompressedImage(format=fmt)
    m.data = buf.tobytes()
    return m


def test_png_decodes_exactly():
    rgb = noisy_rgb(9, 13)
    out = codec.decode_compressed(compressed(rgb, ".png", "png"))
    np.testing.assert_array_equal(out, rgb)
    transported = compressed(rgb, ".png", "bgr8; png compressed bgr8")
    np.testing.assert_array_equal(codec.decode(transported), rgb)


def test_jpeg_decodes_close():
    rgb = smooth_rgb()
    out = codec.decode(compressed(rgb, ".jpg", "rgb8; jpeg compressed bgr8"))
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3


def test_compressed_size_matches_header():
    from cosme_ros.data.image_header import compressed_size

    rgb = smooth_rgb(33, 57)
    for ext in (".png", ".jpg"):
        data = bytes(compressed(rgb, ext, "x").data)
        assert compressed_size(data) == (33, 57)


def test_compressed_errors():
    bad = CompressedImage(format="jpeg")
    bad.data = b"\xff\xd8 definitely not a jpeg"
    with pytest.raises(ImageMessageError, match="refused: JPEG without a frame header"):
        codec.decode_compressed(bad)
    bad.data = bytes(compressed(smooth_rgb(), ".png", "png").data)[:40] + bytes(100)
    with pytest.raises(ImageMessageError, match="undecodable"):  # header intact, data broken
        codec.decode_compressed(bad)
    with pytest.raises(ImageMessageError, match="no data"):
        codec.decode_compressed(CompressedImage(format="jpeg"))
    depth = compressed(smooth_rgb(), ".png", "16UC1; compressedDepth png")
    with pytest.raises(ImageMessageError, match="compressedDepth"):
        codec.decode_compressed(depth)
    with pytest.raises(ImageMessageError, match="max_pixels"):
        codec.decode_compressed(compressed(smooth_rgb(), ".jpg", "jpeg"), max_pixels=100)


# ----------------------------------------------------------------------------- malformed Image


def good() -> Image:
    return raw_msg(noisy_rgb(4, 6), "rgb8", pad=2)


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda m: setattr(m, "width", 0), "empty image"),
        (lambda m: setattr(m, "height", 0), "empty image"),
        (lambda m: setattr(m, "step", 6 * 3 - 1), "step 17 is less than"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "data has 79 bytes"),
        (lambda m: setattr(m, "data", b""), "data has 0 bytes"),
        (lambda m: setattr(m, "encoding", "rgb16"), "unsupported encoding 'rgb16'"),
        (lambda m: setattr(m, "encoding", ""), "unsupported encoding ''"),
        (lambda m: setattr(m, "encoding", "32FC1"), "unsupported encoding '32FC1'"),
    ],
)
def test_malformed_image_raises(mutate, reason):
    m = good()
    mutate(m)
    with pytest.raises(ImageMessageError, match=reason):
        codec.decode_image(m)
    with pytest.raises(ValueError):  # ImageMessageError is a ValueError
        codec.decode(m)


def test_max_pixels():
    m = good()  # 6 x 4 = 24 pixels
    assert codec.decode_image(m, max_pixels=24).shape == (4, 6, 3)
    with pytest.raises(ImageMessageError, match="max_pixels=23"):
        codec.decode_image(m, max_pixels=23)


def test_longer_data_than_needed_is_accepted():
    m = good()
    m.data = bytes(m.data) + b"\x00" * 10
    assert codec.decode_image(m).shape == (4, 6, 3)


# ----------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    "encoding,array",
    [
        ("mono8", np.arange(12, dtype=np.uint8).reshape(3, 4)),
        ("rgb8", noisy_rgb(3, 4)),
        ("32FC1", np.linspace(-3, 5, 12, dtype=np.float32).reshape(3, 4)),
    ],
)
def test_encode_round_trip(encoding, array):
    header = raw_msg(noisy_rgb(1, 1), "rgb8").header
    m = codec.encode_image(Image, array, encoding, header)
    assert isinstance(m, Image)
    channels = 1 if array.ndim == 2 else array.shape[2]
    assert (m.height, m.width, m.encoding) == (3, 4, encoding)
    assert m.step == 4 * channels * array.dtype.itemsize and len(m.data) == m.step * 3
    assert m.is_bigendian == (sys.byteorder == "big" and array.dtype.itemsize > 1)
    assert m.header.frame_id == "cam" and (m.header.stamp.sec, m.header.stamp.nanosec) == (12, 345)
    np.testing.assert_array_equal(codec.image_array(m), array)
    if encoding == "rgb8":
        np.testing.assert_array_equal(codec.decode_image(m), array)


def test_encode_casts_float64_score_and_keeps_header_none():
    m = codec.encode_image(Image, np.ones((2, 2)), "32FC1")
    assert codec.image_array(m).dtype == np.float32 and m.header.frame_id == ""


def test_image_array_reads_big_endian_floats():
    score = np.array([[1.5, -2.25], [1e-3, 7.0]], np.float32)
    m = raw_msg(score, "32FC1", pad=8, bigendian=True)
    np.testing.assert_array_equal(codec.image_array(m), score)


@pytest.mark.parametrize(
    "encoding,array",
    [
        ("mono8", np.zeros((3, 4), np.float32)),
        ("mono8", np.zeros((3, 4, 3), np.uint8)),
        ("rgb8", np.zeros((3, 4), np.uint8)),
        ("32FC1", np.zeros((3, 4), np.uint8)),
        ("rgb8", np.zeros((0, 4, 3), np.uint8)),
        ("nonsense", np.zeros((3, 4), np.uint8)),
    ],
)
def test_encode_rejects_wrong_arrays(encoding, array):
    with pytest.raises(ImageMessageError):
        codec.encode_image(Image, array, encoding)


def test_codec_does_not_import_rclpy():
    import subprocess

    code = (
        "import sys, cosme_ros.frames.codec; "
        "sys.exit(1 if any(m.startswith('rclpy') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------- cv_bridge parity


@pytest.mark.parametrize(
    "encoding",
    [
        "rgb8",
        "bgr8",
        "rgba8",
        "bgra8",
        "mono8",
        "mono16",
        "bayer_rggb8",
        "bayer_bggr8",
        "bayer_gbrg8",
        "bayer_grbg8",
        "yuv422",
        "yuv422_yuy2",
    ],
)
def test_same_as_cv_bridge(encoding):
    cv_bridge = pytest.importorskip("cv_bridge")
    rng = np.random.default_rng(1)
    channels, dtype, _ = codec._LAYOUTS[encoding]
    shape = (6, 8) if channels == 1 else (6, 8, channels)
    high = 65536 if dtype == "u2" else 256
    pixels = rng.integers(0, high, shape).astype(np.dtype(dtype))
    m = raw_msg(pixels, encoding)
    expected = cv_bridge.CvBridge().imgmsg_to_cv2(m, desired_encoding="rgb8")
    np.testing.assert_array_equal(codec.decode_image(m), expected)
