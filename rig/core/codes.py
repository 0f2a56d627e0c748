"""The task's shared vocabulary: mode and trial-state codes, trial-event kinds, which command fits which mode.

Defined once here, in the contract, and read by everything that shows or checks them: the decoder's
engine (which refuses a command its mode does not allow), the console (which greys out its buttons), the
report and the test fakes. The integer values are written into per-frame binary records
(``decisions.rec``), so they are stable: append new codes, never renumber.
"""

from __future__ import annotations

import enum
from enum import IntEnum


class Mode(IntEnum):
    """The decoder's mode (``Decision.mode``)."""

    IDLE = 0  # frames decoded for display, no baseline being recorded, not calibrated
    BASELINE = 1  # recording the baseline
    READY = 2  # calibrated, waiting for start_bci
    BCI = 3  # trials running
    PAUSED = 4  # BCI paused: the task clock is frozen
    STOPPED = 5  # task over; frames still decoded for display


class FrameFlag(enum.IntFlag):
    """Why a frame is suspect: set by acquisition, read by the decoder (its bad-frame rule).

    Bit values are part of the wire format (``FluorFrame.flags``) and of ``decisions.rec``: never renumber.
    """

    NONE = 0
    WRONG_SHAPE = 1 << 0  # frame shape differs from the ROI set / configured shape
    WRONG_DTYPE = 1 << 1  # pixel type we cannot interpret (not an integer or float image)
    ALL_ZERO = 1 << 2  # every pixel is zero: scope blanked, shutter closed or a dead link
    SATURATED = 1 << 3  # more than the allowed fraction of pixels at the saturation level
    NAN = 1 << 4  # NaN or infinite pixel values
    SHIFT_OUT_OF_BOUNDS = 1 << 5  # best motion estimate lies beyond maxregshift; shift was clamped
    LOW_CORR = 1 << 6  # peak phase correlation below the quality floor
    TRUNCATED = 1 << 7  # the transport delivered fewer bytes than a frame (counted by the source)
    AFTER_GAP = 1 << 8  # first frame after a link drop or a jump in the scope's frame counter
    NOT_REGISTERED = 1 << 9  # registration skipped (no reference yet); shifts are 0


class TrialState(IntEnum):
    """Where the task's state machine is (``Decision.trial_state``)."""

    NONE = 0  # no task running (idle, baseline, calibrated)
    ITI = 1  # inter-trial interval
    TRIAL = 2  # trial running: a crossing of the threshold is a hit
    HOLD = 3  # after a hit: reward consumption
    TIMEOUT = 4  # after a miss: timeout pause
    DONE = 5  # task over (max trials, session length, or stopped)


#: Every trial-event kind the decoder emits (``TrialEvent.kind``), for consumers that dispatch on them.
EVENT_KINDS = (
    "baseline_start", "baseline_done", "calibrated", "calibration_failed", "calibration_cleared",
    "baseline_loaded", "bci_start", "iti", "trial_start", "hit", "miss", "trial_aborted", "rearmed",
    "session_done", "pause", "resume", "stopped", "manual_reward", "gap", "bad_input", "ensembles",
    "bad_frame", "rearm_wait", "f0_drift", "noise_change", "block_end",
)

_CHOOSING = (Mode.IDLE, Mode.BASELINE, Mode.READY, Mode.STOPPED)

#: Operator command -> the modes in which the decoder accepts it. Commands not listed here (stop,
#: manual_reward, test_pulse, close_valve, set_metadata) are accepted in every mode.
COMMAND_MODES: dict[str, tuple[Mode, ...]] = {
    "start_baseline": (Mode.IDLE, Mode.READY),
    "load_baseline": (Mode.IDLE, Mode.READY),
    "calibrate": (Mode.IDLE, Mode.BASELINE, Mode.READY),
    "set_calibration": (Mode.IDLE, Mode.READY),
    "start_bci": (Mode.READY,),
    "pause": (Mode.BCI,),
    "resume": (Mode.PAUSED,),
    "end_block": (Mode.BCI, Mode.PAUSED),
    "set_ensembles": _CHOOSING,
    "set_weights": _CHOOSING,
}

#: Operator command -> the mode the decoder is in after it succeeded (those that change the mode).
COMMAND_RESULT_MODE: dict[str, Mode] = {
    "start_baseline": Mode.BASELINE,
    "calibrate": Mode.READY,
    "set_calibration": Mode.READY,
    "start_bci": Mode.BCI,
    "pause": Mode.PAUSED,
    "resume": Mode.BCI,
    "end_block": Mode.READY,
}


def mode_name(code: int) -> str:
    """``"bci"`` for 3; a code this build does not know reads ``"mode 7"`` (visible, never mislabelled)."""
    try:
        return Mode(int(code)).name.lower()
    except ValueError:
        return f"mode {int(code)}"


def trial_state_name(code: int) -> str:
    """``"trial"`` for 2; an unknown code reads ``"state 9"``."""
    try:
        return TrialState(int(code)).name.lower()
    except ValueError:
        return f"state {int(code)}"


def command_allowed(command: str, mode: int) -> bool:
    """Whether the decoder accepts ``command`` in ``mode`` (unlisted commands: always)."""
    allowed = COMMAND_MODES.get(command)
    return allowed is None or int(mode) in allowed
