"""The extraction worker never holds the loop (a computation it is stuck in is made by the loop) and the frame
pacer says when to pre-warm registration."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from acquisition.extract_ahead import (
    CELLS,
    FIRST_CELLS,
    NEUROPIL,
    ExtractAhead,
    NeuropilShift,
    riskier_part,
    whole_shift_candidates,
)
from acquisition.pacer import FramePacer
from tests.conftest import wait_for


def _worker(release: threading.Event) -> ExtractAhead:
    def cells(frame, shift, out):  # stuck until released: a worker whose CPU was taken from it
        release.wait(10)
        out.fill(shift[0])

    def neuropil(frame, shift, out):
        out.fill(shift[1])

    return ExtractAhead(cells, neuropil, n_rois=3, candidates=1, wait_ms=20)


def test_the_loop_stops_waiting_for_a_stuck_computation_and_takes_nothing_of_it_for_the_next_frame():
    release = threading.Event()
    ahead = _worker(release)
    frame = np.zeros((4, 4), np.uint16)
    corners, neuropil = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    try:
        assert ahead.submit(frame, [(1, 2)], [(1, 2)])
        wait_for(lambda: ahead._running is not None, 5, "the worker started")
        # the cells are stuck and the neuropil never reached: the loop is told to read the neuropil meanwhile
        # (None: the cells still being computed), then stops waiting for the cells after wait_ms
        assert ahead.take((1, 2), (1, 2), corners, neuropil) == (None, False)
        assert ahead.gave_up == 0
        assert not ahead.finish_cells((1, 2), corners)
        assert ahead.gave_up == 1 and not corners.any()
        # the next frame queues behind the stuck computation (a new generation): nothing of it is taken meanwhile,
        # not even at the stuck one's shift, and the loop does not wait for it
        assert ahead.submit(frame, [(1, 2)], [(1, 2)]) and ahead.busy == 1
        assert ahead.take((1, 2), (1, 2), corners, neuropil) == (False, False)
        assert ahead.gave_up == 1 and not corners.any()
        release.set()
        wait_for(lambda: ahead._running is None, 5, "the stuck computation ended")
        assert ahead.submit(frame, [(3, 4)], [(3, 4)])
        wait_for(lambda: ahead.idle, 5, "both computed")
        assert ahead.take((3, 4), (3, 4), corners, neuropil) == (True, True)
        assert (corners == 3).all() and (neuropil == 4).all()
    finally:
        release.set()
        ahead.close()


def test_a_frame_queued_behind_an_earlier_computation_gets_its_own_results_only():
    """A submit while the worker still computes for an earlier frame (here a pre-warm) queues: the earlier
    computation finishes into its slot but is never recorded as done, so the new frame's take never gets it, even
    at the same shift and slot; the new frame's own computations are taken."""
    release_old, release_new = threading.Event(), threading.Event()
    ahead = _worker(release_old)
    old, new = np.zeros((4, 4), np.uint16), np.ones((4, 4), np.uint16)

    def cells(frame, shift, out):
        (release_new if frame[0, 0] else release_old).wait(10)
        out.fill(10 + frame[0, 0])

    ahead._compute = (cells, lambda frame, shift, out: out.fill(20 + frame[0, 0]), None)
    corners, neuropil = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    try:
        assert ahead.rehearse(old, [(1, 2)], [(1, 2)])
        wait_for(lambda: ahead._running is not None, 5, "the pre-warm started")
        assert not ahead.rehearse(old, [(1, 2)], [(1, 2)])  # a pre-warm never queues
        assert ahead.submit(new, [(1, 2)], [(1, 2)]) and ahead.busy == 1
        release_old.set()  # the pre-warm's cells end; the new frame's start, and are stuck
        wait_for(lambda: ahead._running is not None and ahead._running[2] == ahead._generation, 5, "the new cells")
        assert ahead.take((1, 2), (1, 2), corners, neuropil) == (None, False)  # its own, still being computed
        assert not ahead.finish_cells((1, 2), corners)  # stuck: given up; the pre-warm's are not its
        assert not corners.any() and ahead.gave_up == 1
        release_new.set()
        wait_for(lambda: ahead.idle, 5, "the new cells ended")
        assert ahead.submit(new, [(1, 2)], [(1, 2)])
        wait_for(lambda: ahead.idle, 5, "both computed")
        assert ahead.take((1, 2), (1, 2), corners, neuropil) == (True, True)
        assert (corners == 11).all() and (neuropil == 21).all()
    finally:
        release_old.set()
        release_new.set()
        ahead.close()


