"""dF/F per ROI with F0 a running low percentile, updated incrementally and exactly.

Why not ``np.percentile`` over the window every frame: for 500 ROIs and a one-minute window that is a
partial sort of ~10^6 values per frame (milliseconds). :class:`RunningPercentile` instead keeps, per
ROI, a *band*: all window values within a value interval ``[lo, hi]`` that brackets the order
statistics the percentile needs (the k-th and (k+1)-th smallest), kept sorted, plus ``below``, the
number of window values under ``lo``. The k-th smallest value is then ``band[k - below]``.

A new frame replaces the oldest value in the ring. Both values are compared with ``lo``/``hi`` (a few
operations on (ROIs,) arrays): ``below`` moves by at most one, and only ROIs where the old or the new
value falls inside its band (a few percent: the band holds ~2·halfwidth of ~window values) update
their band, as a small sorted insert/remove. When the order statistic drifts out of a ROI's band, or
its band overflows, that ROI's band is rebuilt from its ring with ``np.partition`` (O(window), rare:
the statistic's rank within the band does a slow random walk). A ROI whose values tie so heavily that
no band fits (a saturated or dead ROI) is computed with ``np.percentile`` each frame instead.

Everything is exact, including ties: the result is bit-identical to ``np.percentile(window, p, axis=0)``
(numpy's default "linear" method, whose interpolation formula is reproduced). Unfilled slots hold
``+inf``, above every band, so the window may grow from empty.
"""

from __future__ import annotations

import math

import numpy as np


def percentile_weights(count: int, percentile: float) -> tuple[int, float]:
    """The order statistic index ``k`` and weight ``gamma`` numpy's linear percentile uses for ``count``.

    ``np.percentile`` returns ``s[k] + (s[k+1] - s[k])·gamma`` (or the mirrored form for gamma ≥ 0.5)
    where ``s`` is the sorted sample; we reproduce its float arithmetic so results match bit for bit.
    """
    if count < 1:
        raise ValueError(f"`count`: must be >= 1, got {count}")
    q = float(np.true_divide(percentile, 100.0))
    virtual = (count - 1) * q
    if virtual >= count - 1:
        return count - 1, 0.0
    k = math.floor(virtual)
    return k, virtual - k


