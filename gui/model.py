"""What the console knows about the rig: pure Python, no Qt, no sockets.

:class:`ConsoleModel` ingests bus messages (and supervisor snapshots) into preallocated rings and a few
scalars, and computes the numbers the window shows: per-stage latency p50/p99 from the Decision
stamps, rolling hit rate, rewards per minute, heartbeat ages. It keeps only what is displayed, so its
memory is fixed by :class:`gui.config.GuiConfig` whatever the session length or ROI count.

Times: rig stamps (``*_ns``) are ``rig.core.clock.now_ns`` of the rig PC. Plots put "now" at the newest
rig stamp seen, so a console on another machine (another clock) still draws correct time axes.
Heartbeat ages use the console's own monotonic clock at reception, for the same reason.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from gui.config import GuiConfig
from gui.labels import CodeNames
from gui.planes_model import PlanesState, plane_settings
from gui.rings import ColumnRing
from gui.roles import RoleEdit
from rig.core.codes import Mode
from rig.core.operator import BaselineProgress, Calibration, Snapshot, follow_protocol
from rig.core.schema import (
    AcqStatus,
    CalibrationResult,
    Control,
    Decision,
    FluorFrame,
    Heartbeat,
    Lick,
    LinkState,
    Message,
    PlaneFluor,
    Preview,
    ProcessError,
    RewardOutcome,
    RigWarning,
    StateChange,
    TrialEvent,
)

#: Latency stages computed from the Decision stamps: (label, later stamp, earlier stamp).
LATENCY_STAGES: tuple[tuple[str, str, str], ...] = (
    ("register", "t_registered", "t_ready"),
    ("extract", "t_extracted", "t_registered"),
    ("transport", "t_received", "t_extracted"),
    ("decide", "t_decided", "t_received"),
    ("total", "t_decided", "t_ready"),
)

OUTCOME_KINDS = {"hit": True, "miss": False, "timeout": False}

#: ``RewardOutcome.source`` -> kind code in the reward ring. Only decoder and manual rewards are rewards for
#: the mouse (the same as ``rig.offline.summary.REWARD_SOURCES``, which the console may not import); every
#: other source (test_pulse, flush, calibration) is a valve opening counted apart, so the console's volume
#: matches ``summary.json``.
REWARD_KINDS = {"decoder": 0, "manual": 1}
REWARD_SOURCES = tuple(REWARD_KINDS)
OTHER_PULSE = 2

@dataclass
class ProcessHealth:
    """One process as the console sees it."""

    name: str
    state: str = "unknown"
    critical: bool = True
    pid: int = 0
    last_seen: float = 0.0  # console monotonic seconds at the last message from it (0: never)
    stats: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class WarningEntry:
    """A line in the window's warning list."""

    when: str  # console wall-clock time, HH:MM:SS
    level: str  # "warning" | "error" | "info"
    source: str
    code: str
    message: str


@dataclass
class PreviewState:
    image: np.ndarray
    frame: int
    dy: float
    dx: float
    corr: float
    z_um: float = float("nan")  # z-tracking's latest depth estimate (NaN without it)


