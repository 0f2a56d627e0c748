"""Cursor decoders: per-ROI dF/F (or z-score) -> "up" and "down" drives -> cursor = up - down.

All three published forms are one linear read-out over the decoder's ROIs:
  one_population  up = mean(s[up]), down = 0                               (CLOOSE 1-population)
  two_population  up = mean(s[up]), down = mean(s[down])                   (CLOOSE, HoloBMI E2 - E1)
  weighted        up = Σ w·s over w > 0, down = Σ |w|·s over w < 0         (a weight per ROI)
``s`` is the dF/F of the ROI, z-scored with baseline statistics when ``zscore`` is on, and clipped to
[-cell_cap, cell_cap] when a cap is set (HoloBMI: one cell cannot drive a hit alone). The cursor is
smoothed by a running mean over ``smoothing_frames`` frames (:class:`RunningMean`).
:class:`LinearDecoder` implements :class:`decoder.registry.Decoder` for the three registry entries; which
form it computes follows from the entry's capabilities (``uses_weights``, ``reads_down``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from decoder.registry import DECODERS, check_ensembles, decoder_kind


@njit(cache=True, nogil=True, error_model="numpy")
def _decode_row(dff: np.ndarray, rois: np.ndarray, w_up: np.ndarray, w_down: np.ndarray, mean: np.ndarray,
                std: np.ndarray, zscore: bool, cap: float) -> tuple[float, float]:
    """(up, down) from one frame: one loop over the decoder's ROIs, sums in ROI order (see LinearDecoder)."""
    up = 0.0
    down = 0.0
    for j in range(rois.shape[0]):
        s = dff[rois[j]]
        if zscore:
            s = (s - mean[j]) / std[j]
        if cap > 0.0:  # as np.clip: a NaN stays NaN
            if s > cap:
                s = cap
            elif s < -cap:
                s = -cap
        up += w_up[j] * s
        down += w_down[j] * s
    return up, down


@njit(cache=True, nogil=True, error_model="numpy")
def _decode_rows(dff: np.ndarray, rois: np.ndarray, w_up: np.ndarray, w_down: np.ndarray, mean: np.ndarray,
                 std: np.ndarray, zscore: bool, cap: float, up: np.ndarray, down: np.ndarray) -> None:
    for t in range(dff.shape[0]):
        up[t], down[t] = _decode_row(dff[t], rois, w_up, w_down, mean, std, zscore, cap)


class LinearDecoder:
    """up/down drives from one frame of dF/F; preallocated, no per-frame allocation."""

    def __init__(self, kind: str, n_rois: int, *, zscore: bool = False, cell_cap: float = 0.0) -> None:
        spec = decoder_kind(kind)
        self.kind = kind
        self.uses_weights = spec.uses_weights
        self._reads_down = spec.reads_down
        self.n_rois = n_rois
        self.zscore = zscore
        self.cell_cap = float(cell_cap)
        self.up: list[int] = []
        self.down: list[int] = []
        self.weights = np.zeros(n_rois)
        self._mean = np.zeros(n_rois)
        self._std = np.ones(n_rois)
        self._set_rois(np.zeros(0, dtype=np.intp), np.zeros(0), np.zeros(0))

    @property
    def ready(self) -> bool:
        """Has the ensembles (or weights) its kind needs."""
        if self.uses_weights:
            return bool(np.any(self.weights != 0))
        return bool(self.up) and (bool(self.down) or not self._reads_down)

    @property
    def rois(self) -> np.ndarray:
        """The ROIs the cursor reads, ascending."""
        return self._rois

    def set_ensembles(self, up: Sequence[int], down: Sequence[int]) -> None:
        up, down = check_ensembles(self.kind, self.n_rois, up, down)
        self.up, self.down = up, down
        if self.uses_weights:
            weights = np.zeros(self.n_rois)
            weights[up] = 1.0
            weights[down] = -1.0
            self.set_weights(weights)
            return
        rois = np.array(sorted(up + down), dtype=np.intp)
        w_up = np.array([1.0 / len(up) if i in up else 0.0 for i in rois])
        w_down = np.array([1.0 / len(down) if i in down else 0.0 for i in rois])
        self._set_rois(rois, w_up, w_down)

    def set_weights(self, weights: Sequence[float] | np.ndarray) -> None:
        """Weighted decoder: one weight per ROI (positive pushes the cursor up); the ensembles follow."""
        if not self.uses_weights:
            users = " or ".join(name for name, spec in DECODERS.items() if spec.uses_weights)
            raise ValueError(f"`weights`: the {self.kind} decoder has no weights (use the {users} decoder)")
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (self.n_rois,):
            raise ValueError(f"`weights`: expected {self.n_rois} weights (one per ROI), got shape {weights.shape}")
        if not np.isfinite(weights).all():
            raise ValueError("`weights`: must be finite")
        self.weights = weights.copy()
        rois = np.flatnonzero(weights)
        self.up = [int(i) for i in rois if weights[i] > 0]
        self.down = [int(i) for i in rois if weights[i] < 0]
        w = weights[rois]
        self._set_rois(rois.astype(np.intp), np.where(w > 0, w, 0.0), np.where(w < 0, -w, 0.0))

    def set_zscore_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Baseline dF/F mean and standard deviation per ROI (all ROIs), used when ``zscore`` is on."""
        mean = np.asarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        if mean.shape != (self.n_rois,) or std.shape != (self.n_rois,):
            raise ValueError(f"`dff_mean`/`dff_std`: expected {self.n_rois} values each")
        self._mean = mean.copy()
        self._std = std.copy()
        self._mean_sub = self._mean[self._rois]
        self._std_sub = self._std[self._rois]

    def _set_rois(self, rois: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> None:
        self._rois = rois
        self._w_up = np.ascontiguousarray(w_up, dtype=np.float64)
        self._w_down = np.ascontiguousarray(w_down, dtype=np.float64)
        self._mean_sub = self._mean[rois]
        self._std_sub = self._std[rois]

    def decode(self, dff: np.ndarray) -> tuple[float, float]:
        """(up, down) drives for one frame of dF/F (all ROIs)."""
        return _decode_row(dff, self._rois, self._w_up, self._w_down, self._mean_sub, self._std_sub, self.zscore,
                           self.cell_cap)

    def clone(self) -> LinearDecoder:
        """Same kind, settings and ensembles/weights; z-score statistics and all state of its own."""
        other = LinearDecoder(self.kind, self.n_rois, zscore=self.zscore, cell_cap=self.cell_cap)
        if self.uses_weights:
            other.set_weights(self.weights)
        else:
            other.set_ensembles(self.up, self.down)
        return other

    def warm_up(self) -> None:
        """Compile the decode kernels at configure time: a first compile takes seconds."""
        compile_kernels()

    def decode_frames(self, dff: np.ndarray, *, rois_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) for every row of ``dff`` (frames × n_rois), with the same compiled arithmetic as
        :meth:`decode`, so a recording decodes to exactly the values the live decoder would produce.

        ``rois_only``: ``dff`` holds only the columns of :attr:`rois`, in that order (calibration computes
        dF/F for the decoder's ROIs alone).
        """
        dff = np.ascontiguousarray(dff, dtype=np.float64)
        columns = np.arange(len(self._rois), dtype=np.intp) if rois_only else self._rois
        if dff.ndim != 2 or dff.shape[1] != (len(columns) if rois_only else self.n_rois):
            raise ValueError(f"`dff`: expected (frames, {len(columns) if rois_only else self.n_rois}), got {dff.shape}")
        up = np.empty(dff.shape[0])
        down = np.empty(dff.shape[0])
        _decode_rows(dff, columns, self._w_up, self._w_down, self._mean_sub, self._std_sub, self.zscore,
                     self.cell_cap, up, down)
        return up, down


