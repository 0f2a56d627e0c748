"""How far the predicted chance hit rate can be trusted: a 95 % interval, and warnings that say what to do.

Why: a baseline of B seconds holds only about B / trial_s independent trial lengths, so the hit rate a
threshold gives on it is an estimate with a sampling error of its own (a 15-min baseline of 30-s trials
holds ~30; docs/TASK_RULES.md has the measurements). The interval is a moving-block bootstrap in blocks
long enough to keep the cursor's autocorrelation: ``block_frames_for`` = max(one trial length,
:data:`BLOCK_TAUS` × the cursor's integrated autocorrelation time), so activity that fluctuates more
slowly than a trial is not cut into pieces that look independent (trial-length blocks held the held-out
rate in only 80-100 % of seeds on such activity).

* ``predict = "task"``: the task simulation over the baseline (``decoder.calibration.run_task``) is a
  sequence of trial outcomes, cut into whole segments of consecutive trials spanning about one block; the
  interval is the mean ± Student's t(segments − 1) × the standard error of the segment means
  (:func:`outcome_interval`, batch means). Not a bootstrap of the segments: a 15-min baseline holds only
  5-10 such segments, and a percentile bootstrap of so few under-covers (measured: it held the held-out
  rate in 77-80 % of 30 seeds, batch means with t in 93 %; docs/TASK_RULES.md).
* ``predict = "windows"``: the baseline cursor is cut into blocks, new baselines of the same length are
  drawn from random blocks and the windows estimator is run on each at the chosen threshold
  (:func:`hit_rate_interval`).

For the windows, the 2.5th and 97.5th percentiles of the resampled rates are the interval (seeded). The
same baseline always gives the same interval.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.special import stdtrit

#: Rows of resampled baselines processed at once (bounds the memory: rows × baseline frames × 8 bytes).
_CHUNK = 16


#: Blocks span at least this many integrated autocorrelation times of the cursor (measured in
#: benchmarks/bench_calibration.py, docs/TASK_RULES.md).
BLOCK_TAUS = 6.0
#: Sokal's automatic window: the autocorrelation is summed up to the first lag M >= this × tau(M).
_SOKAL_C = 5.0


def integrated_autocorrelation(cursor: np.ndarray) -> float:
    """Integrated autocorrelation time of ``cursor`` in frames (1 + 2 Σ ρ(k), Sokal's window; >= 1)."""
    x = np.asarray(cursor, dtype=np.float64)
    x = x - x.mean()
    n = len(x)
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    if not acf[0] > 0:
        return 1.0
    taus = 2.0 * np.cumsum(acf / acf[0]) - 1.0  # tau(M) for every window M
    window = np.flatnonzero(np.arange(n) >= _SOKAL_C * taus)
    tau = float(taus[window[0]] if len(window) else taus[-1])
    return max(tau, 1.0)


def block_frames_for(cursor: np.ndarray, trial_frames: int) -> int:
    """Block (segment) length: max(one trial, BLOCK_TAUS × the integrated autocorrelation time), at most
    the cursor's length."""
    tau = integrated_autocorrelation(cursor)
    return int(min(len(cursor), max(trial_frames, math.ceil(BLOCK_TAUS * tau))))


def outcome_interval(outcomes: list[tuple[int, bool]], block_frames: int) -> tuple[float, float]:
    """95 % interval of the task's hit rate from its trial outcomes ((end frame, hit?) in order): batch means of
    whole segments of consecutive trials spanning about ``block_frames`` each, with Student's t for their number
    (module docstring). Never narrower than the binomial interval of independent trials."""
    m = len(outcomes)
    if m < 2:
        return 0.0, 1.0  # one trial or none says nothing about the rate
    hits = np.array([hit for _, hit in outcomes], dtype=np.float64)
    span = outcomes[-1][0] - outcomes[0][0]
    per_trial = span / (m - 1) if span > 0 else 1.0  # frames per trial cycle
    length = int(min(m, max(1, round(block_frames / per_trial))))  # trials per segment
    segments = m // length
    if segments < 2:
        return 0.0, 1.0  # the baseline is shorter than two segments: nothing to compare
    means = hits[: segments * length].reshape(segments, length).mean(axis=1)
    rate = float(hits.mean())
    se = max(float(means.std(ddof=1)) / math.sqrt(segments), math.sqrt(max(rate * (1 - rate), 1.0 / m) / m))
    half = float(stdtrit(segments - 1, 0.975)) * se
    return max(0.0, rate - half), min(1.0, rate + half)


def hit_rate_interval(cursor: np.ndarray, trial_frames: int, threshold: float, n_trials: int, resamples: int,
                      seed: int, block_frames: int = 0) -> tuple[float, float]:
    """95 % interval of the windows-predicted hit rate at ``threshold`` (moving-block bootstrap in blocks of
    ``block_frames``, default one trial length; module docstring)."""
    cursor = np.asarray(cursor, dtype=np.float64)
    n = len(cursor)
    if n < trial_frames:
        raise ValueError(f"`cursor`: {n} frames, fewer than one trial ({trial_frames} frames)")
    rng = np.random.default_rng([seed, 17])  # not the calibration's own stream: its trial starts stay as they were
    block = min(n, max(block_frames, trial_frames))
    blocks = -(-n // block)  # ceil
    offsets = np.arange(block)
    rates = np.empty(resamples)
    for first in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - first)
        starts = rng.integers(0, n - block + 1, size=(rows, blocks))
        index = (starts[:, :, None] + offsets).reshape(rows, -1)[:, :n]
        series = cursor[index]
        window_max = maximum_filter1d(series, trial_frames, axis=1, origin=-(trial_frames // 2), mode="nearest")
        trial_starts = rng.integers(0, n - trial_frames + 1, size=(rows, n_trials))
        maxima = np.take_along_axis(window_max, trial_starts, axis=1)
        rates[first:first + rows] = (maxima >= threshold).mean(axis=1)
    lo, hi = np.percentile(rates, [2.5, 97.5])
    return float(lo), float(hi)


def calibration_warnings(predicted: float, ci95: tuple[float, float], target_rate: float, baseline_s: float,
                         trial_s: float, max_ci_width: float, rate_tolerance: float) -> tuple[list[str], float]:
    """(warnings for the operator, the baseline length in s that would satisfy both limits; 0 when met).

    ``target_rate`` is NaN when the method has no target hit rate (reward_interval): then only the width
    is checked. The width of a bootstrap interval shrinks as 1/sqrt(baseline length), so the length that
    would bring it to ``max_ci_width`` is baseline_s · (width / max_ci_width)²; a miss of the target comes
    from too few trials (or distinct trial maxima) and shrinks about as 1/length, so it asks for baseline_s · miss /
    rate_tolerance.
    """
    warnings: list[str] = []
    needed = 0.0
    lo, hi = ci95
    width = hi - lo
    trials = baseline_s / trial_s
    if width > max_ci_width:
        need = baseline_s * (width / max_ci_width) ** 2
        needed = max(needed, need)
        warnings.append(
            f"the predicted chance hit rate {predicted:.0%} is uncertain: its 95 % interval is {lo:.0%}–{hi:.0%} "
            f"(width {width:.2f} > decoder.calibration.max_ci_width {max_ci_width:g}); the baseline of "
            f"{baseline_s:.0f} s holds only {trials:.0f} trial lengths: record a baseline of about "
            f"{_minutes(need)} for an interval of {max_ci_width:g}")
    if math.isfinite(target_rate):
        miss = abs(predicted - target_rate)
        if miss > rate_tolerance:
            need = baseline_s * miss / rate_tolerance
            needed = max(needed, need)
            warnings.append(
                f"the predicted chance hit rate {predicted:.0%} misses the target {target_rate:.0%} by "
                f"{miss:.2f} (> decoder.calibration.rate_tolerance {rate_tolerance:g}): the baseline of "
                f"{baseline_s:.0f} s holds too few trials; record a baseline of about {_minutes(need)}")
    return warnings, needed


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min ({seconds:.0f} s)" if seconds >= 120 else f"{seconds:.0f} s"
