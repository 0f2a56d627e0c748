"""``rig run``: start the processes, watch them, keep the rig safe, and end the session cleanly.

The supervisor owns two sockets besides its SUB: a PUB (``sys.control`` commands and its own
heartbeat) and a ROUTER "command" socket where consoles and CLI tools send requests (Lazy-Pirate
clients, see :mod:`rig.core.client`): operator commands are validated and relayed as Control messages,
and ``snapshot`` returns what a console that joins late needs to catch up.

Failure policy: if a critical process dies, reports an error, or misses ``heartbeat_liveness``
heartbeats, the supervisor broadcasts ``safe_state`` (the reward process closes the valve and refuses
rewards; if the reward process itself is gone, the firmware watchdog closes the valve), stops
everything, says which process failed and why, and exits non-zero. The console is not critical.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import zmq

import rig
from rig.app.config import CONFIG_LOADER, RigConfig, config_from_dict, load_config_dict
from rig.core.bus import Publisher, Subscriber, free_tcp_ports
from rig.core.clock import now_ns
from rig.core.process import ProcessSpec, bind_endpoint, decode_info, process_main
from rig.core.schema import (
    AcqStatus,
    CalibrationResult,
    Control,
    Heartbeat,
    LinkState,
    ProcessError,
    RewardOutcome,
    RigWarning,
    StateChange,
    TrialEvent,
)
from rig.core.store import EventLog, read_events, write_json_atomic
from rig.offline.summary import REWARD_SOURCES

#: Operator commands the command socket accepts and relays to the processes.
OPERATOR_COMMANDS = {
    "start_baseline", "calibrate", "start_bci", "pause", "resume", "manual_reward",
    "test_pulse", "close_valve", "set_ensembles", "set_metadata",
}


class SessionFailed(RuntimeError):
    pass


def _check_args(command: str, args: Any) -> str:
    """Why an operator command's arguments are unusable, or "" (checked before anything is relayed)."""
    if not isinstance(args, dict):
        return "args must be an object"
    if command == "set_ensembles":
        for key in ("up", "down"):
            value = args.get(key, [])
            if not isinstance(value, list) or not all(isinstance(i, int) and i >= 0 for i in value):
                return f"{key} must be a list of ROI indices (integers >= 0)"
    if command in ("manual_reward",) and "volume_ul" in args:
        volume = args["volume_ul"]
        if not isinstance(volume, int | float) or not 0 < volume <= 100:
            return "volume_ul must be a number of microlitres in (0, 100]"
    if command == "calibrate" and "target_hit_rate" in args:
        rate = args["target_hit_rate"]
        if not isinstance(rate, int | float) or not 0 < rate < 1:
            return "target_hit_rate must be a number between 0 and 1"
    return ""


@dataclass
class Child:
    name: str
    target: str
    critical: bool = True
    proc: multiprocessing.process.BaseProcess | None = None
    state: str = "not started"
    last_seen_ns: int = 0
    info: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    error: str = ""


