"""Blocks: after a BCI block the session goes on — a new baseline, new ensembles, a new calibration, another block."""

from __future__ import annotations

import numpy as np
import pytest

from decoder.config import DecoderConfig, TaskConfig
from decoder.engine import DecoderEngine, EngineStateError
from rig.core.codes import COMMAND_MODES, COMMAND_RESULT_MODE, Mode, TrialState
from tests.test_decoder_synthetic import synthetic_recording

FPS = 10.0


def test_a_session_runs_block_after_block_with_a_new_baseline_ensembles_and_calibration():
    F, Fneu = synthetic_recording(3000, 6, seed=4, fps=FPS)
    eng = DecoderEngine(DecoderConfig(up=[0, 1], down=[2, 3], f0_window_s=10.0),
                        TaskConfig(baseline_s=40.0, trial_s=2.0, iti_s=0.5), 6, FPS)  # auto protocol
    eng.start_baseline()
    log = []
    t = 0

    def run(frames: int) -> None:
        nonlocal t
        for _ in range(frames):
            log.extend((e.kind, e.frame, e.trial, dict(e.detail)) for e in eng.step(t, F[t], Fneu[t]).events)
            t += 1

    run(700)  # baseline 400 frames, then block 1 by itself
    assert eng.mode == Mode.BCI and eng.block == 1
    with pytest.raises(EngineStateError, match="start a baseline"):
        eng.start_baseline()  # not during a block
    eng.end_block()
    run(1)
    ended = [x for x in log if x[0] == "block_end"]
    assert len(ended) == 1 and ended[0][3]["block"] == 1 and ended[0][3]["reason"] == "block_ended"
    trials_1 = ended[0][3]["block_trials"]
    assert trials_1 >= 5 and eng.mode == Mode.READY
    eng.set_ensembles([1, 4], [2, 5])  # new ensembles; the old calibration is dropped
    eng.start_baseline()  # a new baseline; the auto protocol calibrates and starts block 2 at its end
    run(400)
    assert eng.mode == Mode.BCI and eng.block == 2
    run(300)
    starts = [x for x in log if x[0] == "bci_start"]
    assert [s[3]["block"] for s in starts] == [1, 2]
    cals = [x for x in log if x[0] == "calibrated"]
    assert [c[3]["calibration"]["up"] for c in cals] == [[0, 1], [1, 4]]
    numbers = [x[2] for x in log if x[0] == "trial_start"]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) > trials_1  # numbering goes on
    assert eng.end_block is not None and COMMAND_RESULT_MODE["end_block"] == Mode.READY
    assert COMMAND_MODES["end_block"] == (Mode.BCI, Mode.PAUSED)


def test_end_block_aborts_a_running_trial_and_is_refused_outside_bci():
    F, Fneu = synthetic_recording(1200, 4, seed=2, fps=FPS)
    eng = DecoderEngine(DecoderConfig(up=[0], down=[1], f0_window_s=10.0),
                        TaskConfig(baseline_s=90.0, trial_s=3.0, iti_s=0.5), 4, FPS)
    with pytest.raises(EngineStateError, match="end a BCI block"):
        eng.end_block()
    eng.start_baseline()
    for t in range(920):
        eng.step(t, F[t], Fneu[t])
    t = 920
    while eng.step(t, F[t], Fneu[t]).trial_state != TrialState.TRIAL:  # end the block within a trial
        t += 1
    t += 1
    eng.pause()
    eng.end_block()  # from PAUSED too
    kinds = [e.kind for e in eng.step(t, F[t], Fneu[t]).events]
    assert kinds == ["pause", "trial_aborted", "block_end"] and eng.mode == Mode.READY
    eng.start_bci()  # another block on the same calibration
    res = eng.step(t + 1, F[t + 1], Fneu[t + 1])
    assert [e.kind for e in res.events] == ["bci_start", "iti"] and res.events[0].detail["block"] == 2
    assert np.isfinite(res.cursor)