class ConsoleModel:
    """Everything the window displays, fed one message at a time."""

    def __init__(self, cfg: GuiConfig, mode_names: CodeNames | None = None, state_names: CodeNames | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.mode_names = mode_names or CodeNames("mode")
        self.state_names = state_names or CodeNames("state")
        rows = cfg.history_rows
        self.decisions = ColumnRing(rows, {
            "frame": np.int64, "t": np.int64, "up": np.float32, "down": np.float32, "cursor": np.float32,
            "cursor_norm": np.float32, "mode": np.int16, "trial": np.int32, "trial_state": np.int16,
        })
        self.latency = ColumnRing(cfg.latency_window_frames, {name: np.float32 for name, _, _ in LATENCY_STAGES})
        self.fluor = ColumnRing(rows, {
            "frame": np.int64, "t": np.int64, "dy": np.float32, "dx": np.float32, "corr": np.float32,
            "flags": np.int32, "selected": np.float32,
        })
        self.rewards = ColumnRing(2000, {"t": np.int64, "volume_ul": np.float32, "delivered": np.bool_,
                                         "kind": np.int8, "latency_ms": np.float32})  # kind: REWARD_KINDS
        self.licks = ColumnRing(5000, {"t": np.int64})
        self.outcomes = ColumnRing(5000, {"trial": np.int32, "hit": np.bool_, "t": np.int64})
        self.reward_latency = ColumnRing(500, {"ms": np.float32})
        self.processes: dict[str, ProcessHealth] = {}
        self.warnings: deque[WarningEntry] = deque(maxlen=cfg.warnings_kept)
        self.warnings_total = 0  # warnings ever added (the deque keeps the newest)
        self.events: deque[str] = deque(maxlen=200)
        self.events_total = 0
        self.preview: PreviewState | None = None  # the BCI plane's; the other planes' in ``planes``
        self.planes = PlanesState()
        self.preview_count = 0
        self.acq_status: AcqStatus | None = None
        self.link_state = "unknown"
        self.link_detail = ""
        self._link_from_bus = False  # a LinkState received: newer than any snapshot's
        self.calibration: dict[str, Any] | None = None  # the fields of rig.core.operator.Calibration
        self.calibration_count = 0
        self.trials = 0
        self.hits = 0
        self.rewards_delivered = 0
        self.rewards_failed = 0
        self.rewards_before_join = 0  # delivered before the console joined (counted by the supervisor)
        self.volume_ul = 0.0
        self.other_pulses = 0  # test pulses, flushes, valve calibration: not rewards
        self.other_volume_ul = 0.0
        self.baseline: BaselineProgress | None = None  # the baseline being recorded (baseline_start)
        self.baseline_seen_from: int | None = None  # first frame in baseline mode this console saw
        self.calibration_failure = ""  # why the last calibration failed, until a new baseline or calibration
        self.last_event = ""
        self.supervisor_mode = "unknown"
        self.session_dir = ""
        self.endpoints: dict[str, str] = {}
        self.config: dict[str, Any] = {}
        self.metadata: dict[str, str] = {}
        self.roles = RoleEdit()
        self.selected_roi: int | None = None
        self.n_rois_seen = 0
        self.latest_rig_ns = 0
        self.first_rig_ns = 0
        self.messages = 0
        self.snapshots = 0
        self.safe_state = ""
        self._warned_snapshot: set[tuple[str, str, str]] = set()
        self._fluor_times = deque(maxlen=64)  # console receive times of FluorFrames (console-side rate)
        self._handlers: dict[type[Message], Callable[[Any], None]] = {
            Decision: self._on_decision, FluorFrame: self._on_fluor, Preview: self._on_preview,
            AcqStatus: self._on_acq_status, TrialEvent: self._on_trial_event,
            CalibrationResult: self._on_calibration, RewardOutcome: self._on_reward, Lick: self._on_lick,
            LinkState: self._on_link, Heartbeat: self._on_heartbeat, StateChange: self._on_state,
            RigWarning: self._on_rig_warning, ProcessError: self._on_process_error, Control: self._on_control,
            PlaneFluor: self.planes.on_fluor,
        }

    # ------------------------------------------------------------------ ingest
    def ingest(self, msg: Message) -> None:
        """Fold one bus message into the model. Unknown message types are ignored (not displayed)."""
        handler = self._handlers.get(type(msg))
        if handler is not None:
            self.messages += 1
            handler(msg)

    def _stamp(self, t_ns: int) -> None:
        if t_ns > self.latest_rig_ns:
            self.latest_rig_ns = t_ns
            if not self.first_rig_ns:
                self.first_rig_ns = t_ns

    def _on_decision(self, msg: Decision) -> None:
        i = self.decisions.advance()
        cols = self.decisions.columns
        cols["frame"][i] = msg.frame
        cols["t"][i] = msg.t_decided
        cols["up"][i] = msg.up
        cols["down"][i] = msg.down
        cols["cursor"][i] = msg.cursor
        cols["cursor_norm"][i] = msg.cursor_norm
        cols["mode"][i] = msg.mode
        cols["trial"][i] = msg.trial
        cols["trial_state"][i] = msg.trial_state
        if msg.mode != Mode.BASELINE:
            self.baseline_seen_from = None
        elif self.baseline_seen_from is None:
            self.baseline_seen_from = msg.frame
        self._stamp(msg.t_decided)
        if msg.t_ready > 0 and msg.t_registered > 0 and msg.t_extracted > 0 and msg.t_received > 0:
            j = self.latency.advance()
            lat = self.latency.columns
            lat["register"][j] = (msg.t_registered - msg.t_ready) * 1e-6
            lat["extract"][j] = (msg.t_extracted - msg.t_registered) * 1e-6
            lat["transport"][j] = (msg.t_received - msg.t_extracted) * 1e-6
            lat["decide"][j] = (msg.t_decided - msg.t_received) * 1e-6
            lat["total"][j] = (msg.t_decided - msg.t_ready) * 1e-6

    def _on_fluor(self, msg: FluorFrame) -> None:
        i = self.fluor.advance()
        cols = self.fluor.columns
        t = msg.t_sent or msg.t_extracted
        cols["frame"][i] = msg.frame
        cols["t"][i] = t
        cols["dy"][i] = msg.dy
        cols["dx"][i] = msg.dx
        cols["corr"][i] = msg.corr
        cols["flags"][i] = msg.flags
        n = msg.F.shape[0]
        self.n_rois_seen = n
        sel = self.selected_roi
        cols["selected"][i] = msg.F[sel] - 0.7 * msg.Fneu[sel] if sel is not None and sel < n else np.nan
        self._fluor_times.append(self.clock())
        self._stamp(t)

    def _on_preview(self, msg: Preview) -> None:
        if msg.plane != plane_settings(self.config)[1]:  # another plane than the BCI plane's (docs/PLANES.md)
            self.planes.on_preview(msg)
            return
        # The image is a read-only view of the received frame; keeping only the newest bounds memory.
        self.preview = PreviewState(image=msg.image, frame=msg.frame, dy=msg.dy, dx=msg.dx, corr=msg.corr,
                                    z_um=msg.z_um)
        self.preview_count += 1
        self._stamp(msg.t_ns)

    def _on_acq_status(self, msg: AcqStatus) -> None:
        self.acq_status = msg
        self._stamp(msg.t_ns)

    def _on_trial_event(self, msg: TrialEvent) -> None:
        self.trials = msg.trials  # cumulative counts from the decoder: authoritative
        self.hits = msg.hits
        self.last_event = msg.kind
        self._stamp(msg.t_ns)
        if msg.kind in OUTCOME_KINDS:
            i = self.outcomes.advance()
            self.outcomes.columns["trial"][i] = msg.trial
            self.outcomes.columns["hit"][i] = OUTCOME_KINDS[msg.kind]
            self.outcomes.columns["t"][i] = msg.t_ns
        if msg.kind not in ("trial_start", "iti"):
            detail = f": {msg.detail['error']}" if "error" in msg.detail else ""
            self._event_line(f"{msg.kind} (trial {msg.trial}, frame {msg.frame}){detail}")
        if msg.kind.endswith("_failed") or "error" in msg.detail:
            # e.g. calibration_failed: the auto protocol stopped and waits for the operator.
            self.add_warning("warning", msg.sender or "decoder", msg.kind, str(msg.detail.get("error", msg.detail)))
        self.baseline, self.calibration_failure = follow_protocol(msg.kind, msg.frame, msg.detail, self.baseline,
                                                                  self.calibration_failure)

    def _on_calibration(self, msg: CalibrationResult) -> None:
        # The same fields whether it arrives on the bus or in a snapshot (rig.core.operator.Calibration).
        self.calibration = msgspec.structs.asdict(Calibration.from_result(msg))
        self.calibration_count += 1
        ci = msg.predicted_hit_rate_ci95
        interval = f" [95 %: {ci[0]:.0%}–{ci[1]:.0%}]" if len(ci) == 2 else ""
        self._event_line(f"calibrated: threshold {msg.threshold:.3g}, predicted hit rate "
                         f"{msg.predicted_hit_rate:.0%}{interval} ({msg.method}, {msg.baseline_frames} baseline "
                         "frames)")

    def _on_reward(self, msg: RewardOutcome) -> None:
        delivered = msg.status == "delivered"
        kind = REWARD_KINDS.get(msg.source, OTHER_PULSE)
        t = msg.t_done or msg.t_ack or msg.t_written or msg.t_requested
        i = self.rewards.advance()
        cols = self.rewards.columns
        cols["t"][i] = t
        cols["volume_ul"][i] = msg.volume_ul
        cols["delivered"][i] = delivered
        cols["kind"][i] = kind
        latency = (msg.t_written - msg.t_ready) * 1e-6 if msg.t_ready > 0 and msg.t_written > 0 else np.nan
        cols["latency_ms"][i] = latency
        if kind == OTHER_PULSE:  # a test pulse or a flush: the valve opened, the mouse was not rewarded
            self.other_pulses += 1
            if delivered:
                self.other_volume_ul += msg.volume_ul
            else:
                self._event_line(f"{msg.source} {msg.request_id} {msg.status}: {msg.reason}")
        elif delivered:
            self.rewards_delivered += 1
            self.volume_ul += msg.volume_ul
            if latency == latency:  # not NaN: a decoder reward with both stamps
                self.reward_latency.columns["ms"][self.reward_latency.advance()] = latency
        else:
            self.rewards_failed += 1
            self._event_line(f"reward {msg.request_id} {msg.status}: {msg.reason}")
        self._stamp(t)

    def _on_lick(self, msg: Lick) -> None:
        if msg.onset:
            self.licks.columns["t"][self.licks.advance()] = msg.t_ns
            self._stamp(msg.t_ns)

    def _on_link(self, msg: LinkState) -> None:
        self.link_state = msg.state
        self.link_detail = msg.detail
        self._link_from_bus = True

    def _process(self, name: str) -> ProcessHealth:
        proc = self.processes.get(name)
        if proc is None:
            proc = self.processes[name] = ProcessHealth(name)
        return proc

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        if msg.process == "supervisor":
            self.supervisor_mode = msg.state
        proc = self._process(msg.process)
        proc.state = msg.state
        proc.pid = msg.pid
        proc.last_seen = self.clock()
        if msg.stats:
            proc.stats = dict(msg.stats)

    def _on_state(self, msg: StateChange) -> None:
        proc = self._process(msg.process)
        previous = proc.state
        proc.state = msg.state
        proc.last_seen = self.clock()
        if msg.state != previous:
            self._event_line(f"{msg.process}: {msg.state}" + (f" ({msg.reason})" if msg.reason and
                                                              not msg.reason.startswith("info:") else ""))
        if msg.state == "failed":
            proc.error = msg.reason
            self.add_warning("error", msg.process, "failed", msg.reason or "process failed")

    def _on_rig_warning(self, msg: RigWarning) -> None:
        self.add_warning("warning", msg.process, msg.code, msg.message)
        if msg.code == "command_refused" and msg.message.startswith("calibrate:"):  # the operator's calibrate
            self.calibration_failure = msg.message.removeprefix("calibrate:").strip()
        if msg.code == "safe_state":
            self.safe_state = msg.message

    def _on_process_error(self, msg: ProcessError) -> None:
        proc = self._process(msg.process)
        proc.error = f"{msg.error_type}: {msg.message}"
        self.add_warning("error", msg.process, msg.error_type, msg.message)

    def _on_control(self, msg: Control) -> None:
        if msg.command == "safe_state":
            self.safe_state = str(msg.args.get("reason", "safe state"))
            self.add_warning("error", "supervisor", "safe_state", self.safe_state)
        elif msg.command == "set_ensembles":
            # Relayed by the supervisor to every process: this (or another) console's edit is now in force.
            self.roles.set_applied(list(msg.args.get("up", [])), list(msg.args.get("down", [])), keep_edits=True)
            self._event_line(f"ensembles set by {msg.issued_by}: up {sorted(self.roles.applied_up)}, "
                             f"down {sorted(self.roles.applied_down)}")
        elif msg.command not in ("start", "stop", "shutdown"):
            args = ", ".join(f"{k}={v}" for k, v in msg.args.items())
            self._event_line(f"{msg.command}({args}) by {msg.issued_by}")

    # ------------------------------------------------------------------ snapshot (late join)
    def apply_snapshot(self, snap: Snapshot) -> None:
        """Catch up from the supervisor's snapshot: counters, calibration, states, warnings, metadata."""
        first = self.snapshots == 0
        self.snapshots += 1
        self.session_dir = snap.session_dir
        self.endpoints = dict(snap.endpoints)
        self.supervisor_mode = snap.mode
        self.config = dict(snap.config or self.config)
        counts = snap.counts
        self.trials = max(self.trials, counts.trials)
        self.hits = max(self.hits, counts.hits)
        if first and counts.rewards_delivered > self.rewards_delivered:
            self.rewards_before_join = counts.rewards_delivered - self.rewards_delivered
        self.rewards_delivered = max(self.rewards_delivered, counts.rewards_delivered)
        self.rewards_failed = max(self.rewards_failed, counts.rewards_failed)
        self.volume_ul = max(self.volume_ul, counts.volume_ul)
        self.other_pulses = max(self.other_pulses, counts.other_pulses)
        self.other_volume_ul = max(self.other_volume_ul, counts.other_volume_ul)
        if snap.link is not None and not self._link_from_bus:  # the bus only says when it changes
            self.link_state, self.link_detail = snap.link.state, snap.link.detail
        if snap.baseline is not None and self.baseline is None:
            self.baseline = snap.baseline
        if first and snap.calibration_failure and not self.calibration_failure:
            self.calibration_failure = snap.calibration_failure
        if snap.calibration is not None and self.calibration is None:
            self.calibration = msgspec.structs.asdict(snap.calibration)
            self.calibration_count += 1
        now = self.clock()
        for name, status in snap.processes.items():
            proc = self._process(name)
            proc.critical = status.critical
            if proc.last_seen == 0.0 or status.state == "failed_reported":
                proc.state = "lost" if status.state == "failed_reported" else status.state
                if status.stats:
                    proc.stats = dict(status.stats)
            if proc.last_seen == 0.0:
                proc.last_seen = now if status.state in ("running", "ready") else 0.0
        for entry in snap.warnings:
            key = (entry.process, entry.code, entry.message)
            # Bus warnings (with a code) reach us directly after the first snapshot; the supervisor's own
            # (a lost process) only through snapshots.
            if key in self._warned_snapshot or (not first and entry.code):
                continue
            self._warned_snapshot.add(key)
            self.add_warning("warning", entry.process or "supervisor", entry.code or "process_lost", entry.message)
        if first:
            self.metadata = dict(snap.metadata)
        if snap.ensembles is not None:  # the ensembles in force, when the supervisor tracks them
            self.roles.set_applied(snap.ensembles.up, snap.ensembles.down, keep_edits=True)
        elif first:
            decoder_cfg = self.config.get("decoder") or {}
            self.roles.set_applied(list(decoder_cfg.get("up", [])), list(decoder_cfg.get("down", [])))

    # ------------------------------------------------------------------ operator-side helpers
    def add_warning(self, level: str, source: str, code: str, message: str) -> None:
        self.warnings.append(WarningEntry(time.strftime("%H:%M:%S"), level, source, code, message))
        self.warnings_total += 1

    def _event_line(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')}  {text}")
        self.events_total += 1

    def select_roi(self, roi: int | None) -> None:
        """Trace this ROI's neuropil-corrected F from now on (history of another ROI is not kept)."""
        if roi != self.selected_roi:
            self.selected_roi = roi
            self.fluor.columns["selected"][:] = np.nan

    # ------------------------------------------------------------------ derived numbers
    @property
    def mode_code(self) -> int | None:
        return int(self.decisions.last("mode")) if len(self.decisions) else None

    @property
    def mode_label(self) -> str:
        code = self.mode_code
        return "no decisions yet" if code is None else self.mode_names.name(code)

    def latency_stats(self) -> dict[str, tuple[float, float]]:
        """Stage -> (p50, p99) in ms over the last ``latency_window_frames`` decisions."""
        if not len(self.latency):
            return {}
        n = len(self.latency)
        return {
            name: tuple(float(v) for v in np.percentile(self.latency.columns[name][:n], (50, 99)))
            for name, _, _ in LATENCY_STAGES
        }

    def reward_latency_stats(self) -> tuple[float, float] | None:
        n = len(self.reward_latency)
        if not n:
            return None
        p50, p99 = np.percentile(self.reward_latency.columns["ms"][:n], (50, 99))
        return float(p50), float(p99)

    def rolling_hit_rate(self) -> float | None:
        n = min(len(self.outcomes), self.cfg.hit_rate_window_trials)
        if not n:
            return None
        return float(np.mean(self.outcomes.ordered("hit", n)))

    def hit_rate_series(self) -> tuple[np.ndarray, np.ndarray]:
        """(trial numbers, rolling hit rate after each completed trial) over the kept outcomes."""
        hits = self.outcomes.ordered("hit").astype(np.float32)
        trials = self.outcomes.ordered("trial")
        if not len(hits):
            return trials, hits
        window = self.cfg.hit_rate_window_trials
        csum = np.concatenate(([0.0], np.cumsum(hits)))
        idx = np.arange(1, len(hits) + 1)
        lo = np.maximum(0, idx - window)
        return trials, ((csum[idx] - csum[lo]) / (idx - lo)).astype(np.float32)

    def rewards_per_min(self) -> float | None:
        """Delivered rewards per minute over the last ``reward_rate_window_s`` of rig time."""
        if not self.latest_rig_ns or not self.first_rig_ns:
            return None
        span_s = min(self.cfg.reward_rate_window_s, (self.latest_rig_ns - self.first_rig_ns) / 1e9)
        if span_s <= 1.0:
            return None
        n = len(self.rewards)
        cols = self.rewards.columns
        since = self.latest_rig_ns - int(span_s * 1e9)
        count = int(np.count_nonzero(cols["delivered"][:n] & (cols["kind"][:n] != OTHER_PULSE)
                                     & (cols["t"][:n] >= since)))
        return count / (span_s / 60.0)

    def frame_rate_hz(self) -> float | None:
        """The rig's frame rate: measured by the acquisition, else the config's, else as received here."""
        if self.acq_status is not None and self.acq_status.fps > 0:
            return float(self.acq_status.fps)
        configured = (self.config.get("acquisition") or {}).get("frame_rate_hz")
        if configured:
            return float(configured)
        return self.console_frame_rate() or None

    def console_frame_rate(self) -> float:
        """FluorFrames per second as received by the console (lower than the rig's when it drops)."""
        times = self._fluor_times
        if len(times) < 2 or self.clock() - times[-1] > 2.0:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else 0.0

    def heartbeat_age(self, name: str) -> float | None:
        proc = self.processes.get(name)
        if proc is None or proc.last_seen == 0.0:
            return None
        return self.clock() - proc.last_seen

    def registration_quality(self, frames: int = 300) -> dict[str, float] | None:
        """Correlation with the reference (last, mean, min), the last frame's robust z-score against the recent
        frames (``corr_z``: the rig's LOW_CORR rule judges corr against the session's own distribution, since
        its absolute level depends on photons and reference) and the last shift over recent frames."""
        n = len(self.fluor)
        if not n:
            return None
        corr = self.fluor.ordered("corr", frames)
        flags = self.fluor.ordered("flags", frames)
        finite = corr[np.isfinite(corr)]
        corr_z = float("nan")
        if finite.size >= 10:
            med = float(np.median(finite))
            spread = max(1.4826 * float(np.median(np.abs(finite - med))), 1e-6)
            corr_z = (float(self.fluor.last("corr")) - med) / spread
        return {"corr": self.fluor.last("corr"), "corr_mean": float(corr.mean()), "corr_min": float(corr.min()),
                "corr_z": corr_z,
                "dy": self.fluor.last("dy"), "dx": self.fluor.last("dx"),
                "bad_fraction": float(np.count_nonzero(flags)) / len(flags)}

    def memory_bytes(self) -> int:
        """Bytes held by the rings (fixed at construction: the model never grows)."""
        return sum(r.nbytes() for r in (self.decisions, self.latency, self.fluor, self.rewards, self.licks,
                                        self.outcomes, self.reward_latency))