def compile_kernels() -> None:
    """Compile (or load from numba's on-disk cache) the decode kernels now, not on the first live frame."""
    for zscore, cap in ((False, 0.0), (True, 1.0)):
        probe = LinearDecoder("two_population", 2, zscore=zscore, cell_cap=cap)
        probe.set_ensembles([0], [1])
        probe.decode(np.zeros(2))
        probe.decode_frames(np.zeros((2, 2)))
        probe.decode_frames(np.zeros((2, 2)), rois_only=True)
    RunningMean(2).smooth_frames(np.zeros(3), np.zeros(3))


class RunningMean:
    """Mean of the last ``n`` frames' (up, down), skipping frames that had no value (gaps, bad input).

    After a gap of ``n`` or more frames the mean restarts from the next valid frame. Scalar arithmetic
    in a fixed order, so the live engine and offline calibration agree bit for bit.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"`smoothing_frames`: must be >= 1, got {n}")
        self.n = n
        self._up = [0.0] * n
        self._down = [0.0] * n
        self._valid = [False] * n
        self._pos = 0

    def reset(self) -> None:
        self._valid = [False] * self.n
        self._pos = 0

    def push(self, up: float, down: float) -> tuple[float, float]:
        """Add one frame; return the smoothed (up, down)."""
        pos = self._pos
        self._up[pos] = up
        self._down[pos] = down
        self._valid[pos] = True
        self._pos = (pos + 1) % self.n
        return self.mean()

    def push_missing(self, frames: int = 1) -> None:
        """Frames without a value: they occupy the window but do not enter the mean."""
        for _ in range(min(frames, self.n)):
            self._valid[self._pos] = False
            self._pos = (self._pos + 1) % self.n

    def mean(self) -> tuple[float, float]:
        s_up = s_down = 0.0
        count = 0
        # oldest to newest, a fixed order
        for i in range(self.n):
            j = (self._pos + i) % self.n
            if self._valid[j]:
                s_up += self._up[j]
                s_down += self._down[j]
                count += 1
        if count == 0:
            return math.nan, math.nan
        return s_up / count, s_down / count

    def smooth_frames(self, up: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed copies of whole traces, starting from an empty window (does not touch this object).

        Compiled (:func:`_smooth_rows`): :meth:`push` and :meth:`mean` per frame, in the same order."""
        up = np.ascontiguousarray(up, dtype=np.float64)
        down = np.ascontiguousarray(down, dtype=np.float64)
        if up.shape != down.shape or up.ndim != 1:
            raise ValueError(f"`up`/`down`: expected two 1-D traces of one length, got {up.shape} and {down.shape}")
        out_up = np.empty(len(up))
        out_down = np.empty(len(down))
        _smooth_rows(up, down, self.n, out_up, out_down)
        return out_up, out_down


@njit(cache=True, nogil=True, error_model="numpy")
def _smooth_rows(up: np.ndarray, down: np.ndarray, n: int, out_up: np.ndarray, out_down: np.ndarray) -> None:
    """RunningMean.push + mean over whole traces from an empty window: each frame the mean of the last ``n``
    (fewer at the start), summed oldest to newest as :meth:`RunningMean.mean` sums them."""
    for t in range(up.shape[0]):
        first = t - n + 1 if t >= n else 0
        s_up = 0.0
        s_down = 0.0
        for k in range(first, t + 1):
            s_up += up[k]
            s_down += down[k]
        count = t + 1 - first
        out_up[t] = s_up / count
        out_down[t] = s_down / count
