"""FrameFileWriter: the movie is written by a background thread; a stalled disk never blocks put()."""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

from rig.core import store
from rig.core.store import FrameFileWriter
from tests.conftest import wait_for


def _frames(n: int) -> np.ndarray:
    return np.arange(n * 6 * 5, dtype=np.uint16).reshape(n, 6, 5)


def test_frames_land_in_order_with_zeros_for_blank_frames(tmp_path):
    frames = _frames(40)
    writer = FrameFileWriter(tmp_path / "movie.raw", (6, 5), np.uint16, buffer_frames=64)
    for i, frame in enumerate(frames):
        writer.put(None if i == 7 else frame)
    wait_for(lambda: writer.pending() == 0, timeout_s=10, what="the writer to catch up")
    writer.close()
    on_disk = np.fromfile(tmp_path / "movie.raw", np.uint16).reshape(-1, 6, 5)
    expected = frames.copy()
    expected[7] = 0
    assert np.array_equal(on_disk, expected) and writer.frames_lost == 0 and writer.frames_written == 40


def test_a_stalled_disk_does_not_block_put_and_overflow_is_counted(tmp_path, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real_write = store.write_all

    def stalled_write(fd, data):
        entered.set()
        release.wait(30)  # the disk hangs until the test lets it go
        real_write(fd, data)

    monkeypatch.setattr(store, "write_all", stalled_write)
    lost: list[int] = []
    frames = _frames(6)
    writer = FrameFileWriter(tmp_path / "movie.raw", (6, 5), np.uint16, buffer_frames=4, on_lost=lost.append)
    writer.put(frames[0])
    wait_for(entered.is_set, timeout_s=10, what="the writer to start on frame 0")
    for frame in frames[1:]:  # frame 0 blocks the writer: 1..3 fill the ring, 4 and 5 do not fit
        writer.put(frame)
    assert writer.frames_lost == 2 and lost == [1, 2] and writer.pending() == 6
    release.set()
    writer.close()
    on_disk = np.fromfile(tmp_path / "movie.raw", np.uint16).reshape(-1, 6, 5)
    assert np.array_equal(on_disk[:4], frames[:4]) and not on_disk[4:].any() and len(on_disk) == 6


def test_a_write_error_is_raised_not_swallowed(tmp_path, monkeypatch):
    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "write_all", full_disk)
    writer = FrameFileWriter(tmp_path / "movie.raw", (6, 5), np.uint16, buffer_frames=4)
    writer.put(_frames(1)[0])
    wait_for(lambda: writer.pending() == 0, timeout_s=10, what="the failed write")
    with pytest.raises(OSError, match="movie.raw: writing the frames failed"):
        writer.put(_frames(1)[0])
    with pytest.raises(OSError, match="No space left"):
        writer.close()


def test_a_frame_of_the_wrong_shape_is_refused_without_losing_a_slot(tmp_path):
    writer = FrameFileWriter(tmp_path / "movie.raw", (6, 5), np.uint16, buffer_frames=1)
    with pytest.raises(ValueError, match=r"shape \(5, 5\)"):
        writer.put(np.zeros((5, 5), np.uint16))
    with pytest.raises(TypeError):  # values numpy cannot cast: the slot is given back
        writer.put(np.full((6, 5), None, dtype=object))
    frame = _frames(1)[0]
    writer.put(frame)
    writer.close()
    assert writer.frames_lost == 0
    assert np.array_equal(np.fromfile(tmp_path / "movie.raw", np.uint16).reshape(6, 5), frame)
    with pytest.raises(RuntimeError, match="closed"):
        writer.put(frame)


def test_any_error_in_the_writer_thread_surfaces(tmp_path, monkeypatch):
    def broken(fd, data):
        raise ValueError("a bug, not a disk error")

    monkeypatch.setattr(store, "write_all", broken)
    writer = FrameFileWriter(tmp_path / "movie.raw", (6, 5), np.uint16, buffer_frames=4)
    writer.put(_frames(1)[0])
    with pytest.raises(OSError, match="a bug, not a disk error"):
        writer.close()
