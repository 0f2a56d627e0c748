"""The decoder process: per-ROI fluorescence in, cursor / feedback / trial events / reward requests out.

All decisions come from :class:`decoder.engine.DecoderEngine`, a pure function of (config, calibration,
input stream); this wrapper only moves messages and writes records. Files it owns (``decoder/``):
  ``decisions.rec``     one row per frame: stamps, mode, trial state, ensembles, cursor, feedback, dF/F
  ``calibration.json``  the calibration in force (written when made or loaded)
  ``events.jsonl``      trial events, calibration, reward requests, operator actions
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decoder.engine import COMMAND_ERRORS, DecoderEngine, Mode
from rig.core.bus import SpinWaiter
from rig.core.clock import now_ns
from rig.core.process import RigProcess
from rig.core.schema import CalibrationResult, Control, Decision, FluorFrame, RewardRequest, TrialEvent
from rig.core.store import RecordWriter, json_default, write_json_atomic


def decision_record_dtype(n_rois: int) -> np.dtype:
    return np.dtype([
        ("frame", "i8"), ("t_ready", "i8"), ("t_registered", "i8"), ("t_extracted", "i8"),
        ("t_received", "i8"), ("t_decided", "i8"), ("mode", "i2"), ("trial", "i4"), ("trial_state", "i2"),
        ("up", "f4"), ("down", "f4"), ("cursor", "f4"), ("cursor_norm", "f4"), ("tone_hz", "f4"),
        ("angle_bin", "i2"), ("reward_requested", "?"), ("flags", "i4"), ("dff", "f4", (n_rois,)),
    ])


def trial_event_record(kind: str, trial: int, frame: int, hits: int, trials: int,
                       detail: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``trial`` event in ``decoder/events.jsonl`` (shared with ``rig replay``).

    A detail key that clashes with a fixed field (``session_done`` carries its own ``hits``) is kept
    as ``detail_<key>``, so no value is lost or overwritten.
    """
    record: dict[str, Any] = {"event": kind, "trial": trial, "frame": frame, "hits": hits, "trials": trials}
    for key, value in detail.items():
        record[f"detail_{key}" if key in record or key in ("kind", "t_ns") else key] = value
    return record


