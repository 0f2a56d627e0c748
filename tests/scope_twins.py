"""Twins of the real scopes' sending side, written from their documentation (not from our readers):

* :class:`ScanboxMmapWriter`: Scanbox's memory-mapped file (16 int16 header words, inverted column-major
  uint16 pixels) and its semaphore handshake;
* :func:`scanimage_frame_bytes`: the bytes bciRigStream.m sends per frame (docs/FRAME_STREAM.md);
* :func:`prairie_samples`: PrairieView's raw int16 sample stream for known frames.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np


class ScanboxMmapWriter:
    """Scanbox's side: writes a frame only when the reader has released the previous one (word 0 == -1)."""

    def __init__(self, path: Path, max_lines: int = 64, max_columns: int = 64) -> None:
        self.path = Path(path)
        size = 32 + 2 * max_lines * max_columns
        self.path.write_bytes(b"\0" * size)
        self._f = open(self.path, "r+b")  # noqa: SIM115 - kept open as long as the mapping
        self.mm = mmap.mmap(self._f.fileno(), size)
        self.set_word(0, -1)  # ready: nothing to read yet
        self.skipped = 0

    def word(self, i: int) -> int:
        return struct.unpack_from("<h", self.mm, 2 * i)[0]

    def set_word(self, i: int, value: int) -> None:
        struct.pack_into("<h", self.mm, 2 * i, value)

    def consumed(self) -> bool:
        return self.word(0) == -1

    def write_frame(self, number: int, image: np.ndarray, ttl: int = 0, *, lines: int | None = None,
                    columns: int | None = None) -> bool:
        """Share ``image`` as frame ``number`` if the semaphore is free (else skip it, as Scanbox does).
        ``lines``/``columns`` override the header's size (a broken writer)."""
        if not self.consumed():
            self.skipped += 1
            return False
        pixels = (65535 - image.astype(np.uint16)).astype("<u2").tobytes(order="F")  # inverted, column-major
        self.mm[32:32 + len(pixels)] = pixels
        h, w = image.shape
        struct.pack_into("<3h", self.mm, 2, h if lines is None else lines, w if columns is None else columns, ttl)
        self.set_word(0, number)  # last: the frame is there
        return True

    def stop(self) -> None:
        self.set_word(0, -2)

    def close(self) -> None:
        self.mm.close()
        self._f.close()


#: dtype -> the framed stream's pixel type code (docs/FRAME_STREAM.md)
SCANIMAGE_CODES = {"int16": 1, "uint16": 2, "uint8": 3, "float32": 4}


def scanimage_frame_bytes(image: np.ndarray, number: int, t: float, channel: int = 0, *, version: int = 1,
                          header_len: int = 32, code: int | None = None) -> bytes:
    """One frame as documented: 32-byte little-endian header, then row-major little-endian pixels."""
    code = SCANIMAGE_CODES[image.dtype.name] if code is None else code
    h, w = image.shape
    header = (b"BCIF" + struct.pack("<H", version) + struct.pack("<H", header_len) + struct.pack("<Q", number)
              + struct.pack("<d", t) + struct.pack("<HH", h, w) + bytes([code, channel]) + b"\0\0")
    header += b"\0" * (header_len - 32)
    return header + image.astype(image.dtype.newbyteorder("<")).tobytes(order="C")


def prairie_samples(frames: np.ndarray, samples_per_pixel: int, *, bidirectional: bool, offset: int = 8192,
                    spread: int = 5) -> np.ndarray:
    """The int16 samples PrairieView streams for ``frames`` (T, H, W): per pixel ``samples_per_pixel`` samples
    around ``value + offset`` whose mean is exactly the value; odd lines right to left when bidirectional."""
    t, h, w = frames.shape
    lines = frames.astype(np.int32).copy()
    if bidirectional:
        lines[:, 1::2] = lines[:, 1::2, ::-1]
    deltas = np.arange(samples_per_pixel) * spread
    deltas -= deltas.sum() // samples_per_pixel if samples_per_pixel else 0
    deltas[-1] -= deltas.sum()  # sum exactly 0: the mean is the value
    samples = lines[..., None] + offset + deltas
    return samples.reshape(-1).astype(np.int16)
