"""The compressed movie: lossless, chunked, crash-safe (a torn last chunk is dropped), >= 1.5x on realistic frames."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rig.core.movie_file import HEADER, ChunkedMovie, ChunkedMovieWriter, chunk_frames_for
from rig.core.store import CorruptFileError, write_all
from tests.conftest import wait_for
from tests.test_acq_synth import make_movie


def _write(path, frames, chunk_frames=8, chunk_s=10.0):
    # a ring far larger than the burst: the writer is never "behind" (it would store raw chunks, tested below)
    writer = ChunkedMovieWriter(path, frames.shape[1:], frames.dtype, buffer_frames=256, chunk_frames=chunk_frames,
                                chunk_s=chunk_s)
    for frame in frames:
        writer.put(frame)
    writer.put(None)  # a frame of the wrong size: kept as zeros, so frame i stays row i
    writer.close()
    return writer


def test_frames_come_back_bit_for_bit_and_smaller(tmp_path):
    frames = make_movie(T=40, Ly=128, Lx=128, n_cells=30).frames  # the independent synthetic generator
    writer = _write(tmp_path / "movie.zchunks", frames)
    movie = ChunkedMovie(tmp_path / "movie.zchunks", frames.dtype, 128, 128)
    assert movie.shape == (41, 128, 128) and len(movie[10:20]) == 10
    np.testing.assert_array_equal(np.asarray(movie[:40]), frames)
    np.testing.assert_array_equal(movie[37], frames[37])
    assert not movie[40].any()
    np.testing.assert_array_equal(movie[5:9, 2:4, :], frames[5:9, 2:4, :])  # the NWB export's selections
    ratio = writer.raw_bytes / writer.bytes_written
    assert ratio >= 1.5, f"compression {ratio:.2f}x on the synthetic frames"


def test_a_torn_last_chunk_is_dropped_and_a_damaged_earlier_one_refused(tmp_path):
    frames = make_movie(T=24, Ly=64, Lx=64, n_cells=10).frames
    path = tmp_path / "movie.zchunks"
    _write(path, frames, chunk_frames=8)
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # kill -9 in the middle of the last chunk's write
    movie = ChunkedMovie(path, frames.dtype, 64, 64)
    assert len(movie) == 24 and movie.torn_bytes > 0  # three whole chunks of 8 kept; the zeros frame's chunk torn
    np.testing.assert_array_equal(movie[23], frames[23])
    damaged = bytearray(data)
    damaged[HEADER.size + 5] ^= 0xFF  # inside the first chunk's payload
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptFileError, match="fails its CRC"):
        ChunkedMovie(path, frames.dtype, 64, 64)[0]


def test_a_chunk_is_written_when_its_time_is_up(tmp_path):
    """A kill -9 loses at most chunk_s of frames: a chunk that does not fill is written after chunk_s anyway,
    also with the frames after its first queued without waking the writer (it wakes every 16th frame here)."""
    path = tmp_path / "movie.zchunks"
    writer = ChunkedMovieWriter(path, (16, 16), np.uint16, buffer_frames=64, chunk_frames=1000, chunk_s=0.05)
    for value in range(7, 12):
        writer.put(np.full((16, 16), value, np.uint16))
    wait_for(lambda: writer.pending() == 0, 5.0, "the chunk written")
    movie = ChunkedMovie(path, np.dtype(np.uint16), 16, 16)
    assert [int(movie[i][0, 0]) for i in range(5)] == [7, 8, 9, 10, 11]
    writer.close()


def test_chunk_size_follows_time_and_is_capped():
    assert chunk_frames_for(512 * 512 * 2, 30.0, 0.25) == 7
    assert chunk_frames_for(64 * 256 * 2, 1000.0, 0.25) == 250
    assert chunk_frames_for(4096 * 4096 * 2, 30.0, 0.25) == 1


def test_the_replay_source_reads_a_session_movie(tmp_path):
    import json

    from acquisition.sources.movie import open_movie

    frames = make_movie(T=12, Ly=64, Lx=64, n_cells=10).frames
    _write(tmp_path / "movie.zchunks", frames, chunk_frames=5)
    (tmp_path / "movie.json").write_text(json.dumps({"dtype": "<u2", "shape": [-1, 64, 64], "order": "C",
                                                     "frame_rate_hz": 30.0, "codec": "zstd"}))
    with open_movie(tmp_path / "movie.zchunks") as movie:
        assert (movie.n_frames, movie.shape, movie.frame_rate_hz) == (13, (64, 64), 30.0)
        out = np.empty((64, 64), np.uint16)
        movie.read_into(11, out)
        np.testing.assert_array_equal(out, frames[11])


class GatedSink:
    """A disk that stalls: the first chunk write blocks until the test opens the gate (no sleeps)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, fd: int, data: bytes) -> None:
        self.entered.set()
        if not self.gate.wait(30.0):
            raise TimeoutError("the test never opened the gate")
        write_all(fd, data)


def test_a_writer_that_falls_behind_loses_frames_counted_then_stores_raw_chunks_until_it_catches_up(tmp_path):
    """A stalled writer: a full ring loses frames (counted, zeros keep the numbering); the backlog it then
    drains is stored raw (b"BRMR", counted), then compression resumes; everything kept reads back bit for bit."""
    frames = make_movie(T=40, Ly=32, Lx=32, n_cells=5).frames
    sink = GatedSink()
    lost_calls: list[int] = []
    path = tmp_path / "movie.zchunks"
    writer = ChunkedMovieWriter(path, (32, 32), frames.dtype, buffer_frames=8, chunk_frames=2, chunk_s=60.0,
                                on_lost=lost_calls.append, sink=sink)
    writer.put(frames[0])
    writer.put(frames[1])
    assert sink.entered.wait(10.0), "the first chunk never reached the sink"
    for i in range(2, 14):  # 8 fit the ring while the sink is stalled; 10..13 are lost
        writer.put(frames[i])
    assert writer.frames_lost == 4 and lost_calls == [1, 2, 3, 4]
    sink.gate.set()
    wait_for(lambda: writer.pending() == 0, 10.0, "the backlog written")
    for i in range(14, 40):  # at the pace the writer keeps (a frame waits only for its chunk's second)
        wait_for(lambda: writer.pending() < 2, 10.0, "the writer keeping up")
        writer.put(frames[i])
    writer.close()
    assert writer.frames_lost == 4
    assert writer.raw_chunks >= 1  # the backlog went out raw ...
    data, magics, at = path.read_bytes(), [], 0
    while at < len(data):  # the chunk headers, in order
        magic, _, _, _, payload, _ = HEADER.unpack_from(data, at)
        magics.append(magic)
        at += HEADER.size + payload
    assert magics.count(b"BRMR") == writer.raw_chunks and magics[-1] == b"BRMZ"  # ... then compression resumed
    movie = ChunkedMovie(path, frames.dtype, 32, 32)
    assert len(movie) == 40
    kept = [i for i in range(40) if not 10 <= i <= 13]
    np.testing.assert_array_equal(np.asarray(movie)[kept], frames[kept])
    assert not np.asarray(movie[10:14]).any()
