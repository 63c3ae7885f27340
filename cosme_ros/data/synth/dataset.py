"""Write a synthetic split to disk, atomically, with any number of worker processes.

Layout (read by the ``synthetic`` dataset kind; the test split is also a ``folder`` benchmark)::

    DIR/images/<id>.png        RGB
    DIR/semantic/<id>.png      uint8 trainIds, 255 = void and anomaly pixels (they have no trainId)
    DIR/labels_masks/<id>.png  test split only: 0 in-distribution, 1 anomaly, 255 void
    DIR/objects.jsonl          one line per image: the families and objects drawn (bboxes, depths)
    DIR/meta.yaml              generator, version, seed, split, n, size, classes, layout

``<id>`` is the zero-padded index (``000123``). Each image is seeded by (seed, split, index), so
the files do not depend on ``workers``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import cv2
import numpy as np
import yaml

from cosme_ros import __version__, atomic
from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES
from cosme_ros.data.synth.anomalies import FAMILIES
from cosme_ros.data.synth.frame import GENERATOR_VERSION, SPLITS, Frame, render_frame
from cosme_ros.errors import CosmeError
from cosme_ros.frames.writers import encode_image


def id_width(n: int) -> int:
    return max(6, len(str(max(n - 1, 0))))


def encode_png(array: np.ndarray) -> bytes:
    """A frame's image or label as PNG, compression level 1 (thousands of frames per split)."""
    return encode_image(array, fast=True)


def frame_files(frame: Frame, split: str) -> Dict[str, bytes]:
    """Subdirectory → PNG bytes of one frame."""
    files = {"images": encode_png(frame.image), "semantic": encode_png(frame.semantic)}
    if split == "test":
        files["labels_masks"] = encode_png(frame.anomaly)
    return files


def _render_and_write(job: Tuple[str, str, int, int, Tuple[int, int], int]) -> Dict:
    root, split, index, seed, size, width = job
    frame = render_frame(seed, split, index, size)
    name = f"{index:0{width}d}"
    for sub, data in frame_files(frame, split).items():
        Path(root, sub, name + ".png").write_bytes(data)
    counts = np.bincount(frame.semantic.ravel(), minlength=256)[: len(CITYSCAPES_CLASSES)]
    return {
        "id": name,
        "families": frame.families,
        "anomaly_pixels": int((frame.anomaly == 1).sum()),
        "trainids": np.flatnonzero(counts).tolist(),
        "conditions": frame.conditions,
        "objects": frame.objects,
    }


def _init_worker() -> None:
    cv2.setNumThreads(1)


def write_split(
    out: str | Path,
    split: str,
    n: int,
    seed: int,
    size: Tuple[int, int],
    force: bool = False,
    workers: int = 1,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> Dict:
    """Render ``n`` frames of ``split`` into ``out`` (built in a temporary sibling, then renamed).

    Returns the contents of ``meta.yaml``.
    """
    if split not in SPLITS:
        raise CosmeError(f"unknown split {split!r} (train, val or test)")
    if n < 1:
        raise CosmeError(f"--n must be at least 1, got {n}")
    if seed < 0:
        raise CosmeError(f"--seed must be non-negative, got {seed}")
    out = Path(out)
    width = id_width(n)
    subdirs = ["images", "semantic"] + (["labels_masks"] if split == "test" else [])
    with atomic.atomic_dir(out, force=force) as tmp:
        for sub in subdirs:
            (tmp / sub).mkdir()
        jobs = [(str(tmp), split, i, int(seed), tuple(size), width) for i in range(n)]
        if workers > 1 and n > 1:
            # spawn, not fork: a forked child can inherit a lock held by one of OpenCV's threads.
            ctx = multiprocessing.get_context("spawn")
            chunk = max(1, min(16, n // (4 * workers)))
            with ProcessPoolExecutor(
                max_workers=workers, initializer=_init_worker, mp_context=ctx
            ) as pool:
                results = pool.map(_render_and_write, jobs, chunksize=chunk)
                records = list(progress(results) if progress else results)
        else:
            it = map(_render_and_write, jobs)
            records = list(progress(it) if progress else it)
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        (tmp / "objects.jsonl").write_text(lines)
        present = sorted({t for r in records for t in r["trainids"]})
        families = sorted({f for r in records for f in r["families"] if f in FAMILIES})
        meta = {
            "kind": "synthetic",
            "generator": "cosme_ros.data.synth",
            "version": GENERATOR_VERSION,
            "cosme_ros": __version__,
            "split": split,
            "n": int(n),
            "seed": int(seed),
            "size": [int(size[0]), int(size[1])],
            "id_width": width,
            "layout": {sub: f"{sub}/<id>.png" for sub in subdirs},
            "classes": list(CITYSCAPES_CLASSES),
            "trainids_present": present,
            "anomaly_families": families,
            "ignore_index": 255,
            "mask_convention": (
                "0 in-distribution, 1 anomaly, 255 void" if split == "test" else None
            ),
        }
        (tmp / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        for path in [tmp / "objects.jsonl", tmp / "meta.yaml"]:
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
    return meta


def read_objects(root: str | Path) -> List[Dict]:
    """The per-image records of a written split (``objects.jsonl``)."""
    lines = Path(root, "objects.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line]
