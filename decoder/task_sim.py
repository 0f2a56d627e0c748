"""The trial machine run over a whole baseline cursor, compiled: the calibration's task prediction.

Why: the task prediction (``predict = "task"``, docs/TASK_RULES.md) runs the trial machine over the
baseline about 130 times (threshold search, curve, interval); stepping :class:`~decoder.trial.TrialMachine`
frame by frame in Python took 2.6-3.8 s for a 15-min baseline. :func:`task_outcomes` is the same machine
for the case calibration needs (every frame valid, no session limits), as one compiled loop (~1 ms per run),
and it releases the GIL, so a calibration computed beside the decoder's loop does not hold the loop up.

It must stay the very rule of :meth:`TrialMachine.step`: ``tests/test_calibration_offloop.py`` checks
hits, misses and every outcome frame against :func:`decoder.calibration.run_task` (the Python machine)
on many cursors and timings, and the change of a rule in ``trial.py`` has to be made here too.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from decoder.percentile import JIT_OPTIONS
from decoder.trial import TrialTiming

_ITI, _TRIAL, _HOLD, _TIMEOUT = 0, 1, 2, 3


@njit(**JIT_OPTIONS)
def _simulate(values: np.ndarray, start: int, threshold: float, rtb_level: float, trial_frames: int,
              iti_frames: int, hold_frames: int, timeout_frames: int, rtb_frames: int, rtb_holds: bool,
              one_crossing: bool, out_frame: np.ndarray, out_hit: np.ndarray) -> tuple[int, int]:
    """TrialMachine.step over values[start:] (frames numbered from 0), every frame valid; (hits, misses).
    ``out_frame``/``out_hit`` get each outcome (its frame, hit?) in order; hits + misses of them."""
    hits = 0
    misses = 0
    armed = True
    below = True
    always_below = not one_crossing
    waiting = False
    rtb_count = 0
    remaining = 0
    elapsed = 0
    announce = True
    if iti_frames > 0:
        state = _ITI
        remaining = iti_frames
    else:
        state = _TRIAL
    for i in range(start, values.shape[0]):
        c = values[i]
        if announce:
            announce = False
            if state == _TRIAL:
                elapsed = 0
        hit = False
        over = -1  # the period (ITI, HOLD, TIMEOUT) that ended on this frame
        if state == _TRIAL:
            elapsed += 1
            if armed and (below or always_below) and c >= threshold:
                hit = True
                out_frame[hits + misses] = i - start
                out_hit[hits + misses] = True
                hits += 1
                below = False
                if rtb_frames:
                    armed = False
                    rtb_count = 0
                if hold_frames > 0:
                    state = _HOLD
                    remaining = hold_frames
                else:
                    over = _HOLD
            elif elapsed >= trial_frames:
                out_frame[hits + misses] = i - start
                out_hit[hits + misses] = False
                misses += 1
                if timeout_frames > 0:
                    state = _TIMEOUT
                    remaining = timeout_frames
                else:
                    over = _TIMEOUT
        else:
            remaining -= 1
            if remaining <= 0:
                over = state
        if over >= 0:  # TrialMachine._period_over (no max_trials: calibration has no session limits)
            to_trial = over == _ITI or iti_frames <= 0
            if not to_trial:
                state = _ITI
                remaining = iti_frames
                announce = True
            elif not armed and rtb_frames and rtb_holds:  # TrialMachine._to_trial: wait to be re-armed
                waiting = True
                state = _ITI
                remaining = 0
            else:
                state = _TRIAL
                announce = True
        if c < threshold:
            below = True
        if not armed and not hit:
            if c < rtb_level:
                rtb_count += 1
                if rtb_count >= rtb_frames:
                    armed = True
                    if waiting:
                        waiting = False
                        state = _TRIAL
                        announce = True
            else:
                rtb_count = 0
    return hits, misses


def task_outcomes(values: np.ndarray, timing: TrialTiming, threshold: float, rtb_level: float,
                  start: int = 0) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The trial machine (no session limits) over ``values[start:]`` (float64, every value a valid frame):
    (hits, misses, the frame of each outcome counted from ``start``, hit? of each), as
    :func:`decoder.calibration.run_task` gives them."""
    if values.dtype != np.float64 or values.ndim != 1:
        raise ValueError(f"`values`: expected a 1-D float64 array, got {values.dtype} of shape {values.shape}")
    length = max(values.shape[0] - start, 0)
    frames = np.empty(length, dtype=np.int64)  # at most one outcome per frame
    hit = np.empty(length, dtype=np.bool_)
    hits, misses = _simulate(values, int(start), float(threshold), float(rtb_level), timing.trial_frames,
                             timing.iti_frames, timing.hold_frames, timing.timeout_frames, timing.rtb_frames,
                             timing.rtb_holds_trials, timing.one_crossing, frames, hit)
    n = hits + misses
    return int(hits), int(misses), frames[:n], hit[:n]


def compile_kernels() -> None:
    """Compile (or load from numba's on-disk cache) the kernel now, not at the first calibration."""
    timing = TrialTiming(trial_frames=2, iti_frames=1, hold_frames=1, timeout_frames=1, rtb_frames=1)
    task_outcomes(np.zeros(4), timing, 1.0, 0.0)
