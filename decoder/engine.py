"""DecoderEngine: fluorescence in, cursor / feedback / trial events / reward requests out, one frame per step.

The engine is a pure function of (config, calibration, input stream, operator calls): no clocks, no threads, no I/O,
one seeded RNG (calibration). Feeding the same frames and calls twice gives byte-identical results.

Modes (:class:`Mode`)::

    IDLE --start_baseline()--> BASELINE --baseline_s of frames--> IDLE (baseline kept)
      ^                            |                                   |
      |  calibrate() / set_calibration() / load_baseline() + calibrate()
      |                            v                                   v
      +--set_ensembles()------ READY (calibrated) --start_bci()--> BCI <--pause()/resume()--> PAUSED
                                 ^                                 |
                                 +------------ end_block() --------+  (from BCI or PAUSED)
                                             stop(), max trials, session length --> STOPPED

Blocks: ``end_block()`` ends a BCI block without ending the session ("block_end"); from READY the operator may start
another block on the same calibration, or record a new baseline, choose new ensembles and recalibrate first. Blocks
are numbered from 1 ("bci_start" and "block_end" carry ``block``); trial numbers go on across blocks, so every trial
of a session has its own number.

With ``task.auto_protocol`` the engine goes on by itself from the end of the baseline: it calibrates and starts BCI
("baseline_done", "calibrated", "bci_start" on that frame; with ``defer_calibration`` the calibration is a job the
caller computes beside the loop and applies, with "calibrated" and "bci_start", before a later frame:
:meth:`DecoderEngine.finish_calibration`). If calibration fails it says so ("calibration_failed") and waits in IDLE
for the operator.

Per frame: F_corr = F - c·Fneu -> F0 (running percentile; during BCI per ``decoder.f0_mode``: running, frozen at the
start of BCI, or a slow window) -> dF/F for every ROI -> decoder -> running mean -> cursor -> trial machine (in BCI)
-> feedback. Frames are expected in increasing frame-number order; a jump is a gap: a "gap" event, the smoothing
window skips the missing frames, and in BCI the trial clock advances through them (they consume trial time, cannot
be hits; see :mod:`decoder.trial`). A frame whose F/Fneu is not all finite is treated like a missing frame
("bad_input") and does not enter F0. The bad-frame rule: a frame whose acquisition flags include one of
``decoder.bad_frame_flags`` (low registration correlation, saturation, a clamped shift, ...) updates neither F0 nor
the cursor: the cursor (and the smoothing window) holds its last value, the frame is counted (``bad_frames``; a
"bad_frame" event opens each run of them), it takes its time in a trial and cannot be a hit, and it is not recorded
into a baseline. With ``decoder.dff_rois = "decoder"`` only the decoder's ROIs get F0 and dF/F during BCI (several
times cheaper; see :mod:`decoder.subset_f0`); with "all" and ``defer_rest`` the others' wait until the decision is
out (:meth:`DecoderEngine.finish_frame`). The pieces live in their own modules: dF/F in :mod:`decoder.dff` and
:mod:`decoder.subset_f0`, the decoders behind :mod:`decoder.registry`, the baseline and calibration assembly in
:mod:`decoder.baseline`; the engine sequences them.

Operator calls between frames take effect from the next frame; their events are reported on the next step's result
(or fetched with :meth:`DecoderEngine.take_pending_events`). Operator calls that the mode does not allow raise
:class:`EngineStateError`; a wrapper should catch :data:`COMMAND_ERRORS`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np

from decoder.baseline import Baseline
from decoder.calibration import Calibration, CalibrationError, rtb_level_for
from decoder.calibration_job import CalibrationJob
from decoder.config import CalibrationConfig, DecoderConfig, TaskConfig
from decoder.decoders import RunningMean
from decoder.dff import compile_kernels as compile_dff_kernels
from decoder.feedback import FeedbackMapper
from decoder.registry import check_ensembles, make_decoder
from decoder.safeguards import DriftMonitor, drift_monitor_for
from decoder.step_result import StepResult
from decoder.subset_f0 import SubsetDffTracker
from decoder.task_sim import compile_kernels as compile_task_kernels
from decoder.trial import Event, TrialMachine, TrialTiming, frames_for
from rig.core.codes import COMMAND_MODES, Mode, TrialState

__all__ = ["COMMAND_ERRORS", "DecoderEngine", "EngineStateError", "FrameOrderError", "StepResult"]


class EngineStateError(RuntimeError):
    """An operator call that the engine's current mode does not allow (e.g. start_bci() uncalibrated)."""


