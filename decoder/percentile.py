"""Exact running percentile of many series over a sliding window, updated incrementally (F0 of dF/F).

Why not ``np.percentile`` over the window every frame: for 500 ROIs and a one-minute window that is a
partial sort of ~10^6 values per frame (milliseconds). :class:`RunningPercentile` instead keeps, per
ROI, a *band*: the window entries whose rank lies in a small interval around the ranks the percentile
needs (the k-th and (k+1)-th smallest), kept sorted, plus ``below``, how many entries rank under the
band. The k-th smallest value is then ``band[k - below]``.

Entries are ordered by the key (value, ring slot), so no two keys tie even when values do: the band is
"every entry whose key lies in [lo key, hi key]", an exact rank interval, also for a dead ROI whose
values are all equal. A new frame replaces the oldest entry of the ring *in the same slot*; comparing
both keys with the band's bounds moves ``below`` by at most one, and only a ROI where the old or the
new entry falls inside its band (a few percent of ROIs per frame) edits its band: a binary search and a
shift of at most ``band_capacity`` values. When the needed ranks drift out of a band, or it overflows,
that band is rebuilt from the ring with a quickselect (O(window), rare: the rank does a slow random
walk), and a frame without such rebuilds re-centres the band closest to its edge, so rebuilds seldom
pile up in one frame.

The per-frame work is a compiled loop (numba, compiled once and cached on disk; :func:`compile_kernels`
does it ahead of the first frame). Everything is exact: the result is bit-identical to
``np.percentile(window, p, axis=0)`` (numpy's default "linear" method, whose interpolation formula is
reproduced), up to the sign of a zero when -0.0 and 0.0 tie in the window (which of the two numpy's
partition puts first is not defined). Unfilled slots hold ``+inf``, above every band, so the window may grow from empty.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# cache: compiled once per machine, not per process; error_model numpy: IEEE division, no Python checks.
# Public: the dF/F kernels (decoder.dff) are compiled with the same options.
JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy")
_RECENTRE_BELOW = 2  # room (ranks) under which a frame without rebuilds re-centres the tightest band
# columns of the per-ROI integer state
_BELOW, _COUNT, _FORCE = 0, 1, 2
# columns of the per-ROI band bounds (keys: value, slot; slots stored as float64, exact below 2**53)
_LO_V, _LO_S, _HI_V, _HI_S = 0, 1, 2, 3


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


@njit(**JIT_OPTIONS)
def _lerp(a: float, b: float, gamma: float) -> float:
    """numpy's _lerp: a + (b - a)·g, or b - (b - a)·(1 - g) where g >= 0.5."""
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1.0 - gamma)
    return a + diff * gamma


@njit(**JIT_OPTIONS)
def _select(a: np.ndarray, lo: int, hi: int, kth: int) -> float:
    """Reorder ``a[lo:hi]`` so that ``a[kth]`` is its kth smallest, smaller left, larger right; return it.

    Hoare-partition quickselect (Wirth) with a median-of-three pivot: equal values stop both scans, so
    heavy ties cost no more than distinct values.
    """
    right = hi - 1
    left = lo
    while right > left:
        mid = (left + right) >> 1
        x, y, z = a[left], a[mid], a[right]
        if x > y:
            x, y = y, x
        if y > z:
            y = z
            if x > y:
                y = x
        pivot = y
        i, j = left, right
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if kth <= j:
            right = j
        elif kth >= i:
            left = i
        else:
            break
    return a[kth]


@njit(**JIT_OPTIONS)
def _lower_bound(band: np.ndarray, r: int, cnt: int, v: float, s: float) -> int:
    """First band position of row ``r`` whose key is >= (v, s)."""
    lo, hi = 0, cnt
    while lo < hi:
        mid = (lo + hi) >> 1
        bv = band[r, 0, mid]
        if bv < v or (bv == v and band[r, 1, mid] < s):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(**JIT_OPTIONS)
def _key_less(av: float, a_slot: float, bv: float, b_slot: float) -> bool:
    return av < bv or (av == bv and a_slot < b_slot)


