"""Issue 21, the acquisition side: registration without an inverse FFT of the fine crop, the CLOOSE reader's
incremental reordering, the frame ring's hand-off. Behaviour only; timings are in docs/PERFORMANCE.md."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import scipy.fft as sfft

from acquisition.config import RegistrationConfig
from acquisition.pipeline import FramePipeline
from acquisition.reg_kernels import load_crop, masked_crop, masked_crop_by_strips
from acquisition.registration import RigidRegistrar
from acquisition.rois import RoiSet
from acquisition.sources.cloose_tcp import RING_SLOTS, ClooseTcpSource
from rig.core.realtime import lower_this_thread, set_realtime_scheduling
from tests.cloose_twins import ConnectingSender
from tests.conftest import wait_for
from tests.test_acq_synth import _cell_stat, make_movie


@pytest.fixture(scope="module")
def movie_512():
    return make_movie(T=6, Ly=512, Lx=512, n_cells=120, max_shift=12.0, seed=3)


def test_integer_peak_equals_the_inverse_fft_map_within_the_window(movie_512):
    """The fine stage evaluates the correlation by a matrix DFT at the whole-pixel shifts it searches: the same
    numbers as the inverse FFT of the cross-power spectrum there, and the same best shift."""
    reg = RigidRegistrar(movie_512.reference)
    fine = reg._fine
    assert fine is not None and fine.search == reg.bin + 1
    size, w = reg.fine_size, fine.search
    for k, frame in enumerate(movie_512.frames):
        oy, ox = int(round(movie_512.shifts[k, 0])), int(round(movie_512.shifts[k, 1]))
        y0, x0 = reg._cy + oy, reg._cx + ox
        fine.spectrum_crop(frame, y0, x0)
        cc = sfft.irfft2(fine.cross_power_spectrum().astype(np.complex128), s=(size, size))
        for cy, cx in ((0, 0), (2, -3)):
            ys, xs = np.arange(cy - w, cy + w + 1), np.arange(cx - w, cx + w + 1)
            window = cc[np.ix_(ys % size, xs % size)]
            a, b = np.unravel_index(int(np.argmax(window)), window.shape)
            assert fine.integer_peak(cy, cx) == (ys[a], xs[b])
            np.testing.assert_allclose(fine._int_values.real, window, rtol=0, atol=1e-4 * np.abs(window).max())


def test_a_frame_in_column_order_registers_to_the_same_bits(movie_512):
    """A CLOOSE frame is registered from its column-major bytes (Frame.wire), its replay from row order: the same
    shifts, corr and flags to the last bit, on the full path (first frame) and the tracked one (the rest)."""
    rows, columns = RigidRegistrar(movie_512.reference), RigidRegistrar(movie_512.reference)
    for frame in movie_512.frames:
        assert columns.register(np.asfortranarray(frame)) == rows.register(frame)
    assert rows.tracked_frames == columns.tracked_frames == len(movie_512.frames) - 1


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_the_crop_of_a_column_major_frame_is_read_in_strips_to_the_row_kernels_bits(dtype):
    """A column-major frame's crop is read in strips of columns (cache-friendly for that order): the same bits
    as the row kernel, for crop widths that are and are not a multiple of the strip, at any place."""
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 30000, (300, 280)).astype(dtype)
    columns_frame = np.asfortranarray(frame)
    for (h, w), (y0, x0) in [((256, 256), (0, 0)), ((200, 173), (37, 100)), ((9, 15), (291, 265))]:
        taper_y, taper_x = rng.random(h), rng.random(w)
        mask = (taper_y[:, None] * taper_x[None, :]).astype(np.float32)  # what spatial_taper_mask stores
        rows, strips = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
        masked_crop(frame, y0, x0, taper_y, taper_x, rows)
        masked_crop_by_strips(columns_frame, y0, x0, taper_y, taper_x, strips)
        np.testing.assert_array_equal(rows, frame[y0:y0 + h, x0:x0 + w].astype(np.float32) * mask)
        assert np.array_equal(rows.view(np.uint32), strips.view(np.uint32))
        loaded_rows, loaded_columns = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
        load_crop(frame, y0, x0, taper_y, taper_x, float(mask.sum()), loaded_rows)
        load_crop(columns_frame, y0, x0, taper_y, taper_x, float(mask.sum()), loaded_columns)
        assert np.array_equal(loaded_rows.view(np.uint32), loaded_columns.view(np.uint32))


def test_fine_registration_still_subpixel_accurate(movie_512):
    reg = RigidRegistrar(movie_512.reference)
    out = np.array([reg.register(f)[:2] for f in movie_512.frames])
    assert np.sqrt(((out - movie_512.shifts) ** 2).mean()) <= 0.1


@pytest.mark.parametrize(("byte_order", "invert"), [("little", False), ("big", True)])
def test_cloose_reader_reorders_columns_as_they_arrive_and_hands_the_slot_over(byte_order, invert):
    """The reader thread puts whole columns into row order as bytes arrive (before the frame's last byte), and
    read() returns the slot's row-order frame itself, untouched by later frames until the next read()."""
    ly, lx = 16, 12
    images = np.random.default_rng(1).integers(0, 60000, (RING_SLOTS + 3, ly, lx)).astype(np.uint16)
    wire = [(65535 - im if invert else im).astype(">u2" if byte_order == "big" else "<u2").tobytes(order="F")
            for im in images]
    src = ClooseTcpSource("127.0.0.1", 0, ly, lx, byte_order=byte_order, invert=invert)
    src.start_keeping()
    src.open()
    scope = ConnectingSender(src.port)
    try:
        cut = 5 * ly * 2 + 7  # five whole columns and part of the sixth
        scope.send(wire[0][:cut])
        wait_for(lambda: src._cols_done == 5, 5, "five columns reordered before the frame is complete")
        assert src.read(0.01) is None
        scope.send(wire[0][cut:])
        first = wait_for(lambda: src.read(0.1), 5, "the first frame")
        np.testing.assert_array_equal(first.data, images[0])
        assert first.data.flags.c_contiguous and first.data.dtype == np.uint16
        scope.send(b"".join(wire[1:]))  # more frames than the ring holds: the held slot is never overwritten
        wait_for(lambda: src.stats()["frames"] == len(images), 5, "every frame received")
        np.testing.assert_array_equal(first.data, images[0])
        numbers = []
        while (frame := src.read(0.05)) is not None:
            np.testing.assert_array_equal(frame.data, images[frame.number])
            numbers.append(frame.number)
        assert numbers[-1] == len(images) - 1 and src.stats()["frames_overwritten"] == len(images) - 1 - len(numbers)
    finally:
        scope.close()
        src.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="SCHED_FIFO is Linux's")
