"""Threshold calibration on the baseline cursor, and the :class:`Calibration` record sessions store.

Two methods (``[decoder.calibration] method``):

* ``hit_rate``: the threshold is the lowest at which at most ``target_hit_rate`` of the trials would be
  hits. With ``predict = "task"`` (default) a threshold's rate is the task's own: the trial machine
  (:class:`~decoder.trial.TrialMachine`: ITI, trial, hold, timeout, one crossing one reward,
  return-to-baseline) run over the baseline cursor from :data:`SIM_STARTS` start frames spread over one
  trial cycle, hits / (hits + misses); the threshold is searched among the baseline's values from the
  median up and set midway to the next lower one. With ``predict = "windows"`` (CLOOSE) draw ``n_trials``
  trial-length windows at random start frames (seeded RNG): "fraction of maxima >= T", the threshold
  midway between the (j+1)-th and j-th largest maxima, j = floor(target · n_trials). Windows ignore what
  the task does between trials (after a hit the next trial starts while a slow fluctuation is still up),
  so on activity with slow fluctuations the task's real chance rate is above their prediction
  (docs/TASK_RULES.md: 0.62 for a 0.5 target).
* ``reward_interval`` (HoloBMI): run the task itself (:class:`~decoder.trial.TrialMachine`, with ITI,
  hold, timeout and return-to-baseline) over the baseline cursor and pick the lowest threshold at which
  it would give at most one hit per ``target_reward_interval_s``.

Both report the curve threshold -> predicted hit rate (by the same prediction), the predicted hit rate's
95 % interval with warnings when it is too wide or misses the target (:mod:`decoder.uncertainty`) and the
feedback range (baseline minimum, or a low percentile, -> threshold). A baseline that is too short, flat, or cannot
reach the target gives a :class:`CalibrationError` that says which, never a threshold.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import numpy as np
from scipy.ndimage import maximum_filter1d

from decoder.config import CalibrationConfig, DecoderConfig
from decoder.task_sim import task_outcomes
from decoder.trial import TrialMachine, TrialTiming
from decoder.uncertainty import (
    block_frames_for,
    calibration_warnings,
    hit_rate_interval,
    outcome_interval,
)

#: Start frames of the task simulation over the baseline (spread over one trial cycle): pooling them takes
#: out the luck of where the first trial happens to fall.
SIM_STARTS = 2


class CalibrationError(Exception):
    """The baseline cannot give a meaningful threshold; the message says why and what to change."""


@dataclass
class Calibration:
    """A calibration: the threshold, its evidence, and what the decoder needs to use it in a new session.

    Per-ROI lists (``f0``, ``dff_mean``, ``dff_std``) cover every ROI: ``f0`` is F0 at the end of the
    baseline, ``dff_mean``/``dff_std`` the baseline dF/F statistics used for z-scoring. ``f0_quantiles``
    summarise the baseline's last F0 window (corrected F at ``f0_levels`` percentiles): a session that
    reuses this calibration without its baseline warm-starts F0 from them.
    """

    threshold: float
    feedback_min: float
    feedback_max: float
    predicted_hit_rate: float
    method: str
    curve_thresholds: list[float]
    curve_hit_rates: list[float]
    baseline_frames: int
    target: float = math.nan  # target hit rate, or target reward interval (s)
    predicted_reward_interval_s: float = math.nan  # reward_interval method: baseline frames / hits, in s
    cursor_median: float = math.nan
    cursor_std: float = math.nan
    rtb_level: float = -math.inf  # return-to-baseline level (-inf: rule off)
    trial_frames: int = 0
    n_trials: int = 0
    seed: int = 0
    frame_rate_hz: float = math.nan
    decoder: str = ""
    up: list[int] = field(default_factory=list)
    down: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # weighted decoder only
    zscore: bool = False
    n_rois: int = 0
    f0: list[float] = field(default_factory=list)
    dff_mean: list[float] = field(default_factory=list)
    dff_std: list[float] = field(default_factory=list)
    f0_levels: list[float] = field(default_factory=list)  # percentile levels of f0_quantiles
    f0_quantiles: list[list[float]] = field(default_factory=list)  # per level: corrected F of every ROI
    predicted_hit_rate_ci95: list[float] = field(default_factory=list)  # [lo, hi] (decoder.uncertainty)
    warnings: list[str] = field(default_factory=list)  # what the operator is told about this calibration
    needed_baseline_s: float = 0.0  # baseline length the warnings ask for (0: none needed)
    dff_noise: list[float] = field(default_factory=list)  # baseline dF/F noise per ROI (NaN: not a decoder ROI)
    allowed_rois: list[int] = field(default_factory=list)  # decoder ROIs let in by the operator's override

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: non-finite floats become None (JSON has no NaN/inf)."""
        # not dataclasses.asdict: its deep copy of ~10^4 floats cost tens of ms in the decoder's loop
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    def check_usable(self, n_rois: int, decoder_cfg: DecoderConfig) -> None:
        """ValueError unless a session of ``n_rois`` ROIs with this [decoder] config can reuse this calibration."""
        if self.n_rois != n_rois or len(self.f0) != n_rois:
            raise ValueError(f"`calibration`: made for {self.n_rois} ROIs, this session has {n_rois}")
        if self.decoder != decoder_cfg.decoder:
            raise ValueError(f"`calibration`: made for the {self.decoder} decoder, the config says "
                             f"{decoder_cfg.decoder}")
        if self.zscore != decoder_cfg.zscore:
            raise ValueError(f"`calibration`: made with zscore={self.zscore}, the config says "
                             f"zscore={decoder_cfg.zscore} (the threshold would be in other units)")
        if not (math.isfinite(self.feedback_min) and self.feedback_min < self.threshold):
            raise ValueError("`calibration`: feedback_min must be finite and below the threshold")
        if decoder_cfg.zscore and (len(self.dff_mean) != n_rois or len(self.dff_std) != n_rois):
            raise ValueError("`calibration`: z-scoring needs dff_mean and dff_std for every ROI")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`; names a missing or unknown key."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"`calibration`: unknown keys {unknown}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"`calibration`: missing keys {missing}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            kind = _FIELD_KINDS[name]
            if kind == "float":
                values[name] = (-math.inf if name == "rtb_level" else math.nan) if value is None else float(value)
            elif kind == "floats":
                values[name] = [math.nan if v is None else float(v) for v in value]
            elif kind == "rows":
                values[name] = [[math.nan if v is None else float(v) for v in row] for row in value]
            elif kind == "strs":
                values[name] = [str(v) for v in value]
            elif kind == "ints":
                values[name] = [int(v) for v in value]
            elif kind == "int":
                values[name] = int(value)
            elif kind == "bool":
                values[name] = bool(value)
            else:
                values[name] = str(value)
        cal = cls(**values)
        if not math.isfinite(cal.threshold):
            raise ValueError("`calibration.threshold`: must be a finite number")
        return cal


_FIELD_KINDS = {
    "threshold": "float", "feedback_min": "float", "feedback_max": "float", "predicted_hit_rate": "float",
    "method": "str", "curve_thresholds": "floats", "curve_hit_rates": "floats", "baseline_frames": "int",
    "target": "float", "predicted_reward_interval_s": "float", "cursor_median": "float", "cursor_std": "float",
    "rtb_level": "float", "trial_frames": "int", "n_trials": "int", "seed": "int", "frame_rate_hz": "float",
    "decoder": "str", "up": "ints", "down": "ints", "weights": "floats", "zscore": "bool", "n_rois": "int",
    "f0": "floats", "dff_mean": "floats", "dff_std": "floats", "f0_levels": "floats", "f0_quantiles": "rows",
    "predicted_hit_rate_ci95": "floats", "warnings": "strs", "needed_baseline_s": "float", "dff_noise": "floats",
    "allowed_rois": "ints",
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class CursorCalibration:
    """The part of a calibration that depends only on the baseline cursor."""

    threshold: float
    feedback_min: float
    feedback_max: float
    predicted_hit_rate: float
    curve_thresholds: list[float]
    curve_hit_rates: list[float]
    cursor_median: float
    cursor_std: float
    rtb_level: float
    target: float
    predicted_reward_interval_s: float = math.nan
    predicted_hit_rate_ci95: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    needed_baseline_s: float = 0.0


def trial_maxima(cursor: np.ndarray, trial_frames: int, n_trials: int, seed: int) -> np.ndarray:
    """Maximum of the cursor over ``n_trials`` windows of ``trial_frames`` at seeded random start frames."""
    n = len(cursor)
    if n < trial_frames:
        raise CalibrationError(f"the baseline has {n} frames, fewer than one trial ({trial_frames} frames)")
    starts = np.random.default_rng(seed).integers(0, n - trial_frames + 1, size=n_trials)
    # max of cursor[s : s + trial_frames] for every start s, in O(n)
    window_max = maximum_filter1d(cursor, trial_frames, origin=-(trial_frames // 2), mode="nearest")
    return window_max[starts]


def hit_rate_at(maxima: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of trial maxima that reach each threshold (a hit is cursor >= threshold)."""
    ordered = np.sort(maxima)
    below = np.searchsorted(ordered, thresholds, side="left")  # maxima < threshold
    return (len(ordered) - below) / len(ordered)


def threshold_for_hit_rate(maxima: np.ndarray, target: float) -> float:
    """Lowest threshold that at most ``target`` of the trials reach (midway between order statistics)."""
    desc = np.sort(maxima)[::-1]
    allowed = int(math.floor(target * len(desc)))  # hits allowed
    below = float(desc[allowed]) if allowed < len(desc) else -math.inf
    if allowed == 0:
        return float(np.nextafter(desc[0], np.inf))
    above = float(desc[allowed - 1])
    if above > below:
        return below + (above - below) / 2.0
    return float(np.nextafter(below, np.inf))  # ties: just above the tied value


def _free_timing(timing: TrialTiming) -> TrialTiming:
    """The task's timing without the session limits (the baseline is not a session)."""
    return dataclasses.replace(timing, max_trials=0, session_frames=0)


def run_task(values: list[float], timing: TrialTiming, threshold: float, rtb_level: float,
             outcomes: list[tuple[int, bool]] | None = None) -> TrialMachine:
    """The trial machine run over a cursor (a list: every value a valid frame); ``outcomes`` gets (frame,
    hit?) of each trial that ended. Returns the machine (its ``hits``, ``misses``, ``task_frames``).

    The Python reference of :func:`decoder.task_sim.task_outcomes`, which calibration runs (the same results,
    compiled; the tests hold the two to each other)."""
    machine = TrialMachine(_free_timing(timing), threshold, rtb_level)
    sink: list = []
    step = machine.step
    for t, value in enumerate(values):
        step(t, value, True, sink)
        if sink:
            if outcomes is not None:
                outcomes.extend((e.frame, e.kind == "hit") for e in sink if e.kind in ("hit", "miss"))
            sink.clear()
    return machine


def count_task_hits(cursor: np.ndarray, timing: TrialTiming, threshold: float, rtb_level: float) -> int:
    """Hits the task would give if the baseline cursor were replayed through it (no session limits)."""
    return task_outcomes(np.asarray(cursor, dtype=np.float64), timing, threshold, rtb_level)[0]


def sim_starts(timing: TrialTiming, n: int) -> list[int]:
    """The :data:`SIM_STARTS` start frames of the task simulation (spread over one trial cycle)."""
    cycle = timing.iti_frames + timing.trial_frames
    return sorted({min(round(k * cycle / SIM_STARTS), max(n - timing.trial_frames, 0)) for k in range(SIM_STARTS)})


def task_hit_rate(values: np.ndarray | list[float], timing: TrialTiming, threshold: float,
                  rtb_level: float) -> float:
    """The task's chance hit rate at ``threshold`` on a baseline cursor: hits / trials of the trial machine run
    from each of :func:`sim_starts`, pooled (NaN if no trial ended). Compiled (:mod:`decoder.task_sim`)."""
    cursor = np.asarray(values, dtype=np.float64)
    hits = trials = 0
    for start in sim_starts(timing, len(cursor)):
        run_hits, run_misses, _, _ = task_outcomes(cursor, timing, threshold, rtb_level, start)
        hits += run_hits
        trials += run_hits + run_misses
    return hits / trials if trials else math.nan


def rtb_level_for(threshold: float, median: float, fraction: float, enabled: bool) -> float:
    """Return-to-baseline level: ``fraction`` of the way from the baseline median to the threshold."""
    if not enabled:
        return -math.inf
    return median + fraction * (threshold - median)


def calibrate_cursor(
    cursor: np.ndarray,
    cfg: CalibrationConfig,
    timing: TrialTiming,
    frame_rate_hz: float,
    rtb_fraction: float,
    *,
    legacy: bool = False,
) -> CursorCalibration:
    """Choose the threshold on a baseline cursor (one value per baseline frame, smoothed as live).

    ``legacy``: the rule of sessions recorded before ``decoder.rules_version`` (the reward_interval search
    from the lowest baseline value; with ``predict = "windows"``, which rules_version 1 requires).
    """
    cursor = np.ascontiguousarray(cursor, dtype=np.float64)
    n = len(cursor)
    trial_frames = timing.trial_frames
    if not np.isfinite(cursor).all():
        raise CalibrationError("the baseline cursor has non-finite values (are the ensembles set?)")
    needed = int(math.ceil(cfg.min_baseline_trials * trial_frames))
    if n < needed:
        raise CalibrationError(
            f"the baseline is too short: {n} frames ({n / frame_rate_hz:.1f} s), need at least {needed} frames "
            f"({cfg.min_baseline_trials:g} trial lengths of {trial_frames} frames); record a longer baseline "
            f"or lower decoder.calibration.min_baseline_trials")
    std = float(np.std(cursor))
    if not std > cfg.min_cursor_std:
        raise CalibrationError(
            f"the baseline cursor is flat (standard deviation {std:.3g} <= {cfg.min_cursor_std:g}): the ensemble "
            f"cells show no activity; pick other cells or check the imaging")
    median = float(np.median(cursor))
    maxima = trial_maxima(cursor, trial_frames, cfg.n_trials, cfg.seed)
    if not float(np.ptp(maxima)) > 0.0:
        raise CalibrationError("every resampled baseline trial has the same maximum: the cursor is flat at its peaks")
    enabled = timing.rtb_frames > 0
    values = cursor  # the task simulation's input (float64, contiguous)
    windows = cfg.predict == "windows"

    def predict(threshold: float) -> float:
        if windows:
            return float(hit_rate_at(maxima, np.array([threshold]))[0])
        return task_hit_rate(values, timing, threshold, rtb_level_for(threshold, median, rtb_fraction, enabled))

    interval = math.nan
    if cfg.method == "hit_rate":
        target = cfg.target_hit_rate
        if windows:
            threshold = threshold_for_hit_rate(maxima, target)
        else:
            threshold = _threshold_for_task_rate(cursor, values, timing, target, median, rtb_fraction)
        predicted = predict(threshold)
        if not abs(predicted - target) <= cfg.max_rate_error:
            repeats = len(maxima) - len(np.unique(maxima))
            why = (f"{repeats} of {len(maxima)} resampled trials repeat another's maximum" if windows else
                   f"the task ran only {_sim_trials(values, timing, threshold, median, rtb_fraction)} trials "
                   f"on it")
            raise CalibrationError(
                f"cannot reach the target hit rate {target:.2f}: the closest threshold gives {predicted:.2f} on the "
                f"baseline, because {why} (a baseline of only {n / trial_frames:.1f} trial lengths, or a cursor "
                f"with few distinct peaks); record a longer baseline or check the ensembles")
    else:
        target = cfg.target_reward_interval_s
        threshold, interval = _threshold_for_interval(cursor, cfg, timing, frame_rate_hz, median, rtb_fraction,
                                                      legacy)
        predicted = predict(threshold)
    feedback_min = float(np.percentile(cursor, cfg.feedback_min_percentile))
    if not feedback_min < threshold:
        raise CalibrationError(
            f"the feedback range is empty: baseline low {feedback_min:.4g} is not below the threshold {threshold:.4g}")
    lo, hi = (float(maxima.min()), float(maxima.max())) if windows else (median, float(cursor.max()))
    curve_t = np.linspace(lo, hi, cfg.curve_points)
    curve_r = hit_rate_at(maxima, curve_t) if windows else np.array([predict(float(t)) for t in curve_t])
    block = block_frames_for(cursor, trial_frames)
    if windows:
        ci95 = hit_rate_interval(cursor, trial_frames, threshold, cfg.n_trials, cfg.ci_resamples, cfg.seed, block)
    else:
        _, _, ends, hit = task_outcomes(values, timing, threshold,
                                        rtb_level_for(threshold, median, rtb_fraction, enabled))
        ci95 = outcome_interval(list(zip(ends.tolist(), hit.tolist(), strict=True)), block)
    warnings, needed_s = calibration_warnings(
        predicted, ci95, cfg.target_hit_rate if cfg.method == "hit_rate" else math.nan, n / frame_rate_hz,
        trial_frames / frame_rate_hz, cfg.max_ci_width, cfg.rate_tolerance)
    return CursorCalibration(
        threshold=threshold, feedback_min=feedback_min, feedback_max=threshold, predicted_hit_rate=predicted,
        curve_thresholds=[float(v) for v in curve_t], curve_hit_rates=[float(v) for v in curve_r],
        cursor_median=median, cursor_std=std, rtb_level=rtb_level_for(threshold, median, rtb_fraction, enabled),
        target=target, predicted_reward_interval_s=interval, predicted_hit_rate_ci95=list(ci95), warnings=warnings,
        needed_baseline_s=needed_s,
    )


def _sim_trials(values: np.ndarray, timing: TrialTiming, threshold: float, median: float,
                rtb_fraction: float) -> int:
    hits, misses, _, _ = task_outcomes(values, timing, threshold, rtb_level_for(threshold, median, rtb_fraction,
                                                                                 timing.rtb_frames > 0))
    return hits + misses


def _threshold_for_task_rate(cursor: np.ndarray, values: np.ndarray, timing: TrialTiming, target: float,
                             median: float, rtb_fraction: float) -> float:
    """Lowest threshold (among the baseline's values from the median up, then midway to the next lower one)
    at which the task run over the baseline gives at most ``target`` hits per trial (bisection: the rate
    falls as the threshold rises)."""
    enabled = timing.rtb_frames > 0
    candidates = np.unique(cursor)

    def rate(i: int) -> float:
        threshold = float(candidates[i])
        value = task_hit_rate(values, timing, threshold, rtb_level_for(threshold, median, rtb_fraction, enabled))
        return value if value == value else 0.0  # no trial ended: none was a hit

    lo, hi = int(np.searchsorted(candidates, median)), len(candidates) - 1
    if rate(lo) <= target:
        hi = lo
    else:
        while hi - lo > 1:  # invariant: rate(lo) > target >= rate(hi) (hi: the highest value, about 0)
            mid = (lo + hi) // 2
            if rate(mid) <= target:
                hi = mid
            else:
                lo = mid
    if hi == 0:
        return float(candidates[0])
    below, above = float(candidates[hi - 1]), float(candidates[hi])
    return below + (above - below) / 2.0


def _threshold_for_interval(cursor: np.ndarray, cfg: CalibrationConfig, timing: TrialTiming, frame_rate_hz: float,
                            median: float, rtb_fraction: float, legacy: bool) -> tuple[float, float]:
    """Lowest cursor value (as threshold) at which the task gives <= one hit per target interval."""
    n = len(cursor)
    duration_s = n / frame_rate_hz
    target_s = cfg.target_reward_interval_s
    if duration_s < cfg.min_reward_intervals * target_s:
        raise CalibrationError(
            f"the baseline is too short: {duration_s:.1f} s, need at least {cfg.min_reward_intervals:g} target "
            f"reward intervals of {target_s:g} s")
    allowed = duration_s / target_s  # hits allowed on the baseline
    enabled = timing.rtb_frames > 0

    def hits_at(i: int) -> int:
        threshold = float(candidates[i])
        return count_task_hits(cursor, timing, threshold, rtb_level_for(threshold, median, rtb_fraction, enabled))

    # From the median up: below it the cursor seldom falls back under the threshold, which one crossing,
    # one reward requires between hits, so there the hit count no longer grows as the threshold falls.
    candidates = np.unique(cursor)
    lo, hi = 0 if legacy else int(np.searchsorted(candidates, median)), len(candidates) - 1
    if hits_at(lo) <= allowed:
        raise CalibrationError(
            f"even {'the lowest threshold' if legacy else 'a threshold at the baseline median'} gives at most one "
            f"hit per {duration_s / max(hits_at(lo), 1):.1f} s on the "
            f"baseline, longer than the target {target_s:g} s: the trial timing does not allow that many hits; "
            f"lengthen target_reward_interval_s or shorten iti_s/hold_s/timeout_s")
    if hits_at(hi) > allowed:
        raise CalibrationError("even the highest baseline value gives too many hits: the cursor is flat")
    while hi - lo > 1:  # invariant: hits(lo) > allowed >= hits(hi)
        mid = (lo + hi) // 2
        if hits_at(mid) <= allowed:
            hi = mid
        else:
            lo = mid
    hits = hits_at(hi)
    interval = duration_s / hits if hits else math.inf
    if hits == 0:
        raise CalibrationError(
            f"no threshold gives about one hit per {target_s:g} s on this baseline (the task gives either more, or "
            f"none); record a longer baseline")
    return float(candidates[hi]), interval
