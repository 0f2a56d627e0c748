"""The session movie, compressed losslessly in self-contained chunks by a background thread.

Raw 512x512 uint16 frames fill ~0.9 GB a minute at 30 Hz. Two-photon frames are shot noise on a few
hundred counts: the high byte of each pixel is nearly constant and the low byte nearly random, so the
frames are *byte-shuffled* (all high bytes of a chunk, then all low bytes) and compressed with zstd
level 1 — about 1.6x smaller for ~1 ms of one core per 512x512 frame, in the writer thread, never in the
loop (the low bytes' entropy bounds any lossless coder near 1.7x).

File layout (``movie.zchunks``): a sequence of chunks, each self-contained, each written with one
``os.write``::

    header  "<4sIQIII": magic, n_frames, first_frame, raw_bytes, payload_bytes, crc32(payload)
    payload magic b"BRMZ": zstd frame of the shuffled block (n_frames, height, width) of ``movie.json``'s dtype;
            magic b"BRMR": that block as it is (not shuffled, not compressed)

The writer stores a chunk raw (b"BRMR") while it is behind — more than :data:`RAW_BACKLOG_FRACTION` of its
ring waiting — so a slow CPU costs disk space, not frames; it counts those chunks in
:attr:`ChunkedMovieWriter.raw_chunks` and compresses again once it has caught up.

A chunk closes after ``chunk_s`` seconds of frames (at most :data:`CHUNK_MAX_BYTES` raw), so a kill -9
loses at most that fraction of a second plus what the thread had not yet written; a torn last chunk
(short or failing its CRC) is ignored by :class:`ChunkedMovie`.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rig.core.store import CorruptFileError, SlotRingWriter

MAGIC = b"BRMZ"
RAW_MAGIC = b"BRMR"
#: a chunk is stored raw while more than this fraction of the writer's ring waits (compressing would fall behind)
RAW_BACKLOG_FRACTION = 0.5
HEADER = struct.Struct("<4sIQIII")
#: the codecs ``session.movie_codec`` may name: "zstd" (this module) or "raw" (``movie.raw``, FrameFileWriter)
MOVIE_CODECS = ("zstd", "raw")
MOVIE_FILES = {"zstd": "movie.zchunks", "raw": "movie.raw"}
#: ``acquisition/movie_gaps.rec``: one row per movie frame kept as zeros (``index`` in the movie, source ``frame``
#: number, ``reason``): readers skip exactly these instead of guessing from all-zero pixels
GAPS_FILE = "movie_gaps.rec"
MOVIE_GAP_DTYPE = np.dtype([("index", "i8"), ("frame", "i8"), ("reason", "i4")])
GAP_LOST = 1  # the writer was a full buffer behind: the frame is lost
GAP_WRONG_SHAPE = 2  # the frame was not of the ROI set's size
CHUNK_MAX_BYTES = 16 * 2**20  # raw bytes per chunk at most (1 kHz small frames: ~0.25 s of them)
ZSTD_LEVEL = 1  # level 3 gains < 1 % on these frames for 1.2-3x the CPU


def shuffle_bytes(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Byte k of every pixel together, for k = 0..itemsize-1 (the 'shuffle' filter of blosc/HDF5)."""
    k = block.dtype.itemsize
    flat = np.ascontiguousarray(block).reshape(-1).view(np.uint8)
    if k == 1:
        return flat
    if out is None:
        out = np.empty(flat.size, np.uint8)
    n = flat.size // k
    for j in range(k):  # one strided copy per byte plane: ~4x faster than copying the transposed view at once
        np.copyto(out[j * n:(j + 1) * n], flat[j::k])
    return out


def unshuffle_bytes(data: bytes | np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`shuffle_bytes`: a new array of ``shape`` and ``dtype``."""
    k = dtype.itemsize
    raw = np.frombuffer(data, np.uint8)
    if k == 1:
        return raw.view(dtype).reshape(shape).copy()
    out = np.empty(raw.size, np.uint8)
    n = raw.size // k
    for j in range(k):
        np.copyto(out[j::k], raw[j * n:(j + 1) * n])
    return out.view(dtype).reshape(shape)


def chunk_frames_for(frame_bytes: int, rate_hz: float, chunk_s: float) -> int:
    """Frames per chunk: ``chunk_s`` of frames at ``rate_hz``, at least 1, at most CHUNK_MAX_BYTES of them."""
    by_time = max(1, math.floor(chunk_s * rate_hz))
    return max(1, min(by_time, CHUNK_MAX_BYTES // max(1, frame_bytes)))


class ChunkedMovieWriter(SlotRingWriter):
    """Append frames to a ``movie.zchunks`` file; compression and writing happen in a background thread.

    The ring, queue, lost-frame accounting, error reporting and ``on_thread_start`` / ``sink`` hooks are
    :class:`rig.core.store.SlotRingWriter`'s; a batch here is a chunk: written when it holds ``chunk_frames``
    frames or its first frame is ``chunk_s`` old, byte-shuffled and zstd-compressed, or stored raw (counted in
    :attr:`raw_chunks`) while more than :data:`RAW_BACKLOG_FRACTION` of the ring waits.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: np.dtype | type, buffer_frames: int,
                 chunk_frames: int, chunk_s: float = 0.25, on_lost: Callable[[int], None] | None = None,
                 on_thread_start: Callable[[], None] | None = None,
                 sink: Callable[[int, bytes | memoryview], None] | None = None) -> None:
        if buffer_frames < 1 or chunk_frames < 1:
            raise ValueError(f"`buffer_frames` and `chunk_frames`: must be >= 1, got {buffer_frames}, {chunk_frames}")
        import zstandard  # noqa: PLC0415 - only a session that saves compressed frames needs it

        self.raw_chunks = 0  # chunks stored uncompressed because the writer was behind
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._shuffled = np.empty(chunk_frames * math.prod(shape) * np.dtype(dtype).itemsize, np.uint8)
        super().__init__(path, shape, dtype, buffer_frames, chunk_frames, chunk_s, on_lost=on_lost,
                         on_thread_start=on_thread_start, sink=sink)

    def _encode(self, block: np.ndarray) -> bytes:
        """One chunk: header + zstd of the shuffled block, or the block as it is while the writer is behind."""
        n = len(block)
        if self.pending() - n > RAW_BACKLOG_FRACTION * len(self._slots):  # compressing would fall further behind
            magic, payload = RAW_MAGIC, block.tobytes()
            self.raw_chunks += 1
        else:
            magic = MAGIC
            payload = self._compressor.compress(shuffle_bytes(block, self._shuffled[: block.nbytes]).data)
        header = HEADER.pack(magic, n, self.frames_written, block.nbytes, len(payload), zlib.crc32(payload))
        return header + payload


