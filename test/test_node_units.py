"""The node's pure parts, without DDS: health verdicts, heatmap range, outputs, parameter values,
cheap message checks."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from cosme_ros.frames import codec
from cosme_ros.ros.monitor import ERROR, OK, WARN, FrameMonitor
from cosme_ros.frames.render import RunningRange, render_outputs

PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]


# ----------------------------------------------------------------------------- monitor


def steady_camera(
    monitor: FrameMonitor, t0: float, n: int, hz: float = 10.0, ms: float = 20.0
) -> float:
    t = t0
    for _ in range(n):
        monitor.received(t)
        monitor.processed(ms)
        t += 1.0 / hz
    return t


def test_monitor_ok_when_fast_and_fed():
    m = FrameMonitor(0.0)
    t = steady_camera(m, 0.0, 10)
    r = m.report(t, since_last_frame_s=0.05, budget_ms=50.0)
    assert r.level == OK and "20.0 ms within 50 ms" in r.message
    assert r.values["input rate (Hz)"] == "10.00" and r.values["frames processed"] == "10"


def test_monitor_waiting_then_stale_then_error():
    m = FrameMonitor(0.0)
    assert m.report(1.0, None, 50.0).level == WARN  # no image yet
    assert "waiting for the first image" in m.report(2.0, None, 50.0).message
    t = steady_camera(m, 2.0, 10, hz=10.0)
    assert m.report(t, 0.1, 50.0).level == OK
    r = m.report(t + 2, 2.0, 50.0)  # 10 Hz camera silent for 2 s (> max(1 s, 3 periods))
    assert r.level == WARN and "no image for 2.0 s" in r.message
    r = m.report(t + 6, 6.0, 50.0)
    assert r.level == ERROR and "no image for 6.0 s" in r.message


def test_monitor_stale_threshold_follows_a_slow_camera():
    m = FrameMonitor(0.0)
    t = steady_camera(m, 0.0, 5, hz=0.5)  # one frame every 2 s
    assert m.report(t, 4.5, 50.0).level == OK  # normal for this camera (stale after 3 periods)
    assert m.report(t, 7.0, 50.0).level == WARN
    assert m.report(t, 20.0, 50.0).level == ERROR


def test_monitor_over_budget_rejected_failed():
    m = FrameMonitor(0.0)
    t = steady_camera(m, 0.0, 5, ms=80.0)
    r = m.report(t, 0.05, 50.0)
    assert r.level == WARN and "processing 80.0 ms over the budget of 50 ms" in r.message
    m.received(t, accepted=False)
    m.rejected("data has 1 bytes, step x height needs 2")
    r = m.report(t + 1, 0.05, 1e3)
    assert r.level == WARN and "1 frames rejected (data has 1 bytes" in r.message
    assert r.values["frames rejected"] == "1" and r.values["frames received"] == "6"
    m.failed("RuntimeError: boom")
    r = m.report(t + 2, 0.05, 1e3)  # failed and nothing processed in the period: error
    assert r.level == ERROR and "pipeline failed on all 1 frames (RuntimeError: boom)" in r.message
    m.failed("RuntimeError: boom")
    m.processed(10.0)
    assert m.report(t + 3, 0.05, 1e3).level == WARN
    m.dropped()
    r = m.report(t + 4, 0.05, 1e3)
    assert r.level == OK and r.values["frames dropped"] == "1"  # dropping alone is fine


# ----------------------------------------------------------------------------- heatmap range


def test_running_range_does_not_jump_with_one_frame():
    rng = np.random.default_rng(0)
    r = RunningRange(rate=0.05)
    for _ in range(50):
        lo, hi = r.update(rng.normal(0.0, 1.0, (60, 80)).astype(np.float32))
    assert -3 < lo < -2 and 2 < hi < 3
    spike = rng.normal(0.0, 1.0, (60, 80)).astype(np.float32)
    spike[:30] += 20.0  # one frame with a huge anomaly
    lo2, hi2 = r.update(spike)
    assert abs(lo2 - lo) < 0.2 and hi2 - hi < 0.05 * 25  # moved by at most 5 % of the jump
    for _ in range(200):
        r.update(spike)
    assert r.hi > 20  # but it does follow a lasting change


def test_running_range_first_frame_and_degenerate_scores():
    r = RunningRange()
    assert r.update(np.full((4, 4), np.nan, np.float32)) == (0.0, 1.0)
    lo, hi = r.update(np.full((4, 4), 3.0, np.float32))
    assert lo == 3.0 and hi > lo


# ----------------------------------------------------------------------------- outputs


def test_render_outputs_only_what_is_wanted_and_at_network_size():
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    classes = np.array([[0, 1], [2, 1]], np.uint8).repeat(16, 0).repeat(32, 1)  # 32x64
    score = np.linspace(-1, 1, 32 * 64, dtype=np.float32).reshape(32, 64)
    assert render_outputs(rgb, classes, score, set(), threshold=0, alpha=0.5, palette=PALETTE) == {}
    out = render_outputs(
        rgb,
        classes,
        score,
        {"class_mask", "color", "score", "mask", "heatmap"},
        threshold=0.0,
        alpha=0.5,
        palette=PALETTE,
        heat_range=(-1.0, 1.0),
    )
    assert {k: v[1] for k, v in out.items()} == {
        "class_mask": "mono8",
        "color": "rgb8",
        "score": "32FC1",
        "mask": "mono8",
        "heatmap": "rgb8",
    }
    for array, _ in out.values():
        assert array.shape[:2] == (32, 64)
    np.testing.assert_array_equal(out["mask"][0], np.where(score > 0, 255, 0))
    np.testing.assert_array_equal(out["color"][0], np.asarray(PALETTE, np.uint8)[classes])
    zero = render_outputs(
        rgb, classes, score, {"heatmap"}, threshold=0, alpha=0.0, palette=PALETTE
    )["heatmap"][0]
    assert zero.shape == (32, 64, 3)  # the camera image, resized to the output size


def plain_colorize(classes, palette):
    """The reference: numpy fancy indexing into a 256-entry table, black beyond the palette."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[classes]