class FrameOrderError(ValueError):
    """A frame number that is not after the previous one: the input stream is out of order or restarted."""


#: Errors an operator call (calibrate, start_bci, set_ensembles, ...) raises for a bad request; a process
#: wrapper reports them to the operator and carries on.
COMMAND_ERRORS = (CalibrationError, EngineStateError, ValueError)


class DecoderEngine:
    """See the module docstring. ``n_rois`` and ``frame_rate_hz`` come from acquisition."""

    def __init__(self, decoder_cfg: DecoderConfig, task_cfg: TaskConfig, n_rois: int, frame_rate_hz: float,
                 defer_calibration: bool = False, defer_rest: bool = False) -> None:
        if n_rois < 1:
            raise ValueError(f"`n_rois`: must be >= 1, got {n_rois}")
        if not (math.isfinite(frame_rate_hz) and frame_rate_hz > 0):
            raise ValueError(f"`frame_rate_hz`: must be > 0, got {frame_rate_hz}")
        self.decoder_cfg = decoder_cfg
        self.task_cfg = task_cfg
        self.n_rois = n_rois
        self.frame_rate_hz = float(frame_rate_hz)
        self.timing = TrialTiming.from_config(task_cfg, frame_rate_hz, one_crossing=decoder_cfg.rules_version >= 2)
        self.f0_window = max(1, frames_for(decoder_cfg.f0_window_s, frame_rate_hz))
        self.baseline_target = max(1, frames_for(task_cfg.baseline_s, frame_rate_hz))
        self.max_gap_frames = frames_for(86_400.0, frame_rate_hz)  # a day: anything longer is a broken counter
        self._dff = SubsetDffTracker(n_rois, decoder_cfg, self.f0_window, defer_rest)  # see finish_frame
        self._decoder = make_decoder(decoder_cfg.decoder, n_rois, zscore=decoder_cfg.zscore,
                                     cell_cap=decoder_cfg.cell_cap)
        # here (configure), not on the first frame or at calibration: a first compile takes seconds
        compile_dff_kernels()
        compile_task_kernels()
        self._decoder.warm_up()
        if decoder_cfg.weights:
            self._decoder.set_weights(decoder_cfg.weights)
        elif decoder_cfg.up or decoder_cfg.down:
            self._decoder.set_ensembles(decoder_cfg.up, decoder_cfg.down)
        self._smoother = RunningMean(decoder_cfg.smoothing_frames)
        self._feedback = FeedbackMapper(task_cfg.feedback)
        self._calibration_cfg: CalibrationConfig = decoder_cfg.calibration
        self._mode = Mode.IDLE
        self._calibration: Calibration | None = None
        self._rtb_level = -math.inf
        self._machine: TrialMachine | None = None
        self._last_frame: int | None = None
        self._frames_seen = 0  # frames whose F/Fneu entered the F0 window
        self._bad_mask = decoder_cfg.bad_frame_mask
        self.bad_frames = 0  # frames held by the bad-frame rule
        self._bad_run = False  # the previous frame was a bad frame
        self._held = (math.nan, math.nan, math.nan)  # the last (up, down, cursor): a bad frame shows it again
        # F0 during BCI: _f0_task says it is not "running"; _f0_slow: push one valid frame in this many (0: none)
        self._f0_task = decoder_cfg.f0_mode != "running"
        self._f0_slow = decoder_cfg.f0_slow_factor if decoder_cfg.f0_mode == "slow" else 0
        self._task_frames = 0  # valid frames since BCI started (the slow F0's count)
        self._block = 0  # BCI blocks started
        self._monitor: DriftMonitor | None = None  # F0 drift and dF/F noise of the decoder's ROIs during BCI
        self._baseline = Baseline(n_rois, self.f0_window, decoder_cfg, task_cfg, self.timing, self.frame_rate_hz)
        self._pending: list[Event] = []
        self._events: list[Event] = []
        self._result = StepResult(self._dff.dff, self._events)
        self._defer = defer_calibration  # auto_protocol's calibration: a job for the caller (DecoderCore) to run
        self._job: CalibrationJob | None = None

    # ------------------------------------------------------------------ read-only state

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def calibration(self) -> Calibration | None:
        return self._calibration

    @property
    def up(self) -> list[int]:
        return list(self._decoder.up)

    @property
    def down(self) -> list[int]:
        return list(self._decoder.down)

    @property
    def calibration_job(self) -> CalibrationJob | None:
        """The end-of-baseline calibration waiting to be computed and applied (``decoder.calibrate_off_loop``)."""
        return self._job

    @property
    def baseline_frames(self) -> int:
        """Baseline frames recorded (or loaded) so far."""
        return self._baseline.count

    @property
    def trials(self) -> int:
        return self._machine.trial if self._machine else 0

    @property
    def hits(self) -> int:
        return self._machine.hits if self._machine else 0

    @property
    def misses(self) -> int:
        return self._machine.misses if self._machine else 0

    # ------------------------------------------------------------------ operator calls

    def start_baseline(self) -> None:
        """Start recording a new baseline (from IDLE or READY; a previous calibration is dropped)."""
        self._require("start_baseline", "start a baseline")
        self._drop_job("start_baseline")
        self._clear_calibration()
        self._baseline.start(self.baseline_target)
        self._mode = Mode.BASELINE
        self._queue("baseline_start", {"frames": self.baseline_target, "auto_protocol": self.task_cfg.auto_protocol})

    def load_baseline(self, F: np.ndarray, Fneu: np.ndarray) -> None:
        """Use a baseline recorded earlier (frames × n_rois F and Fneu) for calibrate().

        If this engine has not seen a frame yet, the F0 window is also warm-started from it. Costs one
        F0 update per baseline frame (about a second for 15,000 frames of 500 ROIs).
        """
        self._require("load_baseline", "load a baseline")
        warm = self._frames_seen == 0
        self._baseline.load(F, Fneu, self._dff.running if warm else None)
        self._drop_job("load_baseline")
        if warm:
            self._dff.seed_history()
        self._clear_calibration()
        self._mode = Mode.IDLE
        self._queue("baseline_loaded", {"frames": self._baseline.count, "warm_start": warm})

    def set_target_hit_rate(self, rate: float) -> None:
        """Calibrate to this hit rate from now on (method "hit_rate"), instead of the configured one."""
        rate = float(rate)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"`target_hit_rate`: must be between 0 and 1 (exclusive), got {rate}")
        self._calibration_cfg = msgspec.structs.replace(self._calibration_cfg, method="hit_rate",
                                                        target_hit_rate=rate)

    def calibrate(self, allow_rois: Sequence[int] | None = None) -> Calibration:
        """Calibrate on the baseline recorded so far (ending the recording) or loaded; -> READY.

        ``allow_rois``: the operator's explicit override of the F0 safeguards (:mod:`decoder.safeguards`) for
        these ROIs. Raises CalibrationError (mode unchanged, baseline recording goes on) when it cannot.
        """
        self._require("calibrate", "calibrate")
        cal = self._baseline.calibrate(self._decoder, self._calibration_cfg,
                                       [int(r) for r in allow_rois] if allow_rois else None)
        self._drop_job("calibrate")
        self._calibrated(cal, cal.to_dict())
        return cal

    def request_calibration(self, allow_rois: Sequence[int] | None, number: int) -> CalibrationJob:
        """calibrate() beside the loop: a job (the operator's ``number``-th) that finish_calibration() applies as
        calibrate() would; until then nothing changes (a baseline goes on recording). Drops an auto one waiting."""
        self._require("calibrate", "calibrate")
        self._drop_job("calibrate")
        self._job = CalibrationJob(-1 if self._last_frame is None else self._last_frame, self._baseline.snapshot(),
                                   self._decoder.clone(), self._calibration_cfg, requested_by="operator",
                                   number=number, allow_rois=[int(r) for r in allow_rois] if allow_rois else None)
        return self._job

    def _calibrated(self, cal: Calibration, as_dict: dict) -> None:
        if self._mode == Mode.BASELINE:
            self._end_baseline(None)
        self._apply_calibration(cal)
        self._queue("calibrated", {"calibration": as_dict})

    def set_calibration(self, cal: Calibration) -> None:
        """Use a stored calibration (its ensembles and weights too); -> READY. If this engine has seen no frame
        and has no baseline, the F0 window is warm-started from the calibration's F0 (a full window of it)."""
        self._require("set_calibration", "set a calibration")
        cal.check_usable(self.n_rois, self.decoder_cfg)
        self._drop_job("set_calibration")
        if self._decoder.uses_weights:
            self._decoder.set_weights(cal.weights)
        else:
            self._decoder.set_ensembles(cal.up, cal.down)
        self._smoother.reset()
        if self._frames_seen == 0 and self._baseline.count == 0 and cal.f0_quantiles:
            self._dff.fill_quantiles(np.asarray(cal.f0_levels), np.asarray(cal.f0_quantiles))
        self._apply_calibration(cal)
        self._queue("calibrated", {"calibration": cal.to_dict(), "source": "loaded"})

    def start_bci(self) -> None:
        """READY -> BCI: trials start with the next frame (an ITI first, unless iti_s is 0)."""
        self._require("start_bci", "start BCI (calibrate first)")
        self._start_bci(None)

    def pause(self) -> None:
        """BCI -> PAUSED: the task clock freezes (a running trial, hold or ITI continues on resume)."""
        self._require("pause", "pause")
        self._mode = Mode.PAUSED
        self._queue("pause", {"state": self._trial_state().name.lower()})

    def resume(self) -> None:
        self._require("resume", "resume")
        self._mode = Mode.BCI
        self._queue("resume", {"state": self._trial_state().name.lower()})

    def end_block(self) -> None:
        """BCI or PAUSED -> READY: this BCI block ends (a running trial is aborted), the session goes on."""
        self._require("end_block", "end a BCI block")
        machine = self._machine
        assert machine is not None
        finished: list[Event] = []
        machine.finish(-1, "block_ended", finished, block=self._block)
        self._pending.extend(finished)
        self._dff.widen()
        self._monitor = None
        self._mode = Mode.READY if self._calibration is not None else Mode.IDLE

    @property
    def block(self) -> int:
        """The number of the last BCI block started (0: none yet)."""
        return self._block

    def stop(self) -> None:
        """End the task (a running trial is aborted). Frames are still decoded for display. Idempotent."""
        if self._mode == Mode.STOPPED:
            return
        self._drop_job("stop")
        if self._machine is not None and self._machine.state != TrialState.DONE:
            finished: list[Event] = []
            self._machine.finish(-1, "stopped", finished)
            self._pending.extend(finished)
        self._mode = Mode.STOPPED
        self._dff.widen()
        self._queue("stopped", {})

    def manual_reward(self) -> None:
        """Record an operator reward ("manual_reward" event). The caller delivers it: the engine's
        ``reward_request`` is only for rewards the task earned."""
        self._queue("manual_reward", {"mode": self._mode.name.lower()})

    def set_ensembles(self, up: Sequence[int], down: Sequence[int]) -> None:
        """Choose the ensembles (not during BCI). Drops the calibration, which was for the old ones."""
        self._require("set_ensembles", "change the ensembles")
        up, down = check_ensembles(self.decoder_cfg.decoder, self.n_rois, up, down)
        self._drop_job("set_ensembles")
        self._decoder.set_ensembles(up, down)
        self._smoother.reset()
        self._clear_calibration()
        self._queue("ensembles", {"up": up, "down": down})

    def set_weights(self, weights: Sequence[float] | np.ndarray) -> None:
        """A decoder that ``uses_weights``: one weight per ROI (not during BCI). Drops the calibration."""
        self._require("set_weights", "change the weights")
        self._decoder.set_weights(weights)
        self._drop_job("set_weights")
        self._smoother.reset()
        self._clear_calibration()
        self._queue("ensembles", {"up": self._decoder.up, "down": self._decoder.down, "weighted": True})

    def take_pending_events(self) -> list[Event]:
        """Events of operator calls not yet reported by a step (e.g. after the last frame), stamped with
        the last frame seen (-1 if none)."""
        frame = -1 if self._last_frame is None else self._last_frame
        out = []
        for event in self._pending:
            out.append(Event(event.kind, event.trial, frame if event.frame < 0 else event.frame, event.detail))
        self._pending.clear()
        return out

    # ------------------------------------------------------------------ the frame

    def finish_frame(self) -> None:
        """Built with ``defer_rest``: the other ROIs' dF/F of the frame :meth:`step` decided during BCI (``res.dff``
        holds their last frame's until then); the next step does it otherwise."""
        self._dff.finish()

    def step(self, frame_number: int, F: np.ndarray, Fneu: np.ndarray, flags: int = 0) -> StepResult:
        """Decode one frame (``flags``: its acquisition FrameFlag word); see the module docstring. The result
        object is reused every call."""
        self._dff.finish()
        frame = int(frame_number)
        last = self._last_frame
        if last is not None and frame <= last:
            raise FrameOrderError(f"frame {frame} arrived after frame {last}: frame numbers must increase")
        if last is not None and frame - last > self.max_gap_frames:
            raise FrameOrderError(f"frame {frame} arrived after frame {last}: a jump of more than a day of frames "
                                  f"means the frame source restarted or numbers its frames wrongly")
        if F.shape != (self.n_rois,) or Fneu.shape != (self.n_rois,):
            raise ValueError(f"`F`/`Fneu`: expected {self.n_rois} values each, got {F.shape} and {Fneu.shape}")
        res = self._result
        events = self._events
        events.clear()
        res.reward_request = False
        if self._pending:
            for event in self._pending:
                if event.frame < 0:
                    event.frame = frame
                events.append(event)
            self._pending.clear()
        self._last_frame = frame
        mode = self._mode
        machine = self._machine

        missing = 0 if last is None else frame - last - 1
        if missing:
            detail = {"missing": missing, "first_missing": last + 1, "last_missing": frame - 1}  # type: ignore[operator]
            events.append(Event("gap", self.trials, frame, detail))
            self._smoother.push_missing(missing)
            if mode == Mode.BASELINE:
                self._baseline.gap_frames += missing
            elif mode == Mode.BCI and machine is not None:
                machine.skip(last + 1, missing, events)  # type: ignore[operator]

        tracker = self._dff
        bad = flags & self._bad_mask
        if bad:  # the bad-frame rule: F0, the smoothing window and the cursor hold
            valid = False
            tracker.invalidate()
            self.bad_frames += 1
            if not self._bad_run:
                events.append(Event("bad_frame", self.trials, frame, {"flags": int(flags)}))
            self._bad_run = True
            up, down, cursor = self._held
            usable = False
        else:
            self._bad_run = False
            valid = tracker.correct(F, Fneu)
            if valid:
                if self._f0_task and mode in (Mode.BCI, Mode.PAUSED):  # the F0 mode applies during the task
                    self._task_frames += 1
                    tracker.update(self._f0_slow > 0 and self._task_frames % self._f0_slow == 0)
                else:
                    tracker.update()
                self._frames_seen += 1
            else:
                tracker.invalidate()
                events.append(Event("bad_input", self.trials, frame, {}))
            decoder = self._decoder
            if valid and decoder.ready:
                up, down = self._smoother.push(*decoder.decode(tracker.dff))
                cursor = up - down
            else:
                self._smoother.push_missing(1)
                up = down = cursor = math.nan
            self._held = (up, down, cursor)
            usable = cursor == cursor  # not NaN

        trial_state = TrialState.NONE
        if mode == Mode.BASELINE:
            if valid:
                baseline = self._baseline
                baseline.record(tracker.corrected, tracker.f0)
                if baseline.count >= self.baseline_target:
                    self._end_baseline(frame)
            elif bad:
                self._baseline.bad_frames += 1
        elif mode == Mode.BCI and machine is not None:
            if machine.state != TrialState.DONE:
                trial_state = machine.state
                res.reward_request = machine.step(frame, cursor, usable, events)
            monitor = self._monitor
            if valid and monitor is not None:
                tracker.dff.take(monitor.index, out=monitor.dff_now)  # the method: no np.take wrapper per frame
                tracker.take_f0(monitor.index, monitor.f0_now)
                monitor.push(monitor.dff_now, monitor.f0_now, frame, machine.trial, events)
            if machine.state == TrialState.DONE:
                self._mode = Mode.STOPPED
                tracker.widen()
                events.append(Event("stopped", machine.trial, frame, {}))
        elif machine is not None:  # PAUSED, or STOPPED after BCI
            trial_state = machine.state

        feedback = self._feedback
        norm = feedback.normalise(cursor)
        res.frame = frame
        res.mode = mode
        res.trial = self.trials
        res.trial_state = trial_state
        res.up = up
        res.down = down
        res.cursor = cursor
        res.cursor_norm = norm
        res.tone_hz = feedback.tone_hz(norm)
        res.angle_bin = feedback.angle_bin(norm)
        return res

    # ------------------------------------------------------------------ internals

    def _require(self, command: str, action: str) -> None:
        allowed = COMMAND_MODES[command]
        if self._mode not in allowed:
            names = ", ".join(m.name.lower() for m in allowed)
            raise EngineStateError(f"cannot {action} in mode {self._mode.name.lower()} (only in: {names})")

    def _queue(self, kind: str, detail: dict) -> None:
        self._pending.append(Event(kind, self.trials, -1, detail))

    def _trial_state(self) -> TrialState:
        return self._machine.state if self._machine is not None else TrialState.NONE

    def _end_baseline(self, frame: int | None) -> None:
        """The recording ends (target reached, at ``frame``, or calibrate() called early, frame None)."""
        self._mode = Mode.IDLE
        detail = {"frames": self._baseline.count, "gap_frames": self._baseline.gap_frames,
                  "bad_frames": self._baseline.bad_frames}
        if frame is None:
            self._queue("baseline_done", detail)
            return
        self._events.append(Event("baseline_done", self.trials, frame, detail))
        if not self.task_cfg.auto_protocol or self._job is not None:  # the operator's calibration applies instead
            return
        if self._defer:  # computed beside the loop; finish_calibration() applies it
            self._job = CalibrationJob(frame, self._baseline.snapshot(), self._decoder.clone(), self._calibration_cfg)
            return
        try:
            cal = self._baseline.calibrate(self._decoder, self._calibration_cfg)
        except CalibrationError as exc:
            self._events.append(Event("calibration_failed", self.trials, frame, {"error": str(exc)}))
            return
        self._apply_calibration(cal)
        self._events.append(Event("calibrated", self.trials, frame, {"calibration": cal.to_dict()}))
        self._start_bci(frame)

    def finish_calibration(self, job: CalibrationJob) -> bool:
        """Apply a computed end-of-baseline calibration between frames: -> BCI ("calibrated", "bci_start"), or
        "calibration_failed" and IDLE, on the next frame stepped; False if an operator call dropped ``job``.
        The caller records that frame; replay calls this before the same one (decoder/calibration_job.py).
        The operator's job applies as calibrate(); its error changes nothing (the caller reports it)."""
        if job is not self._job or not job.done:
            return False
        self._job = None
        if job.error:
            if not job.by_operator:
                self._queue("calibration_failed", {"error": job.error})
            return True
        cal = job.calibration
        assert cal is not None and job.as_dict is not None
        self._calibrated(cal, job.as_dict)
        if not job.by_operator:  # auto_protocol goes on to BCI
            self._start_bci(None)
        return True

    def _drop_job(self, reason: str) -> None:
        """An operator call replaced the baseline, ensembles or calibration: a job for the old ones must not apply."""
        if self._job is not None:
            self._job.dropped = reason
            self._job = None

    def _start_bci(self, frame: int | None) -> None:
        cal = self._calibration
        assert cal is not None
        self._machine = TrialMachine(self.timing, cal.threshold, self._rtb_level, first_trial=self.trials)
        self._block += 1
        self._mode = Mode.BCI
        self._dff.narrow_to(self._decoder.rois)
        self._monitor = drift_monitor_for(self._decoder.rois, cal, self.n_rois, self.decoder_cfg, self.frame_rate_hz)
        self._task_frames = 0
        detail = {"threshold": cal.threshold, "trial_frames": self.timing.trial_frames,
                  "f0_mode": self.decoder_cfg.f0_mode, "block": self._block}
        if frame is None:
            self._queue("bci_start", detail)
        else:
            self._events.append(Event("bci_start", self.trials, frame, detail))

    def _clear_calibration(self) -> None:
        if self._calibration is not None:
            self._calibration = None
            self._feedback.clear_range()
            self._queue("calibration_cleared", {})
        if self._mode == Mode.READY:
            self._mode = Mode.IDLE

    def _apply_calibration(self, cal: Calibration) -> None:
        self._calibration = cal
        if self.decoder_cfg.zscore:
            self._decoder.set_zscore_stats(np.asarray(cal.dff_mean), np.asarray(cal.dff_std))
        self._feedback.set_range(cal.feedback_min, cal.feedback_max)
        self._rtb_level = rtb_level_for(cal.threshold, cal.cursor_median, self.task_cfg.rtb_fraction,
                                        self.task_cfg.return_to_baseline)
        self._mode = Mode.READY
