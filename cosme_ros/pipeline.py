"""Frame in → :class:`Result` out: preprocess → teacher ∥ student → scorer → postprocess.

The pipeline is the one place that turns a camera image into class and anomaly maps; the ROS
node, the CLI and replay only translate to and from it. It runs the teacher (and the student when
the method needs one) with exactly the taps the scorer asks for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cosme_ros.anomaly.scorers import build_scorer
from cosme_ros.bundle import Bundle
from cosme_ros.errors import CosmeError


@dataclass
class Result:
    """One frame's outputs at the requested output size."""

    classes: np.ndarray   # (H, W) uint8 class index (Cityscapes trainIds for our teachers)
    score: np.ndarray     # (H, W) float32 anomaly score, higher = more anomalous


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CosmeError("device 'cuda' requested but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise CosmeError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return torch.device(device)


class Pipeline:
    """A bundle's teacher (+ student) and one anomaly scorer, ready to run on frames."""

    def __init__(self, bundle: Bundle, method: str = "maxlogit", device: str = "cpu",
                 input_size: Optional[Tuple[int, int]] = None):
        self.bundle = bundle
        self.device = resolve_device(device)
        self.input_size = tuple(input_size or bundle.input_size)
        # Build the scorer first: a method whose parts are missing fails before any weights load.
        self.scorer = build_scorer(method, bundle.anomaly_parts())
        self.method = method
        self.teacher = bundle.teacher().to(self.device)
        self.student = bundle.student().to(self.device) if self.scorer.student_taps else None
        self._mean = torch.tensor(bundle.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(bundle.std, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images_rgb: Sequence[np.ndarray]) -> Tensor:
        """uint8 RGB images → normalised (B, 3, h, w) at the network's input size."""
        h, w = self.input_size
        # Area averaging when shrinking (camera frames are usually larger than the network's
        # input): bilinear aliases fine texture and costs ESPNetv2 s=1.0 0.4 points of accuracy.
        resized = [im if im.shape[:2] == (h, w) else cv2.resize(
            im, (w, h), interpolation=cv2.INTER_AREA if im.shape[0] > h else cv2.INTER_LINEAR)
            for im in images_rgb]
        batch = torch.from_numpy(np.stack(resized)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        return (batch - self._mean) / self._std

    @torch.inference_mode()
    def run_tensor(self, x: Tensor, out_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """Normalised batch → (classes (B, H, W) long, score (B, H, W) float32) at ``out_size``."""
        teacher = self.teacher(x, taps=self.scorer.teacher_taps)
        student = self.student(x, taps=self.scorer.student_taps) if self.student else None
        score = self.scorer(teacher, student, out_size)
        logits = F.interpolate(teacher["o"].float(), size=out_size, mode="bilinear",
                               align_corners=False)
        return logits.argmax(1), score

    def __call__(self, image_rgb: np.ndarray, out_size: Optional[Tuple[int, int]] = None) -> Result:
        """One RGB uint8 image (H, W, 3) → Result at ``out_size`` (default: the image's size)."""
        out_size = tuple(out_size or image_rgb.shape[:2])
        classes, score = self.run_tensor(self.preprocess([image_rgb]), out_size)
        return Result(classes=classes[0].to(torch.uint8).cpu().numpy(),
                      score=score[0].float().cpu().numpy())
