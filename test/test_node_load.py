"""cosme_node under a 30 Hz camera with a model several times slower than that, over real DDS.

The model is a ResNet-18 DeepLabV3+ at a 256x512 network input: a few frames per second on this
CPU, so most camera frames must be dropped. For 20 s the node must keep answering, answer for
recent frames only (no backlog: the age of each processed frame at output stays within about
two processing times), and not grow in memory.
"""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
import ros_util  # noqa: E402
from ros_util import camera_frame, diagnostic_values  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

RATE_HZ = 30.0
DURATION_S = float(__import__("os").environ.get("COSME_LOAD_S", "20"))
WARM_UP_S = 4.0  # at least this long and 5 outputs …
MAX_WARM_UP_S = 10.0  # … but no longer than this
FRAME = (480, 640)  # camera frames: VGA rgb8, 0.9 MB each
NETWORK = "256x512"  # slow on purpose: ~3-5 Hz on one core
MAX_RSS_GROWTH_MB = 50.0
SLACK_S = 1.0  # scheduling on a shared 2-core machine
PROBE_SEC = 9_999  # the stamp of the frame that proves every topic matched


@pytest.fixture(scope="module")
def ros():
    r = ros_util.RosSession("cosme_load_test")
    yield r
    r.close()


class Camera(threading.Thread):
    """Publishes pre-built frames at RATE_HZ with fresh stamps; remembers when each stamp left."""

    def __init__(self, publisher, frames):
        super().__init__(daemon=True)
        self.publisher, self.frames = publisher, frames
        self.sent = {}  # stamp sec → system time (ns) of publishing
        self.stop_event = threading.Event()

    def run(self) -> None:
        period, k = 1.0 / RATE_HZ, 0
        next_t = time.monotonic()
        while not self.stop_event.is_set():
            msg = self.frames[k % len(self.frames)]
            msg.header.stamp.sec = 10_000 + k
            self.sent[msg.header.stamp.sec] = time.time_ns()  # same clock as DDS timestamps
            self.publisher.publish(msg)
            k += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
            else:
                next_t = time.monotonic()  # running late: do not burst to catch up