def test_a_background_thread_leaves_the_real_time_policy_it_inherited():
    """rig.priority = "realtime" puts the process in SCHED_FIFO; its threads inherit it, where nice has no
    effect. lower_this_thread (movie writer, reference refinement) puts the thread back to SCHED_OTHER."""
    if set_realtime_scheduling():
        pytest.skip("SCHED_FIFO refused here (no root / CAP_SYS_NICE)")
    seen: dict[str, object] = {}

    def background() -> None:
        seen["inherited"] = os.sched_getscheduler(0)
        seen["refused"] = lower_this_thread([])
        seen["after"] = os.sched_getscheduler(0)

    try:
        thread = threading.Thread(target=background)
        thread.start()
        thread.join(10)
        assert seen == {"inherited": os.SCHED_FIFO, "refused": "", "after": os.SCHED_OTHER}
        assert os.sched_getscheduler(0) == os.SCHED_FIFO  # the calling (loop) thread keeps its policy
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="SCHED_FIFO is Linux's")
def test_the_zmq_io_threads_already_running_get_the_loops_real_time_policy():
    """libzmq starts its I/O threads with a process's first socket, before rig.priority is applied: left alone
    they stay SCHED_OTHER and every bus message waits behind the SCHED_FIFO loop threads. Only they are raised."""
    import zmq

    from rig.core.realtime import FIFO_PRIORITY, raise_zmq_io_threads, zmq_io_threads

    before = set(zmq_io_threads())  # other tests' contexts, put back as they were at the end
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)  # starts the context's I/O thread
    try:
        wait_for(lambda: set(zmq_io_threads()) - before, 5, "the new context's I/O thread")
        mine = set(zmq_io_threads()) - before
        assert all(os.sched_getscheduler(t) == os.SCHED_OTHER for t in mine)
        found, refused = raise_zmq_io_threads()
        if refused:
            pytest.skip("SCHED_FIFO refused here (no root / CAP_SYS_NICE)")
        assert found >= len(mine)
        for tid in mine:
            assert os.sched_getscheduler(tid) == os.SCHED_FIFO
            assert os.sched_getparam(tid).sched_priority == FIFO_PRIORITY
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER  # the caller is not touched
    finally:
        for tid in before & set(zmq_io_threads()):
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        sock.close(0)
        ctx.term()


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="SCHED_FIFO is Linux's")
def test_no_zmq_io_thread_found_is_said_not_passed_over(monkeypatch):
    """Every rig process has a socket, so an I/O thread to raise: finding none (libzmq renamed them) is reported."""
    from rig.core import realtime

    monkeypatch.setattr(realtime, "zmq_io_threads", lambda: [])
    found, refused = realtime.raise_zmq_io_threads()
    assert found == 0 and "no ZeroMQ I/O thread found" in refused


def test_the_live_reference_build_runs_its_thread_start_hook_and_reports_a_refusal():
    """The background reference build, like the refinement, first runs ``on_thread_start`` in its own thread (the
    acquisition process lowers it there); what the OS refused comes back as a reference event."""
    movie = make_movie(T=12, Ly=64, Lx=64, n_cells=8, max_shift=3.0, seed=2)
    stat, _ = _cell_stat(movie.centres, 2.0, 64, 64)
    rois = RoiSet(stat=stat, iscell=np.ones((len(stat), 2)), Ly=64, Lx=64)
    threads: list[str] = []

    def hook() -> str:
        threads.append(threading.current_thread().name)
        return "nice refused: test"

    pipe = FramePipeline(rois, registration=RegistrationConfig(reference_frames=8, refine_reference="never"),
                         background_reference=True, on_thread_start=hook)
    for frame in movie.frames[:8]:
        pipe.process(frame)
    assert pipe._build is not None
    pipe._build.thread.join(30)
    pipe.process(movie.frames[8])
    assert pipe.registrar is not None and threads == ["reference-build"]
    assert pipe.pop_reference_events() == [{"event": "reference_build_thread_refused", "frame": 8,
                                            "thread_refused": "nice refused: test"}]
