"""What the machine does to ``rig bench``'s figures, apart from the rig: the hypervisor's steal, and the cost of
pausing between frames.

Why: on our 2-vCPU VM the same code's figures moved by 0.3–0.5 ms at p50 from hour to hour with nothing else
running, and two causes were measurable from outside the rig. Steal (the CPU time the hypervisor gave other
guests) moved the tails. And a pause of one frame period made the next frame's work 1.5–3.5x slower than back to
back (time away from the CPU, even spinning, costs it its warm state; a pre-warmed registration 0.95 ms against
0.57, a FluorFrame's encode 94 µs against 2; docs/PERFORMANCE.md "Sixth round"). On a rig PC the same penalty
comes from deep CPU idle states and a power-saving clock, and the power plan removes it; the probe tells an
operator which case they are in.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rig.offline.bench_summary import BUSY_HOST_STEAL_PCT

#: the pause the idle probe makes before each timed run, unless told: one frame period at 30 Hz
IDLE_GAP_S = 1 / 30
#: from this ratio (after a pause / back to back) the bench says how to keep the CPU ready between frames
IDLE_PENALTY_SAY = 1.3
IDLE_ADVICE = ("on a rig PC: Windows power plan \"High performance\"; Linux: the performance governor and shallow "
               "idle states (cpupower frequency-set -g performance; cpupower idle-set -D 10); in a VM, the host's "
               "other guests cause it and nothing in the guest prevents it")


def cpu_times_snapshot() -> Any:
    """The machine's CPU times now (psutil), for :func:`steal_percent`."""
    import psutil  # noqa: PLC0415

    return psutil.cpu_times()


def steal_percent(before: Any, after: Any) -> float | None:
    """Share (%) of the machine's CPU time between two :func:`cpu_times_snapshot` taken by the hypervisor for
    other guests ("steal"): on a shared VM this, not the load average, is what says the host was busy, and it
    moves the latency tails from day to day. None where the OS does not report it (Windows, macOS)."""
    if not hasattr(before, "steal"):
        return None

    def total(t: Any) -> float:  # guest time is already counted in user / nice on Linux
        return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    spent = total(after) - total(before)
    return round(100.0 * (after.steal - before.steal) / spent, 1) if spent > 0 else None


def wait_for_quiet_host(max_wait_s: float, window_s: float = 3.0, limit_pct: float = BUSY_HOST_STEAL_PCT, *,
                        sample: Callable[[], Any] = cpu_times_snapshot, sleep: Callable[[float], None] = time.sleep,
                        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Before a run (``--quiet-host``): wait, at most ``max_wait_s``, for a ``window_s`` window in which the
    hypervisor took less than ``limit_pct`` % of the CPU time, so that the run measures the rig and not the
    host. Returns what happened, for the run's JSON; a host that reports no steal (Windows, bare metal) is quiet
    at once, and a host that stays busy is said and the run goes ahead."""
    waited, last = 0.0, None
    while True:
        before = sample()
        sleep(window_s)
        last = steal_percent(before, sample())
        if last is None or last < limit_pct:
            return {"waited_s": round(waited, 1), "steal_pct": last, "quiet": True}
        waited += window_s
        if waited >= max_wait_s:
            say(f"[bench] the host is still busy after {waited:g} s (steal {last:.1f} % over the last {window_s:g} s):"
                " running anyway; compare this run with care")
            return {"waited_s": round(waited, 1), "steal_pct": last, "quiet": False}
        say(f"[bench] waiting for a quiet host: the hypervisor took {last:.1f} % of the CPU over the last "
            f"{window_s:g} s (waited {waited:g} of {max_wait_s:g} s)")


class FrameLikeWork:
    """A frame's kind of work in miniature (~0.3 ms back to back here): a 256x256 uint16 crop cast and tapered
    into float32, the real FFT of every other pixel of it, and a few dozen operations on 500-element arrays as the
    decoder makes."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.frame = rng.integers(0, 4000, (256, 256), dtype=np.uint16)
        self.taper = np.hanning(256).astype(np.float32)[:, None] * np.hanning(256).astype(np.float32)[None, :]
        self.buf = np.empty((256, 256), np.float32)
        self.F = rng.random(500, dtype=np.float32)
        self.Fneu = rng.random(500, dtype=np.float32)

    def __call__(self) -> float:
        np.multiply(self.frame, self.taper, out=self.buf)
        total = float(np.abs(np.fft.rfft2(self.buf[::2, ::2])[:8, :8]).sum())
        for _ in range(12):
            total += float((self.F - 0.7 * self.Fneu).mean())
        return total


def idle_penalty(samples: int = 25, gap_s: float = IDLE_GAP_S, *, work: Callable[[], Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], int] = time.perf_counter_ns) -> dict[str, float]:
    """Time ``work`` (:class:`FrameLikeWork`) ``samples`` times back to back, then ``samples`` times each after a
    ``gap_s`` pause, as a rig's loop waits for the next frame. Returns the medians (µs) and their ratio: ~1 on a
    machine that keeps its caches and clock between frames, 1.6–4.5 on our VM at 30 Hz."""
    if samples < 1:
        raise ValueError(f"`samples`: must be >= 1, not {samples}")
    work = work or FrameLikeWork()
    for _ in range(3):  # code, plans and buffers made before anything is timed
        work()
    warm, after_idle = [], []
    for _ in range(samples):
        t0 = clock()
        work()
        warm.append(clock() - t0)
    for _ in range(samples):
        sleep(gap_s)
        t0 = clock()
        work()
        after_idle.append(clock() - t0)
    warm_us, idle_us = statistics.median(warm) / 1e3, statistics.median(after_idle) / 1e3
    return {"warm_us": round(warm_us, 1), "after_idle_us": round(idle_us, 1), "gap_ms": round(gap_s * 1e3, 1),
            "ratio": round(idle_us / max(warm_us, 1e-3), 2)}


def describe_idle_penalty(probe: dict[str, float]) -> str:
    """One line for the operator; with advice when the pause costs ≥ :data:`IDLE_PENALTY_SAY` times."""
    line = (f"[bench] after a {probe['gap_ms']:g}-ms pause, a frame's kind of work took {probe['ratio']:.2f}x its "
            f"time back to back ({probe['warm_us']:.0f} -> {probe['after_idle_us']:.0f} µs)")
    if probe["ratio"] >= IDLE_PENALTY_SAY:
        line += (": this machine loses its caches or clock speed between frames, which adds to every stage; "
                 + IDLE_ADVICE)
    return line
