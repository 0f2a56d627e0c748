"""The supervisor's command socket: consoles and CLI tools send requests, the rig answers each one.

A ZeroMQ ROUTER socket serving Lazy-Pirate REQ clients (:mod:`rig.core.client`). Every request is
decoded into a :class:`~rig.core.operator.CommandRequest` and answered with a
:class:`~rig.core.operator.CommandReply`; a malformed one gets ``ok: false`` and an error that names
the problem, never an exception in the supervisor's loop. Operator commands are checked here, before
anything is relayed: a refused command reaches no process.

Nothing a client sends can end the supervisor (docs/SECURITY.md): the body's size is checked before it is
decoded, the decoder's schema admits no nesting to recurse on, every command's arguments are checked against
their bounds (:func:`rig.core.operator.check_args`: ROI indices below the running acquisition's ROI count), and
any other exception while answering becomes an error reply and is reported to ``on_error``.

With keys (:class:`~rig.core.auth.CurveKeys`) the socket is a CURVE server: only clients with an allowed key
get through the handshake, and ``issued_by`` is the name of the client's key, not what the request says.

A client retries with the same ``request_id`` when a reply is slow or lost: the retry is answered from
a cache of recent replies instead of being acted on twice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import msgspec
import zmq

from rig.core.auth import RIG_KEY, CurveKeys
from rig.core.operator import (
    KNOWN_COMMANDS,
    MAX_METADATA_TOTAL_KEYS,
    MAX_REQUEST_BYTES,
    CommandReply,
    CommandRequest,
    Snapshot,
    check_args,
    decode_request,
    encode,
)

#: Replies kept for answering retries (a client retries within seconds; this is minutes of commands).
REPLIES_KEPT = 500
#: Commands that change nothing: answered afresh on a retry, never cached (a snapshot is large).
READ_ONLY = frozenset({"ping", "snapshot"})
#: Past this a message is not even received: ZeroMQ drops the connection of whoever sent it.
MAX_MESSAGE_BYTES = 16 * MAX_REQUEST_BYTES


class CommandHandler(Protocol):
    """What the command socket needs from the supervisor."""

    def snapshot(self) -> Snapshot: ...

    def request_stop(self, reason: str) -> None: ...

    def relay(self, request: CommandRequest) -> None:
        """Act on an operator command whose arguments were checked (log it, relay it as Control)."""


def authenticated_issuer(user_id: str, claimed: str) -> str:
    """``issued_by`` of a request from the client whose key is named ``user_id``.

    A console's key name is who it is, whatever the request claims. The rig's own key is shared by the rig's
    processes (its console among them), which are as trusted as the supervisor: their claim is kept after it.
    """
    return f"{RIG_KEY}:{claimed}" if user_id == RIG_KEY else user_id


class CommandServer:
    """The ROUTER socket, bound at ``endpoint``; call :meth:`serve` when :attr:`socket` is readable.

    ``n_rois``: the running acquisition's ROI count (None until known; then ``set_ensembles`` is refused).
    ``on_error``: told of every exception that answering a request raised (the client got an error reply).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, handler: CommandHandler, *, keys: CurveKeys | None = None,
                 n_rois: Callable[[], int | None] | None = None,
                 on_error: Callable[[CommandRequest | None, Exception], None] | None = None) -> None:
        self.handler = handler
        self.keys = keys
        self._n_rois = n_rois
        self._on_error = on_error
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if keys is not None:
            keys.make_server(self.socket)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError:
            self.socket.close(linger=0)
            raise
        self._replies: OrderedDict[str, bytes] = OrderedDict()
        self._metadata_keys: set[str] = set()

    def serve(self) -> None:
        """Answer every request waiting on the socket (never blocks)."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, body = frames[0].bytes, frames[-1]
            user = body.get("User-Id") if self.keys is not None else None  # the ZAP handler's name of the key
            self.socket.send_multipart([identity, b"", self.answer(body.bytes, user)])

    def answer(self, body: bytes, user: str | None = None) -> bytes:
        """The encoded reply to one encoded request (a retry gets the first answer again).

        ``user``: the name of the client's key when the socket authenticates (None: no keys).
        """
        if len(body) > MAX_REQUEST_BYTES:
            return encode(CommandReply(ok=False, error=f"bad request: {len(body)} bytes, the most is "
                                                       f"{MAX_REQUEST_BYTES}"))
        request: CommandRequest | None = None
        try:
            request = decode_request(body)
            if user is not None:
                request = msgspec.structs.replace(request, issued_by=authenticated_issuer(user, request.issued_by))
        except msgspec.DecodeError as exc:  # ValidationError too: the text names the bad field
            return encode(CommandReply(ok=False, error=f"bad request: {exc}"))
        except Exception as exc:  # noqa: BLE001 - a request must never end the supervisor: answered, reported
            return self._failed(request, exc)
        key = f"{user or ''}\0{request.request_id}"  # one client cannot be answered another's cached reply
        cached = self._replies.get(key) if request.request_id else None
        if cached is not None:
            return cached
        try:
            reply = encode(self.handle(request))
        except Exception as exc:  # noqa: BLE001 - as above; the retry gets the same error, never a second try
            reply = self._failed(request, exc)
        if request.request_id and request.command not in READ_ONLY:
            self._replies[key] = reply
            while len(self._replies) > REPLIES_KEPT:
                self._replies.popitem(last=False)
        return reply

    def _failed(self, request: CommandRequest | None, exc: Exception) -> bytes:
        """The error reply to a request whose handling raised, after telling ``on_error``."""
        if self._on_error is not None:
            self._on_error(request, exc)
        what = request.command if request is not None else "request"
        return encode(CommandReply(ok=False, error=f"{what} failed in the rig: {type(exc).__name__}: {exc}"[:500]))

    def handle(self, request: CommandRequest) -> CommandReply:
        command = request.command
        if command not in KNOWN_COMMANDS:
            return CommandReply(ok=False, error=f"unknown command {command!r}")
        n_rois = None
        if command == "set_ensembles" and self._n_rois is not None:
            n_rois = self._n_rois()
            if n_rois is None:
                return CommandReply(ok=False, error="set_ensembles: the ROI count is not known yet (acquisition is "
                                                    "not ready)")
        problem = check_args(command, request.args, n_rois) or self._check_metadata(request)
        if problem:
            return CommandReply(ok=False, error=f"{command}: {problem}")
        if command == "ping":
            return CommandReply(ok=True)
        if command == "snapshot":
            return CommandReply(ok=True, snapshot=self.handler.snapshot())
        if command == "stop":
            self.handler.request_stop(f"stop from {request.issued_by}")
            return CommandReply(ok=True)
        self.handler.relay(request)
        return CommandReply(ok=True)

    def _check_metadata(self, request: CommandRequest) -> str:
        """A session keeps a bounded number of metadata keys (each request is bounded by its schema)."""
        if request.command != "set_metadata":
            return ""
        keys = self._metadata_keys | set(request.args)
        if len(keys) > MAX_METADATA_TOTAL_KEYS:
            return f"a session keeps at most {MAX_METADATA_TOTAL_KEYS} metadata keys"
        self._metadata_keys = keys
        return ""

    def close(self) -> None:
        self.socket.close()
