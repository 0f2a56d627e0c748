"""A frame's extraction computed beside its registration, at the whole-pixel shifts the last frame predicts.

Why: extraction needs only the whole part of the shift before its last step. Neuropil masks are read at a whole
pixel near it (:class:`NeuropilShift`); cell masks are read at the four whole-pixel shifts around the subpixel one
and combined bilinearly at the end (acquisition.extract_kernels). Brain motion between two frames is a fraction of a
pixel, so a worker thread computes those reads at the whole shifts the last frame's shift makes likely while the
loop thread registers this frame: first at the last frame's own whole shifts, then at the neighbours it was nearest
to (:func:`whole_shift_candidates`), cells and neuropil alternating, until the loop asks for them. After the first
pair, the part whose whole shift the last frame left nearer a boundary goes first (:func:`riskier_part`): on two
vCPUs the worker finishes two to three parts before registration ends (fewer on a slower VM). With ordered cell sums
(the default) one cells computation is a block of two whole shifts, the last frame's and its neighbour along x,
read in one pass over the same frame rows (``cell_block``): it costs what one shift's reads cost and serves both.
Each part whose shift is among those computed is taken (the same sums of the same pixels in the same order: the
same numbers); a part whose shift was not reached is computed after registration, and shared: the worker is handed
the neuropil at the shift registration found when both were missed (:meth:`ExtractAhead.hand`), the first half of
the cells' reads when only they were, while the loop computes the rest; cells the worker is still computing when the
neuropil was not reached are finished while the loop reads the neuropil. The kernels release the GIL, so on two
cores the work overlaps (~0.3 ms of a 512x512 frame with 500 ROIs).
``[acquisition.extraction] ahead`` switches it.

The worker starts with the first frame, from the loop's thread, so it inherits the loop's scheduling (a
real-time policy set on the loop thread covers it); it waits on a condition between frames. The loop never waits
for it long: a computation it needs that is not done within ``wait_ms`` (the worker's CPU was taken from it) is
made by the loop itself. A frame that finds the worker still computing for an earlier one (a pre-warm, or a
candidate the last frame no longer needed) queues behind that computation; each submit starts a new generation, and
a computation of an earlier one is never taken.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np

Shift = tuple[int, int]
#: compute(frame, (iy, ix), out): the cells' four corner reads (4, n) or the neuropil (n,) at that whole shift
Compute = Callable[[np.ndarray, Shift, np.ndarray], None]

CELLS, NEUROPIL = 0, 1
#: the cells' reads of the first ROIs only, handed to the worker when registration left just the cells to compute
FIRST_CELLS = 2


def _ranked(centre: Shift, alternative: Shift, distance: tuple[float, float], k: int) -> list[Shift]:
    """``centre``, then the shift that moves the axis nearer its boundary, the other axis, both axes."""
    (cy, cx), (ay, ax) = centre, alternative
    near_y_first = distance[0] <= distance[1]
    singles = [(ay, cx), (cy, ax)] if near_y_first else [(cy, ax), (ay, cx)]
    return [centre, *singles, (ay, ax)][:k]


class NeuropilShift:
    """The whole-pixel shift the neuropil masks are read at, frame after frame.

    ``hold_px`` 0.5: round(shift) each frame (sessions recorded before ``neuropil_hold_px``). Above 0.5 the masks
    stay at their whole shift until the registered shift is more than ``hold_px`` from it on an axis, then move
    to round(shift) on that axis. Why: a shift hovering about a half pixel (breathing, a slow drift) otherwise flips
    hundreds of neuropil pixels between two places from frame to frame, and each flip is a whole-shift change the
    extraction worker did not compute first (docs/PERFORMANCE.md, eleventh round). A neuropil mask is a plain mean
    over hundreds of pixels, so being up to ``hold_px`` off costs little: on a genuine suite2p run its correlation
    with the true neuropil is the same, with suite2p's own (read at the nearest pixel) a little lower
    (docs/REGISTRATION.md, "Extraction")."""

    def __init__(self, hold_px: float = 0.5) -> None:
        if not 0.5 <= hold_px <= 1.0:
            raise ValueError(f"`neuropil_hold_px`: must be within [0.5, 1], not {hold_px}")
        self.hold_px = float(hold_px)
        self.held: Shift | None = None  # the last frame's, None before the first

    def update(self, dy: float, dx: float) -> Shift:
        """This frame's whole shift for the neuropil, from its registered shift (kept for the next frame)."""
        ry, rx = round(dy), round(dx)
        held = self.held
        if held is not None and self.hold_px > 0.5:
            ry = held[0] if abs(dy - held[0]) <= self.hold_px else ry
            rx = held[1] if abs(dx - held[1]) <= self.hold_px else rx
        self.held = (ry, rx)
        return ry, rx

    def margins(self, dy: float, dx: float) -> tuple[Shift, Shift, tuple[float, float]]:
        """After :meth:`update` with (dy, dx): the whole shift held, the neighbour each axis would move to next,
        and how far each axis is from moving there."""
        return _margins(dy, dx, self.held, self.hold_px)