@njit(**JIT_OPTIONS)
def _insert_sorted(buf_v: np.ndarray, buf_s: np.ndarray, n: int, v: float, s: float) -> None:
    """Insert key (v, s) into the ascending first ``n`` entries of a buffer with room for one more."""
    j = n
    while j > 0 and _key_less(v, s, buf_v[j - 1], buf_s[j - 1]):
        buf_v[j] = buf_v[j - 1]
        buf_s[j] = buf_s[j - 1]
        j -= 1
    buf_v[j] = v
    buf_s[j] = s


@njit(**JIT_OPTIONS)
def _set_band(band: np.ndarray, bounds: np.ndarray, state: np.ndarray, r: int, values: np.ndarray,
              slots: np.ndarray, width: int, below: int) -> None:
    for j in range(width):
        band[r, 0, j] = values[j]
        band[r, 1, j] = slots[j]
    state[r, _BELOW] = below
    state[r, _COUNT] = width
    state[r, _FORCE] = 0
    bounds[r, _LO_V] = values[0]
    bounds[r, _LO_S] = slots[0]
    bounds[r, _HI_V] = values[width - 1]
    bounds[r, _HI_S] = slots[width - 1]


@njit(**JIT_OPTIONS)
def _rebuild_full(ring: np.ndarray, band: np.ndarray, bounds: np.ndarray, state: np.ndarray,
                  scratch: np.ndarray, r: int, count: int, i_lo: int, i_hi: int) -> None:
    """Band of row ``r`` := its window's entries of ranks i_lo..i_hi, found by quickselect."""
    buf, gathered_v, gathered_s = scratch[0], scratch[1], scratch[2]
    row = ring[r]  # contiguous: a rebuild streams through one row
    for i in range(count):  # the ring fills slots 0, 1, ... first, so slots < count are the window
        buf[i] = row[i]
    v_hi = _select(buf, 0, count, i_hi)
    v_lo = _select(buf, 0, i_hi, i_lo) if i_lo < i_hi else v_hi
    # the entries with values in [v_lo, v_hi], in slot order; `smaller` entries have values below v_lo
    smaller = 0
    m = 0
    for i in range(count):
        v = row[i]
        if v < v_lo:
            smaller += 1
        elif v <= v_hi:
            gathered_v[m] = v
            gathered_s[m] = i
            m += 1
    order = np.argsort(gathered_v[:m], kind="mergesort")  # stable: ties stay in slot order, i.e. key order
    first = i_lo - smaller  # gathered entry j has rank smaller + j
    width = i_hi - i_lo + 1
    out_v, out_s = scratch[3], scratch[4]
    for j in range(width):
        at = order[first + j]
        out_v[j] = gathered_v[at]
        out_s[j] = gathered_s[at]
    _set_band(band, bounds, state, r, out_v, out_s, width, i_lo)


@njit(**JIT_OPTIONS)
def _rebuild(ring: np.ndarray, band: np.ndarray, bounds: np.ndarray, state: np.ndarray, scratch: np.ndarray,
             r: int, count: int, k: int, halfwidth: int) -> None:
    """Band of row ``r`` := the entries of ranks k - halfwidth .. k + 1 + halfwidth of its window.

    The band's own entries are exact ranks, so when the new rank interval overlaps it only the missing
    ranks at either end are fetched: one pass over the row keeps, in a small sorted buffer, the largest
    entries under the band and/or the smallest above it. Otherwise (a first build, an inconsistent band)
    the whole interval is selected afresh.
    """
    i_lo = max(k - halfwidth, 0)
    i_hi = min(k + 1 + halfwidth, count - 1)
    below = state[r, _BELOW]
    cnt = state[r, _COUNT]
    top = below + cnt - 1  # rank of the band's last entry
    if state[r, _FORCE] or cnt == 0 or i_lo > top or i_hi < below:
        _rebuild_full(ring, band, bounds, state, scratch, r, count, i_lo, i_hi)
        return
    need_left = below - i_lo  # ranks i_lo .. below-1: the largest entries under the band
    need_right = i_hi - top  # ranks top+1 .. i_hi: the smallest entries above it
    left_v, left_s, right_v, right_s = scratch[0], scratch[1], scratch[2], scratch[3]
    n_left = 0
    n_right = 0
    if need_left > 0 or need_right > 0:
        lo_v, lo_s = bounds[r, _LO_V], bounds[r, _LO_S]
        hi_v, hi_s = bounds[r, _HI_V], bounds[r, _HI_S]
        row = ring[r]
        for i in range(count):
            v = row[i]
            s = float(i)
            if need_left > 0 and _key_less(v, s, lo_v, lo_s):
                if n_left < need_left:
                    _insert_sorted(left_v, left_s, n_left, v, s)
                    n_left += 1
                elif _key_less(left_v[0], left_s[0], v, s):  # larger than the smallest kept: drop that one
                    for j in range(n_left - 1):
                        left_v[j] = left_v[j + 1]
                        left_s[j] = left_s[j + 1]
                    _insert_sorted(left_v, left_s, n_left - 1, v, s)
            elif need_right > 0 and _key_less(hi_v, hi_s, v, s):
                if n_right < need_right:
                    _insert_sorted(right_v, right_s, n_right, v, s)
                    n_right += 1
                elif _key_less(v, s, right_v[n_right - 1], right_s[n_right - 1]):  # drop the largest kept
                    _insert_sorted(right_v, right_s, n_right - 1, v, s)
    out_v, out_s = scratch[4], scratch[5]
    width = 0
    for j in range(n_left):
        out_v[width] = left_v[j]
        out_s[width] = left_s[j]
        width += 1
    for j in range(max(i_lo - below, 0), min(i_hi - below, cnt - 1) + 1):
        out_v[width] = band[r, 0, j]
        out_s[width] = band[r, 1, j]
        width += 1
    for j in range(n_right):
        out_v[width] = right_v[j]
        out_s[width] = right_s[j]
        width += 1
    _set_band(band, bounds, state, r, out_v, out_s, width, i_lo)


