"""The BCI task as an explicit state machine, one call per frame.

    ITI ──► TRIAL ──hit──► HOLD ────► ITI ...       (hit: reward request on the hit frame)
                 └─timeout─► TIMEOUT ─► ITI ...    (miss event on the trial's last frame)
    after the last trial (``max_trials``) or when the task time (``session_frames``) is used up: DONE

Timing is counted in frames, and every frame of task time is stepped, including frames that never
arrived (frame-number gaps) and frames whose input was unusable: those call :meth:`TrialMachine.step`
with ``valid=False``, so they consume trial time but can never produce a hit, and the trial ends on the
frame it would have ended on. Pausing is the caller not stepping the machine: the whole task clock
(trial, hold, ITI, timeout, return-to-baseline count) freezes and resumes where it stopped.

Events are stamped with the frame they happened on. A period that starts after another ends (a trial
after the ITI, the ITI after a hold) is announced on its first frame ("trial_start", "iti").

One crossing, one reward: after a hit, the next hit needs the cursor to have been below the threshold on
at least one valid frame since (a cursor that stays up through the hold and the ITI earns nothing more).
With return-to-baseline (``rtb_frames`` > 0) it must also have stayed below ``rtb_level`` for
``rtb_frames`` consecutive valid frames ("rearmed"), and with ``rtb_holds_trials`` (HoloBMI's rule) the
ITI does not end into a new trial until then ("rearm_wait" when it starts waiting): no trial is run that
could not be hit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from decoder.config import TaskConfig
from rig.core.codes import TrialState


@dataclass(slots=True)
class Event:
    """Something that happened on a frame: ``kind`` as listed in ``rig.core.codes.EVENT_KINDS``."""

    kind: str
    trial: int
    frame: int
    detail: dict[str, Any] = field(default_factory=dict)




def frames_for(seconds: float, frame_rate_hz: float) -> int:
    """Seconds -> whole frames, rounded to the nearest frame."""
    return int(math.floor(seconds * frame_rate_hz + 0.5))


@dataclass(frozen=True, slots=True)
class TrialTiming:
    """The task's durations in frames (``session_frames``/``max_trials`` 0: no limit; ``rtb_frames`` 0: off)."""

    trial_frames: int
    iti_frames: int
    hold_frames: int
    timeout_frames: int
    max_trials: int = 0
    session_frames: int = 0
    rtb_frames: int = 0
    rtb_holds_trials: bool = True  # with rtb_frames > 0: no new trial starts until re-armed
    one_crossing: bool = True  # a hit needs the cursor below the threshold since the last (False: rules_version 1)

    def __post_init__(self) -> None:
        if self.trial_frames < 1:
            raise ValueError(f"`trial_frames`: must be >= 1, got {self.trial_frames}")
        for name in ("iti_frames", "hold_frames", "timeout_frames", "max_trials", "session_frames", "rtb_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}`: must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, task: TaskConfig, frame_rate_hz: float, one_crossing: bool = True) -> TrialTiming:
        trial_frames = frames_for(task.trial_s, frame_rate_hz)
        if trial_frames < 1:
            raise ValueError(f"`trial_s`: {task.trial_s} s is less than one frame at {frame_rate_hz} Hz")
        if frames_for(task.iti_s, frame_rate_hz) + frames_for(task.hold_s, frame_rate_hz) < 1:
            raise ValueError(f"`hold_s`/`iti_s`: {task.hold_s} s + {task.iti_s} s is less than one frame at "
                             f"{frame_rate_hz} Hz: a crossing flickering across the threshold would be paid "
                             f"again every other frame; lengthen the hold or the ITI")
        return cls(
            trial_frames=trial_frames,
            iti_frames=frames_for(task.iti_s, frame_rate_hz),
            hold_frames=frames_for(task.hold_s, frame_rate_hz),
            timeout_frames=frames_for(task.timeout_s, frame_rate_hz),
            max_trials=task.max_trials,
            session_frames=frames_for(task.session_max_s, frame_rate_hz) if task.session_max_s > 0 else 0,
            rtb_frames=task.rtb_frames if task.return_to_baseline else 0,
            rtb_holds_trials=task.rtb_holds_trials,
            one_crossing=one_crossing,
        )


class TrialMachine:
    """Trials, outcomes and reward requests from the cursor, one frame per :meth:`step`.

    ``rtb_level``: with ``timing.rtb_frames`` > 0, after a hit the cursor must stay below this level for
    ``rtb_frames`` consecutive valid frames before a crossing counts as a hit again (HoloBMI's
    return-to-baseline rule); the count runs in every state, and an invalid frame restarts it.
    """

    def __init__(self, timing: TrialTiming, threshold: float, rtb_level: float = -math.inf,
                 first_trial: int = 0) -> None:
        if not math.isfinite(threshold):
            raise ValueError(f"`threshold`: must be finite, got {threshold}")
        self.timing = timing
        self.threshold = float(threshold)
        self.rtb_level = float(rtb_level)
        # number of the last trial started (1-based; a later block of a session goes on from the trials before)
        self.trial = first_trial
        self.first_trial = first_trial
        self.hits = 0
        self.misses = 0
        self.aborted = 0
        self.task_frames = 0  # frames stepped (valid or not)
        self.armed = True  # return-to-baseline satisfied
        self.below = True  # the cursor has been below the threshold since the last hit (one crossing, one reward)
        self._always_below = not timing.one_crossing  # the older rule: any crossing in a trial is a hit
        self.waiting = False  # the ITI is over but the trial waits to be re-armed (rtb_holds_trials)
        self._rtb_count = 0
        self._remaining = 0  # frames left in ITI / HOLD / TIMEOUT
        self._elapsed = 0  # frames of the running trial so far
        self._announce = True  # the current state starts on the next frame stepped
        if timing.iti_frames > 0:
            self.state = TrialState.ITI
            self._remaining = timing.iti_frames
        else:
            self.state = TrialState.TRIAL

    @property
    def trials_done(self) -> int:
        """Trials with an outcome (hit or miss)."""
        return self.hits + self.misses

    def step(self, frame: int, cursor: float, valid: bool, events: list[Event]) -> bool:
        """Advance one frame; return True if this frame is a hit (request a reward now)."""
        state = self.state
        if state == TrialState.DONE:
            return False
        if self._announce:
            self._announce = False
            if state == TrialState.TRIAL:
                self.trial += 1
                self._elapsed = 0
                events.append(Event("trial_start", self.trial, frame))
            elif state == TrialState.ITI:
                events.append(Event("iti", self.trial, frame))
        self.task_frames += 1
        hit = False
        if state == TrialState.TRIAL:
            self._elapsed += 1
            if valid and self.armed and (self.below or self._always_below) and cursor >= self.threshold:
                hit = True
                self.hits += 1
                self.below = False
                events.append(Event("hit", self.trial, frame, {
                    "cursor": cursor, "threshold": self.threshold, "trial_frame": self._elapsed - 1,
                }))
                if self.timing.rtb_frames:
                    self.armed = False
                    self._rtb_count = 0
                self._enter(TrialState.HOLD, self.timing.hold_frames, frame, events)
            elif self._elapsed >= self.timing.trial_frames:
                self.misses += 1
                events.append(Event("miss", self.trial, frame, {"trial_frames": self._elapsed}))
                self._enter(TrialState.TIMEOUT, self.timing.timeout_frames, frame, events)
        else:
            self._remaining -= 1
            if self._remaining <= 0:
                self._period_over(state, frame, events)
        if valid and cursor < self.threshold:
            self.below = True
        if not self.armed and not hit:
            if valid and cursor < self.rtb_level:
                self._rtb_count += 1
                if self._rtb_count >= self.timing.rtb_frames:
                    self.armed = True
                    events.append(Event("rearmed", self.trial, frame))
                    if self.waiting:  # the trial that waited for this starts on the next frame
                        self.waiting = False
                        self.state = TrialState.TRIAL
                        self._announce = True
            else:
                self._rtb_count = 0
        if (self.timing.session_frames and self.task_frames >= self.timing.session_frames
                and self.state != TrialState.DONE):
            self.finish(frame, "session_length", events)
        return hit

    def skip(self, first_frame: int, count: int, events: list[Event]) -> None:
        """Step through ``count`` frames without data (``first_frame`` onwards): the same states and events
        as ``count`` calls of ``step(frame, nan, False, events)``, in time proportional to the number of
        state changes rather than of frames (a long gap is cheap)."""
        frame, end = first_frame, first_frame + count
        timing = self.timing
        while frame < end and self.state != TrialState.DONE:
            if self._announce:
                self.step(frame, math.nan, False, events)
                frame += 1
                continue
            left = timing.trial_frames - self._elapsed if self.state == TrialState.TRIAL else self._remaining
            # frames before the period's last, or (waiting to re-arm, which frames without data cannot do) every
            # frame of the gap: only counters move
            quiet = end - frame if self.waiting else min(left - 1, end - frame)
            if timing.session_frames:
                quiet = min(quiet, timing.session_frames - self.task_frames - 1)
            if quiet > 0:
                self.task_frames += quiet
                if self.state == TrialState.TRIAL:
                    self._elapsed += quiet
                elif not self.waiting:
                    self._remaining -= quiet
                self._rtb_count = 0
                frame += quiet
                continue
            self.step(frame, math.nan, False, events)
            frame += 1

    def finish(self, frame: int, reason: str, events: list[Event], block: int = 0) -> None:
        """End the task now; a trial still running is aborted (neither hit nor miss).

        ``block`` > 0: only this block of the session ends ("block_end" instead of "session_done").
        """
        if self.state == TrialState.DONE:
            return
        if self.state == TrialState.TRIAL and not self._announce:
            self.aborted += 1
            events.append(Event("trial_aborted", self.trial, frame, {"reason": reason, "trial_frames": self._elapsed}))
        self.state = TrialState.DONE
        detail: dict = {"reason": reason, "hits": self.hits, "misses": self.misses, "aborted": self.aborted}
        if block:
            detail["block"] = block
            detail["block_trials"] = self.trial - self.first_trial
        events.append(Event("block_end" if block else "session_done", self.trial, frame, detail))

    def _enter(self, state: TrialState, frames: int, frame: int, events: list[Event]) -> None:
        if frames > 0:
            self.state = state
            self._remaining = frames
        else:
            self._period_over(state, frame, events)

    def _period_over(self, state: TrialState, frame: int, events: list[Event]) -> None:
        """ITI, HOLD or TIMEOUT ended with this frame: decide what the next frame is."""
        if state == TrialState.ITI:
            self._to_trial(frame, events)
        elif self.timing.max_trials and self.trial >= self.timing.max_trials:
            self.state = TrialState.TRIAL  # so finish() sees no running trial to abort
            self._announce = True
            self.finish(frame, "max_trials", events)
        elif self.timing.iti_frames > 0:
            self.state = TrialState.ITI
            self._remaining = self.timing.iti_frames
            self._announce = True
        else:
            self._to_trial(frame, events)

    def _to_trial(self, frame: int, events: list[Event]) -> None:
        """A trial starts on the next frame, unless it must wait (in the ITI) to be re-armed."""
        if not self.armed and self.timing.rtb_frames and self.timing.rtb_holds_trials:
            if not self.waiting:
                events.append(Event("rearm_wait", self.trial, frame))
            self.waiting = True
            self.state = TrialState.ITI
            self._remaining = 0
            return
        self.state = TrialState.TRIAL
        self._announce = True
