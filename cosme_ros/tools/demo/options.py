"""What ``cosme demo`` is asked for and what it returns, and the constants of the drive."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple


DEFAULT_FRAMES = 100


DEFAULT_SEED = 7  # a drive with anomalies on the road from the first frames


DEFAULT_OUT = Path("out") / "demo"


FPS = 10.0


NAMESPACE = "/cosme_demo"


IMAGE_TOPIC = "camera/image_raw"


FRAME_ID = "camera"


STAMP0_NS = 1_700_000_000 * 10**9  # as the drive bags: the same drive gets the same stamps


#: output key → topic (relative to the namespace)
TOPICS = {
    "score": "anomaly/score",
    "classes": "segmentation/class_mask",
    "heatmap": "anomaly/heatmap",
    "mask": "anomaly/mask",
}


BUILD_SCRIPT = "scripts/build_demo_bundle.sh"
VIDEO_NAME, SHEET_NAME, LOG_NAME = "demo.mp4", "contact_sheet.png", "node.log"


STARTUP_TIMEOUT_S = 300.0  # torch import + model load + warm-up on a busy CPU


FRAME_TIMEOUT_S = 120.0  # no output for one frame for this long: give up


RESEND_MIN_S = 5.0  # re-publish a frame with missing outputs after this long (or 5x the


@dataclass
class DemoOptions:
    bundle: Optional[Path] = None  # None: the demo bundle (models/demo)
    method: Optional[str] = None  # None: cosme when the bundle can, else maxlogit
    frames: int = DEFAULT_FRAMES
    size: Optional[Tuple[int, int]] = None  # camera (drive) size; None: the bundle's input size
    out: Path = DEFAULT_OUT
    seed: int = DEFAULT_SEED
    threshold: Optional[float] = None
    device: str = "auto"
    force: bool = False
    progress: bool = True


@dataclass
class DemoResult:
    bundle: Dict[str, Any]
    method: str
    frames: int
    size: Tuple[int, int]
    seed: int
    metrics: Optional[Dict[str, float]]  # auroc / ap / fpr95 (percent); None when undefined
    metrics_note: Optional[str]
    pixels: Dict[str, int]
    segmentation: Dict[str, Any]
    threshold: Dict[str, Any]
    node: Dict[str, Any]
    outputs: Dict[str, str]
    seconds: float = 0.0

    def to_json(self) -> Dict[str, Any]:
        return {
            "bundle": self.bundle,
            "method": self.method,
            "frames": self.frames,
            "size": list(self.size),
            "seed": self.seed,
            "fps": FPS,
            "metrics": self.metrics,
            "metrics_note": self.metrics_note,
            "pixels": self.pixels,
            "segmentation": self.segmentation,
            "threshold": self.threshold,
            "node": self.node,
            "outputs": self.outputs,
            "seconds": round(self.seconds, 2),
        }
