"""ROI masks as suite2p 1.1 builds them (``extraction/masks.py`` semantics, reimplemented without suite2p): which
pixels of the frame each ROI's F and Fneu average, and with what weights. acquisition.extraction reads them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter, percentile_filter

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def cell_pixel_map(stats: list[dict], Ly: int, Lx: int, lam_percentile: float = 50.0) -> np.ndarray:
    """Boolean (Ly, Lx) map of pixels that belong to some cell, kept out of neuropil masks."""
    lammap = np.zeros((Ly, Lx), np.float64)
    radii = []
    for stat in stats:
        ypix, xpix, lam = np.asarray(stat["ypix"]), np.asarray(stat["xpix"]), np.asarray(stat["lam"], float)
        np.maximum.at(lammap, (ypix, xpix), lam)
        radii.append(_radius(stat))
    if not stats:
        return np.zeros((Ly, Lx), bool)
    if lam_percentile > 0:
        size = max(int(np.median(radii) * 5), 1)
        filt = percentile_filter(lammap, percentile=lam_percentile, size=size)
        return ~((lammap < filt) | (lammap == 0))
    return lammap > 0


def _radius(stat: dict) -> float:
    if "radius" in stat:
        return float(stat["radius"])
    return math.sqrt(len(np.asarray(stat["ypix"])) / math.pi)  # older stat files lack it: area-equivalent


def cell_mask(stat: dict, Ly: int, Lx: int, allow_overlap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(flat pixel indices, weights summing to 1) of one ROI."""
    ypix, xpix = np.asarray(stat["ypix"], np.int64), np.asarray(stat["xpix"], np.int64)
    lam = np.asarray(stat["lam"], np.float64)
    if not allow_overlap and "overlap" in stat:
        keep = ~np.asarray(stat["overlap"], bool)
        ypix, xpix, lam = ypix[keep], xpix[keep], lam[keep]
    idx = ypix * Lx + xpix
    total = lam.sum()
    return idx, (lam / total if lam.size and total > 0 else np.zeros(0))


def smooth_cell_mask(idx: np.ndarray, w: np.ndarray, Ly: int, Lx: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(idx, w) spread by a Gaussian of ``sigma`` pixels (cut at 1e-3 of the peak weight), summing to 1."""
    if sigma <= 0 or idx.size == 0:
        return idx, w
    ys, xs = np.divmod(idx, Lx)
    r = int(math.ceil(3 * sigma)) + 1
    y0, x0 = max(int(ys.min()) - r, 0), max(int(xs.min()) - r, 0)
    y1, x1 = min(int(ys.max()) + r + 1, Ly), min(int(xs.max()) + r + 1, Lx)
    box = np.zeros((y1 - y0, x1 - x0))
    box[ys - y0, xs - x0] = w
    box = gaussian_filter(box, sigma, mode="constant")
    box[box < 1e-3 * box.max()] = 0.0
    my, mx = np.nonzero(box)
    vals = box[my, mx]
    return (my + y0) * Lx + (mx + x0), vals / vals.sum()


def neuropil_mask(stat: dict, valid: np.ndarray, valid_sat: np.ndarray, inner_neuropil_radius: int = 2,
                  min_neuropil_pixels: int = 350) -> np.ndarray:
    """Flat pixel indices of one ROI's neuropil mask (suite2p's rectangular growth).

    ``valid`` marks non-cell pixels; ``valid_sat`` is its summed-area table (for fast rectangle counts).
    """
    Ly, Lx = valid.shape
    ypix, xpix = np.asarray(stat["ypix"], np.int64), np.asarray(stat["xpix"], np.int64)
    r = inner_neuropil_radius
    y0, y1 = max(int(ypix.min()) - r, 0), min(int(ypix.max()) + r + 1, Ly)
    x0, x1 = max(int(xpix.min()) - r, 0), min(int(xpix.max()) + r + 1, Lx)
    ring = np.zeros((y1 - y0, x1 - x0), bool)
    ring[ypix - y0, xpix - x0] = True
    if r > 0:
        ring = binary_dilation(ring, _CROSS, iterations=r)
    ry, rx = np.nonzero(ring)
    ry += y0
    rx += x0
    n_ring = int(valid[ry, rx].sum())

    def count(a: int, b: int, c: int, d: int) -> int:  # valid pixels in rows [a, b), cols [c, d)
        return int(valid_sat[b, d] - valid_sat[a, d] - valid_sat[b, c] + valid_sat[a, c])

    # suite2p starts from the grown ROI itself, then replaces it by ever larger rectangles
    a, b, c, d = int(ry.min()), int(ry.max()) + 1, int(rx.min()), int(rx.max()) + 1
    n_valid = n_ring
    reps = 0
    grown = False
    while reps < 100 and n_valid - n_ring <= min_neuropil_pixels:
        reps += 1
        a, b, c, d = max(0, a - 5), min(Ly, b + 5), max(0, c - 5), min(Lx, d + 5)
        n_valid = count(a, b, c, d)
        grown = True
    if not grown:
        return np.zeros(0, np.int64)
    box = valid[a:b, c:d].copy()
    inside = (ry >= a) & (ry < b) & (rx >= c) & (rx < d)
    box[ry[inside] - a, rx[inside] - c] = False
    my, mx = np.nonzero(box)
    return (my + a) * Lx + (mx + c)
