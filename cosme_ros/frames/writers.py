"""Files from pictures: PNG (and JPEG) bytes, figures, and mp4 video written atomically."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import cv2
import numpy as np

from cosme_ros import atomic
from cosme_ros.errors import CosmeError

__all__ = ["encode_image", "write_png", "figure_png", "VideoFile", "VIDEO_FOURCC"]

VIDEO_FOURCC = "mp4v"


def encode_image(array: np.ndarray, ext: str = ".png", fast: bool = False) -> bytes:
    """An RGB (H, W, 3) or single-channel (H, W) uint8 image → ``ext`` file bytes (OpenCV);
    ``fast``: PNG compression level 1 (the synthetic world writes thousands of frames)."""
    if array.ndim == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if fast and ext == ".png" else []
    ok, buf = cv2.imencode(ext, array, params)
    if not ok:
        raise CosmeError(f"could not encode a {ext} image")
    return buf.tobytes()


def write_png(path: Path, rgb: np.ndarray) -> None:
    """An RGB image as a PNG file, written atomically."""
    atomic.write_bytes(Path(path), encode_image(rgb))


def figure_png(draw) -> bytes:
    """Render with matplotlib's Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot(1, 1, 1))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class VideoFile:
    """An mp4 (mp4v) video built under a temporary name beside ``path`` and renamed into place
    by :meth:`commit` (:meth:`discard` removes it): an interrupted run leaves the complete video
    or none. Frames are RGB; width and height are padded to even numbers (the encoder needs
    them even), and a frame of another size than the first is resized to it (a camera that
    changed resolution mid-drive)."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = Path(path), float(fps)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.",
            suffix=".tmp" + (self.path.suffix or ".mp4"),
            dir=self.path.parent,
        )
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer: Optional[cv2.VideoWriter] = None
        self.size: Optional[Tuple[int, int]] = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        H, W = rgb.shape[0] + rgb.shape[0] % 2, rgb.shape[1] + rgb.shape[1] % 2
        if (H, W) != rgb.shape[:2]:
            rgb = cv2.copyMakeBorder(
                rgb, 0, H - rgb.shape[0], 0, W - rgb.shape[1], cv2.BORDER_CONSTANT, value=0
            )
        if self.writer is None:
            self.writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), self.fps, (W, H)
            )
            if not self.writer.isOpened():
                raise CosmeError(f"{self.path}: OpenCV cannot write {VIDEO_FOURCC} video here")
            self.size = (H, W)
        elif (H, W) != self.size:
            rgb = cv2.resize(rgb, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file (still under its temporary name)."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.frames == 0:
            raise CosmeError(f"{self.path}: no frame to write (every frame was rejected)")

    def commit(self) -> None:
        self.close()
        atomic.give_default_mode(self.tmp)
        with atomic.signals_deferred():
            os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
