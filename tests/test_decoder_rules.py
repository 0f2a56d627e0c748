"""The task's trust rules: bad frames hold the cursor, one crossing gives one reward, return-to-baseline
starts no trial it could not hit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoder.config import DecoderConfig, TaskConfig
from decoder.engine import DecoderEngine
from decoder.trial import Event, TrialMachine, TrialTiming
from rig.core.codes import FrameFlag, Mode, TrialState
from tests.test_decoder_engine import F0, FPS, controlled, kinds, put

LOW_CORR = int(FrameFlag.LOW_CORR)


def put_flagged(eng: DecoderEngine, frame: int, u: float, flags: int):
    return eng.step(frame, np.array([F0 * (1.0 + u), F0]), np.zeros(2), flags)


# ------------------------------------------------------------------ bad frames


def test_a_bad_frame_holds_the_cursor_counts_and_cannot_hit():
    eng = controlled(iti_s=0.0, trial_s=0.5)  # trial of 5 frames, threshold 0.5
    res = put(eng, 0, 0.2)
    held = res.cursor
    f0_before = eng._dff.f0.copy()
    window_before = eng._dff.running.count
    res = put_flagged(eng, 1, 0.9, LOW_CORR)  # above threshold, but the frame is bad
    assert kinds(res) == ["bad_frame"] and res.events[0].detail == {"flags": LOW_CORR}
    assert res.cursor == held and not res.reward_request and np.isnan(res.dff).all()
    assert res.trial_state == TrialState.TRIAL
    assert np.array_equal(eng._dff.f0, f0_before) and eng._dff.running.count == window_before
    res = put_flagged(eng, 2, 5.0, int(FrameFlag.SATURATED))  # a run: one event for it
    assert kinds(res) == [] and res.cursor == held and eng.bad_frames == 2
    put_flagged(eng, 3, 0.9, LOW_CORR)
    res = put(eng, 4, 0.0)  # the trial's 5th frame: the bad frames took their time, the trial ends on schedule
    assert kinds(res) == ["miss"] and eng.hits == 0


def test_informational_flags_are_not_bad_and_the_set_is_configurable():
    eng = controlled(iti_s=0.0)
    res = put_flagged(eng, 0, 0.9, int(FrameFlag.AFTER_GAP | FrameFlag.NOT_REGISTERED))
    assert res.reward_request and eng.bad_frames == 0
    with pytest.raises(ValueError, match="unknown flag.*'BLURRY'"):
        DecoderConfig(bad_frame_flags=["BLURRY"])
    assert DecoderConfig(bad_frame_flags=[]).bad_frame_mask == 0
    assert DecoderConfig().bad_frame_mask & LOW_CORR


def test_the_cursor_after_a_bad_run_continues_from_the_smoothing_window_as_if_it_were_not_there():
    """With a 3-frame running mean, good frames a, b, [bad], c give mean(a, b, c): the bad frame is not in it."""
    dcfg = DecoderConfig(up=[0], down=[1], smoothing_frames=3, f0_window_s=100.0)
    cursors = {}
    for with_bad in (False, True):
        eng = DecoderEngine(dcfg, TaskConfig(auto_protocol=False), 2, FPS)
        frame = 0
        for u in (0.1, 0.2, 0.3, 0.4):
            if with_bad and u == 0.3:
                put_flagged(eng, frame, 9.0, LOW_CORR)
                frame += 1
            res = put(eng, frame, u)
            frame += 1
        cursors[with_bad] = res.cursor
    assert cursors[True] == cursors[False]


def test_bad_frames_are_left_out_of_the_baseline():
    dcfg = DecoderConfig(up=[0], down=[1], f0_window_s=10.0)
    eng = DecoderEngine(dcfg, TaskConfig(auto_protocol=False, baseline_s=2.0), 2, FPS)  # 20 frames
    eng.start_baseline()
    done = None
    for f in range(25):
        res = put_flagged(eng, f, 0.1 * (f % 3), LOW_CORR if f in (3, 4, 5) else 0)
        done = done or next((e for e in res.events if e.kind == "baseline_done"), None)
    assert done is not None and done.frame == 22 and done.detail["bad_frames"] == 3 and eng.mode == Mode.IDLE


# ------------------------------------------------------------------ one crossing, one reward


def run(machine: TrialMachine, cursors: list[float]) -> list[tuple[bool, list[str]]]:
    out = []
    for frame, c in enumerate(cursors):
        events: list[Event] = []
        out.append((machine.step(frame, c, True, events), [e.kind for e in events]))
    return out


def test_a_cursor_that_stays_up_earns_one_reward_whatever_the_timing():
    """The issue's case: an 8-s crossing gave two rewards with the default timings (hold 1 s, ITI 5 s)."""
    t = TrialTiming(trial_frames=300, iti_frames=50, hold_frames=10, timeout_frames=30)  # at 10 Hz
    m = TrialMachine(t, 1.0)
    rows = run(m, [0.0] * 50 + [2.0] * 80 + [0.0] * 5 + [2.0] * 3)
    hits = [i for i, (hit, _) in enumerate(rows) if hit]
    assert hits == [50, 135]  # the crossing's first frame; then only after the cursor came back down
    m = TrialMachine(TrialTiming(trial_frames=5, iti_frames=0, hold_frames=1, timeout_frames=0), 1.0)
    rows = run(m, [2.0] * 10 + [0.5] + [2.0])
    assert [i for i, (hit, _) in enumerate(rows) if hit] == [0, 11]
    assert m.trial == 3 and m.misses == 1  # the trial in between ran and was missed


