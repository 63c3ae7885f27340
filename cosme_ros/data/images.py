"""Reading images from disk as RGB uint8, with one-line errors for files that are not images.

Every file is sized from its header before it is decoded, and refused above the pixel limit or
in a format that is not sized (:mod:`cosme_ros.data.image_header`: decompression bombs).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Type

import cv2
import numpy as np

from cosme_ros.data.image_header import MAX_IMAGE_PIXELS, ImageHeaderError, check_compressed_data
from cosme_ros.errors import CosmeError, InputError

# The formats image_header sizes; others (TIFF, PNM, …) are refused, so they are not listed.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def decode_file(
    path: str | Path,
    flags: int = cv2.IMREAD_COLOR,
    max_pixels: int = MAX_IMAGE_PIXELS,
    error: Type[CosmeError] = InputError,
    what: str = "image",
) -> np.ndarray:
    """``cv2.imdecode`` of a file, after its header was checked; ``error`` names the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file" if what == "image" else f"{path}: {what} is missing")
    data = np.fromfile(path, np.uint8)
    if not data.size:
        raise error(f"{path}: cannot read {what} (empty file)")
    try:
        check_compressed_data(data.tobytes(), max_pixels)
    except ImageHeaderError as exc:
        raise error(f"{path}: {what} refused: {exc}") from None
    image: Optional[np.ndarray] = cv2.imdecode(data, flags)
    if image is None:
        raise error(f"{path}: cannot read {what} (not an image, or corrupt)")
    return image


def read_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey and alpha images are converted."""
    return cv2.cvtColor(decode_file(path, cv2.IMREAD_COLOR, max_pixels), cv2.COLOR_BGR2RGB)


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
