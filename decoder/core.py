"""The decoder's per-frame and per-command logic, shared by the live process and ``rig replay``.

:class:`DecoderCore` wraps :class:`~decoder.engine.DecoderEngine` with everything the decoder does
around it: it numbers reward requests, fills the ``decisions.rec`` row, counts trials and hits, turns
engine events into ``decoder/events.jsonl`` lines, applies operator commands (refusing those the mode
does not allow) and hands out the calibration. Where results go is a :class:`DecoderOutput`: the live
process publishes them on the bus and writes files, replay keeps them in memory to compare with the
record. Both run this one class, so a replay equals the live run by construction, not by a copy kept
in step by hand.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from decoder.calibration_job import CalibrationJob, NextFrameCalibrator
from decoder.config import DecoderConfig, TaskConfig
from decoder.engine import COMMAND_ERRORS, DecoderEngine, StepResult
from rig.core.codes import Mode


def decision_record_dtype(n_rois: int) -> np.dtype:
    """One row of ``decoder/decisions.rec``: stamps, mode, trial state, ensembles, cursor, feedback, dF/F."""
    return np.dtype([
        ("frame", "i8"), ("t_ready", "i8"), ("t_registered", "i8"), ("t_extracted", "i8"),
        ("t_received", "i8"), ("t_decided", "i8"), ("mode", "i2"), ("trial", "i4"), ("trial_state", "i2"),
        ("up", "f4"), ("down", "f4"), ("cursor", "f4"), ("cursor_norm", "f4"), ("tone_hz", "f4"),
        ("angle_bin", "i2"), ("reward_requested", "?"), ("flags", "i4"), ("dff", "f4", (n_rois,)),
    ])


#: The fields of a calibration its "calibrated" event records (the whole one goes to ``calibration.json``).
CALIBRATION_SUMMARY = ("threshold", "predicted_hit_rate", "predicted_hit_rate_ci95", "method", "target",
                       "baseline_frames", "up", "down", "warnings", "allowed_rois", "needed_baseline_s")

#: Decision-record fields that are measurements of the run (stamps), not decisions.
STAMP_FIELDS = ("t_ready", "t_registered", "t_extracted", "t_received", "t_decided")
#: The decision fields of a record, in the order :func:`_fill_row` writes them.
DECISION_FIELDS = ("frame", "mode", "trial", "trial_state", "up", "down", "cursor", "cursor_norm", "tone_hz",
                   "angle_bin", "reward_requested", "flags", "dff")


def record_fields_dtype(record: np.dtype, names: tuple[str, ...]) -> np.dtype:
    """``names`` of ``record``, at their offsets in it: ``row.setfield(values, this, 0)`` writes those fields of a
    record row in one numpy call from a tuple, and leaves the others as they are (a field at a time costs
    ~0.7 µs each: 13 µs a frame for a decisions.rec row, 3 µs this way)."""
    return np.dtype({"names": list(names), "formats": [record.fields[n][0] for n in names],
                     "offsets": [record.fields[n][1] for n in names], "itemsize": record.itemsize})


def trial_event_record(kind: str, trial: int, frame: int, hits: int, trials: int,
                       detail: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``trial`` event in ``decoder/events.jsonl``.

    A detail key that clashes with a fixed field (``session_done`` carries its own ``hits``) is kept
    as ``detail_<key>``, so no value is lost or overwritten.
    """
    record: dict[str, Any] = {"event": kind, "trial": trial, "frame": frame, "hits": hits, "trials": trials}
    for key, value in detail.items():
        record[f"detail_{key}" if key in record or key in ("kind", "t_ns") else key] = value
    return record


class DecoderOutput(Protocol):
    """Where :class:`DecoderCore` sends what it decides (live: bus + files; replay: memory)."""

    def event(self, kind: str, **fields: Any) -> None:
        """One line of ``decoder/events.jsonl``."""

    def trial_event(self, kind: str, trial: int, frame: int, hits: int, trials: int, detail: dict) -> None:
        """A trial event for the other processes (``dec.trial``); after its ``event`` line."""

    def calibration_in_force(self, cal: dict[str, Any]) -> None:
        """A calibration came into force (``decoder/calibration.json``, ``dec.calib``)."""

    def reward_request(self, request_id: str, volume_ul: float, source: str, frame: int, *, override: bool = False,
                       issued_by: str = "") -> None:
        """Ask for a reward (``rwd.req``): called before the decision is published, the fastest path.
        ``override``/``issued_by``: a manual reward's operator override of the valve budget, and who asked."""

    def decision(self, res: StepResult) -> None:
        """The frame's decision is made (``dec.decision``); the record row is filled after this."""

    def refused(self, command: str, error: str) -> None:
        """An operator command was refused: tell the operator (the ``command_failed`` line is written)."""

    def busy(self, what: str) -> AbstractContextManager[None]:
        """Wrap work that may block for seconds (calibrating a long baseline)."""


