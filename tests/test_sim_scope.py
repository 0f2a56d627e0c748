"""The simulated two-photon scope: reproducible, photon-limited, bounded motion, honest ground truth."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from acquisition.sim.config import MouseConfig, SimConfig
from acquisition.sim.export import suite2p_stat, write_ground_truth
from acquisition.sim.scope import SimScope

SMALL = dict(height_px=128, width_px=128, n_cells=20)


def small(**kw) -> SimConfig:
    return SimConfig(**{**SMALL, **kw})


def quiet_mouse() -> MouseConfig:
    """Cells that (almost) never fire: a static scene for photon statistics."""
    return MouseConfig(rate_median_hz=1e-6, rate_log_sd=0.0, bout_rate_hz=0.0, attempt_exploration_hz=0.0)


def still(**kw) -> SimConfig:
    """No motion, no bleaching, no activity: every frame is the same scene plus noise."""
    base = dict(
        motion_walk_sd_px=0.0, jump_rate_hz=0.0, drift_px_per_min=0.0, bleach_fraction=0.0,
        neuropil_coupling=0.0, mouse=quiet_mouse(),
    )
    return small(**{**base, **kw})


def render_n(scope: SimScope, n: int) -> np.ndarray:
    out = np.empty((n, *scope.shape), np.uint16)
    for i in range(n):
        scope.render(out[i])
    return out


def test_same_seed_same_movie_and_truth():
    a, b = SimScope(small(seed=7)), SimScope(small(seed=7))
    fa, fb = render_n(a, 15), render_n(b, 15)
    np.testing.assert_array_equal(fa, fb)
    ta, tb = a.truth(), b.truth()
    for key in ta:
        np.testing.assert_array_equal(ta[key], tb[key], err_msg=key)
    c = SimScope(small(seed=8))
    assert not np.array_equal(render_n(c, 15), fa)


def test_frame_numbers_and_timestamps_with_jitter():
    scope = SimScope(small(timestamp_jitter_s=0.001), frame_rate_hz=30.0)
    buf = np.empty(scope.shape, np.uint16)
    infos = [scope.render(buf) for _ in range(60)]
    assert [i.number for i in infos] == list(range(60))
    t = np.array([i.scope_time_s for i in infos])
    err = t - np.arange(60) / 30.0
    assert np.all(np.abs(err) < 0.01)
    assert err.std() > 1e-4  # jittered, not exact


def test_render_rejects_wrong_buffer():
    scope = SimScope(small())
    with pytest.raises(ValueError, match="uint16"):
        scope.render(np.empty((128, 128), np.float32))
    with pytest.raises(ValueError, match="shape"):
        scope.render(np.empty((64, 128), np.uint16))


def test_photon_statistics_few_photons_and_pmt_noise():
    cfg = still(seed=3)
    scope = SimScope(cfg)
    frames = render_n(scope, 300).astype(np.float64)
    photons = (frames - cfg.adc_offset) / cfg.pmt_gain
    # "a few photons per pixel per frame", as in real frames
    assert 0.5 < np.median(photons) < 10.0
    assert np.percentile(photons.mean(0), 99) < 40.0
    # the mean converges to the noise-free image...
    mean = frames.mean(0)
    expected = scope.expected_image()
    rel = np.abs(mean - expected) / expected
    assert np.median(rel) < 0.05
    # ...and the variance grows linearly with the signal: shot noise times the PMT excess noise factor
    signal = expected - cfg.adc_offset
    var = frames.var(0, ddof=1)
    slope = np.sum(signal * (var - cfg.electronics_noise**2)) / np.sum(signal**2)
    enf = 1.0 + cfg.pmt_gain_var / cfg.pmt_gain**2
    assert slope == pytest.approx(cfg.pmt_gain * enf, rel=0.1)
    # photon counts are skewed like Poisson counts (a Gaussian approximation would not be)
    dim = (signal / cfg.pmt_gain > 1.0) & (signal / cfg.pmt_gain < 2.0)
    centred = frames[:, dim] - mean[dim]
    skew = (centred**3).mean() / centred.var() ** 1.5
    assert skew > 0.3


def test_motion_is_bounded_with_jumps_and_drift():
    cfg = small(motion_max_px=3.0, motion_walk_sd_px=0.6, jump_rate_hz=0.5, jump_sd_px=3.0, drift_px_per_min=30.0)
    scope = SimScope(cfg)
    for _ in range(3000):
        scope.skip()
    shifts = scope.truth()["shifts"]
    assert shifts.shape == (3000, 2)
    assert np.all(np.abs(shifts) <= 3.0 + 1e-6)
    assert shifts.std(0).min() > 0.3
    step = np.abs(np.diff(shifts, axis=0)).max(1)
    assert np.max(step) > 1.0  # at least one jump
    assert np.median(step) < 0.3  # otherwise a smooth walk
    fractional = np.abs(shifts - np.round(shifts))
    assert np.mean(fractional > 0.05) > 0.5  # subpixel


def _phase_corr_shift(frame: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Where the content of ref appears in frame (subpixel by a parabola through the peak)."""
    a = np.fft.fft2(frame - frame.mean())
    b = np.fft.fft2(ref - ref.mean())
    cross = a * np.conj(b)
    cc = np.real(np.fft.ifft2(cross / (np.abs(cross) + 1e-9)))
    cc = np.fft.fftshift(cc)
    py, px = np.unravel_index(np.argmax(cc), cc.shape)

    def vertex(m1: float, c0: float, p1: float) -> float:
        d = m1 - 2 * c0 + p1
        return 0.5 * (m1 - p1) / d if d != 0 else 0.0

    dy = py + vertex(cc[py - 1, px], cc[py, px], cc[py + 1, px]) - cc.shape[0] // 2
    dx = px + vertex(cc[py, px - 1], cc[py, px], cc[py, px + 1]) - cc.shape[1] // 2
    return dy, dx