@njit(**JIT_OPTIONS)
def _push(ring: np.ndarray, x: np.ndarray, band: np.ndarray, bounds: np.ndarray, state: np.ndarray,
          value: np.ndarray, scratch: np.ndarray, slot: int, count: int, k: int, gamma: float,
          halfwidth: int) -> int:
    """Replace ring slot ``slot`` with ``x``, update the bands, write the percentile to ``value``.

    ``count``/``k``/``gamma``: the window size after this push and its percentile weights. Returns how
    many bands were rebuilt.
    """
    n = x.shape[0]
    capacity = band.shape[2]
    s = float(slot)
    for r in range(n):
        old = ring[r, slot]
        new = x[r]
        ring[r, slot] = new
        lo_v = bounds[r, _LO_V]
        lo_s = bounds[r, _LO_S]
        hi_v = bounds[r, _HI_V]
        hi_s = bounds[r, _HI_S]
        old_below = _key_less(old, s, lo_v, lo_s)
        new_below = _key_less(new, s, lo_v, lo_s)
        old_in = not old_below and not _key_less(hi_v, hi_s, old, s)
        new_in = not new_below and not _key_less(hi_v, hi_s, new, s)
        state[r, _BELOW] += int(new_below) - int(old_below)
        if old_in:
            cnt = state[r, _COUNT]
            j = _lower_bound(band, r, cnt, old, s)
            if j < cnt and band[r, 0, j] == old and band[r, 1, j] == s:
                for i in range(j, cnt - 1):
                    band[r, 0, i] = band[r, 0, i + 1]
                    band[r, 1, i] = band[r, 1, i + 1]
                state[r, _COUNT] = cnt - 1
            else:  # cannot happen while the band is consistent; if it does, rebuild rather than drift
                state[r, _FORCE] = 1
        if new_in:
            cnt = state[r, _COUNT]
            if cnt >= capacity:  # full: drop the end farther from rank k; the new entry may then fall outside
                if k - state[r, _BELOW] < cnt // 2:
                    cnt -= 1
                    bounds[r, _HI_V] = band[r, 0, cnt - 1]
                    bounds[r, _HI_S] = band[r, 1, cnt - 1]
                    new_in = not _key_less(band[r, 0, cnt - 1], band[r, 1, cnt - 1], new, s)
                else:
                    for i in range(cnt - 1):
                        band[r, 0, i] = band[r, 0, i + 1]
                        band[r, 1, i] = band[r, 1, i + 1]
                    cnt -= 1
                    state[r, _BELOW] += 1
                    bounds[r, _LO_V] = band[r, 0, 0]
                    bounds[r, _LO_S] = band[r, 1, 0]
                    if _key_less(new, s, band[r, 0, 0], band[r, 1, 0]):
                        new_in = False
                        state[r, _BELOW] += 1
                state[r, _COUNT] = cnt
            if new_in:
                j = _lower_bound(band, r, cnt, new, s)
                for i in range(cnt, j, -1):
                    band[r, 0, i] = band[r, 0, i - 1]
                    band[r, 1, i] = band[r, 1, i - 1]
                band[r, 0, j] = new
                band[r, 1, j] = s
                state[r, _COUNT] = cnt + 1

    need = 2 if gamma != 0.0 else 1
    rebuilt = 0
    tightest = -1
    tightest_room = count + 1
    for r in range(n):
        pos = k - state[r, _BELOW]
        cnt = state[r, _COUNT]
        if state[r, _FORCE] or pos < 0 or pos + need > cnt:
            _rebuild(ring, band, bounds, state, scratch, r, count, k, halfwidth)
            rebuilt += 1
            pos = k - state[r, _BELOW]
        else:
            room = min(pos, cnt - pos - need)
            if room < tightest_room:
                tightest_room = room
                tightest = r
        a = band[r, 0, pos]
        value[r] = a + 0.0 if need == 1 else _lerp(a, band[r, 0, pos + 1], gamma)  # + 0.0: numpy's -0.0 -> 0.0
    if rebuilt == 0 and tightest >= 0 and tightest_room < min(_RECENTRE_BELOW, halfwidth):
        # the value stays the same: the needed ranks are still in the band, it just gets more room
        _rebuild(ring, band, bounds, state, scratch, tightest, count, k, halfwidth)
        rebuilt += 1
    return rebuilt


