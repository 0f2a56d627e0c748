"""The acquisition's saved movie: the writer, ``movie.json``, and the record of every frame kept as zeros.

A frame the writer cannot take (its ring full: the disk or the CPU too slow) is written as zeros so that
movie frame i stays ``frames.rec`` row i. That loss must never be silent: each such frame is a row of
``movie_gaps.rec`` (index in the movie, frame number, reason), the operator is warned the moment it starts
(then every 100th), the stop writes the totals to the event log, and the summary counts them
(``movie_frames_lost``; more than 1 % makes the session not ok, :mod:`rig.offline.problems`). Frames not of
the movie's size are kept as zeros too, with their own reason. ``rig detect``, replay and analysis skip
exactly the listed frames instead of guessing from all-zero pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rig.core.movie_file import (
    GAP_LOST,
    GAP_WRONG_SHAPE,
    GAPS_FILE,
    MOVIE_FILES,
    MOVIE_GAP_DTYPE,
    ChunkedMovieWriter,
    chunk_frames_for,
)
from rig.core.realtime import lower_this_thread
from rig.core.store import EventLog, FrameFileWriter, RecordWriter

#: the writer's ring holds MOVIE_BUFFER_S of frames, at most MOVIE_BUFFER_BYTES (150 MB for 512x512 uint16 at
#: 30 Hz), before a frame is lost; the compressed writer stores chunks raw once half of it waits
MOVIE_BUFFER_S = 10.0
MOVIE_BUFFER_BYTES = 256 * 2**20


@dataclass(frozen=True)
class MovieSettings:
    """What the saver needs of ``[session]`` and ``[rig]`` (acquisition/ does not import the app's config)."""

    codec: str  # "zstd" or "raw" (session.movie_codec)
    chunk_s: float  # session.movie_chunk_s
    flush_interval_s: float  # session.flush_interval_s (movie_gaps.rec)
    lower_thread: bool = False  # rig.background_priority == "low"
    keep_off_cpus: tuple[int, ...] = ()  # the decoder's CPUs (rig.cpu_affinity.decoder)


class MovieSaver:
    """Save frames of ``shape`` into ``folder``; it opens at the first frame of that size (giving the pixel type).

    ``warn(code, message)`` tells the operator (the process's bus + event log, called from the loop's thread
    only). ``sink`` replaces the compressed writer's file write (a test passes a slow one).
    """

    def __init__(self, folder: Path, shape: tuple[int, int], settings: MovieSettings, rate_hz: float,
                 rate_source: str, warn: Callable[[str, str], None], events: EventLog,
                 sink: Callable[[int, bytes], None] | None = None) -> None:
        self.folder = folder
        self.shape = tuple(shape)
        self.settings = settings
        self.rate_hz = rate_hz
        self.rate_source = rate_source
        self._warn = warn
        self._events = events
        self._sink = sink
        self.writer: FrameFileWriter | ChunkedMovieWriter | None = None
        self.gaps: RecordWriter | None = None
        self.index = 0  # the movie frame the next put writes
        self._blanks: list[int] = []  # numbers of the frames of another size before the movie opened
        self._refused = ""  # what the OS refused when the writer thread lowered itself (reported once)
        self._raw_chunks = 0  # chunks the compressed writer stored raw, as last reported

    @property
    def path(self) -> Path:
        return self.folder / MOVIE_FILES[self.settings.codec]

    @property
    def frames_lost(self) -> int:
        return self.writer.frames_lost if self.writer is not None else 0

    def save(self, number: int, data: np.ndarray) -> None:
        """Append frame ``number`` (zeros, and a gap row, when it is not of the movie's size)."""
        if self.writer is None:
            if data.shape != self.shape:
                self._blanks.append(number)
                return
            self._open(data.dtype)
            for blank in self._blanks:
                self._put(blank, None)
        self._put(number, data if data.shape == self.shape else None)
        if self._refused:
            self._warn("priority_refused", f"movie writer thread: {self._refused}")
            self._refused = ""
        raw_chunks = getattr(self.writer, "raw_chunks", 0)
        if raw_chunks != self._raw_chunks:  # the switch to raw chunks is said: the first, then every 100th
            if not self._raw_chunks or raw_chunks // 100 > self._raw_chunks // 100:
                self._warn("movie_uncompressed", f"the movie writer fell behind: {raw_chunks} chunk(s) stored "
                                                 f"uncompressed so far to keep up ({self.path})")
            self._raw_chunks = raw_chunks

    def _put(self, number: int, data: np.ndarray | None) -> None:
        assert self.writer is not None and self.gaps is not None
        lost_before = self.writer.frames_lost
        self.writer.put(data)
        reason = GAP_WRONG_SHAPE if data is None else GAP_LOST if self.writer.frames_lost > lost_before else 0
        if reason:
            self.gaps.append(index=self.index, frame=number, reason=reason)
        self.index += 1

    def _open(self, dtype: np.dtype) -> None:
        dtype = np.dtype(dtype).newbyteorder("=")  # sources deliver native pixels; the file says which order
        s = self.settings
        (self.folder / "movie.json").write_text(json.dumps(
            {"dtype": dtype.str, "shape": [-1, self.shape[0], self.shape[1]], "order": "C",
             "frame_rate_hz": self.rate_hz, "frame_rate_source": self.rate_source,
             "codec": s.codec, "file": MOVIE_FILES[s.codec], "gaps": GAPS_FILE}
        ))
        rate = self.rate_hz or 30.0  # a stream may not know its rate yet: size for 30 Hz
        frame_bytes = self.shape[0] * self.shape[1] * dtype.itemsize
        frames = max(8, min(math.ceil(MOVIE_BUFFER_S * rate), MOVIE_BUFFER_BYTES // max(1, frame_bytes)))
        self.gaps = RecordWriter(self.folder / GAPS_FILE, MOVIE_GAP_DTYPE, s.flush_interval_s)
        if s.codec == "raw":
            self.writer = FrameFileWriter(self.path, self.shape, dtype, frames, on_lost=self._lost)
        else:  # compressed in the writer thread, which the background lever lowers and keeps off the decoder's CPUs
            self.writer = ChunkedMovieWriter(self.path, self.shape, dtype, frames,
                                             chunk_frames_for(frame_bytes, rate, s.chunk_s), s.chunk_s,
                                             on_lost=self._lost,
                                             on_thread_start=self._lower if s.lower_thread else None,
                                             sink=self._sink)

    def _lower(self) -> None:
        """Runs in the writer thread: a lower priority, off the decoder's CPUs (``background_priority``)."""
        self._refused = lower_this_thread(list(self.settings.keep_off_cpus))

    def _lost(self, total: int) -> None:
        if total == 1 or total % 100 == 0:  # the first, then every 100th: a stalled disk must not flood the bus
            self._warn("movie_frames_lost", f"the movie writer is a full buffer behind (the disk or the CPU is too "
                                            f"slow): {total} of {self.index + 1} movie frame(s) LOST so far, kept "
                                            f"as zeros and listed in {GAPS_FILE} ({self.path})")

    def close(self) -> None:
        """Write what is queued; record the totals; raise a disk error the writer met (after the rest is saved)."""
        writer, self.writer = self.writer, None
        if self.gaps is not None:
            self.gaps.close()
            self.gaps = None
        if writer is None:
            return
        try:
            writer.close()
        finally:
            if writer.frames_lost:
                self._events.write("movie_frames_lost", frames=writer.frames_lost)
            if isinstance(writer, ChunkedMovieWriter):
                self._events.write("movie_written", frames=writer.frames_written, bytes=writer.bytes_written,
                                   raw_bytes=writer.raw_bytes, raw_chunks=writer.raw_chunks)
