"""CLOOSE-compatible raw TCP frames: a scope already set up for the Harnett lab's CLOOSE works unchanged.

The scope side connects to us and writes each frame as ``height * width`` unsigned 16-bit pixels in column-
major (MATLAB ``reshape(img, [], 1)``) order, little-endian, with no header. Frame size comes from config, so
nothing on the wire can tell a wrong size: it shows up as garbage frames (low registration correlation).

A dropped connection is not an error: the source listens again, the scope reconnects, and the gap is
recorded (stats ``reconnects``, ``gap_s_total``, ``gap_frames_estimated``; a ``link_restored`` warning; the
first frame after it carries AFTER_GAP). Bytes of a frame cut short by the drop are discarded and counted as
a truncated (bad) frame. A new connection while one is open replaces it (a restarted scope script).
Frame numbers are a local count of frames received: the protocol has no counter.

Who may send frames: the listener binds 127.0.0.1 by default (a scope on this PC). On another interface
``allow`` lists the scope PCs' IP addresses (the config refuses a non-loopback host without it); a connection
from any other address is closed at once, before it can replace the scope's, and counted (stats
``refused_connections``) and warned about.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from acquisition.sources.base import Frame, FrameSource
from acquisition.validate import FrameFlag
from rig.core.addresses import check_addresses, normalize_address
from rig.core.clock import now_ns

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

_RCVBUF_BYTES = 8 * 1024 * 1024  # a few frames of slack if we are briefly late
#: a refused connection is warned about the first time, then every this many times
_WARN_REFUSED_EVERY = 100


class ClooseTcpSource(FrameSource):
    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> ClooseTcpSource:
        """The registry's factory: ``[acquisition.cloose_tcp]``."""
        c = cfg.cloose_tcp
        return cls(c.host, c.port, c.height_px, c.width_px, frame_rate_hz=cfg.frame_rate_hz, byte_order=c.byte_order,
                   allow=c.allow)

    def __init__(self, host: str, port: int, height: int, width: int, *, frame_rate_hz: float = 30.0,
                 byte_order: str = "little", allow: Sequence[str] = ()) -> None:
        """``allow``: the only peer IP addresses accepted (empty: any that can reach ``host``, i.e. this PC's
        programs when ``host`` is loopback)."""
        super().__init__()
        self._allow = frozenset(check_addresses(allow))
        self._refused = 0
        if height < 1 or width < 1:
            raise ValueError(f"`height_px`/`width_px`: must be > 0 (got {height}x{width})")
        if byte_order not in ("little", "big"):
            raise ValueError("`byte_order`: must be 'little' or 'big'")
        self.host, self._port = host, port
        self._shape = (int(height), int(width))
        self._wire_dtype = np.dtype("<u2" if byte_order == "little" else ">u2")
        self._rate = float(frame_rate_hz)
        self._dtype = np.dtype(np.uint16)
        self._frame_bytes = height * width * 2
        self._raw = bytearray(self._frame_bytes)
        self._view = memoryview(self._raw)
        self._pixels = np.frombuffer(self._raw, dtype=self._wire_dtype).reshape(width, height).T  # (Ly, Lx) view
        # handed-out frames are C-ordered native uint16: one transposing copy here (~0.3 ms) is cheaper than
        # every later stage walking a transposed view, and lets the frame be written to disk as is
        self._frame = np.empty((height, width), np.uint16)
        self._filled = 0
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._peer = ""
        self._had_connection = False
        self._t_drop_ns = 0
        self._after_gap = False
        self._frames = 0
        self._bad = 0
        self._truncated = 0
        self._connections = 0
        self._reconnects = 0
        self._gap_ns_total = 0
        self._gap_frames = 0
        self._bytes = 0

    @property
    def port(self) -> int:
        """The port actually listened on (useful when configured as 0 = any free port)."""
        if self._listener is not None:
            return int(self._listener.getsockname()[1])
        return self._port

    def open(self) -> None:
        try:
            listener = socket.create_server((self.host, self._port), backlog=2)
        except OSError as exc:
            raise OSError(f"cloose_tcp: cannot listen on {self.host}:{self._port}: {exc}") from exc
        listener.setblocking(False)
        self._listener = listener

    def close(self) -> None:
        self._drop_connection("closed by the rig", count_gap=False)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def link_state(self) -> str:
        if self._conn is not None:
            return "ok"
        return "reconnecting" if self._had_connection else "waiting"

    def stats(self) -> dict[str, float]:
        return {"frames": float(self._frames), "bad_frames": float(self._bad),
                "truncated_frames": float(self._truncated), "connections": float(self._connections),
                "reconnects": float(self._reconnects), "gap_s_total": self._gap_ns_total / 1e9,
                "gap_frames_estimated": float(self._gap_frames), "bytes": float(self._bytes),
                "refused_connections": float(self._refused)}

    # ------------------------------------------------------------------ connection handling
    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._allow and normalize_address(str(addr[0])) not in self._allow:
            conn.close()  # before anything else: a stranger must not replace the scope's connection
            self._refused += 1
            if self._refused == 1 or self._refused % _WARN_REFUSED_EVERY == 0:
                self.warn("connection_refused", f"cloose_tcp: connection from {addr[0]} refused: only "
                                                f"{', '.join(sorted(self._allow))} may send frames "
                                                f"([acquisition.cloose_tcp] allow; {self._refused} refused so far)")
            return
        if self._conn is not None:
            self._drop_connection(f"replaced by a new connection from {addr[0]}:{addr[1]}", count_gap=False)
        conn.setblocking(False)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF_BYTES)
        self._conn = conn
        self._peer = f"{addr[0]}:{addr[1]}"
        self._connections += 1
        if self._had_connection:
            self._reconnects += 1
            if self._t_drop_ns:
                gap_ns = now_ns() - self._t_drop_ns
                missed = round(gap_ns / 1e9 * self._rate)
                self._gap_ns_total += gap_ns
                self._gap_frames += missed
                self.warn("link_restored", f"cloose_tcp: scope reconnected from {self._peer} after "
                                           f"{gap_ns / 1e9:.2f} s (~{missed} frames at {self._rate:g} Hz lost)")
                self._t_drop_ns = 0
            self._after_gap = True
        self._had_connection = True

    def _drop_connection(self, why: str, *, count_gap: bool = True) -> None:
        if self._conn is None:
            return
        if self._filled:
            self._bad += 1
            self._truncated += 1
            self.warn("truncated_frame", f"cloose_tcp: connection from {self._peer} {why} after "
                                         f"{self._filled} of {self._frame_bytes} bytes of a frame; frame discarded")
            self._filled = 0
        self._conn.close()
        self._conn = None
        if count_gap:
            self._t_drop_ns = now_ns()
            self.warn("link_lost", f"cloose_tcp: connection from {self._peer} {why}; waiting for the scope "
                                   f"to reconnect on port {self.port}")
        self._after_gap = True

    def read(self, timeout_s: float) -> Frame | None:
        if self._listener is None:
            raise RuntimeError("ClooseTcpSource.read() called before open() or after close()")
        deadline = now_ns() + int(max(timeout_s, 0.0) * 1e9)
        while True:
            waiting_on = [self._listener] if self._conn is None else [self._listener, self._conn]
            remaining = max(deadline - now_ns(), 0) / 1e9
            readable, _, _ = select.select(waiting_on, [], [], remaining)
            if self._listener in readable:
                self._accept()
            if self._conn is not None and (self._conn in readable or self._listener in readable):
                frame = self._receive()
                if frame is not None:
                    return frame
            if now_ns() >= deadline:
                return None

    def _receive(self) -> Frame | None:
        """Read what the socket has (never more than the rest of the current frame)."""
        conn = self._conn
        assert conn is not None
        while True:
            try:
                n = conn.recv_into(self._view[self._filled:], self._frame_bytes - self._filled)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:  # connection reset / aborted
                self._drop_connection(f"failed ({type(exc).__name__}: {exc})")
                return None
            if n == 0:
                self._drop_connection("closed by the scope")
                return None
            self._bytes += n
            self._filled += n
            if self._filled == self._frame_bytes:
                self._filled = 0
                flags = int(FrameFlag.AFTER_GAP) if self._after_gap else 0
                self._after_gap = False
                number = self._frames
                self._frames += 1
                np.copyto(self._frame, self._pixels)
                return Frame(data=self._frame, number=number, t_ready_ns=now_ns(), flags=flags)
