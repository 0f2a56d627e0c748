"""When the next frame is due, from the last frames' arrival times: the moment to pre-warm registration before it.

Why: a loop that sleeps a frame period finds the registration's code and data gone cold; on our 2-vCPU VM a frame
after a 33-ms pause registers in ~1.2 ms against ~0.6 back to back (benchmarks/bench_idle_gap.py), and deep CPU
idle states do the same on a desktop. Registering the last frame again shortly before the next one is due (the
result thrown away) brings most of it back. A scope's frame clock is regular, so the arrival is predictable: the
next frame is due one period after the last, the period a running average of the intervals (a gap of dropped
frames is not an interval). ``[acquisition.registration] prewarm_ms`` sets how long before; 0 switches it off.
"""

from __future__ import annotations


class FramePacer:
    """Tracks frame arrivals; says how long the loop may wait before pre-warming, and when it is due."""

    def __init__(self, lead_ms: float) -> None:
        self.lead_ns = int(lead_ms * 1e6)
        self._last_ns = 0
        self._period_ns = 0.0
        self._warmed = True  # nothing to pre-warm before the first frames
        self.prewarms = 0

    def arrived(self, t_ready_ns: int) -> None:
        """A frame was ready at ``t_ready_ns`` (the BCI plane's)."""
        if self._last_ns:
            interval = t_ready_ns - self._last_ns
            if self._period_ns == 0.0:
                self._period_ns = float(interval)
            elif 0 < interval < 1.5 * self._period_ns:  # a gap of dropped frames is not a period
                self._period_ns += 0.1 * (interval - self._period_ns)
        self._last_ns = t_ready_ns
        self._warmed = self._period_ns <= 2 * self.lead_ns  # a frame period too short to pre-warm within

    def wait_s(self, now_ns: int, longest_s: float) -> float:
        """How long the loop may wait for a frame before it should pre-warm (at most ``longest_s``)."""
        if self._warmed:
            return longest_s
        return min(longest_s, max(self._last_ns + self._period_ns - self.lead_ns - now_ns, 0) / 1e9)

    def due(self, now_ns: int) -> bool:
        """True once per frame, when the pre-warm should run now (then call :meth:`done`)."""
        return not self._warmed and now_ns >= self._last_ns + self._period_ns - self.lead_ns

    def done(self) -> None:
        self._warmed = True
        self.prewarms += 1
