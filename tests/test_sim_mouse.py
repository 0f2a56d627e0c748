"""The simulated mouse's neurons and learning rules, and the GCaMP model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from acquisition.sim.calcium import INDICATOR_PRESETS, CalciumModel, indicator_preset
from acquisition.sim.config import MouseConfig, SimConfig
from acquisition.sim.mouse import SimMouse
from acquisition.sim.traces import TraceSim


def test_baseline_rates_are_realistic_and_cells_correlated():
    mouse = SimMouse(MouseConfig(learning_rule="none"), 60, 30.0, seed=1)
    assert 0.3 < np.median(mouse.base_rate_hz) < 1.2
    counts = np.zeros((18000, 60))
    for t in range(18000):
        counts[t] = mouse.step()
    rates = counts.sum(0) / (18000 / 30.0)
    assert 0.3 < np.median(rates) < 1.5
    binned = counts.reshape(-1, 30, 60).sum(1)  # 1 s bins
    c = np.corrcoef(binned.T)
    pairs = c[np.triu_indices(60, 1)]
    assert 0.02 < np.nanmean(pairs) < 0.4  # shared latent fluctuations: weak positive correlations
    assert np.nanstd(pairs) > 0.02  # ... that differ between pairs


def closed_loop(mouse: SimMouse, frames: int, contingent: bool = True, feedback: bool = True) -> np.ndarray:
    """A toy rig around the mouse: the tone follows cells 0-1 up and cell 2 down; a reward when it is high
    (``contingent``, at most one per 3 s) or at random, about one per 10 s (yoked). Returns the tone."""
    rng = np.random.default_rng(0)
    fps = mouse.frame_rate_hz
    decay = np.exp(-1.0 / (0.3 * fps))  # the tone follows spikes with a 0.3 s memory
    refractory = round(3.0 * fps)
    level = 0.0
    last = -refractory
    tones = np.zeros(frames)
    for t in range(frames):
        spikes = mouse.step()
        level = decay * level + float(spikes[0] + spikes[1] - spikes[2])
        tone = min(max(0.3 + 0.2 * level, 0.0), 1.0)
        tones[t] = tone
        if feedback:
            mouse.on_feedback(tone)
        if (tone >= 0.7 and t - last >= refractory) if contingent else (rng.random() < 0.1 / fps):
            mouse.on_reward()
            last = t
    return tones


def test_vectorized_credit_finds_the_cells_that_move_the_tone_without_being_told():
    cfg = MouseConfig(learning_rule="vectorized", learning_rate_vectorized=0.5)
    mouse = SimMouse(cfg, 8, 10.0, seed=2)  # no ensembles given: role is all zero
    closed_loop(mouse, 20 * 60 * 10)
    w = mouse.forward_model
    assert w[0] > 0 and w[1] > 0 and w[2] < 0  # its forward model: how each cell moves the tone
    assert mouse.value > 0  # a high tone predicts reward
    assert mouse.drive_hz[0] > 1.0 and mouse.drive_hz[1] > 1.0 and mouse.drive_hz[2] < -0.5
    targets = np.array([mouse.drive_hz[0], mouse.drive_hz[1], -mouse.drive_hz[2]])
    assert targets.mean() > 2.0 * np.abs(mouse.drive_hz[3:]).mean()  # the others learn far less


def test_yoked_rewards_give_the_tone_no_value_and_teach_nothing():
    cfg = MouseConfig(learning_rule="vectorized", learning_rate_vectorized=0.5)
    mouse = SimMouse(cfg, 8, 10.0, seed=2)
    closed_loop(mouse, 20 * 60 * 10, contingent=False)
    assert mouse.rewards_received > 100
    assert mouse.forward_model[0] > 0  # it still hears what its cells do...
    assert mouse.value == 0.0
    assert np.all(np.abs(mouse.drive_hz) < 0.4)  # ...but nothing makes a high tone worth pursuing


def test_learning_never_reads_the_declared_ensembles():
    """The roles label cells for reports only: the same mouse learns the same with any labels."""
    drives = []
    for up, down in (([0, 1], [2]), ([], [])):
        for rule in ("vectorized", "scalar"):
            mouse = SimMouse(MouseConfig(learning_rule=rule, learning_rate_vectorized=0.5), 8, 10.0, seed=3,
                             up=up, down=down)
            closed_loop(mouse, 3000)
            drives.append((rule, mouse.drive_hz.copy()))
    for rule in ("vectorized", "scalar"):
        same = [d for r, d in drives if r == rule]
        assert np.any(same[0] != 0)
        np.testing.assert_array_equal(same[0], same[1])


def test_scalar_rule_is_reward_modulated_hebbian():
    cfg = MouseConfig(learning_rule="scalar", learning_rate_scalar=0.2)
    mouse = SimMouse(cfg, 6, 30.0, seed=3, up=[0], down=[1])
    elig = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    mouse.eligibility[:] = elig
    mouse.reward_mean = 0.1
    mouse.on_reward()
    mouse.step()
    # d drive = eta * (R - R_bar) * eligibility, for every cell: the reward is a global signal
    np.testing.assert_allclose(mouse.drive_hz, 0.2 * 0.9 * elig)
    before = mouse.drive_hz.copy()
    mouse.eligibility[:] = elig
    mouse.step()  # no reward: R - R_bar < 0 moves drive against the eligibility
    assert np.all(np.sign(mouse.drive_hz - before)[elig != 0] == -np.sign(elig[elig != 0]))


def test_learned_drive_decays_and_shares_a_budget():
    """Homeostasis: drive decays toward 0 with forgetting_tau_s, and the summed |drive| is capped, so drive on
    cells that do not matter is paid for by the cells that do."""
    cfg = MouseConfig(learning_rule="scalar", learning_rate_scalar=1.0, forgetting_tau_s=10.0, drive_budget_hz=4.0)
    mouse = SimMouse(cfg, 6, 10.0, seed=3)
    mouse.drive_hz[:] = [1.0, -1.0, 0.5, 0.0, 0.0, 0.5]  # 3 Hz in all: under the budget
    mouse.step()  # no reward expected, none received: only the decay acts
    np.testing.assert_allclose(mouse.drive_hz, np.array([1.0, -1.0, 0.5, 0.0, 0.0, 0.5]) * math.exp(-0.1 / 10.0))
    mouse.eligibility[:] = [0.0, 0.0, 0.0, 10.0, -10.0, 0.0]
    mouse.reward_mean = 0.0
    mouse.on_reward()
    mouse.step()  # +10 Hz on two cells would take 23 Hz in all: everything is scaled to the 4-Hz budget
    assert np.abs(mouse.drive_hz).sum() == pytest.approx(4.0)
    assert abs(mouse.drive_hz[0]) < 0.5 * math.exp(-0.1 / 10.0)  # the old drive lost most of its share


def test_no_learning_rule_ignores_rewards():
    mouse = SimMouse(MouseConfig(learning_rule="none"), 8, 30.0, seed=4, up=[0], down=[1])
    for _ in range(50):
        mouse.on_reward()
        mouse.step()
    assert np.all(mouse.drive_hz == 0.0)
    assert mouse.rewards_received == 50


def test_without_feedback_vectorized_credit_is_eligibility_times_reward_error():
    cfg = MouseConfig(learning_rule="vectorized", learning_rate_vectorized=0.2)
    mouse = SimMouse(cfg, 6, 30.0, seed=5)
    elig = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    mouse.eligibility[:] = elig
    mouse.reward_mean = 0.1
    mouse.on_reward()
    mouse.step()  # nothing perceived: each cell's own eligibility at the reward is its only credit
    np.testing.assert_allclose(mouse.drive_hz, 0.2 * 0.9 * elig)


def test_feedback_is_used_only_when_enabled():
    for use in (False, True):
        mouse = SimMouse(MouseConfig(learning_rule="vectorized", use_feedback=use), 4, 30.0, seed=5)
        mouse.on_feedback(0.1)
        mouse.step()
        for _ in range(30):
            mouse.on_feedback(0.9)
            mouse.step()
        assert (0.1 < mouse.feedback_mean < 0.9) == use
        assert math.isnan(mouse.feedback_mean) != use


def test_a_reward_starts_a_lick_bout_after_the_latency():
    cfg = MouseConfig(learning_rule="none", lick_latency_s=0.1, lick_bout_s=1.0, lick_rate_hz=7.0,
                      spontaneous_lick_rate_hz=0.0)
    mouse = SimMouse(cfg, 4, 30.0, seed=7)
    mouse.on_reward()
    licking, push = [], []
    for _ in range(90):
        mouse.step()
        licking.append(mouse.licking)
        push.append(mouse.lick_displacement)
    assert licking[:3] == [0.0, 0.0, 0.0] and licking[3] == 1.0  # 0.1 s at 30 Hz
    assert sum(licking) == 30  # one second of licking
    assert min(push) >= 0.0 and max(push) <= 1.0 and max(push) > 0.9


def test_attempts_with_learned_drive_raise_target_rates():
    mouse = SimMouse(MouseConfig(learning_rule="none", bout_rate_hz=1.0), 6, 30.0, seed=6, up=[0], down=[1])
    mouse.drive_hz[:] = [8.0, -8.0, 0, 0, 0, 0]
    in_bout, out_bout = [], []
    for _ in range(6000):
        mouse.step()
        (in_bout if mouse.bout else out_bout).append(mouse.rates_hz.copy())
    in_bout, out_bout = np.array(in_bout), np.array(out_bout)
    assert in_bout[:, 0].mean() > out_bout[:, 0].mean() + 5.0
    assert in_bout[:, 1].mean() < out_bout[:, 1].mean()
    assert in_bout[:, 2].mean() == pytest.approx(out_bout[:, 2].mean(), abs=1.0)


def test_ensembles_are_checked():
    mouse = SimMouse(MouseConfig(), 5, 30.0)
    with pytest.raises(ValueError, match=r"outside 0\.\.4"):
        mouse.set_ensembles([5], [])
    with pytest.raises(ValueError, match="both"):
        mouse.set_ensembles([1, 2], [2])
    mouse.set_ensembles([3], [4])
    assert list(mouse.role) == [0, 0, 0, 1, -1]


@pytest.mark.parametrize("code", sorted(INDICATOR_PRESETS))
def test_single_spike_gives_the_published_amplitude(code):
    ind = indicator_preset(code)
    model = CalciumModel(ind, 1, 1000.0)  # fine time steps to see the true peak
    trace = [model.step(np.array([1.0 if t == 0 else 0.0]))[0] for t in range(3000)]
    peak, at = max(trace), int(np.argmax(trace))
    assert peak == pytest.approx(ind.single_ap_dff, rel=0.12)
    t_half = np.argmax(np.array(trace[at:]) < peak / 2) / 1000.0
    assert t_half == pytest.approx(ind.tau_decay_s * np.log(2), rel=0.2)


def test_indicator_saturates_and_kinetics_differ():
    burst = CalciumModel(indicator_preset("6s"), 1, 30.0)
    dff = [burst.step(np.array([20.0]))[0] for _ in range(30)]
    assert max(dff) < indicator_preset("6s").dff_max
    assert dff[-1] - dff[-2] < dff[1] - dff[0]  # sublinear growth: saturation
    with pytest.raises(ValueError, match="unknown indicator"):
        indicator_preset("9x")


def test_trace_sim_gives_extraction_like_traces():
    sim = TraceSim(SimConfig(n_cells=12, seed=9), 30.0, up=[0, 1], down=[2, 3])
    F = np.zeros((3000, 12))
    Fneu = np.zeros((3000, 12))
    for t in range(3000):
        f, fn = sim.step()
        F[t], Fneu[t] = f, fn
    assert np.all(F.mean(0) > Fneu.mean(0))  # somata are brighter than their neuropil
    corrected = F - 0.7 * Fneu
    f0 = np.percentile(corrected, 10, axis=0)
    dff = (corrected - f0) / f0
    assert np.all(dff.max(0) > 0.3)  # calcium transients stand out of the noise
    assert np.all(np.median(dff, 0) < 0.2)


def test_gcamp_response_is_supralinear_then_saturates():
    """Hill binding: two spikes give more than twice one spike's dF/F; many spikes approach dff_max."""
    for code in ("6f", "6s"):
        ind = indicator_preset(code)
        model = CalciumModel(ind, 4, 1000.0)
        peaks = np.zeros(4)
        for t in range(2000):
            dff = model.step(np.array([1.0, 2.0, 3.0, 200.0]) if t == 0 else np.zeros(4))
            np.maximum(peaks, dff, out=peaks)
        assert peaks[1] > 2.1 * peaks[0] and peaks[2] > 3.3 * peaks[0]
        assert 0.8 * ind.dff_max < peaks[3] < ind.dff_max
    assert indicator_preset("6s").hill_n > indicator_preset("6f").hill_n  # per indicator, as published


