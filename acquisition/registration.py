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
reference on another intensity scale, and a constant (zero-filled) reference border is filled in. While the
last good frame's shift predicts the next one (tracking), the coarse stage is skipped. The correlation
machinery is in acquisition/reg_correlator.py, the FFTs in acquisition/reg_fft.py.
"""

from __future__ import annotations

import math

import numpy as np

from acquisition.config import RegistrationConfig
from acquisition.reg_correlator import PhaseCorrelator, spatial_taper_mask
from acquisition.reg_correlator import _Downsampler as _Downsampler
from acquisition.reg_fft import RealFft2
from acquisition.reg_kernels import band_product, load_crop, scaled_product, weighted_energy
from acquisition.reg_quality import CorrBaseline, fill_constant_border
from acquisition.validate import FrameFlag

__all__ = ["RigidRegistrar", "build_reference", "compile_kernels", "shift_image_integer", "shift_image_subpixel",
           "spatial_taper_mask"]


def compile_kernels(dtypes: tuple[type, ...] = (np.uint16, np.int16, np.float32)) -> None:
    """Compile (or load from numba's cache) the per-frame kernels for the frame dtypes scopes deliver, ahead
    of the first frame; in row and in column order (a CLOOSE frame is registered from its column-major bytes)."""
    taper = np.ones(4)
    for dtype in dtypes:
        for frame in (np.zeros((8, 8), dtype), np.zeros((8, 8), dtype, order="F")):
            _Downsampler((8, 8), 2)(frame)
            load_crop(frame, 2, 2, taper, taper, 16.0, np.empty((4, 4), np.float32))
    spec = np.zeros((4, 3), np.complex64)
    weighted_energy(spec, np.ones((4, 3), np.float32))
    scaled_product(spec, spec.copy(), np.float32(1.0))
    band_product(spec, np.zeros((2, 2), np.complex64), np.float32(1.0), 1, np.zeros((2, 2), np.complex64))


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
    full-resolution pixels. ``fft_backend`` ("ducc0" or "pocketfft", acquisition/reg_fft.py) computes the
    FFTs, the fine crop's with ``workers`` threads.

    ``track`` (with a fine crop): after a frame registered without flags, the next one first tries the fine
    stage alone, its crop placed at that frame's whole-pixel shift (the coarse stage and the downsampling
    cost ~25 % of a 512 px frame); it keeps that answer unless the best whole-pixel shift lies on the edge
    of the +-(bin_factor + 1) px search window, corr is below ``track_corr_ratio`` x the last good frame's,
    or the frame would be flagged: then the full path runs, so a sudden jump is found as before. The result
    depends on the frames before (where the crop sat), so the same sequence of frames gives the same shifts,
    but one frame registered alone may differ by ~0.01 px from the same frame inside its sequence.
    """

    def __init__(self, ref_img: np.ndarray, maxregshift: float = 0.1, smooth_sigma: float = 1.3,
                 spatial_taper: float = 3.45, min_corr: float = 0.05, *, bin_factor: int | None = None,
                 norm_frames: bool = False, fine_size: int | None = None, whitening: str = "matched",
                 quality_frames: int = 100, quality_z: float = 5.0, workers: int = 1, track: bool = True,
                 track_corr_ratio: float = 0.85, fft_backend: str = "ducc0", dft_band: float = 0.3) -> None:
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
        if not 0 <= dft_band <= 0.5:
            raise ValueError("`dft_band`: must be within [0, 0.5] cycles/px (0: the whole spectrum)")
        if not 0 <= track_corr_ratio <= 1:
            raise ValueError("`track_corr_ratio`: must be within [0, 1]")
        matched = whitening == "matched"
        self.Ly, self.Lx = ref.shape
        min_dim = min(self.Ly, self.Lx)
        self.maxregshift = float(maxregshift)
        #: search half-window in pixels, as suite2p computes it
        self.max_shift_px = int(min(round(maxregshift * min_dim), min_dim // 2))
        self.min_corr = float(min_corr)
        self.baseline = CorrBaseline(quality_frames, quality_z)
        self.last_z = math.nan
        self.track = bool(track)
        self.track_corr_ratio = float(track_corr_ratio)
        #: (integer dy, dx, corr) of the last frame registered without flags, while tracking; else None
        self._last_good: tuple[int, int, float] | None = None
        self.tracked_frames = 0  # frames whose coarse stage was skipped (the prediction held)
        self.track_fallbacks = 0  # frames where the prediction was tried and the full path run after all
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
        # one FFT worker for the small coarse transform: a second costs more than it saves there
        fine_fft = RealFft2(fft_backend, workers)
        self._corr = PhaseCorrelator(ref_b, spatial_taper / b, smooth_sigma / b, clip_b,
                                      RealFft2(fft_backend) if b > 1 else fine_fft, matched)
        self._fine: PhaseCorrelator | None = None
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
            self._fine = PhaseCorrelator(crop, spatial_taper, smooth_sigma, clip, fine_fft, matched, search=b + 1,
                                         band=dft_band)

    @classmethod
    def from_config(cls, reference: np.ndarray, cfg: RegistrationConfig) -> RigidRegistrar:
        """The registrar ``[acquisition.registration]`` describes (what the pipeline builds, live and offline)."""
        return cls(reference, cfg.maxregshift, cfg.smooth_sigma, cfg.spatial_taper, cfg.min_corr,
                   bin_factor=cfg.bin_factor or None, norm_frames=cfg.norm_frames,
                   fine_size=None if cfg.fine_size == 0 else max(cfg.fine_size, 0), whitening=cfg.whitening,
                   quality_frames=cfg.quality_frames, quality_z=cfg.quality_z, workers=cfg.fft_workers,
                   track=cfg.track, track_corr_ratio=cfg.track_corr_ratio, fft_backend=cfg.fft_backend,
                   dft_band=cfg.dft_band)

    @staticmethod
    def _signed(i: int, L: int) -> int:
        return i - L if i > L // 2 else i

    def register(self, frame: np.ndarray) -> tuple[float, float, float, int]:
        """Shift (dy, dx) of ``frame`` against the reference, the peak correlation and flag bits."""
        if frame.shape != (self.Ly, self.Lx):
            raise ValueError(f"frame shape {frame.shape} differs from the reference shape {(self.Ly, self.Lx)}")
        found = None
        if self._last_good is not None:
            found = self._register_tracked(frame, *self._last_good)
            if found is not None and self._low_corr(found[2]):
                found = None  # a frame is never flagged on the prediction alone: the full path decides
            if found is None:
                self.track_fallbacks += 1
            else:
                self.tracked_frames += 1
        dy, dx, corr, flags = self._register_full(frame) if found is None else (*found, FrameFlag.NONE)
        if self._low_corr(corr):
            flags |= FrameFlag.LOW_CORR
        self.observe(dy, dx, corr, flags)
        return float(dy), float(dx), float(corr), int(flags)

    def warm_up(self, frame: np.ndarray) -> None:
        """Run both paths on ``frame`` (the full one, then the tracked one at its result) and forget the results:
        FFT plans, DFT matrices and buffers are made and first touched now, not on the session's first frame (which
        cost ~4 ms more than the next). Neither path updates what the next frames depend on (corr baseline,
        tracking, counters)."""
        dy, dx, corr, _ = self._register_full(frame)
        if self.track and self._fine is not None and corr == corr:  # NaN: no tracked path to warm
            self._register_tracked(frame, round(dy), round(dx), corr)

    def prewarm(self, frame: np.ndarray) -> None:
        """Run the path the next frame will most likely take (tracked, else the full one) on ``frame`` and forget
        the result: its code and buffers are warm again when the next frame comes (acquisition.pacer). Changes
        nothing the next frames depend on: neither path updates the tracking or the corr baseline."""
        if self._last_good is not None:
            self._register_tracked(frame, *self._last_good)
        else:
            self._register_full(frame)

    def observe(self, dy: float, dx: float, corr: float, flags: int) -> None:
        """Update what the next frames depend on (the corr baseline, the tracking prediction) with a frame's
        result as :meth:`register` does; called by it, and by a replay for a frame whose pixels were lost
        but whose live result was recorded (only the SHIFT_OUT_OF_BOUNDS and LOW_CORR bits of ``flags`` count)."""
        good = not flags & (FrameFlag.SHIFT_OUT_OF_BOUNDS | FrameFlag.LOW_CORR) and corr == corr  # NaN: not good
        if good:
            self.baseline.add(corr)
        self._last_good = (round(dy), round(dx), corr) if good and self.track and self._fine is not None else None

    def _low_corr(self, corr: float) -> bool:
        """LOW_CORR: below ``min_corr`` (or NaN), or a robust z-score below -quality_z (sets ``last_z``)."""
        self.last_z = z = self.baseline.score(corr)
        return not corr >= self.min_corr or z < -self.baseline.z  # the first comparison also catches NaN

    def _register_tracked(self, frame: np.ndarray, oy: int, ox: int, last_corr: float
                          ) -> tuple[float, float, float] | None:
        """The fine stage alone, its crop placed at the last good frame's whole-pixel shift (oy, ox).

        ``None`` (run the full path) when the prediction fails: the best whole-pixel shift lies on the edge
        of the +-(bin + 1) px search window (the peak may be beyond it: a jump), corr fell below
        ``track_corr_ratio`` times the last good frame's (a wrong peak), or the shift left ``maxregshift``.
        """
        fine = self._fine
        assert fine is not None
        y0, x0, ry, rx = self._place_crop(oy, ox)
        fine.spectrum_crop(frame, y0, x0)
        by, bx = fine.integer_peak(ry, rx)
        if abs(by - ry) >= fine.search or abs(bx - rx) >= fine.search:
            return None
        sy, sx, corr = fine.refine(by, bx)
        if not corr >= self.track_corr_ratio * last_corr:
            return None
        dy, dx = sy + (y0 - self._cy), sx + (x0 - self._cx)
        if abs(dy) > self.max_shift_px or abs(dx) > self.max_shift_px:
            return None
        return dy, dx, corr

    def _register_full(self, frame: np.ndarray) -> tuple[float, float, float, FrameFlag]:
        """Coarse whole-frame stage, then the fine stage at its estimate: shift, corr, SHIFT_OUT_OF_BOUNDS."""
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
        return dy, dx, corr, flags

    def _place_crop(self, oy: int, ox: int) -> tuple[int, int, int, int]:
        """Top-left corner of the fine crop displaced by (oy, ox), kept inside the frame, and the residual
        shift expected within it (0 unless the frame's edge stopped the crop)."""
        size = self.fine_size
        y0 = min(max(self._cy + oy, 0), self.Ly - size)
        x0 = min(max(self._cx + ox, 0), self.Lx - size)
        return y0, x0, oy - (y0 - self._cy), ox - (x0 - self._cx)

    def _refine_full_resolution(self, frame: np.ndarray, oy: int, ox: int) -> tuple[float, float, float]:
        """Full-resolution shift near (oy, ox): the central crop of the frame, displaced by (oy, ox),
        correlated with the reference's central crop; the residual is searched within one coarse bin."""
        fine = self._fine
        assert fine is not None
        # the crop must stay inside the frame; whatever it cannot follow is left to the residual search
        y0, x0, ry, rx = self._place_crop(oy, ox)
        fine.spectrum_crop(frame, y0, x0)
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
    """Move ``image`` content by (dy, dx) pixels with a Fourier shift (wraps around; for reference building).

    The phase ramp is separable, exp(-2πi(ky·dy + kx·dx)) = exp(-2πi ky·dy) · exp(-2πi kx·dx): two vectors of
    exponentials instead of one per frequency; with ducc0's float64 FFTs, 3.0 ms instead of 9.9 at 512x512 (the
    reference refinement shifts every frame it averages, in the acquisition process). Equal to ~1e-15."""
    Ly, Lx = image.shape
    fft = RealFft2()
    spec = np.empty((Ly, Lx // 2 + 1), np.complex128)
    fft.r2c(np.asarray(image, dtype=np.float64), spec)
    spec *= np.exp(-2j * np.pi * np.fft.fftfreq(Ly) * dy)[:, None]
    spec *= np.exp(-2j * np.pi * np.fft.rfftfreq(Lx) * dx)[None, :]
    return fft.c2r(spec, Lx, np.empty((Ly, Lx)))


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
                                   spatial_taper=spatial_taper, min_corr=0.0, track=False)
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
