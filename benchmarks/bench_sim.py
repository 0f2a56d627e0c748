"""Per-frame cost of the simulator: how much of a 2-core rig's time does a simulated scope take?

Run:  python benchmarks/bench_sim.py [--frames 600] [--fov 512]
Prints p50/p99 in ms for: full frame render (default config), render with bidirectional offset,
render without motion, the trace-level simulator (TraceSim.step), and the mouse alone.
"""

from __future__ import annotations

import argparse
import json
import time

import msgspec
import numpy as np

from acquisition.sim.config import SimConfig
from acquisition.sim.mouse import SimMouse
from acquisition.sim.scope import SimScope
from acquisition.sim.traces import TraceSim


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ms = np.array(samples_ns) / 1e6
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def bench_render(cfg: SimConfig, frames: int, fps: float) -> dict[str, float]:
    t0 = time.perf_counter()
    scope = SimScope(cfg, fps, up=[0, 1, 2, 3], down=[4, 5, 6, 7])
    setup_s = time.perf_counter() - t0
    buf = np.empty(scope.shape, np.uint16)
    for _ in range(30):  # warm up caches and the noise banks
        scope.render(buf)
    samples = []
    for _ in range(frames):
        t = time.perf_counter_ns()
        scope.render(buf)
        samples.append(time.perf_counter_ns() - t)
    out = _percentiles(samples)
    out["setup_s"] = setup_s
    out["fraction_of_one_core_at_fps"] = out["mean_ms"] * fps / 1000.0
    return out


def bench_steps(step, frames: int) -> dict[str, float]:
    for _ in range(100):
        step()
    samples = []
    for _ in range(frames):
        t = time.perf_counter_ns()
        step()
        samples.append(time.perf_counter_ns() - t)
    return _percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--fov", type=int, default=512)
    parser.add_argument("--fps", type=float, default=30.0)
    args = parser.parse_args()
    base = SimConfig(height_px=args.fov, width_px=args.fov)
    results = {
        f"render {args.fov}x{args.fov}, {base.n_cells} cells": bench_render(base, args.frames, args.fps),
        "render with bidirectional offset": bench_render(
            msgspec.structs.replace(base, bidi_offset_px=1.5), args.frames, args.fps),
        "render, no motion": bench_render(
            msgspec.structs.replace(base, motion_walk_sd_px=0.0, jump_rate_hz=0.0, drift_px_per_min=0.0),
            args.frames, args.fps),
    }
    trace = TraceSim(base, args.fps, up=[0, 1, 2, 3], down=[4, 5, 6, 7])
    results[f"TraceSim.step ({base.n_cells} ROIs)"] = bench_steps(trace.step, 5 * args.frames)
    mouse = SimMouse(base.mouse, base.n_cells, args.fps, seed=1, up=[0, 1], down=[2, 3])
    results["SimMouse.step"] = bench_steps(mouse.step, 5 * args.frames)
    width = max(len(k) for k in results)
    for name, r in results.items():
        extra = f"  ({100 * r['fraction_of_one_core_at_fps']:.1f}% of one core at {args.fps:g} Hz)" \
            if "fraction_of_one_core_at_fps" in r else ""
        print(f"{name:<{width}}  p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms{extra}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