def test_the_neuropil_still_being_computed_is_finished_after_the_cells_work():
    """take() waits for the cells, not for a neuropil still being computed at the shift asked: it says None, and
    finish_neuropil() waits for it afterwards (at most wait_ms; not done in time: the loop computes it)."""
    release = threading.Event()

    def neuropil(frame, shift, out):
        release.wait(10)
        out.fill(shift[1])

    ahead = ExtractAhead(lambda frame, shift, out: out.fill(shift[0]), neuropil, n_rois=3, candidates=1, wait_ms=20)
    frame = np.zeros((4, 4), np.uint16)
    corners, out = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    try:
        assert ahead.submit(frame, [(1, 2)], [(1, 2)])
        wait_for(lambda: ahead._running is not None and ahead._running[0] == NEUROPIL, 5, "the neuropil started")
        assert ahead.take((1, 2), (1, 2), corners, out) == (True, None) and (corners == 1).all()
        assert not ahead.finish_neuropil((1, 2), out) and ahead.gave_up == 1  # still stuck after wait_ms
        assert ahead.missed == [0, 1] and not out.any()
        release.set()
        wait_for(lambda: ahead.idle, 5, "the stuck neuropil ended")
        release.clear()
        assert ahead.submit(frame, [(1, 2)], [(3, 4)])
        wait_for(lambda: ahead._running is not None and ahead._running[0] == NEUROPIL, 5, "the neuropil started")
        assert ahead.take((1, 2), (3, 4), corners, out) == (True, None)
        release.set()
        assert ahead.finish_neuropil((3, 4), out) and (out == 4).all()
        assert ahead.taken == [2, 1] and ahead.missed == [0, 1]
        release.clear()  # the cells missed: the running neuropil is waited for (the cells will be shared)
        assert ahead.submit(frame, [(1, 2)], [(3, 4)])
        wait_for(lambda: ahead._running is not None and ahead._running[0] == NEUROPIL, 5, "the neuropil started")
        ahead.wait_s, wait_s = 10.0, ahead.wait_s  # long enough for any machine: the take must wait for it
        threading.Timer(0.005, release.set).start()
        assert ahead.take((9, 9), (3, 4), corners, out) == (False, True) and (out == 4).all()
        ahead.wait_s = wait_s
        release.clear()  # a neuropil at another shift than the one asked: not waited for, missed at once
        assert ahead.submit(frame, [(1, 2)], [(5, 6)])
        wait_for(lambda: ahead._running is not None and ahead._running[0] == NEUROPIL, 5, "the neuropil started")
        assert ahead.take((1, 2), (7, 8), corners, out) == (True, False)
    finally:
        release.set()
        ahead.close()


def test_after_the_first_pair_the_part_nearer_a_boundary_is_computed_first():
    """Cells change whole shift at whole pixels (floor), the neuropil at half pixels (round): the second candidate
    of the part the last shift left nearer its boundary comes third, before the other part's."""
    assert riskier_part(2.95, 0.5, subpixel=True) == NEUROPIL  # 0.5 sits on round()'s boundary
    assert riskier_part(2.95, 0.2, subpixel=True) == CELLS  # 0.05 from floor()'s, 0.3 from round()'s
    assert riskier_part(-1.3, 4.02, subpixel=True) == CELLS
    assert riskier_part(-1.45, 4.3, subpixel=True) == NEUROPIL
    assert riskier_part(2.95, 0.5, subpixel=False) == CELLS  # one whole shift for both parts


