"""dF/F per ROI: neuropil correction, F0 a running low percentile (:mod:`decoder.percentile`), and the
same arithmetic for whole recordings (calibration, offline tools), so offline results match the live
tracker bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from decoder.percentile import JIT_OPTIONS, RunningPercentile
from decoder.percentile import compile_kernels as compile_percentile_kernels


@njit(**JIT_OPTIONS)
def _correct(F: np.ndarray, Fneu: np.ndarray, coef: float, out: np.ndarray) -> bool:
    """out = F - coef·Fneu in float64 (numpy's arithmetic: each input cast first); True if all finite."""
    n = out.shape[0]
    if F.shape[0] != n or Fneu.shape[0] != n:
        raise ValueError("F/Fneu: expected one value per ROI")
    finite = True
    for i in range(n):
        v = np.float64(F[i]) - np.float64(Fneu[i]) * coef
        out[i] = v
        finite &= v - v == 0.0  # False for NaN and ±inf
    return finite


@njit(**JIT_OPTIONS)
def _dff(corrected: np.ndarray, f0: np.ndarray, f0_floor: float, out: np.ndarray) -> None:
    """out = (corrected - f0) / max(f0, f0_floor), as np.maximum does it (a NaN F0 stays NaN)."""
    for i in range(out.shape[0]):
        f = f0[i]
        out[i] = (corrected[i] - f) / (f if not f < f0_floor else f0_floor)


def compile_kernels() -> None:
    """Compile (or load from numba's on-disk cache) the dF/F kernels now, not on the first live frame."""
    compile_percentile_kernels()
    out = np.empty(1)
    for dtype in (np.float32, np.float64):  # the input dtypes extraction sends
        _correct(np.ones(1, dtype=dtype), np.ones(1, dtype=dtype), 0.7, out)
    _dff(out, out, 1.0, out)
    baseline_dff_stats(np.ones((3, 1)), np.ones((3, 1)), 2, 10.0, 0.5)


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

    @property
    def window(self) -> int:
        return self.running.window

    @property
    def frames_in_window(self) -> int:
        return self.running.count

    def correct(self, F: np.ndarray, Fneu: np.ndarray) -> bool:
        """Fill ``corrected`` from one frame; False (and nothing else changed) if it is not all finite."""
        return _correct(F, Fneu, self.neuropil_coef, self.corrected)

    def update(self) -> np.ndarray:
        """Push ``corrected`` (from :meth:`correct`) into the F0 window and compute dF/F (a view)."""
        self.running.push(self.corrected)
        self._dff_from_f0()
        return self.dff

    def hold(self) -> np.ndarray:
        """dF/F of ``corrected`` against the current F0, without pushing the frame into the F0 window."""
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
        _dff(self.corrected, self.f0, self.f0_floor, self.dff)


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


@njit(**JIT_OPTIONS)
def _dff_stats(corrected: np.ndarray, live_f0: np.ndarray, head: int, head_f0: np.ndarray, f0_floor: float,
               mean: np.ndarray, std: np.ndarray) -> None:
    n, rois = corrected.shape
    for r in range(rois):
        mean[r] = 0.0
        std[r] = 0.0
    for t in range(n):
        f0 = head_f0 if t < head else live_f0[t]
        for r in range(rois):
            f = f0[r]
            mean[r] += (corrected[t, r] - f) / (f if not f < f0_floor else f0_floor)
    for r in range(rois):
        mean[r] /= n
    for t in range(n):  # two passes: no cancellation in the variance
        f0 = head_f0 if t < head else live_f0[t]
        for r in range(rois):
            f = f0[r]
            d = (corrected[t, r] - f) / (f if not f < f0_floor else f0_floor) - mean[r]
            std[r] += d * d
    for r in range(rois):
        std[r] = math.sqrt(std[r] / n)


def baseline_dff_stats(corrected: np.ndarray, live_f0: np.ndarray, window: int, percentile: float,
                       f0_floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation over a baseline of each ROI's dF/F (with :func:`baseline_f0`), and F0
    at its last frame, without materialising the frames × ROIs dF/F (a 15-min baseline of 500 ROIs is
    108 MB per array: allocating those stalled the decoder for a second)."""
    corrected = np.ascontiguousarray(corrected, dtype=np.float64)
    live_f0 = np.ascontiguousarray(live_f0, dtype=np.float64)
    if corrected.ndim != 2 or corrected.shape != live_f0.shape or corrected.shape[0] < 1:
        raise ValueError(f"`corrected`/`live_f0`: expected two (frames >= 1, n_rois) arrays of one shape, got "
                         f"{corrected.shape} and {live_f0.shape}")
    n = corrected.shape[0]
    head = min(window, n)
    head_f0 = np.percentile(corrected[:head], percentile, axis=0)
    mean = np.empty(corrected.shape[1])
    std = np.empty(corrected.shape[1])
    _dff_stats(corrected, live_f0, head, head_f0, float(f0_floor), mean, std)
    last_f0 = head_f0 if n <= head else live_f0[n - 1].copy()
    return mean, std, last_f0


def dff_from(corrected: np.ndarray, f0: np.ndarray, f0_floor: float) -> np.ndarray:
    """dF/F with the same arithmetic as the live tracker."""
    return (corrected - f0) / np.maximum(f0, f0_floor)
