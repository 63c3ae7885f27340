"""``cosme calibrate``: per-method anomaly thresholds stored in the bundle, at a stated
false-positive rate on in-distribution pixels, and the keys the node and replay look them up by."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from bundles import make_tiny_bundle, write_scenes
from cosme_ros.bundle import Bundle
from cosme_ros.runtime.thresholds import method_key, threshold_key
from cosme_ros.tools.calibrate import calibrate
from cosme_ros.data.datasets import open_dataset
from cosme_ros.errors import BundleError
from cosme_ros.tools.evaluate import MultiMethodRunner, select_methods


def test_keys_drop_default_refinement_options():
    assert threshold_key("cosme") == "cosme"
    assert threshold_key("cosme[refine=none]") == "cosme"
    assert threshold_key("cosme[refine_radius=8,refine=guided]") == "cosme[refine=guided]"
    assert (
        threshold_key("cosme[refine=guided,refine_radius=4]")
        == "cosme[refine=guided,refine_radius=4]"
    )
    assert method_key("maxlogit", {}) == "maxlogit"
    assert (
        method_key("cosme", {"refine": "guided", "refine_radius": 8, "refine_eps": 1e-3})
        == "cosme[refine=guided]"
    )


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    bundle = make_tiny_bundle(root / "bundle")
    write_scenes(root / "anomalies", 4, seed=3, anomalies=True)
    write_scenes(root / "normal", 3, seed=4)
    return root, bundle


def test_threshold_is_the_in_distribution_quantile(toy):
    """At most fpr of the in-distribution pixels score above the threshold, and just about fpr
    (the quantile of the pixels scored); anomaly pixels give the TPR there; void is ignored."""
    root, bundle = toy
    scorers, _ = select_methods(bundle, ["maxlogit", "entropy"])
    runner = MultiMethodRunner(bundle, scorers, precision="fp32")
    dataset = open_dataset(f"folder:{root / 'anomalies'}")
    out = calibrate(runner, dataset, 0.05, pixels_per_image=10**7, progress=False)
    scores = {m: [] for m in scorers}
    positives = {m: [] for m in scorers}
    for i in range(len(dataset)):
        sample = dataset[i]
        _, s = runner(sample.image, sample.anomaly.shape)
        for m in scorers:
            scores[m].append(s[m][sample.anomaly == 0])
            positives[m].append(s[m][sample.anomaly == 1])
    for m, entry in out.items():
        normal = np.concatenate(scores[m])
        above = float((normal > entry["value"]).mean())
        assert above <= 0.05 and above > 0.04, (m, above)
        assert entry["measured_fpr"] == pytest.approx(above)
        assert entry["pixels"] == normal.size and entry["images"] == 4
        assert entry["tpr"] == pytest.approx(
            float((np.concatenate(positives[m]) > entry["value"]).mean())
        )
    # images without anomaly labels: every pixel is in-distribution, no TPR
    plain = calibrate(runner, open_dataset(f"images:{root / 'normal'}"), 0.01, progress=False)
    assert all(e["tpr"] is None and e["pixels"] == 3 * 64 * 128 for e in plain.values())


def cosme_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cosme_ros.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_thresholds_that_a_rebuilt_part_drops(toy, tmp_path):
    import shutil

    root, _ = toy
    bundle = tmp_path / "b"
    shutil.copytree(root / "bundle", bundle)
    proc = cosme_cli(
        "calibrate",
        "--bundle",
        bundle,
        "--data",
        f"images:{root / 'normal'}",
        "--methods",
        "maxlogit,maxlogit[refine=guided]",
        "--fpr",
        "0.02",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    assert "thresholds" not in yaml.safe_load((bundle / "manifest.yaml").read_text())
    proc = cosme_cli(
        "calibrate",
        "--bundle",
        bundle,
        "--data",
        f"images:{root / 'normal'}",
        "--methods",
        "maxlogit,maxlogit[refine=guided]",
        "--fpr",
        "0.02",
    )
    assert proc.returncode == 0, proc.stderr
    loaded = Bundle.load(bundle)
    for key in ("maxlogit", "maxlogit[refine=guided]"):
        entry = loaded.manifest["thresholds"][key]
        assert entry["fpr"] == 0.02 and entry["data"] == f"images:{root / 'normal'}"
        assert loaded.threshold(key) == entry["value"]
    assert loaded.threshold("cosme") is None
    # a rebuilt part invalidates them: they were measured with the old one
    loaded.write_part("anomaly", {"memory_layers": []}, {"dummy": __import__("torch").zeros(1)})
    assert "thresholds" not in yaml.safe_load((bundle / "manifest.yaml").read_text())
    for bad in ("0", "1.5", "x"):
        proc = cosme_cli(
            "calibrate", "--bundle", bundle, "--data", f"images:{root / 'normal'}", "--fpr", bad
        )
        assert proc.returncode == 2 and "--fpr" in proc.stderr and "Traceback" not in proc.stderr


def test_manifest_thresholds_are_validated(toy, tmp_path):
    import shutil

    root, _ = toy
    bundle = tmp_path / "b"
    shutil.copytree(root / "bundle", bundle)
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    for bad in (
        {"cosme": {"value": float("nan")}},
        {"cosme": 1.5},
        [1.0],
        {"cosme": {"value": True}},
    ):
        manifest["thresholds"] = bad
        (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest))
        with pytest.raises(BundleError, match=r"manifest\.yaml: field 'thresholds"):
            Bundle.load(bundle)
