"""``cosme_node`` as the demo's child process: started in a session of its own with the demo's
parameters, watched until ready, stopped with one SIGINT on every path."""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from cosme_ros.errors import CosmeError
from cosme_ros.ros.dds_profile import shm_profile_env
from cosme_ros.ros.session import localhost_env
from cosme_ros.tools.demo.options import IMAGE_TOPIC, LOG_NAME, NAMESPACE


def ros_environment(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for the demo's ROS processes (:func:`~cosme_ros.ros.session.localhost_env`):
    discovery on this host and a random domain id, unless the user chose them (then theirs).
    Under Fast DDS (the default RMW) and without a profile of the user's,
    ``config/fastdds_shm.xml``: shared-memory segments large enough for a frame's outputs,
    without which the node's ~1 MB of outputs per frame miss shared memory and wait seconds for
    a repair (the demo ran 5x slower; see the file)."""
    env = localhost_env(environ, keep_users_choice=True)
    env.update(shm_profile_env(env))
    return env


_ERROR_LINE = re.compile(r"^\[(?:ERROR|FATAL)\](?: \[[^\]]*\])*: (.*)$")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The node gets SIGINT (a clean stop) if the demo dies without stopping it (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class NodeProcess:
    """``cosme_node`` as a child process; its output goes to ``log_path`` and is scanned for the
    ready line and for errors."""

    def __init__(
        self, params: Dict[str, Any], env: Dict[str, str], log_path: Path, params_file: Path
    ):
        params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        self.cmd = [
            sys.executable,
            "-m",
            "cosme_ros.ros.node",
            "--ros-args",
            "-r",
            f"__ns:={NAMESPACE}",
            "-r",
            f"image:={IMAGE_TOPIC}",
            "--params-file",
            str(params_file),
        ]
        env = dict(
            env,
            PYTHONUNBUFFERED="1",
            RCUTILS_COLORIZED_OUTPUT="0",
            RCUTILS_LOGGING_BUFFERED_STREAM="0",
        )
        self.lines: collections.deque = collections.deque(maxlen=400)
        self._cond = threading.Condition()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w", encoding="utf-8")
        self.log_path = log_path
        kwargs: Dict[str, Any] = {"start_new_session": True}
        if sys.platform.startswith("linux"):
            kwargs["preexec_fn"] = _die_with_parent
        self.proc = subprocess.Popen(
            self.cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            **kwargs,
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name="cosme_node log")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> str:
        """The node's ``ready:`` log line; raises CosmeError with the node's own error when it
        exits first, or when it is not ready within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if "ready: bundle" in line:
                        return line.split("ready: ", 1)[1]
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise CosmeError(f"cosme_node did not start: {self.failure()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CosmeError(
                        f"cosme_node did not become ready within {timeout:.0f} s "
                        f"(log: {self.log_path})"
                    )
                self._cond.wait(min(left, 0.2))

    def failure(self) -> str:
        """One line: the node's last error message, else its last output line, + the status."""
        with self._cond:
            lines = [ln for ln in self.lines if ln.strip()]
        errors = [m.group(1) for m in map(_ERROR_LINE.match, lines) if m]
        code = self.proc.poll()
        why = errors[-1] if errors else (lines[-1].strip() if lines else "no output")
        status = "" if code is None else f"; exit status {code}"
        return f"{why} ({LOG_NAME}: {self.log_path}{status})"

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """One SIGINT (a clean shutdown), then SIGKILL after ``timeout`` s; the exit status."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self._reader.join(5)
        finally:
            self._log.close()
        return self.proc.returncode
