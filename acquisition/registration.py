"""Online rigid registration: whitened phase correlation against a reference, fast enough for every frame.

Shift convention (used everywhere in bci-rig, and the same as suite2p's ``yoff``/``xoff``):
``(dy, dx)`` is the displacement of the frame's content relative to the reference, i.e.
``frame[y, x] ~= ref[y - dy, x - dx]``. A structure that sits at ``(y, x)`` in the reference is found at
``(y + dy, x + dx)`` in the frame; to align the frame to the reference, move it by ``(-dy, -dx)``.

How (see docs/REGISTRATION.md, which has the measurements): a full-resolution 512x512 phase correlation
costs more than the real-time budget, and a binned one alone is not accurate enough on real references
(0.2-1.5 px on suite2p ``refImg``s at 2-6 photons/px). So two stages: a coarse phase correlation
(whitened, tapered, smoothed as suite2p does) of the whole frame downsampled with an anti-aliasing filter
(4x for 512 px frames) finds the shift to a pixel or two; then a full-resolution phase correlation of a
central crop of the frame, taken at that shift, against the same crop of the reference gives the subpixel
shift, its peak evaluated directly from the cross-power spectrum with a small matrix DFT. Frames and
reference are not clipped to the reference's percentiles (suite2p's ``norm_frames``), which breaks on a
reference on another intensity scale, and a constant (zero-filled) reference border is filled in.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft

# scipy.fft's own pocketfft binding: the public rfft2/irfft2 have no ``out=`` and allocate a result per call;
# this binding writes into our preallocated buffers and skips ~10 us of wrapper per transform (numpy>=2's
# ``np.fft.rfft2(out=)`` is slower than either). tests/test_acq_registration.py checks it against scipy.fft.
from scipy.fft._pocketfft import pypocketfft as _pocketfft

from acquisition.reg_kernels import halve, load_crop, scaled_product, weighted_energy
from acquisition.reg_quality import CorrBaseline, fill_constant_border
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
                 workers: int, matched: bool = False, search: int = 0) -> None:
        self.Ly, self.Lx = ref.shape
        self.matched = matched
        self._workers = workers
        self._clip = clip
        ref = ref.astype(np.float32)
        if clip is not None:
            ref = np.clip(ref, clip[0], clip[1])
        self.mask = spatial_taper_mask(taper, self.Ly, self.Lx)
        self._mask_sum = float(self.mask.sum(dtype=np.float64))
        # each image loses its own taper-weighted mean (zero DC after tapering): subtracting the reference's
        # mean from frames, as suite2p does, leaves a taper-shaped pedestal when the scales differ
        self.mean = np.float32((ref * self.mask).sum() / self.mask.sum())
        ref_tapered = (ref - self.mean) * self.mask
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
        # integer_peak(): whole-pixel shifts within +-search of a centre, DFT matrices cached per centre
        self.search = search
        self._offsets = np.arange(-search, search + 1).astype(np.float32)
        self._int_y: dict[int, np.ndarray] = {}
        self._int_x: dict[int, np.ndarray] = {}
        self._int_partial = np.empty((self._offsets.size, self._kx.size), np.complex64)
        self._int_values = np.empty((self._offsets.size, self._offsets.size), np.complex64)

    def correlate(self, image: np.ndarray) -> np.ndarray:
        """Return the circular correlation map; index (i, j) holds shift (i, j) modulo the size."""
        buf = self._buf
        if self._clip is not None:  # suite2p's norm_frames: frames share the reference's scale and mean
            np.clip(image, self._clip[0], self._clip[1], out=buf, casting="unsafe")
            buf -= self.mean
            buf *= self.mask
        else:
            load_crop(image, 0, 0, self.mask, self._mask_sum, buf)
        _pocketfft.r2c(buf, (0, 1), True, 0, self._spec, self._workers)  # = scipy.fft.rfft2(buf)
        self._cross_power()
        # = scipy.fft.irfft2(spec, s=(Ly, Lx)) (inorm 2: divide by Ly * Lx); spec is left intact for refine()
        return _pocketfft.c2r(self._spec, (0, 1), self.Lx, False, 2, self._cc, self._workers)

    def _cross_power(self) -> None:
        """Turn the frame's spectrum in ``_spec`` into the (whitened, smoothed) cross-power spectrum."""
        spec = self._spec
        if self.matched:
            # normalised so that a frame equal to the reference peaks at 1 (Cauchy-Schwarz bound), any scale
            energy = weighted_energy(spec, self._energy_weight)
            scaled_product(spec, self._ref_spec, np.float32(self._norm / math.sqrt(energy) if energy > 0 else 0.0))
            return
        np.abs(spec, out=self._abs)
        self._abs += _EPS
        np.reciprocal(self._abs, out=self._abs)
        spec *= self._inv_abs
        spec *= self._ref_spec

    def spectrum_crop(self, image: np.ndarray, y0: int, x0: int) -> None:
        """The cross-power spectrum of ``image[y0:y0 + Ly, x0:x0 + Lx]`` (no clipping), for :meth:`integer_peak`
        and :meth:`refine`; no inverse transform: those evaluate the correlation only where it is needed."""
        load_crop(image, y0, x0, self.mask, self._mask_sum, self._buf)
        _pocketfft.r2c(self._buf, (0, 1), True, 0, self._spec, self._workers)
        self._cross_power()

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
        np.matmul(ey, self._spec, out=self._int_partial)
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
            halve(image, tmp, out)
            image = out
        return image


