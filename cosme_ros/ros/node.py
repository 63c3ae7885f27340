"""``cosme_node``: camera images in, segmentation and anomaly maps out (docs/ARCHITECTURE.md).

A thin shell: :mod:`cosme_ros.frames.codec` translates messages, :class:`cosme_ros.runtime.pipeline.Pipeline`
does the maths, :mod:`cosme_ros.frames.render` draws the pictures and :mod:`.monitor` keeps the
books. The node only
decides *which* frame to run and *what* to publish:

- the subscription callback checks the message's header against its data (cheap, no copy: a
  malformed or oversized message is rejected before anything is allocated for it), stores the
  newest frame and returns; an unprocessed frame it replaces is counted as dropped. A guard
  condition wakes the worker callback, which runs in its own callback group on a
  :class:`MultiThreadedExecutor`. A model slower than the camera therefore always works on the
  newest frame and never builds a backlog;
- every output copies the input header; an output nobody subscribes to is not computed or
  encoded (the pipeline itself runs for every processed frame);
- malformed messages are counted, reported on ``/diagnostics`` and skipped with a throttled
  warning; an exception in the pipeline is counted and logged, and the next frame runs.

Topics (relative, remappable): ``image`` (sensor_msgs/Image) or, with ``input_transport:
compressed``, ``<image>/compressed`` (sensor_msgs/CompressedImage; the name is built from the
resolved ``image`` as image_transport does, so ``-r image:=/camera/image_raw`` subscribes to
``/camera/image_raw/compressed``) in; ``segmentation/class_mask`` mono8, ``segmentation/color``
rgb8, ``anomaly/score`` 32FC1, ``anomaly/mask`` mono8 (0/255), ``anomaly/heatmap`` rgb8,
``~/debug/processing_time_ms`` (std_msgs/Float64) and ``/diagnostics`` out.
"""

from __future__ import annotations

import array
import math
import re
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSPresetProfiles, QoSProfile
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64

from cosme_ros import options
from cosme_ros.atomic import signals_deferred
from cosme_ros.options import DEVICES, OUTPUT_RESOLUTIONS, parse_threshold
from cosme_ros.data.image_header import MAX_IMAGE_PIXELS
from cosme_ros.errors import CosmeError
from cosme_ros.paths import default_bundle_path
from cosme_ros.frames import codec
from cosme_ros.ros.monitor import FrameMonitor
from cosme_ros.frames.render import OUTPUTS, RunningRange, render_outputs

NODE_NAME = "cosme_node"
PRECISIONS = (*options.PRECISIONS, *options.ENGINE_PRECISIONS)
RUNNABLE_PRECISIONS = options.PRECISIONS
INPUT_QOS = ("SENSOR_DATA", "DEFAULT", "SYSTEM_DEFAULT", "BEST_AVAILABLE")
INPUT_TRANSPORTS = ("raw", "compressed")
MIN_INPUT_SIDE = 32
WARN_THROTTLE_S = 5.0
DIAGNOSTICS_PERIOD_S = 1.0
_INT64_MAX = 2**63 - 1


class StartupError(CosmeError):
    """A parameter or bundle problem that stops the node before it runs; names the parameter."""


# ----------------------------------------------------------------------------- parameter values


def _as_list(value: Any) -> Any:
    """Array parameters arrive as lists from files and the command line but as ``array.array``
    from the parameter services; make them lists."""
    return list(value) if isinstance(value, (array.array, tuple)) else value


def parse_input_size(value: Any) -> Optional[Tuple[int, int]]:
    """``input_size`` → (height, width), or None for the bundle's (empty string, empty list or
    unset). Accepts ``[H, W]`` integers or ``"HxW"``; raises ValueError."""
    value = _as_list(value)
    if value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0):
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if not m:
            raise ValueError(f"{value!r} is not HxW (e.g. 512x1024) or [H, W]")
        size = (int(m.group(1)), int(m.group(2)))
    elif (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        size = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f'{value!r} is not [H, W] (two integers) or "HxW"')
    if min(size) < MIN_INPUT_SIDE:
        raise ValueError(f"{value!r}: height and width must be at least {MIN_INPUT_SIDE}")
    return size


