"""The decoder engine's per-frame output (its own module: decoder/engine.py is long enough)."""

from __future__ import annotations

import math

import numpy as np

from decoder.feedback import NO_BIN
from decoder.trial import Event
from rig.core.codes import Mode, TrialState


class StepResult:
    """The engine's output for one frame. ONE instance, reused: copy what you keep past the next step.

    ``dff`` is a view of the engine's buffer; ``events`` is a reused list (empty when nothing happened);
    ``cursor_norm``/``tone_hz`` are NaN and ``angle_bin`` -1 when there is no feedback range or cursor.
    """

    __slots__ = ("angle_bin", "cursor", "cursor_norm", "dff", "down", "events", "frame", "mode",
                 "reward_request", "tone_hz", "trial", "trial_state", "up")

    def __init__(self, dff: np.ndarray, events: list[Event]) -> None:
        self.frame = -1
        self.mode = Mode.IDLE
        self.trial = 0
        self.trial_state = TrialState.NONE
        self.dff = dff
        self.up = math.nan
        self.down = math.nan
        self.cursor = math.nan
        self.cursor_norm = math.nan
        self.tone_hz = math.nan
        self.angle_bin = NO_BIN
        self.reward_request = False
        self.events = events