def test_frames_move_by_the_true_shift():
    cfg = still(motion_walk_sd_px=2.5, motion_max_px=5.0, cell_photons=8.0, seed=5)
    scope = SimScope(cfg)
    ref = scope.expected_image().astype(np.float64)
    buf = np.empty(scope.shape, np.uint16)
    errors = []
    for _ in range(12):
        info = scope.render(buf)
        for _ in range(7):  # let the walk move between tested frames
            scope.skip()
        dy, dx = _phase_corr_shift(buf.astype(np.float64), ref)
        errors.append((dy - info.dy, dx - info.dx))
    errors = np.array(errors)
    assert np.abs(errors).max() < 0.5, errors
    assert np.sqrt((errors**2).mean()) < 0.25


def test_bidirectional_offset_displaces_odd_lines():
    cfg = still(bidi_offset_px=2.0, cell_photons=8.0)
    scope = SimScope(cfg)
    mean = render_n(scope, 40).astype(np.float64).mean(0)
    ref = scope.expected_image().astype(np.float64)

    def best_x_shift(rows: slice) -> int:
        scores = {}
        for s in range(-4, 5):
            a = mean[rows, 8:-8]
            b = np.roll(ref, s, axis=1)[rows, 8:-8]
            scores[s] = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        return max(scores, key=scores.get)

    assert best_x_shift(slice(0, None, 2)) == 0
    assert best_x_shift(slice(1, None, 2)) == 2


def test_bleaching_dims_the_scene_over_time():
    cfg = still(bleach_fraction=0.5, bleach_tau_s=2.0, seed=2)
    scope = SimScope(cfg, frame_rate_hz=30.0)
    frames = render_n(scope, 240).astype(np.float64) - cfg.adc_offset
    early, late = frames[:20].mean(), frames[-20:].mean()
    b = scope.truth()["bleach"]
    assert b[0] == pytest.approx(1.0)
    assert b[-1] == pytest.approx(0.5 + 0.5 * math.exp(-239 / 30 / 2.0), rel=1e-4)
    assert late / early == pytest.approx(b[-20:].mean() / b[:20].mean(), rel=0.05)


