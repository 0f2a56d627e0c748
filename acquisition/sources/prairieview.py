"""Bruker PrairieView's raw data stream turned into frames (docs/SCOPES.md). Not yet run against a real
PrairieView: the assembly follows Bruker's description of the stream and is tested against a twin.

PrairieLink (``-srd True``, then ``ReadRawDataStream``) hands out the digitizer's int16 samples as they
come, in chunks that cut pixels and lines anywhere. A frame is ``height * width * samples_per_pixel``
samples, line after line; each pixel is the mean of its samples minus the 8192 offset (clipped at 0, rounded,
uint16); with a bidirectional (resonant) scan every other line was acquired right to left and is flipped.

Why two parts: :class:`RawFrameAssembler` is pure (samples in, frames out) so the arithmetic is tested
exactly, and the *transport* — anything with ``open``, ``read_chunk(timeout_s)`` and ``close`` — is
pluggable: :class:`TcpSampleTransport` reads raw little-endian int16 samples from a relay on the PrairieView
PC (``scripts/prairielink_relay.py``), :class:`PrairieLinkTransport` calls PrairieLink's COM API directly
(Windows, pywin32). The stream has no frame markers: a transport that loses its link loses the frame
boundary too, so the partial frame is discarded (counted as truncated) and assembly restarts at the next
chunk, which the relay starts at the beginning of an acquisition.
"""

from __future__ import annotations

import collections
import select
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from acquisition.sources.base import Frame, FrameSource
from acquisition.validate import FrameFlag
from rig.core.clock import now_ns

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

WARN_EVERY = 100
_REDIAL_NS = 1_000_000_000


class RawFrameAssembler:
    """Samples -> frames. ``feed`` takes any chunk of int16 samples and returns the frames it completed."""

    def __init__(self, height: int, width: int, samples_per_pixel: int = 1, *, bidirectional: bool = True,
                 offset: int = 8192) -> None:
        if height < 1 or width < 1 or samples_per_pixel < 1:
            raise ValueError(f"prairieview: height, width and samples per pixel must be > 0 (got {height}, {width}, "
                             f"{samples_per_pixel})")
        self.shape = (int(height), int(width))
        self.samples_per_pixel = int(samples_per_pixel)
        self.bidirectional = bidirectional
        self.offset = int(offset)
        self.frame_samples = height * width * samples_per_pixel
        self._buf = np.empty(self.frame_samples, np.int16)
        self._filled = 0

    @property
    def pending_samples(self) -> int:
        """Samples of a frame not yet complete."""
        return self._filled

    def reset(self) -> int:
        """Forget the partial frame (the link it came from broke); returns how many samples were dropped."""
        dropped, self._filled = self._filled, 0
        return dropped

    def feed(self, samples: np.ndarray) -> list[np.ndarray]:
        samples = np.asarray(samples).reshape(-1)
        frames = []
        at = 0
        while at < samples.size:
            take = min(self.frame_samples - self._filled, samples.size - at)
            self._buf[self._filled:self._filled + take] = samples[at:at + take]
            self._filled += take
            at += take
            if self._filled == self.frame_samples:
                frames.append(self._to_frame(self._buf))
                self._filled = 0
        return frames

    def _to_frame(self, raw: np.ndarray) -> np.ndarray:
        height, width = self.shape
        mean = raw.reshape(height, width, self.samples_per_pixel).mean(axis=2, dtype=np.float64) - self.offset
        if self.bidirectional:
            mean[1::2] = mean[1::2, ::-1]
        return np.clip(np.rint(mean), 0, 65535).astype(np.uint16)


class SampleTransport(Protocol):
    """Where samples come from. ``read_chunk`` returns within ``timeout_s`` (an empty array when nothing came)
    and raises ``ConnectionError`` when the link broke (the next call tries to get it back)."""

    def open(self) -> None: ...

    def read_chunk(self, timeout_s: float) -> np.ndarray: ...

    def close(self) -> None: ...


