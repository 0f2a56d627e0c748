"""The engine's dF/F stage: every ROI's dF/F, or during BCI (``decoder.dff_rois = "decoder"``) only the decoder's.

Why: the F0 update of 500 ROIs is most of a decode step, and during BCI only the ensembles' dF/F
decides anything. While narrowed, a small tracker follows the decoder's ROIs (continuing exactly from
the full tracker's window) and the other ROIs' dF/F is NaN; a ring of every ROI's corrected F keeps the
last window, so when BCI ends the full tracker is refilled from it and resumes exactly where it would
have been had it run all along.

Built with ``defer_rest`` (decoder.core's engine) and every ROI's dF/F (``"all"``, the default), the same small
tracker serves the decision during BCI, and the full tracker's update is left to :meth:`SubsetDffTracker.finish`,
called once the decision is out: the same numbers (the small tracker's are the full one's, to the bit), the
decision ~0.07 ms sooner (docs/PERFORMANCE.md, eighth round).
"""

from __future__ import annotations

import numpy as np

from decoder.config import DecoderConfig
from decoder.dff import DffTracker
from decoder.percentile import RunningPercentile


class SubsetDffTracker:
    """A :class:`DffTracker` for every ROI that can be narrowed to a subset of ROIs and widened back.

    ``corrected``, ``f0`` (the full tracker's) and ``dff`` (every ROI; NaN outside the subset while
    narrowed) are preallocated arrays updated in place, so views of them stay valid.
    """

    def __init__(self, n_rois: int, cfg: DecoderConfig, window: int, defer_rest: bool = False) -> None:
        self._cfg = cfg
        self._window = window
        self.full = DffTracker(n_rois, cfg.neuropil_coef, window, cfg.f0_percentile, cfg.f0_floor)
        self.corrected = self.full.corrected
        self.f0 = self.full.f0
        self.dff = self.full.dff
        # the full tracker's own methods, bound once: no extra call layer on the per-frame path
        self.correct = self.full.correct
        self.invalidate = self.full.invalidate
        self._narrow: DffTracker | None = None
        self._narrow_rois = np.zeros(0, dtype=np.intp)
        self._narrow_fresh = False
        # ring of corrected F of every ROI: when narrowing is configured, or F0 is held during BCI (f0_mode), so
        # that after BCI F0 resumes from the frames it did not take
        self._narrowing = cfg.dff_rois == "decoder"
        self._deferring = defer_rest and not self._narrowing
        self._defer = False  # "all" during BCI: the small tracker decides, the full one updates in finish()
        self._pending_push: bool | None = None  # the full tracker's update left for finish(), and its push
        self._held_f0 = cfg.f0_mode != "running"
        self._history = np.empty((window, n_rois)) if self._narrowing or self._held_f0 else None
        self._history_next = 0
        self._history_count = 0

    @property
    def running(self) -> RunningPercentile:
        """The full tracker's F0 window (a warm start pushes into it, then calls :meth:`seed_history`)."""
        self.finish()
        return self.full.running

    def update(self, push: bool = True) -> None:
        """Push this frame's ``corrected`` (from ``correct``) into the F0 window(s) and compute dF/F; with
        ``push`` False (F0 frozen, or a frame the slow F0 skips) only the dF/F, against the current F0. The
        history ring takes every frame either way: after BCI, F0 resumes as if it had run all along. Built with
        ``defer_rest``, during BCI with every ROI's dF/F: the decoder's ROIs now, the rest in :meth:`finish`."""
        full = self.full
        if self._history is not None:
            self._remember(full.corrected)
        narrow = self._narrow
        if narrow is None:
            if push:
                full.update()
            else:
                full.hold()
            return
        full.corrected.take(self._narrow_rois, out=narrow.corrected)
        if push:
            narrow.update()
        else:
            narrow.hold()
        if self._defer:
            self._pending_push = push
            full.dff.put(self._narrow_rois, narrow.dff)  # the decoder's, now; every ROI's in finish()
            return
        if self._narrow_fresh:  # the other ROIs' dF/F is not computed from now on
            full.dff.fill(np.nan)
            self._narrow_fresh = False
        full.dff.put(self._narrow_rois, narrow.dff)

    def finish(self) -> None:
        """The full tracker's update that :meth:`update` left (``defer_rest``), if any: every ROI's F0 and dF/F. Called
        after the decision, and before anything else reads or changes the full tracker."""
        push, self._pending_push = self._pending_push, None
        if push is None:
            return
        if push:
            self.full.update()
        else:
            self.full.hold()

    def fill_quantiles(self, levels: np.ndarray, quantiles: np.ndarray) -> None:
        """Warm start from a stored summary of a window (see :meth:`DffTracker.fill_quantiles`)."""
        self.finish()
        self.full.fill_quantiles(levels, quantiles)
        self.seed_history()

    def seed_history(self) -> None:
        """After a warm start of the full tracker: the history ring holds the same window."""
        if self._history is None:
            return
        window = self.full.running.window_values()
        m = window.shape[0]
        self._history[:m] = window
        self._history_next = m % self._window
        self._history_count = m

    def narrow_to(self, rois: np.ndarray) -> None:
        """From now on track F0 only for ``rois``, continuing exactly from the full tracker's window.

        Does nothing unless ``dff_rois = "decoder"``, or built with ``defer_rest`` (the full tracker then goes on
        too, its update left to :meth:`finish`).
        """
        self.finish()
        if not (self._narrowing or self._deferring):
            return
        self._defer = self._deferring
        cfg = self._cfg
        narrow = DffTracker(len(rois), cfg.neuropil_coef, self._window, cfg.f0_percentile, cfg.f0_floor)
        if self.full.frames_in_window:
            narrow.fill(self.full.running.window_values()[:, rois])
        self._narrow = narrow
        self._narrow_rois = np.asarray(rois, dtype=np.intp)
        self._narrow_fresh = True

    def take_f0(self, rois: np.ndarray, out: np.ndarray) -> None:
        """F0 of ``rois`` into ``out`` (while narrowed, ``rois`` must be among the ROIs narrowed to)."""
        narrow = self._narrow
        if narrow is not None and self._defer and not (len(rois) == len(self._narrow_rois)
                                                       and np.array_equal(rois, self._narrow_rois)):
            self.finish()
            narrow = None
        if narrow is None:
            self.full.f0.take(rois, out=out)
        elif len(rois) == len(self._narrow_rois) and np.array_equal(rois, self._narrow_rois):
            out[:] = narrow.f0
        else:
            where = {int(r): i for i, r in enumerate(self._narrow_rois)}
            missing = [int(r) for r in rois if int(r) not in where]
            if missing:
                raise ValueError(f"`rois`: {missing} are not tracked while F0 is narrowed to the decoder's ROIs")
            np.take(narrow.f0, [where[int(r)] for r in rois], out=out)

    def widen(self) -> None:
        """Back to every ROI (after BCI): refill the full tracker's window from the history ring (also when
        not narrowed but F0 was held during BCI)."""
        self.finish()
        if self._defer:  # the full tracker ran all along: refilled only when its F0 was held during BCI
            self._defer = False
            self._narrow = None
            if not self._held_f0:
                return
        if self._history is None or (self._narrow is None and not self._held_f0):
            return
        self._narrow = None
        count, nxt = self._history_count, self._history_next
        if count:
            order = np.arange(nxt - count, nxt) % self._window  # oldest first
            self.full.fill(self._history[order])

    def _remember(self, corrected: np.ndarray) -> None:
        self._history[self._history_next] = corrected  # type: ignore[index]
        self._history_next = (self._history_next + 1) % self._window
        self._history_count = min(self._history_count + 1, self._window)
