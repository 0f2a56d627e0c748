"""The correlation machinery of the per-frame registration (acquisition.registration): the whitened, tapered,
smoothed correlation of fixed-size images against one precomputed reference, evaluated by FFT or, at chosen
shifts only, by matrix DFTs of the cross-power spectrum; and the anti-aliased downsampler of the coarse stage.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft

from acquisition.reg_fft import RealFft2
from acquisition.reg_kernels import band_product, halve, load_crop, scaled_product, weighted_energy

_EPS = 1e-5


def spatial_taper_vectors(slope: float, Ly: int, Lx: int) -> tuple[np.ndarray, np.ndarray]:
    """The two float64 factors of :func:`spatial_taper_mask` (the mask is their outer product, rounded to
    float32): the per-frame kernels compute each mask value from them instead of reading a crop-sized array."""
    y = np.abs(np.arange(Ly, dtype=np.float64) - (Ly - 1) / 2)
    x = np.abs(np.arange(Lx, dtype=np.float64) - (Lx - 1) / 2)
    slope = max(float(slope), 1e-3)
    mask_y = 1.0 / (1.0 + np.exp((y - ((Ly - 1) / 2 - 2 * slope)) / slope))
    mask_x = 1.0 / (1.0 + np.exp((x - ((Lx - 1) / 2 - 2 * slope)) / slope))
    return mask_y, mask_x


def spatial_taper_mask(slope: float, Ly: int, Lx: int) -> np.ndarray:
    """Sigmoid edge mask (1 inside, 0 at the border) with suite2p's parameterisation of ``spatial_taper``."""
    mask_y, mask_x = spatial_taper_vectors(slope, Ly, Lx)
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