class TcpSampleTransport:
    """Raw little-endian int16 samples from a TCP server (the relay on the PrairieView PC); redials once a second."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, int(port)
        self._sock: socket.socket | None = None
        self._odd = b""  # a sample cut in half by the chunking
        self._next_dial_ns = 0
        self.connected_once = False

    def open(self) -> None:
        """Nothing to do: the relay is dialled from ``read_chunk``, so one not yet started is waited for."""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._odd = b""

    def read_chunk(self, timeout_s: float) -> np.ndarray:
        if self._sock is None:
            if now_ns() < self._next_dial_ns:
                time.sleep(max(min(timeout_s, (self._next_dial_ns - now_ns()) / 1e9), 0.0))  # no select([]) on Windows
                return np.empty(0, np.int16)
            self._next_dial_ns = now_ns() + _REDIAL_NS
            try:
                self._sock = socket.create_connection((self.host, self.port), timeout=max(min(timeout_s, 1.0), 0.01))
            except OSError:
                return np.empty(0, np.int16)  # not up yet: link_state says "waiting"
            self._sock.setblocking(False)
            self.connected_once = True
        readable, _, _ = select.select([self._sock], [], [], max(timeout_s, 0.0))
        if not readable:
            return np.empty(0, np.int16)
        try:
            data = self._sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return np.empty(0, np.int16)
        except OSError as exc:
            self.close()
            raise ConnectionError(f"relay at {self.host}:{self.port} failed ({exc})") from exc
        if not data:
            self.close()
            raise ConnectionError(f"relay at {self.host}:{self.port} closed the connection")
        data = self._odd + data
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        return np.frombuffer(data[:cut], dtype="<i2").astype(np.int16, copy=False)


class PrairieLinkTransport:
    """PrairieLink's COM API on the PrairieView PC (Windows, ``pip install pywin32``). Untested here: written
    from Bruker's PrairieLink documentation (``-srd True`` starts streaming, ``ReadRawDataStream`` returns the
    samples gathered since the last call)."""

    def __init__(self) -> None:
        self._pl: Any = None

    def open(self) -> None:
        try:
            import win32com.client  # noqa: PLC0415 - Windows only, and only this transport needs it
        except ImportError as exc:
            raise OSError("prairieview: transport 'prairielink' needs Windows and pywin32 (pip install pywin32); "
                          "on another PC use transport 'tcp' and the relay") from exc
        self._pl = win32com.client.Dispatch("PrairieLink.Application")
        if not self._pl.Connect():
            raise OSError("prairieview: PrairieLink could not connect to PrairieView (is it running?)")
        self._pl.SendScriptCommands("-srd True 0")

    def read_chunk(self, timeout_s: float) -> np.ndarray:
        try:
            samples, count = self._pl.ReadRawDataStream(0)
        except Exception as exc:  # noqa: BLE001 - COM raises pywintypes.com_error, not an OSError
            raise ConnectionError(f"PrairieLink ReadRawDataStream failed: {exc}") from exc
        if not count:
            time.sleep(max(min(timeout_s, 0.002), 0.0))
            return np.empty(0, np.int16)
        return np.asarray(samples[:count], dtype=np.int16)

    def close(self) -> None:
        if self._pl is not None:
            self._pl.SendScriptCommands("-srd False")
            self._pl.Disconnect()
            self._pl = None


class PrairieViewSource(FrameSource):
    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> PrairieViewSource:
        """The registry's factory: ``[acquisition.prairieview]``."""
        c = cfg.prairieview
        transport: SampleTransport = (PrairieLinkTransport() if c.transport == "prairielink"
                                      else TcpSampleTransport(c.host, c.port))
        assembler = RawFrameAssembler(c.height_px, c.width_px, c.samples_per_pixel, bidirectional=c.bidirectional,
                                      offset=c.offset)
        return cls(assembler, transport, frame_rate_hz=cfg.frame_rate_hz, max_queued_frames=c.max_queued_frames)

    def __init__(self, assembler: RawFrameAssembler, transport: SampleTransport, *, frame_rate_hz: float = 30.0,
                 max_queued_frames: int = 8, stale_after_s: float = 2.0) -> None:
        super().__init__()
        self.assembler, self.transport = assembler, transport
        self._shape = assembler.shape
        self._dtype = np.dtype(np.uint16)
        self._rate = float(frame_rate_hz)
        self._queue: collections.deque[tuple[np.ndarray, int]] = collections.deque()
        self._max_queued = max(int(max_queued_frames), 1)
        self._stale_ns = int(stale_after_s * 1e9)
        self._opened = False
        self._lost = False
        self._had_data = False
        self._after_gap = False
        self._last_frame_ns = 0
        self._number = 0
        self._c = dict.fromkeys(("frames", "bad_frames", "truncated_frames", "frames_dropped_backlog", "link_losses",
                                 "samples", "bad_chunks"), 0)

    def open(self) -> None:
        self.transport.open()
        self._opened = True

    def close(self) -> None:
        self._opened = False
        self.transport.close()

    def link_state(self) -> str:
        if self._lost:
            return "reconnecting"
        return "ok" if self._last_frame_ns and now_ns() - self._last_frame_ns < self._stale_ns else "waiting"

    def stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._c.items()}

    def read(self, timeout_s: float) -> Frame | None:
        if not self._opened:
            raise RuntimeError("PrairieViewSource.read() called before open() or after close()")
        deadline = now_ns() + int(max(timeout_s, 0.0) * 1e9)
        while not self._queue:
            remaining = (deadline - now_ns()) / 1e9
            if remaining <= 0:
                return None
            try:
                chunk = self.transport.read_chunk(remaining)
            except ConnectionError as exc:
                self._link_lost(str(exc))
                continue
            self._take_chunk(chunk)
        pixels, flags = self._queue.popleft()
        number = self._number
        self._number += 1
        self._c["frames"] += 1
        self._last_frame_ns = now_ns()
        return Frame(data=pixels, number=number, t_ready_ns=self._last_frame_ns, flags=flags)

    def _take_chunk(self, chunk: object) -> None:
        try:
            samples = np.asarray(chunk)
        except (TypeError, ValueError) as exc:
            samples = np.empty(0)
            self._c["bad_chunks"] += 1
            self._warn_every("bad_chunk", self._c["bad_chunks"], f"the transport returned {type(chunk).__name__}: "
                                                                 f"{exc}")
        if samples.size and samples.dtype.kind not in "iu":
            self._c["bad_chunks"] += 1
            self._warn_every("bad_chunk", self._c["bad_chunks"], f"samples of type {samples.dtype}, not integers; "
                                                                 "chunk skipped")
            return
        if not samples.size:
            return
        if self._lost:
            self._lost = False
            self.warn("link_restored", "prairieview: samples flow again")
        self._had_data = True
        self._c["samples"] += samples.size
        for frame in self.assembler.feed(samples.astype(np.int16, copy=False)):
            flags = int(FrameFlag.AFTER_GAP) if self._after_gap else 0
            self._after_gap = False
            self._queue.append((frame, flags))
        if len(self._queue) > self._max_queued:
            while len(self._queue) > self._max_queued:
                self._queue.popleft()
                self._c["frames_dropped_backlog"] += 1
                self._warn_every("falling_behind", self._c["frames_dropped_backlog"],
                                 f"more than {self._max_queued} frames waited to be read: the oldest was dropped")
            frame, flags = self._queue[0]
            self._queue[0] = (frame, flags | int(FrameFlag.AFTER_GAP))

    def _link_lost(self, why: str) -> None:
        dropped = self.assembler.reset()
        if dropped:
            self._c["bad_frames"] += 1
            self._c["truncated_frames"] += 1
            self.warn("truncated_frame", f"prairieview: {dropped} samples of a frame discarded (the link broke)")
        self._after_gap = True
        if not self._lost:
            self._c["link_losses"] += 1
            self.warn("link_lost", f"prairieview: {why}; waiting for samples again")
        self._lost = True

    def _warn_every(self, code: str, count: int, message: str) -> None:
        if count == 1 or count % WARN_EVERY == 0:
            self.warn(code, f"prairieview: {message} ({count} so far)")
