"""Cityscapes label conventions: the 19 evaluation classes (trainIds 0–18) and their colours.

The colours are the official ``cityscapesscripts`` palette, which ``*_gtFine_color.png`` label images
are drawn in. Every other colour (void classes, ego vehicle, unlabelled) maps to the ignore id 255.
Two void classes share a colour with an evaluated class (``polegroup`` is drawn as ``pole`` and
``license plate`` as ``car``); a colour image cannot tell them apart, so they read as the class.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

IGNORE_ID = 255

CITYSCAPES_CLASSES: Tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# trainId → RGB
CITYSCAPES_PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_KEYS = _pack(np.asarray(CITYSCAPES_PALETTE, dtype=np.int32))
_ORDER = np.argsort(_KEYS)
_SORTED_KEYS = _KEYS[_ORDER]


def color_to_trainid(rgb_image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB colour label image → ``(H, W)`` uint8 trainIds, 255 where no class matches.

    The image must be in RGB channel order (``cv2.imread`` gives BGR: flip it first).
    """
    rgb = np.asarray(rgb_image)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    keys = _pack(rgb)
    pos = np.clip(np.searchsorted(_SORTED_KEYS, keys), 0, len(_SORTED_KEYS) - 1)
    hit = _SORTED_KEYS[pos] == keys
    return np.where(hit, _ORDER[pos], IGNORE_ID).astype(np.uint8)


def trainid_to_color(trainids: np.ndarray) -> np.ndarray:
    """``(H, W)`` trainIds → ``(H, W, 3)`` uint8 RGB; ids outside 0–18 (void, background) are black."""
    ids = np.asarray(trainids)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(CITYSCAPES_PALETTE)] = np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8)
    return lut[np.clip(ids, 0, 255).astype(np.uint8)]