class ChunkedMovie:
    """A ``movie.zchunks`` file read as a (frames, height, width) array: ``len``, ``shape``, ``m[i]``, ``m[a:b]``.

    Chunks are indexed at open (headers only) and decoded on demand, the last one kept. A torn last chunk (a
    crash mid-write: short, or failing its CRC) is left out; a damaged chunk before the last raises
    :class:`CorruptFileError` naming the file and offset. ``m[a:b]`` is a lazy view of the same file.
    """

    def __init__(self, path: str | Path, dtype: np.dtype, height: int, width: int) -> None:
        import zstandard  # noqa: PLC0415

        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.frame_shape = (height, width)
        self._decompressor = zstandard.ZstdDecompressor()
        self._chunks: list[tuple[int, int, int, int, int]] = []  # (first frame, n, offset, payload bytes, crc)
        self._raw_chunk_at: set[int] = set()  # offsets of the chunks stored raw (b"BRMR")
        self.torn_bytes = 0
        self._index()
        self._start = 0
        self._stop = sum(c[1] for c in self._chunks)
        self._cached: tuple[int, np.ndarray] | None = None

    def _index(self) -> None:
        size = self.path.stat().st_size
        frame_bytes = self.dtype.itemsize * self.frame_shape[0] * self.frame_shape[1]
        offset = frames = 0
        with open(self.path, "rb") as f:
            while offset < size:
                head = f.read(HEADER.size)
                if len(head) < HEADER.size:
                    self.torn_bytes = size - offset
                    return
                magic, n, first, raw, payload, crc = HEADER.unpack(head)
                where = f"{self.path}: chunk at byte {offset}"
                if magic not in (MAGIC, RAW_MAGIC) or first != frames or raw != n * frame_bytes \
                        or (magic == RAW_MAGIC and payload != raw):
                    raise CorruptFileError(f"{where} is not a movie chunk of this layout (magic {magic!r}, "
                                           f"{n} frames from {first}, {raw} bytes; expected frame {frames})")
                end = offset + HEADER.size + payload
                if end > size:
                    self.torn_bytes = size - offset
                    return
                f.seek(end)
                self._chunks.append((first, n, offset + HEADER.size, payload, crc))
                if magic == RAW_MAGIC:
                    self._raw_chunk_at.add(offset + HEADER.size)
                frames += n
                offset = end
        if self._chunks:  # the last chunk complete in length but torn inside: checked now, the rest when read
            first, n, at, payload, crc = self._chunks[-1]
            with open(self.path, "rb") as f:
                f.seek(at)
                if zlib.crc32(f.read(payload)) != crc:
                    self._chunks.pop()
                    self.torn_bytes = size - (at - HEADER.size)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self._stop - self._start, *self.frame_shape)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self._stop - self._start

    def _chunk(self, k: int) -> np.ndarray:
        if self._cached is not None and self._cached[0] == k:
            return self._cached[1]
        first, n, at, payload, crc = self._chunks[k]
        with open(self.path, "rb") as f:
            f.seek(at)
            data = f.read(payload)
        if zlib.crc32(data) != crc:
            raise CorruptFileError(f"{self.path}: chunk at byte {at - HEADER.size} (frames {first}-{first + n - 1}) "
                                   "fails its CRC: the file is damaged")
        if at in self._raw_chunk_at:
            block = np.frombuffer(data, self.dtype).reshape((n, *self.frame_shape)).copy()
        else:
            block = unshuffle_bytes(self._decompressor.decompress(data), self.dtype, (n, *self.frame_shape))
        self._cached = (k, block)
        return block

    def _frame(self, i: int) -> np.ndarray:
        lo, hi = 0, len(self._chunks)
        while hi - lo > 1:  # the chunk holding frame i
            mid = (lo + hi) // 2
            if self._chunks[mid][0] <= i:
                lo = mid
            else:
                hi = mid
        return self._chunk(lo)[i - self._chunks[lo][0]]

    def __getitem__(self, key: Any) -> Any:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError(f"{self.path}: frames are read in steps of 1, not {step}")
            view = object.__new__(ChunkedMovie)
            view.__dict__.update(self.__dict__)
            view._start, view._stop = self._start + start, self._start + max(start, stop)
            return np.asarray(view)[(slice(None), *rest)] if rest else view
        i = int(key)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"frame {key} out of range: the movie has {len(self)} frames")
        frame = self._frame(self._start + i)
        return frame[rest] if rest else frame

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.stack([self._frame(i) for i in range(self._start, self._stop)]) if len(self) else \
            np.zeros((0, *self.frame_shape), self.dtype)
        return out.astype(dtype) if dtype is not None else out
