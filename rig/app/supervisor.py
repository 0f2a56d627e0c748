"""``rig run``: start the processes, watch them, keep the rig safe, and end the session cleanly.

This module is the lifecycle: plan the processes from the table in :mod:`rig.app.processes`, start
them in order, watch their heartbeats, stop them in order. Besides its SUB the supervisor owns a PUB
(``sys.control`` commands and its own heartbeat) and the command socket (:mod:`rig.app.command_server`),
where operator commands arrive and are relayed as Control messages, and where a console that joins late
gets its :class:`~rig.core.operator.Snapshot` (assembled by :mod:`rig.app.snapshot`).

Failure policy: if a critical process dies, reports an error, or misses ``heartbeat_liveness``
heartbeats, the supervisor broadcasts ``safe_state`` (the reward process closes the valve and refuses
rewards; if the reward process itself is gone, the firmware watchdog closes the valve), stops
everything, says which process failed and why, and exits non-zero. The console is not critical.

Stop requests from the OS (Ctrl-C, SIGTERM, Ctrl-Break, on Windows the console window closing) end the session
like the operator's stop button: everything stopped in order, summary.json and a final session.json written.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from rig.app.checks import check_config
from rig.app.command_server import CommandServer
from rig.app.config import CONFIG_LOADER, config_from_dict, load_config_dict
from rig.app.processes import Child, endpoint_names, has_display, plan, stop_order
from rig.app.session_files import SessionRecord, git_hash, new_session_dir
from rig.app.snapshot import SessionTally
from rig.app.startup import StartupLog
from rig.app.watch import SessionWatch
from rig.core.auth import BUS_DOMAIN, CurveKeys, KeysProblem, ZapHandler, ZapPolicy, load_rig_keys
from rig.core.bus import Publisher, Subscriber, free_tcp_ports
from rig.core.clock import now_ns
from rig.core.operator import CommandRequest, Snapshot
from rig.core.platform_signals import describe, install_stop_handlers, is_stop_reason
from rig.core.process import ProcessSpec, bind_endpoint, decode_info, process_main
from rig.core.schema import (
    AcqStatus,
    CalibrationResult,
    Control,
    Heartbeat,
    LinkState,
    Message,
    ProcessError,
    RewardOutcome,
    RigWarning,
    StateChange,
    TrialEvent,
)
from rig.core.store import EventLog, read_events, write_json_atomic

# has_display, git_hash and new_session_dir are also imported from here (rig.app.cli, rig.offline.session_cli).
__all__ = ["SessionFailed", "Supervisor", "git_hash", "has_display", "new_session_dir"]


class SessionFailed(RuntimeError):
    """The session could not start or had to end early (the message says which process and why)."""


class StartRefused(SessionFailed):
    """The checks of :mod:`rig.app.checks` refused the session before anything started; one line per reason."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


