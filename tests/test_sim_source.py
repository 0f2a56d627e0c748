"""The simulated scope behind the FrameSource interface, with the mouse listening to the bus."""

from __future__ import annotations

import math

import numpy as np
import pytest

from acquisition.config import AcquisitionConfig
from acquisition.process import feed_source, source_subscriptions
from acquisition.sim.config import MouseConfig, SimConfig
from acquisition.sim.source import SimSource
from acquisition.sources.registry import make_source, registration
from acquisition.validate import FrameFlag
from rig.core.clock import now_ns
from rig.core.schema import Codec, Decision, FeedbackUpdate, RewardOutcome, TrialEvent


def small(**kw) -> SimConfig:
    return SimConfig(**{"height_px": 96, "width_px": 96, "n_cells": 12, **kw})


def outcome(status: str) -> RewardOutcome:
    return RewardOutcome(request_id="r1", status=status, reason="", volume_ul=2.0, open_ms=5.0, source="decoder")


def decision(cursor_norm: float) -> Decision:
    return Decision(frame=1, t_ready=0, t_registered=0, t_extracted=0, t_received=0, t_decided=0, mode=2, trial=1,
                    trial_state=1, up=0.0, down=0.0, cursor=0.0, cursor_norm=cursor_norm, tone_hz=0.0,
                    angle_bin=0, reward_requested=False)


def test_as_fast_as_possible_frames_in_order():
    src = SimSource(small(realtime=False), 30.0, up=[0], down=[1])
    assert src.shape == (96, 96) and src.dtype == np.uint16 and src.frame_rate_hz == 30.0
    assert src.link_state() == "waiting"
    with pytest.raises(RuntimeError, match="before open"):
        src.read(0.1)
    with src:
        assert src.link_state() == "ok"
        frames = [src.read(1.0) for _ in range(10)]
        assert [f.number for f in frames] == list(range(10))
        assert all(f.data.shape == (96, 96) and f.data.dtype == np.uint16 for f in frames[-3:])
        stamps = [f.t_ready_ns for f in frames]
        assert stamps == sorted(stamps)
        assert all(abs(f.scope_time_s - f.number / 30.0) < 0.01 for f in frames)
        assert src.stats()["frames"] == 10 and src.stats()["frames_dropped"] == 0
    assert src.link_state() == "ended"


def test_real_time_frame_is_not_handed_out_before_it_is_scanned():
    src = SimSource(small(realtime=True), 2.0, up=[], down=[])  # 2 Hz: frame 0 is complete 0.5 s after open
    src.open()
    t_open = now_ns()
    assert src.read(0.0) is None  # not yet scanned
    frame = src.read(5.0)
    assert frame is not None and frame.number == 0
    assert frame.t_ready_ns - t_open >= 0.45e9
    src.close()


def test_a_reader_too_far_behind_loses_frames():
    # 4 Hz, so that a slow test machine does not lose frames of its own between the reads below
    src = SimSource(small(realtime=True, max_lag_frames=2), 4.0, up=[], down=[])
    src.open()
    src._start_clock()
    src._t0_ns -= 50_000_000_000  # as if the reader had been busy for 50 s (200 frames)
    frame = src.read(1.0)
    assert frame.number >= 195
    assert frame.flags & FrameFlag.AFTER_GAP
    assert src.stats()["frames_dropped"] == frame.number
    codes = [code for code, _ in src.pop_warnings()]
    assert codes == ["sim_frames_lost"]
    nxt = src.read(1.0)
    assert nxt.number == frame.number + 1 and nxt.flags == 0
    # the lost frames were still simulated: their ground truth exists
    assert src.scope.truth()["shifts"].shape[0] == nxt.number + 1
    src.close()


def test_time_between_open_and_first_read_loses_no_frames(monkeypatch):
    # configure() opens the source long before the session starts; the scope starts at the first read
    import acquisition.sim.source as source_module

    src = SimSource(small(realtime=True, max_lag_frames=2), 4.0, up=[], down=[])
    src.open()
    real_now = source_module.now_ns
    monkeypatch.setattr(source_module, "now_ns", lambda: real_now() + 10_000_000_000)  # 10 s later
    first = src.read(1.0)
    assert first is not None and first.number == 0 and first.flags == 0
    assert src.stats()["frames_dropped"] == 0
    src.close()


def test_delivered_rewards_reach_the_mouse():
    cfg = small(realtime=False, mouse=MouseConfig(learning_rule="vectorized", learning_rate_vectorized=0.5))
    src = SimSource(cfg, 30.0, up=[0, 1], down=[2])
    src.open()
    src.on_bus_message(outcome("failed"))
    src.on_bus_message(outcome("refused"))
    src.read(1.0)
    assert src.scope.mouse.rewards_received == 0
    src.on_bus_message(outcome("delivered"))
    src.read(1.0)
    mouse = src.scope.mouse
    assert mouse.rewards_received == 1
    assert mouse.reward_mean > 0  # the reward entered its reward-prediction error
    # one reward teaches no roles (the mouse is not told the ensembles), but it starts a lick bout
    for _ in range(round(mouse.cfg.lick_latency_s * 30.0) + 2):
        src.read(1.0)
    assert mouse.licking == 1.0
    assert src.stats()["rewards_heard"] == 1
    src.close()


def presented(perceived: float) -> FeedbackUpdate:
    return FeedbackUpdate(frame=0, t_decided=0, t_flip=0, tone_hz=math.nan, orientation_deg=math.nan,
                          perceived=perceived)


