"""cosme build-memory: Algorithms 1–2 and the statistics on a tiny bundle and a handful of scenes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bundles import make_tiny_bundle, write_scenes
from cosme_ros.anomaly.memory import MulMemBuilder
from cosme_ros.bundle import Bundle
from cosme_ros.cli.main import main as cosme_main
from cosme_ros.data.datasets import open_dataset
from cosme_ros.errors import CosmeError
from cosme_ros.distributed import local_slice
from cosme_ros.tools.build_memory import (
    BuildConfig,
    build_anomaly_parts,
    global_schedule,
)
from cosme_ros.runtime.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
# Small enough for 2 shared CPU cores: 8 images of 64×128, a K that the data can fill for c5.
ARGS = ["--k", "16", "--epochs", "2", "--batch", "3", "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("build_memory")
    make_tiny_bundle(root / "bundle")
    write_scenes(root / "train", 8, seed=1)
    return root


@pytest.fixture(scope="module")
def built(template):
    """The template bundle after one ``cosme build-memory`` with ARGS (seed 0), and its report;
    shared (read-only) by the tests below to keep the number of builds down."""
    out = template / "built"
    shutil.copytree(template / "bundle", out)
    report = template / "built-report.json"
    assert (
        cosme_main(
            [
                "build-memory",
                "--bundle",
                str(out),
                "--data",
                data(template),
                *ARGS,
                "--json",
                str(report),
            ]
        )
        == 0
    )
    return out, json.loads(report.read_text())


@pytest.fixture
def bundle_dir(template, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(template / "bundle", out)
    return out


def data(template):
    return f"images:{template / 'train'}"


def build(bundle_dir, template, *extra, rc=0):
    code = cosme_main(
        ["build-memory", "--bundle", str(bundle_dir), "--data", data(template), *ARGS, *extra]
    )
    assert code == rc
    return Bundle.load(bundle_dir)


def test_schedule_slices_concatenate_to_the_global_batch():
    steps = global_schedule(10, 4, seed=3, phase=1, index=0)
    assert sorted(np.concatenate(steps).tolist()) == list(range(10))
    assert [b.tolist() for b in steps] == [b.tolist() for b in global_schedule(10, 4, 3, 1, 0)]
    assert any((a != b).any() for a, b in zip(steps, global_schedule(10, 4, 3, 1, 1)))
    for world in (1, 2, 3, 5):
        for b in steps:
            parts = [local_slice(b, r, world) for r in range(world)]
            assert np.concatenate(parts).tolist() == b.tolist()  # rank order = batch order


def test_build_writes_a_part_the_pipelines_use(built, template):
    bundle_dir, report = built
    bundle = Bundle.load(bundle_dir)
    section = bundle.manifest["anomaly"]
    assert section["memory_layers"] == ["c4", "c5", "lh"]
    assert section["consensus_layers"] == ["c5"]
    record = section["build"]
    for key, value in (
        ("k", 16),
        ("tau", 0.85),
        ("momentum", 0.99),
        ("epochs", 2),
        ("seed", 0),
        ("data", data(template)),
        ("images", 8),
        ("pans_labels", "pseudo"),
    ):
        assert record[key] == value, key
    assert set(record["shortfall"]) == {"c4", "c5", "lh"}
    assert all(record["prototypes"][k] + record["shortfall"][k] == 16 for k in record["shortfall"])
    assert record["learn_steps"] == 2 * 3  # 2 epochs × ceil(8 / 3) steps
    assert report["prototypes"] == record["prototypes"]

    parts = bundle.anomaly_parts()
    assert parts.mulmem_stats.num_classes == parts.sml_stats.num_classes == 19
    assert parts.pans_prototypes.shape == (19, 256)
    assert not (bundle_dir / ".anomaly.build-state.safetensors").exists()
    image = open_dataset(data(template))[0].image
    for method in ("mulmem", "sml", "pans"):
        result = Pipeline(bundle, method=method, device="cpu")(image)
        assert result.score.shape == (64, 128) and np.isfinite(result.score).all(), method
        assert result.score.std() > 0, method


def test_mulmem_stats_match_the_scorer(built, template):
    """Standardised Γ over the training pixels has mean ≈ 0 and std ≈ 1 per predicted class."""
    from cosme_ros.anomaly.scorers import mulmem_gamma

    pipe = Pipeline(Bundle.load(built[0]), method="mulmem", device="cpu")
    ds = open_dataset(data(template))
    with torch.inference_mode():
        x = pipe.networks.preprocess([ds[i].image for i in range(len(ds))])
        taps = pipe.networks.teacher_forward(x, pipe.scorer.teacher_taps)
        z = pipe.scorer.gamma(taps).flatten()
        cls = mulmem_gamma(taps, pipe.scorer.bank, pipe.scorer.layers)[1].flatten()
    for c in cls.unique():
        sel = z[cls == c]
        if sel.numel() > 50:
            assert abs(float(sel.mean())) < 1e-3 and abs(float(sel.std(unbiased=False)) - 1) < 1e-3


def _parts(template, seed):
    bundle = Bundle.load(template / "bundle")
    config = BuildConfig(k=16, epochs=2, batch=3, seed=seed)
    return build_anomaly_parts(
        bundle, open_dataset(data(template)), config, workers=0, progress=False, log=lambda _m: None
    ).parts.to_tensors()


def test_deterministic_for_a_seed(built, template):
    a = load_file(str(built[0] / "anomaly.safetensors"))  # seed 0, through the CLI
    b, c = _parts(template, seed=0), _parts(template, seed=6)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(
        a[k].shape != c[k].shape or not torch.equal(a[k], c[k])
        for k in a
        if k.startswith("memory.")
    )


def test_refuses_to_replace_without_force(built, template, tmp_path, capsys):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(built[0], bundle_dir)
    first = load_file(str(bundle_dir / "anomaly.safetensors"))
    build(bundle_dir, template, "--seed", "1", rc=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already has an anomaly part" in err[0] and "--force" in err[0]
    assert all(
        torch.equal(first[k], v)
        for k, v in load_file(str(bundle_dir / "anomaly.safetensors")).items()
    )
    bundle = build(bundle_dir, template, "--seed", "1", "--force")
    assert bundle.manifest["anomaly"]["build"]["seed"] == 1


def test_input_size_changes_what_the_teacher_sees(built, bundle_dir, template):
    """--input-size: the images go through the teacher at that size (a different memory), and
    the bundle's records say so; the bundle's own input size is unchanged."""
    bundle = build(bundle_dir, template, "--input-size", "96x96")
    section = bundle.manifest["anomaly"]["build"]
    assert section["input_size"] == [96, 96]
    assert tuple(bundle.input_size) == (64, 128)
    ours = load_file(str(bundle_dir / "anomaly.safetensors"))
    default = load_file(str(built[0] / "anomaly.safetensors"))
    assert not torch.equal(ours["memory.c5"], default["memory.c5"])


def test_layout_error_is_one_line(bundle_dir, tmp_path, capsys):
    code = cosme_main(
        ["build-memory", "--bundle", str(bundle_dir), "--data", f"camvid:{tmp_path}", *ARGS]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.txt: missing" in err[0]
    assert not Bundle.load(bundle_dir).has_anomaly


def test_pans_uses_labels_when_the_dataset_has_them(bundle_dir, tmp_path):
    import cv2

    split = tmp_path / "synthetic" / "train"
    images = write_scenes(split / "images", 4, seed=3)
    (split / "semantic").mkdir(parents=True)
    for p in images:
        sem = np.full((64, 128), 255, np.uint8)
        sem[:20] = 10  # sky
        sem[40:] = 0  # road
        cv2.imwrite(str(split / "semantic" / p.name), sem)
    assert (
        cosme_main(
            ["build-memory", "--bundle", str(bundle_dir), "--data", f"synthetic:{split}", *ARGS]
        )
        == 0
    )
    bundle = Bundle.load(bundle_dir)
    assert bundle.manifest["anomaly"]["build"]["pans_labels"] == "labels"
    seen = bundle.anomaly_parts().pans_prototypes.norm(dim=1) > 0
    assert seen.nonzero().flatten().tolist() == [0, 10]


def test_interrupted_build_writes_nothing_and_resumes(built, bundle_dir, template, monkeypatch):
    reference = built[0]

    calls = {"n": 0}
    original = MulMemBuilder.learn_step

    def interrupted(self, taps):
        calls["n"] += 1
        if calls["n"] == 4:  # first step of the second epoch
            raise KeyboardInterrupt
        return original(self, taps)

    monkeypatch.setattr(MulMemBuilder, "learn_step", interrupted)
    build(bundle_dir, template, rc=130)
    assert not Bundle.load(bundle_dir).has_anomaly  # nothing half-written
    assert (bundle_dir / ".anomaly.build-state.safetensors").is_file()
    monkeypatch.setattr(MulMemBuilder, "learn_step", original)

    with pytest.raises(CosmeError, match=r"another build \(differs in config.tau\)"):
        build_anomaly_parts(
            Bundle.load(bundle_dir),
            open_dataset(data(template)),
            BuildConfig(k=16, epochs=2, batch=3, tau=0.8),
            data_spec=data(template),
            checkpoint=bundle_dir / ".anomaly.build-state.safetensors",
            resume=True,
            workers=0,
            progress=False,
            log=lambda _m: None,
        )
    bundle = build(bundle_dir, template, "--resume")
    assert bundle.manifest["anomaly"]["build"]["resumed"] is True
    assert not (bundle_dir / ".anomaly.build-state.safetensors").exists()
    a = load_file(str(reference / "anomaly.safetensors"))
    b = load_file(str(bundle_dir / "anomaly.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_build_what_one_builds(built, bundle_dir, template):
    one = built[0]
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "cosme_ros.cli.main",
            "build-memory",
            "--bundle",
            str(bundle_dir),
            "--data",
            data(template),
            *ARGS,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("anomaly part written") == 1  # rank 0 only
    two = Bundle.load(bundle_dir)
    assert two.manifest["anomaly"]["build"]["world_size"] == 2
    a = load_file(str(one / "anomaly.safetensors"))
    b = load_file(str(bundle_dir / "anomaly.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        # equal up to float summation order (batched convolutions, all-reduced float64 sums)
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-5, atol=1e-5), k


# --- several sources, each at its own input size (--data A --data B) ------------------------------


def test_grouped_schedule_draws_each_batch_from_one_source():
    groups = np.array([0] * 7 + [1] * 4 + [2] * 2)
    steps = global_schedule(13, 3, seed=5, phase=1, index=0, groups=groups)
    assert sorted(np.concatenate(steps).tolist()) == list(range(13))
    assert all(len(set(groups[b].tolist())) == 1 for b in steps)
    assert max(len(b) for b in steps) == 3
    again = global_schedule(13, 3, seed=5, phase=1, index=0, groups=groups)
    assert [b.tolist() for b in steps] == [b.tolist() for b in again]
    one = global_schedule(13, 3, 5, 1, 0, groups=np.zeros(13, dtype=int))
    assert [b.tolist() for b in one] == [b.tolist() for b in global_schedule(13, 3, 5, 1, 0)]


def test_source_chunks_never_cross_a_source():
    from cosme_ros.data.datasets import source_chunks

    groups = np.array([0, 0, 0, 1, 1, 0])
    chunks = source_chunks(np.arange(6), 2, groups)
    assert [c.tolist() for c in chunks] == [[0, 1], [2], [3, 4], [5]]
    assert [c.tolist() for c in source_chunks(np.arange(5), 2)] == [[0, 1], [2, 3], [4]]


def test_mixture_names_sizes_and_errors(tmp_path):
    from cosme_ros.data.datasets import DatasetError, Mixture, mixture_spec, open_datasets

    write_scenes(tmp_path / "a", 3, size=(40, 132), seed=2)
    write_scenes(tmp_path / "b" / "sub", 2, seed=3)
    specs = [f"images:{tmp_path / 'a'}", f"images:{tmp_path / 'b'}"]
    mix = open_datasets(specs, sizes=[(32, 96), (64, 128)])
    assert isinstance(mix, Mixture) and len(mix) == 5
    assert mix.groups.tolist() == [0, 0, 0, 1, 1]
    assert mix[0].name == "0/images/scene000" and mix[0].input_size == (32, 96)
    assert mix[4].name == "1/images/sub/scene001" and mix[4].input_size == (64, 128)
    assert mix[4].image.shape == (64, 128, 3)
    assert open_datasets(specs, sizes=[(48, 96)])[3].input_size == (48, 96)
    single = open_datasets(specs[:1], sizes=[(32, 96)])
    assert not isinstance(single, Mixture) and single[0].input_size == (32, 96)
    assert mixture_spec(specs, [(32, 96), (64, 128)]) == f"{specs[0]}@32x96 + {specs[1]}@64x128"
    with pytest.raises(DatasetError, match="--input-size given 3 times for 2"):
        open_datasets(specs, sizes=[(8, 8)] * 3)
    twice = open_datasets([specs[0], specs[0]])  # the same file names in two sources
    assert len(set(twice.names)) == 6


def test_build_from_two_sources_at_their_own_sizes(bundle_dir, template, tmp_path):
    """The KITTI + Cityscapes build: two sources, each through the teacher at its own input
    size; the bundle records both, and a batch never mixes them."""
    write_scenes(tmp_path / "wide", 5, size=(40, 132), seed=4)
    code = cosme_main(
        [
            "build-memory",
            "--bundle",
            str(bundle_dir),
            "--data",
            f"images:{tmp_path / 'wide'}",
            "--input-size",
            "32x96",
            "--data",
            data(template),
            "--input-size",
            "64x128",
            *ARGS,
        ]
    )
    assert code == 0
    build_record = Bundle.load(bundle_dir).manifest["anomaly"]["build"]
    assert build_record["source_input_sizes"] == [[32, 96], [64, 128]]
    assert build_record["images"] == 13
    assert "@32x96 + images:" in build_record["data"]