@pytest.mark.parametrize(("second_first", "expected"), [(NEUROPIL, ["c(1, 2)", "n(1, 2)", "n(1, 3)", "c(0, 2)"]),
                                                        (CELLS, ["c(1, 2)", "n(1, 2)", "c(0, 2)", "n(1, 3)"])])
def test_the_worker_computes_both_first_candidates_then_the_riskier_parts_second(second_first, expected):
    computed: list[str] = []
    ahead = ExtractAhead(lambda frame, shift, out: computed.append(f"c{shift}"),
                         lambda frame, shift, out: computed.append(f"n{shift}"), n_rois=3, candidates=2)
    try:
        assert ahead.submit(np.zeros((4, 4), np.uint16), [(1, 2), (0, 2)], [(1, 2), (1, 3)], second_first)
        wait_for(lambda: ahead.idle, 5, "all four computed")
        assert computed == expected
    finally:
        ahead.close()


def test_the_pacer_pre_warms_once_a_lead_before_the_next_frame_is_due():
    ms = 1_000_000
    pacer = FramePacer(lead_ms=2.0)
    assert not pacer.due(0) and pacer.wait_s(0, 0.02) == 0.02  # nothing known yet
    pacer.arrived(1000 * ms)
    assert not pacer.due(1040 * ms)  # one frame: no period yet
    pacer.arrived(1033 * ms)
    assert abs(pacer.wait_s(1034 * ms, 0.5) - 0.030) < 1e-9  # due at 1033 + 33 - 2 ms
    assert not pacer.due(1063 * ms) and pacer.due(1064 * ms)
    pacer.done()
    assert not pacer.due(1065 * ms) and pacer.wait_s(1065 * ms, 0.02) == 0.02 and pacer.prewarms == 1
    pacer.arrived(1166 * ms)  # three frames dropped: not a period
    assert pacer.due(1197 * ms) and not pacer.due(1196 * ms)
    fast = FramePacer(lead_ms=2.0)
    for k in range(5):
        fast.arrived(k * ms)  # 1 kHz: a period shorter than twice the lead is never pre-warmed
    assert not fast.due(10 * ms)


def test_a_rehearsal_warms_the_worker_and_its_results_are_never_taken():
    """The pre-warm runs the worker on the last frame; the next frame's submit forgets what it computed, so a
    take at the rehearsed shifts finds nothing of it. A rehearsal the busy worker cannot run is not a busy frame."""
    release = threading.Event()
    ahead = _worker(release)
    frame = np.zeros((4, 4), np.uint16)
    corners, neuropil = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    try:
        release.set()
        assert ahead.rehearse(frame, [(1, 2)], [(1, 2)]) and ahead.rehearsals == 1
        wait_for(lambda: ahead.idle, 5, "the rehearsal computed")
        assert ahead._done[0] and ahead._done[1]  # it did compute both parts
        release.clear()  # the next frame's cells get stuck: only its neuropil at (7, 8) can be taken
        assert ahead.submit(frame, [(7, 8)], [(7, 8)])
        wait_for(lambda: ahead._running is not None, 5, "the worker started on the frame")
        assert not ahead.rehearse(frame, [(1, 2)], [(1, 2)]) and ahead.rehearsals == 1 and ahead.busy == 0
        assert ahead.take((1, 2), (1, 2), corners, neuropil) == (False, False)  # the rehearsal's are gone
        assert not corners.any() and not neuropil.any()
    finally:
        release.set()
        ahead.close()