def _margins(dy: float, dx: float, held: Shift | None, hold_px: float) -> tuple[Shift, Shift, tuple[float, float]]:
    """:meth:`NeuropilShift.margins` of a whole shift ``held`` (None: round(shift)) kept within ``hold_px``."""
    hy, hx = held if held is not None else (round(dy), round(dx))
    away = (hy + 1 if dy >= hy else hy - 1, hx + 1 if dx >= hx else hx - 1)
    return (hy, hx), away, (hold_px - abs(dy - hy), hold_px - abs(dx - hx))


def whole_shift_candidates(dy: float, dx: float, subpixel: bool, k: int, neuropil: NeuropilShift | None = None,
                           cell_block: tuple[int, int] = (2, 2)) -> tuple[list[Shift], list[Shift]]:
    """The ``k`` most likely whole shifts of the next frame's cell reads and neuropil, given this frame's shift
    (and the neuropil's whole shift held after it): the same, then one pixel towards the boundary each axis is
    nearest to. Cells are read from floor(shift) when subpixel (nearest otherwise). With ``cell_block`` (2, 3) the
    cells' are block origins instead (extract_kernels.cell_block_sums), at most two: the block holding this whole
    shift and its neighbour along x, then the one holding both along y's neighbouring row."""
    held, away, margin = neuropil.margins(dy, dx) if neuropil is not None else _margins(dy, dx, None, 0.5)
    neuropil_ranked = _ranked(held, away, margin, k)
    if not subpixel:  # the cells at round(shift)
        centre, alternative, distance = _margins(dy, dx, None, 0.5)
    else:
        fy, fx = math.floor(dy), math.floor(dx)
        ty, tx = dy - fy, dx - fx  # in [0, 1): towards fy + 1 when above one half
        centre = (fy, fx)
        alternative = (fy + 1 if ty >= 0.5 else fy - 1, fx + 1 if tx >= 0.5 else fx - 1)
        distance = (min(ty, 1 - ty), min(tx, 1 - tx))
    if cell_block == (2, 3):
        left = min(centre[1], alternative[1])
        return [(centre[0], left), (alternative[0], left)][:k], neuropil_ranked
    if not subpixel and centre == held:
        return neuropil_ranked, neuropil_ranked
    return _ranked(centre, alternative, distance, k), neuropil_ranked


def riskier_part(dy: float, dx: float, subpixel: bool, neuropil: NeuropilShift | None = None,
                 cell_block: tuple[int, int] = (2, 2)) -> int:
    """CELLS or NEUROPIL: the part whose whole shift this frame's shift leaves nearer a boundary, so the one the
    next frame more likely reads at its second candidate. Cells change whole shift where floor() does (at whole
    pixels; with ``cell_block`` (2, 3) only floor(dy) matters: the first block holds x's neighbour), the neuropil
    where it moves off its held shift (:class:`NeuropilShift`). On the recorded shifts of 4,967 frames of 6 bench
    sessions, both parts are among the first three computed for 68 % of frames, against 59 % with the cells' second
    candidate always third (docs/PERFORMANCE.md, ninth round); with blocks, 92.9 % of 33,313 frames, against 91.2 %
    counting x too (twelfth round)."""
    if not subpixel:
        return CELLS
    axes = (dy,) if cell_block == (2, 3) else (dy, dx)
    to_floor = min(min(t - math.floor(t), 1.0 - (t - math.floor(t))) for t in axes)
    to_move = min(neuropil.margins(dy, dx)[2] if neuropil is not None else _margins(dy, dx, None, 0.5)[2])
    return CELLS if to_floor <= to_move else NEUROPIL


