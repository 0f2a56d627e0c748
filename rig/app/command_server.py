"""The supervisor's command socket: consoles and CLI tools send requests, the rig answers each one.

A ZeroMQ ROUTER socket serving Lazy-Pirate REQ clients (:mod:`rig.core.client`). Every request is
decoded into a :class:`~rig.core.operator.CommandRequest` and answered with a
:class:`~rig.core.operator.CommandReply`; a malformed one gets ``ok: false`` and an error that names
the problem, never an exception in the supervisor's loop. Operator commands are checked here, before
anything is relayed: a refused command reaches no process.

A client retries with the same ``request_id`` when a reply is slow or lost: the retry is answered from
a cache of recent replies instead of being acted on twice.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

import msgspec
import zmq

from rig.core.operator import OPERATOR_COMMANDS, CommandReply, CommandRequest, Snapshot, decode_request, encode

#: Replies kept for answering retries (a client retries within seconds; this is minutes of commands).
REPLIES_KEPT = 500


class CommandHandler(Protocol):
    """What the command socket needs from the supervisor."""

    def snapshot(self) -> Snapshot: ...

    def request_stop(self, reason: str) -> None: ...

    def relay(self, request: CommandRequest) -> None:
        """Act on an operator command whose arguments were checked (log it, relay it as Control)."""


def check_args(command: str, args: dict[str, Any]) -> str:
    """Why an operator command's arguments are unusable, or "" (checked before anything is relayed)."""
    if command == "set_ensembles":
        for key in ("up", "down"):
            value = args.get(key, [])
            if not isinstance(value, list) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
                return f"{key} must be a list of ROI indices (integers >= 0)"
    if command == "manual_reward" and "volume_ul" in args:
        volume = args["volume_ul"]
        if not _is_number(volume) or not 0 < volume <= 100:
            return "volume_ul must be a number of microlitres in (0, 100]"
    if command == "calibrate" and "target_hit_rate" in args:
        rate = args["target_hit_rate"]
        if not _is_number(rate) or not 0 < rate < 1:
            return "target_hit_rate must be a number between 0 and 1"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class CommandServer:
    """The ROUTER socket, bound at ``endpoint``; call :meth:`serve` when :attr:`socket` is readable."""

    def __init__(self, ctx: zmq.Context, endpoint: str, handler: CommandHandler) -> None:
        self.handler = handler
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError:
            self.socket.close(linger=0)
            raise
        self._replies: OrderedDict[str, bytes] = OrderedDict()

    def serve(self) -> None:
        """Answer every request waiting on the socket (never blocks)."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, body = frames[0], frames[-1]
            self.socket.send_multipart([identity, b"", self.answer(body)])

    def answer(self, body: bytes) -> bytes:
        """The encoded reply to one encoded request (a retry gets the first answer again)."""
        try:
            request = decode_request(body)
        except msgspec.DecodeError as exc:  # ValidationError too: the text names the bad field
            return encode(CommandReply(ok=False, error=f"bad request: {exc}"))
        cached = self._replies.get(request.request_id) if request.request_id else None
        if cached is not None:
            return cached
        reply = encode(self.handle(request))
        if request.request_id:
            self._replies[request.request_id] = reply
            while len(self._replies) > REPLIES_KEPT:
                self._replies.popitem(last=False)
        return reply

    def handle(self, request: CommandRequest) -> CommandReply:
        command = request.command
        if command == "ping":
            return CommandReply(ok=True)
        if command == "snapshot":
            return CommandReply(ok=True, snapshot=self.handler.snapshot())
        if command == "stop":
            self.handler.request_stop(f"stop from {request.issued_by}")
            return CommandReply(ok=True)
        if command not in OPERATOR_COMMANDS:
            return CommandReply(ok=False, error=f"unknown command {command!r}")
        problem = check_args(command, request.args)
        if problem:
            return CommandReply(ok=False, error=f"{command}: {problem}")
        self.handler.relay(request)
        return CommandReply(ok=True)

    def close(self) -> None:
        self.socket.close()
