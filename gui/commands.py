"""Operator commands sent from a background thread, so a slow or vanished rig never freezes the window.

The thread owns one Lazy-Pirate :class:`rig.core.client.CommandClient` (a ZeroMQ socket belongs to one
thread). The window submits requests and collects :class:`CommandReply` objects at its refresh rate;
failures (rig unreachable, a refused command, a reply that does not match the contract in
:mod:`rig.core.operator`) come back as replies with ``ok=False`` and an ``error`` the window shows. Replies
are decoded here, on the worker thread, so the window only ever sees typed snapshots.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from rig.core.auth import CurveKeys
from rig.core.client import CommandClient, RigUnreachable
from rig.core.operator import Snapshot, reply_from_json


@dataclass
class CommandReply:
    """The console's record of one request and how it ended (``snapshot`` only for a ``snapshot`` request)."""

    request_id: int
    command: str
    args: dict[str, Any]
    ok: bool
    snapshot: Snapshot | None = None
    error: str = ""


class CommandWorker:
    """A request queue served by one thread that talks to the supervisor's command socket."""

    def __init__(self, endpoint: str, timeout_s: float = 1.0, retries: int = 3, issued_by: str = "console",
                 keys: CurveKeys | None = None) -> None:
        self.endpoint = endpoint
        self.keys = keys  # CURVE client keys when the rig has keys (then the rig names us by our key)
        self.issued_by = issued_by
        self._timeout_s = timeout_s
        self._retries = retries
        self._requests: queue.Queue[tuple[int, str, dict[str, Any]] | None] = queue.Queue()
        self._replies: queue.Queue[CommandReply] = queue.Queue()
        self._ids = itertools.count(1)
        self._in_flight: dict[int, str] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="console-commands", daemon=True)
        self._thread.start()

    def submit(self, command: str, **args: Any) -> int:
        """Queue ``command``; returns its request id (matched by :attr:`CommandReply.request_id`)."""
        request_id = next(self._ids)
        with self._lock:
            self._in_flight[request_id] = command
        self._requests.put((request_id, command, args))
        return request_id

    def in_flight(self, command: str | None = None) -> int:
        """Requests submitted and not yet answered (of ``command`` only, when given)."""
        with self._lock:
            return sum(1 for c in self._in_flight.values() if command is None or c == command)

    def replies(self) -> list[CommandReply]:
        """Every reply that has arrived since the last call (never blocks)."""
        out: list[CommandReply] = []
        while True:
            try:
                out.append(self._replies.get_nowait())
            except queue.Empty:
                return out

    def _serve(self) -> None:
        ctx = zmq.Context()
        client = CommandClient(self.endpoint, timeout_s=self._timeout_s, retries=self._retries, ctx=ctx, keys=self.keys)
        try:
            while True:
                item = self._requests.get()
                if item is None:
                    return
                request_id, command, args = item
                reply = self._send(client, request_id, command, args)
                with self._lock:
                    self._in_flight.pop(request_id, None)
                self._replies.put(reply)
        finally:
            client.close()
            ctx.term()

    def _send(self, client: CommandClient, request_id: int, command: str, args: dict[str, Any]) -> CommandReply:
        try:
            answer = client.request(command, issued_by=self.issued_by, **args)
        except RigUnreachable as exc:
            return CommandReply(request_id, command, args, ok=False, error=str(exc))
        except (zmq.ZMQError, ValueError) as exc:  # socket failure or an unreadable reply: shown to the operator
            return CommandReply(request_id, command, args, ok=False, error=f"{type(exc).__name__}: {exc}")
        try:
            reply = reply_from_json(answer)
        except msgspec.ValidationError as exc:  # a rig speaking another version of the contract
            return CommandReply(request_id, command, args, ok=False, error=f"unreadable reply from the rig: {exc}")
        if not reply.ok:
            return CommandReply(request_id, command, args, ok=False, error=reply.error or "refused without a reason")
        return CommandReply(request_id, command, args, ok=True, snapshot=reply.snapshot)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after the requests already queued (each bounded by timeout x retries)."""
        self._requests.put(None)
        self._thread.join(timeout_s)
