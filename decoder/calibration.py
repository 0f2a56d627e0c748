"""Threshold calibration on the baseline cursor, and the :class:`Calibration` record sessions store.

Two methods (``[decoder.calibration] method``):

* ``hit_rate`` (CLOOSE): draw ``n_trials`` trials of trial length at random start frames of the
  baseline cursor (seeded RNG), take each trial's maximum; a threshold ``T`` would give the hit rate
  "fraction of maxima >= T". The threshold is the lowest value that at most ``target_hit_rate`` of the
  trials reach: midway between the (j+1)-th and j-th largest maxima, j = floor(target · n_trials).
* ``reward_interval`` (HoloBMI): run the task itself (:class:`~decoder.trial.TrialMachine`, with ITI,
  hold, timeout and return-to-baseline) over the baseline cursor and pick the lowest threshold at which
  it would give at most one hit per ``target_reward_interval_s``.

Both report the curve threshold -> predicted hit rate (from the resampled trials) and the feedback range
(baseline minimum, or a low percentile, -> threshold). A baseline that is too short, flat, or cannot
reach the target gives a :class:`CalibrationError` that says which, never a threshold.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import numpy as np
from scipy.ndimage import maximum_filter1d

from decoder.config import CalibrationConfig, DecoderConfig
from decoder.trial import TrialMachine, TrialTiming


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


def count_task_hits(cursor: np.ndarray, timing: TrialTiming, threshold: float, rtb_level: float) -> int:
    """Hits the task would give if the baseline cursor were replayed through it (no session limits)."""
    machine = TrialMachine(
        TrialTiming(trial_frames=timing.trial_frames, iti_frames=timing.iti_frames, hold_frames=timing.hold_frames,
                    timeout_frames=timing.timeout_frames, rtb_frames=timing.rtb_frames),
        threshold, rtb_level,
    )
    sink: list = []
    for t, value in enumerate(cursor.tolist()):
        machine.step(t, value, True, sink)
        sink.clear()
    return machine.hits


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
) -> CursorCalibration:
    """Choose the threshold on a baseline cursor (one value per baseline frame, smoothed as live)."""
    cursor = np.asarray(cursor, dtype=np.float64)
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
    interval = math.nan
    if cfg.method == "hit_rate":
        target = cfg.target_hit_rate
        threshold = threshold_for_hit_rate(maxima, target)
        predicted = float(hit_rate_at(maxima, np.array([threshold]))[0])
        if abs(predicted - target) > cfg.max_rate_error:
            repeats = len(maxima) - len(np.unique(maxima))
            raise CalibrationError(
                f"cannot reach the target hit rate {target:.2f}: the closest threshold gives {predicted:.2f} on the "
                f"baseline, because {repeats} of {len(maxima)} resampled trials repeat another's maximum (a baseline "
                f"of only {n / trial_frames:.1f} trial lengths, or a cursor with few distinct peaks); record a "
                f"longer baseline or check the ensembles")
    else:
        target = cfg.target_reward_interval_s
        threshold, interval = _threshold_for_interval(cursor, cfg, timing, frame_rate_hz, median, rtb_fraction)
        predicted = float(hit_rate_at(maxima, np.array([threshold]))[0])
    feedback_min = float(np.percentile(cursor, cfg.feedback_min_percentile))
    if not feedback_min < threshold:
        raise CalibrationError(
            f"the feedback range is empty: baseline low {feedback_min:.4g} is not below the threshold {threshold:.4g}")
    lo, hi = float(maxima.min()), float(maxima.max())
    curve_t = np.linspace(lo, hi, cfg.curve_points)
    curve_r = hit_rate_at(maxima, curve_t)
    return CursorCalibration(
        threshold=threshold, feedback_min=feedback_min, feedback_max=threshold, predicted_hit_rate=predicted,
        curve_thresholds=[float(v) for v in curve_t], curve_hit_rates=[float(v) for v in curve_r],
        cursor_median=median, cursor_std=std, rtb_level=rtb_level_for(threshold, median, rtb_fraction, enabled),
        target=target, predicted_reward_interval_s=interval,
    )


def _threshold_for_interval(cursor: np.ndarray, cfg: CalibrationConfig, timing: TrialTiming, frame_rate_hz: float,
                            median: float, rtb_fraction: float) -> tuple[float, float]:
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

    candidates = np.unique(cursor)
    lo, hi = 0, len(candidates) - 1
    if hits_at(lo) <= allowed:
        raise CalibrationError(
            f"even the lowest threshold gives at most one hit per {duration_s / max(hits_at(lo), 1):.1f} s on the "
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
