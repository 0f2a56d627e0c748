"""Late decisions: a decision made more than one frame period after its frame was ready, counted and explained.

The decoder process calls :meth:`LateWatch.observe` after every decision. A late one is counted, written to
``decoder/events.jsonl`` as ``late_decision`` and, rate-limited, told to the operator. What the process was
doing is said when it can be told: a garbage-collector pass in the decoder since the previous decision
(``gc.callbacks``), a slow write of the decoder's records (a flush) just before, the decoder blocking on a
calibration, or else the stage that took
the time — the acquisition (registration, extraction and, between frames, its preview and movie hand-off),
the bus hop, or the decoder's own step.

Calibrations no longer block the loop (``decoder.calibrate_off_loop`` and ``operator_calibrate_off_loop``: a
thread computes them, decoder/calibration_job.py), so "calibrating" is now only the cause of a late decision
when one of them is switched off (0.2-0.4 s for a 15-min baseline); a late decision in the decoder while the
calibration thread computed is "calibration thread".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rig.core.clock import now_ns
from rig.core.realtime import GcWatch

#: at most one operator warning per this many ns (every late decision is in the event log)
WARN_INTERVAL_NS = 5_000_000_000
#: a GC pass or a flush this long (ms) is named as the cause of a late decision
CAUSE_MIN_MS = 1.0


class LateWatch:
    def __init__(self, frame_rate_hz: float, write_event: Callable[..., None],
                 warn: Callable[[str, str], None]) -> None:
        self.period_ns = int(1e9 / frame_rate_hz)
        self.late = 0
        self.causes: dict[str, int] = {}
        self._write_event = write_event
        self._warn = warn
        self._gc = GcWatch()
        self._flush_ms = 0.0
        self._busy: tuple[str, float] = ("", 0.0)
        self._next_warn = 0
        self._unwarned = 0

    def flushed(self, ms: float) -> None:
        """The decoder's records write that ran after the last decision took ``ms`` (before the next frame)."""
        self._flush_ms = max(self._flush_ms, ms)

    def was_busy(self, what: str, ms: float) -> None:
        """The decoder blocked ``ms`` on ``what`` (calibrating) during or before the next decision."""
        if ms > self._busy[1]:
            self._busy = (what, ms)

    def observe(self, frame: int, stamps: tuple[int, int, int, int], t_received: int, t_decided: int,
                background: str = "") -> None:
        """After a decision; ``stamps`` are the frame's (t_ready, t_registered, t_extracted, t_sent).
        ``background``: work of the decoder's own running beside the loop at that moment (the calibration
        thread), named as the cause when nothing else in the decoder is."""
        passes, gc_ms, generation = self._gc.since()
        flush_ms, self._flush_ms = self._flush_ms, 0.0
        (busy, busy_ms), self._busy = self._busy, ("", 0.0)
        t_ready, t_registered, t_extracted, t_sent = stamps
        latency = t_decided - t_ready
        if latency <= self.period_ns or t_ready <= 0:
            return
        stages = {"acquisition ready->registered": (t_registered - t_ready) / 1e6,
                  "acquisition extraction": (t_extracted - t_registered) / 1e6,
                  "bus hop": (t_received - (t_sent or t_extracted)) / 1e6,
                  "decoder": (t_decided - t_received) / 1e6}
        stage = max(stages, key=stages.get)  # type: ignore[arg-type]
        # The decoder's own pauses delay a frame while it waits in the socket (bus hop) or is being decided.
        in_decoder = stage in ("bus hop", "decoder")
        if in_decoder and busy and busy_ms >= CAUSE_MIN_MS:
            cause = f"the decoder was {busy} ({busy_ms:.1f} ms)"
            key = busy
        elif in_decoder and passes and gc_ms >= CAUSE_MIN_MS:
            cause = f"GC pass in the decoder (generation {generation}, {gc_ms:.1f} ms)"
            key = "gc"
        elif in_decoder and flush_ms >= CAUSE_MIN_MS:
            cause = f"decoder records flush ({flush_ms:.1f} ms)"
            key = "flush"
        elif in_decoder and background:
            cause = f"{stage} took {stages[stage]:.1f} ms while the decoder's {background} was computing"
            key = background
        else:
            key = stage
            cause = f"{stage} took {stages[stage]:.1f} ms"
            if stage == "acquisition ready->registered":
                cause += (" (the frame waited for the acquisition loop: the previous frame's preview or movie "
                          "hand-off, or the OS, or registration itself)")
        self.late += 1
        self.causes[key] = self.causes.get(key, 0) + 1
        self._write_event("late_decision", frame=frame, latency_ms=round(latency / 1e6, 3), cause=cause,
                          cause_kind=key, stages_ms={k: round(v, 3) for k, v in stages.items()},
                          gc_passes=passes, gc_ms=round(gc_ms, 3), flush_ms=round(flush_ms, 3))
        self._unwarned += 1
        now = now_ns()
        if now >= self._next_warn:
            self._next_warn = now + WARN_INTERVAL_NS
            self._warn("late_decision", f"{self._unwarned} late decision(s) (> one frame period, "
                                        f"{self.period_ns / 1e6:.1f} ms) since the last warning, {self.late} in all; "
                                        f"the last: frame {frame}, {latency / 1e6:.1f} ms after it was ready: {cause}")
            self._unwarned = 0

    def stats(self) -> dict[str, Any]:
        return {"late": self.late, "causes": dict(self.causes)}

    def close(self) -> None:
        self._gc.close()