class PhaseCorrelator:
    """Whitened, smoothed phase correlation of fixed-size images against one precomputed reference.

    After :meth:`correlate`, :meth:`refine` evaluates the same correlation at arbitrary subpixel shifts
    directly from the cross-power spectrum (a matrix DFT, as in Guizar-Sicairos et al. 2008), so the
    subpixel peak comes from the band-limited correlation itself rather than from a fit to coarse samples.
    ``band`` > 0 (matched whitening only): the cross-power spectrum is formed only within ``band`` cycles/px in
    either axis (held compact) and the matrix DFTs run on it alone (~45 % less work at 0.3, where the smoothing
    has left < 5 % weight; docs/REGISTRATION.md measures it); such a correlator has no :meth:`correlate`.
    """

    _GRID = np.arange(-4, 5) * 0.25  # refinement grid: +-1 sample around the integer peak, 0.25 steps

    def __init__(self, ref: np.ndarray, taper: float, sigma: float, clip: tuple[float, float] | None,
                 fft: RealFft2, matched: bool = False, search: int = 0, band: float = 0.0) -> None:
        self.Ly, self.Lx = ref.shape
        self.matched = matched
        self._fft = fft
        self._clip = clip
        ref = ref.astype(np.float32)
        if clip is not None:
            ref = np.clip(ref, clip[0], clip[1])
        self._taper_y, self._taper_x = spatial_taper_vectors(taper, self.Ly, self.Lx)
        mask = spatial_taper_mask(taper, self.Ly, self.Lx)
        self._mask_sum = float(mask.sum(dtype=np.float64))
        self._clip_mask = mask if clip is not None else None  # norm_frames' path multiplies by it in numpy
        # each image loses its own taper-weighted mean (zero DC after tapering): subtracting the reference's
        # mean from frames, as suite2p does, leaves a taper-shaped pedestal when the scales differ
        self.mean = np.float32((ref * mask).sum() / mask.sum())
        ref_tapered = (ref - self.mean) * mask
        spec = sfft.rfft2(ref_tapered.astype(np.float64))
        smooth = _gaussian_rfft(sigma, self.Ly, self.Lx)
        # normalise so that correlating the reference with itself peaks at 1
        peak_norm = float(sfft.irfft2(smooth, s=(self.Ly, self.Lx))[0, 0])
        if matched:
            # the reference whitened by the square root of its amplitude and smoothed, the frame not at all:
            # the frame's own 1/|F| would amplify frequencies where shot noise dominates (see the docs)
            weight = smooth / np.sqrt(_EPS + np.abs(spec))
            herm = np.full(spec.shape[1], 2.0)
            herm[0] = 1.0
            if self.Lx % 2 == 0:
                herm[-1] = 1.0
            self._energy_weight = (weight * herm[None, :]).astype(np.float32)
            ref_energy = float((np.abs(spec) ** 2 * self._energy_weight).sum())
            self._norm = float(self.Ly * self.Lx) / math.sqrt(max(ref_energy, 1e-30))
            self._ref_spec = (np.conj(spec) * weight).astype(np.complex64)
        else:
            self._ref_spec = (np.conj(spec) / (_EPS + np.abs(spec)) * smooth / peak_norm).astype(np.complex64)
        self._buf = np.empty((self.Ly, self.Lx), np.float32)
        # whitening multiplies by 1 / |spec| held in the real part of a complex buffer (imaginary part stays 0):
        # dividing complex64 by float32 directly makes numpy allocate a 64 KB cast buffer per frame, and is slower
        self._inv_abs = np.zeros(self._ref_spec.shape, np.complex64)
        self._abs = self._inv_abs.real  # a float32 view into _inv_abs
        self._spec = np.empty(self._ref_spec.shape, np.complex64)
        self._cc = np.empty((self.Ly, self.Lx), np.float32)
        # matrix-DFT pieces for refine(): frequencies, and Hermitian weights of the half spectrum
        fy, fx = np.fft.fftfreq(self.Ly), np.fft.rfftfreq(self.Lx)
        weights = np.full(fx.size, 2.0, np.float32)
        weights[0] = 1.0
        if self.Lx % 2 == 0:
            weights[-1] = 1.0
        # band > 0: the matrix DFTs use only frequencies |f| <= band (cycles/px) in each axis, where the
        # smoothing Gaussian has not yet removed nearly everything (matched whitening only; see the docs)
        self.band = float(band) if matched and 0 < band < 0.5 else 0.0
        rows = np.flatnonzero(np.abs(fy) <= self.band) if self.band else np.arange(self.Ly)
        cols = np.flatnonzero(fx <= self.band) if self.band else np.arange(fx.size)
        self._low_rows = int(np.count_nonzero(fy[rows] >= 0))
        self._dft_spec = np.empty((rows.size, cols.size), np.complex64) if self.band else self._spec
        if self.band:  # only the band of the reference's spectrum is ever used: kept compact
            self._ref_spec = np.ascontiguousarray(self._ref_spec[np.ix_(rows, cols)])
        self._ky = (2j * np.pi * fy[rows]).astype(np.complex64)
        self._kx = (2j * np.pi * fx[cols]).astype(np.complex64)
        self._wx = weights[cols] / np.float32(self.Ly * self.Lx)
        grid = self._GRID.astype(np.float32)
        self._grid_y = np.exp(np.multiply.outer(grid, self._ky)).astype(np.complex64)  # (9, band rows)
        self._grid_x = (np.exp(np.multiply.outer(self._kx, grid)) * self._wx[:, None]).astype(np.complex64)
        # DFT matrices per integer peak position, made on first use: at most Ly + Lx of them, in practice the
        # few shifts within maxregshift, so after warm-up refine() computes no exponentials
        self._ey: dict[int, np.ndarray] = {}
        self._ex: dict[int, np.ndarray] = {}
        self._partial = np.empty((grid.size, self._kx.size), np.complex64)
        self._values = np.empty((grid.size, grid.size), np.complex64)
        # integer_peak(): whole-pixel shifts within +-search of a centre, DFT matrices cached per centre
        self.search = search
        self._offsets = np.arange(-search, search + 1).astype(np.float32)
        self._int_y: dict[int, np.ndarray] = {}
        self._int_x: dict[int, np.ndarray] = {}
        self._int_partial = np.empty((self._offsets.size, self._kx.size), np.complex64)
        self._int_values = np.empty((self._offsets.size, self._offsets.size), np.complex64)

    def correlate(self, image: np.ndarray) -> np.ndarray:
        """Return the circular correlation map; index (i, j) holds shift (i, j) modulo the size."""
        if self.band:
            raise ValueError("correlate(): a correlator with a DFT band forms the cross-power spectrum only within "
                             "the band; use spectrum_crop() with integer_peak() and refine()")
        buf = self._buf
        if self._clip is not None:  # suite2p's norm_frames: frames share the reference's scale and mean
            np.clip(image, self._clip[0], self._clip[1], out=buf, casting="unsafe")
            buf -= self.mean
            buf *= self._clip_mask
        else:
            load_crop(image, 0, 0, self._taper_y, self._taper_x, self._mask_sum, buf)
        self._fft.r2c(buf, self._spec)  # = scipy.fft.rfft2(buf)
        self._cross_power()
        # = scipy.fft.irfft2(spec, s=(Ly, Lx)) (inorm 2: divide by Ly * Lx); spec is left intact for refine()
        return self._fft.c2r(self._spec, self.Lx, self._cc)

    def _cross_power(self) -> None:
        """Turn the frame's spectrum in ``_spec`` into the (whitened, smoothed) cross-power spectrum."""
        spec = self._spec
        if self.matched:
            # normalised so that a frame equal to the reference peaks at 1 (Cauchy-Schwarz bound), any scale
            energy = weighted_energy(spec, self._energy_weight)
            scale = np.float32(self._norm / math.sqrt(energy) if energy > 0 else 0.0)
            if self.band:  # only the band, into _dft_spec: what integer_peak() and refine() read
                band_product(spec, self._ref_spec, scale, self._low_rows, self._dft_spec)
            else:
                scaled_product(spec, self._ref_spec, scale)
            return
        np.abs(spec, out=self._abs)
        self._abs += _EPS
        np.reciprocal(self._abs, out=self._abs)
        spec *= self._inv_abs
        spec *= self._ref_spec

    def spectrum_crop(self, image: np.ndarray, y0: int, x0: int) -> None:
        """The cross-power spectrum of ``image[y0:y0 + Ly, x0:x0 + Lx]`` (no clipping), for :meth:`integer_peak`
        and :meth:`refine`; no inverse transform: those evaluate the correlation only where it is needed."""
        load_crop(image, y0, x0, self._taper_y, self._taper_x, self._mask_sum, self._buf)
        self._fft.r2c(self._buf, self._spec)
        self._cross_power()

    def cross_power_spectrum(self) -> np.ndarray:
        """The last frame's cross-power half spectrum as the DFTs see it (zero outside the band), a new array:
        for checks against an inverse FFT, not for the per-frame path."""
        if not self.band:
            return self._spec.copy()
        full = np.zeros_like(self._spec)
        n_rows, n_cols = self._dft_spec.shape
        high = n_rows - self._low_rows
        full[:self._low_rows, :n_cols] = self._dft_spec[:self._low_rows]
        if high:
            full[self.Ly - high:, :n_cols] = self._dft_spec[self._low_rows:]
        return full

    def integer_peak(self, cy: int, cx: int) -> tuple[int, int]:
        """The best whole-pixel shift within +-``search`` of (cy, cx), from the last spectrum.

        A matrix DFT of the cross-power spectrum at those (2 search + 1)^2 shifts only: the same numbers as
        the inverse FFT's map there (tested), for a quarter of its cost at 384 px.
        """
        ey = self._int_y.get(cy)
        if ey is None:
            ey = self._int_y[cy] = np.exp(np.multiply.outer(self._offsets + cy, self._ky)).astype(np.complex64)
        ex = self._int_x.get(cx)
        if ex is None:
            ex = self._int_x[cx] = (np.exp(np.multiply.outer(self._kx, self._offsets + cx))
                                    * self._wx[:, None]).astype(np.complex64)
        np.matmul(ey, self._dft_spec, out=self._int_partial)
        values = np.matmul(self._int_partial, ex, out=self._int_values).real
        a, b = divmod(int(np.argmax(values)), values.shape[1])
        return cy - self.search + a, cx - self.search + b

    def refine(self, py: int, px: int) -> tuple[float, float, float]:
        """Subpixel peak near signed integer shift (py, px) of the last :meth:`correlate` / :meth:`spectrum_crop`.

        Evaluates the correlation on a 9x9 grid of 0.25-sample steps around the integer peak, then fits a
        Gaussian through the best grid point and its neighbours. Returns (y, x, peak value).
        """
        grid = self._GRID
        ey = self._ey.get(py)
        if ey is None:
            ey = self._ey[py] = self._grid_y * np.exp(self._ky * np.float32(py))[None, :]  # (9, band rows)
        ex = self._ex.get(px)
        if ex is None:
            ex = self._ex[px] = self._grid_x * np.exp(self._kx * np.float32(px))[:, None]  # (band columns, 9)
        # BLAS products: run the process with one BLAS thread (see acquisition.pipeline.limit_blas_threads)
        np.matmul(ey, self._dft_spec, out=self._partial)
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
            halve(image, tmp, out)
            image = out
        return image
