"""Frames from ScanImage over TCP, as the ``bciRigStream`` user function sends them (docs/SCOPES.md).

MATLAB has no ZeroMQ, but its ``tcpclient`` can write bytes: the user function, on ScanImage's
``frameAcquired`` event, sends each frame in the framed format of :mod:`acquisition.sources.framed_tcp`
(magic, version, frame number, time stamp, size, pixel type, then row-major pixels). By default we listen on
127.0.0.1 and MATLAB connects (ScanImage on this PC); ``connect`` reverses it (MATLAB's ``tcpserver``).

Nothing on the wire raises: garbage is skipped up to the next magic (counted, warned), a frame of another
size than the configured one is delivered flagged WRONG_SHAPE, a dropped connection is waited for (listening)
or redialled once a second (connecting) and the frame it cut short counted as truncated; frame numbers are
the scope's, kept increasing (a restart continues after the last one delivered, a gap is counted as missed
and flags AFTER_GAP). Frames arriving faster than they are read are counted (``backlog_events``) and warned.

Several planes (ScanImage fast-z): a version-2 header carries the frame's plane and the planes per volume, and
its frame number is the volume number (bciRigStream.m computes both from ScanImage's slice count and flyback
frames, and sends no flyback frame). Every plane is delivered with its plane index, numbered by volume; a
plane out of range is counted (the acquisition warns about it), a planes count that is 0, absurd or not the
configured one counted and warned (:class:`~acquisition.sources.plane_index.PlaneCheck`): the frame is
delivered either way.
"""

from __future__ import annotations

import math
import select
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from acquisition.sources.base import Frame, FrameSource
from acquisition.sources.framed_tcp import FrameHeader, FrameParser
from acquisition.sources.plane_index import PlaneCheck, VolumeNumbers
from acquisition.validate import FrameFlag
from rig.core.addresses import check_addresses, normalize_address
from rig.core.clock import now_ns

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

_RECV_BYTES = 1 << 20
_REDIAL_NS = 1_000_000_000
#: more than this many whole frames waiting after a read: we are falling behind the scope
BACKLOG_FRAMES = 4
WARN_EVERY = 100
#: a forward jump in frame numbers beyond this many seconds of frames is a broken counter, not lost frames
MAX_JUMP_S = 3600.0


