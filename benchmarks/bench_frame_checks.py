#!/usr/bin/env python3
"""Time the two per-frame passes over the pixels that come before registration's FFT: the frame check
(``FrameValidator.check``) and the fine crop's load (``load_crop``), in row order (a replay, most sources) and
in column order (a CLOOSE frame, read from its wire bytes), after a pause and back to back.

    python benchmarks/bench_frame_checks.py [--frames 60] [--gap-ms 33] [--size 512] [--crop 384]

Why: after a 33-ms pause (a 30 Hz frame) a pass that reads a column-major frame row by row loads each of a
crop row's 384 columns' cache lines and loses them before the next row, and numpy's reductions pay their
Python dispatch cold. Prints the median µs per setting (the compiled kernels against the plain numpy / row-order
ones they replaced, for comparison) and checks that each crop load gives the row kernel's bits; the last line
is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from acquisition.reg_kernels import load_crop, masked_crop, subtract_weighted_mean  # noqa: E402
from acquisition.validate import FrameValidator  # noqa: E402


def _median_us(fn, frames: int, gap_s: float) -> float:
    times = []
    for _ in range(frames):
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return float(np.median(times))


def _numpy_check(data: np.ndarray, level: float, max_fraction: float) -> int:
    """The check as numpy did it before (every 4th row's max, then the saturated count)."""
    sample = data[::4]
    vmax = sample.max()
    if vmax == 0 and not data.any():
        return 1
    return int(vmax >= level and np.count_nonzero(sample >= level) > max_fraction * sample.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60, help="calls timed per setting and condition")
    ap.add_argument("--gap-ms", type=float, default=33.0, help="pause before each timed call (the 'after a pause' "
                    "column); the other column runs back to back")
    ap.add_argument("--size", type=int, default=512, help="frame side in pixels")
    ap.add_argument("--crop", type=int, default=384, help="fine crop side in pixels (registration's fine_size)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    frame = rng.poisson(400, (args.size, args.size)).astype(np.uint16)
    frame[:3, :40] = 65535  # a few saturated pixels: the count runs
    orders = {"rows": frame, "columns": np.asfortranarray(frame)}
    taper_y, taper_x = rng.random(args.crop), rng.random(args.crop)
    mask_sum = float((taper_y[:, None] * taper_x[None, :]).astype(np.float32).sum())
    y0 = x0 = (args.size - args.crop) // 2
    validator = FrameValidator(frame.shape)
    out = np.empty((args.crop, args.crop), np.float32)
    expected = np.empty_like(out)
    masked_crop(frame, y0, x0, taper_y, taper_x, expected)
    subtract_weighted_mean(expected, taper_y, taper_x, mask_sum)
    results: dict[str, dict[str, float]] = {}
    print(f"{'pass':34s} {'order':8s} {'after a pause':>14s} {'back to back':>13s}  (µs, median)")
    for order, data in orders.items():
        cases = {
            "check (compiled)": lambda d=data: validator.check(d),
            "check (numpy, before)": lambda d=data: _numpy_check(d, 65535.0, 0.01),
            "crop load": lambda d=data: load_crop(d, y0, x0, taper_y, taper_x, mask_sum, out),
            "crop load (row kernel, before)": lambda d=data: (masked_crop(d, y0, x0, taper_y, taper_x, out),
                                                             subtract_weighted_mean(out, taper_y, taper_x, mask_sum)),
        }
        for name, fn in cases.items():
            fn()  # compiled now, not timed
            if name.startswith("crop") and not np.array_equal(out.view(np.uint32), expected.view(np.uint32)):
                raise SystemExit(f"{name} in {order} order differs from the row kernel")
            cold = _median_us(fn, args.frames, args.gap_ms / 1e3)
            warm = _median_us(fn, args.frames, 0.0)
            results[f"{name} / {order}"] = {"after_pause_us": round(cold, 1), "back_to_back_us": round(warm, 1)}
            print(f"{name:34s} {order:8s} {cold:14.0f} {warm:13.0f}")
    print(json.dumps({"frame": args.size, "crop": args.crop, "gap_ms": args.gap_ms, "median_us": results}))


if __name__ == "__main__":
    main()
