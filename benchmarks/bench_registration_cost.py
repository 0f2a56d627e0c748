#!/usr/bin/env python3
"""Thread-CPU cost of ``RigidRegistrar.register`` per 512x512 frame (what a loaded machine distorts least).

    python benchmarks/bench_registration_cost.py [--frames 400]

Wall-clock percentiles on a shared machine mostly measure the other jobs; ``time.thread_time`` counts only
this thread's CPU. Frames: the synthetic movie of bench_acquisition.py (known shifts). Prints p50/p90 ms and
the RMS error against the true shifts (constant removed); the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # what the acquisition process runs with
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_acquisition import synthetic_movie  # noqa: E402

from acquisition.pipeline import limit_blas_threads  # noqa: E402
from acquisition.registration import RigidRegistrar  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400, help="register calls timed (over a 100-frame movie)")
    args = ap.parse_args()
    limit_blas_threads(1)
    frames, shifts, reference, _ = synthetic_movie(100, 512, 50, 0.05 * 512)[:4]
    reg = RigidRegistrar(reference)
    for frame in frames[:10]:
        reg.register(frame)  # warm-up: compiled kernels, DFT matrices
    times, out = [], []
    for i in range(args.frames):
        t0 = time.thread_time_ns()
        dy, dx, _, _ = reg.register(frames[i % len(frames)])
        times.append(time.thread_time_ns() - t0)
        if i < len(frames):
            out.append((dy, dx))
    est = np.array(out)
    err = (est - est.mean(0)) - (shifts[: len(est)] - shifts[: len(est)].mean(0))
    result = {"p50_ms": round(float(np.percentile(times, 50)) / 1e6, 3),
              "p90_ms": round(float(np.percentile(times, 90)) / 1e6, 3),
              "rms_error_px": round(float(np.sqrt((err**2).sum(1).mean())), 4),
              "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    print(f"register, thread CPU: p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms; "
          f"RMS error {result['rms_error_px']} px (load {result['load_avg_1min']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
