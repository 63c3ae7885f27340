"""Reading images from disk as RGB uint8, with one-line errors for files that are not images."""
from __future__ import annotations

from pathlib import Path
from typing import List

import cv2
import numpy as np

from cosme_ros.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey and alpha images are converted."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"{path}: cannot read image (not an image, or corrupt)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def list_images(path: str | Path) -> List[Path]:
    """One image file, or the images directly inside a directory (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
        return files
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    return [path]
