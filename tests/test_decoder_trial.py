"""The trial state machine: ITI -> trial -> hit (hold) | miss (timeout), limits, return to baseline."""

from __future__ import annotations

import math

import pytest

from decoder.config import TaskConfig
from decoder.trial import Event, TrialMachine, TrialTiming
from rig.core.codes import TrialState

THR = 1.0
LOW, HIGH = 0.0, 2.0


def run(machine: TrialMachine, cursors, start: int = 0, valid=None):
    """Step the machine; return [(frame, state the frame was in, [event kinds], hit)]."""
    rows = []
    for i, c in enumerate(cursors):
        frame = start + i
        events: list[Event] = []
        state = machine.state
        ok = True if valid is None else valid[i]
        hit = machine.step(frame, c, ok, events)
        for e in events:
            assert e.frame == frame
        rows.append((frame, state, [e.kind for e in events], hit))
    return rows


def timing(**kw) -> TrialTiming:
    base = dict(trial_frames=5, iti_frames=3, hold_frames=2, timeout_frames=2)
    base.update(kw)
    return TrialTiming(**base)


def test_miss_then_timeout_then_iti_then_next_trial():
    m = TrialMachine(timing(), THR)
    rows = run(m, [LOW] * 16)
    states = [r[1] for r in rows]
    I, T, O = TrialState.ITI, TrialState.TRIAL, TrialState.TIMEOUT  # noqa: E741
    assert states == [I, I, I, T, T, T, T, T, O, O, I, I, I, T, T, T]
    kinds = {r[0]: r[2] for r in rows if r[2]}
    assert kinds == {0: ["iti"], 3: ["trial_start"], 7: ["miss"], 10: ["iti"], 13: ["trial_start"]}
    assert m.misses == 1 and m.hits == 0 and m.trial == 2
    assert not any(r[3] for r in rows)


def test_hit_requests_a_reward_then_holds():
    m = TrialMachine(timing(), THR)
    rows = run(m, [LOW, LOW, LOW, LOW, HIGH, HIGH, HIGH, LOW, LOW, LOW, LOW])
    assert rows[4][2] == ["hit"] and rows[4][3] is True and rows[4][1] == TrialState.TRIAL
    assert [r[1] for r in rows[5:7]] == [TrialState.HOLD, TrialState.HOLD]  # high cursor in hold: no hit
    assert not rows[5][3] and not rows[6][3]
    assert rows[7][1] == TrialState.ITI and rows[7][2] == ["iti"]
    assert rows[10][2] == ["trial_start"] and m.trial == 2 and m.hits == 1


def test_hit_on_the_first_frame_of_a_trial():
    m = TrialMachine(timing(iti_frames=0), THR)
    events: list[Event] = []
    assert m.step(100, HIGH, True, events) is True
    assert [(e.kind, e.trial, e.frame) for e in events] == [("trial_start", 1, 100), ("hit", 1, 100)]
    assert events[1].detail["trial_frame"] == 0


def test_threshold_is_inclusive_and_invalid_frames_never_hit():
    m = TrialMachine(timing(iti_frames=0, trial_frames=4), THR)
    rows = run(m, [HIGH, HIGH, HIGH, HIGH], valid=[False] * 4)
    assert not any(r[3] for r in rows) and rows[3][2] == ["miss"]  # time passed: trial ended on schedule
    m = TrialMachine(timing(iti_frames=0), THR)
    assert run(m, [THR])[0][3] is True
    m = TrialMachine(timing(iti_frames=0), THR)
    assert run(m, [math.nan])[0][3] is False


def test_zero_length_periods_chain_directly():
    m = TrialMachine(timing(iti_frames=0, hold_frames=0, timeout_frames=0, trial_frames=2), THR)
    rows = run(m, [HIGH, LOW, LOW, HIGH])
    assert [r[2] for r in rows] == [["trial_start", "hit"], ["trial_start"], ["miss"], ["trial_start", "hit"]]


def test_max_trials_ends_the_task_after_the_last_outcome_period():
    m = TrialMachine(timing(iti_frames=1, trial_frames=2, timeout_frames=1, max_trials=2), THR)
    rows = run(m, [LOW] * 12)
    kinds = [k for r in rows for k in r[2]]
    assert kinds == ["iti", "trial_start", "miss", "iti", "trial_start", "miss", "session_done"]
    assert m.state == TrialState.DONE and m.trial == 2
    done = next(r for r in rows if "session_done" in r[2])
    assert done[0] == 7  # after the second miss's one-frame timeout
    assert all(r[2] == [] and r[1] == TrialState.DONE for r in rows[8:])