class Supervisor:
    """One session: construct it (plans processes, makes the session folder, binds sockets), then :meth:`run`."""

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
        self.startup = StartupLog(self._log)
        self._check_before_start()  # nothing started and no folder made yet: a refusal leaves nothing behind
        self.children = self._plan_children()
        self.keys = self._load_keys()  # before the session folder: bad keys leave nothing behind
        self.session_dir = new_session_dir(self.cfg, sessions_root)
        self.events = EventLog(self.session_dir / "supervisor.events.jsonl")
        self.extra = extra or {}
        self.endpoints = self._allocate_endpoints()
        self.ctx = zmq.Context()
        # With keys, the ZAP handler answers every handshake on the command socket and the PUB (docs/SECURITY.md).
        self.zap = ZapHandler(self.ctx, {BUS_DOMAIN: ZapPolicy(keys=self.keys.allowed)}) if self.keys else None
        try:
            self.pub = Publisher(self.ctx, bind_endpoint(self.endpoints["supervisor"], self.cfg.bus.host),
                                 sender="supervisor", keys=self.keys)
        except OSError:
            if self.zap is not None:
                self.zap.stop()
            self.ctx.term()
            self.events.close()
            raise
        self.sub = Subscriber(
            self.ctx,
            [self.endpoints[c.name] for c in self.children],
            [b"sys.", TrialEvent.topic, CalibrationResult.topic, RewardOutcome.topic, LinkState.topic,
             AcqStatus.topic],
            keys=self.keys,
        )
        try:
            self.commands = CommandServer(self.ctx, bind_endpoint(self.endpoints["command"], self.cfg.bus.host),
                                          self, keys=self.keys, n_rois=self.roi_count, on_error=self._command_error)
        except zmq.ZMQError as exc:
            self.sub.close()
            self.pub.close()
            if self.zap is not None:
                self.zap.stop()
            self.ctx.term()  # an unterminated context would hang whoever garbage-collects it
            self.events.close()
            raise SessionFailed(f"cannot bind the command socket at {self.endpoints['command']}: {exc}") from exc
        self.tally = SessionTally(self.cfg)
        self._stop_reason = ""
        self._failure: tuple[str, str] | None = None
        self._mode = "starting"
        self._next_hb = 0
        self.record = SessionRecord(self.session_dir, self.cfg, self.config_path, self.overrides)

    # ------------------------------------------------------------------ planning
    def _check_before_start(self) -> None:
        """What ``rig check`` checks (:mod:`rig.app.checks`): errors refuse the start, warnings are said now."""
        checked = check_config(self.cfg, Path(self.config_path).resolve().parent, run=True, duration_s=self.duration_s)
        if checked.errors:
            raise StartRefused([str(finding) for finding in checked.errors])
        rois = f", {checked.rois.n_rois} ROIs" if checked.rois else ""
        self.startup.config_loaded(f"{self.config_path} (rig {self.cfg.rig.name!r}, "
                                   f"source {self.cfg.acquisition.source}{rois})")
        for finding in checked.warnings:
            self._log(f"WARNING: {finding}")
        self.watch = SessionWatch.for_config(self.cfg, checked, headless=self.headless, log=self._log,
                                             warn=self._warn)

    def _plan_children(self) -> list[Child]:
        """The table's processes this session runs, in start order (checked before any folder is made)."""
        entries = plan(self.cfg, self.headless)
        for entry in entries:
            problem = entry.preflight() if entry.preflight is not None else ""
            if problem:
                raise SessionFailed(problem)
        return [Child(entry) for entry in entries]

    def _allocate_endpoints(self) -> dict[str, str]:
        """Endpoints to *connect* to (a wildcard bind host is reached through loopback)."""
        host = self.cfg.bus.host
        if host in ("0.0.0.0", "*"):
            host = "127.0.0.1"
        names = endpoint_names([c.entry for c in self.children])
        base = self.cfg.bus.base_port
        ports = [base + i for i in range(len(names))] if base else free_tcp_ports(len(names), host)
        endpoints = {name: f"tcp://{host}:{port}" for name, port in zip(names, ports, strict=True)}
        if self.cfg.bus.transport == "ipc":  # the processes' streams over Unix sockets; the command socket stays tcp
            if zmq.has("ipc"):
                folder = Path(tempfile.mkdtemp(prefix="bci-rig-ipc-"))  # short: a socket path has <= 107 bytes
                self._ipc_dir = folder
                endpoints.update({n: f"ipc://{(folder / n).as_posix()}" for n in names if n != "command"})
                self.events.write("transport", transport="ipc", folder=str(folder))
            else:
                self.events.write("transport", transport="tcp", refused="ipc: this libzmq has no ipc transport")
                self._log("WARNING: [bus] transport = \"ipc\": this libzmq has no ipc transport here; using tcp")
        return endpoints

    def _load_keys(self) -> CurveKeys | None:
        """The rig's CURVE keys when ``[bus] keys_dir`` is set (read here, so a bad folder stops nothing running)."""
        if not self.cfg.bus.keys_dir:
            return None
        try:
            return load_rig_keys(self.cfg.bus.keys_dir)
        except KeysProblem as exc:
            raise SessionFailed(f"[bus] keys_dir: {exc}") from exc

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> dict[str, Any]:
        """Run the session; returns the summary (``summary["ok"]`` says whether it ended cleanly).

        Ctrl-C, Ctrl-Break, SIGTERM and (Windows) the console closing, logoff or shutdown end the session like
        the operator's stop (:mod:`rig.core.platform_signals`). Their handlers stay until the summary and the
        final session.json are written, so a second request cannot cut the shutdown short.
        """
        stop_handlers = install_stop_handlers(self._on_os_stop)
        try:
            self._run_session()
            return self._finish()
        finally:
            try:
                stop_handlers.finished()  # a Windows console-close handler waits for this before Windows ends us
                stop_handlers.restore()
            finally:
                self.events.close()  # last: a failed final rewrite of session.json is still logged

    def _run_session(self) -> None:
        self._write_session_json(status="starting")
        self.record.write_config(self.config_text, self.config_doc)
        try:
            self._start_children()
            self._send(Control(command="start"))
            self._wait_all_state("running", self.cfg.bus.ready_timeout_s, resend=Control(command="start"))
            self._mode = "running"
            self.startup.running(self.duration_s)
            self.watch.running(time.monotonic())
            started_ns = now_ns()  # --duration counts from here: a first start may spend seconds compiling kernels
            self.events.write("session_start")
            self._write_session_json(status="running")
            if self.auto_start and any(c.name == "decoder" for c in self.children):  # none in a recording
                self._send(Control(command="start_baseline", issued_by="supervisor", target="decoder"))
            self._monitor(started_ns)
        except SessionFailed as exc:
            if self._failure is None:
                self._failure = ("supervisor", str(exc))
        finally:
            if self._failure is not None:
                name, why = self._failure
                self.events.write("failure", process=name, reason=why)
                self._log(f"FAILURE in {name}: {why}")
                self._send(Control(command="safe_state", args={"reason": f"{name} failed: {why}"}))
            self._stop_children()
            self._close()

    def _finish(self) -> dict[str, Any]:
        """summary.json: ``ok`` only without a failure and without a problem (rig.offline.problems)."""
        from rig.offline.problems import session_problems, with_outcome  # noqa: PLC0415 - read the children's files
        from rig.offline.summary import summarize_session  # noqa: PLC0415

        summary = summarize_session(self.session_dir)
        outcome: dict[str, Any] = {"stop_reason": self._stop_reason or ("failure" if self._failure else "")}
        if self._failure is not None:
            outcome["failed_process"], outcome["failure"] = self._failure
        summary = with_outcome(summary, outcome, session_problems(self.session_dir, summary, outcome["stop_reason"]))
        write_json_atomic(self.session_dir / "summary.json", summary)
        if getattr(self, "_ipc_dir", None) is not None:
            shutil.rmtree(self._ipc_dir)  # every socket is closed: their files (if left) go with the folder
        self._write_session_json(status="ok" if summary["ok"] else "failed")
        self.watch.finish(summary)
        return summary

    def _on_os_stop(self, reason: str) -> None:
        """An OS stop request (the callback of :func:`install_stop_handlers`; may run in a Windows console thread)."""
        self.request_stop(describe(reason))

    def request_stop(self, reason: str) -> None:
        """End the session cleanly (the first reason given is the one recorded)."""
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
                name=child.name, target=child.entry.target, config=self.config_doc, config_file=self.config_path,
                config_loader=CONFIG_LOADER, endpoints=self.endpoints, session_dir=str(self.session_dir),
                critical=child.critical, extra=extra, bind_host=self.cfg.bus.host)
            child.proc = mp.Process(target=process_main, args=(spec,), name=f"rig-{child.name}", daemon=False)
            child.proc.start()
            child.last_seen_ns = now_ns()
            self.events.write("spawned", process=child.name, pid=child.proc.pid)
            self.startup.starting(child.name, child.proc.pid)
            # Wait for each in order: later processes need earlier ones (reward needs the emulator's port).
            self._wait_state(child, "ready", self.cfg.bus.ready_timeout_s)
            if child.state == "failed_reported":
                continue  # a non-critical process that failed to start: already reported as a warning
            self.startup.ready(child.name, child.entry.ready_note(child.info) if child.entry.ready_note else "")
            for key in child.entry.wait_for_info:
                self._wait_info(child, key)

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
            self.startup.waiting(child.name, child.state)
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
            self.watch.poll(time.monotonic())
            if self._failure:
                raise SessionFailed(self._failure[1])
            if end_ns is not None and now_ns() >= end_ns:
                self.request_stop(f"duration of {self.duration_s:g} s reached")
            if self._mode == "done":
                self.request_stop("task finished")

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
            self.tally.warn(child.name, why)
            self.events.write("warning", process=child.name, code="process_lost", message=why)
            self._log(f"warning: {child.name} lost ({why}); the session continues")
            if child.entry.pause_trials_on_loss:  # e.g. the animal's feedback: trials must not run blind
                self._send(Control(command="pause", issued_by="supervisor", target="decoder",
                                   args={"reason": f"{child.name} lost"}))
                self.events.write("trials_paused", process=child.name, reason=why)
                self._log(f"warning: trials paused because {child.name} was lost; resume from the console")

    # ------------------------------------------------------------------ bus traffic
    def _pump(self, timeout_ms: int) -> None:
        poller = zmq.Poller()
        poller.register(self.sub.socket, zmq.POLLIN)
        poller.register(self.commands.socket, zmq.POLLIN)
        ready = dict(poller.poll(timeout_ms))
        if self.sub.socket in ready:
            for msg in self.sub.drain(500):
                self._on_message(msg)
        if self.commands.socket in ready:
            self.commands.serve()
        refused = self.zap.unreported_refusals(BUS_DOMAIN) if self.zap is not None else None
        if refused is not None:  # connections with keys that are not allowed: recorded, shown to the consoles
            self.events.write("connection_refused", count=refused[0], last=refused[1])
            self.tally.warn("supervisor", f"{refused[0]} connection(s) with a key not allowed refused; last: "
                                          f"{refused[1]}")
        now = now_ns()
        if now >= self._next_hb:
            self._next_hb = now + int(self.cfg.bus.heartbeat_interval_s * 1e9)
            self.pub.send(Heartbeat(process="supervisor", state=self._mode, t_ns=now, pid=os.getpid()))

    def _child(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    def _on_message(self, msg: Message) -> None:
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
            if msg.state == "stopped" and is_stop_reason(msg.reason) and not self._stop_reason:
                self.request_stop(f"{describe(msg.reason)} in {child.name}")  # e.g. Ctrl-C in its console
            if msg.state == "failed":
                child.error = child.error or msg.reason
        elif isinstance(msg, ProcessError) and child is not None:
            child.error = f"{msg.error_type}: {msg.message}"
            self.events.write("process_error", process=msg.process, error_type=msg.error_type,
                              message=msg.message, traceback=msg.traceback)
        elif isinstance(msg, RigWarning) and msg.code == "source_ended" and not self._stop_reason:
            self.request_stop("the frame source ended (end of the replayed movie)")
        elif isinstance(msg, TrialEvent) and msg.kind == "session_done":
            self._mode = "done"
        self.tally.ingest(msg)
        self.watch.on_message(msg, time.monotonic())

    def _send(self, msg: Control) -> None:
        msg.t_ns = now_ns()
        self.pub.send(msg)

    # ------------------------------------------------------------------ command socket (CommandHandler)
    def relay(self, request: CommandRequest) -> None:
        """An operator command, already checked by the command server: log it, then relay it to the processes."""
        if request.command == "set_metadata":
            self.tally.set_metadata(request.args)
            self._write_session_json(status="running")
        self.events.write("operator", command=request.command, args=request.args, issued_by=request.issued_by)
        self._send(Control(command=request.command, args=request.args, issued_by=request.issued_by))

    def roi_count(self) -> int | None:
        """The ROI count acquisition reported when ready (None before): ROI indices in commands stay below it."""
        child = self._child("acquisition")
        value = child.info.get("n_rois", "") if child is not None else ""
        return int(value) if value.isdigit() else None

    def _command_error(self, request: CommandRequest | None, exc: Exception) -> None:
        """Answering a command raised: the client got an error reply; the record and the consoles get this."""
        command = request.command if request is not None else "?"
        why = f"command {command} failed: {type(exc).__name__}: {exc}"[:500]
        self.events.write("command_error", command=command, issued_by=request.issued_by if request else "",
                          error_type=type(exc).__name__, message=str(exc)[:2000])
        self.tally.warn("supervisor", why)
        self._log(f"warning: {why}")

    def snapshot(self) -> Snapshot:
        """What a console that joins late needs: where to listen, process states, counters, calibration."""
        return self.tally.snapshot(session_dir=str(self.session_dir), endpoints=self.endpoints, mode=self._mode,
                                   children=self.children, config=self.config_doc)

    # ------------------------------------------------------------------ shutdown
    def _stop_children(self) -> None:
        self._mode = "stopping"
        # One at a time, in the table's stop order (see rig.app.processes for why that order).
        by_name = {c.name: c for c in self.children}
        for name in (e.name for e in stop_order([c.entry for c in self.children])):
            child = by_name[name]
            if child.proc is None or child.proc.pid is None:
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
                # Killed, not terminated: every process handles SIGTERM as one more request for the clean stop
                # it has just ignored (rig.core.platform_signals); on Windows both are TerminateProcess.
                self._log(f"{name} did not stop within {self.cfg.bus.stop_timeout_s:g} s; killing it")
                self.events.write("terminated", process=name)
                child.proc.kill()
            child.proc.join(5)
            self.events.write("exited", process=name, exitcode=child.proc.exitcode)
        self._mode = "stopped"

    def _close(self) -> None:
        """The sockets; the event log stays open until :meth:`run` returns."""
        self.sub.close()
        self.pub.close()
        self.commands.close()
        if self.zap is not None:
            self.zap.stop()
        self.ctx.term()

    def _write_session_json(self, status: str) -> None:
        """Rewrite ``session.json``; failing to is a warning, never the end of the session.

        On Windows the rewrite fails when another program (a console reading it, an antivirus scanner, a
        sync client) holds the file open past :func:`~rig.core.store.write_json_atomic`'s retries. The file
        is a status note (how ``rig console`` finds the rig; status and metadata for the offline tools): a
        stale one must not stop the closed loop or its clean shutdown. After a refused replace the new
        content is in ``session.json.tmp``.
        """
        try:
            self.record.write(status, self.tally.metadata, self.endpoints, [c.name for c in self.children])
        except OSError as exc:
            why = f"session.json not updated (status {status!r}): {exc}"
            self.events.write("warning", process="supervisor", code="session_json_not_written", message=why)
            self.tally.warn("supervisor", why)
            self._log(f"warning: {why}")

    def _warn(self, code: str, message: str) -> None:
        """The supervisor's own warning: stderr, the event log, consoles attached now (bus) and later (snapshot)."""
        self.events.write("warning", process="supervisor", code=code, message=message)
        self.tally.warn("supervisor", message, code)
        self.pub.send(RigWarning(process="supervisor", code=code, message=message, t_ns=now_ns()))
        self._log(f"WARNING supervisor: {code}: {message}")

    def _log(self, text: str) -> None:
        if not self.quiet:
            print(f"[rig] {text}", file=sys.stderr, flush=True)
