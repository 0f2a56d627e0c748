"""dF/F: the incremental running percentile is exactly np.percentile over the window; dF/F arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoder.dff import (
    DffTracker,
    baseline_dff_stats,
    baseline_f0,
    corrected_f,
    dff_from,
    running_f0,
)
from decoder.percentile import RunningPercentile, percentile_weights


def _reference(data: np.ndarray, t: int, window: int, percentile: float) -> np.ndarray:
    return np.percentile(data[max(0, t - window + 1) : t + 1], percentile, axis=0)


@pytest.mark.parametrize(
    ("n", "window", "percentile", "capacity"),
    [
        (5, 10, 10.0, 96),
        (3, 1, 10.0, 96),
        (4, 2, 10.0, 96),
        (6, 13, 50.0, 8),
        (3, 16, 0.0, 96),
        (3, 16, 100.0, 6),
        (4, 30, 37.3, 4),  # tiny bands: frequent rebuilds and overflows
        (4, 30, 10.0, 12),
        (7, 64, 95.0, 96),
        (8, 200, 10.0, 16),
        (8, 200, 10.0, 96),
    ],
)
def test_running_percentile_is_bit_identical_to_numpy(n, window, percentile, capacity):
    rng = np.random.default_rng(window * 7 + n + capacity)
    data = rng.normal(1000.0, 50.0, size=(3 * window + 40, n))
    data[::5] = np.round(data[::5])  # ties
    data[:, 0] = np.round(data[:, 0] / 20.0)  # a series made mostly of ties
    running = RunningPercentile(n, window, percentile, band_capacity=capacity)
    for t in range(len(data)):
        value = running.push(data[t])
        assert np.array_equal(value, _reference(data, t, window, percentile)), f"frame {t}"
    assert running.count == window


def test_heavy_ties_stay_exact_and_a_dead_roi_costs_no_rebuilds():
    n, window = 3, 40
    rng = np.random.default_rng(5)
    data = rng.normal(10.0, 1.0, size=(400, n))
    data[50:200, 1] = 7.0  # a saturated / dead stretch: every value equal
    data[:, 2] = np.round(data[:, 2])  # a handful of levels only
    running = RunningPercentile(n, window, 10.0, band_capacity=8)
    for t in range(len(data)):
        assert np.array_equal(running.push(data[t]), _reference(data, t, window, 10.0)), f"frame {t}"
    # a ROI whose every value is equal: the entering entry takes the leaving one's key (same value and slot),
    # so once its window is flat its band never moves
    dead = RunningPercentile(1, window, 10.0, band_capacity=8)
    for _ in range(window):
        dead.push(np.array([7.0]))
    before = dead.rebuilds
    for _ in range(5 * window):
        assert dead.push(np.array([7.0]))[0] == 7.0
    assert dead.rebuilds == before


@pytest.mark.parametrize(("capacity", "halfwidth"), [(4, 0), (4, 1), (6, 2), (64, 31)])
def test_running_percentile_is_exact_for_every_band_size(capacity, halfwidth):
    rng = np.random.default_rng(capacity * 10 + halfwidth)
    window = 25
    data = np.round(rng.normal(0.0, 3.0, size=(200, 4)))  # integers: ties everywhere
    data[:, 3] = np.cumsum(rng.normal(size=200))  # a drifting series: the rank walks out of its band
    running = RunningPercentile(4, window, 23.0, band_capacity=capacity, halfwidth=halfwidth)
    for t in range(len(data)):
        assert np.array_equal(running.push(data[t]), _reference(data, t, window, 23.0)), f"frame {t}"


def test_push_accepts_float32_and_strided_input():
    rng = np.random.default_rng(8)
    data = rng.normal(size=(60, 10)).astype(np.float32)
    running = RunningPercentile(5, 20, 10.0)
    for t in range(len(data)):
        row = data[t, ::2]  # float32 and not contiguous: copied into a float64 scratch row
        assert np.array_equal(running.push(row), _reference(data[:, ::2].astype(np.float64), t, 20, 10.0))


def test_running_percentile_handles_constant_runs_and_steps():
    n, window = 3, 50
    data = np.concatenate([np.full((80, n), 5.0), np.full((80, n), 9.0), np.linspace(0, 1, 240).reshape(80, n)])
    running = RunningPercentile(n, window, 10.0)
    for t in range(len(data)):
        assert np.array_equal(running.push(data[t]), _reference(data, t, window, 10.0))


def test_push_returns_the_same_buffer_and_window_values_are_in_time_order():
    running = RunningPercentile(2, 4, 10.0)
    first = running.push(np.array([1.0, 2.0]))
    for v in (3.0, 4.0, 5.0, 6.0, 7.0):
        assert running.push(np.array([v, v])) is first
    assert np.array_equal(running.window_values()[:, 0], [4.0, 5.0, 6.0, 7.0])


def test_fill_equals_pushing_each_row():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(120, 5))
    a = RunningPercentile(5, 40, 10.0)
    a.fill(data)
    b = RunningPercentile(5, 40, 10.0)
    for row in data:
        b.push(row)
    assert np.array_equal(a.value, b.value)
    nxt = rng.normal(size=5)
    assert np.array_equal(a.push(nxt), b.push(nxt))
    with pytest.raises(ValueError, match="`values`"):
        a.fill(np.full((3, 5), np.nan))


def test_percentile_weights_match_numpy_for_many_counts():
    rng = np.random.default_rng(2)
    for count in range(1, 400, 7):
        sample = np.sort(rng.normal(size=count))
        for p in (0.0, 10.0, 33.3, 50.0, 99.9, 100.0):
            k, gamma = percentile_weights(count, p)
            assert 0 <= k < count
            if gamma == 0.0:
                assert sample[k] == np.percentile(sample, p)


@pytest.mark.parametrize("kwargs", [dict(n=0, window=3, percentile=10.0), dict(n=2, window=0, percentile=10.0),
                                    dict(n=2, window=3, percentile=101.0)])
def test_running_percentile_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        RunningPercentile(**kwargs)


def test_tracker_dff_is_neuropil_corrected_and_over_running_f0():
    rng = np.random.default_rng(3)
    F = rng.normal(800.0, 40.0, size=(300, 6)).astype(np.float32)
    Fneu = rng.normal(200.0, 10.0, size=(300, 6)).astype(np.float32)
    tracker = DffTracker(6, 0.7, window=50, percentile=10.0, f0_floor=1.0)
    corrected = corrected_f(F, Fneu, 0.7)
    for t in range(300):
        assert tracker.correct(F[t], Fneu[t])
        dff = tracker.update()
        f0 = _reference(corrected, t, 50, 10.0)
        assert np.array_equal(tracker.corrected, corrected[t])
        assert np.array_equal(tracker.f0, f0)
        assert np.array_equal(dff, (corrected[t] - f0) / np.maximum(f0, 1.0))


def test_tracker_flags_non_finite_input_without_touching_f0():
    tracker = DffTracker(3, 0.7, window=10, percentile=10.0, f0_floor=1.0)
    for _ in range(5):
        assert tracker.correct(np.full(3, 500.0), np.full(3, 100.0))
        tracker.update()
    before = tracker.f0.copy()
    frames = tracker.frames_in_window
    F = np.array([500.0, np.nan, 500.0])
    assert not tracker.correct(F, np.full(3, 100.0))
    assert not tracker.correct(np.full(3, 500.0), np.array([np.inf, 1.0, 1.0]))
    tracker.invalidate()
    assert np.isnan(tracker.dff).all()
    assert np.array_equal(tracker.f0, before) and tracker.frames_in_window == frames


def test_f0_floor_bounds_the_denominator():
    tracker = DffTracker(2, 0.0, window=5, percentile=10.0, f0_floor=10.0)
    tracker.correct(np.array([2.0, 50.0]), np.zeros(2))
    dff = tracker.update()
    assert dff[0] == 0.0  # F == F0 on the first frame
    tracker.correct(np.array([7.0, 60.0]), np.zeros(2))
    dff = tracker.update()
    f0 = np.percentile([[2.0, 50.0], [7.0, 60.0]], 10.0, axis=0)
    assert dff[0] == (7.0 - f0[0]) / 10.0
    assert dff[1] == (60.0 - f0[1]) / f0[1]


def test_fill_quantiles_warm_starts_f0_near_the_stored_window():
    rng = np.random.default_rng(6)
    window = rng.normal(500.0, 40.0, size=(300, 3)) + np.array([0.0, 100.0, 200.0])
    levels = np.arange(0.0, 101.0, 5.0)
    tracker = DffTracker(3, 0.7, window=300, percentile=10.0, f0_floor=1.0)
    tracker.fill_quantiles(levels, np.percentile(window, levels, axis=0))
    f0 = tracker.f0.copy()
    assert np.allclose(f0, np.percentile(window, 10.0, axis=0), rtol=0.01)
    again = DffTracker(3, 0.7, window=300, percentile=10.0, f0_floor=1.0)
    again.fill_quantiles(levels, np.percentile(window, levels, axis=0))
    assert np.array_equal(again.f0, f0)  # deterministic
    with pytest.raises(ValueError, match="`f0_quantiles`"):
        tracker.fill_quantiles(levels, np.zeros((3, 3)))


def test_baseline_f0_uses_a_full_window_from_the_first_frame():
    rng = np.random.default_rng(4)
    corrected = rng.normal(500.0, 30.0, size=(200, 4))
    live = running_f0(corrected, 60, 10.0)
    f0 = baseline_f0(corrected, live, 60, 10.0)
    head = np.percentile(corrected[:60], 10.0, axis=0)
    assert np.array_equal(f0[:60], np.broadcast_to(head, (60, 4)))
    assert np.array_equal(f0[60:], live[60:])
    for t in (60, 130, 199):  # the causal window from there on
        assert np.array_equal(live[t], _reference(corrected, t, 60, 10.0))
    short = baseline_f0(corrected[:30], live[:30], 60, 10.0)  # shorter than the window: the whole of it
    assert np.array_equal(short[0], np.percentile(corrected[:30], 10.0, axis=0))
    dff = dff_from(corrected, f0, 1.0)
    assert np.array_equal(dff[100], (corrected[100] - f0[100]) / f0[100])


@pytest.mark.parametrize("frames", [30, 60, 200])
def test_baseline_dff_stats_match_the_full_dff_series(frames):
    rng = np.random.default_rng(frames)
    corrected = rng.normal(500.0, 30.0, size=(frames, 4))
    corrected[:, 3] = rng.normal(0.5, 0.2, size=frames)  # F0 under the floor: divided by the floor instead
    live = running_f0(corrected, 60, 10.0)
    dff = dff_from(corrected, baseline_f0(corrected, live, 60, 10.0), 1.0)
    mean, std, last_f0 = baseline_dff_stats(corrected, live, 60, 10.0, 1.0)
    assert np.allclose(mean, dff.mean(axis=0), rtol=1e-12, atol=1e-15)
    assert np.allclose(std, dff.std(axis=0), rtol=1e-12, atol=1e-15)
    assert np.array_equal(last_f0, baseline_f0(corrected, live, 60, 10.0)[-1])
    with pytest.raises(ValueError, match="`corrected`"):
        baseline_dff_stats(corrected, live[:-1], 60, 10.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 40), percentile=st.floats(0.0, 100.0), capacity=st.integers(4, 24),
       half=st.floats(0.0, 1.0), levels=st.integers(1, 50), drift=st.floats(0.0, 2.0), seed=st.integers(0, 2**32 - 1))
def test_running_percentile_is_exact_on_random_streams(window, percentile, capacity, half, levels, drift, seed):
    """Any window, percentile and band size; few distinct levels (heavy ties) to many; drifting or not."""
    rng = np.random.default_rng(seed)
    frames = 3 * window + 20
    data = np.round(rng.normal(size=(frames, 3)) * levels) + drift * np.arange(frames)[:, None]
    halfwidth = int(half * (capacity // 2 - 1))
    running = RunningPercentile(3, window, percentile, band_capacity=capacity, halfwidth=halfwidth)
    for t in range(frames):
        assert np.array_equal(running.push(data[t]), _reference(data, t, window, percentile)), f"frame {t}"


def test_a_negative_zero_comes_out_as_numpy_gives_it():
    running = RunningPercentile(1, 3, 50.0)
    for v in (1.0, -0.0, -2.0):
        value = running.push(np.array([v]))
    expected = np.percentile([1.0, -0.0, -2.0], 50.0)  # numpy's a + (b - a)·0 turns -0.0 into 0.0
    assert value.view(np.int64)[0] == np.array([expected]).view(np.int64)[0]


def test_tracker_refuses_inputs_of_the_wrong_length():
    tracker = DffTracker(3, 0.7, window=10, percentile=10.0, f0_floor=1.0)
    with pytest.raises(ValueError, match="one value per ROI"):
        tracker.correct(np.ones(2, np.float32), np.ones(3, np.float32))
