"""The process contract every bci-rig process follows, enforced by :class:`RigProcess`.

Lifecycle (published as :class:`~rig.core.schema.StateChange` and repeated in every heartbeat)::

    configuring --configure()--> ready --Control(start)--> running --stop--> stopping --> stopped
         \\___________________ any unhandled exception ___________________/--> failed

* ``configure()`` opens devices, allocates buffers and connects sockets; nothing time-critical.
* ``step()`` does one bounded unit of work (wait at most ~20 ms for input) and is called in a loop.
* Control messages from the supervisor are handled between steps: ``stop``/``shutdown`` stop the
  process, ``safe_state`` calls :meth:`on_safe_state`, anything else goes to :meth:`on_control`. While running,
  the control socket is looked at before a step once ``rig.control_poll_ms`` (default 2 ms) has passed since
  the last look, not before every step: at 1 kHz a look costs more than the rest of the loop's bookkeeping.
  A control message therefore waits at most that interval plus one step (a step blocks at most ~20 ms).
* Heartbeats go out every ``bus.heartbeat_interval_s``, checked before every step against one clock reading.
* SIGINT (Ctrl-C), SIGTERM, Ctrl-Break and, on Windows, the console window closing stop the process cleanly
  (:mod:`rig.core.platform_signals`; the stop reason is the signal's name), as does the death of the supervisor.
* An exception is published as :class:`~rig.core.schema.ProcessError` with its traceback, written to the
  process's event log, ``on_stop()`` still runs (close the valve, flush files), and the exit code is 1.

Subclasses live in ``<package>/process.py``; the supervisor starts them by dotted name with the
``spawn`` start method (the only one on Windows), passing a picklable :class:`ProcessSpec`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import multiprocessing
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from rig.core.auth import BUS_DOMAIN, CurveKeys, ZapHandler, ZapPolicy, load_rig_keys
from rig.core.bus import Publisher, Subscriber
from rig.core.clock import now_ns
from rig.core.platform_signals import StopHandlers, install_stop_handlers
from rig.core.realtime import (
    background_cpus,
    raise_threads,
    raise_zmq_io_threads,
    scheduling_policy,
    set_realtime_scheduling,
)
from rig.core.schema import Control, Heartbeat, Message, ProcessError, RigWarning, StateChange
from rig.core.store import EventLog

STATES = ("configuring", "ready", "running", "stopping", "stopped", "failed")
#: Exceptions from ``configure()`` that are a device, file or setting the rig refused (a port in use, a
#: damaged ROI file, a missing calibration): reported on the terminal in one line, not as a traceback.
STARTUP_ERRORS = (OSError, ValueError)


@dataclass
class ProcessSpec:
    """Everything a child process needs; plain data so it pickles under ``spawn``."""

    name: str
    target: str  # "package.module:ClassName"
    config: dict[str, Any]  # the raw TOML document (re-validated in the child)
    config_file: str
    # "package.module:function" that validates ``config`` into the typed whole-rig config; named by the
    # application that starts the process, so this contract never imports the packages' config schemas.
    config_loader: str
    endpoints: dict[str, str]  # process name -> its PUB endpoint to connect to; "supervisor" and "command" too
    session_dir: str
    # Whether the session ends when this process fails (the process table's ``critical``). No default: a
    # non-critical process (the console) must never be raised to ``[rig] priority = "high"`` beside the loop.
    critical: bool
    extra: dict[str, Any] = field(default_factory=dict)
    watch_parent: bool = True
    bind_host: str = "127.0.0.1"  # the interface this process binds its PUB on (bus.host)


class RigProcess:
    """Base class of every process. Override the hooks; never override :meth:`run`."""

    #: How long ``run`` waits for control messages between steps while not running (seconds).
    IDLE_POLL_S = 0.05

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.config: Any = resolve_callable(spec.config_loader)(spec.config, spec.config_file)
        self.session_dir = Path(spec.session_dir)
        self.dir = self.session_dir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.events = EventLog(self.dir / "events.jsonl")
        self.ctx = zmq.Context()
        # With [bus] keys_dir: the PUB is a CURVE server (the ZAP handler lets in only listed keys) and every SUB
        # connects with the rig's own pair (docs/SECURITY.md).
        self.keys: CurveKeys | None = load_rig_keys(self.config.bus.keys_dir) if self.config.bus.keys_dir else None
        self._zap = ZapHandler(self.ctx, {BUS_DOMAIN: ZapPolicy(keys=self.keys.allowed)}) if self.keys else None
        try:
            self.pub = Publisher(self.ctx, bind_endpoint(spec.endpoints[self.name], spec.bind_host), sender=self.name,
                                 keys=self.keys)
        except OSError:
            if self._zap is not None:
                self._zap.stop()
            self.ctx.destroy(linger=0)  # nothing else is open yet: an unterminated context would hang the exit
            raise
        self._control = Subscriber(self.ctx, [spec.endpoints["supervisor"]], [Control.topic], keys=self.keys)
        self.state = "configuring"
        self._stop_reason = ""
        self._started = False
        self.realtime_scheduling = False  # rig.priority = "realtime" granted (SCHED_FIFO; Windows: HIGH class)
        self._ready_info: dict[str, str] = {}
        hb = self.config.bus.heartbeat_interval_s
        self._hb_interval_ns = int(hb * 1e9)
        self._next_hb = 0
        self._next_parent_check = 0
        self._control_poll_ns = int(self.config.rig.control_poll_ms * 1e6)
        self._next_control = 0
        self._subscribers: list[Subscriber] = []
        self._stop_handlers: StopHandlers | None = None  # installed by run(), in the process's main thread

    # ------------------------------------------------------------------ hooks for subclasses
    def configure(self) -> None:
        """Open devices, allocate, connect subscribers. Called once before ``ready``."""

    def ready_info(self) -> dict[str, str]:
        """Facts the supervisor needs once this process is ready (e.g. a serial URL)."""
        return {}

    def realtime_threads(self) -> dict[str, int]:
        """Threads ``configure()`` started that the loop waits on (name -> native id), to raise with it under
        ``rig.priority = "realtime"`` (threads started later inherit the loop's policy). None by default."""
        return {}

    def on_start(self) -> None:
        """Called once when the supervisor starts the session."""

    def step(self) -> None:
        """One bounded unit of work. Block at most ~20 ms waiting for input."""
        raise NotImplementedError

    def on_control(self, msg: Control) -> None:
        """Operator/supervisor commands other than start/stop/shutdown/safe_state."""

    def on_safe_state(self, reason: str) -> None:
        """The rig failed somewhere: make this process safe (the reward process closes the valve)."""

    def on_stop(self) -> None:
        """Flush and close. Runs after a clean stop and after a failure."""

    def heartbeat_stats(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ helpers
    def subscribe(self, processes: list[str], topics: list[bytes]) -> Subscriber:
        endpoints = [self.spec.endpoints[p] for p in processes if p in self.spec.endpoints]
        sub = Subscriber(self.ctx, endpoints, topics, keys=self.keys)
        self._subscribers.append(sub)
        return sub

    def publish(self, msg: Message) -> None:
        self.pub.send(msg)

    def warn(self, code: str, message: str) -> None:
        """Tell the operator (on the bus) and the record (event log)."""
        self.events.write("warning", code=code, message=message)
        self.pub.send(RigWarning(process=self.name, code=code, message=message, t_ns=now_ns()))

    @contextlib.contextmanager
    def busy(self, what: str) -> Iterator[None]:
        """Around an operation that blocks the loop for seconds (e.g. calibrating on a long baseline).

        The heartbeat says ``busy:<what>`` first, so the supervisor allows up to ``bus.busy_timeout_s`` of
        silence instead of declaring the process dead after ``heartbeat_liveness`` missed beats.
        """
        self.pub.send(Heartbeat(process=self.name, state=f"busy:{what}", t_ns=now_ns(), pid=os.getpid()))
        self.events.write("busy", what=what)
        try:
            yield
        finally:
            self._next_hb = 0  # the next heartbeat (state running again) goes out at once

    def wait_for_control(self, timeout_ms: int) -> None:
        """For a step with nothing else to wait on: block until a control message arrives (at most
        ``timeout_ms``); one that did is served before the next step, whatever ``rig.control_poll_ms`` says."""
        if self._control.poll(timeout_ms):
            self._next_control = 0

    def request_stop(self, reason: str) -> None:
        if not self._stop_reason:
            self._stop_reason = reason

    @property
    def stopping(self) -> bool:
        return bool(self._stop_reason)

    # ------------------------------------------------------------------ the contract
    def _set_state(self, state: str, reason: str = "", info: dict[str, str] | None = None) -> None:
        self.state = state
        self.events.write("state", state=state, reason=reason, **(info or {}))
        if info:
            reason = _encode_info(info)
        self.pub.send(StateChange(process=self.name, state=state, reason=reason, t_ns=now_ns()))
        self._next_hb = 0  # repeat the new state in a heartbeat at once

    def _heartbeat(self, now: int = 0) -> None:
        """A heartbeat when one is due (``now``: the caller's clock reading, 0 to read it here)."""
        if not now:
            now = now_ns()
        if now < self._next_hb:
            return
        self._next_hb = now + self._hb_interval_ns
        stats = self.heartbeat_stats() if self.state == "running" else {}
        self.pub.send(Heartbeat(process=self.name, state=self.state, t_ns=now, pid=os.getpid(), stats=stats))
        self._warn_refusals()
        if self.spec.watch_parent and now >= self._next_parent_check:
            self._next_parent_check = now + 500_000_000
            parent = multiprocessing.parent_process()
            if parent is not None and not parent.is_alive():
                self.request_stop("supervisor died")

    def _warn_refusals(self) -> None:
        """Connections with keys that are not allowed: a warning per heartbeat that saw new ones."""
        refused = self._zap.unreported_refusals(BUS_DOMAIN) if self._zap is not None else None
        if refused is not None:
            self.warn("connection_refused", f"{self.name}: {refused[0]} connection(s) refused so far; last: "
                                            f"{refused[1]}")

    def _service_control(self, timeout_ms: int = 0) -> None:
        msg = self._control.recv(timeout_ms)
        while msg is not None:
            assert isinstance(msg, Control)
            cmd = msg.command
            if msg.target and msg.target != self.name:
                pass  # addressed to another process
            elif cmd == "start":
                self._started = True
            elif cmd in ("stop", "shutdown"):
                self.request_stop(f"{cmd} from {msg.issued_by}")
            elif cmd == "safe_state":
                self.events.write("safe_state", reason=msg.args.get("reason", ""))
                self.on_safe_state(str(msg.args.get("reason", "")))
            elif self.state == "running":
                self.events.write("control", command=cmd, args=msg.args, issued_by=msg.issued_by)
                self.on_control(msg)
            else:
                self.events.write("control_ignored", command=cmd, state=self.state, issued_by=msg.issued_by)
                self.warn("control_ignored", f"{cmd} from {msg.issued_by} ignored: {self.name} is {self.state}")
            msg = self._control.recv(0)

    def run(self) -> int:
        """Run the whole lifecycle; returns the process exit code."""
        self._install_stop_handlers()
        try:
            self._set_state("configuring")
            self.configure()
            self._ready_info = self.ready_info()
            self._tune_for_realtime()
            self._set_switch_interval()
            self._set_state("ready", info=self._ready_info)
            while not self._started and not self.stopping:
                self._heartbeat_ready()
                self._service_control(int(self.IDLE_POLL_S * 1000))
            if not self.stopping:
                self._set_state("running")
                self.on_start()
                self._run_steps()
            self._set_state("stopping", self._stop_reason)
            self.on_stop()
            self._set_state("stopped", self._stop_reason)
            return 0
        except BaseException as exc:  # noqa: BLE001 - reported in full, then the process exits non-zero
            self._report_failure(exc)
            return 1
        finally:
            self._close()

    def _run_steps(self) -> None:
        """The running loop: steps back to back until a stop. Per step it reads the clock once and compares it
        with two deadlines (heartbeat, control poll); the control socket is polled only when its deadline passed
        (``rig.control_poll_ms``; 0: before every step). The stop flag (a control message, a signal, a step's own
        request) is checked before every step."""
        clock, step, poll_ns = now_ns, self.step, self._control_poll_ns
        while not self._stop_reason:
            now = clock()
            if now >= self._next_hb:
                self._heartbeat(now)
            if now >= self._next_control:
                self._next_control = now + poll_ns
                self._service_control(0)
                if self._stop_reason:
                    break
            step()

    def _tune_for_realtime(self) -> None:
        """GC control, CPU affinity and priority from ``[rig]`` (docs/PERFORMANCE.md). What the OS refuses
        is reported as a warning, never silently ignored. Runs after ``configure()`` and only ever raises the
        priority of a critical process (:func:`priority_decision`), so a process that lowered its own
        priority in ``configure()`` (the console) keeps it."""
        rig_cfg = self.config.rig
        gc.collect()
        if rig_cfg.gc_freeze:
            gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(rig_cfg.gc_gen0_threshold, gen1, gen2)
        cpus = rig_cfg.cpu_affinity.get(self.name)
        decision = priority_decision(rig_cfg.priority, self.spec.critical)
        if decision == "keep_non_critical":
            self.events.write("priority_not_raised", priority=rig_cfg.priority,
                              reason="not critical: never raised above normal, the closed loop gets the CPU first")
        if rig_cfg.background_priority == "low" and not self.spec.critical:
            avoid = rig_cfg.cpu_affinity.get("decoder", [])
            allowed = background_cpus(avoid)
            if avoid and allowed and not cpus:
                cpus = allowed  # a non-critical process (the console) never runs on the decoder's CPUs
        if decision == "raise" and rig_cfg.priority == "realtime":
            refused = set_realtime_scheduling()
            self.realtime_scheduling = not refused
            io_threads, io_refused = (0, "") if refused else raise_zmq_io_threads()
            own = {} if refused else self.realtime_threads()
            own_refused = raise_threads(own) if own else ""
            self.events.write("scheduling", policy=scheduling_policy(), refused=refused,
                              zmq_io_threads=io_threads, zmq_io_refused=io_refused,
                              threads_raised=sorted(own), threads_refused=own_refused)
            if refused:
                self.warn("priority_refused", f"{self.name}: {refused}; running at normal priority")
            elif io_refused:
                self.warn("priority_refused", f"{self.name}: {io_refused}; the bus's messages may wait for a CPU")
            if own_refused:
                self.warn("priority_refused", f"{self.name}: {own_refused}; they may wait for a CPU behind the loop")
            decision = "keep"
        if not cpus and decision != "raise":
            return
        import psutil  # noqa: PLC0415 - only when tuning is asked for

        me = psutil.Process()
        if cpus:
            try:
                me.cpu_affinity(cpus)
            except (AttributeError, ValueError, psutil.Error) as exc:
                self.warn("affinity_refused", f"cannot pin {self.name} to CPUs {cpus}: {exc}")
        if decision == "raise":
            try:
                me.nice(psutil.HIGH_PRIORITY_CLASS if sys.platform == "win32" else -5)
            except (AttributeError, psutil.Error, OSError) as exc:
                self.warn("priority_refused", f"cannot raise the priority of {self.name}: {exc}")

    def _set_switch_interval(self) -> None:
        """``rig.switch_interval_ms`` (critical processes only): how long the loop thread may wait for the GIL
        while a background thread of the process (reference build, movie writer) holds it."""
        ms = self.config.rig.switch_interval_ms
        if ms and self.spec.critical:
            sys.setswitchinterval(ms / 1000)
            self.events.write("switch_interval", ms=ms)

    def _heartbeat_ready(self) -> None:
        """While waiting for start, repeat the ready info so a supervisor that joined late sees it."""
        now = now_ns()
        if now >= self._next_hb:
            self._set_state_quiet()
        self._heartbeat()

    def _set_state_quiet(self) -> None:
        self.pub.send(
            StateChange(process=self.name, state=self.state, reason=_encode_info(self._ready_info), t_ns=now_ns())
        )

    def _report_failure(self, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(exc))
        # A device, file or setting refused while starting is the operator's to fix: one line on the terminal (the
        # traceback is in the event log). Anything else, or later, is a bug: its traceback is printed in full.
        one_line = self.state == "configuring" and isinstance(exc, STARTUP_ERRORS)
        try:
            self.events.write("error", error_type=type(exc).__name__, message=str(exc), traceback=tb)
            self.pub.send(
                ProcessError(process=self.name, error_type=type(exc).__name__, message=str(exc), traceback=tb,
                             t_ns=now_ns())
            )
            self._set_state("failed", f"{type(exc).__name__}: {exc}")
        finally:
            if one_line:
                print(f"[{self.name}] FAILED while starting: {type(exc).__name__}: {exc} (traceback in "
                      f"{self.name}/events.jsonl)", file=sys.stderr, flush=True)
            else:
                print(f"[{self.name}] FAILED: {tb}", file=sys.stderr, flush=True)
            try:
                self.on_stop()
            except Exception as cleanup_exc:  # noqa: BLE001 - already failing; record the second error too
                self.events.write(
                    "error", error_type=type(cleanup_exc).__name__, message=f"during cleanup: {cleanup_exc}"
                )

    def _install_stop_handlers(self) -> None:
        """Ctrl-C, SIGTERM, Ctrl-Break, console close: all a clean stop (run() checks ``stopping`` every step)."""
        self._stop_handlers = install_stop_handlers(self.request_stop)

    def _close(self) -> None:
        for sub in self._subscribers:
            sub.close()
        self._control.close()
        self.pub.close()
        self.events.close()
        if self._zap is not None:
            self._zap.stop()
        self.ctx.term()
        handlers, self._stop_handlers = self._stop_handlers, None
        if handlers is not None:
            handlers.finished()  # releases a Windows console-close handler: this process is done
            handlers.restore()


def priority_decision(priority: str, critical: bool) -> str:
    """What :meth:`RigProcess._tune_for_realtime` does with the OS priority of a process.

    ``"raise"`` (``[rig] priority = "high"`` or ``"realtime"`` on a critical process), ``"keep"`` ("normal"), or
    ``"keep_non_critical"``: a non-critical process (the console) is never raised above normal, or it would
    compete with the loop it only watches; the console lowers its own priority, and this leaves that alone.
    """
    if priority not in ("high", "realtime"):
        return "keep"
    return "raise" if critical else "keep_non_critical"


def bind_endpoint(connect_endpoint: str, bind_host: str) -> str:
    """``tcp://127.0.0.1:5601`` + bind host ``0.0.0.0`` -> ``tcp://0.0.0.0:5601``.

    Processes bind on ``bus.host`` (``0.0.0.0`` lets a console on another PC attach) but connect to each
    other through loopback: Windows refuses connections to 0.0.0.0.
    """
    if connect_endpoint.startswith("ipc://"):
        return connect_endpoint  # a socket file: the same name to bind and to connect
    port = connect_endpoint.rsplit(":", 1)[1]
    return f"tcp://{bind_host}:{port}"


def _encode_info(info: dict[str, str]) -> str:
    return "info:" + "&".join(f"{k}={v}" for k, v in info.items()) if info else ""


def decode_info(reason: str) -> dict[str, str]:
    """Inverse of the ready-info encoding carried in a ready StateChange's ``reason``."""
    if not reason.startswith("info:"):
        return {}
    out: dict[str, str] = {}
    for part in reason[5:].split("&"):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key] = value
    return out


def resolve_callable(target: str) -> Any:
    """``"package.module:name"`` -> the object, imported in the child (spawn pickles names, not code)."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def resolve_target(target: str) -> type[RigProcess]:
    cls = resolve_callable(target)
    if not (isinstance(cls, type) and issubclass(cls, RigProcess)):
        raise TypeError(f"{target} is not a RigProcess subclass")
    return cls


def process_main(spec: ProcessSpec) -> None:
    """Entry point of every child process (the ``spawn`` target)."""
    try:
        cls = resolve_target(spec.target)
        proc = cls(spec)
    except BaseException:
        traceback.print_exc()
        sys.exit(2)
    sys.exit(proc.run())