class DecoderProcess(RigProcess):
    def configure(self) -> None:
        acq = self.spec.extra.get("upstream", {}).get("acquisition", {})
        if "n_rois" not in acq:
            raise RuntimeError("the acquisition process did not report its ROI count (n_rois) when ready")
        self.n_rois = int(acq["n_rois"])
        if "frame_rate_hz" not in acq:
            raise RuntimeError("the acquisition process did not report its frame rate when ready")
        self.frame_rate_hz = float(acq["frame_rate_hz"])
        self.engine = DecoderEngine(self.config.decoder, self.config.task, self.n_rois, self.frame_rate_hz)
        self.fluor = self.subscribe(["acquisition"], [FluorFrame.topic])
        self._waiter = SpinWaiter(1.0 / self.frame_rate_hz, self.config.rig.spin_wait_ms)
        self.records = RecordWriter(self.dir / "decisions.rec", decision_record_dtype(self.n_rois),
                                    self.config.session.flush_interval_s)
        self.frames = 0
        self.last_frame = -1
        self.requests = 0
        self.hits = 0
        self.trials = 0

    def ready_info(self) -> dict[str, str]:
        return {"n_rois": str(self.n_rois)}

    def step(self) -> None:
        msg = self.fluor.recv(0) if self._waiter.wait(self.fluor.socket.poll, 10) else None
        if msg is None:
            self.records.flush_if_due()  # no frames coming: still nothing older than the flush interval in memory
        else:
            self._waiter.arrived()
        while msg is not None:
            self._decide(msg)  # type: ignore[arg-type]
            msg = self.fluor.recv(0)

    def _decide(self, msg: FluorFrame) -> None:
        t_received = now_ns()
        engine = self.engine
        if (engine.mode == Mode.BASELINE and self.config.task.auto_protocol
                and engine.baseline_frames + 1 >= engine.baseline_target):
            with self.busy("calibrating"):  # this frame ends the baseline: calibration may take seconds
                res = engine.step(msg.frame, msg.F, msg.Fneu)
        else:
            res = engine.step(msg.frame, msg.F, msg.Fneu)
        if res.reward_request:
            self.requests += 1
            self.publish(RewardRequest(request_id=f"dec-{self.requests}", volume_ul=self.config.reward.volume_ul,
                                       source="decoder", frame=msg.frame, t_ready=msg.t_ready,
                                       t_requested=now_ns()))
        t_decided = now_ns()
        self.publish(Decision(
            frame=msg.frame, t_ready=msg.t_ready, t_registered=msg.t_registered, t_extracted=msg.t_extracted,
            t_received=t_received, t_decided=t_decided, mode=int(res.mode), trial=res.trial,
            trial_state=int(res.trial_state), up=res.up, down=res.down, cursor=res.cursor,
            cursor_norm=res.cursor_norm, tone_hz=res.tone_hz, angle_bin=res.angle_bin,
            reward_requested=bool(res.reward_request),
        ))
        row = self.records.next_row()
        row["frame"] = msg.frame
        row["t_ready"] = msg.t_ready
        row["t_registered"] = msg.t_registered
        row["t_extracted"] = msg.t_extracted
        row["t_received"] = t_received
        row["t_decided"] = t_decided
        row["mode"] = int(res.mode)
        row["trial"] = res.trial
        row["trial_state"] = int(res.trial_state)
        row["up"] = res.up
        row["down"] = res.down
        row["cursor"] = res.cursor
        row["cursor_norm"] = res.cursor_norm
        row["tone_hz"] = res.tone_hz
        row["angle_bin"] = res.angle_bin
        row["reward_requested"] = res.reward_request
        row["flags"] = msg.flags
        row["dff"] = res.dff
        self.records.commit()
        self.frames += 1
        self.last_frame = msg.frame
        if res.reward_request:
            self.events.write("reward_request", request_id=f"dec-{self.requests}", frame=msg.frame,
                              volume_ul=self.config.reward.volume_ul, trial=res.trial)
        for event in res.events:
            self._publish_event(event.kind, event.trial, event.frame, dict(event.detail))

    def _publish_event(self, kind: str, trial: int, frame: int, detail: dict) -> None:
        if kind == "trial_start":
            self.trials += 1
        elif kind == "hit":
            self.hits += 1
        if kind == "calibrated":
            self._publish_calibration(detail.get("calibration", {}))
            detail = {k: v for k, v in detail.items() if k != "calibration"}
        self.events.write("trial", **trial_event_record(kind, trial, frame, self.hits, self.trials, detail))
        self.publish(TrialEvent(kind=kind, trial=trial, frame=frame, t_ns=now_ns(), hits=self.hits,
                                trials=self.trials, detail=_jsonable(detail)))

    def _publish_calibration(self, cal: dict) -> None:
        write_json_atomic(self.dir / "calibration.json", cal)
        self.publish(CalibrationResult(
            threshold=float(cal["threshold"]), feedback_min=float(cal["feedback_min"]),
            feedback_max=float(cal["feedback_max"]), predicted_hit_rate=float(cal["predicted_hit_rate"]),
            method=str(cal["method"]), curve_thresholds=[float(x) for x in cal.get("curve_thresholds", [])],
            curve_hit_rates=[float(x) for x in cal.get("curve_hit_rates", [])],
            baseline_frames=int(cal.get("baseline_frames", 0)), t_ns=now_ns(),
        ))

    def on_start(self) -> None:
        pass

    def on_control(self, msg: Control) -> None:
        # Controls are applied between frames: "after_frame" lets `rig replay` apply them at the same point.
        self.events.write("applied", command=msg.command, args=msg.args, after_frame=self.last_frame)
        try:
            self._apply_control(msg)
        except COMMAND_ERRORS as exc:
            # An operator command that does not fit the current state is refused, not fatal.
            self.events.write("command_failed", command=msg.command, error=f"{type(exc).__name__}: {exc}")
            self.warn("command_refused", f"{msg.command}: {exc}")

    def _apply_control(self, msg: Control) -> None:
        cmd = msg.command
        if cmd == "start_baseline":
            self.engine.start_baseline()
        elif cmd == "calibrate":
            if "target_hit_rate" in msg.args:
                self.engine.set_target_hit_rate(float(msg.args["target_hit_rate"]))
            with self.busy("calibrating"):
                self.engine.calibrate()  # its "calibrated" event is published with the next frame
        elif cmd == "start_bci":
            self.engine.start_bci()
        elif cmd == "pause":
            self.engine.pause()
        elif cmd == "resume":
            self.engine.resume()
        elif cmd == "manual_reward":
            self.engine.manual_reward()
            self.requests += 1
            self.publish(RewardRequest(request_id=f"man-{self.requests}",
                                       volume_ul=float(msg.args.get("volume_ul", self.config.reward.volume_ul)),
                                       source="manual", t_requested=now_ns()))
        elif cmd == "set_ensembles":
            self.engine.set_ensembles([int(i) for i in msg.args.get("up", [])],
                                      [int(i) for i in msg.args.get("down", [])])

    def heartbeat_stats(self) -> dict[str, float]:
        return {"frames": float(self.frames), "trials": float(self.trials), "hits": float(self.hits),
                "gaps": float(self.fluor.gaps.gaps), "bad_messages": float(self.fluor.bad_messages)}

    def on_stop(self) -> None:
        if hasattr(self, "engine"):
            self.engine.stop()
            # Events of the stop itself (and of controls after the last frame) have no frame to ride on.
            for event in self.engine.take_pending_events():
                self._publish_event(event.kind, event.trial, event.frame, dict(event.detail))
        if hasattr(self, "records"):
            self.records.close()


def _jsonable(detail: dict) -> dict:
    """numpy values in an event's detail as plain Python (the bus codec takes only those)."""
    return {key: json_default(value) if isinstance(value, np.generic | np.ndarray) else value
            for key, value in detail.items()}
