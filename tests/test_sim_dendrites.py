"""The simulator's second plane: apical dendrites whose specific events carry the learning rule's own signal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from acquisition.config import AcquisitionConfig
from acquisition.sim.config import DendriteConfig, MouseConfig, SimConfig
from acquisition.sim.export import export_movie
from acquisition.sim.source import SimSource
from acquisition.sim.traces import TraceSim
from rig.core.clock import now_ns
from rig.core.safe_npy import load_npy

FPS = 10.0


def toy_session(sim: TraceSim, frames: int, feedback: bool = True) -> dict[str, np.ndarray]:
    """A toy rig around the simulated mouse (as tests/test_sim_mouse.py): the tone follows cells 0-1 up and
    cell 2 down, a reward when it is high (at most one per 3 s). Records the dendrites' truth per frame."""
    mouse = sim.mouse
    d = sim.dendrites
    assert d is not None
    decay = np.exp(-1.0 / (0.3 * FPS))
    refractory = round(3.0 * FPS)
    level, last = 0.0, -refractory
    nd = d.layout.n
    rec = {key: np.zeros((frames, nd)) for key in ("instructive", "events", "rate", "credit_value", "dff", "dff_bap",
                                                   "bap", "soma_dff", "spikes")}
    rec["reward"] = np.zeros(frames, bool)
    for t in range(frames):
        sim.step()
        rec["instructive"][t] = d.instructive
        rec["events"][t] = d.events
        rec["rate"][t] = d.rate_hz
        rec["credit_value"][t] = (mouse.credit * mouse.value)[d.layout.parent]
        rec["dff"][t] = d.dff
        rec["dff_bap"][t] = d.dff_bap
        rec["bap"][t] = d.bap
        rec["soma_dff"][t] = sim.calcium.dff[d.layout.parent]
        rec["spikes"][t] = mouse.spikes[d.layout.parent]
        spikes = mouse.spikes
        level = decay * level + float(spikes[0] + spikes[1] - spikes[2])
        tone = min(max(0.3 + 0.2 * level, 0.0), 1.0)
        if feedback:
            mouse.on_feedback(tone)
        if tone >= 0.7 and t - last >= refractory:
            mouse.on_reward()
            rec["reward"][t] = True
            last = t
    return rec


def two_planes(rule: str, seed: int = 2, up: tuple[int, ...] = (), down: tuple[int, ...] = (),
               **dendrites: float) -> TraceSim:
    cfg = SimConfig(seed=seed, n_cells=10, n_planes=2,
                    mouse=MouseConfig(learning_rule=rule, learning_rate_vectorized=0.5),
                    dendrites=DendriteConfig(**{"fraction": 1.0, "event_rate_hz": 0.3, **dendrites}))
    return TraceSim(cfg, FPS, up=up, down=down)


def test_vectorized_dendrite_events_follow_each_cells_own_credit_not_the_roles():
    sim = two_planes("vectorized")  # no ensembles given: the mouse must find the cells that move the tone
    rec = toy_session(sim, 20 * 60 * 10)
    inst, cv = rec["instructive"], rec["credit_value"]
    # the signal is the rule's own per-cell error: credit x tone value while it learns, else nothing
    learning = np.any(inst != 0, axis=1)
    assert learning.sum() > 1000
    np.testing.assert_allclose(inst[learning], cv[learning], rtol=1e-12, atol=0)
    assert np.all(inst[~learning] == 0)
    mean_credit = cv[learning].mean(axis=0)
    big = np.abs(mean_credit).max()
    up_ish, down_ish = mean_credit > 0.25 * big, mean_credit < -0.25 * big
    assert up_ish[[0, 1]].all() and down_ish[2]  # it found the toy's up cells and its down cell
    base = sim.cfg.dendrites.event_rate_hz / FPS
    rate_learning = rec["events"][learning].mean(axis=0)
    # opposite signs: up-ish cells' dendrites fire more than at base, down-ish cells' less
    assert rate_learning[up_ish].mean() > 1.4 * base
    assert rate_learning[down_ish].mean() < 0.75 * base
    assert np.corrcoef(mean_credit, rate_learning)[0, 1] > 0.6
    # the same mouse labelled with other ensembles makes the same dendritic events: roles are never read
    a = toy_session(two_planes("vectorized"), 2500)["events"]
    b = toy_session(two_planes("vectorized", up=(2,), down=(0, 1)), 2500)["events"]
    assert a.sum() > 0
    np.testing.assert_array_equal(a, b)