def test_30hz_camera_against_a_slow_model(tmp_path, ros):
    from bundles import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle")
    # One torch thread: on a 2-core machine shared with other jobs, OpenMP spinning makes two
    # threads' timings erratic; the policy under test does not depend on the thread count.
    env = ros_util.ros_env(extra={"OMP_NUM_THREADS": "1"})
    # Reliable input: with discovery confined to localhost Fast DDS uses UDP only (no shared
    # memory), and best-effort 0.9 MB frames lose fragments on loopback under load — the node
    # would see a few frames per second instead of the camera's 30.
    proc = ros_util.Process(
        ros_util.node_command(
            {
                "bundle": bundle.path,
                "device": "cpu",
                "input_size": NETWORK,
                "input_qos": "DEFAULT",
                "processing_budget_ms": 1e5,
            }
        ),
        env=env,
    )
    outputs = [
        "/segmentation/class_mask",
        "/segmentation/color",
        "/anomaly/score",
        "/anomaly/mask",
        "/anomaly/heatmap",
        "/cosme_node/debug/processing_time_ms",
    ]
    camera = None
    try:
        assert proc.wait_for_output(r"\bready: bundle", 90), proc.output
        client = ros_util.Client(ros, outputs)
        diagnostics = ros_util.DiagnosticsWatch(ros, "/cosme_node")
        client.wait_connected()
        pub = client.pub  # reliable, depth 50
        frames = [camera_frame(*FRAME, encoding="rgb8", seed=i)[0] for i in range(4)]
        # Discovery is not symmetric: this process can see the node's publishers before they
        # have matched its subscriptions, and a reliable writer sends nothing to a reader it has
        # not matched (one CI run lost the first two /segmentation/color frames that way). One
        # frame answered on every output proves all matches; its outputs are then forgotten.
        probe = camera_frame(*FRAME, encoding="rgb8", seed=99)[0]
        probe.header.stamp.sec = PROBE_SEC
        client.send_until_processed(probe, timeout=60.0)
        client.forget()
        camera = Camera(pub, frames)
        camera.start()

        t0, wall_t0 = time.monotonic(), time.time_ns()
        # warm (allocator pools and thread arenas filled) after a few processed frames
        ros_util.spin_until(
            ros.executor,
            lambda: len(client.received["/anomaly/score"]) >= 5
            and time.monotonic() - t0 >= WARM_UP_S,
            MAX_WARM_UP_S,
        )
        rss_start = proc.rss_mb()
        rss = [rss_start]
        while time.monotonic() - t0 < DURATION_S:
            ros.spin_for(1.0)
            rss.append(proc.rss_mb())
        camera.stop_event.set()
        wall_stop = time.time_ns()
        camera.join(5)
        ros.spin_for(1.0)
        # Outputs still in flight when the camera stopped (reliable 1 MB images, repaired
        # fragment by fragment while this process was busy publishing 30 Hz frames) arrive now;
        # the node produces nothing new once its last frame is done.
        ros_util.spin_until(
            ros.executor,
            lambda: all(
                len(client.received[t]) >= len(client.received["/anomaly/score"]) - 2
                for t in outputs[:5]
            ),
            5.0,
        )
        rss_end = proc.rss_mb()
        t_end = time.monotonic()

        # Times are the node's own: when it published each output (DDS source timestamp),
        # against when the camera published the frame it answers — the test process's own
        # scheduling on a busy machine does not enter.
        # (a late repeat of the probe, published again while the node was still matching, is
        # not a camera frame)
        client.forget(stamp_sec=PROBE_SEC)
        score = client.received["/anomaly/score"]
        out_s = np.array(client.published["/anomaly/score"]) * 1e-9
        times_ms = [m.data for m in client.received["/cosme_node/debug/processing_time_ms"]]
        assert len(score) >= 3 and times_ms, proc.output[-3000:]
        proc_max_s, proc_median_s = max(times_ms) / 1e3, statistics.median(times_ms) / 1e3
        bound = 2 * proc_max_s + SLACK_S
        # outputs keep arriving: no silence longer than 5 s (or two processing times when
        # other jobs on the machine slow the model down that far)
        start_s, stop_s = wall_t0 * 1e-9, wall_stop * 1e-9
        gaps = np.diff([start_s, *out_s[out_s <= stop_s], stop_s])
        longest = max(5.0, bound)
        assert gaps[1:].max() <= longest and gaps[0] <= longest + MAX_WARM_UP_S, (
            np.round(gaps, 2).tolist(),
            longest,
            np.round(times_ms).tolist(),
        )
        # every output is for a recent frame: no queue anywhere between camera and output
        ages = [t - camera.sent[m.header.stamp.sec] * 1e-9 for m, t in zip(score, out_s)]
        assert max(ages) <= bound, (max(ages), bound, sorted(ages)[-5:])
        assert statistics.median(ages) <= 2 * proc_median_s + SLACK_S / 2
        # all five outputs come for the frames processed
        for topic in outputs[:5]:
            assert len(client.received[topic]) >= len(score) - 2, topic
        # memory does not grow once warm
        growth = rss_end - rss_start
        assert growth < MAX_RSS_GROWTH_MB, (rss_start, rss_end, rss)

        status = diagnostics.wait_for(lambda s: True, 20)
        assert status is not None
        values = diagnostic_values(status)
        received, processed = int(values["frames received"]), int(values["frames processed"])
        dropped = int(values["frames dropped"])
        assert dropped > 0 and processed < received / 2, values
        assert int(values["frames rejected"]) == 0 and int(values["frames failed"]) == 0
        print(
            f"\nload: {len(camera.sent)} frames sent in {t_end - t0:.1f} s, node received "
            f"{received}, processed {processed}, dropped {dropped}; processing median "
            f"{proc_median_s * 1e3:.0f} ms, max {proc_max_s * 1e3:.0f} ms; output age median "
            f"{statistics.median(ages) * 1e3:.0f} ms, max {max(ages) * 1e3:.0f} ms (bound "
            f"{bound * 1e3:.0f} ms); RSS {rss_start:.0f} → {rss_end:.0f} MB (max "
            f"{max(rss):.0f}; per second: {[round(r) for r in rss]})"
        )
        diagnostics.close()
        client.close()
        code = proc.stop(15)
        assert code == 0, proc.output[-3000:]
        assert "Traceback" not in proc.output
    finally:
        if camera is not None:
            camera.stop_event.set()
        proc.stop()
