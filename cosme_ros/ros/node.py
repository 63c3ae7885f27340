"""``cosme_node``: camera images in, segmentation and anomaly maps out (DESIGN.md §3).

A thin shell: :mod:`.image_codec` translates messages, :class:`cosme_ros.pipeline.Pipeline` does
the maths, :mod:`cosme_ros.viz` draws the pictures. The node only decides *which* frame to run and
*what* to publish:

- the subscription callback stores the newest message and returns (an unprocessed message it
  replaces is counted as dropped); a guard condition wakes the worker callback, which runs in its
  own callback group on a :class:`MultiThreadedExecutor`. A model slower than the camera therefore
  always works on the newest frame and never builds a backlog;
- every output copies the input header; an output nobody subscribes to is not computed or
  encoded (the pipeline itself runs for every processed frame);
- malformed messages are counted and skipped with a throttled warning.

Topics (relative, remappable): ``image`` (sensor_msgs/Image) in; ``segmentation/class_mask``
mono8, ``segmentation/color`` rgb8, ``anomaly/score`` 32FC1, ``anomaly/mask`` mono8 (0/255),
``anomaly/heatmap`` rgb8 and ``~/debug/processing_time_ms`` (std_msgs/Float64) out.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSPresetProfiles, QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import Float64

from cosme_ros.errors import CosmeError
from cosme_ros.ros import image_codec

NODE_NAME = "cosme_node"
DEVICES = ("auto", "cpu", "cuda")
INPUT_QOS = ("SENSOR_DATA", "DEFAULT", "SYSTEM_DEFAULT", "BEST_AVAILABLE")
WARN_THROTTLE_S = 5.0
_INT64_MAX = 2 ** 63 - 1


class StartupError(CosmeError):
    """A parameter or bundle problem that stops the node before it runs; names the parameter."""


# ----------------------------------------------------------------------------- parameters

def _methods() -> Sequence[str]:
    from cosme_ros.anomaly.scorers import METHODS
    return METHODS


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    read_only: bool = True
    choices: Optional[Callable[[], Sequence[str]]] = None
    float_range: Optional[tuple] = None
    int_range: Optional[tuple] = None

    def descriptor(self) -> ParameterDescriptor:
        kind = {str: ParameterType.PARAMETER_STRING, float: ParameterType.PARAMETER_DOUBLE,
                int: ParameterType.PARAMETER_INTEGER, bool: ParameterType.PARAMETER_BOOL}
        d = ParameterDescriptor(name=self.name, type=kind[type(self.default)],
                                description=self.description, read_only=self.read_only)
        if self.choices is not None:
            d.additional_constraints = "one of: " + ", ".join(self.choices())
        if self.float_range is not None:
            d.floating_point_range = [FloatingPointRange(
                from_value=float(self.float_range[0]), to_value=float(self.float_range[1]),
                step=0.0)]
        if self.int_range is not None:
            d.integer_range = [IntegerRange(from_value=int(self.int_range[0]),
                                            to_value=int(self.int_range[1]), step=0)]
        return d


#: Declared up front, in this order. Read-only ones are fixed at start-up; the others are read
#: for every frame, so ``ros2 param set`` takes effect on the next one.
PARAMS: Sequence[Param] = (
    Param("bundle", "", "Path to the model bundle directory (`cosme bundle create`). Required."),
    Param("method", "maxlogit", "Anomaly scorer.", choices=_methods),
    Param("device", "auto", "Torch device: auto (CUDA when available), cpu or cuda.",
          choices=lambda: DEVICES),
    Param("anomaly_threshold", 0.0,
          "Score above which a pixel is an anomaly in anomaly/mask (units of the method's score).",
          read_only=False),
    Param("overlay_alpha", 0.5, "Weight of the colour map over the camera image in "
          "anomaly/heatmap.", read_only=False, float_range=(0.0, 1.0)),
    Param("input_qos", "SENSOR_DATA", "QoS preset of the image subscription.",
          choices=lambda: INPUT_QOS),
    Param("max_image_pixels", 4096 * 4096, "Images with more pixels are skipped as malformed.",
          read_only=False, int_range=(1, _INT64_MAX)),
)

_TYPE_NAMES = {str: "a string", float: "a double (write e.g. 1.0, not 1)", int: "an integer",
               bool: "a bool"}


@dataclass
class FrameStats:
    """Frame counters; ``dropped`` = replaced by a newer frame before the worker took it."""

    received: int = 0
    processed: int = 0
    dropped: int = 0
    malformed: int = 0
    failed: int = 0

    def summary(self) -> str:
        return (f"frames: received {self.received}, processed {self.processed}, dropped "
                f"{self.dropped}, malformed {self.malformed}, failed {self.failed}")


# ----------------------------------------------------------------------------- the node

class CosmeNode(Node):
    """The anomaly segmentation node; raises :class:`StartupError` for a bad configuration."""

    def __init__(self, pipeline_factory: Optional[Callable[..., Any]] = None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._declare_parameters()
        method, device, qos = self._validate_parameters()
        self.pipeline = self._load_pipeline(method, device, pipeline_factory)
        self.palette = list(self.pipeline.bundle.palette)

        self.stats = FrameStats()
        self._lock = threading.Lock()
        self._latest: Optional[Image] = None

        out_qos = QoSProfile(depth=1)
        self._pub = {
            "class_mask": self.create_publisher(Image, "segmentation/class_mask", out_qos),
            "color": self.create_publisher(Image, "segmentation/color", out_qos),
            "score": self.create_publisher(Image, "anomaly/score", out_qos),
            "mask": self.create_publisher(Image, "anomaly/mask", out_qos),
            "heatmap": self.create_publisher(Image, "anomaly/heatmap", out_qos),
        }
        self._time_pub = self.create_publisher(Float64, "~/debug/processing_time_ms", 10)

        # Worker and input in separate groups: the input callback never waits for the model.
        self._work_group = MutuallyExclusiveCallbackGroup()
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._wake = self.create_guard_condition(self._process_latest, self._work_group)
        self._sub = self.create_subscription(Image, "image", self._on_image,
                                             QoSPresetProfiles[qos].value,
                                             callback_group=self._input_group)
        b = self.pipeline.bundle
        self.get_logger().info(
            f"ready: bundle {b.name} ({b.path}), method {method}, device "
            f"{self.pipeline.device}, network input {self.pipeline.input_size[1]}x"
            f"{self.pipeline.input_size[0]}; listening on {self._sub.topic_name} ({qos})")

    # -- start-up

    def _declare_parameters(self) -> None:
        for p in PARAMS:
            try:
                self.declare_parameter(p.name, p.default, p.descriptor())
            except InvalidParameterTypeException:
                given = self._parameter_overrides.get(p.name)
                raise StartupError(
                    f"parameter '{p.name}': must be {_TYPE_NAMES[type(p.default)]}"
                    + (f", got {given.value!r}" if given is not None else "")) from None
            except InvalidParameterValueException:
                given = self._parameter_overrides.get(p.name)
                value = given.value if given is not None else p.default
                limits = p.float_range or p.int_range
                where = f"out of range [{limits[0]}, {limits[1]}]" if limits else "invalid"
                raise StartupError(f"parameter '{p.name}': {value!r} is {where}") from None

    def _validate_parameters(self) -> tuple:
        def value(name: str):
            return self.get_parameter(name).value

        if not value("bundle"):
            raise StartupError("parameter 'bundle' is required: the path of a model bundle "
                               "directory (e.g. --ros-args -p bundle:=/path/to/bundle)")
        for p in PARAMS:
            if p.choices is not None and value(p.name) not in p.choices():
                raise StartupError(f"parameter '{p.name}': unknown value {value(p.name)!r} "
                                   f"(use one of: {', '.join(p.choices())})")
        return value("method"), value("device"), value("input_qos")

    def _load_pipeline(self, method: str, device: str, factory) -> Any:
        from cosme_ros.bundle import Bundle
        from cosme_ros.errors import BundleError, MissingPartError
        from cosme_ros.pipeline import Pipeline, resolve_device

        path = self.get_parameter("bundle").value
        try:
            resolve_device(device)
        except CosmeError as exc:
            raise StartupError(f"parameter 'device': {exc}") from None
        try:
            bundle = Bundle.load(path)
        except BundleError as exc:
            raise StartupError(f"parameter 'bundle': {exc}") from None
        try:
            pipeline = (factory or Pipeline)(bundle, method=method, device=device)
        except MissingPartError as exc:
            raise StartupError(f"parameter 'method': {method} cannot run on this bundle: "
                               f"{exc}") from None
        except CosmeError as exc:
            raise StartupError(f"parameter 'bundle': {exc}") from None
        # One warm-up frame: the first camera frame should not pay for lazy initialisation.
        h, w = pipeline.input_size
        pipeline(np.zeros((h, w, 3), np.uint8))
        return pipeline

    # -- callbacks

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            self.stats.received += 1
            if self._latest is not None:
                self.stats.dropped += 1
            self._latest = msg
        self._wake.trigger()

    def _process_latest(self) -> None:
        with self._lock:
            msg, self._latest = self._latest, None
        if msg is None:
            return
        start = time.perf_counter()
        try:
            rgb = image_codec.decode_image(msg, self.get_parameter("max_image_pixels").value)
        except image_codec.ImageMessageError as exc:
            self.stats.malformed += 1
            self.get_logger().warning(
                f"skipped malformed image ({exc}); {self.stats.malformed} so far",
                throttle_duration_sec=WARN_THROTTLE_S)
            return
        try:
            result = self.pipeline(rgb, out_size=rgb.shape[:2])
            self._publish(msg.header, rgb, result)
        except Exception as exc:  # a frame must not take the node down; say what went wrong
            if not self.context.ok():
                return  # shutting down mid-frame
            self.stats.failed += 1
            self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=WARN_THROTTLE_S)
            return
        self.stats.processed += 1
        self._time_pub.publish(Float64(data=(time.perf_counter() - start) * 1e3))

    def _publish(self, header, rgb: np.ndarray, result) -> None:
        from cosme_ros import viz

        def wanted(key: str) -> bool:
            return self._pub[key].get_subscription_count() > 0

        def send(key: str, array: np.ndarray, encoding: str) -> None:
            self._pub[key].publish(image_codec.encode_image(Image, array, encoding, header))

        if wanted("class_mask"):
            send("class_mask", result.classes, "mono8")
        if wanted("score"):
            send("score", result.score, "32FC1")
        if wanted("mask"):
            threshold = self.get_parameter("anomaly_threshold").value
            send("mask", np.where(result.score > threshold, 255, 0).astype(np.uint8), "mono8")
        if wanted("color"):
            send("color", viz.colorize(result.classes, self.palette), "rgb8")
        if wanted("heatmap"):
            alpha = self.get_parameter("overlay_alpha").value
            send("heatmap", viz.blend(rgb, viz.heatmap(result.score), alpha), "rgb8")


# ----------------------------------------------------------------------------- entry point

def main(args: Optional[List[str]] = None) -> int:
    """Console script ``cosme_node``; returns the exit status (0 after Ctrl-C)."""
    logger = rclpy.logging.get_logger(NODE_NAME)
    try:
        rclpy.init(args=args)
    except Exception as exc:  # rcl rejects malformed --ros-args; nothing of ours ran yet
        logger.error(f"cannot start: {str(exc).splitlines()[0]}")
        return 2
    node: Optional[CosmeNode] = None
    executor: Optional[MultiThreadedExecutor] = None
    status = 0
    try:
        node = CosmeNode()
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        executor.spin()
    except StartupError as exc:
        logger.error(str(exc))
        status = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise  # a bug: keep its traceback
        # Ctrl-C during start-up: rclpy's signal handler shut the context down and the next rcl
        # call (declaring a parameter, creating a publisher) failed because of that.
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()  # first: a log line of a live node goes to /rosout too
            logger.info(node.stats.summary())
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
