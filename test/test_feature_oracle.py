"""scripts/feature_oracle.py: the supervised probe over a teacher's features (a diagnostic)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosme_ros.paths import default_bundle_path

REPO = Path(__file__).resolve().parents[1]
DEMO = default_bundle_path()


def _oracle():
    spec = importlib.util.spec_from_file_location(
        "feature_oracle", REPO / "scripts" / "feature_oracle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_oracle(train: str, test: str, *extra: str, timeout: int = 120):
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "feature_oracle.py"),
            "--bundle",
            str(DEMO),
            "--train",
            train,
            "--test",
            test,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


needs_demo = pytest.mark.skipif(
    not (DEMO / "manifest.yaml").is_file(), reason=f"no demo bundle at {DEMO}"
)


def test_cell_targets_count_only_labelled_pixels():
    anomaly = np.zeros((8, 8), np.uint8)
    anomaly[:4, :4] = 1  # top-left cell: all anomaly
    anomaly[:4, 4:7] = 1  # top-right cell: three quarters anomaly ...
    anomaly[:4, 7:] = 255  # ... and a quarter void: 100 % of its labelled pixels
    anomaly[4:, 4:] = 255  # bottom-right: all void, unusable
    anomaly[4:6, :4] = 1  # bottom-left: half anomaly
    target, usable = _oracle().cell_targets(anomaly, (2, 2))
    assert torch.allclose(target[usable], torch.tensor([1.0, 1.0, 0.5]))
    assert usable.tolist() == [[True, True], [True, False]]


@pytest.mark.slow
@needs_demo
def test_probe_finds_the_anomalies_it_was_trained_on(tmp_path):
    from cosme_ros.data.synth.dataset import write_split

    write_split(tmp_path / "test", "test", 6, 5, (192, 384), workers=1)
    report = tmp_path / "oracle.json"
    split = f"synthetic:{tmp_path / 'test'}"
    proc = _run_oracle(split, split, "--epochs", "20", "--json", str(report), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["train_images"] == result["test_images"] == 6
    # Trained and scored on the same frames, the probe must find their anomalies: scores and
    # masks that were misaligned (or a label convention mixed up) would leave AUROC near 50.
    assert result["metrics"]["auroc"] > 90, result["metrics"]
    assert "oracle mlp probe on" in proc.stdout


@needs_demo
def test_a_dataset_without_anomaly_masks_is_refused(tmp_path):
    import cv2

    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((64, 128, 3), np.uint8))
    proc = _run_oracle(f"images:{tmp_path / 'imgs'}", f"images:{tmp_path / 'imgs'}")
    assert proc.returncode != 0
    assert "has no anomaly masks" in proc.stderr


@needs_demo
def test_a_missing_dataset_is_named(tmp_path):
    proc = _run_oracle(f"synthetic:{tmp_path / 'nowhere'}", f"synthetic:{tmp_path / 'nowhere'}")
    assert proc.returncode != 0
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr
