"""Helpers for tests that talk to ROS 2 processes over real DDS, confined to this machine.

Every process started here, and the test process's own rclpy context, use
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and one random ``ROS_DOMAIN_ID`` per test session, so
that nothing leaves loopback and concurrent test runs do not see each other.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from cosme_ros.ros.dds_profile import FASTDDS_PROFILE_KEYS
from cosme_ros.ros.session import ROS_KEYS, LocalSession, localhost_env

DOMAIN_ID = random.SystemRandom().randint(1, 100)


def ros_env(
    domain_id: int = DOMAIN_ID, extra: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """The current environment, confined to localhost discovery on ``domain_id``
    (:func:`cosme_ros.ros.session.localhost_env`), with unbuffered, uncoloured logs."""
    env = localhost_env(domain_id=domain_id)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "RCUTILS_COLORIZED_OUTPUT": "0",
            "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
        }
    )
    env.update(extra or {})
    return env


def confine_this_process(domain_id: int = DOMAIN_ID) -> None:
    """Apply :func:`ros_env`'s ROS settings to ``os.environ`` for the rest of the process (a
    launch test's launched node inherits them)."""
    env = ros_env(domain_id)
    for k in ROS_KEYS:
        if k in FASTDDS_PROFILE_KEYS:
            continue  # a profile stays the user's
        if k in env:
            os.environ[k] = env[k]
        else:
            os.environ.pop(k, None)


REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "cosme.yaml"


def node_command(
    params: Mapping[str, object] = (),
    remaps: Mapping[str, str] = (),
    params_file: Optional[Path] = None,
) -> List[str]:
    """``cosme_node --ros-args [--params-file F] -p k:=v … -r from:=to …`` (the venv's console
    script when installed, else ``python -m cosme_ros.ros.node``); ``-p`` after the file wins."""
    script = Path(sys.executable).with_name("cosme_node")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "cosme_ros.ros.node"]
    cmd.append("--ros-args")
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for k, v in dict(params).items():
        cmd += ["-p", f"{k}:={v}"]
    for k, v in dict(remaps).items():
        cmd += ["-r", f"{k}:={v}"]
    return cmd