class RunningPercentile:
    """Exact running percentile of the last ``window`` values of each of ``n`` series (see module doc).

    ``band_capacity`` bounds a band's size; bands are (re)built with ``halfwidth`` ranks either side of
    the needed order statistics (default capacity // 4). Values pushed must be finite.
    """

    def __init__(self, n: int, window: int, percentile: float, band_capacity: int = 128,
                 halfwidth: int | None = None) -> None:
        if n < 1:
            raise ValueError(f"`n`: must be >= 1, got {n}")
        if window < 1:
            raise ValueError(f"`window`: must be >= 1, got {window}")
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"`percentile`: must be within [0, 100], got {percentile}")
        if band_capacity < 4:
            raise ValueError(f"`band_capacity`: must be >= 4, got {band_capacity}")
        if halfwidth is None:
            halfwidth = band_capacity // 4
        if not 0 <= halfwidth <= band_capacity // 2 - 1:
            raise ValueError(f"`halfwidth`: must be within [0, band_capacity/2 - 1], got {halfwidth}")
        self.n = n
        self.window = window
        self.percentile = float(percentile)
        self.capacity = band_capacity
        self.halfwidth = halfwidth
        self.rebuilds = 0  # bands rebuilt so far (a statistic for benchmarks)
        # raw values, one row per series (a rebuild reads a row), column = slot, oldest overwritten first
        self._ring = np.empty((n, window))
        # sorted band values, +inf after the first `cnt`; one spare column so that an insertion into a full
        # band still fits (the band is then rebuilt at once)
        self._band = np.empty((n, band_capacity + 1))
        self._band_flat = self._band.reshape(-1)
        self._cnt = np.empty(n, dtype=np.intp)
        self._below = np.empty(n, dtype=np.intp)
        self._lo = np.empty(n)
        self._hi = np.empty(n)
        self._dense = np.zeros(n, dtype=bool)  # computed by np.percentile: ties too heavy for a band
        self._dense_rows: list[int] = []
        self._dense_retry = 0
        self.value = np.empty(n)  # the current percentile; push() updates it in place
        # scratch, so push() allocates nothing but small index arrays
        self._row_base = np.arange(n, dtype=np.intp) * (band_capacity + 1)
        self._pair = np.empty((2, n))
        self._old, self._new = self._pair
        self._below2 = np.empty((2, n), dtype=bool)
        self._old_below, self._new_below = self._below2
        self._out2 = np.empty((2, n), dtype=bool)
        self._old_out, self._new_out = self._out2
        self._flag = np.empty(n, dtype=bool)
        self._bad = np.empty(n, dtype=bool)
        self._force = np.zeros(n, dtype=bool)  # band overflowed: rebuild before use
        self._pos = np.empty(n, dtype=np.intp)
        self._room = np.empty(n, dtype=np.intp)
        self._recentre_below = 2  # room (ranks) under which an idle frame re-centres a band
        self._rows1 = np.zeros(1, dtype=np.intp)
        self._idx = np.empty(n, dtype=np.intp)
        self._kth = np.empty(n)
        self._next = np.empty(n)
        self._diff = np.empty(n)
        self._weights_cache: dict[int, tuple[int, float]] = {}
        self.reset()

    @property
    def count(self) -> int:
        """How many values the window holds now (grows to ``window``)."""
        return self._count

    def reset(self) -> None:
        """Empty the window."""
        self._ring.fill(np.inf)
        self._band.fill(np.inf)
        self._cnt.fill(0)
        self._below.fill(0)
        # an empty band at -inf: every value is "above" it, so the first push rebuilds every band
        self._lo.fill(-np.inf)
        self._hi.fill(-np.inf)
        self._dense.fill(False)
        self._dense_rows = []
        self._force.fill(False)
        self._forced = False
        self.value.fill(np.nan)
        self._count = 0
        self._pushed = 0

    def fill(self, values: np.ndarray) -> None:
        """Make the window the last ``window`` rows of ``values`` (frames × n), as if pushed in order."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.n or values.shape[0] < 1:
            raise ValueError(f"`values`: expected shape (frames >= 1, {self.n}), got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("`values`: must be finite")
        self.reset()
        tail = values[-self.window :]
        m = tail.shape[0]
        # pushes go to slots 0, 1, ... in order; after m pushes the next slot is m % window
        self._ring[:, :m] = tail.T
        self._count = m
        self._pushed = m
        k, gamma = self._weights(m)
        self._rebuild_rows(np.arange(self.n), k, m)
        self._compute(k, gamma)

    def window_values(self) -> np.ndarray:
        """The values in the window, oldest first (frames × n); a copy, for checks and snapshots."""
        start = self._pushed % self.window if self._count == self.window else 0
        order = (np.arange(self._count) + start) % self.window
        return self._ring[:, order].T.copy()

    def _weights(self, count: int) -> tuple[int, float]:
        cached = self._weights_cache.get(count)
        if cached is None:
            cached = percentile_weights(count, self.percentile)
            self._weights_cache[count] = cached
        return cached

    def push(self, x: np.ndarray) -> np.ndarray:
        """Add one value per series (dropping the oldest once full); return the percentile (a view)."""
        slot = self._pushed % self.window
        pair = self._pair  # row 0: the value leaving the window, row 1: the value entering it
        column = self._ring[:, slot]
        pair[0] = column
        pair[1] = x  # float64 copy of the input
        column[...] = self._new
        below2, out2 = self._below2, self._out2
        np.less(pair, self._lo, out=below2)  # (2, n) at once: fewer numpy calls per push
        np.greater(pair, self._hi, out=out2)
        out2 |= below2  # outside the band
        below = self._below
        below += self._new_below
        below -= self._old_below
        flag = self._flag
        np.logical_and(self._old_out, self._new_out, out=flag)
        rows = np.logical_not(flag, out=flag).nonzero()[0]  # the old or the new value is in band
        if rows.size:
            self._update_bands(rows, self._old, self._new)

        self._count = count = min(self._count + 1, self.window)
        self._pushed += 1
        k, gamma = self._weights(count)
        self._compute(k, gamma)
        return self.value

    def _compute(self, k: int, gamma: float) -> None:
        """value = the percentile from the bands; rebuild the bands that no longer bracket rank k (k+1)."""
        pos, bad, room = self._pos, self._bad, self._room
        np.subtract(k, self._below, out=pos)  # rank k's index in the band
        # room: how far rank k (and k+1) can drift before leaving the band; negative: it has left
        np.subtract(self._cnt, pos, out=room)
        room -= 2 if gamma else 1
        np.minimum(room, pos, out=room)
        np.less(room, 0, out=bad)
        if self._forced:
            bad |= self._force
            self._forced = False
        if self._dense_rows:
            bad &= ~self._dense
            room[self._dense] = self.window  # never "closest to the edge"
            self._dense_retry += 1
            if self._dense_retry >= self.window:  # perhaps the ties are gone: try a band again
                self._dense_retry = 0
                for r in self._dense_rows:
                    self._dense[r] = False
                    bad[r] = True
                self._dense_rows = []
        if bad.any():
            self._rebuild_rows(bad.nonzero()[0], k, self._count)
            np.subtract(k, self._below, out=pos)
        else:
            # a frame without forced rebuilds re-centres the band closest to its edge, so that forced
            # rebuilds (which can coincide) stay rare and the slowest frames cheap
            r = int(room.argmin())
            if room[r] < self._recentre_below:
                self._rebuild_rows(self._one_row(r), k, self._count)
                pos[r] = k - self._below[r]
        idx = self._idx
        np.add(pos, self._row_base, out=idx)
        kth = self._kth
        self._band_flat.take(idx, out=kth, mode="clip")  # clip: dense rows' indices are meaningless
        if gamma != 0.0:
            idx += 1
            self._band_flat.take(idx, out=self._next, mode="clip")
        if self._dense_rows:
            with np.errstate(invalid="ignore"):  # dense rows read +inf padding; overwritten below
                self._lerp(gamma)
            for r in self._dense_rows:
                self.value[r] = np.percentile(self._ring[r, : self._count], self.percentile)
        else:
            self._lerp(gamma)

    def _lerp(self, gamma: float) -> None:
        """numpy's _lerp: a + (b - a)·g, or b - (b - a)·(1 - g) where g >= 0.5 (a = k-th, b = (k+1)-th)."""
        kth, nxt, diff, value = self._kth, self._next, self._diff, self.value
        if gamma == 0.0:
            np.copyto(value, kth)
            return
        np.subtract(nxt, kth, out=diff)
        if gamma >= 0.5:
            diff *= 1.0 - gamma
            np.subtract(nxt, diff, out=value)
        else:
            diff *= gamma
            np.add(kth, diff, out=value)

    def _update_bands(self, rows: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
        """Remove the old value from / insert the new value into the bands of ``rows`` (one of them in band).

        One write per row then a re-sort: the new value (or +inf if it is outside the band) overwrites the
        old value's leftmost copy (or, if the old value is outside, the first +inf after the band). Only
        the columns up to the fullest band's first +inf take part.
        """
        cnt = self._cnt.take(rows)
        width = int(cnt.max()) + 1  # every write lands at or before a band's first +inf
        key = old.take(rows)
        old_out = self._old_out.take(rows)
        np.copyto(key, np.inf, where=old_out)
        val = new.take(rows)
        new_out = self._new_out.take(rows)
        np.copyto(val, np.inf, where=new_out)
        sub = self._band[rows, :width]  # (m, width) copy
        at = np.less(sub, key[:, None]).argmin(axis=1)  # key's leftmost copy, or the first +inf
        at += self._row_base[: rows.size] if width == self.capacity + 1 else np.arange(0, rows.size * width, width)
        sub.reshape(-1)[at] = val
        sub.sort(axis=1, kind="stable")  # timsort: linear on a row that is sorted but for one value
        self._band[rows, :width] = sub
        cnt += old_out
        cnt -= new_out
        self._cnt[rows] = cnt
        if width > self.capacity:  # a band was full: an insertion used the spare column, rebuild it
            full = cnt > self.capacity
            self._force[rows[full]] = True
            self._forced = True

    def _one_row(self, r: int) -> np.ndarray:
        self._rows1[0] = r
        return self._rows1

    def _rebuild_rows(self, rows: np.ndarray, k: int, count: int) -> None:
        """Rebuild the bands of ``rows`` at once (one partition call); rows with ties at the band's edges,
        or whose band would not fit, go through :meth:`_rebuild` one by one."""
        if self.halfwidth == 0:
            for r in rows.tolist():
                self._rebuild(r, k, count)
            return
        i_lo = max(k - self.halfwidth, 0)
        i_hi = min(k + 1 + self.halfwidth, count - 1)
        part = self._ring[rows, :count]  # (rows, count) copy
        part.partition((i_lo, i_hi), axis=1)
        lo = part[:, i_lo]
        hi = part[:, i_hi]
        # tie-free rows (the rule for continuous data): the band is exactly ranks i_lo..i_hi. Values left
        # of i_lo are <= lo and right of i_hi >= hi, so a tie shows as max(left) == lo or min(right) == hi.
        ties = np.zeros(rows.size, dtype=bool)
        if i_lo > 0:
            ties |= part[:, :i_lo].max(axis=1) == lo
        if i_hi + 1 < count:
            ties |= part[:, i_hi + 1 :].min(axis=1) == hi
        core = np.sort(part[:, i_lo : i_hi + 1], axis=1)
        width = i_hi - i_lo + 1
        # the tie-free rows all at once (a Python loop over rows cost ~20 us per rebuilt row)
        clean = ~ties
        done = rows[clean]
        if done.size:
            self.rebuilds += int(done.size)
            self._force[done] = False
            self._band[done, :width] = core[clean]
            self._band[done, width:] = np.inf
            self._cnt[done] = width
            self._below[done] = i_lo
            self._lo[done] = lo[clean]
            self._hi[done] = hi[clean]
        for r in rows[ties].tolist():
            self._rebuild(r, k, count)

    def _rebuild(self, r: int, k: int, count: int) -> None:
        """Rebuild series ``r``'s band from its ring: ranks k - halfwidth .. k + 1 + halfwidth."""
        self.rebuilds += 1
        self._force[r] = False
        vals = self._ring[r, :count]  # the ring fills slots 0, 1, ... first, so these are the window
        half = self.halfwidth
        limit = (self.capacity * 3) // 4  # leave room for values arriving in band before the next rebuild
        while True:
            i_lo = max(k - half, 0)
            i_hi = min(k + 1 + half, count - 1)
            part = np.partition(vals, (i_lo, i_hi))
            lo, hi = part[i_lo], part[i_hi]
            inside = part[(part >= lo) & (part <= hi)]
            if inside.size <= (limit if half else self.capacity):
                break
            if half == 0:  # heavy ties at the percentile itself: no band fits
                self._dense[r] = True
                self._dense_rows = sorted(set(self._dense_rows) | {r})
                self._lo[r] = self._hi[r] = -np.inf  # every value "above": the band logic leaves it alone
                self._cnt[r] = 0
                return
            half //= 2
        inside.sort()
        band = self._band[r]
        band[: inside.size] = inside
        band[inside.size :] = np.inf
        self._cnt[r] = inside.size
        self._below[r] = int(np.count_nonzero(part < lo))
        self._lo[r] = lo
        self._hi[r] = hi


class DffTracker:
    """Neuropil correction, running-percentile F0 and dF/F for every ROI, one frame at a time.

    ``dff = (F_corr - F0) / max(F0, f0_floor)`` with ``F_corr = F - neuropil_coef·Fneu`` and F0 the running
    ``percentile`` of F_corr over the last ``window`` frames (the current one included). ``corrected``,
    ``f0`` and ``dff`` are preallocated arrays updated in place by :meth:`update`.
    """

    def __init__(self, n_rois: int, neuropil_coef: float, window: int, percentile: float, f0_floor: float) -> None:
        self.n_rois = n_rois
        self.neuropil_coef = float(neuropil_coef)
        self.f0_floor = float(f0_floor)
        self.running = RunningPercentile(n_rois, window, percentile)
        self.corrected = np.empty(n_rois)
        self.f0 = self.running.value
        self.dff = np.full(n_rois, np.nan)
        self._scratch = np.empty(n_rois)

    @property
    def window(self) -> int:
        return self.running.window

    @property
    def frames_in_window(self) -> int:
        return self.running.count

    def correct(self, F: np.ndarray, Fneu: np.ndarray) -> bool:
        """Fill ``corrected`` from one frame; False (and nothing else changed) if it is not all finite."""
        np.multiply(Fneu, self.neuropil_coef, out=self._scratch, dtype=np.float64)  # float64 even for float32 in
        np.subtract(F, self._scratch, out=self.corrected, dtype=np.float64)
        # sum() is NaN iff an element is NaN/inf (or an overflow): one pass, no temporary array
        return math.isfinite(float(self.corrected.sum()))

    def update(self) -> np.ndarray:
        """Push ``corrected`` (from :meth:`correct`) into the F0 window and compute dF/F (a view)."""
        self.running.push(self.corrected)
        self._dff_from_f0()
        return self.dff

    def invalidate(self) -> None:
        """This frame has no usable dF/F."""
        self.dff.fill(np.nan)

    def fill(self, corrected_frames: np.ndarray) -> None:
        """Warm start: make the window the last ``window`` rows of a recording of corrected F."""
        self.running.fill(corrected_frames)

    def fill_quantiles(self, levels: np.ndarray, quantiles: np.ndarray) -> None:
        """Warm start from a stored summary of a window: ``quantiles`` (len(levels) × n_rois) of corrected F at
        percentile ``levels``. The window is filled with values spread over that distribution (linear
        between the quantiles, in a fixed shuffled order so that the oldest leave evenly), so F0 starts
        near the stored window's percentile and moves as real frames replace them."""
        levels = np.asarray(levels, dtype=np.float64)
        quantiles = np.asarray(quantiles, dtype=np.float64)
        if quantiles.shape != (levels.size, self.n_rois) or levels.size < 2 or not np.isfinite(quantiles).all():
            raise ValueError(f"`f0_quantiles`: expected {levels.size} finite rows of {self.n_rois} values")
        window = self.running.window
        at = (np.arange(window) + 0.5) / window * 100.0
        spread = np.empty((window, self.n_rois))
        for r in range(self.n_rois):
            spread[:, r] = np.interp(at, levels, quantiles[:, r])
        order = np.random.default_rng(0).permutation(window)  # fixed: the warm start is deterministic
        self.running.fill(spread[order])

    def _dff_from_f0(self) -> None:
        np.maximum(self.f0, self.f0_floor, out=self._scratch)
        np.subtract(self.corrected, self.f0, out=self.dff)
        self.dff /= self._scratch


def corrected_f(F: np.ndarray, Fneu: np.ndarray, neuropil_coef: float) -> np.ndarray:
    """F - coef·Fneu in float64, with the same arithmetic as :meth:`DffTracker.correct`."""
    F = np.asarray(F)
    Fneu = np.asarray(Fneu)
    if F.shape != Fneu.shape or F.ndim != 2:
        raise ValueError(f"`F`/`Fneu`: expected two (frames, n_rois) arrays of one shape, got {F.shape} and "
                         f"{Fneu.shape}")
    scratch = np.multiply(Fneu, float(neuropil_coef), dtype=np.float64)
    return np.subtract(F, scratch, dtype=np.float64)


def running_f0(corrected: np.ndarray, window: int, percentile: float) -> np.ndarray:
    """F0 of every frame of a recording as the live tracker computes it (causal, growing window)."""
    corrected = np.asarray(corrected, dtype=np.float64)
    if corrected.ndim != 2 or corrected.shape[0] < 1:
        raise ValueError(f"`corrected`: expected (frames >= 1, n_rois), got {corrected.shape}")
    running = RunningPercentile(corrected.shape[1], window, percentile)
    out = np.empty_like(corrected)
    for t, row in enumerate(corrected):
        out[t] = running.push(row)
    return out


def baseline_f0(corrected: np.ndarray, live_f0: np.ndarray, window: int, percentile: float) -> np.ndarray:
    """F0 over a baseline recording, as calibration uses it.

    From frame ``window`` on this is the live (causal) F0. Before, the live window holds only the first
    few frames, so those frames get the percentile of the first ``min(window, frames)`` frames instead:
    every baseline frame then has an F0 from a full window, like every BCI frame after the warm start.
    """
    f0 = np.array(live_f0, dtype=np.float64, copy=True)
    head = min(window, corrected.shape[0])
    f0[:head] = np.percentile(np.asarray(corrected[:head], dtype=np.float64), percentile, axis=0)
    return f0


def dff_from(corrected: np.ndarray, f0: np.ndarray, f0_floor: float) -> np.ndarray:
    """dF/F with the same arithmetic as the live tracker."""
    return (corrected - f0) / np.maximum(f0, f0_floor)