def test_when_both_parts_are_missed_the_worker_computes_the_neuropil_at_the_shift_found():
    """Registration found a shift the worker reached for neither part: the loop computes the cells and hands the
    neuropil to the idle worker, then takes it back computed at that shift."""
    ahead = ExtractAhead(lambda frame, shift, out: out.fill(shift[0]), lambda frame, shift, out: out.fill(shift[1]),
                         n_rois=3, candidates=1)
    corners, neuropil = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    try:
        assert ahead.submit(np.zeros((4, 4), np.uint16), [(0, 0)], [(0, 0)])
        wait_for(lambda: ahead.idle, 5, "the candidates computed")
        assert ahead.take((5, 5), (5, 6), corners, neuropil) == (False, False)
        assert ahead.hand(NEUROPIL, (5, 6))
        wait_for(lambda: ahead.idle, 5, "the handed neuropil computed")
        assert ahead.collect(NEUROPIL, (5, 6), neuropil) and (neuropil == 6).all()
        assert (ahead.handed, ahead.handed_taken, ahead.gave_up) == ([0, 1, 0], [0, 1, 0], 0)
    finally:
        ahead.close()


def test_a_handed_part_the_busy_worker_has_not_started_goes_back_to_the_loop():
    """The worker is still in a candidate nobody wanted: the handed neuropil waits behind it, and when the loop
    comes for it, it is withdrawn (False: the loop computes it) rather than waited for."""
    release = threading.Event()
    ahead = _worker(release)  # its cells are stuck until released
    corners, neuropil = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    try:
        assert ahead.submit(np.zeros((4, 4), np.uint16), [(1, 2)], [(1, 2)])
        wait_for(lambda: ahead._running is not None, 5, "the worker started")
        assert ahead.take((3, 3), (3, 4), corners, neuropil) == (False, False)  # (1, 2) was not wanted: no wait
        assert ahead.hand(NEUROPIL, (3, 4))
        assert not ahead.collect(NEUROPIL, (3, 4), neuropil) and not neuropil.any()
        release.set()
        wait_for(lambda: ahead.idle, 5, "the stuck candidate ended")
        assert (3, 4) not in ahead._done[NEUROPIL] and (ahead.handed, ahead.handed_taken) == ([0, 1, 0], [0, 0, 0])
    finally:
        release.set()
        ahead.close()


def test_the_loop_stops_waiting_for_a_handed_part_the_worker_is_stuck_in():
    release = threading.Event()

    def neuropil(frame, shift, out):  # stuck until released: the worker's CPU taken from it
        release.wait(10)
        out.fill(shift[1])

    ahead = ExtractAhead(lambda frame, shift, out: out.fill(shift[0]), neuropil, n_rois=3, candidates=1, wait_ms=20)
    corners, out = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    try:
        release.set()
        assert ahead.submit(np.zeros((4, 4), np.uint16), [(0, 0)], [(0, 0)])
        wait_for(lambda: ahead.idle, 5, "the candidates computed")
        release.clear()
        assert ahead.take((2, 2), (2, 3), corners, out) == (False, False)
        assert ahead.hand(NEUROPIL, (2, 3))
        wait_for(lambda: ahead._running is not None, 5, "the worker started on the handed part")
        assert not ahead.collect(NEUROPIL, (2, 3), out) and ahead.gave_up == 1 and not out.any()
    finally:
        release.set()
        ahead.close()


def test_when_only_the_cells_are_missed_the_worker_reads_the_first_rois_while_the_loop_reads_the_rest():
    def first_cells(frame, shift, out):  # ROIs [0, 2) of 5
        assert out.shape == (4, 2)
        out.fill(10 * shift[0] + shift[1])

    ahead = ExtractAhead(lambda frame, shift, out: out.fill(shift[0]), lambda frame, shift, out: out.fill(shift[1]),
                         n_rois=5, candidates=1, first_cells=first_cells, first_rois=2)
    corners, neuropil = np.zeros((4, 5), np.float32), np.zeros(5, np.float32)
    try:
        assert ahead.submit(np.zeros((4, 4), np.uint16), [(0, 0)], [(1, 2)])
        wait_for(lambda: ahead.idle, 5, "the candidates computed")
        assert ahead.take((3, 4), (1, 2), corners, neuropil) == (False, True)
        assert ahead.hand(FIRST_CELLS, (3, 4))
        wait_for(lambda: ahead.idle, 5, "the first cells computed")
        assert ahead.collect(FIRST_CELLS, (3, 4), corners[:, :2])
        assert (corners[:, :2] == 34).all() and not corners[:, 2:].any()  # the rest is the loop's
        assert (ahead.handed, ahead.handed_taken) == ([0, 0, 1], [0, 0, 1])
    finally:
        ahead.close()
    plain = ExtractAhead(lambda frame, shift, out: None, lambda frame, shift, out: None, n_rois=5)
    plain.submit(np.zeros((4, 4), np.uint16), [(0, 0)], [(0, 0)])
    assert not plain.hand(FIRST_CELLS, (0, 0))  # a worker built without the first cells' reads has none to give
    plain.close()


