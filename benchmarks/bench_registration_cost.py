#!/usr/bin/env python3
"""Thread-CPU cost of ``RigidRegistrar.register`` per 512x512 frame (what a loaded machine distorts least),
for several settings measured interleaved (A/B): each round times every setting over the same frames.

    python benchmarks/bench_registration_cost.py [--frames 400] [--rounds 4]
           [--set default] [--set track=0] [--set workers=2] [--set fine_size=320] ...

``--set`` takes comma-separated ``RigidRegistrar`` keyword arguments (``default`` = none); several ``--set``
are compared. Wall-clock percentiles on a shared machine mostly measure the other jobs; ``time.thread_time``
counts only this thread's CPU (with ``workers`` > 1 pocketfft's helper threads are not counted: compare the
wall column, printed too). Frames: the synthetic movie of bench_acquisition.py (known shifts, a random walk
of 0.7 px per frame; played in a loop, so every 100th frame jumps back by several px). Prints per setting
p50/p90 ms thread CPU, p50 wall, the RMS error against the true shifts (constant removed) and the fraction
of frames whose coarse stage was skipped; the last stdout line is JSON.
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


def parse_setting(text: str) -> dict[str, float | int | bool | str]:
    """``"track=0,workers=2"`` -> keyword arguments (ints or floats where they parse, else strings)."""
    if text == "default":
        return {}
    out: dict[str, float | int | bool | str] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--set {text!r}: expected key=value, got {item!r}")
        try:
            out[key.strip()] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key.strip()] = value
    if "track" in out:
        out["track"] = bool(out["track"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400, help="register calls timed per setting and round")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (each times every setting)")
    ap.add_argument("--set", action="append", dest="settings", metavar="K=V,...",
                    help="RigidRegistrar keyword arguments to compare ('default': none); repeatable")
    args = ap.parse_args()
    settings = args.settings or ["default"]
    limit_blas_threads(1)
    frames, shifts, reference, _ = synthetic_movie(100, 512, 50, 0.05 * 512)[:4]
    regs = {name: RigidRegistrar(reference, **parse_setting(name)) for name in settings}
    for reg in regs.values():
        for frame in frames[:20]:
            reg.register(frame)  # warm-up: compiled kernels, DFT matrices
    cpu: dict[str, list[int]] = {name: [] for name in settings}
    wall: dict[str, list[int]] = {name: [] for name in settings}
    errors: dict[str, float] = {}
    tracked: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, reg in regs.items():
            out = []
            reg.tracked_frames = reg.track_fallbacks = 0
            for i in range(args.frames):
                t0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                dy, dx, _, _ = reg.register(frames[i % len(frames)])
                cpu[name].append(time.thread_time_ns() - t0)
                wall[name].append(time.perf_counter_ns() - w0)
                out.append((dy, dx))
            est = np.array(out)
            truth = shifts[np.arange(args.frames) % len(frames)]
            err = (est - est.mean(0)) - (truth - truth.mean(0))
            errors[name] = float(np.sqrt((err**2).sum(1).mean()))  # the same every round (deterministic)
            tracked[name] = reg.tracked_frames / args.frames
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result: dict = {"load_avg_1min": load, "settings": {}}
    for name in settings:
        row = {"cpu_p50_ms": round(float(np.percentile(cpu[name], 50)) / 1e6, 3),
               "cpu_p90_ms": round(float(np.percentile(cpu[name], 90)) / 1e6, 3),
               "cpu_p99_ms": round(float(np.percentile(cpu[name], 99)) / 1e6, 3),
               "wall_p50_ms": round(float(np.percentile(wall[name], 50)) / 1e6, 3),
               "wall_p99_ms": round(float(np.percentile(wall[name], 99)) / 1e6, 3),
               "rms_error_px": round(errors[name], 4), "tracked_fraction": round(tracked[name], 3)}
        result["settings"][name] = row
        print(f"{name:>28}: thread CPU p50 {row['cpu_p50_ms']} p90 {row['cpu_p90_ms']} p99 {row['cpu_p99_ms']} ms; "
              f"wall p50 {row['wall_p50_ms']} p99 {row['wall_p99_ms']} ms; RMS error {row['rms_error_px']} px; "
              f"coarse stage skipped {row['tracked_fraction']:.0%}")
    print(f"load average (1 min) {load}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