def test_fast_colorize_and_mask_match_the_plain_numpy_ones():
    from cosme_ros.data.cityscapes import CITYSCAPES_PALETTE
    from cosme_ros.frames.render import colorize, threshold_mask

    rng = np.random.default_rng(3)
    classes = rng.integers(0, 256, (37, 53)).astype(np.uint8)  # beyond the palette: black
    np.testing.assert_array_equal(
        colorize(classes, CITYSCAPES_PALETTE), plain_colorize(classes, CITYSCAPES_PALETTE)
    )
    score = rng.normal(0, 1, (37, 53)).astype(np.float32)
    score[0, :5] = [np.nan, np.inf, -np.inf, 0.25, 0.2500001]
    a = np.float32(0.25)
    b = np.nextafter(a, np.float32(1))
    score[1, :2] = [a, b]
    for t in (0.25, -1.0, 3.0, (float(a) + float(b)) / 2, float(b) - 1e-12, float(a) + 1e-12):
        np.testing.assert_array_equal(
            threshold_mask(score, t), np.where(score > t, 255, 0).astype(np.uint8)
        )


# ----------------------------------------------------------------------------- parameter values


def test_parse_input_size_and_heatmap_range():
    import array

    node = pytest.importorskip("cosme_ros.ros.node")
    assert node.parse_input_size("") is None and node.parse_input_size([]) is None
    assert node.parse_input_size(None) is None
    assert node.parse_input_size("512x1024") == (512, 1024)
    assert node.parse_input_size(array.array("q", [64, 128])) == (64, 128)
    for bad in ("512", "axb", [1.5, 2.0], [512], [True, 64], [31, 64]):
        with pytest.raises(ValueError):
            node.parse_input_size(bad)
    assert node.parse_heatmap_range("auto") is None and node.parse_heatmap_range("") is None
    assert node.parse_heatmap_range(array.array("d", [-1.0, 2.5])) == (-1.0, 2.5)
    assert node.parse_heatmap_range([0, 3]) == (0.0, 3.0)
    for bad in ([1.0], [2.0, 2.0], [float("nan"), 1.0], "0..1"):
        with pytest.raises(ValueError):
            node.parse_heatmap_range(bad)