def parse_heatmap_range(value: Any) -> Optional[Tuple[float, float]]:
    """``heatmap_range`` → (lo, hi), or None for ``auto`` (a running range, see
    :class:`~cosme_ros.frames.render.RunningRange`); raises ValueError."""
    value = _as_list(value)
    if (
        value is None
        or (isinstance(value, (str, list, tuple)) and len(value) == 0)
        or (isinstance(value, str) and value.strip().lower() == "auto")
    ):
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        lo, hi = float(value[0]), float(value[1])
        if math.isfinite(lo) and math.isfinite(hi) and lo < hi:
            return lo, hi
        raise ValueError(f"{value!r}: need finite lo < hi")
    raise ValueError(f"{value!r} is neither 'auto' nor [lo, hi]")


def _check_precision(value: str) -> None:
    if value not in RUNNABLE_PRECISIONS:
        raise ValueError(
            f"{value} needs the TensorRT engines of the GPU path (not in this build); "
            f"use auto, fp32 or bf16"
        )


# ----------------------------------------------------------------------------- parameter table


def _methods() -> Sequence[str]:
    # cosme_ros.anomaly imports torch: read when the parameters are declared
    from cosme_ros.anomaly.registry import METHODS

    return (options.AUTO_METHOD, *METHODS)


def _check_method(value: Any) -> None:
    """A method name or spec with scorer options (``cosme[consensus=c4]``); ValueError."""
    from cosme_ros.anomaly.method_spec import check_run_spec

    check_run_spec(str(value), _methods())


def _refinements() -> Sequence[str]:
    return options.REFINEMENTS


@dataclass(frozen=True)
class Param:
    name: str
    default: Union[Any, Callable[[], Any]]
    description: str
    read_only: bool = True
    choices: Optional[Callable[[], Sequence[str]]] = None
    float_range: Optional[tuple] = None
    int_range: Optional[tuple] = None
    dynamic: bool = False  # more than one accepted type
    check: Optional[Callable[[Any], Any]] = None  # raises ValueError with the reason

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def descriptor(self) -> ParameterDescriptor:
        kind = {
            str: ParameterType.PARAMETER_STRING,
            float: ParameterType.PARAMETER_DOUBLE,
            int: ParameterType.PARAMETER_INTEGER,
            bool: ParameterType.PARAMETER_BOOL,
        }
        d = ParameterDescriptor(
            name=self.name,
            description=self.description,
            read_only=self.read_only,
            dynamic_typing=self.dynamic,
        )
        if not self.dynamic:
            d.type = kind[type(self.default_value())]
        if self.choices is not None:
            d.additional_constraints = "one of: " + ", ".join(self.choices())
        if self.float_range is not None:
            d.floating_point_range = [
                FloatingPointRange(
                    from_value=float(self.float_range[0]),
                    to_value=float(self.float_range[1]),
                    step=0.0,
                )
            ]
        if self.int_range is not None:
            d.integer_range = [
                IntegerRange(
                    from_value=int(self.int_range[0]), to_value=int(self.int_range[1]), step=0
                )
            ]
        return d

    def validate(self, value: Any) -> None:
        """Raise ValueError with a reason for a value this parameter does not accept."""
        if self.choices is not None and value not in self.choices():
            raise ValueError(f"unknown value {value!r} (use one of: {', '.join(self.choices())})")
        if self.check is not None:
            self.check(value)