def test_the_neuropil_shift_held_moves_only_past_the_hold_and_at_one_half_is_round():
    """hold 0.5 is round() frame by frame (Python's, ties to even: what sessions before the setting read at);
    above it an axis keeps its whole shift until the shift is more than the hold from it, each axis alone."""
    shifts = [(0.4, 0.0), (0.6, -0.2), (0.74, -0.6), (1.3, -0.76), (0.45, 2.5), (-0.5, 2.5), (0.25, 0.25)]
    legacy = NeuropilShift(0.5)
    assert [legacy.update(dy, dx) for dy, dx in shifts] == [(round(dy), round(dx)) for dy, dx in shifts]
    held = NeuropilShift(0.75)
    assert [held.update(dy, dx) for dy, dx in shifts] == [(0, 0), (0, 0), (0, 0), (1, -1), (1, 2), (0, 2), (0, 0)]
    held.held = None  # forgotten (a new session): the first frame reads at the nearest pixel
    assert held.update(0.7, -0.7) == (1, -1)
    for bad in (0.49, 1.01, float("nan")):
        with pytest.raises(ValueError, match="neuropil_hold_px"):
            NeuropilShift(bad)


def test_the_worker_is_first_given_the_neuropil_where_it_is_held():
    """With the neuropil held, its first candidate is the shift held, not round(shift); the second is the pixel
    the shift leans towards; riskier_part weighs how far the shift is from moving it."""
    held = NeuropilShift(0.75)
    held.update(0.0, 0.0)
    assert held.update(0.6, -0.3) == (0, 0)
    cells, neuropil = whole_shift_candidates(0.6, -0.3, True, 3, held)
    assert cells == [(0, -1), (0, 0), (1, -1)]  # floor; x (0.3 from -1 + 1) nearer its boundary than y (0.4)
    assert neuropil == [(0, 0), (1, 0), (0, -1)]  # y 0.15 from moving (0.75 - 0.6), x 0.45: y first
    assert whole_shift_candidates(0.6, -0.3, True, 3)[1][0] == (1, 0)  # without it: round()
    # at (0.45, 0.2) round() is 0.05 from changing, the cells' floor 0.2: the neuropil is the riskier part; held at
    # (0, 0) the neuropil is 0.3 from moving, so the cells are
    assert riskier_part(0.45, 0.2, True) == NEUROPIL
    assert held.update(0.45, 0.2) == (0, 0)
    assert riskier_part(0.45, 0.2, True, held) == CELLS
    held.update(0.6, -0.3)
    # not subpixel: the cells at round(), the neuropil where it is held
    cells, neuropil = whole_shift_candidates(0.6, -0.3, False, 2, held)
    assert cells == [(1, 0), (0, 0)] and neuropil == [(0, 0), (1, 0)]


