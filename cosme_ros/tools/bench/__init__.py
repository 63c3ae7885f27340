"""Performance, measured: the logic behind ``cosme bench`` (no argument parsing, no printing).

Three measurements, each returning a JSON-ready dict:

- :func:`bench_frames` — the whole frame as ``cosme_node`` runs it (decode → preprocess →
  teacher → student → scoring → postprocess → render + encode → publish), stage by stage, after a
  warm-up, on real or synthetic frames; and, **alternating frame by frame in the same run and on
  the same frames**, the naive eager fp32 implementation (:mod:`.naive`) and a plain
  segmentation node (teacher + argmax only). Every ratio is a ratio of two medians measured that
  way, so a machine that is busy with something else slows both sides alike.
- :func:`bench_scorer` — the prototype scorer alone (MulMem Γ, Eq. 3–4) on DeepLabV3+ R101 tap
  shapes against the naive form: time ratio, max |ΔΓ|, peak extra memory vs the chunk budget.
- :func:`sweep` — frame time against input size (with the teacher's FLOPs) and against K.

Times are wall-clock (``time.perf_counter``; CUDA synchronised at every stage boundary);
``cpu_ms`` adds the process's CPU time (all threads), which is what a loaded machine distorts
least.
"""

from cosme_ros.tools.bench.common import SCORER_KS, SWEEP_SIZES
from cosme_ros.tools.bench.frames import bench_frames
from cosme_ros.tools.bench.scorer import bench_scorer, r101_tap_shapes
from cosme_ros.tools.bench.sweep import sweep, sweep_markdown, sweep_plot

__all__ = [
    "SCORER_KS",
    "SWEEP_SIZES",
    "bench_frames",
    "bench_scorer",
    "r101_tap_shapes",
    "sweep",
    "sweep_markdown",
    "sweep_plot",
]