#: Declared up front, in this order (``config/cosme.yaml`` lists them all). Read-only ones are
#: fixed at start-up; the others are read for every frame, so ``ros2 param set`` takes effect on
#: the next one.
PARAMS: Sequence[Param] = (
    Param(
        "bundle",
        lambda: str(default_bundle_path()),
        "Model bundle directory (`cosme bundle create`); empty = the demo bundle shipped with "
        "the package (models/demo).",
    ),
    Param(
        "method",
        options.AUTO_METHOD,
        "Anomaly scorer: auto (the bundle's default method: the one "
        "it names, else cosme when it has a memory and a student, else maxlogit), one of "
        "msp, maxlogit, entropy, sml, pans, mulmem, auxcon, cosme, or one with scorer options "
        "in brackets, e.g. cosme[consensus=c4].",
        check=_check_method,
    ),
    Param(
        "device",
        "auto",
        "Torch device: auto (CUDA when available), cpu or cuda.",
        choices=lambda: DEVICES,
    ),
    Param(
        "precision",
        "auto",
        "Network precision: auto (bf16 on CPUs with native bf16, else "
        "fp32), fp32, bf16; fp16 is the TensorRT GPU path (not in this build). Scores are "
        "always fp32.",
        choices=lambda: PRECISIONS,
        check=_check_precision,
    ),
    Param(
        "engine",
        "auto",
        "Compiled networks (`cosme export`): auto (the bundle's first engine that fits "
        "this machine, method and input size, else the eager fast path), off (eager), a "
        "backend (onnxruntime, aoti, tensorrt: the bundle's first engine of that backend that "
        "fits) or an engine folder. A requested engine that cannot be used falls back to eager "
        "with the reason in the log and on /diagnostics.",
    ),
    Param(
        "refine",
        "none",
        "Anomaly map refinement: none (the paper's bilinear upsampling) or "
        "guided (the guided filter re-fits the map to the camera image's edges; higher AP on "
        "the README's benchmarks).",
        choices=_refinements,
    ),
    Param(
        "refine_radius",
        8,
        "Guided filter radius in network-input pixels (8 = half a "
        "stride-16 feature cell); used with refine: guided.",
        int_range=(1, 256),
    ),
    Param(
        "refine_eps",
        1e-3,
        "Guided filter regularisation (variance of the [0, 1] RGB image "
        "below which a window is smoothed instead of following edges); refine: guided.",
        float_range=(1e-8, 1.0),
    ),
    Param(
        "input_size",
        "",
        'Network input size: [H, W] or "HxW"; empty = the bundle\'s.',
        dynamic=True,
        check=parse_input_size,
    ),
    Param(
        "output_resolution",
        "input",
        "Size of the output images: input (the camera's) or "
        "network (the network input size; cheaper).",
        choices=lambda: OUTPUT_RESOLUTIONS,
    ),
    Param(
        "input_transport",
        "raw",
        "raw: sensor_msgs/Image on `image`; compressed: "
        "sensor_msgs/CompressedImage (JPEG/PNG) on `<image>/compressed`.",
        choices=lambda: INPUT_TRANSPORTS,
    ),
    Param(
        "input_qos",
        "SENSOR_DATA",
        "QoS preset of the image subscription.",
        choices=lambda: INPUT_QOS,
    ),
    Param(
        "anomaly_threshold",
        "auto",
        "Score above which a pixel is an anomaly in anomaly/mask (units of the method's "
        "score); auto = the bundle's calibrated threshold for the method (`cosme calibrate`; "
        "without one the mask stays empty and the node says so).",
        read_only=False,
        dynamic=True,
        check=parse_threshold,
    ),
    Param(
        "overlay_alpha",
        0.5,
        "Weight of the colour map over the camera image in " "anomaly/heatmap.",
        read_only=False,
        float_range=(0.0, 1.0),
    ),
    Param(
        "heatmap_range",
        "auto",
        "Scores mapped to the ends of the heatmap's colour map: "
        "[lo, hi], or auto (a slowly following 1st-99th percentile range).",
        read_only=False,
        dynamic=True,
        check=parse_heatmap_range,
    ),
    Param(
        "processing_budget_ms",
        100.0,
        "Mean processing time per frame above which " "/diagnostics warns.",
        read_only=False,
        float_range=(0.0, 1e6),
    ),
    Param(
        "max_image_pixels",
        MAX_IMAGE_PIXELS,
        "Images with more pixels are rejected (checked on "
        "the header, before anything is allocated).",
        read_only=False,
        int_range=(1, _INT64_MAX),
    ),
)
PARAMS_BY_NAME = {p.name: p for p in PARAMS}


def _as_double(param: Parameter) -> Parameter:
    """An integer given for a double parameter, as that double (``ros2 param set … 50`` and
    ``processing_budget_ms: 50`` in a params file send integers, which rclpy refuses for a
    double); any other parameter as it is."""
    spec = PARAMS_BY_NAME.get(param.name)
    if (
        spec is None
        or spec.dynamic
        or type(spec.default_value()) is not float
        or param.type_ != Parameter.Type.INTEGER
    ):
        return param
    return Parameter(param.name, Parameter.Type.DOUBLE, float(param.value))


