"""How well a calibration predicts the chance hit rate, and how wide its 95 % interval is, by baseline length.

Run: python benchmarks/bench_calibration.py [--seeds 10] [--fps 15] [--json OUT.json]

For each seed, one simulated spontaneous recording (8 cells, slow shared and private rate fluctuations,
GCaMP-like decay, noise) gives the cursor mean(up) − mean(down) with the rig's 3-frame smoothing. The
first L minutes are the baseline, calibrated by the rig's own code (``decoder.calibration.calibrate_cursor``,
which also computes the interval); the next two hours are held out and run through an INDEPENDENT
re-implementation of the trial rules written here (ITI, trial, hit = first frame at or above threshold
after the cursor was below it, hold, timeout) — not ``decoder.trial`` — to count the hit rate the session
would really have had. It prints, per baseline length and target: the predicted rate, the interval's
width, the held-out task rate (mean ± sd, range over seeds), the held-out rate of random trial-length
windows (what CLOOSE's windows estimator predicts), how often the interval held the held-out task rate
(coverage), the miss of the target, and how often the rig's default limits would have warned.
``--predict windows`` calibrates with the windows estimator instead (the rule before the task simulation;
its coverage is then of the held-out window rate, which is what it estimates). docs/TASK_RULES.md quotes runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoder.calibration import CalibrationError, calibrate_cursor  # noqa: E402
from decoder.config import CalibrationConfig  # noqa: E402
from decoder.trial import TrialTiming  # noqa: E402

TRIAL_S, ITI_S, HOLD_S, TIMEOUT_S = 30.0, 5.0, 1.0, 3.0  # the default [task] timings
HELD_OUT_MIN = 120.0


def ou(n: int, tau_frames: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Ornstein-Uhlenbeck series (stationary, standard deviation ``sd``, correlation time ``tau_frames``)."""
    a = math.exp(-1.0 / tau_frames)
    noise = rng.normal(0.0, sd * math.sqrt(1 - a * a), n)
    noise[0] = rng.normal(0.0, sd)
    return lfilter([1.0], [1.0, -a], noise)


def recording(minutes: float, fps: float, seed: int) -> np.ndarray:
    """The smoothed cursor of a spontaneous recording: 4 up and 4 down cells."""
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * fps)
    shared = ou(n, 60 * fps, 0.5, rng)  # brain state, minutes
    decay = math.exp(-1.0 / (1.2 * fps))  # GCaMP6s-like decay, ~1.2 s
    dff = np.empty((n, 8))
    for cell in range(8):
        rate = 0.8 * np.exp(shared + ou(n, 20 * fps, 0.6, rng))  # spikes/s, seconds-to-minutes fluctuations
        spikes = rng.poisson(rate / fps).astype(np.float64)
        dff[:, cell] = lfilter([0.25], [1.0, -decay], spikes) + rng.normal(0.0, 0.08, n)
    cursor = dff[:, :4].mean(axis=1) - dff[:, 4:].mean(axis=1)
    return np.convolve(cursor, np.ones(3) / 3, mode="full")[:n]  # causal 3-frame running mean


def task_hit_rate(cursor: np.ndarray, threshold: float, fps: float) -> float:
    """Hit rate of the task run over ``cursor`` (independent of decoder.trial)."""
    iti, trial, hold, timeout = (round(s * fps) for s in (ITI_S, TRIAL_S, HOLD_S, TIMEOUT_S))
    hits = misses = 0
    t, n = 0, len(cursor)
    below = True
    while True:
        t += iti  # the ITI (the cursor may come back below meanwhile)
        if t + trial > n:
            break
        below = below or bool((cursor[t - iti:t] < threshold).any())
        outcome = None
        for k in range(t, t + trial):
            if cursor[k] >= threshold and below:
                outcome = k
                break
            if cursor[k] < threshold:
                below = True
        if outcome is None:
            misses += 1
            t += trial + timeout
            below = below or bool((cursor[t - timeout:t] < threshold).any())
        else:
            hits += 1
            below = False
            t = outcome + 1 + hold
            below = bool((cursor[outcome + 1:t] < threshold).any())
    return hits / max(hits + misses, 1)