def test_neuropil_varies_across_the_field():
    """Far-apart ROIs see different neuropil, neighbours nearly the same; sigma 0 is one global level."""
    n = 40
    cfg = SimConfig(n_cells=n, seed=4, neuropil_sigma_px=100.0)
    sim = TraceSim(cfg, 30.0)
    levels = np.zeros((3000, n))
    for t in range(3000):
        sim.step()
        levels[t] = sim._level
    c = np.corrcoef(levels.T)
    d = np.hypot(*(sim.centers[:, None, :] - sim.centers[None, :, :]).transpose(2, 0, 1))
    near, far = c[(d < 60) & (d > 0)], c[d > 350]
    assert near.size and far.size
    assert np.mean(near) > np.mean(far) + 0.2
    assert np.ptp(levels.std(0)) > 0  # not one signal everywhere
    flat = TraceSim(SimConfig(n_cells=n, seed=4, neuropil_sigma_px=0.0), 30.0)
    for _ in range(50):
        flat.step()
    assert np.ptp(flat._level) == pytest.approx(0.0, abs=1e-12)


def test_licks_after_a_reward_move_the_rendered_field():
    from acquisition.sim.scope import SimScope

    cfg = SimConfig(height_px=64, width_px=64, n_cells=6, seed=1, motion_walk_sd_px=0.0, jump_rate_hz=0.0,
                    drift_px_per_min=0.0, lick_motion_px=1.5,
                    mouse=MouseConfig(learning_rule="none", spontaneous_lick_rate_hz=0.0))
    scope = SimScope(cfg, 30.0)
    buf = np.empty(scope.shape, np.uint16)
    for _ in range(10):
        scope.render(buf)
    still = scope.truth()["shifts"]
    assert np.all(still == still[0])  # no licks, no motion
    scope.mouse.on_reward()
    for _ in range(30):
        scope.render(buf)
    moved = np.hypot(*(scope.truth()["shifts"][10:] - still[0]).T)
    assert 1.2 < moved.max() <= 1.5 + 1e-6  # a lick pushes the brain by up to lick_motion_px
