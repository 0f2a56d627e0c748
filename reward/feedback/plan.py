"""Decisions and trial events → the tone and grating the animal gets: one pure function, live and replay.

The feedback process feeds :class:`FeedbackPlanner` each ``Decision`` and ``TrialEvent`` as they arrive (the
decoder publishes a frame's decision, then that frame's trial events, on one socket, so they arrive in that
order); ``rig replay`` feeds it the rows of ``decisions.rec`` and the trial lines of ``events.jsonl`` in the
same order through :func:`plan_session`. Times come from the decisions (``t_decided``), never from the clock
of whoever runs the planner, so a replay reproduces the live stimulus sequence exactly.

A silent tone is ``tone_hz = NaN``; a grey screen is ``orientation_deg = NaN``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from reward.feedback.config import FeedbackConfig
from rig.core.codes import Mode, TrialState

CUE_KINDS = ("hit", "miss")


@dataclass(frozen=True)
class Stimulus:
    """What is presented from one decision on."""

    frame: int
    t_ns: int  # the decision's t_decided
    tone_hz: float  # NaN: silent
    orientation_deg: float  # NaN: grey screen
    phase: float  # grating phase in cycles, [0, 1)
    perceived: float  # the cursor_norm the animal can read off the stimulus (NaN: nothing to read)


@dataclass(frozen=True)
class Cue:
    kind: str  # "hit" | "miss"
    frame: int
    t_ns: int  # the decision time of the frame whose trial event triggered it


class FeedbackPlanner:
    """The feedback state machine: presenting or not, the post-hit hold of the target, the grating's drift."""

    def __init__(self, cfg: FeedbackConfig) -> None:
        self.cfg = cfg
        self._log_min = math.log(cfg.tone_min_hz)
        self._log_span = math.log(cfg.tone_max_hz) - self._log_min
        self._span_deg = (cfg.bins - 1) * cfg.step_deg
        self._phase = 0.0
        self._last_t: int | None = None
        self._last_frame = -1
        self._hold_until = -1

    # ------------------------------------------------------------------ mapping
    def tone_of(self, norm: float) -> float:
        return math.exp(self._log_min + min(max(norm, 0.0), 1.0) * self._log_span)

    def orientation_of(self, norm: float, angle_bin: int) -> float:
        cfg = self.cfg
        if cfg.orientation == "continuous":
            return cfg.start_deg + min(max(norm, 0.0), 1.0) * self._span_deg
        if angle_bin < 0:  # the decoder gave no bin: bin the cursor as the decoder does
            angle_bin = int(min(max(norm, 0.0), 1.0) * cfg.bins)
        return cfg.start_deg + min(angle_bin, cfg.bins - 1) * cfg.step_deg

    def perceived(self, tone_hz: float, orientation_deg: float) -> float:
        """The normalised cursor an observer recovers from the stimulus (the tone first, else the grating)."""
        if math.isfinite(tone_hz):
            return (math.log(tone_hz) - self._log_min) / self._log_span
        if math.isfinite(orientation_deg) and self._span_deg != 0:
            return (orientation_deg - self.cfg.start_deg) / self._span_deg
        return math.nan

    def presenting(self, mode: int, trial_state: int) -> bool:
        """Whether the cursor is shown in this mode and trial state."""
        if mode == Mode.BASELINE:
            return self.cfg.during_baseline
        if mode != Mode.BCI:
            return False  # idle, calibrated, paused, stopped: no feedback
        if trial_state in (TrialState.TRIAL, TrialState.HOLD):
            return True
        if trial_state in (TrialState.ITI, TrialState.TIMEOUT):
            return not self.cfg.iti_grey
        return False

    # ------------------------------------------------------------------ inputs
    def on_decision(self, frame: int, t_ns: int, mode: int, trial_state: int, cursor_norm: float,
                    angle_bin: int) -> Stimulus:
        cfg = self.cfg
        cursor_norm = float(np.float32(cursor_norm))  # as decisions.rec stores it: replay sees the same value
        if self._last_t is not None and t_ns > self._last_t:
            self._phase = (self._phase + cfg.drift_hz * (t_ns - self._last_t) / 1e9) % 1.0
        self._last_t = t_ns
        self._last_frame = frame
        tone = orientation = math.nan
        if t_ns < self._hold_until and mode == Mode.BCI:
            tone, orientation = cfg.tone_max_hz, cfg.target_deg  # the target held after a hit
        elif self.presenting(mode, trial_state) and math.isfinite(cursor_norm):
            tone, orientation = self.tone_of(cursor_norm), self.orientation_of(cursor_norm, angle_bin)
        return Stimulus(frame, t_ns, tone, orientation, self._phase, self.perceived(tone, orientation))

    def on_trial(self, kind: str, frame: int) -> Cue | None:
        """A trial event: hits and misses get their cue; a hit holds the target for ``hold_target_s``."""
        if kind not in CUE_KINDS:
            return None
        t = self._last_t if self._last_t is not None else 0
        if kind == "hit":
            self._hold_until = t + int(self.cfg.hold_target_s * 1e9)
        return Cue(kind, frame, t)


def plan_session(cfg: FeedbackConfig, decisions: np.ndarray,
                 events: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], list[Cue]]:
    """The stimulus sequence of a recorded (or replayed) session, as the feedback process computed it live.

    ``decisions``: rows with ``frame``, ``t_decided``, ``mode``, ``trial_state``, ``cursor_norm``, ``angle_bin``;
    ``events``: ``decoder/events.jsonl`` lines (only ``trial`` lines with ``event`` and ``frame`` are used).
    Returns per-decision arrays (frame, t_ns, tone_hz, orientation_deg, phase, perceived) and the cues.
    """
    planner = FeedbackPlanner(cfg)
    trial = sorted(((int(e["frame"]), i, str(e["event"])) for i, e in enumerate(events)
                    if e.get("kind", "trial") == "trial" and "event" in e and "frame" in e))
    n = len(decisions)
    out = {"frame": np.zeros(n, np.int64), "t_ns": np.zeros(n, np.int64), "tone_hz": np.zeros(n),
           "orientation_deg": np.zeros(n), "phase": np.zeros(n), "perceived": np.zeros(n)}
    cues: list[Cue] = []
    k = 0
    for i in range(n):
        row = decisions[i]
        frame = int(row["frame"])
        while k < len(trial) and trial[k][0] < frame:  # events of frames without a decision row
            cue = planner.on_trial(trial[k][2], trial[k][0])
            if cue is not None:
                cues.append(cue)
            k += 1
        stim = planner.on_decision(frame, int(row["t_decided"]), int(row["mode"]), int(row["trial_state"]),
                                   float(row["cursor_norm"]), int(row["angle_bin"]))
        for name in out:
            out[name][i] = getattr(stim, name)
        while k < len(trial) and trial[k][0] == frame:
            cue = planner.on_trial(trial[k][2], trial[k][0])
            if cue is not None:
                cues.append(cue)
            k += 1
    for frame, _, kind in trial[k:]:
        cue = planner.on_trial(kind, frame)
        if cue is not None:
            cues.append(cue)
    return out, cues
