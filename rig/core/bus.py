"""ZeroMQ plumbing: one PUB socket per process, SUB sockets that decode with the schema codec.

Every process binds one PUB socket at its endpoint and connects SUB sockets to the endpoints of the
processes it listens to (zguide "one publisher per node"). Topics are the message types' ``topic``
prefixes from :mod:`rig.core.schema`. With keys (:class:`~rig.core.auth.CurveKeys`) a PUB is a CURVE server and
a SUB a CURVE client: the context of a process that binds one must run a :class:`~rig.core.auth.ZapHandler`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

import zmq

from rig.core.auth import CurveKeys
from rig.core.clock import now_ns
from rig.core.schema import Codec, GapCounter, Message, SchemaError

# pyzmq's backend (Cython) send and recv, called part by part. The Python layer above them (send_multipart,
# recv_multipart) costs ~10 us more per 4-part message (a FluorFrame: send 27 -> 16 us, recv 32 -> 23 us of thread
# CPU), at 1 kHz ~1 % of a core on each end; the libzmq calls and pyzmq's copy rules are the same.
_send_part = zmq.backend.Socket.send
_recv_part = zmq.backend.Socket.recv


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a free port (used when ``bus.base_port = 0``)."""
    return free_tcp_ports(1, host)[0]


def free_tcp_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: all are held open until every one is chosen, so the OS cannot hand
    out the same port twice. (Another program can still take one before our process binds it; the bind
    then fails with a message naming the endpoint.)"""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Publisher:
    """A bound PUB socket that stamps ``sender`` and a per-topic sequence number on each message.

    Arrays above pyzmq's copy threshold are sent without copying, so do not mutate such an array after
    sending it; small arrays (per-ROI traces) are copied by pyzmq and may be reused at once.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, sender: str, sndhwm: int = 1000,
                 keys: CurveKeys | None = None) -> None:
        # SNDHWM bounds what a subscriber that stopped reading (a hung console) can make us buffer:
        # past it PUB drops for that subscriber only, and the receiver sees the gap in the sequence numbers.
        self.sender = sender
        self.endpoint = endpoint
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, 500)
        if keys is not None:
            keys.make_server(self._sock)  # only clients with an allowed key get any message
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)  # an unbound socket left open would hang ctx.term() forever
            raise OSError(f"{sender}: cannot bind its publisher at {endpoint}: {exc}") from exc
        self._codec = Codec()
        self._seq: dict[bytes, int] = {}

    def send(self, msg: Message) -> None:
        topic = msg.topic
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        msg.seq = seq
        msg.sender = self.sender
        frames = self._codec.encode(msg)
        sock, last = self._sock, len(frames) - 1
        for i in range(last):  # copy=False: pyzmq still copies parts below its copy threshold
            _send_part(sock, frames[i], zmq.SNDMORE, False)
        _send_part(sock, frames[last], 0, False)

    def close(self) -> None:
        self._sock.close()


class Subscriber:
    """A SUB socket connected to several publishers; decodes messages and counts gaps and bad input."""

    def __init__(
        self, ctx: zmq.Context, endpoints: Iterable[str], topics: Iterable[bytes], rcvhwm: int = 10_000,
        keys: CurveKeys | None = None,
    ) -> None:
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.make_client(self._sock)
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
            part = _recv_part(self._sock, 0, False)
            buffers = [part.buffer]
            while part.more:
                part = _recv_part(self._sock, 0, False)
                buffers.append(part.buffer)
            try:
                msg = self._codec.decode(buffers)
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


class SpinWaiter:
    """Wait for a periodic message without paying the OS wake-up latency.

    A process blocked in ``poll`` is woken by the kernel when a message lands; on a virtual machine or a
    CPU in a deep idle state that costs 0.1-1 ms, on every frame. Since frames are periodic, we block
    only until ``spin_ms`` before the next one is expected, then busy-poll until it arrives (or until
    ``2 * spin_ms`` after it was due). Cost: about ``3 * spin_ms`` of CPU per frame period. Spinning is
    off for periods under ``MIN_PERIOD_S`` (at high rates messages arrive back to back anyway) or when
    ``spin_ms`` is 0.
    """

    MIN_PERIOD_S = 0.01

    def __init__(self, period_s: float, spin_ms: float) -> None:
        self.period_ns = int(period_s * 1e9)
        self.spin_ns = int(spin_ms * 1e6) if period_s >= self.MIN_PERIOD_S else 0
        self.expected_ns = 0

    @property
    def spins(self) -> bool:
        """Whether it busy-polls at all: a process that only follows the stream for its timing needs it only then."""
        return self.spin_ns > 0

    def arrived(self, t_ns: int | None = None) -> None:
        """A message of the periodic stream arrived (now, or at ``t_ns``): predict the next one."""
        self.expected_ns = (t_ns or now_ns()) + self.period_ns

    def wait(self, poll: Callable[[int], object], max_block_ms: int) -> bool:
        """True when ``poll(timeout_ms)`` says input is ready; False after at most ``max_block_ms`` (plus a
        spin window). ``poll`` is e.g. ``socket.poll`` or a ``zmq.Poller``'s ``poll``."""
        if not self.spin_ns or not self.expected_ns:
            return bool(poll(max_block_ms))
        now = now_ns()
        spin_from = self.expected_ns - self.spin_ns
        if now < spin_from:
            block_ms = min(max_block_ms, (spin_from - now) // 1_000_000)
            if block_ms > 0 and poll(block_ms):
                return True
            now = now_ns()
            if now < spin_from:
                return False  # let the caller do its housekeeping; we come back before the window
        give_up = self.expected_ns + 2 * self.spin_ns
        while now < give_up:
            if poll(0):
                return True
            now = now_ns()
        self.expected_ns += self.period_ns  # this one is late or lost: aim at the next
        return bool(poll(0))