def test_scalar_signal_is_shared_and_none_is_unmodulated():
    sim = two_planes("scalar")
    rec = toy_session(sim, 10 * 60 * 10)
    inst = rec["instructive"]
    assert np.all(inst == inst[:, :1])  # one signal for every cell: the rule's reinforcement r (per second)
    assert np.all(rec["rate"] == rec["rate"][:, :1])
    rewarded = np.flatnonzero(rec["reward"])
    assert rewarded.size > 50 and np.all(inst[rewarded[rewarded + 1 < len(inst)] + 1, 0] > 0)  # credited next step
    after = np.zeros(len(inst), bool)
    for t in rewarded:
        after[t + 1 : t + 1 + round(FPS)] = True  # the second after each reward (credited at the next step)
    events = rec["events"].mean(axis=1)
    assert events[after].mean() > 1.4 * events[~after].mean()

    sim = two_planes("none")
    rec = toy_session(sim, 6000)
    assert np.all(rec["instructive"] == 0) and np.all(rec["rate"] == sim.cfg.dendrites.event_rate_hz)
    expected = sim.cfg.dendrites.event_rate_hz / FPS * rec["events"].size
    assert abs(rec["events"].sum() - expected) < 4 * np.sqrt(expected)


def test_bap_component_follows_the_soma_and_events_add_the_rest():
    sim = two_planes("none", seed=5, event_rate_hz=0.05)
    rec = toy_session(sim, 6000, feedback=False)
    d = sim.dendrites
    assert d is not None
    # the back-propagated part is the parent soma's own spikes, attenuated
    np.testing.assert_array_equal(rec["bap"], sim.cfg.dendrites.bap_attenuation * rec["spikes"])
    nd = d.layout.n
    own = [np.corrcoef(rec["dff_bap"][:, j], rec["soma_dff"][:, j])[0, 1] for j in range(nd)]
    other = [np.corrcoef(rec["dff_bap"][:, j], rec["soma_dff"][:, (j + 1) % nd])[0, 1] for j in range(nd)]
    assert min(own) > 0.9 and max(other) < 0.5
    residual = rec["dff"] - rec["dff_bap"]
    ev = rec["events"] > 0
    recent = np.zeros_like(ev)
    for lag in range(round(5 * FPS)):  # an event within the last 5 s
        recent[lag:] |= ev[: len(ev) - lag]
    assert ev.sum() > 10
    assert residual[ev].min() > 0.1  # an event adds calcium the somatic spikes cannot explain...
    assert np.abs(residual[~recent]).max() < 0.02  # ...and without one the dendrite is the bAP component


def still(**kw: float) -> SimConfig:
    return SimConfig(**{"height_px": 128, "width_px": 128, "n_cells": 16, "realtime": False, "motion_walk_sd_px": 0.0,
                        "jump_rate_hz": 0.0, "drift_px_per_min": 0.0, "lick_motion_px": 0.0, "seed": 4, **kw})


