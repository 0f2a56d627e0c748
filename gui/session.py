"""The console's link to one rig: snapshot, bus reader and command worker glued to the model.

No Qt here: the window (or a test) calls :meth:`ConsoleSession.tick` from its timer. A tick never
blocks: commands travel on the worker thread, the bus is drained within a time budget.

Joining late: the first snapshot gives the endpoints of every publisher, the counters, calibration,
process states and recent warnings; the bus then carries everything after it, and the per-stream
sequence numbers tell how much the console missed (shown in the health panel). Snapshots are repeated
every ``snapshot_interval_s`` to pick up what only the supervisor knows (a lost process).

The end of the session: once the supervisor says it is stopping (its heartbeats or a snapshot), every
critical process has stopped, or this console's ``stop`` was accepted, :attr:`ConsoleSession.ended` says
why, and the window turns into a read-only review of what it received. The rig then shutting its sockets
is expected, not "unreachable": snapshot requests stop and no error is raised. A rig that stops
answering before any of that is unreachable, unless its ``session.json`` (when the console can read the
session folder) says the session finished.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import zmq

from gui.bus_reader import BusReader, resolve_endpoint
from gui.commands import CommandReply, CommandWorker
from gui.config import GuiConfig
from gui.labels import decoder_code_names
from gui.model import ConsoleModel
from gui.progress import session_end
from rig.core.auth import CurveKeys
from rig.core.operator import Snapshot


def lower_own_priority() -> str:
    """Put this process below the rig's processes in the CPU scheduler; returns what was set."""
    proc = psutil.Process()
    if sys.platform == "win32":
        proc.nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
        return "below-normal priority class"
    proc.nice(max(proc.nice(), 10))
    return f"nice {proc.nice()}"


class ConsoleSession:
    """Model + command worker + (after the first snapshot) bus reader for the rig at ``command_endpoint``.

    ``keys``: this console's CURVE keys for a rig with keys (``rig console --keys``); the rig then names this
    console's commands after its key, whatever ``issued_by`` says.
    """

    def __init__(self, cfg: GuiConfig, command_endpoint: str, *, issued_by: str = "console",
                 clock: Callable[[], float] = time.monotonic, keys: CurveKeys | None = None) -> None:
        self.cfg = cfg
        self.keys = keys
        self.command_endpoint = command_endpoint
        self.clock = clock
        modes, states = decoder_code_names()
        self.model = ConsoleModel(cfg, modes, states, clock=clock)
        self.ctx = zmq.Context()
        self.commands = CommandWorker(command_endpoint, cfg.command_timeout_s, cfg.command_retries, issued_by, keys)
        self.reader: BusReader | None = None
        self.connected = False
        self.unreachable = ""
        self.ended = ""  # why the session is over ("" while it runs); the controls are off from then on
        self.rig_gone = False  # the rig stopped answering after the session ended: nothing more is asked
        self.replies: list[CommandReply] = []  # every reply, for the status line and tests (bounded below)
        self._next_snapshot = 0.0
        self._listeners: list[Callable[[CommandReply], None]] = []

    def on_reply(self, listener: Callable[[CommandReply], None]) -> None:
        self._listeners.append(listener)

    def send(self, command: str, **args: Any) -> int:
        """Queue an operator command for the supervisor; its reply arrives through :meth:`tick`."""
        return self.commands.submit(command, **args)

    def tick(self) -> int:
        """Handle replies, ask for a snapshot when due, drain the bus. Returns messages ingested."""
        for reply in self.commands.replies():
            self._handle_reply(reply)
        if not self.ended:
            why = session_end(self.model)
            if why:
                self._end(why)
        now = self.clock()
        if not self.rig_gone and now >= self._next_snapshot and not self.commands.in_flight("snapshot"):
            self._next_snapshot = now + self.cfg.snapshot_interval_s
            self.commands.submit("snapshot")
        if self.reader is None:
            return 0
        return self.reader.pump(self.model.ingest)

    def _handle_reply(self, reply: CommandReply) -> None:
        if reply.command == "snapshot":
            if reply.ok and reply.snapshot is not None:
                self.unreachable = ""
                self._apply_snapshot(reply.snapshot)
            else:
                self._snapshot_failed(reply.error or "the rig answered without a snapshot")
            return
        if reply.command == "stop" and reply.ok:
            self._end("stopped from this console: the rig is stopping")
        self.replies.append(reply)
        del self.replies[:-100]
        if not reply.ok:
            self.model.add_warning("error", "console", f"{reply.command}_failed",
                                   f"{reply.command}: {reply.error}")
        for listener in self._listeners:
            listener(reply)

    def _snapshot_failed(self, error: str) -> None:
        if not self.ended:
            status = self._finished_status()
            if status:
                self._end(f"the session finished (session.json status {status!r})")
        if self.ended:  # the rig shut its sockets after the session: expected, and nothing more to ask
            self.rig_gone = True
            self.unreachable = ""
            return
        if not self.unreachable:
            self.model.add_warning("error", "console", "rig_unreachable", error)
        self.unreachable = error

    def _finished_status(self) -> str:
        """The final status in the session's ``session.json`` ("ok", "failed"), when this machine can read it."""
        if not self.model.session_dir:
            return ""
        path = Path(self.model.session_dir) / "session.json"
        if not path.is_file():
            return ""  # a console on another machine: the folder is on the rig PC
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # being replaced, or damaged: say so, the rig stays "unreachable"
            self.model.add_warning("warning", "console", "session_json", f"{path}: cannot read it ({exc})")
            return ""
        status = info.get("status") if isinstance(info, dict) else None
        return str(status) if status in ("ok", "failed") else ""

    def _end(self, why: str) -> None:
        self.ended = why
        self.model.add_warning("info", "console", "session_ended", f"session ended: {why}")

    def _apply_snapshot(self, snap: Snapshot) -> None:
        self.model.apply_snapshot(snap)
        if self.reader is None:
            endpoints = [resolve_endpoint(ep, self.command_endpoint)
                         for name, ep in sorted(snap.endpoints.items()) if name != "command"]
            self.reader = BusReader(self.ctx, endpoints, self.cfg, self.keys)
            self.connected = True

    def close(self) -> None:
        self.commands.close()
        if self.reader is not None:
            self.reader.close()
        self.ctx.destroy(linger=0)  # closes any socket a failed construction left open, then terminates