class Calibrator(Protocol):
    """Computes the engine's end-of-baseline calibration (:class:`~decoder.calibration_job.CalibrationJob`) and
    says before which frame it applies: live a thread, as soon as it is done; replay where the record says."""

    def submit(self, job: CalibrationJob) -> None:
        """Start computing ``job`` (returns at once live; may compute it right away offline)."""

    def due(self, job: CalibrationJob, frame: int) -> bool:
        """Apply ``job`` (computed) before deciding ``frame``?"""


class DecoderCore:
    """The decoder between its input (frames, operator commands) and its :class:`DecoderOutput`."""

    def __init__(self, decoder_cfg: DecoderConfig, task_cfg: TaskConfig, reward_volume_ul: float, n_rois: int,
                 frame_rate_hz: float, output: DecoderOutput, calibrator: Calibrator | None = None) -> None:
        self.engine = DecoderEngine(decoder_cfg, task_cfg, n_rois, frame_rate_hz,
                                    defer_calibration=decoder_cfg.calibrate_off_loop, defer_rest=True)
        self.auto_protocol = task_cfg.auto_protocol
        self.calibrate_in_loop = task_cfg.auto_protocol and not decoder_cfg.calibrate_off_loop
        self.calibrator: Calibrator = calibrator if calibrator is not None else NextFrameCalibrator()
        # the operator's Calibrate beside the loop too (docs/TASK_RULES.md); false: computed in the loop
        self.operator_off_loop = decoder_cfg.calibrate_off_loop and decoder_cfg.operator_calibrate_off_loop
        self._job: CalibrationJob | None = None  # the calibration submitted, not yet applied
        self._operator_jobs = 0  # the operator's calibrations requested beside the loop (their record names)
        self._held: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = []  # commands behind the operator's job
        self.reward_volume_ul = reward_volume_ul
        self.output = output
        self.record_dtype = decision_record_dtype(n_rois)
        self._decision_fields = record_fields_dtype(self.record_dtype, DECISION_FIELDS)
        self.frames = 0
        self.last_frame = -1
        self.requests = 0
        self.hits = 0
        self.trials = 0

    @property
    def calibration_pending(self) -> CalibrationJob | None:
        """The calibration computing beside the loop, or computed and not yet applied (None: none)."""
        return self._job

    # ------------------------------------------------------------------ frames
    def decide(self, frame: int, F: np.ndarray, Fneu: np.ndarray, flags: int, row: np.ndarray | None) -> StepResult:
        """Decode one frame, fill ``row`` (a ``decisions.rec`` row; stamps are the caller's), emit the rest."""
        engine = self.engine
        if self._job is not None:
            self._settle_job(frame)
        if (self.calibrate_in_loop and engine.mode == Mode.BASELINE
                and engine.baseline_frames + 1 >= engine.baseline_target):
            with self.output.busy("calibrating"):  # this frame ends the baseline: calibration may take a while
                res = engine.step(frame, F, Fneu, flags)
        else:
            res = engine.step(frame, F, Fneu, flags)
        if res.reward_request:
            self.requests += 1
            self.output.reward_request(f"dec-{self.requests}", self.reward_volume_ul, "decoder", frame)
        self.output.decision(res)
        engine.finish_frame()  # the other ROIs' dF/F, once the decision is out
        if row is not None:
            if row.dtype is not self.record_dtype and row.dtype != self.record_dtype:  # offsets would be wrong
                raise TypeError(f"`row`: a decisions.rec row of {self.engine.n_rois} ROIs expected, got {row.dtype}")
            _fill_row(row, frame, flags, res, self._decision_fields)
        self.frames += 1
        self.last_frame = frame
        if res.reward_request:
            self.output.event("reward_request", request_id=f"dec-{self.requests}", frame=frame,
                              volume_ul=self.reward_volume_ul, trial=res.trial)
        for event in res.events:
            self._trial_event(event.kind, event.trial, event.frame, dict(event.detail))
        job = engine.calibration_job
        if job is not None and not job.submitted:  # this frame ended the baseline: calibrate beside the loop
            self._submit(job)
        return res

    def _submit(self, job: CalibrationJob, **fields: Any) -> None:
        """Hand ``job`` to the calibrator; an earlier one it replaced (the operator's calibrate replaces the
        end-of-baseline one) is reported dropped first."""
        if self._job is not None and self._job is not job:
            self._dropped(self._job)
        job.submitted = True
        self._job = job
        self.output.event("calibration_submitted", **job.describe(), **fields)
        self.calibrator.submit(job)

    def _dropped(self, job: CalibrationJob) -> None:
        self._job = None
        self.output.event("calibration_dropped", **job.describe(), reason=job.dropped)

    def _settle_job(self, frame: int) -> None:
        """Before deciding ``frame``: apply the calibration if it is due, or note that an operator call dropped
        it. The ``calibration_applied`` line is the frame replay applies it before. After the operator's, the
        commands that waited behind it are applied, in the order they came."""
        job = self._job
        assert job is not None
        if job is not self.engine.calibration_job:
            self._dropped(job)
            return
        if not self.calibrator.due(job, frame):
            return
        job.check()  # a crash (not a CalibrationError) in the computation is raised here, in the decoder's thread
        self._job = None
        self.engine.finish_calibration(job)
        self.output.event("calibration_applied", frame=frame, **job.describe(), ok=not job.error,
                          compute_ms=round(job.compute_ms, 1))
        if not job.by_operator:
            return
        if job.error:  # what a calibrate computed in the loop reported at once: nothing changed
            self.output.event("command_failed", command="calibrate", error=f"CalibrationError: {job.error}",
                              job=job.number)
            self.output.refused("calibrate", job.error)
        held, self._held = self._held, []
        for command, args, issued_by, note in held:  # a calibrate among them holds the rest again
            self.apply_control(command, args, issued_by=issued_by, **note)

    # ------------------------------------------------------------------ operator commands
    def apply_control(self, command: str, args: dict[str, Any], *, issued_by: str = "", **note: Any) -> bool:
        """Apply one operator command between frames; ``note`` goes into its ``applied`` line.

        The ``applied`` line records the frame it took effect after, which is where replay applies it
        again. A command the engine refuses is a ``command_failed`` line and a refusal, never fatal.
        While the operator's calibration computes beside the loop, a command other than a manual reward
        waits behind it (a ``command_held`` line; applied, with its ``applied`` line, right after the
        calibration applies): it then acts as it would have after a calibration computed in the loop.
        Returns whether it was applied (a held command: accepted).
        """
        job = self._job
        if job is not None and job.by_operator and command != "manual_reward":
            self._held.append((command, args, issued_by, note))
            self.output.event("command_held", command=command, args=args, after_frame=self.last_frame,
                              behind_job=job.number)
            return True
        self.output.event("applied", command=command, args=args, after_frame=self.last_frame, **note)
        try:
            self._apply(command, args, issued_by)
        except COMMAND_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.output.event("command_failed", command=command, error=error)
            self.output.refused(command, str(exc))
            return False
        return True

    def _apply(self, command: str, args: dict[str, Any], issued_by: str) -> None:
        engine = self.engine
        if command == "start_baseline":
            engine.start_baseline()
        elif command == "calibrate":
            if "target_hit_rate" in args:
                engine.set_target_hit_rate(float(args["target_hit_rate"]))
            if self.operator_off_loop:  # applied before the first frame decided after it is computed
                job = engine.request_calibration(args.get("allow_rois"), self._operator_jobs + 1)
                self._operator_jobs += 1
                self._submit(job, issued_by=issued_by)
            else:
                with self.output.busy("calibrating"):  # its "calibrated" event goes out with the next frame
                    engine.calibrate(args.get("allow_rois"))
        elif command == "start_bci":
            engine.start_bci()
        elif command == "pause":
            engine.pause()
        elif command == "end_block":
            engine.end_block()
        elif command == "resume":
            engine.resume()
        elif command == "manual_reward":
            volume = float(args.get("volume_ul", self.reward_volume_ul))
            engine.manual_reward()
            self.requests += 1
            self.output.reward_request(f"man-{self.requests}", volume, "manual", -1,
                                       override=args.get("override") is True, issued_by=issued_by)
        elif command == "set_ensembles":
            engine.set_ensembles([int(i) for i in args.get("up", [])], [int(i) for i in args.get("down", [])])

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        """End the task; the events of the stop itself (and of commands after the last frame) go out now.
        A calibration still computing never applies, nor do the commands held behind it."""
        self.engine.stop()
        if self._job is not None:
            self._dropped(self._job)
        for command, args, _, _ in self._held:
            self.output.event("command_not_applied", command=command, args=args,
                              reason="the session stopped before the calibration it waited for applied")
        self._held.clear()
        for event in self.engine.take_pending_events():
            self._trial_event(event.kind, event.trial, event.frame, dict(event.detail))

    # ------------------------------------------------------------------ internals
    def _trial_event(self, kind: str, trial: int, frame: int, detail: dict[str, Any]) -> None:
        if kind == "trial_start":
            self.trials += 1
        elif kind == "hit":
            self.hits += 1
        if kind == "calibrated":
            cal = detail.get("calibration", {})
            self.output.calibration_in_force(cal)
            # calibration.json holds the one in force; the event keeps what each block ran on (blocks, replay)
            detail = {k: v for k, v in detail.items() if k != "calibration"}
            detail["calibration"] = {key: cal[key] for key in CALIBRATION_SUMMARY if key in cal}
        self.output.event("trial", **trial_event_record(kind, trial, frame, self.hits, self.trials, detail))
        self.output.trial_event(kind, trial, frame, self.hits, self.trials, detail)


def _fill_row(row: np.void, frame: int, flags: int, res: StepResult, fields: np.dtype) -> None:
    """The decision fields of ``row`` (``fields``: :data:`DECISION_FIELDS` of its dtype), in one call."""
    row.setfield((frame, int(res.mode), res.trial, int(res.trial_state), res.up, res.down, res.cursor, res.cursor_norm,
                  res.tone_hz, res.angle_bin, res.reward_request, flags, res.dff), fields, 0)
