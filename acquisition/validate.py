"""Per-frame quality flags and the cheap checks that set them.

Every frame that reaches the pipeline gets a :class:`FrameFlag` word. Flags are counted and published;
a flagged frame is never silently treated as good. Flags in :data:`UNUSABLE` mean the pixels cannot be
turned into fluorescence (F and Fneu are NaN for that frame); the others mark a frame that was processed
but should be treated with suspicion (e.g. the decoder may hold its last value).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from rig.core.codes import FrameFlag  # the wire contract (decoder reads it too); re-exported here

#: Flags for which the pixels are not turned into fluorescence (F = Fneu = NaN).
UNUSABLE = FrameFlag.WRONG_SHAPE | FrameFlag.WRONG_DTYPE | FrameFlag.ALL_ZERO | FrameFlag.NAN

#: Pixel dtypes the pipeline converts to float32 without loss of meaning.
SUPPORTED_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32",
                                                   "float32", "float64"))


def flag_names(flags: int) -> list[str]:
    """Names of the set bits, e.g. ``["ALL_ZERO"]``; for warnings and reports."""
    return [f.name for f in FrameFlag if f and (flags & f) and f.name is not None]


def default_saturation_level(dtype: np.dtype) -> float:
    """The pixel value a detector saturates at, by dtype; +inf for float images (no natural ceiling)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max)
    return float("inf")


_ROW_STEP = 4


class FrameValidator:
    """Cheap per-frame checks: shape, dtype, all-zero, saturation, NaN.

    Integer frames are checked on every 4th row (~12 us for 512x512 uint16 back to back), their maximum and
    saturated-pixel count in the same pass; the whole frame is read only to confirm an all-zero sample.
    """

    def __init__(self, shape: tuple[int, int], *, saturation_level: float = 0.0,
                 max_saturated_fraction: float = 0.01) -> None:
        if len(shape) != 2 or min(shape) <= 0:
            raise ValueError(f"`shape`: must be (Ly, Lx) with positive sizes, got {shape!r}")
        if not 0.0 <= max_saturated_fraction <= 1.0:
            raise ValueError("`max_saturated_fraction`: must be within [0, 1]")
        if saturation_level < 0:
            raise ValueError("`saturation_level`: must be >= 0 (0 = the dtype's maximum)")
        self.shape = (int(shape[0]), int(shape[1]))
        self._saturation_level = float(saturation_level)
        self._max_saturated = int(max_saturated_fraction * self.shape[0] * self.shape[1])

    def saturation_level(self, dtype: np.dtype) -> float:
        return self._saturation_level if self._saturation_level > 0 else default_saturation_level(dtype)

    def check(self, data: np.ndarray) -> FrameFlag:
        """Return the flags for ``data``; never raises for bad content."""
        if not isinstance(data, np.ndarray) or data.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
            return FrameFlag.WRONG_DTYPE
        if data.shape != self.shape:
            return FrameFlag.WRONG_SHAPE
        if data.dtype.kind == "f":  # NaN can sit in any pixel: look at all of them
            vmax, vmin = data.max(), data.min()
            if not (np.isfinite(vmax) and np.isfinite(vmin)):  # max/min propagate NaN
                return FrameFlag.NAN
            if vmax == 0 and vmin == 0:
                return FrameFlag.ALL_ZERO
            sample = data
        else:
            # integer frames: every 4th row is enough to estimate the saturated fraction; an all-zero
            # sample is confirmed on the whole frame. The maximum and the count at the level are taken in one
            # compiled pass, in the frame's memory order (benchmarks/bench_frame_checks.py: 190-215 against
            # 255-300 us after a pause for numpy's two); numpy's pass for a byte-swapped frame.
            step = _ROW_STEP if data.shape[0] >= 4 * _ROW_STEP else 1
            level = self.saturation_level(data.dtype)
            if data.dtype.isnative:
                by_columns = data.flags.f_contiguous and not data.flags.c_contiguous
                vmax, at_level = (sampled_max_by_columns if by_columns else sampled_max)(data, step, level)
            else:
                sample = data[::step]
                vmax = sample.max()
                at_level = np.count_nonzero(sample >= level) if vmax >= level else 0
            if vmax == 0 and not data.any():
                return FrameFlag.ALL_ZERO
            if vmax >= level and at_level > self._max_saturated * ((data.shape[0] + step - 1) // step) / data.shape[0]:
                return FrameFlag.SATURATED
            return FrameFlag.NONE
        level = self.saturation_level(data.dtype)
        if vmax >= level and np.count_nonzero(sample >= level) > self._max_saturated * sample.size / data.size:
            return FrameFlag.SATURATED
        return FrameFlag.NONE


@njit(cache=True, nogil=True)
def sampled_max(data: np.ndarray, step: int, level: float) -> tuple[int, int]:
    """The maximum of every ``step``-th row and how many of those pixels reach ``level``, in one pass."""
    vmax = data[0, 0]
    n = 0
    for i in range(0, data.shape[0], step):
        for j in range(data.shape[1]):
            v = data[i, j]
            vmax = max(vmax, v)
            n += v >= level
    return vmax, n


@njit(cache=True, nogil=True)
def sampled_max_by_columns(data: np.ndarray, step: int, level: float) -> tuple[int, int]:
    """:func:`sampled_max` for a column-major frame (column by column: its cache lines are read in order)."""
    vmax = data[0, 0]
    n = 0
    for j in range(data.shape[1]):
        for i in range(0, data.shape[0], step):
            v = data[i, j]
            vmax = max(vmax, v)
            n += v >= level
    return vmax, n
