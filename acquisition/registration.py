"""Online rigid registration: whitened phase correlation against a reference, fast enough for every frame.

Shift convention (used everywhere in bci-rig, and the same as suite2p's ``yoff``/``xoff``):
``(dy, dx)`` is the displacement of the frame's content relative to the reference, i.e.
``frame[y, x] ~= ref[y - dy, x - dx]``. A structure that sits at ``(y, x)`` in the reference is found at
``(y + dy, x + dx)`` in the frame; to align the frame to the reference, move it by ``(-dy, -dx)``.

How (see docs/REGISTRATION.md): a full-resolution 512x512 phase correlation costs ~4-6 ms here, over the
real-time budget. So the whole frame is downsampled with an anti-aliasing filter (4x for 512 px frames), the
phase correlation (whitened, tapered, smoothed as suite2p does) runs on that, and the subpixel peak is then
evaluated directly from the cross-power spectrum with a small matrix DFT around the integer peak, so the
coarse grid costs little accuracy (~0.08 px RMS at 4x, ~0.04 px at 2x on synthetic movies).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft
from numba import njit

# scipy.fft's own pocketfft binding: the public rfft2/irfft2 have no ``out=`` and allocate a result per call;
# this binding writes into our preallocated buffers and skips ~10 us of wrapper per transform (numpy>=2's
# ``np.fft.rfft2(out=)`` is slower than either). tests/test_acq_registration.py checks it against scipy.fft.
from scipy.fft._pocketfft import pypocketfft as _pocketfft

from acquisition.validate import FrameFlag

_EPS = 1e-5


def spatial_taper_mask(slope: float, Ly: int, Lx: int) -> np.ndarray:
    """Sigmoid edge mask (1 inside, 0 at the border) with suite2p's parameterisation of ``spatial_taper``."""
    y = np.abs(np.arange(Ly, dtype=np.float64) - (Ly - 1) / 2)
    x = np.abs(np.arange(Lx, dtype=np.float64) - (Lx - 1) / 2)
    slope = max(float(slope), 1e-3)
    mask_y = 1.0 / (1.0 + np.exp((y - ((Ly - 1) / 2 - 2 * slope)) / slope))
    mask_x = 1.0 / (1.0 + np.exp((x - ((Lx - 1) / 2 - 2 * slope)) / slope))
    return (mask_y[:, None] * mask_x[None, :]).astype(np.float32)


def _gaussian_rfft(sigma: float, Ly: int, Lx: int) -> np.ndarray:
    """Real half-spectrum of a unit-sum Gaussian of ``sigma`` pixels centred at the origin (for smoothing)."""
    ky = np.fft.fftfreq(Ly)[:, None]
    kx = np.fft.rfftfreq(Lx)[None, :]
    return np.exp(-2.0 * np.pi**2 * sigma**2 * (ky**2 + kx**2))


def _subpixel_offset(cm: float, c0: float, cp: float) -> float:
    """Peak offset in (-0.5, 0.5) from three samples: Gaussian (log-parabola) fit, parabola as a fallback."""
    if cm > 0 and c0 > 0 and cp > 0:
        lm, l0, lp = math.log(cm), math.log(c0), math.log(cp)
    else:
        lm, l0, lp = cm, c0, cp
    denom = lm - 2.0 * l0 + lp
    if denom >= 0:  # not a maximum (flat or noisy peak): no subpixel information
        return 0.0
    return min(0.5, max(-0.5, 0.5 * (lm - lp) / denom))