class ExtractAhead:
    """One frame in flight: :meth:`submit` before registration, :meth:`take` after it."""

    def __init__(self, cells: Compute, neuropil: Compute, n_rois: int, candidates: int = 3,
                 wait_ms: float = 1.0, first_cells: Compute | None = None, first_rois: int = 0,
                 cell_block: tuple[int, int] = (2, 2)) -> None:
        """``first_cells`` computes the cells' reads of ROIs [0, ``first_rois``) only (FIRST_CELLS, :meth:`hand`).
        ``cell_block`` (rows, columns) of whole shifts ``cells`` reads from the origin it is given, laid out
        column by column as extract_kernels.cell_block_sums lays out (2, 3): it serves each whole shift whose four
        corner reads it holds (two for (2, 3)); (2, 2): the four corner reads (4, n) of the one whole shift."""
        self._compute = (cells, neuropil, first_cells)
        self.cell_block = cell_block
        # one slot per candidate, and one more for a part handed over after registration (hand)
        self._buffers = ([np.empty((cell_block[0] * cell_block[1], n_rois), np.float32) for _ in range(candidates + 1)],
                         [np.empty(n_rois, np.float32) for _ in range(candidates + 1)],
                         [np.empty((4, first_rois), np.float32) for _ in range(candidates + 1)])
        self.candidates = candidates
        self.wait_s = wait_ms / 1e3
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._pending: list[tuple[int, int, Shift]] = []  # (part, slot, shift), in the order to compute
        self._running: tuple[int, Shift, int] | None = None  # (part, shift, generation) being computed
        self._generation = 0  # one per submit or rehearse: the pending jobs and what is done are of the newest
        self._done: tuple[dict[Shift, int], ...] = ({}, {}, {})  # per part: shift -> slot
        self._origins: tuple[list[Shift], ...] = tuple([(0, 0)] * (candidates + 1) for _ in range(3))  # per slot
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.taken = [0, 0]  # frames whose cells / neuropil came from the worker
        self.missed = [0, 0]  # frames whose whole shift for cells / neuropil had not been computed
        self.gave_up = 0  # computations the loop stopped waiting for (made by the loop instead)
        self.busy = 0  # frames that found the worker still computing for an earlier one (queued behind it)
        self.rehearsals = 0  # pre-warms: computations on the last frame whose results nobody takes
        self.handed = [0, 0, 0]  # per part: handed over after registration (hand), taken back computed (collect)
        self.handed_taken = [0, 0, 0]

    @property
    def idle(self) -> bool:
        """Nothing being computed or waiting to be: a :meth:`submit` or :meth:`rehearse` now would start."""
        with self._cond:
            return self._running is None and not self._pending

    def submit(self, frame: np.ndarray, cells_at: list[Shift], neuropil_at: list[Shift],
               second_first: int = CELLS) -> bool:
        """Start ``frame``'s cell reads at each of ``cells_at`` and its neuropil at each of ``neuropil_at`` (the
        likeliest first); ``frame`` must stay unchanged until :meth:`take`. Cells then neuropil at the first
        shifts, then ``second_first`` (:func:`riskier_part`) before the other at each next one; after the
        computation for an earlier frame the worker is still finishing, if any (counted in ``busy``)."""
        return self._start(frame, cells_at, neuropil_at, second_first, queue=True)

    def rehearse(self, frame: np.ndarray, cells_at: list[Shift], neuropil_at: list[Shift]) -> bool:
        """The pre-warm (acquisition.pacer): compute on ``frame`` (the last one) as :meth:`submit` would, shortly
        before the next frame is due, so that the worker's code and data are warm on its CPU when it comes. The
        results are never taken: the next :meth:`submit` forgets them. False while the worker is busy."""
        started = self._start(frame, cells_at, neuropil_at, queue=False)
        if started:
            self.rehearsals += 1
        return started

    def _start(self, frame: np.ndarray, cells_at: list[Shift], neuropil_at: list[Shift],
               second_first: int = CELLS, *, queue: bool) -> bool:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="extract-ahead", daemon=True)
            self._thread.start()
        with self._cond:
            self._raise_error()
            if self._running is not None:
                if not queue:
                    return False
                self.busy += 1
            self._generation += 1  # what the worker is finishing now is never recorded as done
            self._frame = frame
            for done in self._done:
                done.clear()
            at = (cells_at, neuropil_at)
            self._pending = [(part, slot, at[part][slot])
                             for slot in range(self.candidates)
                             for part in ((CELLS, NEUROPIL) if slot == 0 or second_first == CELLS
                                          else (NEUROPIL, CELLS))
                             if slot < len(at[part])]
            self._pending.reverse()  # popped from the end
            self._cond.notify_all()
        return True

    def take(self, cells_at: Shift, neuropil_at: Shift, corners: np.ndarray,
             neuropil: np.ndarray) -> tuple[bool | None, bool | None]:
        """Stop the worker after its current computation; copy each part computed at the shift asked into its
        buffer. Returns (cells taken, neuropil taken), None for a part the worker is still computing at the shift
        asked, for the loop to take after its own work on the other part: the cells (:meth:`finish_cells`) when
        the neuropil is not done (the loop reads it meanwhile), the neuropil (:meth:`finish_neuropil`) when the
        cells were taken (the loop does their remaining work meanwhile). When the cells were missed a neuropil
        being computed is waited for here: the worker must be free to share the cells."""
        wanted = (cells_at, neuropil_at)
        with self._cond:
            self._pending.clear()
            if self._computing(CELLS, cells_at) and neuropil_at not in self._done[NEUROPIL]:
                self.missed[NEUROPIL] += 1
                return None, False
            if cells_at not in self._done[CELLS]:
                self._wait_while_computing(NEUROPIL, neuropil_at)
            hits = tuple(wanted[part] in self._done[part] for part in (CELLS, NEUROPIL))
            if hits[CELLS]:
                self._copy_cells(self._done[CELLS][cells_at], cells_at, corners)
            if hits[NEUROPIL]:
                neuropil[:] = self._buffers[NEUROPIL][self._done[NEUROPIL][neuropil_at]]
            neuropil_running = not hits[NEUROPIL] and self._computing(NEUROPIL, neuropil_at)
        self.taken[CELLS] += hits[CELLS]
        self.missed[CELLS] += not hits[CELLS]
        if neuropil_running:
            return hits[CELLS], None
        self.taken[NEUROPIL] += hits[NEUROPIL]
        self.missed[NEUROPIL] += not hits[NEUROPIL]
        return hits[CELLS], hits[NEUROPIL]

    def finish_cells(self, cells_at: Shift, corners: np.ndarray) -> bool:
        """After a :meth:`take` that found the cells being computed: wait for them (at most ``wait_ms``) and copy
        the corner reads at ``cells_at`` into ``corners``; False when they did not end in time (the loop reads
        them)."""
        with self._cond:
            self._wait_while_computing(CELLS, cells_at)
            done = cells_at in self._done[CELLS]
            if done:
                self._copy_cells(self._done[CELLS][cells_at], cells_at, corners)
        self.taken[CELLS] += done
        self.missed[CELLS] += not done
        return done

    def finish_neuropil(self, neuropil_at: Shift, neuropil: np.ndarray) -> bool:
        """After a :meth:`take` that found the neuropil being computed: wait for it (at most ``wait_ms``) and copy
        it into ``neuropil``; False when it did not end in time (the loop computes it)."""
        with self._cond:
            self._wait_while_computing(NEUROPIL, neuropil_at)
            done = neuropil_at in self._done[NEUROPIL]
            if done:
                neuropil[:] = self._buffers[NEUROPIL][self._done[NEUROPIL][neuropil_at]]
        self.taken[NEUROPIL] += done
        self.missed[NEUROPIL] += not done
        return done

    def withdraw(self) -> None:
        """The frame given to :meth:`submit` is not to be extracted (its pixels failed the checks): nothing more
        is started for it; a computation already running ends unused."""
        with self._cond:
            self._pending.clear()

    def hand(self, part: int, shift: Shift) -> bool:
        """After a :meth:`take` that missed a part: have the worker compute ``part`` (NEUROPIL, or FIRST_CELLS when
        only the cells were missed) at ``shift`` (registration's) while the loop computes the rest, and
        :meth:`collect` it. The same kernel on the same pixels: the same numbers. It starts after a candidate the
        worker is still finishing, if any. False when the worker is gone or has no such part."""
        with self._cond:
            self._raise_error()
            if self._thread is None or self._closed or self._compute[part] is None:
                return False
            self._pending = [(part, self.candidates, shift)]
            self._cond.notify_all()
        self.handed[part] += 1
        return True

    def collect(self, part: int, shift: Shift, out: np.ndarray) -> bool:
        """The part given to :meth:`hand`, copied into ``out``. Not started yet (the worker was still busy): it is
        withdrawn and False, so the loop computes it, as it would have. Started: waited for (at most ``wait_ms``)."""
        with self._cond:
            if self._pending:
                self._pending.clear()
                return False
            if not self._cond.wait_for(lambda: self._error is not None or shift in self._done[part], self.wait_s):
                self.gave_up += 1
                return False
            self._raise_error()
            out[:] = self._buffers[part][self._done[part][shift]]
        self.handed_taken[part] += 1
        return True

    def _copy_cells(self, slot: int, shift: Shift, corners: np.ndarray) -> None:
        """The four corner reads at whole shift ``shift`` from the cells' buffer ``slot`` (a block: its sub-block)."""
        (rows, columns), n = self.cell_block, corners.shape[1]
        oy, ox = self._origins[CELLS][slot]
        a, b = shift[0] - oy, shift[1] - ox
        corners.reshape(2, 2, n)[:] = self._buffers[CELLS][slot].reshape(columns, rows, n)[b:b + 2, a:a + 2]

    def _reach(self, part: int) -> tuple[int, int]:
        """Whole shifts along y and x that one computation of ``part`` serves: a (2, 3) block of cell reads two
        along x."""
        return (self.cell_block[0] - 1, self.cell_block[1] - 1) if part == CELLS else (1, 1)

    def _computing(self, part: int, shift: Shift) -> bool:
        """Whether the worker is computing ``part`` at ``shift`` (a cells block holding it) for the newest frame
        (under the lock)."""
        running = self._running
        if running is None or running[0] != part or running[2] != self._generation:
            return False
        reach = self._reach(part)
        return 0 <= shift[0] - running[1][0] < reach[0] and 0 <= shift[1] - running[1][1] < reach[1]

    def _wait_while_computing(self, part: int, shift: Shift) -> None:
        """Wait (under the lock, at most ``wait_ms``) until the worker is no longer computing ``part`` at ``shift``
        for the newest frame; raise what it failed with."""
        if not self._cond.wait_for(lambda: self._error is not None or not self._computing(part, shift), self.wait_s):
            self.gave_up += 1
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._pending.clear()
            raise RuntimeError("the extraction worker failed") from error

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                part, slot, shift = self._pending.pop()
                generation = self._generation  # the pending jobs are always the newest generation's
                self._running = (part, shift, generation)
                frame = self._frame
            try:
                assert frame is not None
                self._compute[part](frame, shift, self._buffers[part][slot])  # releases the GIL
            except BaseException as exc:  # noqa: BLE001 - handed to the loop thread, which raises it
                with self._cond:
                    self._error = exc
                    self._running = None
                    self._cond.notify_all()
                continue
            with self._cond:
                if generation == self._generation:  # else a newer frame came meanwhile: its slot is not this one
                    for a in range(self._reach(part)[0]):
                        for b in range(self._reach(part)[1]):
                            self._done[part][shift[0] + a, shift[1] + b] = slot
                    self._origins[part][slot] = shift
                self._running = None
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
