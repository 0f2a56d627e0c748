"""Our framed frame stream over ZeroMQ (wire format: docs/FRAME_STREAM.md; reference publisher:
scripts/publish_frames.py).

Each frame is one multipart message ``[topic, header, pixels]``: the header is a small JSON object (frame
number, scope timestamp, shape, dtype, pixel order, plane, channel), the pixels raw bytes. The scope side
publishes (PUB, usually binding); we subscribe. Malformed messages are counted as bad frames and described
in warnings, never raised; gaps in the publisher's frame numbers are counted as missed frames and the next
frame carries AFTER_GAP. A frame number that goes back means the publisher restarted: a warning is recorded,
and the delivered numbers continue after the last one delivered (offset by the new run's own number), so
they always increase; the first frame after the restart carries AFTER_GAP.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from acquisition.sources.base import Frame, FrameSource
from acquisition.validate import FrameFlag
from rig.core.clock import now_ns

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

PROTOCOL_VERSION = 1
#: pixel types a publisher may send (little-endian unless the header says ``"byteorder": "big"``)
STREAM_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_RCVHWM = 64  # frames queued before ZeroMQ drops (a 512x512 uint16 frame is 0.5 MB)


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


class ZmqStreamSource(FrameSource):
    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> ZmqStreamSource:
        """The registry's factory: ``[acquisition.zmq_stream]`` (a 0 x 0 size: whatever the stream sends)."""
        z = cfg.zmq_stream
        expected = (z.height_px, z.width_px) if z.height_px else None
        return cls(z.endpoint, bind=z.bind, topic=z.topic, plane=z.plane, channel=z.channel,
                   frame_rate_hz=cfg.frame_rate_hz, expected_shape=expected, stale_after_s=z.stale_after_s)

    def __init__(self, endpoint: str, *, bind: bool = False, topic: str = "frame", plane: int = -1,
                 channel: int = -1, frame_rate_hz: float = 30.0, expected_shape: tuple[int, int] | None = None,
                 stale_after_s: float = 2.0, context: zmq.Context | None = None) -> None:
        super().__init__()
        self.endpoint = endpoint
        self._bind = bind
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
        self._last_number = -1  # the publisher's own number of the last frame delivered
        #: added to the publisher's numbers so ours keep increasing across publisher restarts
        self._number_offset = 0
        self._last_frame_ns = 0
        self._peer_connected = False
        self._disconnected = False
        self._frames = 0
        self._bad = 0
        self._missed = 0
        self._skipped = 0
        self._restarts = 0
        self._connects = 0
        self._disconnects = 0

    def open(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, _RCVHWM)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self._topic)
        self._monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                                                | zmq.EVENT_ACCEPTED)
        try:
            if self._bind:
                sock.bind(self.endpoint)
            else:
                sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
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
                "publisher_restarts": float(self._restarts), "connects": float(self._connects),
                "disconnects": float(self._disconnects),
                "reconnects": float(max(self._connects - 1, 0))}

    def _poll_monitor(self) -> None:
        mon = self._monitor
        while mon is not None and mon.poll(0):
            event = recv_monitor_message(mon)["event"]
            if event in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                self._connects += 1
                if self._disconnected:
                    self.warn("link_restored", f"zmq_stream: publisher at {self.endpoint} is back")
                self._disconnected = False
            elif event == zmq.EVENT_DISCONNECTED:
                self._disconnects += 1
                self._disconnected = True
                self.warn("link_lost", f"zmq_stream: publisher at {self.endpoint} disconnected; reconnecting")

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
        if self._last_number >= 0:
            if header.frame > self._last_number + 1:
                self._missed += header.frame - self._last_number - 1
                flags |= FrameFlag.AFTER_GAP
            elif header.frame <= self._last_number:
                # a restarted publisher counts from 0 again: continue our numbering after the last frame
                # delivered (its frames before header.frame are counted as missed, as any gap is)
                previous = self._last_number + self._number_offset
                self._number_offset = previous + 1
                self._missed += max(header.frame, 0)
                self._restarts += 1
                flags |= FrameFlag.AFTER_GAP
                self.warn("stream_restarted", f"zmq_stream: publisher frame number went back from "
                                              f"{self._last_number} to {header.frame} (publisher restarted?); "
                                              f"frames continue from {self._number_offset + header.frame}")
        self._last_number = header.frame
        if header.order == "F":
            pixels = np.frombuffer(payload, dtype=dtype).reshape(width, height).T
        else:
            pixels = np.frombuffer(payload, dtype=dtype).reshape(height, width)
        self._held = parts
        self._shape = (height, width) if self._expected_shape is None else self._shape
        self._dtype = pixels.dtype
        self._frames += 1
        self._last_frame_ns = t_ready
        return Frame(data=pixels, number=header.frame + self._number_offset, t_ready_ns=t_ready,
                     scope_time_s=header.t, flags=int(flags))
