"""``cosme demo`` end to end over real DDS (localhost discovery, this session's random domain: see
ros_util), its failures, the demo bundle's compact storage, its model card and its build script.

The demo runs on a tiny random-weight bundle (64x128 input) passed with --bundle: what is checked
is the plumbing — every frame goes through the node and comes back, the metrics, the video, the
contact sheet and the JSON — not the quality of a model.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import ros_util
from bundles import make_tiny_bundle
from cli_util import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
FRAMES, SIZE = 4, (96, 192)


def demo_env(**extra) -> dict:
    return ros_util.ros_env(extra={"OMP_NUM_THREADS": "1", **extra})


def cosme(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "cosme_ros.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or demo_env(),
    )


def node_pid(stdout: str) -> int:
    return int(re.search(r"cosme_node ready \(pid (\d+)", stdout).group(1))


def assert_gone(pid: int) -> None:
    assert not Path(f"/proc/{pid}").exists(), f"cosme_node (pid {pid}) is still running"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("demo") / "tiny").path


# ----------------------------------------------------------------------------- over DDS


@pytest.mark.ros
def test_demo_runs_the_drive_through_the_node(tiny_bundle, tmp_path):
    pytest.importorskip("rclpy")
    out, report = tmp_path / "out", tmp_path / "demo.json"
    proc = cosme(
        "demo",
        "--bundle",
        tiny_bundle,
        "--frames",
        FRAMES,
        "--size",
        "96x192",
        "--method",
        "maxlogit",
        "--threshold",
        "-3.5",
        "--device",
        "cpu",
        "--out",
        out,
        "--json",
        report,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"AUROC \d+\.\d\d +AP \d+\.\d\d +FPR95 \d+\.\d\d", proc.stdout), proc.stdout
    assert f"ROS_DOMAIN_ID={ros_util.DOMAIN_ID}" in proc.stdout  # the user's (here: the test's)
    assert_gone(node_pid(proc.stdout))

    data = json.loads(report.read_text())
    for key in ("auroc", "ap", "fpr95"):
        assert 0.0 <= data["metrics"][key] <= 100.0
    assert data["frames"] == FRAMES and data["size"] == list(SIZE)
    assert data["pixels"]["anomaly"] > 0 and data["pixels"]["in_distribution"] > 0
    assert data["node"]["ros_domain_id"] == ros_util.DOMAIN_ID
    assert data["node"]["discovery_range"] == "LOCALHOST"
    from cosme_ros.ros.dds_profile import FASTDDS_PROFILE, FASTDDS_PROFILE_KEYS

    if not any(os.environ.get(k) for k in FASTDDS_PROFILE_KEYS) and "fastrtps" in os.environ.get(
        "RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"
    ):
        from cosme_ros.paths import config_path

        assert data["node"]["fastdds_profile"] == str(config_path(FASTDDS_PROFILE))
        assert f"Fast DDS profile {config_path(FASTDDS_PROFILE)}" in proc.stdout
    assert set(data["threshold"]["mask"]) == {"iou", "precision", "recall"}
    assert data["segmentation"]["classes"] > 0

    video = cv2.VideoCapture(data["outputs"]["video"])
    try:
        assert video.isOpened()
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
        ok, frame = video.read()
        assert ok and frame.shape[1] == 3 * SIZE[1] and frame.shape[0] > SIZE[0]
    finally:
        video.release()
    sheet = cv2.imread(data["outputs"]["contact_sheet"])
    assert sheet is not None and sheet.shape[1] == 3 * SIZE[1]
    assert sheet.shape[0] >= FRAMES * SIZE[0]  # one row per frame (4 frames: all of them)
    log = Path(data["outputs"]["node_log"]).read_text()
    # SIGINT made the node print its totals on the way out; reliable input dropped nothing.
    done = re.search(r"processed (\d+), dropped 0\b", log)
    assert done and int(done.group(1)) >= FRAMES, log
    assert "XMLPARSER" not in log, log  # Fast DDS read the profile without complaint
    assert not list(out.glob(".*.tmp*")), list(out.iterdir())


@pytest.mark.ros
def test_node_start_failure_is_forwarded_as_one_line(tiny_bundle, tmp_path):
    pytest.importorskip("rclpy")
    proc = cosme(
        "demo",
        "--bundle",
        tiny_bundle,
        "--method",
        "cosme",
        "--frames",
        2,
        "--device",
        "cpu",
        "--out",
        tmp_path / "out",
    )
    assert_one_line_error(
        proc, "cosme_node did not start", "parameter 'method'", "cosme build-memory", "node.log"
    )
    assert not (tmp_path / "out" / "demo.mp4").exists()


@pytest.mark.ros
@pytest.mark.slow
def test_ctrl_c_stops_the_node_cleanly(tiny_bundle, tmp_path):
    pytest.importorskip("rclpy")
    out = tmp_path / "out"
    proc = ros_util.Process(
        [
            sys.executable,
            "-m",
            "cosme_ros.cli.main",
            "demo",
            "--bundle",
            str(tiny_bundle),
            "--frames",
            "500",
            "--size",
            "96x192",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(out),
        ],
        env=demo_env(),
    )
    try:
        m = proc.wait_for_output(r"cosme_node ready \(pid (\d+)", 180)
        assert m, proc.output
        time.sleep(2.0)  # frames flowing
        proc.interrupt()
        assert proc.wait(60) == 130, proc.output
    finally:
        proc.stop()
    assert_gone(int(m.group(1)))
    assert "interrupted" in proc.output and "Traceback" not in proc.output, proc.output
    assert re.search(r"frames: received \d+, processed \d+", (out / "node.log").read_text())
    assert not (out / "demo.mp4").exists() and not list(out.glob(".*.tmp*"))


# ----------------------------------------------------------------------------- no DDS needed


def test_missing_default_bundle_names_the_build_script(tmp_path, monkeypatch, capsys):
    from cosme_ros.tools.demo import run as demo
    from cosme_ros.cli.main import main

    monkeypatch.setattr(demo, "default_bundle", lambda: tmp_path / "models" / "demo")
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "scripts/build_demo_bundle.sh" in err[0] and str(tmp_path / "models") in err[0]


def test_refuses_to_overwrite_without_force(tiny_bundle, tmp_path, capsys):
    from cosme_ros.cli.main import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "demo.mp4").write_bytes(b"earlier")
    assert main(["demo", "--bundle", str(tiny_bundle), "--out", str(out)]) == 2
    assert "already exists (use --force" in capsys.readouterr().err
    assert (out / "demo.mp4").read_bytes() == b"earlier"


def test_ros_environment_stays_on_this_host_unless_told():
    from cosme_ros.tools.demo import ros_environment

    env = ros_environment(
        {"PATH": "/bin", "ROS_STATIC_PEERS": "10.0.0.7", "ROS_LOCALHOST_ONLY": "0"}
    )
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "ROS_STATIC_PEERS" not in env and "ROS_LOCALHOST_ONLY" not in env
    assert 1 <= int(env["ROS_DOMAIN_ID"]) <= 100 and env["PATH"] == "/bin"
    ids = {ros_environment({})["ROS_DOMAIN_ID"] for _ in range(20)}
    assert len(ids) > 1  # random: two demos do not share a domain
    mine = ros_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_DOMAIN_ID": "42"})
    assert mine["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET" and mine["ROS_DOMAIN_ID"] == "42"
    from cosme_ros.errors import CosmeError

    with pytest.raises(CosmeError, match="ROS_DOMAIN_ID"):
        ros_environment({"ROS_DOMAIN_ID": "seven"})


def test_store_half_halves_the_weights_and_loads_as_fp32(tiny_bundle, tmp_path):
    import torch
    from cosme_ros.bundle import Bundle
    from cosme_ros.bundle import store_half
    from cosme_ros.runtime.pipeline import Pipeline

    torch.set_num_threads(1)
    half = tmp_path / "half"
    shutil.copytree(tiny_bundle, half)
    sizes = store_half(half)
    before, after = sizes["teacher.safetensors"]
    assert after < 0.55 * before
    assert store_half(half)["teacher.safetensors"][1] == after  # idempotent
    from safetensors.torch import load_file

    stored = load_file(str(half / "teacher.safetensors"))
    assert stored["backbone.conv1.weight"].dtype == torch.float16
    assert stored["backbone.bn1.running_var"].dtype == torch.float32
    teacher = Bundle.load(half).teacher()
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    image = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    full = Pipeline(Bundle.load(tiny_bundle), method="maxlogit", device="cpu")(image)
    small = Pipeline(Bundle.load(half), method="maxlogit", device="cpu")(image)
    assert np.abs(full.score - small.score).max() < 0.02 * np.abs(full.score).mean()
    assert (full.classes == small.classes).mean() > 0.99


def test_model_card_from_manifest_and_evaluation(tiny_bundle, tmp_path):
    evaluation = {
        "dataset": {"spec": "synthetic:world/test", "images": 3},
        "methods": {
            "maxlogit": {"auroc": 80.0, "ap": 20.0, "fpr95": 50.0},
            "msp": {"auroc": 70.0, "ap": 25.5, "fpr95": 60.0},
        },
        "best_method": "msp",
        "metric_mode": "exact",
        "skipped": {},
        "pixels": {"anomaly": 100, "in_distribution": 1000, "void": 0},
    }
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    (tmp_path / "timings.tsv").write_text(
        "# machine\ttest box\nsynth-train\t12.5\n" "train-teacher\t3600\n"
    )
    card = tmp_path / "README.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "model_card.py"),
            "--bundle",
            str(tiny_bundle),
            "--evaluate",
            str(tmp_path / "eval.json"),
            "--timings",
            str(tmp_path / "timings.tsv"),
            "--out",
            str(card),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = card.read_text()
    assert "| msp | 70.00 | **25.50** | 60.00 |" in text
    assert "| maxlogit | **80.00** | 20.00 | **50.00** |" in text
    assert text.index("| msp |") < text.index("| maxlogit |")  # the paper's order
    assert "**1 h 00 min**" in text and "demonstration model" in text
    assert "`teacher.safetensors`" in text and "| fp32 |" in text


# ----------------------------------------------------------------------------- the build script


def _build_tiny(out: Path, work: Path) -> subprocess.CompletedProcess:
    from conftest import SHARED_DATA

    weights = SHARED_DATA / "backbones" / "mobilenet_v2_1.0_imagenet"
    if not weights.is_dir():
        pytest.skip(f"{weights} is absent: the demo teacher starts from these ImageNet weights")
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        DEMO_TRAIN_N="8",
        DEMO_VAL_N="4",
        DEMO_TEST_N="4",
        DEMO_SIZE="64x128",
        DEMO_EPOCHS="1",
        DEMO_STUDENT_EPOCHS="1",
        DEMO_K="16",
        DEMO_BATCH="4",
        DEMO_WORKERS="1",
        DEMO_WORK=str(work),
        COSME_PYTHON=sys.executable,
    )
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_demo_bundle.sh"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_build_script_end_to_end_at_tiny_sizes(tmp_path):
    """The whole pipeline of scripts/build_demo_bundle.sh at toy sizes (about a minute)."""
    out = tmp_path / "demo"
    proc = _build_tiny(out, tmp_path / "work")
    assert re.search(r"total \(this run\): ", proc.stdout)
    for step in (
        "synth-train",
        "train-teacher",
        "build-memory",
        "train-student",
        "evaluate",
        "calibrate",
    ):
        assert re.search(rf"^  {step} +\d+\.\d s$", proc.stdout, re.M), step
    from cosme_ros.bundle import Bundle

    bundle = Bundle.load(out)
    assert bundle.has_student and bundle.has_anomaly and bundle.name == "demo"
    size = sum(p.stat().st_size for p in out.iterdir())
    assert size <= 30e6
    card = (out / "README.md").read_text()
    assert "| cosme |" in card and "fp16 (BatchNorm statistics fp32)" in card
    assert not math.isnan(bundle.manifest["teacher"]["source"]["train"]["miou"])
    assert not list(tmp_path.glob(".demo.*"))  # the temporary copy was renamed into place
    # the ImageNet-pretrained teacher, its licence beside the bundle, hashes and thresholds
    teacher = bundle.manifest["teacher"]
    assert teacher["config"]["backbone"] == "mobilenetv2"
    assert teacher["source"]["train"]["pretrained"]["weights"] == "imagenet"
    assert "Apache License" in (out / "LICENSE.mobilenet_v2").read_text()
    assert all(len(bundle.manifest[p]["sha256"]) == 64 for p in ("teacher", "student", "anomaly"))
    for key in ("cosme", "cosme[refine=guided]", "maxlogit"):
        assert bundle.threshold(key) is not None, key
    assert "## Anomaly thresholds" in card


@pytest.mark.slow
def test_build_script_rebuilds_the_same_bytes(tmp_path):
    """Two rebuilds from nothing give byte-identical networks and memory (same machine: data,
    initialisation, sample order, augmentation and bf16 training are all seeded)."""
    outs = [tmp_path / "a", tmp_path / "b"]
    for k, out in enumerate(outs):
        _build_tiny(out, tmp_path / f"work{k}")
    for name in ("teacher.safetensors", "student.safetensors", "anomaly.safetensors"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
