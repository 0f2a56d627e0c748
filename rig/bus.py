"""ZeroMQ plumbing: one PUB socket per process, SUB sockets that decode with the schema codec.

Every process binds one PUB socket at its endpoint and connects SUB sockets to the endpoints of the
processes it listens to (zguide "one publisher per node"). Topics are the message types' ``topic``
prefixes from :mod:`rig.schema`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

import zmq

from rig.schema import Codec, GapCounter, Message, SchemaError


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a free port (used when ``bus.base_port = 0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Publisher:
    """A bound PUB socket that stamps ``sender`` and a per-topic sequence number on each message.

    Arrays above pyzmq's copy threshold are sent without copying, so do not mutate such an array after
    sending it; small arrays (per-ROI traces) are copied by pyzmq and may be reused at once.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, sender: str, sndhwm: int = 1000) -> None:
        # SNDHWM bounds what a subscriber that stopped reading (a hung console) can make us buffer:
        # past it PUB drops for that subscriber only, and the receiver sees the gap in the sequence numbers.
        self.sender = sender
        self.endpoint = endpoint
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, 500)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)  # an unbound socket left open would hang ctx.term() forever
            raise OSError(f"{sender}: cannot bind its publisher at {endpoint}: {exc}") from exc
        self._codec = Codec()
        self._seq: dict[bytes, int] = {}

    def send(self, msg: Message) -> None:
        seq = self._seq.get(msg.topic, 0) + 1
        self._seq[msg.topic] = seq
        msg.seq = seq
        msg.sender = self.sender
        self._sock.send_multipart(self._codec.encode(msg), copy=False)

    def close(self) -> None:
        self._sock.close()


class Subscriber:
    """A SUB socket connected to several publishers; decodes messages and counts gaps and bad input."""

    def __init__(
        self, ctx: zmq.Context, endpoints: Iterable[str], topics: Iterable[bytes], rcvhwm: int = 10_000
    ) -> None:
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        for endpoint in endpoints:
            self._sock.connect(endpoint)
        self._codec = Codec()
        self.gaps = GapCounter()
        self.bad_messages = 0
        self.last_error = ""

    @property
    def socket(self) -> zmq.Socket:
        return self._sock

    def poll(self, timeout_ms: int) -> bool:
        return bool(self._sock.poll(timeout_ms, zmq.POLLIN))

    def recv(self, timeout_ms: int = 0) -> Message | None:
        """The next decodable message, or None when none arrived within ``timeout_ms``.

        Undecodable messages are counted in ``bad_messages`` (with ``last_error``) and skipped: one bad
        sender must not stop a receiver.
        """
        while True:
            if timeout_ms >= 0 and not self._sock.poll(timeout_ms, zmq.POLLIN):
                return None
            frames = self._sock.recv_multipart(copy=False)
            try:
                msg = self._codec.decode([f.buffer for f in frames])
            except SchemaError as exc:
                self.bad_messages += 1
                self.last_error = str(exc)
                timeout_ms = 0
                continue
            self.gaps.observe(msg)
            return msg

    def drain(self, limit: int = 1000) -> list[Message]:
        """Every message already waiting (up to ``limit``), without blocking."""
        out: list[Message] = []
        while len(out) < limit:
            msg = self.recv(0)
            if msg is None:
                break
            out.append(msg)
        return out

    def close(self) -> None:
        self._sock.close()
