"""Talking to a running rig's command socket: Lazy-Pirate request/reply (zguide ch. 4).

A REQ socket that gets no reply in time is closed and reopened before the retry, so a supervisor
that restarted or a lost message never wedges the caller. With keys (:class:`~rig.core.auth.CurveKeys`) the
socket is a CURVE client: a rig that does not list its key never answers (:class:`RigUnreachable`).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import zmq

from rig.core.auth import CurveKeys
from rig.core.operator import CommandRequest, encode


class RigUnreachable(ConnectionError):
    pass


class CommandClient:
    def __init__(self, endpoint: str, timeout_s: float = 1.0, retries: int = 3, ctx: zmq.Context | None = None,
                 keys: CurveKeys | None = None) -> None:
        self.endpoint = endpoint
        self.keys = keys
        self.timeout_ms = int(timeout_s * 1000)
        self.retries = retries
        self._ctx = ctx or zmq.Context.instance()
        self._sock: zmq.Socket | None = None

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        if self.keys is not None:
            self.keys.make_client(sock)
        sock.connect(self.endpoint)
        return sock

    def request(self, command: str, issued_by: str = "console", **args: Any) -> dict[str, Any]:
        # One id for every retry of this request: the supervisor answers a repeat from its cache instead
        # of relaying the command again (a lost reply must never mean two manual rewards).
        request_id = uuid.uuid4().hex
        body = encode(CommandRequest(command=command, args=args, issued_by=issued_by, request_id=request_id))
        for _attempt in range(self.retries):
            if self._sock is None:
                self._sock = self._connect()
            self._sock.send(body)
            if self._sock.poll(self.timeout_ms, zmq.POLLIN):
                return json.loads(self._sock.recv())
            self._sock.close()  # Lazy Pirate: a REQ socket without its reply is unusable; start over
            self._sock = None
        raise RigUnreachable(f"no reply from the rig at {self.endpoint} after {self.retries} tries")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
