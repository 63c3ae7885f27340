"""ROS 2 on this machine only: the environment that confines DDS to loopback, and one rclpy
context with a node and an executor in it.

Every process of ours that talks DDS — the demo and its node, the benchmark's publishers, the
tests — gets its environment from :func:`localhost_env`: discovery on this host
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, no static peers, the deprecated
``ROS_LOCALHOST_ONLY`` dropped since the range says the same) and a domain id of its own, so
nothing leaves loopback and two runs do not see each other. :class:`LocalSession` is the
in-process side: an rclpy context created under that environment, without signal handlers (a
Ctrl-C stays the caller's KeyboardInterrupt).

rclpy is imported only when a session is created: the environment helpers work without ROS.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence

from cosme_ros.errors import CosmeError
from cosme_ros.ros.dds_profile import FASTDDS_PROFILE_KEYS

__all__ = ["ROS_KEYS", "localhost_env", "environ_applied", "random_domain_id", "LocalSession"]

#: The environment variables that decide where DDS traffic goes (and the Fast DDS profile).
ROS_KEYS = (
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "ROS_DOMAIN_ID",
    "ROS_STATIC_PEERS",
    "ROS_LOCALHOST_ONLY",
) + FASTDDS_PROFILE_KEYS


def random_domain_id(low: int = 1, high: int = 100) -> int:
    """A domain id in [low, high] (0–101 is safe on every platform)."""
    return random.SystemRandom().randint(low, high)


def localhost_env(
    environ: Optional[Mapping[str, str]] = None,
    *,
    domain_id: Optional[int] = None,
    keep_users_choice: bool = False,
) -> Dict[str, str]:
    """``environ`` (default: this process's) confined to this host with ``domain_id`` (default:
    a random one). ``keep_users_choice``: a discovery range or domain id already set in
    ``environ`` is the user's and stays (``cosme demo``: watching its topics from another
    machine is the user's call); otherwise both are always set (tests, the benchmark)."""
    env = dict(os.environ if environ is None else environ)
    if not (keep_users_choice and env.get("ROS_AUTOMATIC_DISCOVERY_RANGE")):
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        env.pop("ROS_STATIC_PEERS", None)
        env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the range when set
    if not (keep_users_choice and env.get("ROS_DOMAIN_ID")):
        env["ROS_DOMAIN_ID"] = str(random_domain_id() if domain_id is None else domain_id)
    try:
        domain = int(env["ROS_DOMAIN_ID"])
    except ValueError:
        raise CosmeError(f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']!r} is not an integer") from None
    if not 0 <= domain <= 232:
        raise CosmeError(f"ROS_DOMAIN_ID={domain} is out of range (0-232; 0-101 is safe)")
    return env


@contextlib.contextmanager
def environ_applied(env: Mapping[str, str], keys: Sequence[str] = ROS_KEYS) -> Iterator[None]:
    """This process's ``keys`` set as in ``env`` (absent there: unset) inside the block, and
    restored after it."""
    old = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys:
            if k in env:
                os.environ[k] = env[k]
            else:
                os.environ.pop(k, None)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LocalSession:
    """An rclpy context, one node and a single-threaded executor, created under ``env``
    (default: :func:`localhost_env` with ``domain_id``), with no signal handlers."""

    def __init__(
        self,
        name: str,
        *,
        namespace: Optional[str] = None,
        domain_id: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
    ):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.env = dict(env) if env is not None else localhost_env(domain_id=domain_id)
        self.domain_id = int(self.env["ROS_DOMAIN_ID"])
        self.context = rclpy.Context()
        with environ_applied(self.env):  # read when the context and the node's participant start
            rclpy.init(
                context=self.context,
                domain_id=self.domain_id,
                signal_handler_options=rclpy.signals.SignalHandlerOptions.NO,
            )
            try:
                kwargs = {"namespace": namespace} if namespace else {}
                self.node = rclpy.create_node(name, context=self.context, **kwargs)
                self.executor = SingleThreadedExecutor(context=self.context)
                self.executor.add_node(self.node)
            except BaseException:
                rclpy.try_shutdown(context=self.context)
                raise

    def spin_until(
        self,
        done: Callable[[], bool],
        timeout: float,
        alive: Callable[[], bool] = lambda: True,
    ) -> bool:
        """Spin until ``done()`` (True), ``timeout`` seconds pass or ``alive()`` turns false
        (then: ``done()``)."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() >= deadline or not alive():
                return done()
            self.executor.spin_once(timeout_sec=0.02)
        return True

    def close(self) -> None:
        try:
            self.executor.shutdown()
            self.node.destroy_node()
        finally:
            self._rclpy.try_shutdown(context=self.context)
