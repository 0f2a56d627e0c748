"""A frame's extraction computed beside its registration, at the whole-pixel shifts the last frame predicts.

Why: extraction needs only the whole part of the shift before its last step. Neuropil masks are read at the
nearest whole pixel; cell masks are read at the four whole-pixel shifts around the subpixel one and combined
bilinearly at the end (acquisition.extract_kernels). Between two frames at 30 Hz those whole pixels rarely
change, so a worker thread computes both at the previous frame's whole shifts while the loop thread registers
this frame. Each part whose shift turns out to be the predicted one is taken (the same kernel on the same pixels
and shift: the same numbers); a part whose shift changed is computed again after registration, as without this.
The kernels release the GIL, so on two cores the work overlaps (~0.3 ms of a 512x512 frame with 500 ROIs).
``[acquisition.extraction] ahead`` switches it.

The worker starts with the first frame, from the loop's thread, so it inherits the loop's scheduling (a
real-time policy set on the loop thread covers it); it waits on a condition between frames.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

#: compute(frame, (iy, ix), (ry, rx), corners_out, neuropil_out): the extractor's two kernel calls
Compute = Callable[[np.ndarray, tuple[int, int], tuple[int, int], np.ndarray, np.ndarray], None]


class ExtractAhead:
    """One frame in flight: :meth:`submit` before registration, :meth:`take` after it."""

    def __init__(self, compute: Compute, n_rois: int) -> None:
        self._compute = compute
        self._corners = np.empty((4, n_rois), np.float32)
        self._neuropil = np.empty(n_rois, np.float32)
        self._cond = threading.Condition()
        self._job: tuple[int, np.ndarray, tuple[int, int], tuple[int, int]] | None = None  # not yet started
        self._submitted = 0  # the number of the last job submitted
        self._finished = 0  # the number of the last job finished (its results in the buffers)
        self._finished_at: tuple[tuple[int, int], tuple[int, int]] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.taken = [0, 0]  # frames whose cells / neuropil came from the worker
        self.missed = [0, 0]  # frames whose whole shift for cells / neuropil was not the predicted one

    def submit(self, frame: np.ndarray, cells_at: tuple[int, int], neuropil_at: tuple[int, int]) -> None:
        """Start ``frame``'s cell corner reads at ``cells_at`` and its neuropil at ``neuropil_at``; ``frame`` must
        stay unchanged until :meth:`take`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="extract-ahead", daemon=True)
            self._thread.start()
        with self._cond:
            self._submitted += 1
            self._job = (self._submitted, frame, cells_at, neuropil_at)
            self._cond.notify_all()

    def take(self, cells_at: tuple[int, int], neuropil_at: tuple[int, int], corners: np.ndarray,
             neuropil: np.ndarray) -> tuple[bool, bool]:
        """Wait for the job submitted last; copy each part computed at the shift asked into its buffer.
        Returns (cells taken, neuropil taken)."""
        with self._cond:
            while self._finished != self._submitted and self._error is None:
                self._cond.wait()
            if self._error is not None:
                error, self._error = self._error, None
                self._finished = self._submitted
                raise RuntimeError("the extraction worker failed") from error
            done = self._finished_at
            hits = (done is not None and done[0] == cells_at, done is not None and done[1] == neuropil_at)
            if hits[0]:
                corners[:] = self._corners
            if hits[1]:
                neuropil[:] = self._neuropil
        for part, hit in enumerate(hits):
            if hit:
                self.taken[part] += 1
            else:
                self.missed[part] += 1
        return hits

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                number, frame, cells_at, neuropil_at = self._job  # type: ignore[misc]
                self._job = None
            try:
                self._compute(frame, cells_at, neuropil_at, self._corners, self._neuropil)  # releases the GIL
            except BaseException as exc:  # noqa: BLE001 - handed to the loop thread, which raises it in take()
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                continue
            with self._cond:
                self._finished = number
                self._finished_at = (cells_at, neuropil_at)
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
