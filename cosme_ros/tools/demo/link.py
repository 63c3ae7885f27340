"""The demo's side of DDS: publishes camera frames to the node and gathers its outputs for one
stamp at a time (a :class:`~cosme_ros.ros.session.LocalSession`)."""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from cosme_ros.ros.session import LocalSession
from cosme_ros.tools.demo.options import FRAME_ID, IMAGE_TOPIC, NAMESPACE, TOPICS


class NodeLink:
    """The demo's own rclpy context: publishes camera frames to the node and gathers its
    outputs for one stamp at a time."""

    def __init__(self, env: Dict[str, str], keys: Sequence[str]):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.Image = Image
        # No signal handlers: Ctrl-C stays a KeyboardInterrupt of the demo, which stops the node.
        self.session = LocalSession("cosme_demo", namespace=NAMESPACE, env=env)
        try:
            node = self.session.node
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.pub = node.create_publisher(Image, IMAGE_TOPIC, reliable)
            self.keys = list(keys)
            self.subs = [
                node.create_subscription(
                    Image, TOPICS[k], lambda msg, k=k: self._on_output(k, msg), reliable
                )
                for k in self.keys
            ]
        except BaseException:
            self.session.close()
            raise
        self._waiting: Optional[Tuple[int, int]] = None
        self._got: Dict[str, np.ndarray] = {}
        self._answers = 0  # outputs on the first output topic for the frame waited for

    def _on_output(self, key: str, msg) -> None:
        from cosme_ros.frames import codec

        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        if stamp == self._waiting and key == self.keys[0]:
            self._answers += 1
        if stamp == self._waiting and key not in self._got:
            self._got[key] = codec.image_array(msg).copy()

    def wait_connected(self, timeout: float, alive: Callable[[], bool]) -> bool:
        return self.session.spin_until(
            lambda: self.pub.get_subscription_count() >= 1
            and all(s.get_publisher_count() >= 1 for s in self.subs),
            timeout,
            alive,
        )

    def exchange(
        self,
        rgb: np.ndarray,
        stamp_ns: int,
        resend_after: float,
        timeout: float,
        alive: Callable[[], bool],
    ) -> Tuple[Optional[Dict[str, np.ndarray]], int]:
        """Publish ``rgb`` stamped ``stamp_ns`` and wait for every output with that stamp; the
        outputs (None on timeout or when the node died) and how often the frame was re-sent."""
        from std_msgs.msg import Header
        from cosme_ros.frames import codec

        header = Header(frame_id=FRAME_ID)
        header.stamp.sec, header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
        msg = codec.encode_image(self.Image, rgb, "rgb8", header)
        self._waiting = (header.stamp.sec, header.stamp.nanosec)
        self._got = {}
        self._answers = 0
        done = lambda: len(self._got) == len(self.keys)  # noqa: E731
        deadline = time.monotonic() + timeout
        resent = -1
        while not done() and alive() and time.monotonic() < deadline:
            self.pub.publish(msg)
            resent += 1
            self.session.spin_until(
                done, min(resend_after, max(0.0, deadline - time.monotonic())), alive
            )
        if done() and resent > 0:
            # A re-sent copy may still be waiting in the node's one-frame mailbox: the next
            # frame would replace it there (a drop). Let the node answer it first.
            self.session.spin_until(lambda: self._answers > resent, resend_after, alive)
        return (dict(self._got) if done() else None), max(resent, 0)

    def close(self) -> None:
        self.session.close()