def test_default_bundle_path_is_the_repository_demo_without_an_ament_index(monkeypatch):
    node = pytest.importorskip("cosme_ros.ros.node")
    from pathlib import Path

    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    repo = Path(node.__file__).resolve().parents[2]
    assert node.default_bundle_path() == repo / "models" / "demo"


def test_default_bundle_path_uses_the_installed_share(monkeypatch, tmp_path):
    node = pytest.importorskip("cosme_ros.ros.node")
    marker = tmp_path / "share" / "ament_index" / "resource_index" / "packages"
    marker.mkdir(parents=True)
    (marker / "cosme_ros").write_text("")
    (tmp_path / "share" / "cosme_ros").mkdir()
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    assert node.default_bundle_path() == tmp_path / "share" / "cosme_ros" / "models" / "demo"


# ----------------------------------------------------------------------------- cheap checks


def test_check_image_refuses_a_huge_claim_without_allocating():
    msg = SimpleNamespace(
        height=16384, width=16384, encoding="rgb8", is_bigendian=0, step=16384 * 3, data=bytes(100)
    )
    tracemalloc.start()
    try:
        with pytest.raises(codec.ImageMessageError, match="more than max_pixels"):
            codec.check_image(msg, max_pixels=4096 * 4096)
        with pytest.raises(codec.ImageMessageError, match="data has 100 bytes"):
            codec.check_image(msg, max_pixels=None)  # no limit: still no allocation
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize(
    "data", [bytes(24 * 3), bytearray(24 * 3), list(range(72)), np.zeros(72, np.uint8)]
)
def test_check_image_accepts_data_containers(data):
    import array

    msg = SimpleNamespace(height=4, width=6, encoding="rgb8", is_bigendian=0, step=18, data=data)
    codec.check_image(msg)
    msg.data = array.array("B", bytes(72))
    codec.check_image(msg)
    msg.data = msg.data[:-1]
    with pytest.raises(codec.ImageMessageError):
        codec.check_image(msg)


def test_check_compressed_refuses_a_png_bomb_from_its_header():
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    data[16:24] = (16384).to_bytes(4, "big") * 2
    msg = SimpleNamespace(format="png", data=bytes(data))
    with pytest.raises(codec.ImageMessageError, match="16384x16384 has more than"):
        codec.check_compressed(msg, max_pixels=4096 * 4096)
    with pytest.raises(codec.ImageMessageError, match="no data"):
        codec.check_compressed(SimpleNamespace(format="jpeg", data=b""))


def test_ctrl_c_inside_the_executors_constructor_is_clean():
    """Ctrl-C just as the node logged "ready" sometimes printed `Exception ignored in
    Executor.__del__ … '_sigint_gc'`: the signal landed inside rclpy's Executor.__init__. The
    executor is now built first, with the signals held; the Ctrl-C then ends start-up cleanly."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "import rclpy.executors as ex\n"
        "from cosme_ros.ros import node as node_mod\n"
        "real = ex.SignalHandlerGuardCondition\n"
        "def interrupted(context):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(context)\n"
        "ex.SignalHandlerGuardCondition = interrupted\n"
        "class NeverStarts:\n"
        "    def __init__(self):\n"
        "        raise SystemExit('the node must not start after Ctrl-C')\n"
        "node_mod.CosmeNode = NeverStarts\n"
        "sys.exit(node_mod.main([]))\n"
    )
    pytest.importorskip("rclpy")
    import ros_util

    env = ros_util.ros_env()  # localhost discovery, a random domain
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "Exception ignored" not in proc.stderr and "_sigint_gc" not in proc.stderr, proc.stderr
