"""Training augmentation for driving images: random scale + crop, horizontal flip, colour jitter.

Geometry is applied identically to the image (bilinear, area when shrinking) and to its label
(nearest neighbour, padding with the ignore id 255). Every random draw comes from the
``numpy.random.Generator`` passed in, so a sample's augmentation is a pure function of that
generator's seed (the training loop seeds it from (seed, step, sample index)).

Scale is relative to the *cover* scale: the scale at which the image just covers the training
crop, which for an image of the training aspect ratio is exactly the resize that inference
(:meth:`cosme_ros.runtime.pipeline.Pipeline.preprocess`) applies. A factor below 1 zooms out and pads,
above 1 zooms in; vertical flips and rotations are left out (the road is always at the bottom).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

IGNORE_ID = 255
# ImageNet mean in uint8: padded pixels normalise to ~0, the least informative input.
PAD_RGB = (124, 116, 104)

Size = Tuple[int, int]


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment` does; ``as_dict()`` goes into the training record."""

    size: Size  # (height, width) of the training crop
    scale: Tuple[float, float] = (0.75, 1.25)  # relative to the cover scale
    flip: bool = True
    brightness: float = 0.2  # factors drawn from [1 - x, 1 + x]
    contrast: float = 0.2
    saturation: float = 0.2

    def as_dict(self) -> dict:
        d = asdict(self)
        d["size"], d["scale"] = list(self.size), list(self.scale)
        return d


def cover_scale(shape: Tuple[int, ...], size: Size) -> float:
    """The smallest scale at which an image of ``shape`` (H, W, …) covers ``size`` (h, w)."""
    return max(size[0] / shape[0], size[1] / shape[1])


def _resize(
    image: np.ndarray, label: Optional[np.ndarray], hw: Size
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    h, w = hw
    if image.shape[:2] != (h, w):
        shrink = h < image.shape[0]
        image = cv2.resize(
            image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    if label is not None and label.shape[:2] != (h, w):
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label


def shrink_for_training(
    image: np.ndarray, label: Optional[np.ndarray], size: Size, max_scale: float = 1.25
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Downscale a large image once (area) so that the largest augmentation scale still has every
    pixel it needs; small images are returned as they are.

    Deterministic, so the training loop may cache its result: a 2048×1024 frame for a 128×256
    crop becomes 320×160 (150 kB instead of 6 MB) and every later resize is cheap.
    """
    s = cover_scale(image.shape, size) * max_scale
    if s >= 1.0:
        return image, label
    hw = (max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s)))
    return _resize(image, label, hw)


def _jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness, contrast, saturation (fixed order), each a factor in [1 - x, 1 + x]."""
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    x = image.astype(np.float32) * np.float32(b)
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W)
    x = (x - gray.mean()) * np.float32(c) + gray.mean()
    gray = gray * np.float32(c) + gray.mean() * np.float32(1 - c)  # gray of the contrasted image
    x = gray[..., None] + (x - gray[..., None]) * np.float32(s)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def augment(
    image: np.ndarray, label: Optional[np.ndarray], rng: np.random.Generator, cfg: AugmentConfig
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(H, W, 3)`` uint8 RGB and optional ``(H, W)`` uint8 label → augmented crop of
    ``cfg.size`` (uint8, contiguous). The draws happen in a fixed order whether or not a label is
    given, so an image gets the same geometry with and without its label.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"augment expects an (H, W, 3) uint8 image, got {image.shape} " f"{image.dtype}"
        )
    if label is not None and label.shape[:2] != image.shape[:2]:
        raise ValueError(f"label {label.shape} and image {image.shape} sizes differ")
    h, w = cfg.size
    s = cover_scale(image.shape, cfg.size) * rng.uniform(*cfg.scale)
    nh, nw = max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s))
    image, label = _resize(image, label, (nh, nw))

    ph, pw = max(h - nh, 0), max(w - nw, 0)
    if ph or pw:  # zoomed out: pad at random sides so the image is not always top-left
        top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
        image = cv2.copyMakeBorder(
            image, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT, value=PAD_RGB
        )
        if label is not None:
            label = cv2.copyMakeBorder(
                label, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT, value=IGNORE_ID
            )
    y0 = int(rng.integers(0, image.shape[0] - h + 1))
    x0 = int(rng.integers(0, image.shape[1] - w + 1))
    image = image[y0 : y0 + h, x0 : x0 + w]
    if label is not None:
        label = label[y0 : y0 + h, x0 : x0 + w]

    if cfg.flip and rng.random() < 0.5:
        image = image[:, ::-1]
        if label is not None:
            label = label[:, ::-1]
    image = _jitter(image, rng, cfg)
    return np.ascontiguousarray(image), (None if label is None else np.ascontiguousarray(label))


def resize_for_eval(image: np.ndarray, size: Size) -> np.ndarray:
    """The inference view: the whole image resized to ``size`` as the pipeline does it."""
    return _resize(image, None, size)[0]
