"""A direct loopback TCP link for the one stream the loop waits on: acquisition's ``FluorFrame`` to the decoder.

Why: a ZeroMQ PUB -> SUB message crosses four threads (the sender's, its I/O thread, the receiver's I/O thread,
the receiver's) before the decoder wakes; a plain socket wakes the decoder straight from the kernel. Measured
30 Hz pings of a 4 KB message between two processes on this 2-core VM: 0.084 ms p50 / 0.10 ms p99 raw against
0.13-0.21 / 0.18-1.5 ms through ZeroMQ (docs/PERFORMANCE.md). ``[bus] fluor_link = "direct"`` selects it; the
bus still carries every frame for the console and other listeners.

Messages are the bus's own encoding (:class:`rig.core.schema.Codec`: topic, msgpack header, raw arrays), framed
as ``<II`` (number of parts, bytes after this prefix), a ``<I`` length per part, then the parts. The sender never
blocks the acquisition loop: a message the socket cannot take whole waits in a remainder that goes first next
time; while a remainder waits, new messages are dropped and counted (the decoder sees the gap in ``seq``, as
with a PUB socket's high-water mark). Loopback only: both ends are processes of the same rig PC.
"""

from __future__ import annotations

import select
import socket
import struct
import time

from rig.core.bus import GapCounter
from rig.core.schema import Codec, Message, SchemaError

_PREFIX = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
_MAX_PARTS = 16
_MAX_BYTES = 64 << 20


class DirectLinkSender:
    """The acquisition's end: listens on loopback (an OS-chosen port, :attr:`port`), serves one receiver."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(1)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._conn: socket.socket | None = None
        self._codec = Codec()
        self._pending = b""
        self.sent = 0
        self.dropped = 0  # messages not sent because the receiver was not reading
        self.error = ""  # why the link broke, once it has

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        self._conn = conn

    def send(self, msg: Message) -> bool:
        """Send ``msg`` (already stamped with its ``seq`` and ``sender``) if a receiver is connected and keeps up."""
        if self._conn is None:
            if self.error:
                return False
            self._accept()
            if self._conn is None:
                return False
        if self._pending and not self._write(self._pending):
            self.dropped += 1
            return False
        parts = [memoryview(p).cast("B") for p in self._codec.encode(msg)]
        header = bytearray(_PREFIX.size + _LENGTH.size * len(parts))
        _PREFIX.pack_into(header, 0, len(parts), len(header) - _PREFIX.size + sum(p.nbytes for p in parts))
        for i, part in enumerate(parts):
            _LENGTH.pack_into(header, _PREFIX.size + _LENGTH.size * i, part.nbytes)
        self._write(b"".join([header, *parts]))  # what the socket did not take goes first next time
        self.sent += 1
        return True

    def _write(self, data: bytes) -> bool:
        """Write what the socket takes now; keep the rest as the remainder. True when nothing is left."""
        conn = self._conn
        assert conn is not None
        try:
            n = conn.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:  # the receiver went away: the supervisor sees its death; we stop sending
            self.error = f"direct link to the decoder lost: {exc}"
            self.close_connection()
            return False
        self._pending = data[n:]
        return not self._pending

    def close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._pending = b""

    def close(self) -> None:
        self.close_connection()
        self._listener.close()


class DirectLinkReceiver:
    """The decoder's end: connects to the sender's port; ``poll``/``recv`` as :class:`rig.core.bus.Subscriber`.

    Never blocks in the middle of a message: bytes are gathered as they come and a message is handed out once
    it is whole (a sender's remainder may follow a frame period later)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.setblocking(False)
        self._codec = Codec()
        self._buf = bytearray()
        self.gaps = GapCounter()
        self.bad_messages = 0
        self.last_error = ""
        self.closed = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def _whole(self) -> int:
        """The size of the whole message at the head of the buffer (prefix included), 0 if it is not all here."""
        if len(self._buf) < _PREFIX.size:
            return 0
        n_parts, size = _PREFIX.unpack_from(self._buf, 0)
        if not 2 <= n_parts <= _MAX_PARTS or not _LENGTH.size * n_parts <= size <= _MAX_BYTES:
            self._broken(f"bad frame prefix: {n_parts} parts, {size} bytes")
            return 0
        return _PREFIX.size + size if len(self._buf) >= _PREFIX.size + size else 0

    def poll(self, timeout_ms: int) -> bool:
        if self._whole():
            return True
        if self.closed:  # nothing will come: wait as a quiet socket would, so a caller's loop does not spin
            time.sleep(max(timeout_ms, 0) / 1000.0)
            return False
        readable, _, _ = select.select([self._sock], [], [], max(timeout_ms, 0) / 1000.0)
        return bool(readable)

    def recv(self, timeout_ms: int = 0) -> Message | None:
        """The next whole message, or None when none is whole within ``timeout_ms`` (or the link is closed)."""
        end = self._whole()
        if not end:
            if not self.poll(timeout_ms):
                return None
            while not end:  # take what is here now; a message still incomplete waits for the next call
                self._fill()
                end = self._whole()
                if not end and (self.closed or not self.poll(0)):
                    return None
        n_parts = _PREFIX.unpack_from(self._buf, 0)[0]
        body = bytes(self._buf[_PREFIX.size:end])  # its own bytes: the arrays decoded from it outlive the buffer
        del self._buf[:end]
        return self._decode(body, n_parts)

    def _decode(self, body: bytes, n_parts: int) -> Message | None:
        lengths = [_LENGTH.unpack_from(body, _LENGTH.size * i)[0] for i in range(n_parts)]
        offset = _LENGTH.size * n_parts
        if offset + sum(lengths) != len(body):
            self._broken(f"part lengths {lengths} do not add up to the frame's {len(body)} bytes")
            return None
        view = memoryview(body)
        parts = []
        for length in lengths:
            parts.append(view[offset:offset + length])
            offset += length
        try:
            msg = self._codec.decode(parts)
        except SchemaError as exc:
            self.bad_messages += 1
            self.last_error = str(exc)
            return None
        self.gaps.observe(msg)
        return msg

    def _fill(self) -> None:
        try:
            data = self._sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            self._broken(f"read failed: {exc}")
            return
        if not data:
            self._broken("the acquisition closed the direct link")
            return
        self._buf += data

    def _broken(self, why: str) -> None:
        self.bad_messages += 1
        self.last_error = why
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._buf.clear()
            self._sock.close()
