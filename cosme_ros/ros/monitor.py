"""Frame accounting and the node's health verdict for ``/diagnostics`` (no rclpy here).

The node reports every event (a frame received, replaced before it was processed, rejected as
malformed, failed in the pipeline, processed in so many milliseconds) to a :class:`FrameMonitor`;
once per diagnostics period it asks for a :class:`HealthReport` over the events since the last
one. Levels follow ``diagnostic_msgs/DiagnosticStatus``:

- ERROR: the pipeline failed on every frame of the period, or no image has arrived for
  :data:`STALE_ERROR_S` seconds (or three stale thresholds for a slow camera) after images had
  been arriving (camera or driver gone);
- WARN: waiting for the first image; no image for longer than three input periods (at least
  one second); mean processing time over ``processing_budget_ms``; frames rejected as malformed
  or failed in the period;
- OK otherwise.

Dropped frames (replaced by a newer one while the model was busy) are counted but are no reason
for a warning by themselves: they are how a model slower than the camera keeps up. A processing
time over the budget is the warning for that.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

OK, WARN, ERROR = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}
STALE_MIN_S = 1.0  # never call the input stale sooner than this …
STALE_PERIODS = 3.0  # … or sooner than this many mean input periods
STALE_ERROR_S = 5.0  # a silent camera for this long (or 3 stale thresholds) is an error


@dataclass
class FrameStats:
    """Frame counters. ``dropped``: replaced by a newer frame before the worker took it;
    ``rejected``: malformed or over the size limit; ``failed``: the pipeline raised."""

    received: int = 0
    processed: int = 0
    dropped: int = 0
    rejected: int = 0
    failed: int = 0

    def summary(self) -> str:
        return (
            f"frames: received {self.received}, processed {self.processed}, dropped "
            f"{self.dropped}, rejected {self.rejected}, failed {self.failed}"
        )


@dataclass
class HealthReport:
    level: int
    message: str
    values: Dict[str, str] = field(default_factory=dict)


MAX_REASON_CHARS = 300  # a reason is published once a second on /diagnostics


def _bounded(reason: str) -> str:
    reason = str(reason)
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "…"


class FrameMonitor:
    """Thread-safe frame counters (totals and the current period) and timing."""

    def __init__(self, now_s: float):
        self._lock = threading.Lock()
        self.totals = FrameStats()
        self._period = FrameStats()
        self._period_start = now_s
        self._times_ms: List[float] = []
        self._last_ms: Optional[float] = None
        self._last_arrival: Optional[float] = None
        self._mean_interval: Optional[float] = None
        self.last_rejection = ""
        self.last_failure = ""

    def _count(self, name: str) -> None:
        setattr(self.totals, name, getattr(self.totals, name) + 1)
        setattr(self._period, name, getattr(self._period, name) + 1)

    def received(self, now_s: float, accepted: bool = True) -> None:
        """A message arrived (``accepted``: it passed the cheap checks and is a frame)."""
        with self._lock:
            self._count("received")
            if not accepted:
                return
            if self._last_arrival is not None:
                dt = max(now_s - self._last_arrival, 0.0)
                # EMA over ~10 frames: the stale threshold follows the camera's rate
                self._mean_interval = (
                    dt if self._mean_interval is None else 0.9 * self._mean_interval + 0.1 * dt
                )
            self._last_arrival = now_s

    def dropped(self) -> None:
        with self._lock:
            self._count("dropped")

    def rejected(self, reason: str) -> int:
        with self._lock:
            self._count("rejected")
            self.last_rejection = _bounded(reason)
            return self.totals.rejected

    def failed(self, reason: str) -> int:
        with self._lock:
            self._count("failed")
            self.last_failure = _bounded(reason)
            return self.totals.failed

    def processed(self, ms: float) -> None:
        with self._lock:
            self._count("processed")
            self._times_ms.append(ms)
            self._last_ms = ms

    def stale_after_s(self) -> float:
        interval = self._mean_interval or 0.0
        return max(STALE_MIN_S, STALE_PERIODS * interval)

    def report(
        self,
        now_s: float,
        since_last_frame_s: Optional[float],
        budget_ms: float,
        info: Optional[Dict[str, str]] = None,
    ) -> HealthReport:
        """The verdict over the period since the previous report (which this starts anew).

        ``now_s``: a steady clock (rates); ``since_last_frame_s``: seconds since the last
        accepted frame on the node's clock (None before the first), so that it is right under
        simulated time.
        """
        with self._lock:
            period, self._period = self._period, FrameStats()
            times, self._times_ms = self._times_ms, []
            duration = max(now_s - self._period_start, 1e-9)
            self._period_start = now_s
            totals = FrameStats(
                **{f.name: getattr(self.totals, f.name) for f in fields(FrameStats)}
            )
            last_ms = self._last_ms
            stale_after = self.stale_after_s()
            last_rejection, last_failure = self.last_rejection, self.last_failure

        mean_ms = sum(times) / len(times) if times else None
        errors: List[str] = []
        warnings: List[str] = []
        if period.failed and not period.processed:
            errors.append(f"pipeline failed on all {period.failed} frames ({last_failure})")
        elif period.failed:
            warnings.append(f"{period.failed} frames failed ({last_failure})")
        if since_last_frame_s is None:
            warnings.append("waiting for the first image")
        elif since_last_frame_s > max(STALE_ERROR_S, 3 * stale_after):
            errors.append(f"no image for {since_last_frame_s:.1f} s")
        elif since_last_frame_s > stale_after:
            warnings.append(f"no image for {since_last_frame_s:.1f} s")
        if mean_ms is not None and mean_ms > budget_ms:
            warnings.append(f"processing {mean_ms:.1f} ms over the budget of {budget_ms:g} ms")
        if period.rejected:
            warnings.append(f"{period.rejected} frames rejected ({last_rejection})")

        if errors:
            level, message = ERROR, "; ".join(errors + warnings)
        elif warnings:
            level, message = WARN, "; ".join(warnings)
        else:
            level, message = (
                OK,
                (
                    f"processing {mean_ms:.1f} ms within {budget_ms:g} ms"
                    if mean_ms is not None
                    else "running"
                ),
            )

        def ms(v: Optional[float]) -> str:
            return f"{v:.2f}" if v is not None else "n/a"

        values = {
            "input rate (Hz)": f"{period.received / duration:.2f}",
            "output rate (Hz)": f"{period.processed / duration:.2f}",
            "processing time mean (ms)": ms(mean_ms),
            "processing time max (ms)": ms(max(times) if times else None),
            "processing time last (ms)": ms(last_ms),
            "processing budget (ms)": f"{budget_ms:g}",
            "time since last frame (s)": (
                f"{since_last_frame_s:.3f}" if since_last_frame_s is not None else "n/a"
            ),
            "frames received": str(totals.received),
            "frames processed": str(totals.processed),
            "frames dropped": str(totals.dropped),
            "frames rejected": str(totals.rejected),
            "frames failed": str(totals.failed),
            "last rejection": last_rejection or "none",
        }
        values.update(info or {})
        return HealthReport(level, message, values)