class _PhaseCorrelator:
    """Whitened, smoothed phase correlation of fixed-size images against one precomputed reference.

    After :meth:`correlate`, :meth:`refine` evaluates the same correlation at arbitrary subpixel shifts
    directly from the cross-power spectrum (a matrix DFT, as in Guizar-Sicairos et al. 2008), so the
    subpixel peak comes from the band-limited correlation itself rather than from a fit to coarse samples.
    """

    _GRID = np.arange(-4, 5) * 0.25  # refinement grid: +-1 sample around the integer peak, 0.25 steps

    def __init__(self, ref: np.ndarray, taper: float, sigma: float, clip: tuple[float, float] | None,
                 workers: int) -> None:
        self.Ly, self.Lx = ref.shape
        self._workers = workers
        self._clip = clip
        ref = ref.astype(np.float32)
        if clip is not None:
            ref = np.clip(ref, clip[0], clip[1])
        self.mean = np.float32(ref.mean())
        self.mask = spatial_taper_mask(taper, self.Ly, self.Lx)
        ref_tapered = (ref - self.mean) * self.mask
        spec = sfft.rfft2(ref_tapered.astype(np.float64))
        smooth = _gaussian_rfft(sigma, self.Ly, self.Lx)
        # normalise so that correlating the reference with itself peaks at 1
        peak_norm = float(sfft.irfft2(smooth, s=(self.Ly, self.Lx))[0, 0])
        self._ref_spec = (np.conj(spec) / (_EPS + np.abs(spec)) * smooth / peak_norm).astype(np.complex64)
        self._buf = np.empty((self.Ly, self.Lx), np.float32)
        # whitening multiplies by 1 / |spec| held in the real part of a complex buffer (imaginary part stays 0):
        # dividing complex64 by float32 directly makes numpy allocate a 64 KB cast buffer per frame, and is slower
        self._inv_abs = np.zeros(self._ref_spec.shape, np.complex64)
        self._abs = self._inv_abs.real  # a float32 view into _inv_abs
        self._spec = np.empty(self._ref_spec.shape, np.complex64)
        self._cc = np.empty((self.Ly, self.Lx), np.float32)
        # matrix-DFT pieces for refine(): frequencies, and Hermitian weights of the half spectrum
        self._ky = (2j * np.pi * np.fft.fftfreq(self.Ly)).astype(np.complex64)
        self._kx = (2j * np.pi * np.fft.rfftfreq(self.Lx)).astype(np.complex64)
        weights = np.full(self._kx.size, 2.0, np.float32)
        weights[0] = 1.0
        if self.Lx % 2 == 0:
            weights[-1] = 1.0
        self._wx = weights / np.float32(self.Ly * self.Lx)
        grid = self._GRID.astype(np.float32)
        self._grid_y = np.exp(np.multiply.outer(grid, self._ky)).astype(np.complex64)  # (9, Ly)
        self._grid_x = (np.exp(np.multiply.outer(self._kx, grid)) * self._wx[:, None]).astype(np.complex64)
        # DFT matrices per integer peak position, made on first use: at most Ly + Lx of them, in practice the
        # few shifts within maxregshift, so after warm-up refine() computes no exponentials
        self._ey: dict[int, np.ndarray] = {}
        self._ex: dict[int, np.ndarray] = {}
        self._partial = np.empty((grid.size, self._kx.size), np.complex64)
        self._values = np.empty((grid.size, grid.size), np.complex64)

    def correlate(self, image: np.ndarray) -> np.ndarray:
        """Return the circular correlation map; index (i, j) holds shift (i, j) modulo the size."""
        buf = self._buf
        if self._clip is not None:
            np.clip(image, self._clip[0], self._clip[1], out=buf, casting="unsafe")
            buf -= self.mean
        else:
            np.subtract(image, self.mean, out=buf, casting="unsafe")
        buf *= self.mask
        spec = self._spec
        _pocketfft.r2c(buf, (0, 1), True, 0, spec, self._workers)  # = scipy.fft.rfft2(buf)
        np.abs(spec, out=self._abs)
        self._abs += _EPS
        np.reciprocal(self._abs, out=self._abs)
        spec *= self._inv_abs
        spec *= self._ref_spec
        # = scipy.fft.irfft2(spec, s=(Ly, Lx)) (inorm 2: divide by Ly * Lx); spec is left intact for refine()
        return _pocketfft.c2r(spec, (0, 1), self.Lx, False, 2, self._cc, self._workers)

    def refine(self, py: int, px: int) -> tuple[float, float, float]:
        """Subpixel peak near signed integer shift (py, px) of the last :meth:`correlate` call.

        Evaluates the correlation on a 9x9 grid of 0.25-sample steps around the integer peak, then fits a
        Gaussian through the best grid point and its neighbours. Returns (y, x, peak value).
        """
        grid = self._GRID
        ey = self._ey.get(py)
        if ey is None:
            ey = self._ey[py] = self._grid_y * np.exp(self._ky * np.float32(py))[None, :]  # (9, Ly)
        ex = self._ex.get(px)
        if ex is None:
            ex = self._ex[px] = self._grid_x * np.exp(self._kx * np.float32(px))[:, None]  # (Lx//2+1, 9)
        # BLAS products: run the process with one BLAS thread (see acquisition.pipeline.limit_blas_threads)
        np.matmul(ey, self._spec, out=self._partial)
        values = np.matmul(self._partial, ex, out=self._values).real
        a, b = np.unravel_index(int(np.argmax(values)), values.shape)
        a = min(max(int(a), 1), grid.size - 2)
        b = min(max(int(b), 1), grid.size - 2)
        c0 = float(values[a, b])
        sy = _subpixel_offset(float(values[a - 1, b]), c0, float(values[a + 1, b]))
        sx = _subpixel_offset(float(values[a, b - 1]), c0, float(values[a, b + 1]))
        step = float(grid[1] - grid[0])
        return py + float(grid[a]) + sy * step, px + float(grid[b]) + sx * step, c0