def compile_kernels(dtypes: tuple[type, ...] = (np.uint16, np.int16, np.float32)) -> None:
    """Compile (or load from numba's cache) the per-frame kernels for the frame dtypes scopes deliver, ahead
    of the first frame."""
    mask = np.ones((4, 4), np.float32)
    for dtype in dtypes:
        _Downsampler((8, 8), 2)(np.zeros((8, 8), dtype))
        load_crop(np.zeros((8, 8), dtype), 2, 2, mask, 16.0, np.empty((4, 4), np.float32))
    spec = np.zeros((4, 3), np.complex64)
    weighted_energy(spec, np.ones((4, 3), np.float32))
    scaled_product(spec, spec.copy(), np.float32(1.0))


class RigidRegistrar:
    """Estimate the rigid shift of each frame against ``ref_img``; see the module docstring.

    ``register`` returns ``(dy, dx, corr, flags)``: subpixel shift in pixels (convention above), the peak
    phase correlation at full resolution (1.0 for a frame identical to the reference, ~0 for an unrelated
    image) and :class:`FrameFlag` bits SHIFT_OUT_OF_BOUNDS / LOW_CORR. A frame whose best match lies beyond
    ``maxregshift`` is flagged and its shift clamped to the bound; it is never reported as good. LOW_CORR:
    ``corr`` below ``min_corr``, or (after the first ``quality_frames`` good frames) a robust z-score below
    ``-quality_z`` against the recent good frames (:class:`CorrBaseline`); ``last_z`` holds the last score.

    Two stages: ``bin_factor`` (default: 4 for frames of 512 px or more, 2 from 256 px, else 1) sets the
    resolution of the coarse whole-frame correlation; when it is > 1 a full-resolution correlation of a
    central ``fine_size`` crop (default: 384 px, less when the frame leaves no room; 0: none, the coarse
    estimate is final) placed at the coarse shift gives the final subpixel shift. ``smooth_sigma`` stays in
    full-resolution pixels.
    """

    def __init__(self, ref_img: np.ndarray, maxregshift: float = 0.1, smooth_sigma: float = 1.3,
                 spatial_taper: float = 3.45, min_corr: float = 0.05, *, bin_factor: int | None = None,
                 norm_frames: bool = False, fine_size: int | None = None, whitening: str = "matched",
                 quality_frames: int = 100, quality_z: float = 5.0, workers: int = 1) -> None:
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
        if whitening not in ("matched", "phase"):
            raise ValueError(f"`whitening`: must be 'matched' or 'phase', not {whitening!r}")
        matched = whitening == "matched"
        self.Ly, self.Lx = ref.shape
        min_dim = min(self.Ly, self.Lx)
        self.maxregshift = float(maxregshift)
        #: search half-window in pixels, as suite2p computes it
        self.max_shift_px = int(min(round(maxregshift * min_dim), min_dim // 2))
        self.min_corr = float(min_corr)
        self.baseline = CorrBaseline(quality_frames, quality_z)
        self.last_z = math.nan
        if bin_factor is None:
            bin_factor = 4 if min_dim >= 512 else 2 if min_dim >= 384 else 1
        if bin_factor not in (1, 2, 4):
            raise ValueError("`bin_factor`: must be 1, 2 or 4")
        self.bin = b = bin_factor
        ref, _ = fill_constant_border(ref)
        clip = None
        if norm_frames:  # suite2p's clipping: only right when frames and reference share one intensity scale
            lo, hi = np.percentile(ref, [1, 99])
            clip = (float(lo), float(hi))
            ref = np.clip(ref, lo, hi)
        self._downsample = _Downsampler((self.Ly, self.Lx), b)
        ref_b = self._downsample(ref).copy()
        gain = self._downsample.gain
        clip_b = None if clip is None else (clip[0] * gain, clip[1] * gain)
        self._corr = _PhaseCorrelator(ref_b, spatial_taper / b, smooth_sigma / b, clip_b, workers, matched)
        self._fine: _PhaseCorrelator | None = None
        self.fine_size = 0
        if b > 1 and fine_size != 0:
            room = min_dim - 2 * (self.max_shift_px + b + 2)
            size = min(384 if fine_size is None else int(fine_size), room) // 16 * 16
            if size < 32:
                raise ValueError(f"`fine_size`: {fine_size} leaves no full-resolution crop of >= 32 px within "
                                 f"{ref.shape} at maxregshift {maxregshift}")
            self.fine_size = size
            self._cy, self._cx = (self.Ly - size) // 2, (self.Lx - size) // 2
            crop = ref[self._cy:self._cy + size, self._cx:self._cx + size]
            self._fine = _PhaseCorrelator(crop, spatial_taper, smooth_sigma, clip, workers, matched, search=b + 1)

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
        if self._fine is None:
            sy, sx, corr = self._corr.refine(py, px)
            dy, dx = sy * b, sx * b
        else:
            dy, dx, corr = self._refine_full_resolution(frame, py * b, px * b)
        if abs(dy) > max_shift or abs(dx) > max_shift:
            flags |= FrameFlag.SHIFT_OUT_OF_BOUNDS
            dy = min(max(dy, -max_shift), max_shift)
            dx = min(max(dx, -max_shift), max_shift)
        z = self.baseline.score(corr)
        self.last_z = z
        if not corr >= self.min_corr or z < -self.baseline.z:  # the first comparison also catches NaN
            flags |= FrameFlag.LOW_CORR
        elif not flags:
            self.baseline.add(corr)
        return float(dy), float(dx), float(corr), int(flags)

    def _refine_full_resolution(self, frame: np.ndarray, oy: int, ox: int) -> tuple[float, float, float]:
        """Full-resolution shift near (oy, ox): the central crop of the frame, displaced by (oy, ox),
        correlated with the reference's central crop; the residual is searched within one coarse bin."""
        fine = self._fine
        assert fine is not None
        size = self.fine_size
        # the crop must stay inside the frame; whatever it cannot follow is left to the residual search
        y0 = min(max(self._cy + oy, 0), self.Ly - size)
        x0 = min(max(self._cx + ox, 0), self.Lx - size)
        fine.spectrum_crop(frame, y0, x0)
        ry, rx = oy - (y0 - self._cy), ox - (x0 - self._cx)  # expected residual (0 unless clamped)
        by, bx = fine.integer_peak(ry, rx)  # within one coarse bin (+1 px) of it
        sy, sx, corr = fine.refine(by, bx)
        return sy + (y0 - self._cy), sx + (x0 - self._cx), corr


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


def build_reference(frames: np.ndarray, *, maxregshift: float = 0.1, smooth_sigma: float = 1.3,
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