def test_configs_that_would_pay_one_crossing_repeatedly_are_refused_at_load():
    with pytest.raises(ValueError, match="`hold_s`/`iti_s`: both are 0"):
        TaskConfig(hold_s=0.0, iti_s=0.0)
    with pytest.raises(ValueError, match="less than one frame"):
        TrialTiming.from_config(TaskConfig(hold_s=0.01, iti_s=0.0), 30.0)


@pytest.mark.parametrize("holds", [True, False])
def test_return_to_baseline_starts_no_trial_until_rearmed(holds: bool):
    t = TrialTiming(trial_frames=4, iti_frames=2, hold_frames=1, timeout_frames=1, rtb_frames=2,
                    rtb_holds_trials=holds)
    m = TrialMachine(t, 1.0, rtb_level=0.5)
    cursors = [0.0, 0.0, 2.0] + [0.8] * 10 + [0.1, 0.1] + [0.0]
    rows = run(m, cursors)
    if holds:  # hit at 2, hold 3, ITI 4-5, then the ITI waits; re-armed at 14, trial 2 starts at 15
        assert rows[5][1] == ["rearm_wait"] and m.misses == 0
        assert rows[14][1] == ["rearmed"] and rows[15][1] == ["trial_start"] and m.trial == 2
    else:  # trials run on while unarmed: misses on which a hit was impossible
        assert m.misses >= 1 and "rearm_wait" not in [k for _, ks in rows for k in ks]
    assert sum(hit for hit, _ in rows) == 1


def test_a_long_gap_while_waiting_to_rearm_is_cheap_and_exact():
    t = TrialTiming(trial_frames=4, iti_frames=2, hold_frames=1, timeout_frames=1, rtb_frames=2)
    a, b = TrialMachine(t, 1.0, rtb_level=0.5), TrialMachine(t, 1.0, rtb_level=0.5)
    ea: list[Event] = []
    eb: list[Event] = []
    for frame, c in enumerate([0.0, 0.0, 2.0, 0.8, 0.8, 0.8, 0.8]):
        a.step(frame, c, True, ea)
        b.step(frame, c, True, eb)
    assert a.waiting
    a.skip(7, 1_000_000, ea)
    for frame in range(7, 1007):
        b.step(frame, math.nan, False, eb)
    b.skip(1007, 1_000_000 - 1000, eb)
    assert (a.state, a.trial, a.task_frames, a.waiting) == (b.state, b.trial, b.task_frames, b.waiting)
    assert a.task_frames == 7 + 1_000_000
    for m, ev in ((a, ea), (b, eb)):
        m.step(1_000_007, 0.1, True, ev)
        m.step(1_000_008, 0.1, True, ev)
        m.step(1_000_009, 2.0, True, ev)
    assert [(e.kind, e.frame) for e in ea] == [(e.kind, e.frame) for e in eb]
    assert ea[-1].kind == "hit" and ea[-1].frame == 1_000_009
