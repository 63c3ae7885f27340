"""Small real bundles for tests: a ResNet-18 DeepLabV3+ teacher at a tiny input size.

The weights are random (seeded); tests that need a trained model use the ESPNetv2 checkpoint in
../shared/data or the demo bundle.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cosme_ros import bundle as bundle_mod
from cosme_ros.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE


def tiny_teacher(seed: int = 0):
    from cosme_ros.nets.deeplabv3plus import build_deeplabv3plus

    torch.manual_seed(seed)
    return build_deeplabv3plus(backbone="resnet18", num_classes=19, output_stride=16).eval()


def make_tiny_bundle(out: Path, input_size=(64, 128), seed: int = 0, force: bool = False):
    return bundle_mod.create(
        out,
        arch="deeplabv3plus",
        module=tiny_teacher(seed),
        input_size=input_size,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        class_names=list(CITYSCAPES_CLASSES),
        palette=[tuple(c) for c in CITYSCAPES_PALETTE],
        force=force,
    )


def make_cosme_bundle(out: Path, input_size=(64, 128), seed: int = 0):
    """A tiny bundle every method runs on: :func:`make_tiny_bundle`'s teacher, a random unit
    memory (K = 16 on c4, c5, lh) with class statistics, and a random R18 student on c5."""
    import torch.nn.functional as F

    from cosme_ros.anomaly.parts import AnomalyParts
    from cosme_ros.anomaly.standardize import ClassStats
    from cosme_ros.nets.student import build_student

    bundle = make_tiny_bundle(out, input_size=input_size, seed=seed)
    teacher = bundle.teacher()
    g = torch.Generator().manual_seed(seed)
    bank = {
        t: F.normalize(torch.randn(16, teacher.tap_channels[t], generator=g), dim=1)
        for t in ("c4", "c5", "lh")
    }
    n = bundle.num_classes
    parts = AnomalyParts(
        memory=bank, mulmem_stats=ClassStats(torch.full((n,), 0.5), torch.full((n,), 0.1))
    )
    bundle.write_part(
        "anomaly",
        {"memory_layers": ["c4", "c5", "lh"], "consensus_layers": ["c5"]},
        parts.to_tensors(),
    )
    torch.manual_seed(seed)
    student = build_student(
        depth=18,
        teacher_channels=teacher.tap_channels,
        teacher_strides=teacher.tap_strides,
        taps=["c5"],
    ).eval()
    bundle.write_part("student", {"config": student.config}, student.state_dict())
    return bundle_mod.Bundle.load(out)


# ---------------------------------------------------------------------------- tiny street scenes
# (appended for the dataset / build-memory / evaluate tests)


def street_scene(rng, size=(64, 128)):
    """A smooth, street-like RGB uint8 picture: sky gradient, grey blocks of buildings, road."""
    import numpy as np

    h, w = size
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.4, 0.55))
    t = np.linspace(0.0, 1.0, horizon)[:, None, None]
    img[:horizon] = (1 - t) * np.array([90, 140, 220]) + t * np.array([180, 200, 230])
    x = 0
    while x < w:
        bw = int(rng.integers(w // 8, w // 3))
        top = int(rng.integers(h // 10, horizon))
        img[top:horizon, x : x + bw] = rng.uniform(60, 160) + rng.uniform(-15, 15, 3)
        x += bw
    img[horizon:] = np.array([80, 80, 85]) + rng.uniform(-8, 8, 3)
    lane = h - (h - horizon) // 2
    img[lane : lane + max(1, h // 32), ::12] = 230
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_scenes(folder, n, size=(64, 128), seed=0, anomalies=False, block=(16, 24)):
    """Write ``n`` street scenes as PNG to ``folder`` (``images/`` and ``labels_masks/`` when
    ``anomalies``: a block of uniform noise pasted on the road, labelled 1; 0 elsewhere; the top
    two rows 255). Returns the image paths."""
    import cv2
    import numpy as np
    from pathlib import Path

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    out = []
    img_dir = folder / "images" if anomalies else folder
    img_dir.mkdir(parents=True, exist_ok=True)
    if anomalies:
        (folder / "labels_masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = street_scene(rng, size)
        path = img_dir / f"scene{i:03d}.png"
        if anomalies:
            h, w = size
            bh, bw = block
            y = int(rng.integers(h // 2, h - bh))
            x = int(rng.integers(0, w - bw))
            img[y : y + bh, x : x + bw] = rng.integers(0, 256, (bh, bw, 3), dtype=np.uint8)
            mask = np.zeros(size, np.uint8)
            mask[y : y + bh, x : x + bw] = 1
            mask[:2] = 255
            cv2.imwrite(str(folder / "labels_masks" / f"scene{i:03d}.png"), mask)
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        out.append(path)
    return out
