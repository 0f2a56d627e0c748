"""Field-of-view alignment between two sessions: estimate a similarity transform, move images and ROIs.

Why a pure module in ``acquisition``: ``rig align`` (rig/offline/align.py) runs it on files, the simulator
(:mod:`acquisition.sim.anatomy`) uses the same transform to move the tissue between simulated days, so the
ground truth and the estimate share one convention. Nothing here touches files or the bus.

Convention: :class:`Similarity` maps a point ``p = (y, x)`` of the PREVIOUS field of view to where the same
tissue appears TODAY::

    p' = c + scale * R(rotation) (p - c) + (dy, dx)        c = ((Ly - 1) / 2, (Lx - 1) / 2)

``rotation_deg > 0`` turns the content counter-clockwise on screen (y down, x right). ``(dy, dx)`` is the
shift of the content in pixels, as suite2p's ``yoff``/``xoff``: the content moved down by ``dy`` rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage, optimize


class AlignmentError(ValueError):
    """The two fields of view do not match (another field, wrong orientation or pixel size); says the numbers."""


@dataclass(frozen=True)
class Similarity:
    """Previous -> today: shift (px), rotation (degrees, counter-clockwise on screen), scale about ``center``."""

    dy: float = 0.0
    dx: float = 0.0
    rotation_deg: float = 0.0
    scale: float = 1.0
    center: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def about_center(cls, shape: tuple[int, int], dy: float = 0.0, dx: float = 0.0, rotation_deg: float = 0.0,
                     scale: float = 1.0) -> Similarity:
        """The transform about the centre of a ``shape`` field (the convention every caller uses)."""
        return cls(dy, dx, rotation_deg, scale, ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0))

    def _matrix(self) -> np.ndarray:
        t = math.radians(self.rotation_deg)
        c, s = math.cos(t), math.sin(t)
        return self.scale * np.array([[c, -s], [s, c]])  # acts on (y, x)

    def forward(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where previous-field points (y, x) appear today."""
        m = self._matrix()
        cy, cx = self.center
        vy, vx = np.asarray(y, np.float64) - cy, np.asarray(x, np.float64) - cx
        return cy + m[0, 0] * vy + m[0, 1] * vx + self.dy, cx + m[1, 0] * vy + m[1, 1] * vx + self.dx

    def inverse(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which previous-field points land on today's points (y, x)."""
        m = np.linalg.inv(self._matrix())
        cy, cx = self.center
        vy, vx = np.asarray(y, np.float64) - cy - self.dy, np.asarray(x, np.float64) - cx - self.dx
        return cy + m[0, 0] * vy + m[0, 1] * vx, cx + m[1, 0] * vy + m[1, 1] * vx

    def shifted_origin(self, offset: float) -> Similarity:
        """The same transform in coordinates offset by ``offset`` pixels (e.g. a canvas with a margin)."""
        return replace(self, center=(self.center[0] + offset, self.center[1] + offset))


def warp_image(img: np.ndarray, tf: Similarity, shape: tuple[int, int] | None = None, *, cval: float = np.nan,
               mode: str = "constant", order: int = 1) -> np.ndarray:
    """``img`` (previous field) as it appears today: ``out[p'] = img[tf.inverse(p')]``."""
    shape = img.shape if shape is None else shape
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    sy, sx = tf.inverse(yy, xx)
    return ndimage.map_coordinates(np.asarray(img, np.float64), [sy, sx], order=order, mode=mode,
                                   cval=cval).astype(np.float32)


@dataclass
class MovedRoi:
    """One ROI moved into today's field: pixels, weights, the soma mask when given, and what stayed in view."""

    ypix: np.ndarray
    xpix: np.ndarray
    lam: np.ndarray
    soma: np.ndarray | None
    in_view: float  # fraction of the ROI's weight that lands inside today's field of view


def warp_roi(ypix: np.ndarray, xpix: np.ndarray, lam: np.ndarray, tf: Similarity, shape: tuple[int, int],
             soma: np.ndarray | None = None, min_weight: float = 0.05) -> MovedRoi:
    """Resample a sparse footprint through ``tf`` (bilinear weights, nearest soma mask), clipped to ``shape``."""
    ypix, xpix = np.asarray(ypix, np.int64), np.asarray(xpix, np.int64)
    lam = np.asarray(lam, np.float64)
    empty = np.zeros(0, np.int32)
    if ypix.size == 0:
        return MovedRoi(empty, empty, np.zeros(0, np.float32), None if soma is None else np.zeros(0, bool), 0.0)
    y0, x0 = int(ypix.min()) - 1, int(xpix.min()) - 1
    patch = np.zeros((int(ypix.max()) - y0 + 2, int(xpix.max()) - x0 + 2))
    patch[ypix - y0, xpix - x0] = lam
    mask = None
    if soma is not None:
        mask = np.zeros(patch.shape)
        mask[ypix - y0, xpix - x0] = np.asarray(soma, bool)
    cy, cx = tf.forward(np.array([y0, y0, y0 + patch.shape[0], y0 + patch.shape[0]], np.float64),
                        np.array([x0, x0 + patch.shape[1], x0, x0 + patch.shape[1]], np.float64))
    ty0, ty1 = int(math.floor(cy.min())) - 1, int(math.ceil(cy.max())) + 2
    tx0, tx1 = int(math.floor(cx.min())) - 1, int(math.ceil(cx.max())) + 2
    yy, xx = np.mgrid[ty0:ty1, tx0:tx1]
    sy, sx = tf.inverse(yy, xx)
    w = ndimage.map_coordinates(patch, [sy - y0, sx - x0], order=1, mode="constant", cval=0.0)
    keep = w > min_weight * lam.max()
    total = float(w[keep].sum())
    inside = keep & (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    moved_soma = None
    if mask is not None:
        ms = ndimage.map_coordinates(mask, [sy - y0, sx - x0], order=0, mode="constant", cval=0.0) > 0.5
        moved_soma = ms[inside]
    return MovedRoi(yy[inside].astype(np.int32), xx[inside].astype(np.int32), w[inside].astype(np.float32),
                    moved_soma, float(w[inside].sum()) / total if total > 0 else 0.0)


def highpass(img: np.ndarray, sigma_bg: float = 8.0, sigma_smooth: float = 1.0) -> np.ndarray:
    """Band-pass an image for matching: remove shading (uneven illumination, bleaching), keep cells and texture."""
    img = np.nan_to_num(np.asarray(img, np.float64), nan=float(np.nanmean(img)))
    out = ndimage.gaussian_filter(img, sigma_smooth) - ndimage.gaussian_filter(img, sigma_bg)
    sd = out.std()
    return out / sd if sd > 0 else out


def masked_corr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of ``a`` and ``b`` over ``mask`` (and wherever both are finite)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        ok &= mask
    if ok.sum() < 16:
        return float("nan")
    va, vb = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float(va @ va) * float(vb @ vb))
    return float(va @ vb) / den if den > 0 else float("nan")


def phase_correlation(today: np.ndarray, moved: np.ndarray, max_shift: int) -> tuple[float, float, float]:
    """Integer shift (dy, dx) of ``moved``'s content that best matches ``today``, and the peak height."""
    win = np.outer(np.hanning(today.shape[0]), np.hanning(today.shape[1]))
    fa = np.fft.rfft2(np.nan_to_num(today) * win)
    fb = np.fft.rfft2(np.nan_to_num(moved) * win)
    cross = fa * np.conj(fb)
    cross /= np.abs(cross) + 1e-9
    cc = np.fft.irfft2(cross, s=today.shape)
    cc = np.fft.fftshift(cc)
    cy, cx = today.shape[0] // 2, today.shape[1] // 2
    sub = cc[cy - max_shift : cy + max_shift + 1, cx - max_shift : cx + max_shift + 1]
    iy, ix = np.unravel_index(int(np.argmax(sub)), sub.shape)
    return float(iy - max_shift), float(ix - max_shift), float(sub[iy, ix])


@dataclass
class Alignment:
    """The estimated transform and how well the two fields match after it."""

    transform: Similarity
    corr: float  # correlation of the band-passed images over their overlap, after the transform
    corr_unaligned: float  # the same without the transform (how much the alignment improved the match)
    overlap: float  # fraction of today's field covered by the moved previous field


def estimate_transform(previous: np.ndarray, today: np.ndarray, *, max_rotation_deg: float = 5.0,
                       max_shift_fraction: float = 0.25, allow_scale: bool = False,
                       min_corr: float = 0.3) -> Alignment:
    """Shift + rotation (+ scale) moving ``previous`` onto ``today``; raises :class:`AlignmentError` when they do
    not match (best correlation below ``min_corr``).

    A coarse search (rotations every 0.5 degree, phase correlation for the shift) then a Nelder-Mead refinement
    of the band-passed images' correlation: sub-pixel and sub-0.1-degree on cell-rich fields.
    """
    previous, today = np.asarray(previous, np.float64), np.asarray(today, np.float64)
    if previous.ndim != 2 or today.ndim != 2:
        raise AlignmentError(f"references must be 2-D images (got {previous.shape} and {today.shape})")
    if previous.shape != today.shape:
        raise AlignmentError(f"the previous reference is {previous.shape[0]}x{previous.shape[1]} px but today's is "
                             f"{today.shape[0]}x{today.shape[1]}: same zoom and frame size are needed")
    shape = today.shape
    hp_prev, hp_today = highpass(previous), highpass(today)
    max_shift = max(1, int(max_shift_fraction * min(shape)))
    best: tuple[float, float, float, float] | None = None
    n_angles = int(round(max_rotation_deg / 0.5))
    for k in range(-n_angles, n_angles + 1):
        angle = 0.5 * k
        moved = warp_image(hp_prev, Similarity.about_center(shape, rotation_deg=angle), cval=0.0)
        dy, dx, peak = phase_correlation(hp_today, moved, max_shift)
        if best is None or peak > best[0]:
            best = (peak, dy, dx, angle)
    assert best is not None
    crop = (slice(None, None, 2), slice(None, None, 2)) if min(shape) >= 256 else (slice(None), slice(None))

    def cost(p: np.ndarray) -> float:
        tf = Similarity.about_center(shape, p[0], p[1], p[2], math.exp(p[3]) if allow_scale else 1.0)
        c = masked_corr(warp_image(hp_prev, tf)[crop], hp_today[crop])
        return 1.0 - c if math.isfinite(c) else 2.0

    x0 = np.array([best[1], best[2], best[3], 0.0])
    simplex = np.array([x0, x0 + [0.7, 0, 0, 0], x0 + [0, 0.7, 0, 0], x0 + [0, 0, 0.4, 0], x0 + [0, 0, 0, 0.02]])
    if not allow_scale:
        simplex = simplex[:4, :]
        res = optimize.minimize(lambda p: cost(np.append(p, 0.0)), x0[:3], method="Nelder-Mead",
                                options={"initial_simplex": simplex[:, :3], "xatol": 0.01, "fatol": 1e-5})
        p = np.append(res.x, 0.0)
    else:
        res = optimize.minimize(cost, x0, method="Nelder-Mead",
                                options={"initial_simplex": simplex, "xatol": 0.005, "fatol": 1e-5})
        p = res.x
    tf = Similarity.about_center(shape, float(p[0]), float(p[1]), float(p[2]), math.exp(p[3]))
    moved = warp_image(hp_prev, tf)
    corr = masked_corr(moved, hp_today)
    overlap = float(np.isfinite(moved).mean())
    corr0 = masked_corr(hp_prev, hp_today)
    if not corr >= min_corr:
        raise AlignmentError(
            f"the two fields of view do not match: correlation {corr:.2f} after the best transform (shift "
            f"{tf.dy:+.1f}, {tf.dx:+.1f} px, rotation {tf.rotation_deg:+.2f} deg), {corr0:.2f} without it; the "
            f"same field on another day gives well above {min_corr:.2f}. Another field of view, another zoom "
            f"or a flipped image? Nothing was carried over")
    return Alignment(tf, corr, corr0, overlap)


def local_correlation(a: np.ndarray, b: np.ndarray, ypix: np.ndarray, xpix: np.ndarray, pad: int = 6) -> float:
    """Correlation of two (band-passed) images in the ROI's bounding box grown by ``pad`` pixels."""
    if len(ypix) == 0:
        return float("nan")
    y0, y1 = max(int(np.min(ypix)) - pad, 0), min(int(np.max(ypix)) + pad + 1, a.shape[0])
    x0, x1 = max(int(np.min(xpix)) - pad, 0), min(int(np.max(xpix)) + pad + 1, a.shape[1])
    return masked_corr(a[y0:y1, x0:x1], b[y0:y1, x0:x1])