def test_ground_truth_files_load_as_suite2p(tmp_path):
    from acquisition.rois import load_suite2p

    cfg = small(seed=11)
    scope = SimScope(cfg, up=[0, 1], down=[2, 3])
    render_n(scope, 25)
    plane = write_ground_truth(scope, tmp_path)
    assert plane == tmp_path / "suite2p" / "plane0"
    stat = np.load(plane / "stat.npy", allow_pickle=True)
    assert len(stat) == cfg.n_cells
    for roi in stat:
        for key in ("ypix", "xpix", "lam", "med", "npix", "radius", "compact", "soma_crop", "overlap"):
            assert key in roi, key
        assert roi["ypix"].shape == roi["xpix"].shape == roi["lam"].shape == roi["soma_crop"].shape
        assert roi["npix"] == roi["ypix"].size > 20
        assert roi["ypix"].min() >= 0 and roi["ypix"].max() < cfg.height_px
    iscell = np.load(plane / "iscell.npy")
    assert iscell.shape == (cfg.n_cells, 2)
    ops = np.load(plane / "ops.npy", allow_pickle=True).item()
    assert ops["Ly"] == 128 and ops["Lx"] == 128
    assert ops["refImg"].shape == ops["meanImg"].shape == (128, 128)
    assert ops["registration"]["maxregshift"] == 0.1
    assert ops["extraction"]["neuropil_coefficient"] == 0.7
    truth = np.load(tmp_path / "ground_truth.npz")
    assert truth["shifts"].shape == (25, 2)
    assert truth["F_true"].shape == truth["spikes"].shape == (25, cfg.n_cells)
    assert list(truth["up"]) == [0, 1] and list(truth["down"]) == [2, 3]
    rois = load_suite2p(plane)  # the acquisition package's own loader accepts it
    assert rois.n_rois == cfg.n_cells and (rois.Ly, rois.Lx) == (128, 128)
    write_ground_truth(scope, tmp_path / "partial", n_frames=10)
    assert np.load(tmp_path / "partial" / "ground_truth.npz")["shifts"].shape == (10, 2)
    with pytest.raises(ValueError, match="26 frames requested"):
        write_ground_truth(scope, tmp_path / "too_many", n_frames=26)


def test_roi_i_is_cell_i():
    """Fluorescence read through ROI i follows the true fluorescence of simulated cell i."""
    cfg = still(seed=4, mouse=MouseConfig(rate_median_hz=2.0, rate_log_sd=0.2), cell_photons=6.0)
    scope = SimScope(cfg)
    frames = render_n(scope, 400).astype(np.float64)
    stat = suite2p_stat(scope.anatomy)
    F_true = scope.truth()["F_true"]
    corr = []
    for i, roi in enumerate(stat):
        soma = roi["soma_crop"] & ~roi["overlap"]
        f = (frames[:, roi["ypix"][soma], roi["xpix"][soma]] * roi["lam"][soma]).sum(1)
        corr.append(np.corrcoef(f, F_true[:, i])[0, 1])
    assert np.median(corr) > 0.6
    # and not with another cell's truth
    wrong = [np.corrcoef(F_true[:, (i + 1) % cfg.n_cells], F_true[:, i])[0, 1] for i in range(cfg.n_cells)]
    assert np.median(corr) > np.median(wrong) + 0.4


def test_config_rejects_bad_values_with_field_name():
    with pytest.raises(ValueError, match="`n_cells`"):
        SimConfig(n_cells=0)
    with pytest.raises(ValueError, match="`indicator`"):
        SimConfig(indicator="9x")
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"n_cels": 3}, SimConfig)
    with pytest.raises(msgspec.ValidationError, match="learning_rule"):
        msgspec.convert({"mouse": {"learning_rule": "magic"}}, SimConfig)
    with pytest.raises(ValueError, match="`n_cells`: could not place"):
        SimScope(small(n_cells=2000))


def test_truth_dff_matches_the_calcium_model_and_history_is_capped():
    scope = SimScope(small(seed=12, history_max_frames=30, mouse=MouseConfig(rate_median_hz=3.0)))
    buf = np.empty(scope.shape, np.uint16)
    for _ in range(20):
        scope.render(buf)
    truth = scope.truth()
    np.testing.assert_allclose(truth["dff_true"][-1], scope.calcium.dff, rtol=1e-4, atol=1e-5)
    assert truth["spikes"].sum() > 0
    for _ in range(20):
        scope.skip()
    assert scope.history_truncated and scope.truth()["shifts"].shape == (30, 2)
