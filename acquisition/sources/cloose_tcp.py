"""CLOOSE-compatible raw TCP frames: a scope already set up for the Harnett lab's CLOOSE works unchanged.

Each frame is ``height * width`` unsigned 16-bit pixels in column-major (MATLAB ``reshape(img, [], 1)``) order,
little-endian, with no header, frames back to back. Frame size comes from config only; a wrong one is
diagnosed by :mod:`acquisition.diagnose` from the byte rate and the frames themselves.

Who connects: ``mode = "listen"`` (CLOOSE's MATLAB sender connects to us) or ``mode = "connect"`` (we dial the
scope PC as CLOOSE's GUI does; its Python sender template listens), retrying with backoff and redialling after
a drop. ``handshake_port`` serves CLOOSE's frame-count handshake: a connection there gets the frame count as
one little-endian uint16 and is closed. ``invert`` gives ``65535 - value`` (Scanbox stores data inverted,
CLOOSE complements every frame).

Why a reader thread: the scope connects while the rig starts, seconds before the session runs. Unread, its
writes block (a sender with a write timeout dies) and the frames that do arrive are seconds old. So from the
moment a connection exists a thread owned by this source reads whole frames into a small preallocated ring
(:mod:`acquisition.sources.frame_ring`); until :meth:`ClooseTcpSource.start_keeping` (the session runs) they
are counted (``frames_before_start``) and discarded; frame numbers count from the first frame kept.

A dropped connection is not an error: the gap is recorded (``reconnects``, ``gap_s_total``,
``gap_frames_estimated``, a ``link_restored`` warning, AFTER_GAP on the next frame); a frame cut short is
counted as truncated (bad). A second connection while one is live (data within :data:`STALE_AFTER_S`) is
refused (``replace_connections = true``: it replaces the first, a restarted scope script); one that went silent
is replaced (a rebooted scope PC leaves a dead connection that may never report its end). Listening off
loopback, ``allow`` lists the scope PCs; another address is closed at once. Every connect, refusal and drop is
a warning, so an acquisition event.
"""

from __future__ import annotations

import math
import select
import socket
import struct
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from acquisition.sources.base import Frame, FrameSource
from acquisition.sources.frame_ring import FrameRing
from acquisition.validate import FrameFlag
from rig.core.addresses import check_addresses, is_loopback, normalize_address
from rig.core.clock import now_ns

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

_RCVBUF_BYTES = 8 * 1024 * 1024  # a few frames of slack in the kernel too
#: frames the ring holds at least: one filling, one being read, the rest waiting (~0.25 s at 30 Hz)
RING_SLOTS = 8
#: and at high rates at least this long: 8 slots are 8 ms at 1 kHz, less than one scheduling hiccup, and a
#: full ring drops frames where a bigger one only makes a few decisions late
RING_SECONDS = 0.1


def ring_slots(frame_rate_hz: float) -> int:
    """Slots for ``RING_SECONDS`` of frames at ``frame_rate_hz`` (never fewer than ``RING_SLOTS``)."""
    return max(RING_SLOTS, math.ceil(RING_SECONDS * frame_rate_hz))
#: deliver_early() only for frames at least this big: the reorder after the last byte of a 512x512 frame (512 KiB)
#: is ~0.4 ms, more than the early hand-off adds; at 1 kHz, 64x256 (32 KiB), the hand-off made decisions 0.04-0.07 ms
#: later (p50) and the reorder saved is ~0.02 ms (docs/PERFORMANCE.md, seventh round)
EARLY_MIN_BYTES = 256 * 1024
#: repeated warnings (refusals, failed dials, overwritten frames) go out the first time, then every this many
_WARN_EVERY = 100
#: how often the reader thread looks at its stop flag when nothing arrives (seconds)
_POLL_S = 0.1
#: connect mode: the first redial waits this long, doubling up to _RETRY_MAX_S
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 2.0
#: a live connection silent this long no longer blocks a new one (a scope PC that rebooted leaves a dead
#: connection that may never report its end)
STALE_AFTER_S = 2.0
#: the reader services its other sockets and its stop flag at least every this many frames of a flood
_FRAMES_PER_POLL = 4
MODES = ("listen", "connect")


