"""Helpers for tests that talk to ROS 2 processes over real DDS, confined to this machine.

Every process started here, and the test process's own rclpy context, use
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and one random ``ROS_DOMAIN_ID`` per test session, so
that nothing leaves loopback and concurrent test runs do not see each other.
"""
from __future__ import annotations

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

DOMAIN_ID = random.SystemRandom().randint(1, 100)


def ros_env(domain_id: int = DOMAIN_ID,
            extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The current environment, confined to localhost discovery on ``domain_id``."""
    env = dict(os.environ)
    env.update({
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_STATIC_PEERS": "",
        "PYTHONUNBUFFERED": "1",
        "RCUTILS_COLORIZED_OUTPUT": "0",
        "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
    })
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the range when set
    env.update(extra or {})
    return env


def confine_this_process(domain_id: int = DOMAIN_ID) -> Dict[str, Optional[str]]:
    """Apply :func:`ros_env`'s ROS settings to ``os.environ`` (before ``rclpy.init``); returns
    the previous values for :func:`restore_env`."""
    keys = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_STATIC_PEERS",
            "ROS_LOCALHOST_ONLY")
    old = {k: os.environ.get(k) for k in keys}
    env = ros_env(domain_id)
    for k in keys:
        if k in env:
            os.environ[k] = env[k]
        else:
            os.environ.pop(k, None)
    return old


def restore_env(old: Mapping[str, Optional[str]]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def node_command(params: Mapping[str, object] = (), remaps: Mapping[str, str] = ()) -> List[str]:
    """``cosme_node --ros-args -p k:=v … -r from:=to …`` (the venv's console script when
    installed, else ``python -m cosme_ros.ros.node``)."""
    script = Path(sys.executable).with_name("cosme_node")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "cosme_ros.ros.node"]
    cmd.append("--ros-args")
    for k, v in dict(params).items():
        cmd += ["-p", f"{k}:={v}"]
    for k, v in dict(remaps).items():
        cmd += ["-r", f"{k}:={v}"]
    return cmd


class Process:
    """A child process whose combined stdout/stderr is collected by a reader thread."""

    def __init__(self, cmd: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None):
        self.cmd = list(cmd)
        self.proc = subprocess.Popen(self.cmd, env=dict(env or ros_env()), cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1)
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


def spin_until(executor, predicate: Callable[[], bool], timeout: float,
               step: float = 0.05, between: Optional[Callable[[], None]] = None,
               every: float = 1.0) -> bool:
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
