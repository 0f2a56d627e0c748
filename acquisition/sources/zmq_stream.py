"""Our framed frame stream over ZeroMQ (wire format: docs/FRAME_STREAM.md; reference publisher:
scripts/publish_frames.py).

Each frame is one multipart message ``[topic, header, pixels]``: the header is a small JSON object (frame
number, scope timestamp, shape, dtype, pixel order, plane, channel), the pixels raw bytes. The scope side
publishes (PUB, usually binding); we subscribe. Malformed messages are counted as bad frames and described
in warnings, never raised. Pixels are handed on in native byte order (a big-endian frame is swapped into a
reused buffer: the pipeline's compiled kernels read native numbers only).

The numbers we deliver follow the decoder's rules whatever the publisher sends: they start at 0 or later,
always increase, stay below 2**53 and never jump by more than ``max_jump_s`` of frames. Within those rules
they are the publisher's own: gaps are counted as missed frames and the next frame carries AFTER_GAP. A
number that goes back means the publisher restarted: a warning is recorded, and the delivered numbers continue
after the last one delivered (offset by the new run's own number); the first frame after the restart carries
AFTER_GAP. A number that is not an integer in 0 .. 2**53-1 (negative, 2**64-1 from an unsigned -1...) or that
jumps further ahead than ``max_jump_s`` is counted and warned, and the frame is numbered as the next one; a
jump the following frame confirms (it continues from the new number) is taken as the publisher's new numbering.

Several planes: the header's ``plane`` and ``planes`` (planes per volume) say where a frame belongs, and its
number is the volume's (``volume`` when the header has it, else ``frame``), the same for every plane of one
volume; the rules above apply to volume numbers. With ``plane`` = -1 every plane is delivered with its index;
a plane out of range is counted (the acquisition warns about it), a ``planes`` of 0, an absurd or an
unconfigured count counted and warned; the frame is delivered either way (:mod:`acquisition.sources.plane_index`).
``plane`` = K delivers plane K alone, as plane 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from acquisition.sources.base import Frame, FrameSource
from acquisition.sources.plane_index import PlaneCheck, VolumeNumbers
from acquisition.validate import FrameFlag
from rig.core.addresses import check_addresses
from rig.core.auth import ZapHandler, ZapPolicy
from rig.core.clock import now_ns

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

PROTOCOL_VERSION = 1
#: pixel types a publisher may send (little-endian unless the header says ``"byteorder": "big"``)
STREAM_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_RCVHWM = 64  # frames queued before ZeroMQ drops (a 512x512 uint16 frame is 0.5 MB)
#: the largest frame number we deliver (exact in a float64 and in JSON; 300,000 years at 1 kHz)
MAX_FRAME_NUMBER = 2**53 - 1
#: a repeated warning (every frame with a bad number...) goes out the first time, then every this many times
WARN_EVERY = 100
#: The ZAP domain of a bound stream socket with an allow-list (checked on the peer's IP address alone).
SCOPE_DOMAIN = "scope"


class FrameHeader(msgspec.Struct, kw_only=True):
    """The JSON header of one stream frame. Unknown keys are allowed (publishers may add their own)."""

    v: int
    frame: int
    shape: list[int]
    dtype: str
    t: float = math.nan
    order: str = "C"
    byteorder: str = "little"
    plane: int = 0
    channel: int = 0
    planes: int | None = None  # planes per volume (absent: not said)
    volume: int | None = None  # the volume number (absent: ``frame`` is it)


class ZmqStreamSource(FrameSource):
    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> ZmqStreamSource:
        """The registry's factory: ``[acquisition.zmq_stream]`` (a 0 x 0 size: not configured, so only the ROI
        set's size, which the acquisition process checks, applies; never the size of the first frame)."""
        z = cfg.zmq_stream
        expected = (z.height_px, z.width_px) if z.height_px else None
        return cls(z.endpoint, bind=z.bind, topic=z.topic, plane=z.plane, channel=z.channel,
                   frame_rate_hz=cfg.frame_rate_hz, expected_shape=expected, stale_after_s=z.stale_after_s,
                   allow=z.allow, n_planes=cfg.n_planes if z.plane < 0 else 1)

    def __init__(self, endpoint: str, *, bind: bool = False, topic: str = "frame", plane: int = -1,
                 channel: int = -1, frame_rate_hz: float = 30.0, expected_shape: tuple[int, int] | None = None,
                 stale_after_s: float = 2.0, max_jump_s: float = 3600.0, context: zmq.Context | None = None,
                 allow: Sequence[str] = (), n_planes: int = 1) -> None:
        """``expected_shape``: the configured frame size (None: not configured; the acquisition checks frames
        against its ROI set either way). ``max_jump_s``: the largest forward jump in the publisher's frame
        numbers taken as frames lost (beyond it the counter is broken; the decoder refuses a day). ``allow``:
        with ``bind``, the IP addresses of the only publishers let in (a ZAP handler on ``context`` refuses the
        rest at the handshake; they are counted and warned about). ``n_planes``: planes per volume delivered
        (``plane`` >= 0 selects one: then 1); ``frame_rate_hz`` is one plane's (the volume rate)."""
        super().__init__()
        self._n_planes = 1 if plane >= 0 else int(n_planes)
        self._planes = PlaneCheck("zmq_stream", self._n_planes, self.warn, one_selected=plane >= 0)
        self._volumes = VolumeNumbers()
        self.endpoint = endpoint
        self._bind = bind
        self._allow = frozenset(check_addresses(allow)) if bind else frozenset()
        self._zap: ZapHandler | None = None
        self._refused = 0
        self._refused_pending = 0  # refused handshakes whose disconnect is not a lost publisher
        self._topic = topic.encode()
        self._plane, self._channel = plane, channel
        self._rate = float(frame_rate_hz)
        self._expected_shape = expected_shape
        self._stale_ns = int(stale_after_s * 1e9)
        self._ctx = context or zmq.Context.instance()
        self._decoder = msgspec.json.Decoder(FrameHeader)
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._held: list[Any] = []  # the message whose pixels the last Frame views (kept alive until next read)
        self._shape: tuple[int, int] = expected_shape or (0, 0)
        self._dtype = np.dtype(np.uint16)
        self._native: np.ndarray | None = None  # reused buffer for frames that arrive big-endian
        self._max_jump = max(1, int(max_jump_s * max(self._rate, 1.0)))
        self._last_number = -1  # the publisher's own number of the last frame delivered (-1: none usable yet)
        self._last_delivered = -1  # our number of the last frame delivered
        #: added to the publisher's numbers so ours keep increasing across publisher restarts
        self._number_offset = 0
        self._suspect_jump: int | None = None  # a number far ahead, delivered as the next frame: confirmed?
        self._last_frame_ns = 0
        self._peer_connected = False
        self._disconnected = False
        self._frames = 0
        self._bad = 0
        self._missed = 0
        self._skipped = 0
        self._restarts = 0
        self._bad_numbers = 0
        self._jumps = 0
        self._wrong_shape = 0
        self._connects = 0
        self._disconnects = 0

    def open(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, _RCVHWM)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self._topic)
        events = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED
        if self._allow:  # a publisher counts as connected once the ZAP handler let it in
            sock.setsockopt(zmq.ZAP_DOMAIN, SCOPE_DOMAIN.encode())
            events |= zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        self._monitor = sock.get_monitor_socket(events)
        try:
            if self._allow:
                self._zap = ZapHandler(self._ctx, {SCOPE_DOMAIN: ZapPolicy(addresses=self._allow)})
            if self._bind:
                sock.bind(self.endpoint)
            else:
                sock.connect(self.endpoint)
        except (zmq.ZMQError, OSError) as exc:
            sock.disable_monitor()
            sock.close(0)
            self._monitor.close(0)
            self._monitor = None
            if self._zap is not None:
                self._zap.stop()
                self._zap = None
            raise OSError(f"zmq_stream: cannot {'bind' if self._bind else 'connect'} {self.endpoint}: {exc}") from exc
        self._sock = sock
        self._poller.register(sock, zmq.POLLIN)

    def close(self) -> None:
        self._held = []
        if self._sock is not None:
            self._poller.unregister(self._sock)
            self._sock.disable_monitor()
            self._sock.close(0)
            self._sock = None
        if self._monitor is not None:
            self._monitor.close(0)
            self._monitor = None
        if self._zap is not None:
            self._zap.stop()
            self._zap = None

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (resolves ``tcp://*:0``)."""
        assert self._sock is not None
        return self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def link_state(self) -> str:
        if self._disconnected:
            return "reconnecting"
        if self._last_frame_ns and now_ns() - self._last_frame_ns < self._stale_ns:
            return "ok"
        return "waiting"

    def stats(self) -> dict[str, float]:
        return {"frames": float(self._frames), "bad_frames": float(self._bad),
                "frames_missed": float(self._missed), "skipped_other_plane_or_channel": float(self._skipped),
                "publisher_restarts": float(self._restarts), "bad_frame_numbers": float(self._bad_numbers),
                "frame_number_jumps": float(self._jumps), "wrong_shape_frames": float(self._wrong_shape),
                "connects": float(self._connects),
                "disconnects": float(self._disconnects),
                "reconnects": float(max(self._connects - 1, 0)),
                "refused_connections": float(self._refused), **self._planes.stats()}

    def _poll_monitor(self) -> None:
        mon = self._monitor
        while mon is not None and mon.poll(0):
            event = recv_monitor_message(mon)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._refuse()
                continue
            if event == zmq.EVENT_DISCONNECTED and self._refused_pending:
                self._refused_pending -= 1  # the refused publisher's connection closing, not a lost link
                continue
            if self._allow and event == zmq.EVENT_ACCEPTED:
                continue  # not yet let in: counted at EVENT_HANDSHAKE_SUCCEEDED
            if event in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                self._connects += 1
                if self._disconnected:
                    self.warn("link_restored", f"zmq_stream: publisher at {self.endpoint} is back")
                self._disconnected = False
            elif event == zmq.EVENT_DISCONNECTED:
                self._disconnects += 1
                self._disconnected = True
                self.warn("link_lost", f"zmq_stream: publisher at {self.endpoint} disconnected; reconnecting")

    def _refuse(self) -> None:
        """A publisher at an address not in ``allow`` was refused: counted, and warned about (not every time)."""
        self._refused += 1
        self._refused_pending += 1
        why = self._zap.refusals(SCOPE_DOMAIN)[1] if self._zap is not None else ""
        if self._refused == 1 or self._refused % WARN_EVERY == 0:
            self.warn("connection_refused", f"zmq_stream: a publisher was refused at {self.endpoint}: {why}; only "
                                            f"{', '.join(sorted(self._allow))} may send frames ({self._refused} "
                                            "refused so far)")

    def read(self, timeout_s: float) -> Frame | None:
        if self._sock is None:
            raise RuntimeError("ZmqStreamSource.read() called before open() or after close()")
        self._held = []
        deadline = now_ns() + int(max(timeout_s, 0.0) * 1e9)
        while True:
            self._poll_monitor()
            remaining_ms = max(deadline - now_ns(), 0) / 1e6
            if not self._poller.poll(remaining_ms):
                self._poll_monitor()
                return None
            parts = self._sock.recv_multipart(copy=False)
            frame = self._parse(parts)
            if frame is not None:
                return frame
            if now_ns() >= deadline:
                return None

    def _bad_message(self, code: str, message: str) -> None:
        self._bad += 1
        self.warn(code, f"zmq_stream: {message}")

    def _parse(self, parts: list[zmq.Frame]) -> Frame | None:
        t_ready = now_ns()
        if len(parts) != 3:
            self._bad_message("malformed_message", f"expected 3 parts (topic, header, pixels), got {len(parts)}")
            return None
        try:
            header = self._decoder.decode(parts[1].bytes)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._bad_message("malformed_header", f"undecodable header: {exc}")
            return None
        if header.v != PROTOCOL_VERSION:
            self._bad_message("wrong_version", f"protocol version {header.v}, this build reads {PROTOCOL_VERSION}")
            return None
        if self._plane >= 0 and header.plane != self._plane or self._channel >= 0 and header.channel != self._channel:
            self._skipped += 1
            return None
        if header.dtype not in STREAM_DTYPES or header.byteorder not in ("little", "big") \
                or header.order not in ("C", "F"):
            self._bad_message("wrong_dtype", f"frame {header.frame}: dtype {header.dtype!r}, byteorder "
                                             f"{header.byteorder!r}, order {header.order!r} not supported")
            return None
        if len(header.shape) != 2 or min(header.shape) < 1:
            self._bad_message("wrong_shape", f"frame {header.frame}: shape {header.shape} is not (height, width)")
            return None
        dtype = np.dtype(header.dtype).newbyteorder("<" if header.byteorder == "little" else ">")
        height, width = header.shape
        expected = height * width * dtype.itemsize
        payload = parts[2].buffer
        if len(payload) != expected:
            self._bad_message("truncated_frame", f"frame {header.frame}: {len(payload)} pixel bytes, "
                                                 f"{height}x{width} {header.dtype} needs {expected}")
            return None
        flags = 0
        if self._expected_shape is not None and (height, width) != self._expected_shape:
            flags |= FrameFlag.WRONG_SHAPE  # delivered anyway: the pipeline counts and skips it
            self._wrong_shape += 1
            self._warn_every("wrong_shape", self._wrong_shape,
                             f"frame {header.frame}: {height}x{width} pixels, the configured frame size is "
                             f"{self._expected_shape[0]}x{self._expected_shape[1]} (flagged WRONG_SHAPE)")
        plane = 0 if self._plane >= 0 else header.plane
        published = header.frame if header.volume is None else header.volume
        self._planes.check(f"frame {header.frame}", plane, header.planes)
        self._planes.check_shape(plane, (height, width))
        if header.volume is None and self._volumes.counts_frames(published, plane):
            self._planes.frame_counter(f"frame {header.frame}", plane)
        if self._volumes.continues(published, plane):  # another plane of the same volume
            number, number_flags = self._volumes.number, 0
        else:
            number, number_flags = self._number(published)
        self._volumes.update(published, plane, number)
        flags |= number_flags
        if header.order == "F":
            pixels = np.frombuffer(payload, dtype=dtype).reshape(width, height).T
        else:
            pixels = np.frombuffer(payload, dtype=dtype).reshape(height, width)
        if not dtype.isnative:
            pixels = self._to_native(pixels)
        self._held = parts
        self._dtype = pixels.dtype
        self._frames += 1
        self._last_frame_ns = t_ready
        return Frame(data=pixels, number=number, t_ready_ns=t_ready, scope_time_s=header.t, flags=int(flags),
                     plane=plane)

    def _to_native(self, pixels: np.ndarray) -> np.ndarray:
        """The frame in native byte order, in a buffer reused while frames keep their shape and type."""
        native = pixels.dtype.newbyteorder("=")
        if self._native is None or self._native.shape != pixels.shape or self._native.dtype != native:
            self._native = np.empty(pixels.shape, native)
        np.copyto(self._native, pixels)  # swaps the bytes (and makes an F-order frame C-contiguous)
        return self._native

    def _warn_every(self, code: str, count: int, message: str) -> None:
        """Warn about the first occurrence, then every :data:`WARN_EVERY`-th: a broken publisher must not flood."""
        if count == 1 or count % WARN_EVERY == 0:
            self.warn(code, f"zmq_stream: {message} ({count} so far)")

    def _number(self, published: int) -> tuple[int, int]:
        """Our number for a frame the publisher numbered ``published``, and AFTER_GAP when frames were missed.

        Ours keep the decoder's rules (module docstring) whatever arrives: the decoder stops the session on a
        number that does not increase or jumps by a day, so the numbers are made safe here, at the source.
        """
        last, last_delivered = self._last_number, self._last_delivered
        suspect, self._suspect_jump = self._suspect_jump, None
        if not 0 <= published <= MAX_FRAME_NUMBER:
            self._bad_numbers += 1
            self._warn_every("bad_frame_number", self._bad_numbers,
                             f"frame number {published} is not an integer in 0..{MAX_FRAME_NUMBER}; the frame is "
                             f"numbered {last_delivered + 1}, as the next one")
            return self._advance(last + 1 if last >= 0 else -1), 0
        flags = 0
        if last < 0:  # the first usable number: keep it, unless frames were already delivered (with bad numbers)
            self._number_offset = 0 if last_delivered < 0 else last_delivered + 1 - published
        elif published > last + 1 + self._max_jump:
            if suspect is not None and published == suspect + 1:  # the jump holds: the publisher renumbered
                self._number_offset = last_delivered + 1 - published
                self.warn("frame_number_jump", f"zmq_stream: the publisher's frame numbers continue from "
                                               f"{published}: frames continue from {last_delivered + 1}")
            else:
                self._jumps += 1
                self._suspect_jump = published
                self._warn_every("frame_number_jump", self._jumps,
                                 f"frame number jumped from {last} to {published}, more than {self._max_jump} "
                                 f"frames ahead; the frame is numbered {last_delivered + 1}, as the next one")
                return self._advance(last + 1), 0
        elif published > last + 1:
            self._missed += published - last - 1
            flags |= FrameFlag.AFTER_GAP
        elif published <= last:
            # a restarted publisher counts from 0 again: continue our numbering after the last frame delivered
            # (its frames before ``published`` are counted as missed, as any gap is, unless that is a broken count)
            self._restarts += 1
            flags |= FrameFlag.AFTER_GAP
            lost = published if published <= self._max_jump else 0
            self._missed += lost
            self._number_offset = last_delivered + 1 + lost - published
            self.warn("stream_restarted", f"zmq_stream: publisher frame number went back from {last} to "
                                          f"{published} (publisher restarted?); frames continue from "
                                          f"{published + self._number_offset}")
        self._last_number = published
        number = published + self._number_offset
        self._last_delivered = number
        return number, int(flags)

    def _advance(self, assumed_published: int) -> int:
        """Deliver the frame as the one after the last delivered, taking it as the publisher's ``assumed_published``."""
        self._last_number = assumed_published
        self._last_delivered += 1
        return self._last_delivered
