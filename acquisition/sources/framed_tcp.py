"""The framed TCP stream (docs/FRAME_STREAM.md, "Framed TCP"): the format MATLAB can write without ZeroMQ.

Each frame is a little-endian header (32 bytes in version 1, 36 in version 2), then the pixels, little-endian,
row after row:

====== ===== ==========================================================
offset bytes  field
====== ===== ==========================================================
0      4      magic ``b"BCIF"``
4      2      version, uint16: 1, or 2 (with the plane fields below)
6      2      header length in bytes, uint16 (32 / 36; longer headers are skipped past)
8      8      frame number, uint64 (with several planes: the volume number, the same for every plane)
16     8      time stamp, float64 seconds (the scope's clock)
24     2      height (lines), uint16
26     2      width (pixels per line), uint16
28     1      pixel type code (:data:`DTYPE_CODES`)
29     1      channel, uint8
30     2      reserved, 0
32     2      version 2: plane, uint16 (0-based plane of a multi-plane volume)
34     2      version 2: planes per volume, uint16 (1 for a single plane)
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
VERSION = 2  # the newest this build reads and writes; version 1 (no plane fields) is read too
VERSIONS = (1, 2)
HEADER = struct.Struct("<4sHHQdHHBBH")
HEADER_BYTES = HEADER.size  # 32: version 1, and the part every version starts with
PLANES = struct.Struct("<HH")  # version 2: plane, planes per volume, at offset 32
HEADER_BYTES_V2 = HEADER_BYTES + PLANES.size  # 36
_VERSION = struct.Struct("<H")  # at offset 4
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
    plane: int = 0
    planes: int | None = None  # planes per volume as the header says it (None: a version-1 header)

    @property
    def payload_bytes(self) -> int:
        return self.height * self.width * self.dtype.itemsize


def encode_frame(pixels: np.ndarray, number: int, t: float, channel: int = 0, *, plane: int = 0,
                 planes: int | None = None) -> bytes:
    """The bytes of one frame (the reference writer; what bciRigStream.m sends). ``planes`` None: a version-1
    header (no plane fields; ``plane`` must be 0); else version 2 with ``plane`` of ``planes``."""
    code = next((c for c, d in DTYPE_CODES.items() if d == pixels.dtype.newbyteorder("<")), None)
    if code is None or pixels.ndim != 2:
        raise ValueError(f"framed_tcp: a 2-D frame of {', '.join(map(str, DTYPE_CODES.values()))} (got "
                         f"{pixels.ndim}-D {pixels.dtype})")
    height, width = pixels.shape
    body = np.ascontiguousarray(pixels, dtype=DTYPE_CODES[code]).tobytes()
    if planes is None:
        if plane:
            raise ValueError("framed_tcp: a plane other than 0 needs a version-2 header (give planes)")
        return HEADER.pack(MAGIC, 1, HEADER_BYTES, number, t, height, width, code, channel, 0) + body
    header = HEADER.pack(MAGIC, 2, HEADER_BYTES_V2, number, t, height, width, code, channel, 0)
    return header + PLANES.pack(plane, planes) + body


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
            if len(buf) < HEADER_BYTES or len(buf) < HEADER_BYTES_V2 and _VERSION.unpack_from(buf, 4)[0] >= 2:
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
        need = HEADER_BYTES_V2 if version >= 2 else HEADER_BYTES
        if version not in VERSIONS:
            self.last_problem = f"version {version} (this build reads {', '.join(map(str, VERSIONS))})"
        elif header_bytes < need:
            self.last_problem = f"header length {header_bytes} < {need} (version {version})"
        elif dtype is None:
            self.last_problem = f"unknown pixel type code {code}"
        elif height < 1 or width < 1 or height * width * dtype.itemsize > MAX_FRAME_BYTES:
            self.last_problem = f"frame size {height}x{width}"
        elif version == 1:
            return FrameHeader(number, t, height, width, dtype, channel, header_bytes)
        else:
            plane, planes = PLANES.unpack_from(self._buf, HEADER_BYTES)
            return FrameHeader(number, t, height, width, dtype, channel, header_bytes, plane, planes)
        return None