class _Downsampler:
    """Anti-aliased downsampling by 1, 2 or 4: stages of a binomial [1, 3, 3, 1] filter with stride 2.

    A plain 2x2 sum aliases fine texture into low frequencies, where it moves the wrong way under a shift
    and biases the estimate (0.2 px on clean synthetic movies); the binomial filter removes that. Strided
    views into preallocated float32 buffers, edges replicated: ~0.3 ms for 512x512 -> 256x256.
    """

    def __init__(self, shape: tuple[int, int], factor: int) -> None:
        self.factor = factor
        self.gain = 64.0 ** (factor.bit_length() - 1)  # each stage sums weights (1 + 3 + 3 + 1) ** 2
        self._stages: list[tuple[np.ndarray, np.ndarray]] = []
        Ly, Lx = shape
        while factor > 1:
            self._stages.append((np.empty((Ly // 2, Lx), np.float32), np.empty((Ly // 2, Lx // 2), np.float32)))
            Ly, Lx, factor = Ly // 2, Lx // 2, factor // 2
        self._copy = np.empty(shape, np.float32) if not self._stages else None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The downsampled image (a buffer reused by the next call)."""
        if self._copy is not None:
            np.copyto(self._copy, image, casting="unsafe")
            return self._copy
        for tmp, out in self._stages:
            _halve(image, tmp, out)
            image = out
        return image


@njit(cache=True, nogil=True)
def _halve(image: np.ndarray, t: np.ndarray, out: np.ndarray) -> None:
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


def compile_kernels(dtypes: tuple[type, ...] = (np.uint16, np.int16, np.float32)) -> None:
    """Compile (or load from numba's cache) the downsampler for the frame dtypes scopes deliver, ahead of
    the first frame."""
    for dtype in dtypes:
        _Downsampler((8, 8), 2)(np.zeros((8, 8), dtype))


class RigidRegistrar:
    """Estimate the rigid shift of each frame against ``ref_img``; see the module docstring.

    ``register`` returns ``(dy, dx, corr, flags)``: subpixel shift in pixels (convention above), the peak
    phase correlation (1.0 for a frame identical to the reference, ~0 for an unrelated image) and
    :class:`FrameFlag` bits SHIFT_OUT_OF_BOUNDS / LOW_CORR. A frame whose best match lies beyond
    ``maxregshift`` is flagged and its shift clamped to the bound; it is never reported as good.

    ``bin_factor`` (default: 4 for frames of 512 px or more, 2 from 256 px, else 1) sets the resolution the
    correlation runs at; ``smooth_sigma`` stays in full-resolution pixels.
    """

    def __init__(self, ref_img: np.ndarray, maxregshift: float = 0.1, smooth_sigma: float = 1.15,
                 spatial_taper: float = 3.45, min_corr: float = 0.05, *, bin_factor: int | None = None,
                 norm_frames: bool = True, workers: int = 1) -> None:
        ref = np.asarray(ref_img)
        if ref.ndim != 2 or min(ref.shape) < 16:
            raise ValueError(f"`ref_img`: must be a 2-D image of at least 16x16 pixels, got shape {ref.shape}")
        if not np.isfinite(ref).all():
            raise ValueError("`ref_img`: contains NaN or infinite values")
        if not 0 < maxregshift <= 0.5:
            raise ValueError("`maxregshift`: must be within (0, 0.5]")
        if smooth_sigma <= 0:
            raise ValueError("`smooth_sigma`: must be > 0")
        if spatial_taper < 0:
            raise ValueError("`spatial_taper`: must be >= 0")
        self.Ly, self.Lx = ref.shape
        min_dim = min(self.Ly, self.Lx)
        self.maxregshift = float(maxregshift)
        #: search half-window in pixels, as suite2p computes it
        self.max_shift_px = int(min(round(maxregshift * min_dim), min_dim // 2))
        self.min_corr = float(min_corr)
        if bin_factor is None:
            bin_factor = 4 if min_dim >= 512 else 2 if min_dim >= 256 else 1
        if bin_factor not in (1, 2, 4):
            raise ValueError("`bin_factor`: must be 1, 2 or 4")
        self.bin = bin_factor
        ref = ref.astype(np.float32)
        clip = None
        if norm_frames:
            lo, hi = np.percentile(ref, [1, 99])
            clip = (float(lo), float(hi))
            ref = np.clip(ref, lo, hi)
        b = self.bin
        self._downsample = _Downsampler((self.Ly, self.Lx), b)
        ref_b = self._downsample(ref).copy()
        gain = self._downsample.gain
        clip_b = None if clip is None else (clip[0] * gain, clip[1] * gain)
        self._corr = _PhaseCorrelator(ref_b, spatial_taper / b, smooth_sigma / b, clip_b, workers)

    @staticmethod
    def _signed(i: int, L: int) -> int:
        return i - L if i > L // 2 else i

    def register(self, frame: np.ndarray) -> tuple[float, float, float, int]:
        """Shift (dy, dx) of ``frame`` against the reference, the peak correlation and flag bits."""
        if frame.shape != (self.Ly, self.Lx):
            raise ValueError(f"frame shape {frame.shape} differs from the reference shape {(self.Ly, self.Lx)}")
        flags = FrameFlag.NONE
        b = self.bin
        max_shift = self.max_shift_px
        cc = self._corr.correlate(self._downsample(frame))
        Lyb, Lxb = cc.shape
        iy, ix = divmod(int(np.argmax(cc)), Lxb)
        py, px = self._signed(iy, Lyb), self._signed(ix, Lxb)
        limit = max_shift / b + 1.0
        if abs(py) > limit or abs(px) > limit:
            # the best match lies beyond maxregshift: flag it, then search only within the bound as suite2p does
            flags |= FrameFlag.SHIFT_OUT_OF_BOUNDS
            r = int(math.ceil(max_shift / b))
            ys = np.arange(-r, r + 1)
            window = cc[np.ix_(ys % Lyb, ys % Lxb)]
            ky, kx = np.unravel_index(int(np.argmax(window)), window.shape)
            py, px = int(ys[ky]), int(ys[kx])
        sy, sx, corr = self._corr.refine(py, px)
        dy, dx = sy * b, sx * b
        if abs(dy) > max_shift or abs(dx) > max_shift:
            flags |= FrameFlag.SHIFT_OUT_OF_BOUNDS
            dy = min(max(dy, -max_shift), max_shift)
            dx = min(max(dx, -max_shift), max_shift)
        if not corr >= self.min_corr:  # also catches NaN
            flags |= FrameFlag.LOW_CORR
        return float(dy), float(dx), float(corr), int(flags)


def shift_image_integer(image: np.ndarray, dy: int, dx: int, fill: float = 0.0) -> np.ndarray:
    """Move ``image`` content by (dy, dx) whole pixels (no wrap-around; uncovered pixels get ``fill``)."""
    out = np.full(image.shape, fill, dtype=np.float32)
    Ly, Lx = image.shape
    ys, yd = (slice(0, Ly - dy), slice(dy, Ly)) if dy >= 0 else (slice(-dy, Ly), slice(0, Ly + dy))
    xs, xd = (slice(0, Lx - dx), slice(dx, Lx)) if dx >= 0 else (slice(-dx, Lx), slice(0, Lx + dx))
    out[yd, xd] = image[ys, xs]
    return out


def shift_image_subpixel(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Move ``image`` content by (dy, dx) pixels with a Fourier shift (wraps around; for reference building)."""
    Ly, Lx = image.shape
    spec = sfft.rfft2(np.asarray(image, dtype=np.float64))
    ky = np.fft.fftfreq(Ly)[:, None]
    kx = np.fft.rfftfreq(Lx)[None, :]
    spec *= np.exp(-2j * np.pi * (ky * dy + kx * dx))
    return sfft.irfft2(spec, s=(Ly, Lx))


def build_reference(frames: np.ndarray, *, maxregshift: float = 0.1, smooth_sigma: float = 1.15,
                    spatial_taper: float = 3.45, niter: int = 8, n_seed: int = 20) -> np.ndarray:
    """Reference image from a stack of frames (n, Ly, Lx), the way suite2p builds ``refImg``.

    Seed: the frame whose ``n_seed`` best correlations with other frames are highest, averaged with its
    ``n_seed`` most correlated frames. Then ``niter`` rounds: register every frame, keep the best-correlated
    (a growing fraction, as suite2p), average them after integer alignment, re-centre on their mean shift.
    Returns float32 (suite2p returns int16). Differences: frame correlations for the seed are computed on
    2x-binned frames when frames are 256 px or larger (memory), aligned frames are not wrapped around in
    the intermediate rounds, and the final average aligns frames with subpixel (Fourier) shifts.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"`frames`: need a stack (n >= 2, Ly, Lx), got shape {frames.shape}")
    n, Ly, Lx = frames.shape
    step = 2 if min(Ly, Lx) >= 256 else 1
    small = frames[:, : Ly - Ly % step: step, : Lx - Lx % step: step].reshape(n, -1).astype(np.float32)
    if not np.isfinite(small).all():
        raise ValueError("`frames`: contains NaN or infinite values")
    small -= small.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", small, small, dtype=np.float64))
    norms[norms == 0] = 1.0
    cc = (small @ small.T).astype(np.float64) / np.outer(norms, norms)
    del small
    k = min(n_seed, n)
    best = -np.sort(-cc, axis=1)[:, 1:k].mean(axis=1)
    seed = int(np.argmax(best))
    ref = frames[np.argsort(-cc[seed])[:k]].astype(np.float64).mean(axis=0).astype(np.float32)

    for it in range(niter):
        registrar = RigidRegistrar(ref, maxregshift=maxregshift, smooth_sigma=smooth_sigma,
                                   spatial_taper=spatial_taper, min_corr=0.0)
        shifts = np.zeros((n, 2))
        corrs = np.zeros(n)
        for i in range(n):
            dy, dx, corr, _ = registrar.register(frames[i])
            shifts[i] = (dy, dx)
            corrs[i] = corr
        nmax = max(2, int(n * (1.0 + it) / (2 * niter)))
        best_idx = np.argsort(-corrs)[:nmax]
        total = np.zeros((Ly, Lx), np.float64)
        last = it == niter - 1
        for i in best_idx:
            frame = frames[i]
            if last:  # the final average uses subpixel shifts: a sharper reference than integer alignment
                total += shift_image_subpixel(frame, -shifts[i, 0], -shifts[i, 1])
            else:
                total += shift_image_integer(frame, -round(shifts[i, 0]), -round(shifts[i, 1]),
                                             float(frame.mean()))
        ref = (total / len(best_idx)).astype(np.float32)
        # re-centre: the reference should sit at the average position of the frames that built it
        cy, cx = np.round(shifts[best_idx].mean(axis=0)).astype(int)
        if cy or cx:
            ref = shift_image_integer(ref, int(cy), int(cx), float(ref.mean()))
    return ref