def test_plane1_frames_show_the_dendrites_at_the_truth_positions(tmp_path):
    n_vol = 150
    cfg = still(n_planes=2, dendrites=DendriteConfig(event_rate_hz=3.0, event_amplitude=6.0, fraction=0.5))
    src = SimSource(cfg, 30.0, up=[0, 1], down=[2, 3])
    assert src.n_planes == 2
    with src:  # (a frame's buffer is reused after 4 reads: keep copies)
        frames = []
        for _ in range(2 * n_vol):
            f = src.read(1.0)
            assert f is not None
            frames.append(replace(f, data=f.data.copy()))
    assert [f.plane for f in frames[:4]] == [0, 1, 0, 1]
    assert [f.number for f in frames] == [k // 2 for k in range(2 * n_vol)]
    assert all(f.scope_time_s > g.scope_time_s for g, f in zip(frames[::2], frames[1::2], strict=True))
    plane1 = np.stack([f.data for f in frames[1::2]]).astype(np.float64)
    one = SimSource(still(), 30.0, up=[0, 1], down=[2, 3])
    with one:
        first = one.read(1.0).data.copy()
    with SimSource(cfg, 30.0, up=[0, 1], down=[2, 3]) as again:
        np.testing.assert_array_equal(again.read(1.0).data, first)  # plane 0 is the one-plane sim's, bit for bit

    folder = src.write_ground_truth(tmp_path / "p1", plane=1)
    assert folder.name == "plane1"
    stat = load_npy(folder / "stat.npy")
    kind, parent = load_npy(folder / "roi_kind.npy"), load_npy(folder / "roi_parent.npy")
    truth = np.load(tmp_path / "p1" / "ground_truth.npz")
    assert kind.dtype == np.int8 and np.all(kind == 1) and parent.dtype == np.int32
    np.testing.assert_array_equal(parent, truth["parent"])
    assert {0, 1, 2, 3} <= set(parent.tolist()) and len(parent) < 16  # every ensemble cell, some others
    assert truth["F_true"].shape == (n_vol, len(parent)) and truth["events"].sum() > 0
    # each dendrite's ROI in the plane-1 frames follows its true fluorescence, and is brighter than around it
    mean_img = plane1.mean(axis=0)
    corrs, contrast = [], []
    for j, s in enumerate(stat):
        trace = (plane1[:, s["ypix"], s["xpix"]] * s["lam"]).sum(axis=1) / s["lam"].sum()
        corrs.append(np.corrcoef(trace, truth["F_true"][:, j])[0, 1])
        cy, cx = truth["centers"][j]
        yy, xx = np.mgrid[0:128, 0:128]
        ring = (np.hypot(yy - cy, xx - cx) > 6) & (np.hypot(yy - cy, xx - cx) < 10)
        contrast.append(mean_img[int(round(cy)), int(round(cx))] - np.median(mean_img[ring]))
    assert np.median(corrs) > 0.5 and np.mean(np.array(contrast) > 0) > 0.8
    # the tissue is built at start: a later ensemble cell without a dendrite is reported, not ignored
    lacking = sorted(set(range(16)) - set(parent.tolist()))[0]
    src.pop_warnings()
    src.set_ensembles([0, lacking], [2])
    assert any(code == "sim_ensembles" and f"[{lacking}]" in msg for code, msg in src.pop_warnings())


def test_export_writes_both_planes(tmp_path):
    summary = export_movie(still(n_planes=2), tmp_path, 6, progress=False, up=[0], down=[1])
    one = export_movie(still(), tmp_path / "one", 6, progress=False, up=[0], down=[1])
    assert "plane1" not in one
    assert (tmp_path / "suite2p" / "plane0" / "data.bin").read_bytes() == \
        (tmp_path / "one" / "suite2p" / "plane0" / "data.bin").read_bytes()
    p1 = tmp_path / "plane1" / "suite2p" / "plane1"
    n_d = summary["plane1"]["n_dendrites"]
    assert (p1 / "data.bin").stat().st_size == 6 * 128 * 128 * 2
    assert len(load_npy(p1 / "stat.npy")) == n_d == len(load_npy(p1 / "roi_parent.npy"))
    assert np.load(tmp_path / "plane1" / "ground_truth.npz")["events"].shape == (6, n_d)


def test_config_planes_and_dendrite_parameters():
    assert AcquisitionConfig(sim=SimConfig(n_planes=2)).n_planes == 2  # the sim's planes are the rig's
    assert AcquisitionConfig(n_planes=2).sim.n_planes == 2
    with pytest.raises(ValueError, match="1 or 2 planes"):
        AcquisitionConfig(n_planes=3)
    with pytest.raises(ValueError, match="n_planes"):
        SimConfig(n_planes=3)
    with pytest.raises(ValueError, match="dendrites.event_rate_hz"):
        DendriteConfig(event_rate_hz=-1.0)
    with pytest.raises(ValueError, match="dendrites.fraction"):
        DendriteConfig(fraction=1.5)
    one = TraceSim(SimConfig(n_cells=10), FPS)
    assert one.dendrites is None and one.mouse.instructive is None  # one plane: nothing new is computed
    two = TraceSim(SimConfig(n_cells=10, n_planes=2), FPS)
    for _ in range(50):
        f1, n1 = one.step()
        f2, n2 = two.step()
        np.testing.assert_array_equal(f1, f2)  # plane 0 is bit for bit the one-plane sim
        np.testing.assert_array_equal(n1, n2)
    assert two.dend_F.shape == two.dend_parent.shape and np.all(two.dend_F > two.dend_Fneu * 0.5)


def test_real_time_two_planes_are_paced_within_the_volume():
    src = SimSource(still(realtime=True, n_planes=2, height_px=64, width_px=64, n_cells=6), 10.0, up=[0], down=[1])
    with src:
        t0 = now_ns()
        frames = []
        while len(frames) < 4:
            f = src.read(1.0)
            if f is not None:
                frames.append((f.plane, f.number, (f.t_ready_ns - t0) / 1e9))
    assert [(p, n) for p, n, _ in frames] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    # plane p of volume v is complete at (v + (p + 1) / 2) / 10 Hz: 0.05, 0.1, 0.15, 0.2 s
    for k, (_, _, t) in enumerate(frames):
        assert t >= 0.05 * (k + 1) - 0.005
    assert frames[-1][2] < 1.0