class ScanImageTcpSource(FrameSource):
    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> ScanImageTcpSource:
        """The registry's factory: ``[acquisition.scanimage_tcp]``."""
        c = cfg.scanimage_tcp
        expected = (c.height_px, c.width_px) if c.height_px else None
        return cls(c.host, c.port, connect=c.connect, expected_shape=expected, channel=c.channel,
                   frame_rate_hz=cfg.frame_rate_hz, stale_after_s=c.stale_after_s, allow=c.allow,
                   n_planes=cfg.n_planes)

    def __init__(self, host: str, port: int, *, connect: bool = False, expected_shape: tuple[int, int] | None = None,
                 channel: int = -1, frame_rate_hz: float = 30.0, stale_after_s: float = 2.0,
                 allow: Sequence[str] = (), n_planes: int = 1) -> None:
        """``frame_rate_hz``: one plane's (the volume rate); ``n_planes``: planes per volume the rig records."""
        super().__init__()
        self._n_planes = int(n_planes)
        self._planes = PlaneCheck("scanimage_tcp", self._n_planes, self.warn)
        self._volumes = VolumeNumbers()
        self.host, self._port, self._connect = host, int(port), connect
        self._allow = frozenset(check_addresses(allow))
        self._expected = expected_shape
        self._shape = expected_shape or (0, 0)
        self._dtype = np.dtype(np.int16)
        self._channel = channel
        self._rate = float(frame_rate_hz)
        self._stale_ns = int(stale_after_s * 1e9)
        self._max_jump = max(1, int(MAX_JUMP_S * max(self._rate, 1.0)))
        self._parser = FrameParser()
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._opened = False
        self._peer = ""
        self._next_dial_ns = 0
        self._had_connection = False
        self._after_gap = False
        self._last_frame_ns = 0
        self._last_number = -1  # the scope's number of the last frame delivered
        self._delivered = -1
        self._offset = 0  # added to the scope's numbers so ours keep increasing across restarts
        self._reported = {"resyncs": 0, "bad_headers": 0, "dial": 0}
        self._c = dict.fromkeys(("frames", "bad_frames", "truncated_frames", "frames_missed", "wrong_shape_frames",
                                 "skipped_other_channel", "stream_restarts", "frame_number_jumps", "connections",
                                 "reconnects", "refused_connections", "backlog_events", "bytes"), 0)

    @property
    def port(self) -> int:
        """The port listened on (resolves a configured 0)."""
        return int(self._listener.getsockname()[1]) if self._listener is not None else self._port

    def open(self) -> None:
        self._opened = True
        if self._connect:
            return  # dialled from read(), so a scope not yet up is waited for, not an error
        try:
            self._listener = socket.create_server((self.host, self._port), backlog=2)
        except OSError as exc:
            raise OSError(f"scanimage_tcp: cannot listen on {self.host}:{self._port}: {exc}") from exc
        self._listener.setblocking(False)

    def close(self) -> None:
        self._opened = False
        self._drop("closed by the rig", lost=False)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def link_state(self) -> str:
        if self._conn is None:
            return "reconnecting" if self._had_connection else "waiting"
        return "ok" if self._last_frame_ns and now_ns() - self._last_frame_ns < self._stale_ns else "waiting"

    def stats(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self._c.items()}
        out.update(garbage_bytes=float(self._parser.garbage_bytes), resyncs=float(self._parser.resyncs),
                   bad_headers=float(self._parser.bad_headers))
        out.update(self._planes.stats())
        return out

    # ------------------------------------------------------------------ connection handling
    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._allow and normalize_address(str(addr[0])) not in self._allow:
            conn.close()
            self._c["refused_connections"] += 1
            self._warn_every("connection_refused", self._c["refused_connections"],
                             f"connection from {addr[0]} refused: only {', '.join(sorted(self._allow))} may send "
                             "frames ([acquisition.scanimage_tcp] allow)")
            return
        if self._conn is not None:
            self._drop(f"replaced by a new connection from {addr[0]}", lost=False)
        self._adopt(conn, f"{addr[0]}:{addr[1]}")

    def _dial(self, timeout_s: float) -> None:
        self._next_dial_ns = now_ns() + _REDIAL_NS
        try:
            conn = socket.create_connection((self.host, self._port), timeout=max(min(timeout_s, 1.0), 0.01))
        except OSError as exc:
            if not self._had_connection and self._c["connections"] == 0 and not self._reported.get("dial"):
                self._reported["dial"] = 1
                self.warn("connect_failed", f"scanimage_tcp: cannot connect to {self.host}:{self._port} ({exc}); "
                                            "is bciRigStream serving there? Retrying every second")
            return
        self._adopt(conn, f"{self.host}:{self._port}")

    def _adopt(self, conn: socket.socket, peer: str) -> None:
        conn.setblocking(False)
        self._conn, self._peer = conn, peer
        self._c["connections"] += 1
        if self._had_connection:
            self._c["reconnects"] += 1
            self.warn("link_restored", f"scanimage_tcp: scope connected again ({peer})")
            self._after_gap = True
        self._had_connection = True

    def _drop(self, why: str, *, lost: bool = True) -> None:
        if self._conn is None:
            return
        cut = self._parser.discard()
        if cut:
            self._c["bad_frames"] += 1
            self._c["truncated_frames"] += 1
            self.warn("truncated_frame", f"scanimage_tcp: connection {why} with {cut} bytes of a frame pending; "
                                         "discarded")
        self._conn.close()
        self._conn = None
        self._after_gap = True
        if lost:
            self.warn("link_lost", f"scanimage_tcp: connection from {self._peer} {why}; waiting for the scope")

    # ------------------------------------------------------------------ reading
    def read(self, timeout_s: float) -> Frame | None:
        if not self._opened:
            raise RuntimeError("ScanImageTcpSource.read() called before open() or after close()")
        deadline = now_ns() + int(max(timeout_s, 0.0) * 1e9)
        while True:
            frame = self._next_parsed()
            if frame is not None:
                return frame
            remaining = max(deadline - now_ns(), 0) / 1e9
            if self._connect:
                if self._conn is None and now_ns() >= self._next_dial_ns:
                    self._dial(remaining)
                waiting_on: list[socket.socket] = [] if self._conn is None else [self._conn]
            else:
                assert self._listener is not None
                waiting_on = [self._listener] if self._conn is None else [self._listener, self._conn]
            remaining = max(deadline - now_ns(), 0) / 1e9
            if waiting_on:
                readable, _, _ = select.select(waiting_on, [], [], remaining)
            else:
                readable = []
                time.sleep(min(remaining, max(self._next_dial_ns - now_ns(), 0) / 1e9))  # select([]) fails on Windows
            if self._listener is not None and self._listener in readable:
                self._accept()
            if self._conn is not None and (self._conn in readable or self._listener in readable):
                self._receive()  # a just-accepted connection may already hold a frame
            if now_ns() >= deadline:
                return self._next_parsed()

    def _receive(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            data = conn.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(f"failed ({type(exc).__name__}: {exc})")
            return
        if not data:
            self._drop("closed by the scope")
            return
        self._c["bytes"] += len(data)
        self._parser.feed(data)

    def _next_parsed(self) -> Frame | None:
        """The next whole frame already received and wanted (other channels are skipped), or None."""
        while True:
            parsed = self._parser.next_frame()
            self._report_parser()
            if parsed is None:
                return None
            header, payload = parsed
            if self._channel >= 0 and header.channel != self._channel:
                self._c["skipped_other_channel"] += 1
                continue
            if self._parser.buffered > BACKLOG_FRAMES * (header.header_bytes + header.payload_bytes):
                self._c["backlog_events"] += 1
                self._warn_every("falling_behind", self._c["backlog_events"],
                                 f"more than {BACKLOG_FRAMES} frames wait to be read: the rig is slower than "
                                 "the scope")
            return self._frame(header, payload)

    def _report_parser(self) -> None:
        p = self._parser
        if p.resyncs > self._reported["resyncs"]:
            self._warn_every("resynchronised", p.resyncs,
                             f"skipped bytes that were not frames ({p.garbage_bytes} in all; sender restarted "
                             "mid-frame, or not bciRigStream?)")
            self._reported["resyncs"] = p.resyncs
        if p.bad_headers > self._reported["bad_headers"]:
            self._c["bad_frames"] += p.bad_headers - self._reported["bad_headers"]
            self._warn_every("bad_header", p.bad_headers, f"a frame header with {p.last_problem}; skipped")
            self._reported["bad_headers"] = p.bad_headers

    def _frame(self, header: FrameHeader, payload: bytes) -> Frame:
        t_ready = now_ns()
        pixels = np.frombuffer(payload, dtype=header.dtype).reshape(header.height, header.width)
        if not pixels.dtype.isnative:
            pixels = pixels.astype(pixels.dtype.newbyteorder("="))
        flags = 0
        if self._expected is not None and pixels.shape != self._expected:
            flags |= FrameFlag.WRONG_SHAPE
            self._c["wrong_shape_frames"] += 1
            self._warn_every("wrong_shape", self._c["wrong_shape_frames"],
                             f"frame {header.number}: {header.height}x{header.width} pixels, the configured size is "
                             f"{self._expected[0]}x{self._expected[1]} (flagged WRONG_SHAPE)")
        self._planes.check(f"frame {header.number}", header.plane, header.planes)
        self._planes.check_shape(header.plane, (header.height, header.width))
        if self._volumes.counts_frames(header.number, header.plane):
            self._planes.frame_counter(f"frame {header.number}", header.plane)
        if self._volumes.continues(header.number, header.plane):  # another plane of the same volume
            number, number_flags = self._volumes.number, 0
        else:
            number, number_flags = self._number(header.number)
        self._volumes.update(header.number, header.plane, number)
        if self._after_gap:
            number_flags |= int(FrameFlag.AFTER_GAP)
            self._after_gap = False
        self._dtype = pixels.dtype
        self._c["frames"] += 1
        self._last_frame_ns = t_ready
        t = header.t if math.isfinite(header.t) else math.nan
        return Frame(data=pixels, number=number, t_ready_ns=t_ready, scope_time_s=t, flags=int(flags) | number_flags,
                     plane=header.plane)

    def _number(self, published: int) -> tuple[int, int]:
        """Ours: the scope's number while it increases sensibly; after a restart or a broken jump, continued."""
        last = self._last_number
        self._last_number = published
        if self._delivered < 0:
            self._offset = 0 if published <= 2**53 - 1 else -published
        elif published <= last:
            self._c["stream_restarts"] += 1
            self._offset = self._delivered + 1 - published
            self.warn("stream_restarted", f"scanimage_tcp: frame number went back from {last} to {published} "
                                          f"(acquisition restarted?); frames continue from {self._delivered + 1}")
            self._delivered += 1
            return self._delivered, int(FrameFlag.AFTER_GAP)
        elif published - last > self._max_jump:
            self._c["frame_number_jumps"] += 1
            self._offset = self._delivered + 1 - published
            self._warn_every("frame_number_jump", self._c["frame_number_jumps"],
                             f"frame number jumped from {last} to {published}; numbered {self._delivered + 1}")
        number = published + self._offset
        flags = 0
        if self._delivered >= 0 and number > self._delivered + 1:
            self._c["frames_missed"] += number - self._delivered - 1
            flags = int(FrameFlag.AFTER_GAP)
        self._delivered = number
        return number, flags

    def _warn_every(self, code: str, count: int, message: str) -> None:
        if count == 1 or count % WARN_EVERY == 0:
            self.warn(code, f"scanimage_tcp: {message} ({count} so far)")
