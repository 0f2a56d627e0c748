"""Compiled per-frame kernels of the registration (acquisition.registration): loading, downsampling, the
cross-power spectrum. Each writes into a preallocated buffer; none allocates per frame.

Why compiled: numpy's strided uint16 -> float32 casts allocate a buffer per call, and its reductions over
complex spectra make temporaries. ``fastmath`` lets the float32 sums vectorise (the order of additions
changes, by ~1e-7 relative; a session and its replay run the same code, so they still agree bit for bit).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def halve(image: np.ndarray, t: np.ndarray, out: np.ndarray) -> None:
    """One [1, 3, 3, 1] stride-2 stage, rows into ``t`` then columns into ``out``, all in float32.

    Each output is ((a + b)·3 + previous) + next, edges replicated; a compiled loop because numpy's
    strided uint16 -> float32 casts allocated ~100 KB per frame and cost 0.4 ms at 512x512.
    """
    three = np.float32(3.0)
    Ly, Lx = image.shape
    h = out.shape[0]
    for i in range(h):
        r0 = 2 * i
        rp = r0 - 1 if i > 0 else 0
        rn = r0 + 2 if i < h - 1 else min(2 * h, Ly - 1)
        for j in range(Lx):
            v = (np.float32(image[r0, j]) + np.float32(image[r0 + 1, j])) * three
            v = v + np.float32(image[rp, j])
            t[i, j] = v + np.float32(image[rn, j])
    w = out.shape[1]
    for i in range(h):
        for j in range(w):
            c0 = 2 * j
            cp = c0 - 1 if j > 0 else 0
            cn = c0 + 2 if j < w - 1 else min(2 * w, Lx - 1)
            v = (t[i, c0] + t[i, c0 + 1]) * three
            v = v + t[i, cp]
            out[i, j] = v + t[i, cn]


@njit(cache=True, nogil=True, fastmath=True)
def weighted_energy(spec: np.ndarray, weight: np.ndarray) -> float:
    """sum(weight * |spec|^2) without a temporary array (float32 per row, float64 across rows)."""
    total = 0.0
    Ly, Lx = spec.shape
    for i in range(Ly):
        acc = np.float32(0.0)
        for j in range(Lx):
            v = spec[i, j]
            acc += weight[i, j] * (v.real * v.real + v.imag * v.imag)
        total += acc
    return total


@njit(cache=True, nogil=True, fastmath=True)
def scaled_product(spec: np.ndarray, other: np.ndarray, scale: np.float32) -> None:
    """spec *= other * scale, in place, in one pass (numpy needs two)."""
    Ly, Lx = spec.shape
    for i in range(Ly):
        for j in range(Lx):
            spec[i, j] = spec[i, j] * other[i, j] * scale


def load_crop(image: np.ndarray, y0: int, x0: int, taper_y: np.ndarray, taper_x: np.ndarray, mask_sum: float,
              out: np.ndarray) -> None:
    """out = (crop - m) * mask, crop = image[y0:, x0:] over out's shape, mask = float32(taper_y[i] * taper_x[j])
    (the taper is separable: two float64 vectors, not a crop-sized array to read per frame), m = the crop's
    mask-weighted mean (``mask_sum`` = the mask's sum, precomputed); float32: out = crop * mask, then
    out -= m * mask (the frame's pixels are converted once).

    Two kernels, so that the numbers do not depend on the frame's memory order: the first is elementwise (each
    value the same whatever order the pixels sit in: a CLOOSE frame is registered straight from its column-major
    bytes, a replay of it from row order), and the sum, whose order of additions the compiler may change, always
    runs on ``out``, row-major float32, in the one compiled loop.
    """
    if image.flags.f_contiguous and not image.flags.c_contiguous:
        masked_crop_by_strips(image, y0, x0, taper_y, taper_x, out)
    else:
        masked_crop(image, y0, x0, taper_y, taper_x, out)
    subtract_weighted_mean(out, taper_y, taper_x, mask_sum)


@njit(cache=True, nogil=True)
def masked_crop(image: np.ndarray, y0: int, x0: int, taper_y: np.ndarray, taper_x: np.ndarray,
                out: np.ndarray) -> None:
    """out = image[y0:, x0:] (over out's shape) * float32(taper_y[i] * taper_x[j]), in float32: each mask value
    the float64 product rounded once, as ``spatial_taper_mask`` stores it."""
    Ly, Lx = out.shape
    for i in range(Ly):
        ty = taper_y[i]
        for j in range(Lx):
            out[i, j] = np.float32(image[y0 + i, x0 + j]) * np.float32(ty * taper_x[j])


_STRIP = 16


@njit(cache=True, nogil=True)
def masked_crop_by_strips(image: np.ndarray, y0: int, x0: int, taper_y: np.ndarray, taper_x: np.ndarray,
                          out: np.ndarray) -> None:
    """:func:`masked_crop` for a column-major ``image``, the same values: row by row within strips of 16
    columns, so that the 16 columns' cache lines serve 32 rows each before they leave L1 (a whole crop row
    touches 384 of them). With the mean's pass, 384 px: ~140 against ~250 us back to back, ~450 against ~470
    after a pause (benchmarks/bench_frame_checks.py)."""
    Ly, Lx = out.shape
    full = Lx - Lx % _STRIP
    for j0 in range(0, full, _STRIP):
        for i in range(Ly):
            ty = taper_y[i]
            for k in range(_STRIP):
                out[i, j0 + k] = np.float32(image[y0 + i, x0 + j0 + k]) * np.float32(ty * taper_x[j0 + k])
    for i in range(Ly):
        ty = taper_y[i]
        for j in range(full, Lx):
            out[i, j] = np.float32(image[y0 + i, x0 + j]) * np.float32(ty * taper_x[j])


@njit(cache=True, nogil=True, fastmath=True)
def subtract_weighted_mean(out: np.ndarray, taper_y: np.ndarray, taper_x: np.ndarray, mask_sum: float) -> None:
    """out -= m * mask, m = sum(out) / mask_sum (float32 per row, float64 across rows), mask as in
    :func:`masked_crop`."""
    Ly, Lx = out.shape
    total = 0.0
    for i in range(Ly):
        acc = np.float32(0.0)
        for j in range(Lx):
            acc += out[i, j]
        total += acc
    m = np.float32(total / mask_sum)
    for i in range(Ly):
        ty = taper_y[i]
        for j in range(Lx):
            out[i, j] -= m * np.float32(ty * taper_x[j])


@njit(cache=True, nogil=True, fastmath=True)
def band_product(spec: np.ndarray, other: np.ndarray, scale: np.float32, low_rows: int, band: np.ndarray) -> None:
    """band = spec * other * scale over the band, compact; ``spec`` is only read, ``other`` is compact too.

    The band: columns below ``band.shape[1]``; rows below ``low_rows`` and the last ``band.shape[0] - low_rows``
    rows of ``spec`` (the low positive and negative frequencies of an rfft2 half spectrum). Only the band is
    touched: the spectrum is not written back, which cut the fine stage's memory traffic after its FFT.
    """
    Ly = spec.shape[0]
    n_rows, n_cols = band.shape
    high_start = Ly - (n_rows - low_rows)
    for k in range(n_rows):
        i = k if k < low_rows else high_start + k - low_rows
        for j in range(n_cols):
            band[k, j] = spec[i, j] * other[k, j] * scale
