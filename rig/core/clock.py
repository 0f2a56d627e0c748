"""The one clock every stamp on the bus uses.

`time.perf_counter_ns` is CLOCK_MONOTONIC on Linux and QueryPerformanceCounter on Windows: both are
system-wide, so stamps taken in different processes on one PC are directly comparable. (On Windows
before Python 3.13 `time.monotonic_ns` ticks at ~15 ms, which is useless for latency.)
"""

import time

now_ns = time.perf_counter_ns


def ns_to_ms(ns: int | float) -> float:
    return ns / 1e6