def test_a_block_of_cell_reads_serves_each_of_its_two_whole_shifts_and_only_them():
    """With ``cell_block`` (2, 3) the worker computes blocks of cell reads from the origins it is given; a frame
    whose whole shift is either of the two a block holds the corners of takes them (the block's sub-block, in the
    corners' layout); any other whole shift is missed. The candidates put the first block's origin so that it
    holds the last frame's whole shift and its neighbour along x towards the nearer boundary, the second the same
    two along y's."""
    computed = []

    def cells(frame, origin, out):  # value = 100 * (whole shift y) + whole shift x, laid out as cell_block_sums
        computed.append(origin)
        for a in range(2):
            for b in range(3):
                out[2 * b + a] = 100 * (origin[0] + a) + (origin[1] + b)

    ahead = ExtractAhead(cells, lambda frame, shift, out: out.fill(0), n_rois=2, candidates=2, wait_ms=200,
                         cell_block=(2, 3))
    frame = np.zeros((4, 4), np.uint16)
    corners, neuropil = np.zeros((4, 2), np.float32), np.zeros(2, np.float32)
    try:
        for iy, ix in ((3, -2), (3, -1), (4, -2), (4, -1), (5, -2), (3, -3), (2, -2)):
            assert ahead.submit(frame, [(3, -2), (4, -2)], [(0, 0)])
            wait_for(lambda: ahead.idle, what="the blocks")
            cells_taken, _ = ahead.take((iy, ix), (0, 0), corners, neuropil)
            held = iy in (3, 4) and ix in (-2, -1)
            assert cells_taken == held
            if held:  # corners: (iy, ix), (iy + 1, ix), (iy, ix + 1), (iy + 1, ix + 1)
                expected = [100 * (iy + a) + ix + b for a, b in ((0, 0), (1, 0), (0, 1), (1, 1))]
                np.testing.assert_array_equal(corners[:, 0], expected)
    finally:
        ahead.close()
    assert computed == [(3, -2), (4, -2)] * 7
    # a frame at (3.7, -2.2): floor (3, -3), 0.7 and 0.8 above it: towards 4 and -2 -> rows 3 then 4, from x = -3
    assert whole_shift_candidates(3.7, -2.2, True, 3, cell_block=(2, 3))[0] == [(3, -3), (4, -3)]
    # at (3.2, -2.6): 0.2 and 0.4 above floor (3, -3): towards 2 and -4 -> rows 3 then 2, from x = -4
    assert whole_shift_candidates(3.2, -2.6, True, 1, cell_block=(2, 3))[0] == [(3, -4)]
    assert whole_shift_candidates(3.2, -2.6, False, 3, cell_block=(2, 3))[0] == [(3, -3), (4, -3)]  # round(): 3, -3


def test_cells_still_being_computed_are_finished_after_the_loop_reads_the_neuropil():
    """Registration ended while the worker computes the cells and before it reached the neuropil: take() says so
    (cells None) instead of waiting, the loop reads the neuropil itself meanwhile, then finish_cells() takes the
    cells once computed. Each frame is counted once per part."""
    release = threading.Event()
    ahead = _worker(release)
    frame = np.zeros((4, 4), np.uint16)
    corners, neuropil = np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
    try:
        assert ahead.submit(frame, [(5, 2)], [(1, 2)])
        wait_for(lambda: ahead._running is not None, 5, "the cells started")
        assert ahead.take((5, 2), (1, 2), corners, neuropil) == (None, False)
        release.set()  # as the loop's neuropil read gives the worker time
        assert ahead.finish_cells((5, 2), corners)
        assert (corners == 5).all() and not neuropil.any()
        assert ahead.taken == [1, 0] and ahead.missed == [0, 1] and ahead.gave_up == 0
    finally:
        release.set()
        ahead.close()


def test_with_blocks_of_two_shifts_along_x_only_y_makes_the_cells_the_riskier_part():
    """A (2, 3) block already holds x's neighbouring whole shift, so the cells need their second block only when
    floor(dy) changes: x near a pixel boundary no longer puts the cells first."""
    held = NeuropilShift(0.75)
    held.update(0.5, 0.95)  # y 0.5 from both of its floor's boundaries, x 0.05 from one; the neuropil at (0, 1)
    assert riskier_part(0.5, 0.95, True, held) == CELLS
    assert riskier_part(0.5, 0.95, True, held, (2, 3)) == NEUROPIL
    assert riskier_part(0.02, 0.95, True, held, (2, 3)) == CELLS