def window_rate(cursor: np.ndarray, threshold: float, trial: int) -> float:
    """Fraction of every trial-length window of ``cursor`` whose maximum reaches ``threshold``."""
    windows = np.lib.stride_tricks.sliding_window_view(cursor, trial)[::max(trial // 10, 1)]
    return float((windows.max(axis=1) >= threshold).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--lengths", default="5,10,15,20,30", help="baseline lengths, minutes")
    p.add_argument("--targets", default="0.5,0.2")
    p.add_argument("--predict", choices=("task", "windows"), default="task")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    fps = args.fps
    lengths = [float(v) for v in args.lengths.split(",")]
    targets = [float(v) for v in args.targets.split(",")]
    defaults = CalibrationConfig()
    trial = round(TRIAL_S * fps)
    timing = TrialTiming(trial_frames=trial, iti_frames=round(ITI_S * fps), hold_frames=round(HOLD_S * fps),
                         timeout_frames=round(TIMEOUT_S * fps))
    longest = max(lengths)
    records = {seed: recording(longest + HELD_OUT_MIN, fps, 1000 + seed) for seed in range(args.seeds)}
    rows = []
    print(f"{'baseline':>8} {'target':>6} {'predicted':>9} {'ci width':>8} {'held-out task rate':>28} "
          f"{'windows':>7} {'coverage':>8} {'|miss| mean/max':>15} {'warned':>6} {'refused':>7}")
    for minutes in lengths:
        for target in targets:
            cfg = CalibrationConfig(target_hit_rate=target, max_rate_error=1.0, predict=args.predict)
            pred, width, held, held_windows, covered, miss, warned, refused = [], [], [], [], [], [], 0, 0
            for cursor in records.values():
                base = cursor[: int(minutes * 60 * fps)]
                test = cursor[int(longest * 60 * fps):]  # the same held-out two hours for every length
                try:
                    cal = calibrate_cursor(base, cfg, timing, fps, 0.5)
                except CalibrationError:
                    refused += 1
                    continue
                lo, hi = cal.predicted_hit_rate_ci95
                pred.append(cal.predicted_hit_rate)
                width.append(hi - lo)
                held.append(task_hit_rate(test, cal.threshold, fps))
                held_windows.append(window_rate(test, cal.threshold, trial))
                covered.append(lo <= (held[-1] if args.predict == "task" else held_windows[-1]) <= hi)
                miss.append(abs(cal.predicted_hit_rate - target))
                warned += bool(hi - lo > defaults.max_ci_width or miss[-1] > defaults.rate_tolerance
                               or miss[-1] > defaults.max_rate_error)
            row = {"baseline_min": minutes, "target": target, "predicted_mean": float(np.mean(pred)),
                   "ci_width_mean": float(np.mean(width)), "held_out_mean": float(np.mean(held)),
                   "held_out_sd": float(np.std(held)), "held_out_min": float(np.min(held)),
                   "held_out_max": float(np.max(held)), "coverage": float(np.mean(covered)),
                   "held_out_windows_mean": float(np.mean(held_windows)),
                   "miss_mean": float(np.mean(miss)), "miss_max": float(np.max(miss)), "warned": warned,
                   "refused": refused, "seeds": args.seeds}
            rows.append(row)
            print(f"{minutes:>6.0f} m {target:>6.2f} {row['predicted_mean']:>9.3f} {row['ci_width_mean']:>8.3f} "
                  f"{row['held_out_mean']:>9.3f} ± {row['held_out_sd']:.3f} ({row['held_out_min']:.2f}–"
                  f"{row['held_out_max']:.2f}) {row['held_out_windows_mean']:>7.3f} {row['coverage']:>8.2f} "
                  f"{row['miss_mean']:>9.3f}/{row['miss_max']:.3f} "
                  f"{warned:>6} {refused:>7}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
