"""The framed TCP stream (docs/FRAME_STREAM.md, "Framed TCP"): the format MATLAB can write without ZeroMQ.

Each frame is a 32-byte little-endian header, then the pixels, little-endian, row after row:

====== ===== ==========================================================
offset bytes  field
====== ===== ==========================================================
0      4      magic ``b"BCIF"``
4      2      version, uint16 = 1
6      2      header length in bytes, uint16 (32; longer headers are skipped past)
8      8      frame number, uint64
16     8      time stamp, float64 seconds (the scope's clock)
24     2      height (lines), uint16
26     2      width (pixels per line), uint16
28     1      pixel type code (:data:`DTYPE_CODES`)
29     1      channel, uint8
30     2      reserved, 0
====== ===== ==========================================================

Why a magic and a parser that resynchronises: a sender restarted mid-frame, or a stray program on the port,
leaves bytes that are not a header; the parser skips to the next magic and counts what it skipped instead of
reading garbage as pixels for the rest of the session.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"BCIF"
VERSION = 1
HEADER = struct.Struct("<4sHHQdHHBBH")
HEADER_BYTES = HEADER.size  # 32
#: pixel type codes on the wire -> numpy types (little-endian)
DTYPE_CODES: dict[int, np.dtype] = {1: np.dtype("<i2"), 2: np.dtype("<u2"), 3: np.dtype("u1"), 4: np.dtype("<f4")}
#: a header announcing more pixel bytes than this is taken as garbage (a 4096 x 4096 float32 frame is 64 MiB)
MAX_FRAME_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FrameHeader:
    number: int
    t: float
    height: int
    width: int
    dtype: np.dtype
    channel: int
    header_bytes: int

    @property
    def payload_bytes(self) -> int:
        return self.height * self.width * self.dtype.itemsize


def encode_frame(pixels: np.ndarray, number: int, t: float, channel: int = 0) -> bytes:
    """The bytes of one frame (the reference writer; what bciRigStream.m sends)."""
    code = next((c for c, d in DTYPE_CODES.items() if d == pixels.dtype.newbyteorder("<")), None)
    if code is None or pixels.ndim != 2:
        raise ValueError(f"framed_tcp: a 2-D frame of {', '.join(map(str, DTYPE_CODES.values()))} (got "
                         f"{pixels.ndim}-D {pixels.dtype})")
    height, width = pixels.shape
    header = HEADER.pack(MAGIC, VERSION, HEADER_BYTES, number, t, height, width, code, channel, 0)
    return header + np.ascontiguousarray(pixels, dtype=DTYPE_CODES[code]).tobytes()


class FrameParser:
    """Cuts a byte stream into frames. Pure (no socket): fed bytes, it returns whole frames and counts the rest.

    Counters: ``garbage_bytes`` skipped while looking for a magic, ``resyncs`` (times a magic was found again
    after garbage), ``bad_headers`` (a magic followed by an impossible header: unknown version or pixel type,
    zero or huge size).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.garbage_bytes = 0
        self.resyncs = 0
        self.bad_headers = 0
        self.last_problem = ""

    @property
    def buffered(self) -> int:
        """Bytes held (a partial frame, or whole frames not yet taken)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def discard(self) -> int:
        """Drop what is buffered (the connection it came from is gone); returns how many bytes."""
        n = len(self._buf)
        self._buf.clear()
        return n

    def next_frame(self) -> tuple[FrameHeader, bytes] | None:
        """The next whole frame (header, pixel bytes), or None until more bytes come."""
        buf = self._buf
        while len(buf) >= len(MAGIC):
            if not buf.startswith(MAGIC):
                self._skip_to_magic()
                continue
            if len(buf) < HEADER_BYTES:
                return None
            header = self._header()
            if header is None:
                self.bad_headers += 1
                del buf[:1]  # not a frame after all: look for the next magic
                self.garbage_bytes += 1
                continue
            end = header.header_bytes + header.payload_bytes
            if len(buf) < end:
                return None
            pixels = bytes(buf[header.header_bytes:end])
            del buf[:end]
            return header, pixels
        return None

    def _skip_to_magic(self) -> None:
        buf = self._buf
        at = buf.find(MAGIC)
        if at < 0:
            at = max(len(buf) - len(MAGIC) + 1, 0)  # keep a tail that may be the start of a magic
        else:
            self.resyncs += 1
        self.garbage_bytes += at
        del buf[:at]

    def _header(self) -> FrameHeader | None:
        _, version, header_bytes, number, t, height, width, code, channel, _ = HEADER.unpack_from(self._buf, 0)
        dtype = DTYPE_CODES.get(code)
        if version != VERSION:
            self.last_problem = f"version {version} (this build reads {VERSION})"
        elif header_bytes < HEADER_BYTES:
            self.last_problem = f"header length {header_bytes} < {HEADER_BYTES}"
        elif dtype is None:
            self.last_problem = f"unknown pixel type code {code}"
        elif height < 1 or width < 1 or height * width * dtype.itemsize > MAX_FRAME_BYTES:
            self.last_problem = f"frame size {height}x{width}"
        else:
            return FrameHeader(number, t, height, width, dtype, channel, header_bytes)
        return None
