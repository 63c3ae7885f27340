"""The demo's run: the bundle and method chosen, the node started, the drive streamed through it,
the outputs written and the result measured (see :mod:`cosme_ros.tools.demo`)."""

from __future__ import annotations

import os
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from cosme_ros import atomic
from cosme_ros.errors import CosmeError
from cosme_ros.frames.sheets import compose_row, contact_sheet, sheet_indices
from cosme_ros.frames.writers import VideoFile, write_png
from cosme_ros.tools.demo.link import NodeLink
from cosme_ros.tools.demo.options import (
    BUILD_SCRIPT,
    FPS,
    FRAME_TIMEOUT_S,
    LOG_NAME,
    NAMESPACE,
    RESEND_MIN_S,
    SHEET_NAME,
    STAMP0_NS,
    STARTUP_TIMEOUT_S,
    TOPICS,
    VIDEO_NAME,
    DemoOptions,
    DemoResult,
)
from cosme_ros.tools.demo.process import NodeProcess, ros_environment
from cosme_ros.tools.demo.scores import DriveScores
from cosme_ros.ros.dds_profile import FASTDDS_PROFILE_KEYS

# typical round trip): an output nobody matched yet is not computed


# ----------------------------------------------------------------------------- options, result


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
    """Run the drive through ``cosme_node``; see :mod:`cosme_ros.tools.demo`."""
    start = time.perf_counter()
    _check(opts)
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
    network = _network(env)
    params: Dict[str, Any] = {
        "bundle": str(bundle_path),
        "method": method,
        "device": opts.device,
        "input_qos": "DEFAULT",
    }
    if opts.threshold is not None:
        params["anomaly_threshold"] = float(opts.threshold)
    keys = ["score", "classes", "heatmap"] + (["mask"] if opts.threshold is not None else [])
    log(
        f"starting cosme_node: bundle {manifest.get('name', bundle_path.name)} ({bundle_path}), "
        f"method {method}; {network['text']}"
    )

    def drive(link: NodeLink, node: NodeProcess):
        return _drive(opts, link, node, (h, w), method, palette, len(names), paths)

    scores, trips, resent = _with_node(params, env, keys, paths, drive, log)
    metrics, note, best = scores.anomaly_metrics()
    node_info = {
        **network["info"],
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
        threshold={"value": opts.threshold, **best, "mask": scores.mask_scores()},
        node=node_info,
        outputs={k: str(v) for k, v in paths.items()},
        seconds=time.perf_counter() - start,
    )


def _check(opts: DemoOptions) -> None:
    if opts.frames < 1:
        raise CosmeError(f"--frames must be at least 1, got {opts.frames}")
    if opts.seed < 0:
        raise CosmeError(f"--seed must be non-negative, got {opts.seed}")
    if opts.threshold is not None and not np.isfinite(opts.threshold):
        raise CosmeError(f"--threshold must be a finite number, got {opts.threshold}")
    try:
        import rclpy  # noqa: F401
        from sensor_msgs.msg import Image  # noqa: F401
    except ImportError as exc:
        raise CosmeError(
            f"cosme demo needs rclpy and sensor_msgs (a sourced ROS 2 distro, or the "
            f".venv's ROS wheels): {exc}"
        ) from None


def _network(env: Dict[str, str]) -> Dict[str, Any]:
    """Where the demo's DDS traffic goes, as a log line and as the result's fields."""
    domain = int(env["ROS_DOMAIN_ID"])
    chosen = (
        "LOCALHOST"
        if not os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
        else f"{env['ROS_AUTOMATIC_DISCOVERY_RANGE']} (from the environment)"
    )
    profile = next((env[k] for k in FASTDDS_PROFILE_KEYS if env.get(k)), None)
    if profile is not None:
        mine = any(os.environ.get(k) for k in FASTDDS_PROFILE_KEYS)
        chosen += f", Fast DDS profile {profile}{' (from the environment)' if mine else ''}"
    return {
        "text": f"ROS_DOMAIN_ID={domain}"
        f"{'' if os.environ.get('ROS_DOMAIN_ID') else ' (random)'}, discovery {chosen}",
        "info": {
            "ros_domain_id": domain,
            "discovery_range": env["ROS_AUTOMATIC_DISCOVERY_RANGE"],
            "fastdds_profile": profile,
        },
    }


def _with_node(
    params: Dict[str, Any],
    env: Dict[str, str],
    keys: Sequence[str],
    paths: Dict[str, Path],
    drive: Callable[[NodeLink, NodeProcess], Any],
    log: Callable[[str], None],
):
    """Start the node, connect to it, ``drive(link, node)``, and stop the node on every path."""
    node: Optional[NodeProcess] = None
    link: Optional[NodeLink] = None
    finished = False
    with tempfile.TemporaryDirectory(prefix="cosme-demo-") as tmp:
        try:
            node = NodeProcess(params, env, paths["node_log"], Path(tmp) / "params.yaml")
            ready = node.wait_ready(STARTUP_TIMEOUT_S)
            log(f"cosme_node ready (pid {node.pid}, namespace {NAMESPACE}): {ready.split(';')[0]}")
            link = NodeLink(env, keys)
            if not link.wait_connected(60.0, node.alive):
                if not node.alive():
                    raise CosmeError(f"cosme_node stopped: {node.failure()}")
                raise CosmeError(
                    "cosme_node's topics did not match the demo's publisher and "
                    "subscribers within 60 s (is multicast on loopback blocked?)"
                )
            result = drive(link, node)
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
    return result


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
    link: NodeLink,
    node: NodeProcess,
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