def has_display() -> bool:
    if sys.platform == "win32" or sys.platform == "darwin":
        return True
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        return True  # Qt renders without a screen (tests, benchmarks)
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def git_hash() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
            timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def new_session_dir(cfg: RigConfig, root: str | None) -> Path:
    base = Path(root or cfg.rig.sessions_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    mouse = "".join(c if c.isalnum() or c in "-_" else "_" for c in cfg.session.mouse_id)
    path = base / f"{stamp}_{mouse}_{cfg.rig.name}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = base / f"{stamp}_{mouse}_{cfg.rig.name}_{suffix}"
    path.mkdir(parents=True)
    return path


class Supervisor:
    def __init__(
        self,
        config_path: str | Path,
        *,
        headless: bool = True,
        duration_s: float | None = None,
        sessions_root: str | None = None,
        extra: dict[str, dict[str, Any]] | None = None,
        overrides: list[str] | None = None,
        quiet: bool = False,
        auto_start: bool | None = None,
    ) -> None:
        self.config_path = str(config_path)
        self.overrides = list(overrides or [])
        raw = load_config_dict(config_path, self.overrides)
        self.cfg = config_from_dict(raw, self.config_path)
        self.config_text = Path(config_path).read_text(encoding="utf-8")
        self.config_doc = msgspec.to_builtins(self.cfg)
        self.headless = headless
        # Headless, nobody can press "start baseline": the supervisor does (then task.auto_protocol goes on).
        self.auto_start = (headless or self.cfg.session.auto_start) if auto_start is None else auto_start
        self.duration_s = duration_s
        self.quiet = quiet
        self.session_dir = new_session_dir(self.cfg, sessions_root)
        self.events = EventLog(self.session_dir / "supervisor.events.jsonl")
        self.extra = extra or {}
        self.children = self._plan_children()
        self.endpoints = self._allocate_endpoints()
        self.ctx = zmq.Context()
        self.pub = Publisher(self.ctx, bind_endpoint(self.endpoints["supervisor"], self.cfg.bus.host),
                             sender="supervisor")
        self.sub = Subscriber(
            self.ctx,
            [self.endpoints[c.name] for c in self.children],
            [b"sys.", TrialEvent.topic, CalibrationResult.topic, RewardOutcome.topic, LinkState.topic,
             AcqStatus.topic],
        )
        self.command = self.ctx.socket(zmq.ROUTER)
        self.command.setsockopt(zmq.LINGER, 0)
        try:
            self.command.bind(bind_endpoint(self.endpoints["command"], self.cfg.bus.host))
        except zmq.ZMQError as exc:
            self.command.close(linger=0)
            raise SessionFailed(f"cannot bind the command socket at {self.endpoints['command']}: {exc}") from exc
        self._stop_reason = ""
        self._failure: tuple[str, str] | None = None
        self._counts = {"trials": 0, "hits": 0, "rewards_delivered": 0, "rewards_failed": 0}
        self._calibration: dict[str, Any] | None = None
        self._ensembles = {"up": list(self.cfg.decoder.up), "down": list(self.cfg.decoder.down)}
        self._replies: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._warnings: list[dict[str, Any]] = []
        self._metadata: dict[str, Any] = {
            "mouse_id": self.cfg.session.mouse_id,
            "experimenter": self.cfg.session.experimenter,
            "notes": self.cfg.session.notes,
        }
        self._mode = "starting"
        self._next_hb = 0
        self._started = datetime.now().astimezone().isoformat(timespec="milliseconds")
        self._git = git_hash()  # once: session.json is rewritten while the loop runs
        # Anchor between the bus clock (now_ns) and wall-clock time, for exports that need absolute times.
        self._clock_anchor = {"t_ns": now_ns(), "unix_ns": time.time_ns()}

    # ------------------------------------------------------------------ planning
    def _plan_children(self) -> list[Child]:
        children: list[Child] = []
        if self.cfg.reward.port == "emulator":
            children.append(Child("valve_emulator", "reward.process:EmulatorProcess"))
        children += [
            Child("acquisition", "acquisition.process:AcquisitionProcess"),
            Child("reward", "reward.process:RewardProcess"),
            Child("decoder", "decoder.process:DecoderProcess"),
        ]
        if not self.headless and self.cfg.gui.enabled:
            if not has_display():
                raise SessionFailed("no display found: run with --headless, or set DISPLAY")
            children.append(Child("gui", "gui.process:ConsoleProcess", critical=False))
        return children

    def _allocate_endpoints(self) -> dict[str, str]:
        """Endpoints to *connect* to (a wildcard bind host is reached through loopback)."""
        host = self.cfg.bus.host
        if host in ("0.0.0.0", "*"):
            host = "127.0.0.1"
        names = ["supervisor", "command"] + [c.name for c in self.children]
        if "gui" not in names:
            names.append("gui")  # a console attached later publishes here
        base = self.cfg.bus.base_port
        ports = [base + i for i in range(len(names))] if base else free_tcp_ports(len(names), host)
        return {name: f"tcp://{host}:{port}" for name, port in zip(names, ports, strict=True)}

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> dict[str, Any]:
        """Run the session; returns the summary (``summary["ok"]`` says whether it ended cleanly)."""
        self._write_session_json(status="starting")
        (self.session_dir / "config.toml").write_text(self.config_text, encoding="utf-8")
        # The config as validated, with defaults and --set overrides: what the processes really ran with.
        write_json_atomic(self.session_dir / "config.resolved.json", self.config_doc)
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._start_children()
            self._send(Control(command="start"))
            self._wait_all_state("running", self.cfg.bus.ready_timeout_s, resend=Control(command="start"))
            self._mode = "running"
            started_ns = now_ns()  # --duration counts from here: a first start may spend seconds compiling kernels
            self.events.write("session_start")
            self._write_session_json(status="running")
            if self.auto_start:
                self._send(Control(command="start_baseline", issued_by="supervisor", target="decoder"))
            self._monitor(started_ns)
        except SessionFailed as exc:
            if self._failure is None:
                self._failure = ("supervisor", str(exc))
        finally:
            signal.signal(signal.SIGINT, previous)
            if self._failure is not None:
                name, why = self._failure
                self.events.write("failure", process=name, reason=why)
                self._log(f"FAILURE in {name}: {why}")
                self._send(Control(command="safe_state", args={"reason": f"{name} failed: {why}"}))
            self._stop_children()
            self._close()
        from rig.offline.summary import summarize_session  # noqa: PLC0415 - reads the files the children wrote

        summary = summarize_session(self.session_dir)
        summary["ok"] = self._failure is None
        summary["stop_reason"] = self._stop_reason or ("failure" if self._failure else "")
        if self._failure is not None:
            summary["failed_process"], summary["failure"] = self._failure
        write_json_atomic(self.session_dir / "summary.json", summary)
        self._write_session_json(status="ok" if self._failure is None else "failed")
        return summary

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._request_stop("Ctrl-C")

    def _request_stop(self, reason: str) -> None:
        if not self._stop_reason:
            self._stop_reason = reason
            self.events.write("stop_requested", reason=reason)

    def _start_children(self) -> None:
        mp = multiprocessing.get_context("spawn")
        for child in self.children:
            extra = dict(self.extra.get(child.name, {}))
            # What processes started earlier reported when ready (serial URL, ROI count, frame rate...).
            extra["upstream"] = {c.name: dict(c.info) for c in self.children if c.info}
            spec = ProcessSpec(
                name=child.name, target=child.target, config=self.config_doc, config_file=self.config_path,
                config_loader=CONFIG_LOADER,
                endpoints=self.endpoints, session_dir=str(self.session_dir), extra=extra,
                bind_host=self.cfg.bus.host,
            )
            child.proc = mp.Process(target=process_main, args=(spec,), name=f"rig-{child.name}", daemon=False)
            child.proc.start()
            child.last_seen_ns = now_ns()
            self.events.write("spawned", process=child.name, pid=child.proc.pid)
            self._log(f"started {child.name} (pid {child.proc.pid})")
            # Wait for each in order: later processes need earlier ones (reward needs the emulator's port).
            self._wait_state(child, "ready", self.cfg.bus.ready_timeout_s)
            if child.name == "acquisition" and "frame_rate_hz" in child.info:
                info = child.info
                self._log(f"acquisition ready: {info.get('n_rois', '?')} ROIs, {info.get('height', '?')}x"
                          f"{info.get('width', '?')} frames at {float(info['frame_rate_hz']):g} Hz (from "
                          f"{info.get('frame_rate_source', '?')})")
            if child.name == "valve_emulator":
                self._wait_info(child, "serial_url")

    def _wait_info(self, child: Child, key: str) -> None:
        deadline = time.monotonic() + 5.0
        while key not in child.info:
            self._pump(20)
            if time.monotonic() > deadline:
                raise SessionFailed(f"{child.name} is ready but never reported its {key}")

    def _wait_state(self, child: Child, state: str, timeout_s: float, resend: Control | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        next_resend = time.monotonic() + 0.5
        while child.state != state:
            if not child.critical and child.state == "failed_reported":
                return  # the console failed to start: reported as a warning, the session goes on without it
            if self._stop_reason:
                raise SessionFailed(f"stopped ({self._stop_reason}) while waiting for {child.name}")
            self._pump(20)
            self._check_children()
            if self._failure:
                raise SessionFailed(self._failure[1])
            if time.monotonic() > deadline:
                raise SessionFailed(f"{child.name} did not become {state} within {timeout_s:g} s (last state "
                                    f"{child.state!r})")
            if resend is not None and time.monotonic() > next_resend:
                self._send(resend)
                next_resend = time.monotonic() + 0.5

    def _wait_all_state(self, state: str, timeout_s: float, resend: Control | None = None) -> None:
        for child in self.children:
            if child.critical:
                self._wait_state(child, state, timeout_s, resend)

    def _monitor(self, started_ns: int) -> None:
        end_ns = started_ns + int(self.duration_s * 1e9) if self.duration_s else None
        while not self._stop_reason:
            self._pump(20)
            self._check_children()
            if self._failure:
                raise SessionFailed(self._failure[1])
            if end_ns is not None and now_ns() >= end_ns:
                self._request_stop(f"duration of {self.duration_s:g} s reached")
            if self._mode == "done":
                self._request_stop("task finished")

    def _check_children(self) -> None:
        now = now_ns()
        liveness_ns = int(self.cfg.bus.heartbeat_interval_s * self.cfg.bus.heartbeat_liveness * 1e9)
        busy_ns = int(self.cfg.bus.busy_timeout_s * 1e9)
        for child in self.children:
            if child.proc is None or child.state in ("stopped", "failed_reported"):
                continue
            why = ""
            if not child.proc.is_alive():
                why = child.error or self._error_from_log(child) or (
                    f"process exited unexpectedly with code {child.proc.exitcode}")
            elif child.state not in ("not started", "configuring") and now - child.last_seen_ns > (
                    busy_ns if child.state.startswith("busy") else liveness_ns):
                # (configure() may take long and sends no heartbeats: bus.ready_timeout_s bounds it; a
                # process that announced a long operation gets bus.busy_timeout_s)
                busy = child.state.startswith("busy")
                detail = f"while {child.state}" if busy else f"{self.cfg.bus.heartbeat_liveness} missed"
                why = f"no heartbeat for {(now - child.last_seen_ns) / 1e9:.1f} s ({detail})"
            elif child.state == "failed":
                why = child.error or "reported failure"
            if why:
                self._child_failed(child, why)

    def _error_from_log(self, child: Child) -> str:
        """A child that failed before its error reached us still wrote it to its event log."""
        errors = read_events(self.session_dir / child.name / "events.jsonl", {"error"})
        if not errors:
            return ""
        return f"{errors[0].get('error_type', 'error')}: {errors[0].get('message', '')}"

    def _child_failed(self, child: Child, why: str) -> None:
        child.state = "failed_reported"
        if child.critical:
            if self._failure is None:
                self._failure = (child.name, why)
        else:
            self._warnings.append({"process": child.name, "message": why})
            self.events.write("warning", process=child.name, code="process_lost", message=why)
            self._log(f"warning: {child.name} lost ({why}); the session continues")

    # ------------------------------------------------------------------ bus traffic
    def _pump(self, timeout_ms: int) -> None:
        poller = zmq.Poller()
        poller.register(self.sub.socket, zmq.POLLIN)
        poller.register(self.command, zmq.POLLIN)
        ready = dict(poller.poll(timeout_ms))
        if self.sub.socket in ready:
            for msg in self.sub.drain(500):
                self._on_message(msg)
        if self.command in ready:
            self._serve_commands()
        now = now_ns()
        if now >= self._next_hb:
            self._next_hb = now + int(self.cfg.bus.heartbeat_interval_s * 1e9)
            self.pub.send(Heartbeat(process="supervisor", state=self._mode, t_ns=now, pid=os.getpid()))

    def _child(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    def _on_message(self, msg: Any) -> None:
        child = self._child(getattr(msg, "process", "") or msg.sender)
        if child is not None:
            child.last_seen_ns = now_ns()
        if isinstance(msg, Heartbeat) and child is not None:
            if child.state != "failed_reported":
                child.state = msg.state
            child.stats = dict(msg.stats)
        elif isinstance(msg, StateChange) and child is not None:
            if child.state != "failed_reported":
                child.state = msg.state
            info = decode_info(msg.reason)
            if info:
                child.info.update(info)
            if msg.state == "stopped" and msg.reason == "SIGINT" and not self._stop_reason:
                self._request_stop(f"Ctrl-C in {child.name}")
            if msg.state == "failed":
                child.error = child.error or msg.reason
        elif isinstance(msg, ProcessError) and child is not None:
            child.error = f"{msg.error_type}: {msg.message}"
            self.events.write("process_error", process=msg.process, error_type=msg.error_type,
                              message=msg.message, traceback=msg.traceback)
        elif isinstance(msg, RigWarning):
            self._warnings.append({"process": msg.process, "code": msg.code, "message": msg.message})
            del self._warnings[:-50]
            if msg.code == "source_ended" and not self._stop_reason:
                self._request_stop("the frame source ended (end of the replayed movie)")
        elif isinstance(msg, TrialEvent):
            self._counts["trials"] = msg.trials
            self._counts["hits"] = msg.hits
            if msg.kind == "session_done":
                self._mode = "done"
            elif msg.kind == "ensembles":  # the decoder accepted new ensembles
                self._ensembles = {"up": list(msg.detail.get("up", [])), "down": list(msg.detail.get("down", []))}
        elif isinstance(msg, CalibrationResult):
            self._calibration = msgspec.to_builtins(msg)
        elif isinstance(msg, RewardOutcome) and msg.source in REWARD_SOURCES:
            key = "rewards_delivered" if msg.status == "delivered" else "rewards_failed"
            self._counts[key] += 1

    def _send(self, msg: Control) -> None:
        msg.t_ns = now_ns()
        self.pub.send(msg)

    def _serve_commands(self) -> None:
        while True:
            try:
                frames = self.command.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, body = frames[0], frames[-1]
            try:
                request = json.loads(body)
                request_id = str(request.get("request_id", ""))
                if request_id and request_id in self._replies:
                    reply = self._replies[request_id]  # a client's retry: answer again, do not act twice
                else:
                    reply = self._handle_request(request)
                    if request_id:
                        self._replies[request_id] = reply
                        while len(self._replies) > 500:
                            self._replies.popitem(last=False)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            self.command.send_multipart([identity, b"", json.dumps(reply).encode()])

    def _handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request["command"]
        args = request.get("args", {}) or {}
        issued_by = str(request.get("issued_by", "console"))
        if command == "ping":
            return {"ok": True}
        if command == "snapshot":
            return {"ok": True, "snapshot": self.snapshot()}
        if command == "stop":
            self._request_stop(f"stop from {issued_by}")
            return {"ok": True}
        if command not in OPERATOR_COMMANDS:
            return {"ok": False, "error": f"unknown command {command!r}"}
        problem = _check_args(command, args)
        if problem:
            return {"ok": False, "error": f"{command}: {problem}"}
        if command == "set_metadata":
            self._metadata.update({k: str(v) for k, v in args.items()})
            self._write_session_json(status="running")
        self.events.write("operator", command=command, args=args, issued_by=issued_by)
        self._send(Control(command=command, args=args, issued_by=issued_by))
        return {"ok": True}

    def snapshot(self) -> dict[str, Any]:
        """What a console that joins late needs: where to listen, process states, counters, calibration."""
        return {
            "session_dir": str(self.session_dir),
            "endpoints": self.endpoints,
            "mode": self._mode,
            "processes": {c.name: {"state": c.state, "stats": c.stats, "critical": c.critical} for c in self.children},
            "counts": dict(self._counts),
            "calibration": self._calibration,
            "ensembles": self._ensembles,
            "warnings": self._warnings[-20:],
            "metadata": self._metadata,
            "config": self.config_doc,
        }

    # ------------------------------------------------------------------ shutdown
    def _stop_children(self) -> None:
        self._mode = "stopping"
        # One at a time: acquisition first so the decoder sees the last frame, then the decoder, the
        # reward process once no request can come any more (it finishes pending ones), the emulator last.
        order = ["gui", "acquisition", "decoder", "reward", "valve_emulator"]
        for name in order:
            child = self._child(name)
            if child is None or child.proc is None or child.proc.pid is None:
                continue  # never started (an earlier process failed first)
            stop = Control(command="stop", issued_by="supervisor", target=name)
            self._send(stop)
            deadline = time.monotonic() + self.cfg.bus.stop_timeout_s
            next_resend = time.monotonic() + 0.3
            while child.proc.is_alive() and time.monotonic() < deadline:
                self._pump(20)
                if time.monotonic() > next_resend:
                    self._send(stop)
                    next_resend = time.monotonic() + 0.3
            if child.proc.is_alive():
                self._log(f"{name} did not stop within {self.cfg.bus.stop_timeout_s:g} s; terminating it")
                self.events.write("terminated", process=name)
                child.proc.terminate()
                child.proc.join(5)
                if child.proc.is_alive():
                    child.proc.kill()
            child.proc.join(5)
            self.events.write("exited", process=name, exitcode=child.proc.exitcode)
        self._mode = "stopped"

    def _close(self) -> None:
        self.sub.close()
        self.pub.close()
        self.command.close()
        self.ctx.term()
        self.events.close()

    def _write_session_json(self, status: str) -> None:
        write_json_atomic(self.session_dir / "session.json", {
            "format": "bci-rig session v1",
            "status": status,
            "software": {"name": "bci-rig", "version": rig.__version__, "git": self._git,
                         "python": platform.python_version(), "platform": platform.platform()},
            "rig": self.cfg.rig.name,
            "config_file": self.config_path,
            "overrides": self.overrides,
            "started": self._started,
            "updated": datetime.now().astimezone().isoformat(timespec="seconds"),
            "clock": self._clock_anchor,
            "metadata": self._metadata,
            "endpoints": self.endpoints,
            "processes": [c.name for c in self.children],
        })

    def _log(self, text: str) -> None:
        if not self.quiet:
            print(f"[rig] {text}", file=sys.stderr, flush=True)
