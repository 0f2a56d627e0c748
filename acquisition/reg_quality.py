"""Helpers of :class:`acquisition.registration.RigidRegistrar` that judge its inputs and outputs: a
reference's zero-filled border, and the session-relative LOW_CORR rule (see docs/REGISTRATION.md)."""

from __future__ import annotations

import math

import numpy as np


def fill_constant_border(ref: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Copy of ``ref`` whose constant edge rows/columns (a registered mean's zero-filled ``yrange``/``xrange``
    border) hold the interior mean instead, and the interior as (y0, y1, x0, x1).

    A zero border is a sharp edge the frames do not have; left in, the phase correlation locks onto it.
    """
    ref = np.array(ref, dtype=np.float32)
    Ly, Lx = ref.shape
    y0, y1, x0, x1 = 0, Ly, 0, Lx
    while y1 - y0 > 16 and np.ptp(ref[y0, x0:x1]) == 0:
        y0 += 1
    while y1 - y0 > 16 and np.ptp(ref[y1 - 1, x0:x1]) == 0:
        y1 -= 1
    while x1 - x0 > 16 and np.ptp(ref[y0:y1, x0]) == 0:
        x0 += 1
    while x1 - x0 > 16 and np.ptp(ref[y0:y1, x1 - 1]) == 0:
        x1 -= 1
    if (y0, y1, x0, x1) != (0, Ly, 0, Lx):
        inner = float(ref[y0:y1, x0:x1].mean())
        filled = np.full_like(ref, inner)
        filled[y0:y1, x0:x1] = ref[y0:y1, x0:x1]
        ref = filled
    return ref, (y0, y1, x0, x1)


class CorrBaseline:
    """LOW_CORR judged against the session's own quality distribution, not one constant for every rig.

    The last ``n_frames`` correlations of good frames give a robust centre and spread (median, 1.4826 x MAD),
    recomputed every ``n_frames // 4`` frames so slow changes (bleaching, drift) move the baseline while a
    sudden drop does not; a frame whose robust z-score is below ``-z`` is LOW_CORR. Until the first
    ``n_frames`` good frames only the registrar's absolute floor applies (z is NaN).
    """

    def __init__(self, n_frames: int = 100, z: float = 5.0) -> None:
        if n_frames < 10:
            raise ValueError("`n_frames`: need at least 10 frames for a robust baseline")
        if not z > 0:
            raise ValueError("`z`: must be > 0")
        self.n_frames = n_frames
        self.z = float(z)
        self._ring = np.empty(n_frames, np.float64)
        self._n = 0  # good frames seen
        self.median = math.nan
        self.spread = math.nan

    @property
    def ready(self) -> bool:
        return self._n >= self.n_frames

    def score(self, corr: float) -> float:
        """Robust z-score of ``corr`` against the baseline (NaN until it is ready)."""
        return (corr - self.median) / self.spread if self.ready else math.nan

    def add(self, corr: float) -> None:
        """Feed the correlation of a frame judged good."""
        if not math.isfinite(corr):
            return
        self._ring[self._n % self.n_frames] = corr
        self._n += 1
        if self._n == self.n_frames or (self.ready and self._n % max(self.n_frames // 4, 1) == 0):
            self.median = float(np.median(self._ring))
            mad = float(np.median(np.abs(self._ring - self.median)))
            self.spread = max(1.4826 * mad, 1e-3 * abs(self.median), 1e-6)
