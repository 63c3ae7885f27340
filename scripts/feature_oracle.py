#!/usr/bin/env python3
"""A supervised upper bound: how well do a teacher's features separate anomalies at all?

CosMe and every baseline score anomalies without ever seeing one. This probe is allowed to: a
small MLP (or one linear layer, ``--probe linear``) over the teacher's L2-normalised c4, c5 and LH
features (the layers of MulMem's memory, upsampled to LH's resolution and concatenated) is
trained with the anomaly masks of labelled images (``--train``, one or more datasets) and scored
on others (``--test``) with the pooled pixel metrics of ``cosme evaluate``. It sees the anomaly
families it is tested on, so it bounds from above what a scorer of the same features that never
sees an anomaly can be expected to reach. It is a diagnostic of the *teacher* — whether a target
like "CosMe AP >= 80" is within its features' reach — not a detector: it learns the test
families and must not be read as one.

    python scripts/feature_oracle.py --bundle models/demo \\
        --train synthetic:build/oracle/test-s1 --test synthetic:build/oracle/test-s0 \\
        --json build/oracle/oracle.json

Training cells are the LH cells; a cell's target is the share of anomaly pixels in it (void
pixels neither count as anomaly nor as in-distribution; cells more than half void are left out),
so the loss is a soft binary cross-entropy with positives weighted by sqrt(N_in / N_anomaly).
Scores are upsampled bilinearly to the label's size, as every scorer's are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cosme_ros.bundle import Bundle
from cosme_ros.cli.common import write_json
from cosme_ros.data.datasets import open_dataset
from cosme_ros.errors import CosmeError
from cosme_ros.metrics import IGNORE_INDEX, pixel_metrics
from cosme_ros.runtime.networks import Networks

LAYERS = ("c4", "c5", "lh")


def features(networks: Networks, image: np.ndarray) -> torch.Tensor:
    """(C, h, w) fp16: the normalised LAYERS of one image at LH's resolution."""
    teacher = networks.teacher_forward(networks.preprocess([image]))
    size = teacher["lh"].shape[-2:]
    maps = [
        F.normalize(
            F.interpolate(teacher[layer].float(), size=size, mode="bilinear", align_corners=False),
            dim=1,
        )
        for layer in LAYERS
    ]
    return torch.cat(maps, 1)[0].half()


def cell_targets(anomaly: np.ndarray, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per LH cell: the anomaly share among labelled pixels, and whether the cell is usable."""
    a = torch.from_numpy((anomaly == 1).astype(np.float32))[None, None]
    v = torch.from_numpy(((anomaly != 0) & (anomaly != 1)).astype(np.float32))[None, None]
    a, v = F.adaptive_avg_pool2d(a, size)[0, 0], F.adaptive_avg_pool2d(v, size)[0, 0]
    return a / (1 - v).clamp_min(1e-6), v < 0.5


def gather(networks: Networks, specs: Sequence[str]):
    feats: List[torch.Tensor] = []
    masks: List[np.ndarray] = []
    for spec in specs:
        dataset = open_dataset(spec)
        for i in tqdm(range(len(dataset)), desc=f"features of {spec}", unit="img", leave=False):
            sample = dataset[i]
            if sample.anomaly is None:
                sys.exit(f"feature_oracle.py: {spec} has no anomaly masks (image {sample.name})")
            feats.append(features(networks, sample.image))
            masks.append(sample.anomaly)
    return feats, masks


def train_probe(feats, masks, kind: str, epochs: int, seed: int) -> nn.Module:
    x, y = [], []
    for f, m in zip(feats, masks):
        target, usable = cell_targets(m, tuple(f.shape[-2:]))
        x.append(f.permute(1, 2, 0)[usable])
        y.append(target[usable])
    x, y = torch.cat(x), torch.cat(y)
    torch.manual_seed(seed)
    if kind == "linear":
        probe = nn.Linear(x.shape[1], 1)
    else:
        probe = nn.Sequential(
            nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
        )
    opt = torch.optim.Adam(probe.parameters(), 1e-3)
    pos_weight = ((1 - y.mean()) / y.mean()).sqrt()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 4096):
            j = order[i : i + 4096]
            loss = F.binary_cross_entropy_with_logits(
                probe(x[j].float())[:, 0], y[j], pos_weight=pos_weight
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(
        f"{kind} probe trained on {len(x)} cells ({float((y > 0.5).float().mean()) * 100:.2f} % "
        f"anomalous), {epochs} epochs",
        flush=True,
    )
    return probe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="models/demo")
    ap.add_argument(
        "--train",
        action="append",
        required=True,
        metavar="KIND:PATH",
        help="labelled images to train the probe on (repeatable)",
    )
    ap.add_argument("--test", required=True, metavar="KIND:PATH")
    ap.add_argument(
        "--probe",
        choices=("mlp", "linear"),
        default="mlp",
        help="two hidden layers of 256 (default), or one linear layer",
    )
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    try:  # a bad bundle or dataset path: one line naming it, as the cosme commands do
        networks = Networks(Bundle.load(args.bundle), LAYERS)
        with torch.inference_mode():
            train_feats, train_masks = gather(networks, args.train)
            test_feats, test_masks = gather(networks, [args.test])
    except CosmeError as exc:
        sys.exit(f"feature_oracle.py: {exc}")
    probe = train_probe(train_feats, train_masks, args.probe, args.epochs, args.seed)
    scores, labels = [], []
    with torch.no_grad():
        for f, m in zip(test_feats, test_masks):
            s = probe(f.permute(1, 2, 0).float())[..., 0]
            s = F.interpolate(s[None, None], size=m.shape, mode="bilinear", align_corners=False)
            keep = (m == 0) | (m == 1)
            scores.append(s[0, 0].numpy()[keep])
            labels.append(m[keep])
    result = pixel_metrics(np.concatenate(scores), np.concatenate(labels), IGNORE_INDEX)
    report = {
        "bundle": args.bundle,
        "layers": list(LAYERS),
        "train": args.train,
        "train_images": len(train_feats),
        "test": args.test,
        "test_images": len(test_feats),
        "probe": args.probe,
        "epochs": args.epochs,
        "seed": args.seed,
        "metrics": result,
        "seconds": round(time.monotonic() - start, 1),
    }
    print(
        f"oracle {args.probe} probe on {args.test}: AUROC {result['auroc']:.2f}  "
        f"AP {result['ap']:.2f}  FPR95 {result['fpr95']:.2f}  ({report['seconds']:.0f} s)"
    )
    if args.json:
        write_json(args.json, report)  # atomic, like every cosme command's --json
    return 0


if __name__ == "__main__":
    sys.exit(main())
