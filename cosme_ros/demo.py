"""The embedded default, end to end: ``cosme demo`` runs the product on the demo bundle.

It starts ``cosme_node`` as its own process (real rclpy over DDS, confined to this machine),
streams a synthetic drive into it as camera images — one frame at a time, reliable QoS, the next
frame only once the node has published its outputs for this one, so nothing is dropped — and
collects what the node publishes (``anomaly/score``, ``segmentation/class_mask``,
``anomaly/heatmap``, and ``anomaly/mask`` when a threshold is given). From that it computes the
pixel metrics of the drive against the drive's anomaly masks (pooled, Fishyscapes convention),
the segmentation mIoU against its class labels, and writes an overlay video and a contact sheet.

Network: unless the user set them, the node and this process use
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (no static peers) and a random ``ROS_DOMAIN_ID``, so
nothing leaves loopback and two demos do not see each other. The node runs in the namespace
``/cosme_demo``; while it runs, its topics can be watched on that domain.

The node is stopped with one SIGINT (and waited for) on every path: success, error, Ctrl-C or
SIGTERM of the demo. It runs in its own session, so a terminal's Ctrl-C reaches only the demo,
which then stops the node itself; and it gets SIGINT if the demo dies without cleaning up.

The demo bundle's network weights are stored in fp16 by :func:`cosme_ros.bundle.store_half`, to
keep it small enough for the repository; loading casts them back to fp32.
"""

from __future__ import annotations

import collections
import os
import queue
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from cosme_ros import atomic
from cosme_ros.errors import CosmeError
from cosme_ros.frames.sheets import compose_row, contact_sheet, sheet_indices
from cosme_ros.frames.writers import VideoFile, write_png
from cosme_ros.metrics import ConfusionMatrix, PooledPixels
from cosme_ros.ros.dds_profile import FASTDDS_PROFILE_KEYS, shm_profile_env

DEFAULT_FRAMES = 100
DEFAULT_SEED = 7  # a drive with anomalies on the road from the first frames
DEFAULT_OUT = Path("out") / "demo"
FPS = 10.0
NAMESPACE = "/cosme_demo"
IMAGE_TOPIC = "camera/image_raw"
FRAME_ID = "camera"
STAMP0_NS = 1_700_000_000 * 10**9  # as the drive bags: the same drive gets the same stamps
#: output key → topic (relative to the namespace)
TOPICS = {
    "score": "anomaly/score",
    "classes": "segmentation/class_mask",
    "heatmap": "anomaly/heatmap",
    "mask": "anomaly/mask",
}
BUILD_SCRIPT = "scripts/build_demo_bundle.sh"
VIDEO_NAME, SHEET_NAME, LOG_NAME = "demo.mp4", "contact_sheet.png", "node.log"
STARTUP_TIMEOUT_S = 300.0  # torch import + model load + warm-up on a busy CPU
FRAME_TIMEOUT_S = 120.0  # no output for one frame for this long: give up
RESEND_MIN_S = 5.0  # re-publish a frame with missing outputs after this long (or 5x the


# ----------------------------------------------------------------------------- options, result


@dataclass
class DemoOptions:
    bundle: Optional[Path] = None  # None: the demo bundle (models/demo)
    method: Optional[str] = None  # None: cosme when the bundle can, else maxlogit
    frames: int = DEFAULT_FRAMES
    size: Optional[Tuple[int, int]] = None  # camera (drive) size; None: the bundle's input size
    out: Path = DEFAULT_OUT
    seed: int = DEFAULT_SEED
    threshold: Optional[float] = None
    device: str = "auto"
    force: bool = False
    progress: bool = True