_TYPE_NAMES = {str: "a string", float: "a number", int: "an integer", bool: "a bool"}


@dataclass(frozen=True)
class Settings:
    """The read-only parameters, validated."""

    bundle: str
    bundle_is_default: bool
    method: str
    device: str
    precision: str
    engine: str
    refine: str
    refine_radius: int
    refine_eps: float
    input_size: Optional[Tuple[int, int]]
    output_resolution: str
    input_transport: str
    input_qos: str

    def refine_options(self) -> dict:
        """The Pipeline's refinement keywords (none for ``refine: none``)."""
        return (
            {}
            if self.refine == "none"
            else {
                "refine": self.refine,
                "refine_radius": self.refine_radius,
                "refine_eps": self.refine_eps,
            }
        )


# Outputs are reliable, keep-last OUTPUT_DEPTH: a large image whose fragments a busy subscriber
# acknowledges late is still repaired after the next frame is published (with depth 1 the
# writer dropped it: a load test lost 5 of 50 colour images), while a subscriber that falls
# further behind gets the newest frames, never a queue.
OUTPUT_DEPTH = 5

# ----------------------------------------------------------------------------- the node


class CosmeNode(Node):
    """The anomaly segmentation node; raises :class:`StartupError` for a bad configuration."""

    def __init__(self, pipeline_factory: Optional[Callable[..., Any]] = None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self._declare_parameters()
            self.settings = self._validate_parameters()
            self.pipeline, self.settings = self._load_pipeline(self.settings, pipeline_factory)
        except BaseException:
            try:
                self.destroy_node()  # a half-made node must not linger in the context
            except Exception:  # the context is already shut down (Ctrl-C during start-up)
                pass
            raise
        self.palette = list(self.pipeline.bundle.palette)
        self.precision = self.pipeline.precision  # what "auto" resolved to
        self.method_key, self.auto_threshold = self._calibrated_threshold(self.settings)
        if hasattr(self, "add_pre_set_parameters_callback"):  # rclpy of Iron and later
            self.add_pre_set_parameters_callback(lambda ps: [_as_double(p) for p in ps])
        self.add_on_set_parameters_callback(self._check_parameter_change)

        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.monitor = FrameMonitor(self._steady_s())
        self._lock = threading.Lock()
        self._latest: Optional[Any] = None
        self._last_frame_time = None  # node clock (sim time under use_sim_time)
        self._heat_range = RunningRange()

        out_qos = QoSProfile(depth=OUTPUT_DEPTH)
        self._pub = {
            key: self.create_publisher(Image, topic, out_qos) for key, (topic, _) in OUTPUTS.items()
        }
        self._time_pub = self.create_publisher(Float64, "~/debug/processing_time_ms", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        # Worker, input and diagnostics in separate groups: the input callback never waits for
        # the model, and diagnostics keep coming while it runs.
        self._work_group = MutuallyExclusiveCallbackGroup()
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._wake = self.create_guard_condition(self._process_latest, self._work_group)
        qos = QoSPresetProfiles[self.settings.input_qos].value
        if self.settings.input_transport == "compressed":
            # image_transport's naming: the base topic resolved (remapped) first, then the suffix
            topic = self.resolve_topic_name("image").rstrip("/") + "/compressed"
            self._sub = self.create_subscription(
                CompressedImage, topic, self._on_compressed, qos, callback_group=self._input_group
            )
        else:
            self._sub = self.create_subscription(
                Image, "image", self._on_image, qos, callback_group=self._input_group
            )
        # A steady timer: diagnostics keep coming while a replayed bag's /clock is paused.
        self._diag_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S,
            self._publish_diagnostics,
            callback_group=self._diag_group,
            clock=self._steady,
        )
        b, s = self.pipeline.bundle, self.settings
        h, w = self.pipeline.input_size
        self.get_logger().info(
            f"ready: bundle {b.name} ({b.path}), method {s.method}"
            f"{'' if s.refine == 'none' else f' (refine {s.refine}, radius {s.refine_radius})'}, device "
            f"{self.pipeline.device}, precision {self.precision}, networks "
            f"{self._networks_text()}, network input {h}x{w} (HxW), "
            f"output resolution {s.output_resolution}; listening on {self._sub.topic_name} "
            f"({s.input_transport}, {s.input_qos})"
        )

    # -- start-up

    def _declare_parameters(self) -> None:
        for name, given in list(self._parameter_overrides.items()):
            self._parameter_overrides[name] = _as_double(given)
        for p in PARAMS:
            default = p.default_value()
            try:
                self.declare_parameter(p.name, default, p.descriptor())
            except InvalidParameterTypeException:
                given = self._parameter_overrides.get(p.name)
                raise StartupError(
                    f"parameter '{p.name}': must be {_TYPE_NAMES[type(default)]}"
                    + (f", got {given.value!r}" if given is not None else "")
                ) from None
            except InvalidParameterValueException:
                given = self._parameter_overrides.get(p.name)
                value = given.value if given is not None else default
                limits = p.float_range or p.int_range
                where = f"out of range [{limits[0]}, {limits[1]}]" if limits else "invalid"
                raise StartupError(f"parameter '{p.name}': {value!r} is {where}") from None

    def _validate_parameters(self) -> Settings:
        def value(name: str):
            return self.get_parameter(name).value

        for p in PARAMS:
            try:
                p.validate(value(p.name))
            except ValueError as exc:
                raise StartupError(f"parameter '{p.name}': {exc}") from None
        bundle = value("bundle") or ""
        default = str(default_bundle_path())
        return Settings(
            bundle=bundle or default,
            bundle_is_default=bundle in ("", default),
            method=value("method"),
            device=value("device"),
            precision=value("precision"),
            engine=value("engine"),
            refine=value("refine"),
            refine_radius=value("refine_radius"),
            refine_eps=value("refine_eps"),
            input_size=parse_input_size(value("input_size")),
            output_resolution=value("output_resolution"),
            input_transport=value("input_transport"),
            input_qos=value("input_qos"),
        )

    def _load_pipeline(self, s: Settings, factory) -> Tuple[Any, Settings]:
        """The pipeline, and the settings with ``method: auto`` resolved for this bundle."""
        from cosme_ros.bundle import Bundle
        from cosme_ros.errors import BundleError, MissingPartError
        from cosme_ros.runtime.pipeline import Pipeline, bundle_default_method
        from cosme_ros.runtime.networks import resolve_device

        try:
            resolve_device(s.device)
        except CosmeError as exc:
            raise StartupError(f"parameter 'device': {exc}") from None
        if s.bundle_is_default and not Path(s.bundle).is_dir():
            raise StartupError(
                f"parameter 'bundle' is not set and the default demo bundle {s.bundle} does not "
                f"exist (it is not built yet); pass a bundle directory, e.g. --ros-args -p "
                f"bundle:=/path/to/bundle, or build the demo with `bash scripts/build_demo_bundle.sh`"
            )
        # the networks, the memory and a warm-up frame take seconds to a minute on a CPU
        self.get_logger().info(
            f"loading bundle {s.bundle} (method {s.method}, device "
            f"{s.device}, precision {s.precision}) ..."
        )
        try:
            bundle = Bundle.load(s.bundle)
            if s.method == options.AUTO_METHOD:
                s = replace(s, method=bundle_default_method(bundle))
        except BundleError as exc:
            raise StartupError(f"parameter 'bundle': {exc}") from None
        refine = s.refine_options()
        try:
            pipeline = (factory or Pipeline)(
                bundle,
                method=s.method,
                device=s.device,
                input_size=s.input_size,
                precision=s.precision,
                engine=s.engine,
                **refine,
            )
        except MissingPartError as exc:
            raise StartupError(
                f"parameter 'method': {s.method} cannot run on this bundle: " f"{exc}"
            ) from None
        except CosmeError as exc:
            raise StartupError(f"parameter 'bundle': {exc}") from None
        if getattr(pipeline, "engine_fallback", False):  # a test's stand-in has no engine
            self.get_logger().warning(f"engine not used, running eager: {pipeline.engine_note}")
        # One warm-up frame: the first camera frame should not pay for lazy initialisation, and
        # a network that cannot run at the requested input size says so now.
        h, w = pipeline.input_size
        try:
            warm = pipeline(np.zeros((h, w, 3), np.uint8))
        except (RuntimeError, ValueError) as exc:
            name = "input_size" if s.input_size else "bundle"
            raise StartupError(
                f"parameter '{name}': the network cannot run at {h}x{w} "
                f"({str(exc).splitlines()[0]})"
            ) from None
        # a self-check: a model that gives NaN scores would publish class 0 and NaN everywhere
        if not np.isfinite(warm.score).all():
            raise StartupError(
                f"parameter 'bundle': {bundle.path} gives non-finite anomaly "
                f"scores on the start-up frame ({s.method}); the model is broken"
            )
        return pipeline, s

    def _calibrated_threshold(self, s: Settings) -> Tuple[str, Optional[float]]:
        """The bundle's threshold for the method as the node runs it (refinement included)."""
        from cosme_ros.runtime.thresholds import resolve_threshold

        key, value = resolve_threshold(self.pipeline.bundle, s.method, s.refine_options())
        if parse_threshold(self._param("anomaly_threshold")) is not None:
            pass  # the parameter overrides it; /diagnostics says which is in use
        elif value is None:
            self.get_logger().warning(
                f"anomaly_threshold is auto, but bundle {self.pipeline.bundle.path} has no "
                f"calibrated threshold for {key}: anomaly/mask stays empty until "
                f"anomaly_threshold is set or `cosme calibrate --bundle ... --methods {key}` "
                f"has stored one"
            )
        else:
            self.get_logger().info(
                f"anomaly_threshold auto: {value:g}, the bundle's calibrated "
                f"threshold for {key}"
            )
        return key, value

    def _check_parameter_change(self, params) -> SetParametersResult:
        """Runtime checks that descriptors cannot express (ranges and read-only are rclpy's)."""
        for param in params:
            spec = PARAMS_BY_NAME.get(param.name)
            if spec is not None and param.type_ == Parameter.Type.NOT_SET:
                # rclpy would undeclare a dynamically typed parameter, and every later frame
                # that reads it would fail until a restart
                return SetParametersResult(
                    successful=False,
                    reason=f"parameter '{param.name}': cannot be unset "
                    f"(undeclared); give it a value",
                )
            if spec is None or spec.read_only:
                continue
            try:
                spec.validate(param.value)
            except ValueError as exc:
                return SetParametersResult(
                    successful=False, reason=f"parameter '{param.name}': {exc}"
                )
        return SetParametersResult(successful=True)

    # -- helpers

    def _threshold(self) -> Tuple[float, str]:
        """The mask's threshold and where it comes from (for /diagnostics)."""
        given = parse_threshold(self._param("anomaly_threshold"))
        if given is not None:
            return given, f"{given:g} (parameter)"
        if self.auto_threshold is None:
            return math.inf, f"none: the bundle has no calibrated threshold for {self.method_key}"
        return self.auto_threshold, f"{self.auto_threshold:g} (bundle, {self.method_key})"

    def _steady_s(self) -> float:
        return self._steady.now().nanoseconds * 1e-9

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    @property
    def stats(self):
        """Total frame counters (:class:`~cosme_ros.ros.monitor.FrameStats`)."""
        return self.monitor.totals

    def _reject(self, exc: Exception) -> None:
        n = self.monitor.rejected(str(exc))
        self.get_logger().warning(
            f"rejected image on {self._sub.topic_name}: {exc} ({n} " f"rejected so far)",
            throttle_duration_sec=WARN_THROTTLE_S,
        )

    # -- callbacks

    def _on_image(self, msg: Image) -> None:
        try:
            codec.check_image(msg, self._param("max_image_pixels"))
        except codec.ImageMessageError as exc:
            self.monitor.received(self._steady_s(), accepted=False)
            self._reject(exc)
            return
        self._accept(msg)

    def _on_compressed(self, msg: CompressedImage) -> None:
        try:
            codec.check_compressed(msg, self._param("max_image_pixels"))
        except codec.ImageMessageError as exc:
            self.monitor.received(self._steady_s(), accepted=False)
            self._reject(exc)
            return
        self._accept(msg)

    def _accept(self, msg: Any) -> None:
        self.monitor.received(self._steady_s())
        with self._lock:
            self._last_frame_time = self.get_clock().now()
            replaced, self._latest = self._latest, msg
        if replaced is not None:
            self.monitor.dropped()
        self._wake.trigger()

    def _process_latest(self) -> None:
        with self._lock:
            msg, self._latest = self._latest, None
        if msg is None:
            return
        start = time.perf_counter()
        try:
            rgb = codec.decode(msg, self._param("max_image_pixels"))
        except codec.ImageMessageError as exc:  # e.g. corrupt JPEG data
            self._reject(exc)
            return
        try:
            out_size = (
                rgb.shape[:2]
                if self.settings.output_resolution == "input"
                else tuple(self.pipeline.input_size)
            )
            result = self.pipeline(rgb, out_size=out_size)
            self._publish(msg.header, rgb, result)
        except Exception as exc:  # a frame must not take the node down; say what went wrong
            if not self.context.ok():
                return  # shutting down mid-frame
            n = self.monitor.failed(f"{type(exc).__name__}: {exc}")
            self.get_logger().error(
                f"frame failed: {type(exc).__name__}: {exc} ({n} failed so " f"far)",
                throttle_duration_sec=WARN_THROTTLE_S,
            )
            return
        ms = (time.perf_counter() - start) * 1e3
        self.monitor.processed(ms)
        self._time_pub.publish(Float64(data=ms))

    def _publish(self, header, rgb: np.ndarray, result) -> None:
        wanted = {k for k, pub in self._pub.items() if pub.get_subscription_count() > 0}
        if not wanted:
            return
        heat_range = (0.0, 1.0)
        if "heatmap" in wanted:
            heat_range = parse_heatmap_range(
                self._param("heatmap_range")
            ) or self._heat_range.update(result.score)
        images = render_outputs(
            rgb,
            result.classes,
            result.score,
            wanted,
            threshold=self._threshold()[0],
            alpha=self._param("overlay_alpha"),
            palette=self.palette,
            heat_range=heat_range,
        )
        for key, (pixels, encoding) in images.items():
            self._pub[key].publish(codec.encode_image(Image, pixels, encoding, header))

    def _networks_text(self) -> str:
        """What runs the networks: the compiled engine, or eager (and why, when an engine
        was asked for and not used)."""
        p = self.pipeline
        backend = getattr(p, "backend", "eager")  # a test's stand-in pipeline has none
        if backend != "eager":
            return f"{backend} engine {p.engine_path}"
        if getattr(p, "engine_fallback", False):
            return f"eager (engine not used: {p.engine_note})"
        return "eager (the bundle has no engine)" if getattr(p, "engine_note", None) else "eager"

    def _publish_diagnostics(self) -> None:
        now = self.get_clock().now()
        with self._lock:
            last = self._last_frame_time
        since = None if last is None else max((now - last).nanoseconds * 1e-9, 0.0)
        b, s = self.pipeline.bundle, self.settings
        h, w = self.pipeline.input_size
        report = self.monitor.report(
            self._steady_s(),
            since,
            self._param("processing_budget_ms"),
            info={
                "input topic": self._sub.topic_name,
                "model": f"{b.name} ({b.path})",
                "method": s.method,
                "device": str(self.pipeline.device),
                "precision": self.precision,
                "networks": self._networks_text(),
                "network input (HxW)": f"{h}x{w}",
                "output resolution": s.output_resolution,
                "anomaly threshold": self._threshold()[1],
            },
        )
        status = DiagnosticStatus(
            level=bytes([report.level]),
            name=f"{self.get_fully_qualified_name()}: anomaly " f"segmentation",
            message=report.message,
            hardware_id=str(self.pipeline.device),
            values=[KeyValue(key=k, value=v) for k, v in report.values.items()],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = now.to_msg()
        self._diag_pub.publish(msg)


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
        # The executor first, with SIGINT / SIGTERM held while it is built: a Ctrl-C inside
        # rclpy's Executor.__init__ (it landed there when pressed just as the node said
        # "ready") leaves an object whose __del__ prints "Exception ignored … _sigint_gc".
        with signals_deferred():
            executor = MultiThreadedExecutor(num_threads=2)
        node = CosmeNode()
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
            # the node's full name (namespace included), as its other lines
            name = node.get_logger().name
            node.destroy_node()  # first: a log line of a live node goes to /rosout too
            rclpy.logging.get_logger(name).info(node.stats.summary())
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