def test_cursor_feedback_only_when_enabled():
    """The mouse learns from what the feedback process presented (fbk.update), only with use_feedback."""
    for use in (False, True):
        cfg = small(realtime=False, mouse=MouseConfig(use_feedback=use, feedback_gain=50.0))
        src = SimSource(cfg, 30.0, up=[0], down=[1])
        src.open()
        src.on_bus_message(presented(0.0))
        src.read(1.0)
        for _ in range(10):
            src.on_bus_message(presented(1.0))
            src.read(1.0)
        heard = src.scope.mouse.feedback_mean  # the running mean of the tone it perceived
        assert (0.0 < heard < 1.0) if use else math.isnan(heard)
        assert src.stats()["feedback_heard"] == 11
        src.close()


def test_decisions_alone_are_no_feedback():
    """With no feedback process running the mouse perceives nothing of the cursor (learning without feedback)."""
    cfg = small(realtime=False, mouse=MouseConfig(use_feedback=True, feedback_gain=50.0))
    src = SimSource(cfg, 30.0, up=[0], down=[1])
    src.open()
    for value in (0.0, *[1.0] * 10):
        src.on_bus_message(decision(value))
        src.read(1.0)
    assert math.isnan(src.scope.mouse.feedback_mean)  # nothing perceived
    assert not src.scope.mouse.drive_hz[0] > 0
    assert src.stats()["feedback_heard"] == 0
    src.close()


def roles(src: SimSource) -> tuple[list[int], list[int]]:
    role = src.scope.mouse.role
    return [int(i) for i in np.flatnonzero(role > 0)], [int(i) for i in np.flatnonzero(role < 0)]


def test_set_ensembles_retargets_the_mouse_and_reports_bad_indices():
    src = SimSource(small(realtime=False), 30.0, up=[0], down=[1])
    src.set_ensembles([3, 4], [5])
    assert roles(src) == ([3, 4], [5])
    src.set_ensembles([99], [])
    src.set_ensembles([1], [1])
    warnings = src.pop_warnings()
    assert [code for code, _ in warnings] == ["sim_ensembles", "sim_ensembles"]
    assert "99" in warnings[0][1]
    assert roles(src) == ([3, 4], [5])  # unchanged by the bad ones


def over_the_bus(msg):
    """The message as the acquisition process receives it: encoded and decoded by the bus codec."""
    codec = Codec()
    return codec.decode(codec.encode(msg))


def ensembles_event(detail: dict) -> TrialEvent:
    return TrialEvent(kind="ensembles", trial=0, frame=41, t_ns=now_ns(), detail=detail)


def test_the_decoders_ensembles_event_retargets_the_simulated_mouse():
    """The live path of a set_ensembles command: the decoder applies it and publishes a dec.trial
    "ensembles" event; the acquisition process (subscribed because the sim follows ensembles) hands it on."""
    caps = registration("sim")
    processes, topics = source_subscriptions(caps)
    assert "decoder" in processes and TrialEvent.topic in topics
    src = make_source(AcquisitionConfig(source="sim", sim=small(realtime=False)), up=[0], down=[1])
    assert roles(src) == ([0], [1])
    feed_source(src, caps, over_the_bus(ensembles_event({"up": [3, 4], "down": [5]})))
    assert roles(src) == ([3, 4], [5])
    # a weighted decoder's event carries the ensembles its weights imply, and a flag
    feed_source(src, caps, over_the_bus(ensembles_event({"up": [6], "down": [], "weighted": True})))
    assert roles(src) == ([6], [])
    assert src.pop_warnings() == []


def test_other_trial_events_and_malformed_ensembles_leave_the_mouse_alone():
    caps = registration("sim")
    src = make_source(AcquisitionConfig(source="sim", sim=small(realtime=False)), up=[0], down=[1])
    feed_source(src, caps, over_the_bus(TrialEvent(kind="hit", trial=3, frame=50, detail={"up": [7]})))
    feed_source(src, caps, over_the_bus(ensembles_event({"up": [7]})))  # no "down"
    feed_source(src, caps, over_the_bus(ensembles_event({"up": ["7"], "down": []})))
    feed_source(src, caps, over_the_bus(ensembles_event({"up": [99], "down": []})))  # not a simulated cell
    assert roles(src) == ([0], [1])
    assert [code for code, _ in src.pop_warnings()] == ["ensembles_event", "ensembles_event", "sim_ensembles"]


def test_rewards_reach_the_mouse_through_the_process_relay():
    caps = registration("sim")
    cfg = small(realtime=False, mouse=MouseConfig(learning_rule="vectorized", learning_rate_vectorized=0.5))
    src = make_source(AcquisitionConfig(source="sim", sim=cfg), up=[0], down=[1])
    src.open()
    feed_source(src, caps, over_the_bus(outcome("delivered")))
    src.read(1.0)
    assert src.scope.mouse.rewards_received == 1
    src.close()


def test_ground_truth_passthrough_and_factory(tmp_path):
    acq = AcquisitionConfig(source="sim", frame_rate_hz=15.0, sim=small(realtime=False))
    src = make_source(acq, up=[0], down=[1])
    assert isinstance(src, SimSource) and src.frame_rate_hz == 15.0
    plane = src.write_ground_truth(tmp_path)
    assert (plane / "stat.npy").is_file() and (tmp_path / "ground_truth.npz").is_file()


def test_warns_once_when_ground_truth_history_is_full():
    src = SimSource(small(realtime=False, history_max_frames=5), 30.0, up=[], down=[])
    src.open()
    for _ in range(9):
        src.read(1.0)
    assert [code for code, _ in src.pop_warnings()] == ["sim_history_full"]
    src.close()