@dataclass
class DemoResult:
    bundle: Dict[str, Any]
    method: str
    frames: int
    size: Tuple[int, int]
    seed: int
    metrics: Optional[Dict[str, float]]  # auroc / ap / fpr95 (percent); None when undefined
    metrics_note: Optional[str]
    pixels: Dict[str, int]
    segmentation: Dict[str, Any]
    threshold: Dict[str, Any]
    node: Dict[str, Any]
    outputs: Dict[str, str]
    seconds: float = 0.0

    def to_json(self) -> Dict[str, Any]:
        return {
            "bundle": self.bundle,
            "method": self.method,
            "frames": self.frames,
            "size": list(self.size),
            "seed": self.seed,
            "fps": FPS,
            "metrics": self.metrics,
            "metrics_note": self.metrics_note,
            "pixels": self.pixels,
            "segmentation": self.segmentation,
            "threshold": self.threshold,
            "node": self.node,
            "outputs": self.outputs,
            "seconds": round(self.seconds, 2),
        }


# ----------------------------------------------------------------------------- the bundle


def default_bundle() -> Path:
    """The demo bundle the node uses by default (installed share/ or the repository's)."""
    from cosme_ros.paths import default_bundle_path

    return default_bundle_path()


def read_manifest(path: Path) -> Dict[str, Any]:
    """The bundle's manifest as a mapping; an unreadable bundle raises the bundle reader's
    one-line error (the node validates everything else when it starts)."""
    from cosme_ros.errors import BundleError
    from cosme_ros.manifest_io import read_manifest_text

    try:
        manifest = read_manifest_text(path / "manifest.yaml")
        if isinstance(manifest, dict) and isinstance(manifest.get("classes"), dict):
            return manifest
    except (OSError, BundleError):
        pass
    from cosme_ros.bundle import Bundle

    return Bundle.load(path).manifest  # raises BundleError naming the file and the field


def resolve_bundle(bundle: Optional[Path]) -> Tuple[Path, Dict[str, Any]]:
    if bundle is None:
        path = default_bundle()
        if not (path / "manifest.yaml").is_file():
            raise CosmeError(
                f"the demo bundle {path} is not built: run `bash {BUILD_SCRIPT}` "
                f"(or pass --bundle DIR)"
            )
    else:
        path = Path(bundle)
    return path.resolve(), read_manifest(path)


def pick_method(manifest: Dict[str, Any], method: Optional[str]) -> str:
    from cosme_ros.anomaly.method_spec import check_run_spec
    from cosme_ros.anomaly.registry import METHODS, default_method

    if method is None:
        return default_method(manifest)
    try:
        check_run_spec(method, METHODS)
    except ValueError as exc:
        raise CosmeError(f"--method {method!r}: {exc}") from None
    return method


# ----------------------------------------------------------------------------- ROS environment