@njit(**JIT_OPTIONS)
def _fill(ring: np.ndarray, band: np.ndarray, bounds: np.ndarray, state: np.ndarray, value: np.ndarray,
          scratch: np.ndarray, count: int, k: int, gamma: float, halfwidth: int) -> None:
    """Rebuild every band from the ring's first ``count`` slots and compute the percentile."""
    need = 2 if gamma != 0.0 else 1
    for r in range(value.shape[0]):
        _rebuild(ring, band, bounds, state, scratch, r, count, k, halfwidth)
        pos = k - state[r, _BELOW]
        a = band[r, 0, pos]
        value[r] = a + 0.0 if need == 1 else _lerp(a, band[r, 0, pos + 1], gamma)  # + 0.0: numpy's -0.0 -> 0.0


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
        # one row per series (a rebuild streams through one row), column = slot; oldest slot overwritten first
        self._ring = np.empty((n, window))
        self._band = np.empty((n, 2, band_capacity))  # [r, 0] sorted values, [r, 1] their slots
        self._bounds = np.empty((n, 4))  # lo value, lo slot, hi value, hi slot
        self._state = np.empty((n, 3), dtype=np.int64)  # below, count in band, rebuild forced
        self._scratch = np.empty((6, max(window, band_capacity)))  # a rebuild's workspace
        self._x = np.empty(n)  # float64 copy of an input of another dtype or layout
        self.value = np.empty(n)  # the current percentile; push() updates it in place
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
        # an empty band below everything: every entry ranks above it, so the first push rebuilds every band
        self._bounds.fill(-np.inf)
        self._bounds[:, _LO_S] = -1.0
        self._bounds[:, _HI_S] = -1.0
        self._state.fill(0)
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
        _fill(self._ring, self._band, self._bounds, self._state, self.value, self._scratch, m, k, gamma,
              self.halfwidth)
        self.rebuilds += self.n

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
        if not (isinstance(x, np.ndarray) and x.dtype == np.float64 and x.shape == (self.n,) and x.flags.c_contiguous):
            np.copyto(self._x, x)
            x = self._x
        slot = self._pushed % self.window
        self._count = count = min(self._count + 1, self.window)
        self._pushed += 1
        k, gamma = self._weights(count)
        self.rebuilds += _push(self._ring, x, self._band, self._bounds, self._state, self.value, self._scratch,
                               slot, count, k, gamma, self.halfwidth)
        return self.value


def compile_kernels() -> None:
    """Compile (or load from numba's on-disk cache) the running-percentile kernels now, not on the first frame."""
    running = RunningPercentile(1, 4, 10.0, band_capacity=4)
    for v in (1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 0.25):
        running.push(np.array([v]))
    running.fill(np.zeros((2, 1)))
