"""Decoders (1-pop, 2-pop, weighted, z-score, per-cell cap), the running mean, and the feedback mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoder.config import FeedbackConfig
from decoder.decoders import LinearDecoder, RunningMean
from decoder.feedback import NO_BIN, FeedbackMapper
from decoder.registry import check_ensembles


def test_two_population_is_mean_up_minus_mean_down():
    dec = LinearDecoder("two_population", 8)
    dec.set_ensembles([5, 1], [2, 7, 0])
    dff = np.array([0.3, 1.0, -0.2, 9.0, 9.0, 0.5, 9.0, 0.1])
    up, down = dec.decode(dff)
    assert up == pytest.approx(0.75, abs=1e-15) and down == pytest.approx((0.3 - 0.2 + 0.1) / 3, abs=1e-15)
    assert list(dec.rois) == [0, 1, 2, 5, 7]
    assert dec.ready


def test_one_population_reads_only_up():
    dec = LinearDecoder("one_population", 4)
    assert not dec.ready
    dec.set_ensembles([0, 3], [])
    up, down = dec.decode(np.array([0.2, 5.0, 5.0, 0.4]))
    assert up == pytest.approx(0.3) and down == 0.0
    with pytest.raises(ValueError, match="`down`"):
        dec.set_ensembles([0], [1])


def test_weighted_splits_positive_and_negative_weights():
    dec = LinearDecoder("weighted", 4)
    dec.set_weights([2.0, 0.0, -0.5, 1.0])
    up, down = dec.decode(np.array([0.1, 7.0, 0.4, 0.3]))
    assert up == pytest.approx(0.5) and down == pytest.approx(0.2)
    assert dec.up == [0, 3] and dec.down == [2]
    with pytest.raises(ValueError, match="`weights`"):
        dec.set_weights([1.0, 2.0])
    with pytest.raises(ValueError, match="`weights`"):
        LinearDecoder("two_population", 4).set_weights([1.0, 0.0, 0.0, 0.0])


def test_zscore_uses_baseline_stats():
    dec = LinearDecoder("two_population", 3, zscore=True)
    dec.set_ensembles([0], [2])
    dec.set_zscore_stats(np.array([0.1, 9.0, 0.2]), np.array([0.05, 9.0, 0.1]))
    up, down = dec.decode(np.array([0.2, 0.0, 0.0]))
    assert up == pytest.approx(2.0) and down == pytest.approx(-2.0)


def test_cell_cap_stops_one_cell_from_driving_the_cursor():
    capped = LinearDecoder("two_population", 4, cell_cap=0.5)
    free = LinearDecoder("two_population", 4)
    for dec in (capped, free):
        dec.set_ensembles([0, 1], [2, 3])
    dff = np.array([6.0, 0.1, 0.0, 0.0])  # one runaway cell
    assert free.decode(dff)[0] == pytest.approx(3.05)
    assert capped.decode(dff)[0] == pytest.approx(0.3)  # (0.5 + 0.1) / 2
    assert capped.decode(np.array([0.0, 0.0, -4.0, 0.0]))[1] == pytest.approx(-0.25)


def test_decode_frames_equals_frame_by_frame():
    rng = np.random.default_rng(0)
    dff = rng.normal(size=(50, 6))
    dec = LinearDecoder("two_population", 6, cell_cap=1.0)
    dec.set_ensembles([0, 1, 2], [3, 4])
    up, down = dec.decode_frames(dff)
    for t in range(50):
        assert (up[t], down[t]) == dec.decode(dff[t])
    # calibration passes only the decoder's columns
    narrow_up, narrow_down = dec.decode_frames(dff[:, dec.rois], rois_only=True)
    assert np.array_equal(narrow_up, up) and np.array_equal(narrow_down, down)
    with pytest.raises(ValueError, match="`dff`"):
        dec.decode_frames(dff, rois_only=True)


@pytest.mark.parametrize(("kind", "zscore", "cap"), [("two_population", True, 0.0), ("weighted", True, 0.5),
                                                     ("one_population", False, 0.2)])
def test_compiled_decode_matches_the_numpy_formula(kind, zscore, cap):
    rng = np.random.default_rng(3)
    n = 8
    dec = LinearDecoder(kind, n, zscore=zscore, cell_cap=cap)
    if kind == "weighted":
        dec.set_weights(rng.normal(size=n))
    else:
        dec.set_ensembles([1, 4, 6], [] if kind == "one_population" else [0, 7])
    mean, std = rng.normal(size=n), rng.uniform(0.5, 2.0, size=n)
    dec.set_zscore_stats(mean, std)
    for _ in range(20):
        dff = rng.normal(size=n)
        sig = (dff - mean) / std if zscore else dff.copy()
        if cap:
            sig = np.clip(sig, -cap, cap)
        w = dec.weights if kind == "weighted" else np.array(
            [1 / len(dec.up) if i in dec.up else -1 / len(dec.down) if i in dec.down else 0.0 for i in range(n)])
        up, down = dec.decode(dff)
        assert up == pytest.approx(np.sum(np.where(w > 0, w, 0) * sig), rel=1e-12, abs=1e-15)
        assert down == pytest.approx(np.sum(np.where(w < 0, -w, 0) * sig), rel=1e-12, abs=1e-15)
    assert dec.decode(np.full(n, np.nan))[0] != dec.decode(np.full(n, np.nan))[0]  # NaN in, NaN out


@pytest.mark.parametrize(("up", "down", "message"), [
    ([0, 9], [1], "outside"), ([0, 0], [1], "repeat"), ([0, 1], [1, 2], "both"),
])
def test_bad_ensembles_are_named(up, down, message):
    with pytest.raises(ValueError, match=message):
        check_ensembles("two_population", 5, up, down)


def test_running_mean_over_the_last_n_frames_and_gaps():
    rm = RunningMean(3)
    assert rm.push(1.0, 0.0) == (1.0, 0.0)
    assert rm.push(2.0, 1.0) == (1.5, 0.5)
    assert rm.push(3.0, 2.0) == (2.0, 1.0)
    assert rm.push(4.0, 3.0) == (3.0, 2.0)
    rm.push_missing(1)  # the window now holds 3, 4 and a hole
    assert rm.push(10.0, 0.0) == (7.0, 1.5)  # mean of 4 and 10: 3 left the window with the hole
    rm.push_missing(5)
    assert all(math.isnan(v) for v in rm.mean())
    assert rm.push(8.0, 1.0) == (8.0, 1.0)
    up, down = rm.smooth_frames(np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4))
    assert list(up) == [1.0, 1.5, 2.0, 3.0]
    with pytest.raises(ValueError, match="smoothing_frames"):
        RunningMean(0)


def test_feedback_maps_range_to_tone_and_grating_bins():
    fb = FeedbackMapper(FeedbackConfig())
    assert fb.map(0.3)[0] != fb.map(0.3)[0] and fb.map(0.3)[2] == NO_BIN  # no range yet: NaN, NaN, -1
    fb.set_range(-1.0, 1.0)
    norm, tone, angle = fb.map(-1.0)
    assert (norm, angle) == (0.0, 0) and tone == pytest.approx(2000.0)
    norm, tone, angle = fb.map(1.0)
    assert (norm, angle) == (1.0, 5) and tone == pytest.approx(18000.0)
    norm, tone, _ = fb.map(0.0)
    assert norm == 0.5 and tone == pytest.approx(6000.0)  # log-spaced: geometric mean of 2 and 18 kHz
    assert fb.map(-7.0)[0] == 0.0 and fb.map(7.0)[0] == 1.0  # clipped
    assert [fb.angle_bin(v) for v in (0.0, 0.16, 0.17, 0.5, 0.84, 0.99)] == [0, 0, 1, 3, 5, 5]
    assert fb.angle_deg(5) == 75.0 and math.isnan(fb.angle_deg(NO_BIN))
    assert math.isnan(fb.map(math.nan)[1])
    with pytest.raises(ValueError, match="feedback range"):
        fb.set_range(1.0, 1.0)
    fb.clear_range()
    assert not fb.has_range