class ClooseTcpSource(FrameSource):
    byte_stream = True

    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> ClooseTcpSource:
        """The registry's factory: ``[acquisition.cloose_tcp]``."""
        c = cfg.cloose_tcp
        return cls(c.host, c.port, c.height_px, c.width_px, frame_rate_hz=cfg.frame_rate_hz, byte_order=c.byte_order,
                   allow=c.allow, mode=c.mode, handshake_port=c.handshake_port or -1,
                   handshake_frames=c.handshake_frames, invert=c.invert, replace_connections=c.replace_connections)

    def __init__(self, host: str, port: int, height: int, width: int, *, frame_rate_hz: float = 30.0,
                 byte_order: str = "little", allow: Sequence[str] = (), mode: str = "listen",
                 handshake_port: int = -1, handshake_frames: int = 65535, invert: bool = False,
                 replace_connections: bool = False, stale_after_s: float = STALE_AFTER_S,
                 early_min_bytes: int = EARLY_MIN_BYTES) -> None:
        """``allow``: the only peer IP addresses accepted (empty: any that can reach ``host``). ``handshake_port``:
        -1 none, 0 any free port (tests), else CLOOSE's frame-count port (its GUI uses 50000)."""
        super().__init__()
        if height < 1 or width < 1:
            raise ValueError(f"`height_px`/`width_px`: must be > 0 (got {height}x{width})")
        if byte_order not in ("little", "big"):
            raise ValueError("`byte_order`: must be 'little' or 'big'")
        if mode not in MODES:
            raise ValueError(f"`mode`: must be 'listen' or 'connect' (got {mode!r})")
        if not 0 <= handshake_frames <= 65535:
            raise ValueError("`handshake_frames`: must fit a uint16 (0..65535)")
        self._allow = frozenset(check_addresses(allow))
        self.host, self._port, self.mode = host, port, mode
        self._handshake_port = handshake_port
        self._handshake_bytes = struct.pack("<H", handshake_frames)
        self._invert = invert
        self._replace = replace_connections
        self._stale_ns = int(stale_after_s * 1e9)
        self._last_data_ns = 0
        self._shape = (int(height), int(width))
        self._wire_dtype = np.dtype("<u2" if byte_order == "little" else ">u2")
        self._rate = float(frame_rate_hz)
        self._dtype = np.dtype(np.uint16)
        self._frame_bytes = height * width * 2
        self._ring = FrameRing(ring_slots(self._rate), self._frame_bytes)
        # (Ly, Lx) views of each slot's column-major pixels, and each slot's frame in row order (native uint16):
        # one transposing copy (~0.3 ms at 512x512) is cheaper than every later stage walking a transposed view.
        # The reader thread makes it column by column as the bytes arrive, and read() hands the slot's frame over
        # without a copy. A scope on the same PC sends a frame in one burst, so the whole reordering follows the
        # last byte: with deliver_early() the frame is handed over first, registered and extracted from the
        # column-major view.
        self._pixels = [np.frombuffer(b, dtype=self._wire_dtype).reshape(width, height).T for b in self._ring.buffers]
        self._rows = [np.empty((height, width), np.uint16) for _ in self._ring.buffers]
        self._col_bytes = height * 2
        self._width = int(width)
        self._cols_done = 0  # columns of the slot being filled already in row order
        # deliver_early(): a frame is committed at its last byte and its last columns reordered after, while the
        # loop registers its column-major pixels; each slot's event is set once its row order is complete
        self._early = False
        self._early_min_bytes = int(early_min_bytes)
        self._data_ready = [threading.Event() for _ in self._ring.buffers]
        for event in self._data_ready:
            event.set()
        self._held = -1  # the slot whose frame the last read() returned: released by the next read()
        self._warn_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._listener: socket.socket | None = None
        self._handshake: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._peer = ""
        self._keeping = False
        self._filled = 0
        self._had_connection = False
        self._t_drop_ns = 0
        self._after_gap = False
        self._next_dial_ns = 0
        self._retry_s = _RETRY_MIN_S
        self._dial_failures = 0
        self._counts = dict.fromkeys(("frames", "bad_frames", "truncated_frames", "connections", "reconnects",
                                      "gap_frames_estimated", "bytes", "refused_connections", "frames_before_start",
                                      "connect_failures", "handshakes"), 0)
        self._gap_ns_total = 0

    # ------------------------------------------------------------------ FrameSource
    @property
    def port(self) -> int:
        """The port listened on or dialled (listening on 0: the free port the OS chose)."""
        if self._listener is not None:
            return int(self._listener.getsockname()[1])
        return self._port

    @property
    def handshake_port(self) -> int:
        """The port the frame-count handshake is served on (-1: none)."""
        if self._handshake is not None:
            return int(self._handshake.getsockname()[1])
        return self._handshake_port

    def open(self) -> None:
        """Listen (or get ready to dial) and start the reader thread; errors here are configuration errors."""
        if self.mode == "listen":
            self._listener = self._server(self.host, self._port, "listen")
        if self._handshake_port >= 0:
            host = self.host if self.mode == "listen" else ("127.0.0.1" if is_loopback(self.host) else "0.0.0.0")
            try:
                self._handshake = self._server(host, self._handshake_port, "serve the frame-count handshake")
            except OSError:
                self.close()  # the data listener must not outlive a failed open
                raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cloose-tcp-reader", daemon=True)
        self._thread.start()

    def deliver_early(self) -> bool:
        """Frames are handed over at their last byte, before the last columns' reordering (~0.4 ms of a 512x512
        frame that came in one burst), with the column-major pixels in ``Frame.wire``. Not for inverted or
        big-endian frames (their bytes are not the pixel values yet), nor below ``early_min_bytes``
        (:data:`EARLY_MIN_BYTES`: the reorder saved is then shorter than what the hand-off adds)."""
        self._early = (not self._invert and self._wire_dtype == np.dtype(np.uint16)
                       and self._frame_bytes >= self._early_min_bytes)
        return self._early

    def start_keeping(self) -> None:
        """The session runs: frames from now on are kept and numbered from 0 (those before were drained)."""
        self._after_gap = False
        self._keeping = True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._drop_connection("closed by the rig", count_gap=False)
        for sock in (self._listener, self._handshake):
            if sock is not None:
                sock.close()
        self._listener = self._handshake = None

    def link_state(self) -> str:
        if self._conn is not None:
            return "ok"
        return "reconnecting" if self._had_connection else "waiting"

    def stats(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self._counts.items()}
        out["gap_s_total"] = self._gap_ns_total / 1e9
        out["frames_overwritten"] = float(self._ring.overwritten)
        return out

    def warn(self, code: str, message: str) -> None:
        """Thread-safe: the reader thread warns too."""
        with self._warn_lock:
            super().warn(code, message)

    def pop_warnings(self) -> list[tuple[str, str]]:
        with self._warn_lock:
            return super().pop_warnings()

    def read(self, timeout_s: float) -> Frame | None:
        if self._thread is None:
            raise RuntimeError("ClooseTcpSource.read() called before open() or after close()")
        if self._failure is not None:
            raise RuntimeError(f"cloose_tcp: the reader thread failed: {self._failure!r}") from self._failure
        if self._held >= 0:  # the previous frame's slot: valid until this call, as FrameSource promises
            self._ring.release(self._held)
            self._held = -1
        item = self._ring.take(timeout_s)
        if item is None:
            return None
        slot, number, t_ready_ns, flags = item
        self._held = slot
        if self._early:
            return Frame(data=self._rows[slot], number=number, t_ready_ns=t_ready_ns, flags=flags,
                         wire=self._pixels[slot], data_ready=self._data_ready[slot])
        return Frame(data=self._rows[slot], number=number, t_ready_ns=t_ready_ns, flags=flags)

    # ------------------------------------------------------------------ the reader thread
    def _server(self, host: str, port: int, what: str) -> socket.socket:
        try:
            server = socket.create_server((host, port), backlog=4)
        except OSError as exc:
            raise OSError(f"cloose_tcp: cannot {what} on {host}:{port}: {exc}") from exc
        server.setblocking(False)
        return server

    def _run(self) -> None:
        """Read until closed. An unexpected error is kept and raised by the next :meth:`read`, never lost."""
        try:
            while not self._stop.is_set():
                self._poll(_POLL_S)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread, which raises it
            self._failure = exc
            self.warn("reader_failed", f"cloose_tcp: the frame reader stopped: {type(exc).__name__}: {exc}")

    def _poll(self, timeout_s: float) -> None:
        if self.mode == "connect" and self._conn is None and now_ns() >= self._next_dial_ns:
            self._dial()
        waiting = [s for s in (self._listener, self._handshake, self._conn) if s is not None]
        if not waiting:  # connect mode between dials, no handshake: nothing to select on (Windows refuses that)
            self._stop.wait(min(timeout_s, max(self._next_dial_ns - now_ns(), 0) / 1e9))
            return
        if self.mode == "connect" and self._conn is None:
            timeout_s = min(timeout_s, max(self._next_dial_ns - now_ns(), 0) / 1e9)
        readable, _, _ = select.select(waiting, [], [], timeout_s)
        if self._handshake is not None and self._handshake in readable:
            self._serve_handshake()
        if self._listener is not None and self._listener in readable:
            self._accept()
        if self._conn is not None and self._conn in readable:
            self._receive()

    def _allowed(self, address: str) -> bool:
        return not self._allow or normalize_address(address) in self._allow

    def _refuse(self, conn: socket.socket, why: str) -> None:
        conn.close()
        self._counts["refused_connections"] += 1
        n = self._counts["refused_connections"]
        if n == 1 or n % _WARN_EVERY == 0:
            self.warn("connection_refused", f"cloose_tcp: {why} ({n} refused so far)")

    def _serve_handshake(self) -> None:
        """CLOOSE's handshake: the scope side learns the number of frames to acquire, one uint16."""
        assert self._handshake is not None
        try:
            conn, addr = self._handshake.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not self._allowed(str(addr[0])):
            self._refuse(conn, f"handshake connection from {addr[0]} refused: only {', '.join(sorted(self._allow))} "
                               f"may connect ([acquisition.cloose_tcp] allow)")
            return
        try:
            conn.settimeout(1.0)
            conn.sendall(self._handshake_bytes)
            self._counts["handshakes"] += 1
            self.warn("handshake_served", f"cloose_tcp: frame count {struct.unpack('<H', self._handshake_bytes)[0]} "
                                          f"sent to {addr[0]}:{addr[1]} (handshake port {self.handshake_port})")
        except OSError as exc:
            self.warn("handshake_failed", f"cloose_tcp: the frame-count handshake with {addr[0]} failed: {exc}")
        finally:
            conn.close()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not self._allowed(str(addr[0])):  # before anything else: a stranger must not replace the scope's link
            self._refuse(conn, f"connection from {addr[0]} refused: only {', '.join(sorted(self._allow))} may send "
                               f"frames ([acquisition.cloose_tcp] allow)")
            return
        if self._conn is not None:
            silent_ns = now_ns() - self._last_data_ns
            if not self._replace and silent_ns < self._stale_ns:
                self._refuse(conn, f"second connection from {addr[0]}:{addr[1]} refused: {self._peer} is streaming "
                                   f"(replace_connections = true lets a new connection replace it)")
                return
            why = "replaced by" if self._replace else f"silent for {silent_ns / 1e9:.1f} s, replaced by"
            self._drop_connection(f"{why} a new connection from {addr[0]}:{addr[1]}", count_gap=False)
        self._connected(conn, f"{addr[0]}:{addr[1]}", "scope connected from")

    def _dial(self) -> None:
        try:
            conn = socket.create_connection((self.host, self._port), timeout=1.0)
        except OSError as exc:
            self._counts["connect_failures"] += 1
            self._dial_failures += 1
            if self._dial_failures == 1 or self._dial_failures % _WARN_EVERY == 0:
                self.warn("connect_failed", f"cloose_tcp: cannot connect to the scope at {self.host}:{self._port} "
                                            f"({exc}); retrying every {_RETRY_MAX_S:g} s at most "
                                            f"({self._dial_failures} attempt(s) failed)")
            self._next_dial_ns = now_ns() + int(self._retry_s * 1e9)
            self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)
            return
        self._dial_failures = 0
        self._retry_s = _RETRY_MIN_S
        self._connected(conn, f"{self.host}:{self._port}", "connected to the scope at")

    def _connected(self, conn: socket.socket, peer: str, how: str) -> None:
        conn.setblocking(False)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF_BYTES)
        self._conn, self._peer = conn, peer
        self._last_data_ns = now_ns()
        self._counts["connections"] += 1
        if not self._had_connection:
            self.warn("link_connected", f"cloose_tcp: {how} {peer}")
        else:
            self._counts["reconnects"] += 1
            gap_ns = now_ns() - self._t_drop_ns if self._t_drop_ns else 0
            missed = round(gap_ns / 1e9 * self._rate)
            self._gap_ns_total += gap_ns
            self._counts["gap_frames_estimated"] += missed
            self.warn("link_restored", f"cloose_tcp: {how} {peer} after {gap_ns / 1e9:.2f} s "
                                       f"(~{missed} frames at {self._rate:g} Hz lost)")
            self._t_drop_ns = 0
            self._after_gap = self._keeping
        self._had_connection = True

    def _drop_connection(self, why: str, *, count_gap: bool = True) -> None:
        if self._conn is None:
            return
        if self._filled:
            self._counts["bad_frames"] += 1
            self._counts["truncated_frames"] += 1
            self.warn("truncated_frame", f"cloose_tcp: connection with {self._peer} {why} after {self._filled} of "
                                         f"{self._frame_bytes} bytes of a frame; frame discarded")
            self._filled = 0
        self._cols_done = 0
        self._conn.close()
        self._conn = None
        if count_gap:
            self._t_drop_ns = now_ns()
            again = (f"waiting for the scope to reconnect on port {self.port}" if self.mode == "listen"
                     else f"redialling {self.host}:{self._port}")
            self.warn("link_lost", f"cloose_tcp: connection with {self._peer} {why}; {again}")
            self._next_dial_ns = 0
        self._after_gap = self._keeping

    def _receive(self) -> None:
        """Read everything the socket has now, frame by frame, into the ring."""
        conn = self._conn
        assert conn is not None
        ring = self._ring
        budget = _FRAMES_PER_POLL * self._frame_bytes  # a flood must not starve accept, handshake and close()
        while budget > 0:
            try:
                n = conn.recv_into(ring.views[ring.filling][self._filled:], self._frame_bytes - self._filled)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # connection reset / aborted
                self._drop_connection(f"failed ({type(exc).__name__}: {exc})")
                return
            if n == 0:
                self._drop_connection("closed by the scope")
                return
            t_ns = now_ns()
            self._counts["bytes"] += n
            self._last_data_ns = t_ns
            budget -= n
            self._filled += n
            if self._filled < self._frame_bytes:
                self._reorder(ring.filling, self._filled // self._col_bytes)
                continue
            self._filled = 0
            slot = ring.filling
            if self._early and self._keeping:  # handed over now, its row order finished beside the pipeline
                self._data_ready[slot].clear()
                self._complete(t_ns)
                self._reorder(slot, self._width)
                self._data_ready[slot].set()
            else:
                self._reorder(slot, self._width)
                self._complete(t_ns)  # ready when the last byte was in, not after the last columns' reordering
            self._cols_done = 0

    def _reorder(self, slot: int, cols: int) -> None:
        """Columns up to ``cols`` of ``slot`` into row order (and inverted if asked), those not done yet."""
        c0 = self._cols_done
        if cols <= c0:
            return
        rows = self._rows[slot][:, c0:cols]
        np.copyto(rows, self._pixels[slot][:, c0:cols])
        if self._invert:
            np.invert(rows, out=rows)  # 65535 - value for uint16, in place
        self._cols_done = cols

    def _complete(self, t_ready_ns: int) -> None:
        if not self._keeping:
            self._counts["frames_before_start"] += 1  # drained: the slot is simply filled again
            return
        flags = int(FrameFlag.AFTER_GAP) if self._after_gap else 0
        self._after_gap = False
        number = self._counts["frames"]
        self._counts["frames"] += 1
        if not self._ring.commit(number, t_ready_ns, flags):
            n = self._ring.overwritten
            if n == 1 or n % _WARN_EVERY == 0:
                self.warn("falling_behind", f"cloose_tcp: frames arrive faster than they are processed: the oldest "
                                            f"waiting frame was dropped ({n} so far; a gap in the frame numbers)")
