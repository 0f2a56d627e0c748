"""Decode-step latency of DecoderEngine.step() in BCI mode, and of its parts.

    python benchmarks/bench_decoder.py [--rois 500] [--frames 10000] [--fps 30] [--f0-window-s 60]

Prints p50 / p99 / max in microseconds, wall clock and this thread's CPU time (on a shared machine
other processes' time lands in the wall-clock tail; CPU time is the decoder's own cost), for:
  * the dF/F update alone (neuropil correction, running-percentile F0, dF/F of every ROI);
  * the whole step with a two-population decoder (5 + 5 cells, CLOOSE sized);
  * the same with ``dff_rois = "decoder"`` (during BCI, dF/F of the ensemble cells only);
  * the whole step with a weighted decoder reading every ROI.
Inputs are synthetic float32 F/Fneu like an extraction's, precomputed so only the decoder is timed. Also
prints how many Python memory blocks a step leaves allocated (should be ~0: nothing per frame lives on).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np

from decoder.config import CalibrationConfig, DecoderConfig, TaskConfig
from decoder.dff import DffTracker, compile_kernels
from decoder.engine import DecoderEngine
from rig.core.codes import Mode


def synthetic(n_frames: int, n_rois: int, fps: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    decay = np.exp(-1.0 / (0.7 * fps))
    calcium = np.zeros((n_frames, n_rois), dtype=np.float32)
    level = np.zeros(n_rois, dtype=np.float32)
    events = rng.random((n_frames, n_rois)) < 0.3 / fps
    for t in range(n_frames):
        level = level * decay + events[t] * 0.5
        calcium[t] = level
    base = (300.0 + 400.0 * rng.random(n_rois)).astype(np.float32)
    neuropil = (150.0 + 15.0 * rng.standard_normal((n_frames, n_rois))).astype(np.float32)
    F = base * (1 + calcium) + 0.7 * neuropil + base * 0.05 * rng.standard_normal((n_frames, n_rois)).astype(np.float32)
    return F.astype(np.float32), neuropil


def summarize(name: str, wall_ns: np.ndarray, cpu_ns: np.ndarray) -> None:
    for kind, samples in (("wall", wall_ns), ("cpu", cpu_ns)):
        us = np.asarray(samples, dtype=np.float64) / 1e3
        p50, p99 = np.percentile(us, [50, 99])
        print(f"{name:<40s} {kind:4s} n={len(us):6d}  p50 {p50:7.1f} us  p99 {p99:7.1f} us  max {us.max():8.1f} us")


class Timer:
    """Wall-clock and thread-CPU time of each timed call, into preallocated arrays."""

    def __init__(self, n: int) -> None:
        self.wall = np.zeros(n, dtype=np.int64)
        self.cpu = np.zeros(n, dtype=np.int64)

    def run(self, i: int, fn, *args) -> None:  # noqa: ANN001 - a tiny helper
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        fn(*args)
        self.cpu[i] = time.thread_time_ns() - c0
        self.wall[i] = time.perf_counter_ns() - w0


def bench_engine(dcfg: DecoderConfig, args: argparse.Namespace, base: tuple, live: tuple) -> tuple[Timer, float]:
    tcfg = TaskConfig(auto_protocol=False, baseline_s=len(base[0]) / args.fps, trial_s=10.0, iti_s=2.0)
    eng = DecoderEngine(dcfg, tcfg, args.rois, args.fps)
    t0 = time.perf_counter()
    eng.load_baseline(*base)
    t_load = time.perf_counter() - t0
    eng.calibrate()
    eng.start_bci()
    F, Fneu = live
    timer = Timer(len(F))
    half = len(F) // 2
    for t in range(half):
        timer.run(t, eng.step, t, F[t], Fneu[t])
    blocks_before = sys.getallocatedblocks()  # the second half also counts what stays allocated
    for t in range(half, len(F)):
        timer.run(t, eng.step, t, F[t], Fneu[t])
    left = (sys.getallocatedblocks() - blocks_before) / (len(F) - half)
    assert eng.mode == Mode.BCI, eng.mode
    print(f"  trials {eng.trials}, hits {eng.hits}; load_baseline of {len(base[0])} frames took {t_load:.2f} s; "
          f"memory blocks left allocated per step {left:+.4f}")
    return timer, t_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rois", type=int, default=500)
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--f0-window-s", type=float, default=60.0)
    parser.add_argument("--baseline-s", type=float, default=100.0)
    args = parser.parse_args()
    n_base = int(args.baseline_s * args.fps)
    F, Fneu = synthetic(n_base + args.frames, args.rois, args.fps)
    base = (F[:n_base], Fneu[:n_base])
    live = (F[n_base:], Fneu[n_base:])
    window = int(round(args.f0_window_s * args.fps))
    print(f"{args.rois} ROIs, F0 window {window} frames ({args.f0_window_s:g} s at {args.fps:g} Hz), "
          f"{args.frames} timed frames; numpy {np.__version__}")
    compile_kernels()  # as DecoderEngine does at configure: no first-frame compile in the timings
    gc.collect()

    tracker = DffTracker(args.rois, 0.7, window, 10.0, 1.0)
    tracker.fill(base[0].astype(np.float64) - 0.7 * base[1])
    tracker.running.rebuilds = 0
    timer = Timer(args.frames)

    def dff_step(F: np.ndarray, Fneu: np.ndarray) -> None:
        tracker.correct(F, Fneu)
        tracker.update()

    for t in range(args.frames):
        timer.run(t, dff_step, live[0][t], live[1][t])
    summarize("dF/F update (correct + F0 + dF/F)", timer.wall, timer.cpu)
    running = tracker.running
    print(f"  band capacity {running.capacity}, halfwidth {running.halfwidth}; "
          f"{running.rebuilds / args.frames:.3f} band rebuilds per frame (all ROIs)")

    cal = CalibrationConfig(min_baseline_trials=1.0)
    two = DecoderConfig(up=list(range(5)), down=list(range(5, 10)), f0_window_s=args.f0_window_s, calibration=cal)
    timer, _ = bench_engine(two, args, base, live)
    summarize("step, two_population 5+5 (BCI)", timer.wall, timer.cpu)

    narrow = DecoderConfig(up=list(range(5)), down=list(range(5, 10)), f0_window_s=args.f0_window_s,
                           calibration=cal, dff_rois="decoder")
    timer, _ = bench_engine(narrow, args, base, live)
    summarize('step, two_population, dff_rois="decoder"', timer.wall, timer.cpu)

    rng = np.random.default_rng(1)
    weights = list(rng.normal(size=args.rois))
    weighted = DecoderConfig(decoder="weighted", weights=weights, f0_window_s=args.f0_window_s, calibration=cal)
    timer, _ = bench_engine(weighted, args, base, live)
    summarize(f"step, weighted, all {args.rois} ROIs (BCI)", timer.wall, timer.cpu)


if __name__ == "__main__":
    main()
