"""A decisions.rec row is written in one numpy call (decoder/core.py ``_fill_row``, issue 21): the bytes must be
exactly those of the field-by-field writes it replaced, for every kind of value a decision carries (NaN cursor,
negative angle bin, a reward, 64-bit stamps), and the stamps written after it must leave the decision alone.
Replay cannot catch a mistake here (it fills its rows the same way), so this compares with the slow path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoder.core import DECISION_FIELDS, STAMP_FIELDS, _fill_row, decision_record_dtype, record_fields_dtype
from decoder.step_result import StepResult
from rig.core.codes import Mode, TrialState
from tests.test_decoder_core import make_core

N_ROIS = 7


def _field_by_field(row: np.void, frame: int, flags: int, res: StepResult, stamps: tuple[int, ...]) -> None:
    for name, value in zip(DECISION_FIELDS, (frame, int(res.mode), res.trial, int(res.trial_state), res.up, res.down,
                                             res.cursor, res.cursor_norm, res.tone_hz, res.angle_bin,
                                             res.reward_request, flags, res.dff), strict=True):
        row[name] = value
    for name, value in zip(STAMP_FIELDS, stamps, strict=True):
        row[name] = value


def _result(rng: np.random.Generator, k: int) -> StepResult:
    dff = rng.standard_normal(N_ROIS)
    dff[rng.random(N_ROIS) < 0.3] = math.nan
    res = StepResult(dff, [])
    res.mode = list(Mode)[k % len(Mode)]
    res.trial = k
    res.trial_state = list(TrialState)[k % len(TrialState)]
    res.up, res.down = float(rng.standard_normal()), float(rng.standard_normal())
    res.cursor = math.nan if k % 3 == 0 else res.up - res.down
    res.cursor_norm = math.nan if k % 3 == 0 else float(rng.random())
    res.tone_hz = float(rng.uniform(1000, 20000))
    res.angle_bin = -1 if k % 3 == 0 else k % 8
    res.reward_request = k % 4 == 1
    return res


def test_the_one_call_row_is_byte_for_byte_the_field_by_field_row() -> None:
    dtype = decision_record_dtype(N_ROIS)
    decision, stamps_dtype = record_fields_dtype(dtype, DECISION_FIELDS), record_fields_dtype(dtype, STAMP_FIELDS)
    assert set(DECISION_FIELDS) | set(STAMP_FIELDS) == set(dtype.names or ())
    rng = np.random.default_rng(5)
    fast, slow = np.zeros(40, dtype), np.zeros(40, dtype)
    for k in range(40):
        res = _result(rng, k)
        stamps = tuple(int(v) for v in rng.integers(0, 2**62, 5))
        frame, flags = 10**10 + k, int(rng.integers(0, 2**20))
        _field_by_field(slow[k], frame, flags, res, stamps)
        _fill_row(fast[k], frame, flags, res, decision)
        fast[k].setfield(stamps, stamps_dtype, 0)  # as the decoder process stamps it, after the decision
    assert fast.tobytes() == slow.tobytes()


def test_a_row_of_another_layout_is_refused_not_written_at_the_wrong_offsets() -> None:
    core, _ = make_core()
    rows = np.zeros(1, decision_record_dtype(core.engine.n_rois + 1))
    with pytest.raises(TypeError, match="decisions.rec row"):
        core.decide(0, np.ones(core.engine.n_rois), np.zeros(core.engine.n_rois), 0, rows[0])
