"""The simulated mouse's neurons and learning rules, and the GCaMP model."""

from __future__ import annotations

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


def test_vectorized_reward_pushes_each_target_along_its_role():
    cfg = MouseConfig(learning_rule="vectorized", learning_rate_vectorized=0.5, drive_max_hz=4.0)
    mouse = SimMouse(cfg, 10, 30.0, seed=2, up=[0, 1], down=[2, 3])
    mouse.on_reward()
    mouse.step()
    assert np.all(mouse.drive_hz[[0, 1]] == pytest.approx(0.5))
    assert np.all(mouse.drive_hz[[2, 3]] == pytest.approx(-0.5))
    assert np.all(mouse.drive_hz[4:] == 0.0)
    for _ in range(200):
        mouse.on_reward()
        mouse.step()
    assert np.all(mouse.drive_hz[[0, 1]] <= 4.0) and np.all(mouse.drive_hz[[0, 1]] > 3.9)
    assert mouse.rewards_received == 201
    assert mouse.state()["drive_up_hz"] > 3.9 and mouse.state()["drive_down_hz"] < -3.9


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


def test_no_learning_rule_ignores_rewards():
    mouse = SimMouse(MouseConfig(learning_rule="none"), 8, 30.0, seed=4, up=[0], down=[1])
    for _ in range(50):
        mouse.on_reward()
        mouse.step()
    assert np.all(mouse.drive_hz == 0.0)
    assert mouse.rewards_received == 50


def test_feedback_is_used_only_when_enabled():
    for use in (False, True):
        cfg = MouseConfig(learning_rule="vectorized", use_feedback=use, feedback_gain=5.0)
        mouse = SimMouse(cfg, 4, 30.0, seed=5, up=[0], down=[1])
        mouse.on_feedback(0.1)
        mouse.step()
        for _ in range(30):
            mouse.on_feedback(0.9)  # cursor well above its running mean
            mouse.step()
        assert (mouse.drive_hz[0] > 0) == use
        assert (mouse.drive_hz[1] < 0) == use


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
