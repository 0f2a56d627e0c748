"""The predicted chance hit rate's 95 % interval and the warnings that name the baseline length needed."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from decoder.calibration import Calibration, calibrate_cursor, run_task
from decoder.config import CalibrationConfig
from decoder.trial import TrialTiming
from decoder.uncertainty import (
    block_frames_for,
    calibration_warnings,
    integrated_autocorrelation,
    outcome_interval,
)
from tests.test_decoder_synthetic import ar1_cursor

TRIAL = 60
TIMING = TrialTiming(trial_frames=TRIAL, iti_frames=60, hold_frames=15, timeout_frames=15)


def test_the_interval_holds_the_held_out_rate_and_narrows_with_a_longer_baseline():
    """20 seeds of a 50-trial-length baseline: the interval holds the task's held-out hit rate at the threshold
    (the trial machine over 40,000 frames) at least 17 times (95 % nominal), and a 4x longer baseline halves
    its width (±30 %)."""
    covered, widths_short, widths_long = 0, [], []
    for seed in range(20):
        cursor = ar1_cursor(12_000 + 40_000, seed=100 + seed)
        base, held = cursor[:3_000], cursor[12_000:]
        cal = calibrate_cursor(base, CalibrationConfig(curve_points=2), TIMING, 30.0, 0.5)
        lo, hi = cal.predicted_hit_rate_ci95
        assert lo <= cal.predicted_hit_rate <= hi
        machine = run_task(held.tolist(), TIMING, cal.threshold, cal.rtb_level)
        covered += lo <= machine.hits / (machine.hits + machine.misses) <= hi
        widths_short.append(hi - lo)
        outcomes: list[tuple[int, bool]] = []
        run_task(cursor[:12_000].tolist(), TIMING, cal.threshold, cal.rtb_level, outcomes)
        lo4, hi4 = outcome_interval(outcomes, block_frames_for(cursor[:12_000], TRIAL))
        widths_long.append(hi4 - lo4)
    assert covered >= 17
    assert np.mean(widths_long) / np.mean(widths_short) == pytest.approx(0.5, rel=0.3)


def test_the_block_adapts_to_activity_slower_than_a_trial():
    fast = ar1_cursor(20_000, seed=1, tau_frames=2.0)  # integrated time ~4 frames: one trial (60) is enough
    slow = ar1_cursor(20_000, seed=1, tau_frames=300.0)  # integrated time ~600 frames (estimated: 250-750)
    assert integrated_autocorrelation(fast) == pytest.approx(4.0, rel=0.5)
    assert block_frames_for(fast, TRIAL) == TRIAL
    tau = integrated_autocorrelation(slow)
    assert tau > 200 and block_frames_for(slow, TRIAL) == math.ceil(6 * tau)


def test_the_interval_is_reproducible_and_does_not_move_the_threshold():
    cursor = ar1_cursor(6_000, seed=3)
    for predict in ("task", "windows"):
        cfg = CalibrationConfig(seed=4, curve_points=2, predict=predict)
        a = calibrate_cursor(cursor, cfg, TIMING, 30.0, 0.5)
        b = calibrate_cursor(cursor, msgspec.structs.replace(cfg, ci_resamples=400), TIMING, 30.0, 0.5)
        assert a.threshold == b.threshold and a.predicted_hit_rate == b.predicted_hit_rate  # its own RNG stream
        assert a.predicted_hit_rate_ci95 == calibrate_cursor(cursor, cfg, TIMING, 30.0, 0.5).predicted_hit_rate_ci95


def test_a_wide_interval_warns_and_names_the_baseline_length_needed():
    warnings, needed = calibration_warnings(0.5, (0.2, 0.8), 0.5, 300.0, 30.0, 0.4, 0.05)
    assert needed == pytest.approx(300.0 * (0.6 / 0.4) ** 2)  # 675 s
    assert len(warnings) == 1
    assert "20%–80%" in warnings[0] and "10 trial lengths" in warnings[0] and "11 min (675 s)" in warnings[0]
    warnings, needed = calibration_warnings(0.395, (0.3, 0.5), 0.5, 300.0, 30.0, 0.4, 0.05)
    assert len(warnings) == 1 and "misses the target 50%" in warnings[0] and "by 0.10" in warnings[0]
    assert needed == pytest.approx(300.0 * 0.105 / 0.05)
    assert calibration_warnings(0.5, (0.35, 0.65), 0.5, 900.0, 30.0, 0.4, 0.05) == ([], 0.0)
    # reward_interval: no target hit rate, only the width counts
    assert calibration_warnings(0.1, (0.05, 0.2), math.nan, 900.0, 30.0, 0.4, 0.05) == ([], 0.0)


def test_a_short_baseline_calibration_carries_its_warning_into_the_record():
    cursor = ar1_cursor(TRIAL * 8, seed=9)  # 8 trial lengths
    cal = calibrate_cursor(cursor, CalibrationConfig(), TIMING, 30.0, 0.5)
    assert cal.warnings and cal.needed_baseline_s > len(cursor) / 30.0
    record = Calibration(threshold=cal.threshold, feedback_min=cal.feedback_min, feedback_max=cal.feedback_max,
                         predicted_hit_rate=cal.predicted_hit_rate, method="hit_rate", curve_thresholds=[],
                         curve_hit_rates=[], baseline_frames=len(cursor),
                         predicted_hit_rate_ci95=cal.predicted_hit_rate_ci95, warnings=cal.warnings,
                         needed_baseline_s=cal.needed_baseline_s)
    data = record.to_dict()
    assert len(data["predicted_hit_rate_ci95"]) == 2
    assert Calibration.from_dict(data) == record


def test_limits_are_validated():
    with pytest.raises(ValueError, match="rate_tolerance"):
        CalibrationConfig(rate_tolerance=0.2, max_rate_error=0.15)
    with pytest.raises(ValueError, match="max_ci_width"):
        CalibrationConfig(max_ci_width=0.0)
    with pytest.raises(ValueError, match="ci_resamples"):
        CalibrationConfig(ci_resamples=10)