def test_session_length_aborts_the_running_trial():
    m = TrialMachine(timing(iti_frames=1, session_frames=4), THR)
    events: list[Event] = []
    for f in range(6):
        m.step(f, LOW, True, events)
    assert [e.kind for e in events] == ["iti", "trial_start", "trial_aborted", "session_done"]
    assert events[-1].frame == 3 and events[-1].detail["reason"] == "session_length"
    assert m.aborted == 1 and m.trials_done == 0


def test_finish_before_a_trial_started_aborts_nothing():
    m = TrialMachine(timing(iti_frames=2), THR)
    events: list[Event] = []
    m.step(0, LOW, True, events)
    m.step(1, LOW, True, events)  # ITI over; the trial would start next frame
    m.finish(1, "stopped", events)
    assert [e.kind for e in events] == ["iti", "session_done"] and m.aborted == 0 and m.trial == 0


def test_return_to_baseline_rule():
    t = timing(iti_frames=0, hold_frames=0, trial_frames=20, rtb_frames=2)
    m = TrialMachine(t, THR, rtb_level=0.5)
    # hit, then the cursor stays up: no hit; dips below 0.5 for one frame only: still no hit; then two frames
    # below: re-armed, and the next crossing is a hit
    cursors = [HIGH, HIGH, HIGH, 0.4, 0.7, HIGH, 0.3, 0.2, HIGH]
    rows = run(m, cursors)
    assert [r[3] for r in rows] == [True, False, False, False, False, False, False, False, True]
    assert rows[7][2] == ["rearmed"]
    # an invalid frame restarts the count
    m = TrialMachine(t, THR, rtb_level=0.5)
    rows = run(m, [HIGH, 0.1, 0.1, HIGH], valid=[True, True, False, True])
    assert [r[3] for r in rows] == [True, False, False, False]


def test_timing_from_config_rounds_to_frames():
    t = TrialTiming.from_config(TaskConfig(trial_s=2.0, iti_s=0.5, hold_s=0.1, timeout_s=0.0, session_max_s=10.0,
                                           return_to_baseline=True, rtb_frames=3), 29.75)
    assert (t.trial_frames, t.iti_frames, t.hold_frames, t.timeout_frames) == (60, 15, 3, 0)
    assert t.session_frames == 298 and t.rtb_frames == 3
    assert TrialTiming.from_config(TaskConfig(), 30.0).rtb_frames == 0
    with pytest.raises(ValueError, match="`trial_s`"):
        TrialTiming.from_config(TaskConfig(trial_s=0.01), 30.0)
    with pytest.raises(ValueError, match="`threshold`"):
        TrialMachine(t, math.nan)


@pytest.mark.parametrize("seed", range(6))
def test_skip_is_the_same_as_stepping_frames_without_data(seed):
    import random

    rnd = random.Random(seed)
    t = TrialTiming(trial_frames=rnd.randint(1, 9), iti_frames=rnd.randint(0, 5), hold_frames=rnd.randint(0, 4),
                    timeout_frames=rnd.randint(0, 4), max_trials=rnd.choice([0, 3, 7]),
                    session_frames=rnd.choice([0, 40, 90]), rtb_frames=rnd.choice([0, 2]))
    a, b = TrialMachine(t, THR, rtb_level=0.5), TrialMachine(t, THR, rtb_level=0.5)
    ea: list[Event] = []
    eb: list[Event] = []
    frame = 0
    for _ in range(40):
        if rnd.random() < 0.5:
            c = rnd.choice([LOW, HIGH, 0.3])
            a.step(frame, c, True, ea)
            b.step(frame, c, True, eb)
            frame += 1
        else:
            n = rnd.randint(1, 25)
            a.skip(frame, n, ea)
            for f in range(frame, frame + n):
                b.step(f, math.nan, False, eb)
            frame += n
        assert (a.state, a.trial, a.hits, a.misses, a.task_frames, a.armed) == \
               (b.state, b.trial, b.hits, b.misses, b.task_frames, b.armed)
    assert [(e.kind, e.frame, e.trial) for e in ea] == [(e.kind, e.frame, e.trial) for e in eb]


def test_skip_over_a_long_gap_costs_per_trial_not_per_frame():
    m = TrialMachine(timing(trial_frames=300, iti_frames=150, timeout_frames=90), THR)  # 540-frame cycle
    events: list[Event] = []
    m.skip(0, 540 * 10_000, events)  # 5.4 million frames
    assert m.misses == 10_000 and m.task_frames == 540 * 10_000 and m.state == TrialState.ITI
    misses = [e.frame for e in events if e.kind == "miss"]
    assert misses[:2] == [449, 989] and misses[-1] == 540 * 10_000 - 91
