"""The cosme command end to end, as a user runs it: real checkpoints in, files out, clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bundles import make_tiny_bundle
from cli_util import assert_one_line_error

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ESPNET = SHARED / "teachers" / "espnetv2" / "espnetv2_s_1.0_city_512x256.pth"
SAMPLE = SHARED / "cityscapes_sample" / "frankfurt_000001_058914_leftImg8bit.png"
needs_shared = pytest.mark.skipif(
    not ESPNET.is_file() or not SAMPLE.is_file(),
    reason="../shared/data (ESPNetv2 checkpoint, Cityscapes sample) " "is absent",
)


def cosme(*args, check_rc=0):
    proc = subprocess.run(
        [sys.executable, "-m", "cosme_ros.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


@needs_shared
def test_espnetv2_bundle_and_infer_on_a_real_frame(tmp_path):
    bundle = tmp_path / "espnet"
    cosme(
        "bundle",
        "create",
        "--teacher",
        "espnetv2",
        "--weights",
        ESPNET,
        "--out",
        bundle,
        "--input-size",
        "256x512",
    )
    out = tmp_path / "out"
    cosme(
        "infer",
        "--bundle",
        bundle,
        "--input",
        SAMPLE,
        "--output",
        out,
        "--device",
        "cpu",
        "--json",
        tmp_path / "summary.json",
    )
    stem = SAMPLE.stem
    classes = cv2.imread(str(out / f"{stem}_classes.png"), cv2.IMREAD_UNCHANGED)
    score = np.load(out / f"{stem}_score.npy")
    overlay = cv2.imread(str(out / f"{stem}_overlay.jpg"))
    assert classes.dtype == np.uint8 and classes.shape == (1024, 2048)
    assert score.dtype == np.float32 and score.shape == (1024, 2048)
    assert overlay.shape == (1024, 4096, 3)
    # A street frame: road (trainId 0) is the commonest class in the lower half.
    lower = classes[600:]
    assert np.bincount(lower.ravel(), minlength=20).argmax() == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method"] == "maxlogit" and len(summary["images"]) == 1
    # Refuses to overwrite without --force.
    again = cosme("infer", "--bundle", bundle, "--input", SAMPLE, "--output", out, check_rc=None)
    assert_one_line_error(again, "already exists", "--force")


def test_bundle_create_refuses_an_unsafe_pickle(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Path("/tmp")}, evil)
    proc = cosme(
        "bundle",
        "create",
        "--teacher",
        "espnetv2",
        "--weights",
        evil,
        "--out",
        tmp_path / "b",
        check_rc=None,
    )
    assert_one_line_error(proc, str(evil), "refused to unpickle")


def test_bundle_create_reports_a_truncated_checkpoint(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1000)}, good)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[:300])
    proc = cosme(
        "bundle",
        "create",
        "--teacher",
        "deeplabv3plus",
        "--backbone",
        "resnet18",
        "--weights",
        bad,
        "--out",
        tmp_path / "b",
        check_rc=None,
    )
    assert_one_line_error(proc, str(bad))
    assert not (tmp_path / "b").exists()


def test_bundle_create_reports_a_list_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    proc = cosme(
        "bundle",
        "create",
        "--teacher",
        "espnetv2",
        "--weights",
        path,
        "--out",
        tmp_path / "b",
        check_rc=None,
    )
    assert_one_line_error(proc, str(path), "not a state dict")


@needs_shared
def test_bundle_create_reports_the_wrong_architecture(tmp_path):
    proc = cosme(
        "bundle",
        "create",
        "--teacher",
        "deeplabv3plus",
        "--backbone",
        "resnet101",
        "--weights",
        ESPNET,
        "--out",
        tmp_path / "b",
        check_rc=None,
    )
    assert_one_line_error(proc, str(ESPNET))


def test_infer_reports_an_unreadable_image_and_goes_on(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((40, 60, 3), 120, np.uint8))
    (images / "b.jpg").write_bytes(b"definitely not a jpeg")
    out = tmp_path / "out"
    proc = cosme(
        "infer", "--bundle", bundle.path, "--input", images, "--output", out, check_rc=None
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error: {images / 'b.jpg'}: image refused: not a PNG, JPEG, BMP or WebP" in proc.stderr
    assert (out / "a_classes.png").is_file() and (out / "a_score.npy").is_file()
    assert np.load(out / "a_score.npy").shape == (40, 60)


def test_infer_names_the_missing_part(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 60, 3), np.uint8))
    proc = cosme(
        "infer",
        "--bundle",
        bundle.path,
        "--input",
        tmp_path / "a.png",
        "--output",
        tmp_path / "out",
        "--method",
        "cosme",
        check_rc=None,
    )
    assert_one_line_error(proc, "build-memory")


def test_missing_bundle_is_one_line(tmp_path):
    proc = cosme(
        "infer",
        "--bundle",
        tmp_path / "nope",
        "--input",
        tmp_path,
        "--output",
        tmp_path / "o",
        check_rc=None,
    )
    assert_one_line_error(proc, str(tmp_path / "nope"))


@pytest.mark.parametrize("layout", ["vainf", "sml"])
def test_deeplabv3plus_release_layouts_become_bundles(tmp_path, layout):
    from cosme_ros.bundle import Bundle
    from test_deeplabv3plus import SMLRef, VainFRef, X, randomize

    torch.manual_seed(0)
    if layout == "vainf":
        ref = randomize(VainFRef(50, 19, 16, width=0.25))
        path = tmp_path / "best_deeplabv3plus_resnet50_cityscapes_os16.pth"
        torch.save({"model_state": ref.state_dict(), "best_score": np.float64(0.7)}, path)
    else:
        ref = randomize(SMLRef(50, 19, 8, True, width=0.25))
        path = tmp_path / "r50_os8_base_cty.pth"
        torch.save(
            {
                "state_dict": {"module." + k: v for k, v in ref.state_dict().items()},
                "mean_iu": np.float64(0.8),
                "epoch": 3,
            },
            path,
        )
    out = tmp_path / "bundle"
    cosme(
        "bundle",
        "create",
        "--teacher",
        "deeplabv3plus",
        "--backbone",
        "resnet50",
        "--weights",
        path,
        "--out",
        out,
    )
    teacher = Bundle.load(out).teacher()
    with torch.no_grad():
        got, want = teacher(X)["o"], ref(X)["o"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_sigterm_unwinds_every_command_like_ctrl_c(tmp_path, monkeypatch, capsys):
    """SIGTERM is handled once, in cli/main.py, for every subcommand: the command's cleanup
    runs (a ``finally`` here) and the exit status is 143; Ctrl-C stays 130."""
    import os
    import signal
    import time

    from cosme_ros.cli import infer, main as main_mod

    cleaned = []

    def terminated(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
            return 0
        finally:
            cleaned.append("sigterm")

    def interrupted(args):
        try:
            raise KeyboardInterrupt
        finally:
            cleaned.append("sigint")

    before = signal.getsignal(signal.SIGTERM)
    args = ["infer", "--bundle", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path)]
    monkeypatch.setattr(infer, "run", terminated)
    assert main_mod.main(args) == 143
    monkeypatch.setattr(infer, "run", interrupted)
    assert main_mod.main(args) == 130
    assert cleaned == ["sigterm", "sigint"]
    err = capsys.readouterr().err
    assert "terminated" in err and "interrupted" in err
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the command's only