class Process:
    """A child process whose combined stdout/stderr is collected by a reader thread."""

    def __init__(
        self, cmd: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None
    ):
        self.cmd = list(cmd)
        self.proc = subprocess.Popen(
            self.cmd,
            env=dict(env or ros_env()),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._lines: List[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_for_output(self, pattern: str, timeout: float) -> Optional[re.Match]:
        """The first match of regex ``pattern`` in the output, waiting up to ``timeout`` s;
        None on timeout or when the process has ended without it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search("".join(self._lines))
                if m or self.proc.poll() is not None and not self._reader.is_alive():
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    def wait(self, timeout: float) -> Optional[int]:
        """Exit status, or None if still running after ``timeout`` s."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(5)
        return code

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        """Resident memory of the process now (VmRSS in /proc/<pid>/status), in MiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024.0

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to this process only."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGINT, then SIGKILL after ``timeout`` s; the exit status."""
        self.interrupt()
        code = self.wait(timeout)
        if code is None:
            self.proc.kill()
            code = self.wait(5)
        return code


def spin_until(
    executor,
    predicate: Callable[[], bool],
    timeout: float,
    step: float = 0.05,
    between: Optional[Callable[[], None]] = None,
    every: float = 1.0,
) -> bool:
    """Spin ``executor`` until ``predicate()`` holds or ``timeout`` s pass; ``between()`` (e.g.
    re-publishing a best-effort frame) runs at the start and every ``every`` s."""
    deadline = time.monotonic() + timeout
    next_call = time.monotonic()
    while time.monotonic() < deadline:
        if predicate():
            return True
        if between is not None and time.monotonic() >= next_call:
            between()
            next_call = time.monotonic() + every
        executor.spin_once(timeout_sec=step)
    return predicate()


# ----------------------------------------------------------------------------- talking to a node


class RosSession(LocalSession):
    """The test's own rclpy context, node and executor on the session's domain
    (:class:`cosme_ros.ros.session.LocalSession`: localhost, no signal handlers, so pytest keeps
    Ctrl-C)."""

    def __init__(self, name: str = "cosme_node_test"):
        super().__init__(name, domain_id=DOMAIN_ID)

    def spin_for(self, seconds: float) -> None:
        spin_until(self.executor, lambda: False, seconds)

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        """Call service ``name`` and return its response (fails the test on timeout)."""
        client = self.node.create_client(srv_type, name)
        try:
            assert spin_until(
                self.executor, client.service_is_ready, timeout
            ), f"service {name} did not appear"
            future = client.call_async(request)
            assert spin_until(self.executor, future.done, timeout), f"no answer from {name}"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node: str, values: Mapping[str, object], timeout: float = 30.0):
        """``ros2 param set`` over the parameter service: one SetParametersResult per value."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        return list(self.call(SetParameters, f"{node}/set_parameters", request, timeout).results)

    def describe_parameters(self, node: str, names: Sequence[str], timeout: float = 30.0):
        from rcl_interfaces.srv import DescribeParameters

        request = DescribeParameters.Request(names=list(names))
        return {
            d.name: d
            for d in self.call(
                DescribeParameters, f"{node}/describe_parameters", request, timeout
            ).descriptors
        }


def diagnostic_values(status) -> Dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


class DiagnosticsWatch:
    """Collects the /diagnostics statuses whose name starts with ``node_name`` (e.g.
    ``/cosme_node``), so that several nodes on the domain do not mix."""

    def __init__(self, session: RosSession, node_name: str):
        from diagnostic_msgs.msg import DiagnosticArray

        self.session, self.prefix = session, node_name + ":"
        self.statuses: List = []
        self.sub = session.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_msg, 50
        )

    def _on_msg(self, msg) -> None:
        self.statuses += [s for s in msg.status if s.name.startswith(self.prefix)]

    def wait_for(
        self,
        predicate: Callable[[object], bool],
        timeout: float,
        between: Optional[Callable[[], None]] = None,
        every: float = 0.2,
    ):
        """The first status received from now on for which ``predicate`` holds, or None."""
        start = len(self.statuses)
        found: List = []

        def check() -> bool:
            found[:] = [s for s in self.statuses[start:] if predicate(s)][:1]
            return bool(found)

        spin_until(self.session.executor, check, timeout, between=between, every=every)
        return found[0] if found else None

    def close(self) -> None:
        self.session.node.destroy_subscription(self.sub)


_stamps = itertools.count(100)


def camera_frame(
    h: int = 40,
    w: int = 56,
    encoding: str = "bgr8",
    frame_id: str = "cam_test",
    seed: int = 0,
    rgb=None,
):
    """(sensor_msgs/Image, its RGB pixels): a smooth colourful test picture with some noise,
    stamped with a fresh ``sec`` (unique per frame in this session) and ``nanosec`` 123456."""
    import numpy as np
    from sensor_msgs.msg import Image
    from cosme_ros.frames import codec

    if rgb is None:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.clip(
            np.stack([x * 4, y * 5, 255 - x * 3], -1) + rng.integers(0, 30, (h, w, 3)), 0, 255
        ).astype(np.uint8)
    pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
    msg = codec.encode_image(Image, np.ascontiguousarray(pixels), encoding)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = next(_stamps), 123456
    return msg, rgb


def restamp(msg):
    """``msg`` with a fresh stamp (same pixels)."""
    msg.header.stamp.sec = next(_stamps)
    return msg


class Client:
    """Publishes camera frames to a node and collects what it publishes on ``outputs``, with
    the monotonic time each message reached this test (``arrivals``) and the system time (ns)
    the node published it (``published``: the DDS source timestamp, independent of when this
    process got round to reading it)."""

    def __init__(
        self,
        session: RosSession,
        outputs: Sequence[str],
        image_topic: str = "/image",
        image_type=None,
    ):
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float64

        self.session, self.node = session, session.node
        self.received: Dict[str, List] = {t: [] for t in outputs}
        self.arrivals: Dict[str, List[float]] = {t: [] for t in outputs}
        self.published: Dict[str, List[int]] = {t: [] for t in outputs}
        qos = QoSProfile(depth=50)
        self.pub = self.node.create_publisher(image_type or Image, image_topic, qos)
        self.subs = [
            self.node.create_subscription(
                Float64 if t.endswith("processing_time_ms") else Image,
                t,
                lambda m, info, t=t: self._on_msg(t, m, info),
                qos,
            )
            for t in outputs
        ]

    def _on_msg(self, topic: str, msg, info) -> None:
        self.received[topic].append(msg)
        self.arrivals[topic].append(time.monotonic())
        self.published[topic].append(int(info["source_timestamp"]))

    def close(self) -> None:
        for s in self.subs:
            self.node.destroy_subscription(s)
        self.node.destroy_publisher(self.pub)

    def forget(self, stamp_sec: Optional[int] = None) -> None:
        """Drop what was received: everything, or only the image messages stamped ``stamp_sec``
        (with their arrival and publication times)."""
        for topic in self.received:
            keep = [
                stamp_sec is not None
                and (getattr(m, "header", None) is None or m.header.stamp.sec != stamp_sec)
                for m in self.received[topic]
            ]
            for store in (self.received, self.arrivals, self.published):
                store[topic] = [x for x, k in zip(store[topic], keep) if k]

    def wait_connected(self, timeout: float = 30.0) -> None:
        ok = spin_until(
            self.session.executor,
            lambda: self.pub.get_subscription_count() >= 1
            and all(s.get_publisher_count() >= 1 for s in self.subs),
            timeout,
        )
        assert ok, "node's topics did not match the test's publisher/subscribers"

    def image_topics(self) -> List[str]:
        return [t for t in self.received if not t.endswith("processing_time_ms")]

    def outputs_for(self, sec: int) -> Dict[str, List]:
        return {
            t: [m for m in self.received[t] if m.header.stamp.sec == sec]
            for t in self.image_topics()
        }

    def send_until_processed(self, msg, timeout: float = 30.0, every: float = 2.0) -> Dict:
        """Publish ``msg`` (again every ``every`` s: the node's input is best effort) until
        every output carries its stamp; the first output message of each topic."""
        sec = msg.header.stamp.sec
        done = spin_until(
            self.session.executor,
            lambda: all(self.outputs_for(sec).values()),
            timeout,
            between=lambda: self.pub.publish(msg),
            every=every,
        )
        got = self.outputs_for(sec)
        assert done, f"no output for frame {sec} on {[t for t, v in got.items() if not v]}"
        return {t: v[0] for t, v in got.items()}