def ros_environment(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for the demo's ROS processes: discovery on this host and a random domain
    id, unless the user chose them (then theirs). Without a chosen range, static peers are
    cleared too: nothing leaves loopback. Under Fast DDS (the default RMW) and without a profile
    of the user's, ``config/fastdds_shm.xml``: shared-memory segments large enough for a frame's
    outputs, without which the node's ~1 MB of outputs per frame miss shared memory and wait
    seconds for a repair (the demo ran 5x slower; see the file)."""
    env = dict(os.environ if environ is None else environ)
    env.update(shm_profile_env(env))
    if not env.get("ROS_AUTOMATIC_DISCOVERY_RANGE"):
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        env.pop("ROS_STATIC_PEERS", None)
        env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; the range says the same
    if not env.get("ROS_DOMAIN_ID"):
        env["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
    try:
        domain = int(env["ROS_DOMAIN_ID"])
    except ValueError:
        raise CosmeError(f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']!r} is not an integer") from None
    if not 0 <= domain <= 232:
        raise CosmeError(f"ROS_DOMAIN_ID={domain} is out of range (0-232; 0-101 is safe)")
    return env


_ROS_KEYS = (
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "ROS_DOMAIN_ID",
    "ROS_STATIC_PEERS",
    "ROS_LOCALHOST_ONLY",
) + FASTDDS_PROFILE_KEYS


class _Environ:
    """Apply the ROS keys of ``env`` to this process while the demo's rclpy context exists."""

    def __init__(self, env: Dict[str, str]):
        self.env, self.old = env, {k: os.environ.get(k) for k in _ROS_KEYS}

    def __enter__(self):
        for k in _ROS_KEYS:
            if k in self.env:
                os.environ[k] = self.env[k]
            else:
                os.environ.pop(k, None)
        return self

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------- the node process

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


# ----------------------------------------------------------------------------- talking to it


class NodeLink:
    """The demo's own rclpy context: publishes camera frames to the node and gathers its
    outputs for one stamp at a time."""

    def __init__(self, domain_id: int, keys: Sequence[str]):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self._rclpy = rclpy
        self.Image = Image
        self.context = rclpy.Context()
        # No signal handlers: Ctrl-C stays a KeyboardInterrupt of the demo, which stops the node.
        rclpy.init(
            context=self.context,
            domain_id=domain_id,
            signal_handler_options=rclpy.signals.SignalHandlerOptions.NO,
        )
        try:
            self.node = rclpy.create_node("cosme_demo", namespace=NAMESPACE, context=self.context)
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.pub = self.node.create_publisher(Image, IMAGE_TOPIC, reliable)
            self.keys = list(keys)
            self.subs = [
                self.node.create_subscription(
                    Image, TOPICS[k], lambda msg, k=k: self._on_output(k, msg), reliable
                )
                for k in self.keys
            ]
        except BaseException:
            rclpy.try_shutdown(context=self.context)
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

    def spin_until(
        self, done: Callable[[], bool], timeout: float, alive: Callable[[], bool] = lambda: True
    ) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() >= deadline or not alive():
                return done()
            self.executor.spin_once(timeout_sec=0.02)
        return True

    def wait_connected(self, timeout: float, alive: Callable[[], bool]) -> bool:
        return self.spin_until(
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
            self.spin_until(done, min(resend_after, max(0.0, deadline - time.monotonic())), alive)
        if done() and resent > 0:
            # A re-sent copy may still be waiting in the node's one-frame mailbox: the next
            # frame would replace it there (a drop). Let the node answer it first.
            self.spin_until(lambda: self._answers > resent, resend_after, alive)
        return (dict(self._got) if done() else None), max(resent, 0)

    def close(self) -> None:
        try:
            self.executor.shutdown()
            self.node.destroy_node()
        finally:
            self._rclpy.try_shutdown(context=self.context)


# ----------------------------------------------------------------------------- metrics


class DriveScores:
    """Pooled labelled pixels of the drive (:class:`~cosme_ros.metrics.PooledPixels`, exact),
    the segmentation confusion matrix and, with a node mask, its pixel counts against the
    ground truth."""

    def __init__(self, num_classes: int, frames: int):
        self.nc = num_classes
        self.pooled = PooledPixels(["score"], frames, memory_limit_gib=None, unit="frames")
        self.confusion = ConfusionMatrix(num_classes)
        self.mask_counts = np.zeros(3, np.int64)  # tp, fp, fn
        self.has_mask = False
        self.frames = 0

    def add(
        self,
        score: np.ndarray,
        anomaly: np.ndarray,
        classes: np.ndarray,
        semantic: np.ndarray,
        mask: Optional[np.ndarray] = None,
    ) -> None:
        self.pooled.add({"score": score}, anomaly, f"frame {self.frames}")
        self.frames += 1
        self.confusion.add(semantic, classes)
        if mask is not None:
            self.has_mask = True
            valid = (anomaly == 0) | (anomaly == 1)
            pred_a, gt_a = mask[valid] > 0, anomaly[valid] == 1
            self.mask_counts += [
                int((pred_a & gt_a).sum()),
                int((pred_a & ~gt_a).sum()),
                int((~pred_a & gt_a).sum()),
            ]

    def pixels(self) -> Dict[str, int]:
        return dict(self.pooled.pixels)

    def anomaly_metrics(self) -> Tuple[Optional[Dict[str, float]], Optional[str], Dict]:
        """(auroc / ap / fpr95 or None, why None, best-F1 threshold info)."""
        try:
            best, f1 = self.pooled.best_f1("score")
            metrics = self.pooled.compute().metrics["score"]
        except ValueError as exc:
            return None, str(exc), {}
        return metrics, None, {"best_f1": best, "best_f1_score": round(f1, 4)}

    def segmentation(self, names: Sequence[str]) -> Dict[str, Any]:
        names = [*names, *(str(c) for c in range(len(names), self.nc))]
        r = self.confusion.iou(names)
        present = r["present"]
        return {
            "miou": r["miou_present"] * 100 if present else None,
            "classes": len(present),
            "pixel_accuracy": r["pixel_accuracy"] * 100 if r["pixels"] else None,
            "iou": {names[c]: round(r["iou"][names[c]] * 100, 2) for c in present},
        }

    def mask_scores(self) -> Optional[Dict[str, float]]:
        if not self.has_mask:
            return None
        tp, fp, fn = (int(v) for v in self.mask_counts)
        return {
            "iou": tp / max(1, tp + fp + fn),
            "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn),
        }


# ----------------------------------------------------------------------------- rendering ahead


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """``items`` produced by a background thread, ``depth`` ahead (the next frame renders while
    the node works on this one). Exceptions come out where the item would have."""
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as exc:  # handed to the consumer
            q.put((end, exc))

    thread = threading.Thread(target=work, daemon=True, name="drive renderer")
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()


# ----------------------------------------------------------------------------- the demo


def output_paths(out: Path) -> Dict[str, Path]:
    return {
        "video": out / VIDEO_NAME,
        "contact_sheet": out / SHEET_NAME,
        "node_log": out / LOG_NAME,
    }


def run_demo(opts: DemoOptions, log: Callable[[str], None] = print) -> DemoResult:
    """Run the drive through ``cosme_node``; see the module docstring."""
    start = time.perf_counter()
    if opts.frames < 1:
        raise CosmeError(f"--frames must be at least 1, got {opts.frames}")
    if opts.seed < 0:
        raise CosmeError(f"--seed must be non-negative, got {opts.seed}")
    if opts.threshold is not None and not np.isfinite(opts.threshold):
        raise CosmeError(f"--threshold must be a finite number, got {opts.threshold}")
    bundle_path, manifest = resolve_bundle(opts.bundle)
    method = pick_method(manifest, opts.method)
    names = list(manifest["classes"]["names"])
    palette = [tuple(c) for c in manifest["classes"]["palette"]]
    size = tuple(opts.size or manifest["preprocess"]["input_size"])
    h, w = int(size[0]), int(size[1])
    paths = output_paths(Path(opts.out))
    for p in paths.values():
        atomic.check_writable(p, opts.force)
    env = ros_environment()
    domain = int(env["ROS_DOMAIN_ID"])
    try:
        import rclpy  # noqa: F401
        from sensor_msgs.msg import Image  # noqa: F401
    except ImportError as exc:
        raise CosmeError(
            f"cosme demo needs rclpy and sensor_msgs (a sourced ROS 2 distro, or the "
            f".venv's ROS wheels): {exc}"
        ) from None

    params: Dict[str, Any] = {
        "bundle": str(bundle_path),
        "method": method,
        "device": opts.device,
        "input_qos": "DEFAULT",
    }
    if opts.threshold is not None:
        params["anomaly_threshold"] = float(opts.threshold)
    keys = ["score", "classes", "heatmap"] + (["mask"] if opts.threshold is not None else [])
    chosen = (
        "LOCALHOST"
        if not os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
        else f"{env['ROS_AUTOMATIC_DISCOVERY_RANGE']} (from the environment)"
    )
    profile = next((env[k] for k in FASTDDS_PROFILE_KEYS if env.get(k)), None)
    if profile is not None:
        mine = any(os.environ.get(k) for k in FASTDDS_PROFILE_KEYS)
        chosen += f", Fast DDS profile {profile}{' (from the environment)' if mine else ''}"
    log(
        f"starting cosme_node: bundle {manifest.get('name', bundle_path.name)} ({bundle_path}), "
        f"method {method}; ROS_DOMAIN_ID={domain}"
        f"{'' if os.environ.get('ROS_DOMAIN_ID') else ' (random)'}, discovery {chosen}"
    )

    node: Optional[NodeProcess] = None
    link: Optional[NodeLink] = None
    finished = False
    with tempfile.TemporaryDirectory(prefix="cosme-demo-") as tmp:
        try:
            node = NodeProcess(params, env, paths["node_log"], Path(tmp) / "params.yaml")
            ready = node.wait_ready(STARTUP_TIMEOUT_S)
            log(f"cosme_node ready (pid {node.pid}, namespace {NAMESPACE}): {ready.split(';')[0]}")
            with _Environ(env):
                link = NodeLink(domain, keys)
            if not link.wait_connected(60.0, node.alive):
                if not node.alive():
                    raise CosmeError(f"cosme_node stopped: {node.failure()}")
                raise CosmeError(
                    "cosme_node's topics did not match the demo's publisher and "
                    "subscribers within 60 s (is multicast on loopback blocked?)"
                )
            scores, trips, resent = _drive(
                opts, link, node, (h, w), method, palette, len(names), paths
            )
            finished = True
        finally:
            try:
                if link is not None:
                    link.close()
            finally:
                if node is not None:
                    code = node.stop()
                    if finished and code not in (0, None):
                        log(
                            f"note: cosme_node exited with status {code} (log: "
                            f"{paths['node_log']})"
                        )

    metrics, note, best = scores.anomaly_metrics()
    threshold = {"value": opts.threshold, **best, "mask": scores.mask_scores()}
    node_info = {
        "ros_domain_id": domain,
        "discovery_range": env["ROS_AUTOMATIC_DISCOVERY_RANGE"],
        "fastdds_profile": profile,
        "namespace": NAMESPACE,
        "round_trip_ms": {
            "median": round(1e3 * statistics.median(trips), 1),
            "mean": round(1e3 * statistics.fmean(trips), 1),
            "max": round(1e3 * max(trips), 1),
        },
        "resent": resent,
    }
    return DemoResult(
        bundle={"path": str(bundle_path), "name": manifest.get("name", bundle_path.name)},
        method=method,
        frames=opts.frames,
        size=(h, w),
        seed=opts.seed,
        metrics=metrics,
        metrics_note=note,
        pixels=scores.pixels(),
        segmentation=scores.segmentation(names),
        threshold=threshold,
        node=node_info,
        outputs={k: str(v) for k, v in paths.items()},
        seconds=time.perf_counter() - start,
    )


def _drive(
    opts: DemoOptions,
    link: NodeLink,
    node: NodeProcess,
    size: Tuple[int, int],
    method: str,
    palette,
    num_classes: int,
    paths: Dict[str, Path],
):
    """Stream the drive through the node, frame by frame; write the video and the sheet.
    Returns (DriveScores, round trips in s, frames re-sent)."""
    from cosme_ros.data.synth import drive_frames

    scores = DriveScores(num_classes, opts.frames)
    sheet_at = set(sheet_indices(opts.frames))
    sheet_rows: List[np.ndarray] = []
    trips: List[float] = []
    resent = 0
    frames = prefetch(drive_frames(opts.seed, opts.frames, size, FPS))
    bar = _progress(opts.frames, opts.progress)
    video = VideoFile(paths["video"], FPS)
    try:
        for i, frame in enumerate(frames):
            typical = statistics.median(trips[-20:]) if trips else 1.0
            t0 = time.perf_counter()
            out, again = _exchange(link, node, frame.image, i, size, typical, paths["node_log"])
            trips.append(time.perf_counter() - t0)
            resent += again
            scores.add(out["score"], frame.anomaly, out["classes"], frame.semantic, out.get("mask"))
            row = compose_row(
                frame.image,
                out["classes"],
                out["heatmap"],
                palette,
                frame.anomaly,
                out.get("mask"),
                (f"camera {i + 1}/{opts.frames}", "segmentation", f"anomaly ({method})"),
            )
            video.write(row)
            if i in sheet_at:
                sheet_rows.append(row)
            bar.update(1)
            bar.set_postfix_str(f"{1e3 * trips[-1]:.0f} ms/frame", refresh=False)
        video.commit()
    except BaseException:
        video.discard()
        raise
    finally:
        bar.close()
        frames.close()  # stops the renderer thread
    write_png(paths["contact_sheet"], contact_sheet(sheet_rows))
    return scores, trips, resent


def _exchange(
    link: "NodeLink",
    node: "NodeProcess",
    image: np.ndarray,
    i: int,
    size: Tuple[int, int],
    typical: float,
    node_log: Path,
) -> Tuple[Dict[str, np.ndarray], int]:
    """Frame ``i`` through the node: its outputs (checked to be at the frame's size) and how
    often it was re-sent; a CosmeError when the node died or did not answer."""
    out, again = link.exchange(
        image,
        STAMP0_NS + round(i * 1e9 / FPS),
        resend_after=max(RESEND_MIN_S, 5 * typical),
        timeout=FRAME_TIMEOUT_S,
        alive=node.alive,
    )
    if out is None:
        if not node.alive():
            raise CosmeError(f"cosme_node stopped during the drive (frame {i}): {node.failure()}")
        raise CosmeError(
            f"no output from cosme_node for frame {i} within {FRAME_TIMEOUT_S:.0f} s "
            f"(log: {node_log})"
        )
    h, w = size
    for key, picture in out.items():
        if picture.shape[:2] != (h, w):
            raise CosmeError(
                f"{TOPICS[key]}: {picture.shape[1]}x{picture.shape[0]} image for a {w}x{h} frame"
            )
    return out, again


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="drive", unit="frame", disable=not enabled)


def format_result(r: DemoResult) -> str:
    """What ``cosme demo`` prints at the end."""
    h, w = r.size
    px = r.pixels
    lines = [
        f"drive: {r.frames} frames {h}x{w} (seed {r.seed}), {px['anomaly']:,} anomaly / "
        f"{px['in_distribution']:,} in-distribution pixels"
    ]
    seg = r.segmentation
    if seg["miou"] is not None:
        lines.append(
            f"segmentation: mIoU {seg['miou']:.1f} over the {seg['classes']} classes in "
            f"the drive, pixel accuracy {seg['pixel_accuracy']:.1f}"
        )
    if r.metrics is not None:
        m = r.metrics
        lines.append(
            f"anomaly ({r.method}), pixels pooled over the drive: AUROC "
            f"{m['auroc']:.2f}  AP {m['ap']:.2f}  FPR95 {m['fpr95']:.2f}"
        )
    else:
        lines.append(f"anomaly ({r.method}): metrics undefined: {r.metrics_note}")
    t = r.threshold
    if t.get("mask"):
        mk = t["mask"]
        lines.append(
            f"anomaly/mask at threshold {t['value']:g}: IoU {100 * mk['iou']:.1f}, "
            f"precision {100 * mk['precision']:.1f}, recall {100 * mk['recall']:.1f}"
        )
    if "best_f1" in t:
        lines.append(
            f"best F1 {t['best_f1_score']:.3f} at score {t['best_f1']:.4g}"
            + (
                ""
                if t["value"] is not None
                else " (--threshold T outlines the node's anomaly/mask in the video)"
            )
        )
    n = r.node
    lines.append(
        f"node: {n['round_trip_ms']['median']:.0f} ms per frame (median round trip)"
        + (f", {n['resent']} frame(s) re-sent" if n["resent"] else "")
    )
    lines.append(
        f"wrote {r.outputs['video']}, {r.outputs['contact_sheet']} and "
        f"{r.outputs['node_log']} in {r.seconds:.0f} s"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- compact storage
