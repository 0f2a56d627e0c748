"""The decoder process: per-ROI fluorescence in, cursor / feedback / trial events / reward requests out.

Every decision comes from :class:`decoder.core.DecoderCore` (the same object ``rig replay`` runs); this
process is its :class:`~decoder.core.DecoderOutput` on the bus: it receives frames and operator
commands, publishes what the core decides and writes the files it owns (``decoder/``):
  ``decisions.rec``     one row per frame: stamps, mode, trial state, ensembles, cursor, feedback, dF/F
  ``calibration.json``  the calibration in force (written when made or loaded)
  ``events.jsonl``      trial events, calibration, reward requests, operator actions
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np

from decoder.calibration_job import ThreadCalibrator
from decoder.core import STAMP_FIELDS, DecoderCore, record_fields_dtype
from decoder.engine import StepResult
from decoder.lateness import LateWatch
from decoder.safeguards import describe
from rig.core.bus import SpinWaiter, Subscriber
from rig.core.clock import now_ns
from rig.core.direct_link import DirectLinkReceiver
from rig.core.process import RigProcess
from rig.core.realtime import IdleCollector
from rig.core.schema import CalibrationResult, Control, Decision, FluorFrame, RewardRequest, TrialEvent
from rig.core.store import REPLACE_BACKOFF_S, RecordWriter, json_default, replace_with_retry


class DecoderProcess(RigProcess):
    def configure(self) -> None:
        acq = self.spec.extra.get("upstream", {}).get("acquisition", {})
        if "n_rois" not in acq:
            raise RuntimeError("the acquisition process did not report its ROI count (n_rois) when ready")
        self.n_rois = int(acq["n_rois"])
        if "frame_rate_hz" not in acq:
            raise RuntimeError("the acquisition process did not report its frame rate when ready")
        self.frame_rate_hz = float(acq["frame_rate_hz"])
        if self.config.decoder.rules_version != 2:
            raise ValueError(f"`decoder.rules_version`: {self.config.decoder.rules_version} only replays sessions "
                             "recorded before the key (rig replay); a live session runs the current rules")
        # auto_protocol's calibration is computed by this thread, beside the loop (decoder/calibration_job.py)
        rig = self.config.rig
        self.calibrator = ThreadCalibrator(list(rig.cpu_affinity.get("decoder", [])), rig.background_priority == "low")
        if self.calibrator.refused:  # it still computes, at the loop's priority
            self.warn("priority_refused", f"calibration thread: {self.calibrator.refused}")
        self.core = DecoderCore(self.config.decoder, self.config.task, self.config.reward.volume_ul, self.n_rois,
                                self.frame_rate_hz, self, self.calibrator)
        self.fluor: Subscriber | DirectLinkReceiver
        if self.config.bus.fluor_link == "direct":  # frames straight from the acquisition (rig/core/direct_link.py)
            if "fluor_link_port" not in acq:
                raise RuntimeError("[bus] fluor_link = \"direct\", but the acquisition process did not report its "
                                   "link's port when ready")
            self.fluor = DirectLinkReceiver(int(acq["fluor_link_port"]))
        else:
            self.fluor = self.subscribe(["acquisition"], [FluorFrame.topic])
        self._link_lost_said = False
        self._waiter = SpinWaiter(1.0 / self.frame_rate_hz, self.config.rig.spin_wait_ms)
        self.records = RecordWriter(self.dir / "decisions.rec", self.core.record_dtype,
                                    self.config.session.flush_interval_s)
        self._stamp_fields = record_fields_dtype(self.core.record_dtype, STAMP_FIELDS)
        self._msg: FluorFrame | None = None  # the frame being decided
        self.late = LateWatch(self.frame_rate_hz, self.events.write, self.warn)  # decisions > a frame period late
        self._idle_gc: IdleCollector | None = None
        self._t_received = 0
        self._t_decided = 0

    def ready_info(self) -> dict[str, str]:
        return {"n_rois": str(self.n_rois)}

    def step(self) -> None:
        msg = self.fluor.recv(0) if self._waiter.wait(self.fluor.poll, 10) else None
        if msg is None:
            if isinstance(self.fluor, DirectLinkReceiver) and self.fluor.closed and not self._link_lost_said:
                self._link_lost_said = True  # no more frames this way: said at once, the supervisor sees the rest
                self.warn("fluor_link_lost", f"direct link from the acquisition: {self.fluor.last_error}")
            t0 = now_ns()
            self.records.flush_if_due()  # no frames coming: still nothing older than the flush interval in memory
            self.late.flushed((now_ns() - t0) / 1e6)
        else:
            self._waiter.arrived()
        while msg is not None:
            self._decide(msg)  # type: ignore[arg-type]
            msg = self.fluor.recv(0)

    def _decide(self, msg: FluorFrame) -> None:
        self._t_received = now_ns()
        self._msg = msg
        row = self.records.next_row()
        self.core.decide(msg.frame, msg.F, msg.Fneu, msg.flags, row)
        row.setfield((msg.t_ready, msg.t_registered, msg.t_extracted, self._t_received, self._t_decided),
                     self._stamp_fields, 0)  # STAMP_FIELDS, in one call
        t0 = now_ns()
        self.records.commit()
        flush_ms = (now_ns() - t0) / 1e6
        self.late.observe(msg.frame, (msg.t_ready, msg.t_registered, msg.t_extracted, msg.t_sent), self._t_received,
                          self._t_decided, "calibration thread" if self.calibrator.computing else "")
        self.late.flushed(flush_ms)  # a slow write delays the next frame, not this one
        if self._idle_gc is not None:
            self._idle_gc.collect_if_due()  # right after a decision: the next frame is a frame period away

    # ------------------------------------------------------------------ DecoderOutput: the bus and the files
    def decision(self, res: StepResult) -> None:
        msg = self._msg
        assert msg is not None
        self._t_decided = now_ns()
        self.publish(Decision(
            frame=msg.frame, t_ready=msg.t_ready, t_registered=msg.t_registered, t_extracted=msg.t_extracted,
            t_received=self._t_received, t_decided=self._t_decided, mode=int(res.mode), trial=res.trial,
            trial_state=int(res.trial_state), up=res.up, down=res.down, cursor=res.cursor,
            cursor_norm=res.cursor_norm, tone_hz=res.tone_hz, angle_bin=res.angle_bin,
            reward_requested=bool(res.reward_request),
        ))

    def reward_request(self, request_id: str, volume_ul: float, source: str, frame: int, *, override: bool = False,
                       issued_by: str = "") -> None:
        t_ready = self._msg.t_ready if source == "decoder" and self._msg is not None else 0
        self.publish(RewardRequest(request_id=request_id, volume_ul=volume_ul, source=source, frame=frame,
                                   t_ready=t_ready, t_requested=now_ns(), override=override, issued_by=issued_by))

    def event(self, kind: str, **fields: Any) -> None:
        self.events.write(kind, **fields)

    def trial_event(self, kind: str, trial: int, frame: int, hits: int, trials: int, detail: dict) -> None:
        if kind in ("f0_drift", "noise_change"):  # the F0 safeguards during BCI: the operator must hear of it
            self.warn(kind, describe(kind, detail))
        self.publish(TrialEvent(kind=kind, trial=trial, frame=frame, t_ns=now_ns(), hits=hits, trials=trials,
                                detail=_jsonable(detail)))

    def calibration_in_force(self, cal: dict[str, Any]) -> None:
        """Save the calibration and publish it. An unwritable file is a warning: the loop runs on with it.

        On Windows the write fails when another program holds ``calibration.json`` open past
        ``replace_with_retry``'s retries; the calibration then goes into the event log instead, so the record
        still has it (the ``trial`` event of the calibration does not carry it). Encoded with msgspec, in the
        loop: ~1 ms for 500 ROIs, where ``json.dumps(indent=2)`` took 30-60 ms.
        """
        path = self.dir / "calibration.json"
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.format(msgspec.json.encode(cal), indent=2))
            replace_with_retry(tmp, path, REPLACE_BACKOFF_S)
        except OSError as exc:
            self.events.write("calibration_not_saved", path=str(path), error=str(exc), calibration=cal)
            self.warn("calibration_file", f"could not write {path.name}: {exc}; the calibration is in force, and "
                      "recorded in events.jsonl (calibration_not_saved)")
        self.publish(CalibrationResult(
            threshold=float(cal["threshold"]), feedback_min=float(cal["feedback_min"]),
            feedback_max=float(cal["feedback_max"]), predicted_hit_rate=float(cal["predicted_hit_rate"]),
            method=str(cal["method"]), curve_thresholds=[float(x) for x in cal.get("curve_thresholds", [])],
            curve_hit_rates=[float(x) for x in cal.get("curve_hit_rates", [])],
            baseline_frames=int(cal.get("baseline_frames", 0)), t_ns=now_ns(),
            predicted_hit_rate_ci95=[float(x) for x in cal.get("predicted_hit_rate_ci95") or []],
            warnings=[str(w) for w in cal.get("warnings") or []],
        ))
        for warning in cal.get("warnings") or []:  # on stderr in a headless run, in the console's log
            self.warn("calibration_uncertain", str(warning))

    def refused(self, command: str, error: str) -> None:
        self.warn("command_refused", f"{command}: {error}")

    # ------------------------------------------------------------------ the process contract
    @contextlib.contextmanager
    def busy(self, what: str) -> Iterator[None]:
        """The base class's busy heartbeat, and the time it took for the late-decision count's causes."""
        t0 = now_ns()
        with super().busy(what):
            yield
        self.late.was_busy(what, (now_ns() - t0) / 1e6)

    def on_start(self) -> None:
        if self.config.rig.decoder_gc == "idle":  # after the base class set the thresholds and froze startup objects
            self._idle_gc = IdleCollector()

    def on_control(self, msg: Control) -> None:
        # Applied between frames; the "applied" line records after which frame, where `rig replay` applies it.
        self.core.apply_control(msg.command, msg.args, issued_by=msg.issued_by)

    def heartbeat_stats(self) -> dict[str, float]:
        core = self.core
        return {"frames": float(core.frames), "late_decisions": float(self.late.late),
                "trials": float(core.trials), "hits": float(core.hits), "bad_frames": float(core.engine.bad_frames),
                "gaps": float(self.fluor.gaps.gaps), "bad_messages": float(self.fluor.bad_messages)}

    def on_stop(self) -> None:
        if isinstance(getattr(self, "fluor", None), DirectLinkReceiver):
            self.fluor.close()
        if hasattr(self, "core"):
            self._msg = None
            self.core.finish()
        if hasattr(self, "calibrator") and not self.calibrator.close():
            self.events.write("calibration_thread_busy", note="still computing at stop; left to end with the process")
        if hasattr(self, "records"):
            self.records.close()
        if hasattr(self, "late"):
            self.events.write("late_decisions", period_ms=self.late.period_ns / 1e6, **self.late.stats())
            self.late.close()
        idle_gc = getattr(self, "_idle_gc", None)
        if idle_gc is not None:
            self.events.write("idle_gc", collections=idle_gc.collections)
            idle_gc.close()


def _jsonable(detail: dict) -> dict:
    """numpy values in an event's detail as plain Python (the bus codec takes only those)."""
    return {key: json_default(value) if isinstance(value, np.generic | np.ndarray) else value
            for key, value in detail.items()}
