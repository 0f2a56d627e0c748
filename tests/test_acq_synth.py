"""Synthetic two-photon movies with known shifts, cells and traces, for the acquisition tests.

Everything is rendered analytically (sums of separable Gaussians), so a subpixel shift is exact: the ground
truth is not itself an interpolation. Cells are Gaussian blobs with known traces; a faint static texture of
small blobs and a broad neuropil glow give the registration something to lock onto, as real tissue does.
Other acquisition tests import :func:`make_movie`; the tests at the bottom check the generator itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SynthMovie:
    frames: np.ndarray  # (T, Ly, Lx) uint16
    shifts: np.ndarray  # (T, 2) true (dy, dx): content displacement relative to the reference
    traces: np.ndarray  # (n_cells, T) true cell amplitudes
    neuropil: np.ndarray  # (T,) neuropil amplitude
    centres: np.ndarray  # (n_cells, 2) cell centres (y, x) in reference coordinates
    sigma: float  # cell blob sigma
    reference: np.ndarray  # (Ly, Lx) float32 noiseless image at zero shift with mean amplitudes
    stat: list[dict] = field(default_factory=list)  # suite2p-style ROIs for the cells
    isolated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    static: np.ndarray | None = None  # (Ly, Lx) noiseless texture at zero shift (counts)
    glow: np.ndarray | None = None  # (Ly, Lx) noiseless neuropil glow at zero shift, per unit amplitude
    baseline: float = 0.0
    scale: float = 1.0

    def clean_frame(self, t: int) -> np.ndarray:
        """Noiseless frame ``t`` as it would look with no motion: what registration should recover."""
        Ly, Lx = self.reference.shape
        cells = render(Ly, Lx, self.centres[:, 0], self.centres[:, 1], self.sigma, self.traces[:, t])
        return self.baseline + self.scale * cells + self.static + self.neuropil[t] * self.glow

    def true_F(self, roi_weights: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """(n_rois, T) ground-truth fluorescence: each (flat index, weight) mask applied to the clean frames."""
        T = self.frames.shape[0]
        out = np.zeros((len(roi_weights), T))
        for t in range(T):
            flat = self.clean_frame(t).reshape(-1)
            for k, (idx, w) in enumerate(roi_weights):
                out[k, t] = (flat[idx] * w).sum()
        return out


def _gauss_rows(centres: np.ndarray, sigma: np.ndarray | float, L: int) -> np.ndarray:
    """(K, L) matrix of 1-D Gaussians exp(-(i - c)^2 / 2 s^2)."""
    i = np.arange(L, dtype=np.float64)[None, :]
    s = np.asarray(sigma, dtype=np.float64).reshape(-1, 1)
    return np.exp(-((i - centres[:, None]) ** 2) / (2 * s**2))


def render(Ly: int, Lx: int, cy: np.ndarray, cx: np.ndarray, sig: np.ndarray | float,
           amp: np.ndarray) -> np.ndarray:
    """Sum of Gaussian blobs as one matrix product (fast and exact at any subpixel position)."""
    gy = _gauss_rows(cy, sig, Ly)
    gx = _gauss_rows(cx, sig, Lx)
    return gy.T @ (amp[:, None] * gx)


def make_movie(T: int = 60, Ly: int = 256, Lx: int = 256, n_cells: int = 60, *, max_shift: float = 8.0,
               seed: int = 0, sigma: float = 2.5, photons: float = 1.0, baseline: float = 200.0,
               jumps: bool = True) -> SynthMovie:
    """Render a movie; ``max_shift`` bounds |dy|, |dx|. ``photons`` scales the shot-noise level (1 = realistic
    noisy, larger = cleaner)."""
    rng = np.random.default_rng(seed)
    margin = max_shift + 4 * sigma + 2
    # cells on a jittered grid so most are isolated
    n_side = int(np.ceil(np.sqrt(n_cells)))
    gy, gx = np.meshgrid(np.linspace(margin, Ly - margin, n_side), np.linspace(margin, Lx - margin, n_side),
                         indexing="ij")
    centres = np.stack([gy.ravel(), gx.ravel()], axis=1)[:n_cells]
    centres += rng.uniform(-2.0, 2.0, centres.shape)
    # traces: baseline + sparse exponential transients
    t = np.arange(T)
    traces = np.full((n_cells, T), 1.0)
    for k in range(n_cells):
        for onset in rng.choice(T, size=max(1, T // 15), replace=False):
            traces[k, onset:] += rng.uniform(1.0, 4.0) * np.exp(-(t[onset:] - onset) / 6.0)
    neuropil = 1.0 + 0.2 * np.sin(t / 7.0) + 0.05 * rng.standard_normal(T)
    # static texture (vessels/dendrites stand-in) and broad glow
    n_tex = Ly * Lx // 60
    tex_y, tex_x = rng.uniform(-10, Ly + 10, n_tex), rng.uniform(-10, Lx + 10, n_tex)
    tex_s, tex_a = rng.uniform(1.0, 2.5, n_tex), rng.uniform(0.1, 0.6, n_tex)
    n_glow = 12
    glow_y, glow_x = rng.uniform(0, Ly, n_glow), rng.uniform(0, Lx, n_glow)
    glow_s, glow_a = rng.uniform(20, 50, n_glow), rng.uniform(0.2, 0.5, n_glow)
    # shifts: bounded random walk with subpixel steps and a few jumps
    shifts = np.zeros((T, 2))
    pos = rng.uniform(-max_shift / 2, max_shift / 2, 2)
    for i in range(T):
        pos = pos + rng.normal(0, 0.6, 2)
        if jumps and rng.random() < 0.05:
            pos = rng.uniform(-max_shift, max_shift, 2)
        pos = np.clip(pos, -max_shift, max_shift)
        shifts[i] = pos

    scale = 400.0 * photons
    frames = np.empty((T, Ly, Lx), np.uint16)
    for i in range(T):
        dy, dx = shifts[i]
        img = render(Ly, Lx, centres[:, 0] + dy, centres[:, 1] + dx, sigma, traces[:, i])
        img += render(Ly, Lx, tex_y + dy, tex_x + dx, tex_s, tex_a)
        img += neuropil[i] * render(Ly, Lx, glow_y + dy, glow_x + dx, glow_s, glow_a)
        expected = baseline + scale * img
        noisy = expected + rng.standard_normal((Ly, Lx)) * np.sqrt(expected * 40.0 / photons)
        frames[i] = np.clip(noisy, 0, 65535).astype(np.uint16)
    mean_tr = traces.mean(axis=1)
    reference = (baseline + scale * (render(Ly, Lx, centres[:, 0], centres[:, 1], sigma, mean_tr)
                                     + render(Ly, Lx, tex_y, tex_x, tex_s, tex_a)
                                     + neuropil.mean() * render(Ly, Lx, glow_y, glow_x, glow_s, glow_a)))
    stat, isolated = _cell_stat(centres, sigma, Ly, Lx)
    static = scale * render(Ly, Lx, tex_y, tex_x, tex_s, tex_a)
    glow = scale * render(Ly, Lx, glow_y, glow_x, glow_s, glow_a)
    return SynthMovie(frames, shifts, traces, neuropil, centres, sigma, reference.astype(np.float32), stat,
                      isolated, static, glow, baseline, scale)


def _cell_stat(centres: np.ndarray, sigma: float, Ly: int, Lx: int) -> tuple[list[dict], np.ndarray]:
    """suite2p-style stat entries: pixels within 2 sigma, lam = the blob footprint; overlap per pixel."""
    radius = int(np.ceil(2 * sigma))
    count = np.zeros((Ly, Lx), int)
    raw = []
    for cy, cx in centres:
        yy, xx = np.mgrid[int(cy) - radius:int(cy) + radius + 2, int(cx) - radius:int(cx) + radius + 2]
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        keep = (d2 <= (2 * sigma) ** 2) & (yy >= 0) & (yy < Ly) & (xx >= 0) & (xx < Lx)
        ypix, xpix = yy[keep], xx[keep]
        lam = np.exp(-d2[keep] / (2 * sigma**2)).astype(np.float32)
        count[ypix, xpix] += 1
        raw.append((ypix, xpix, lam, cy, cx))
    stat = []
    for ypix, xpix, lam, cy, cx in raw:
        stat.append({"ypix": ypix.astype(np.int32), "xpix": xpix.astype(np.int32), "lam": lam,
                     "med": [int(round(cy)), int(round(cx))], "npix": int(ypix.size),
                     "radius": float(2 * sigma), "overlap": count[ypix, xpix] > 1})
    # isolated: no other cell centre within 5 sigma
    d = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return stat, d.min(axis=1) > 5 * sigma


@dataclass
class PmtMovie:
    """A movie made unlike :func:`make_movie`: dense tissue, few photons, PMT gain noise, bleaching."""

    frames: np.ndarray  # (T, Ly, Lx) int16, as suite2p writes and most scopes deliver
    shifts: np.ndarray  # (T, 2) true (dy, dx), content displacement relative to ``clean_reference``
    traces: np.ndarray  # (n_cells, T) true cell amplitudes (relative brightness)
    centres: np.ndarray  # (n_cells, 2)
    clean_reference: np.ndarray  # (Ly, Lx) float32 noiseless mean image at zero shift, in counts
    clean: np.ndarray  # (T, Ly, Lx) float32 noiseless frames *before* motion, in counts
    photons: float
    gain: float  # counts per photon


def make_pmt_movie(T: int = 300, Ly: int = 256, Lx: int = 256, n_cells: int = 60, *, photons: float = 4.0,
                   max_shift: float = 6.0, neuropil: float = 1.0, texture: float = 0.1, cell_brightness: float = 1.0,
                   gain: float = 60.0, offset: float = 50.0, bleach: float = 0.2, seed: int = 0) -> PmtMovie:
    """An independent generator (not :func:`make_movie`'s statistics): a band-limited random tissue field
    (periodic, so a Fourier shift moves it exactly), ring-shaped cells with GCaMP-like transients, a slowly
    varying neuropil whose brightness ``neuropil`` scales, bleaching, and per-pixel photon counts
    (``photons`` at baseline) multiplied by an exponentially distributed PMT gain per photon plus a read
    offset. Motion: a slow subpixel drift with tremor and rare jumps, bounded by ``max_shift``. ``texture``
    sets the fine tissue contrast, ``cell_brightness`` the cells' resting brightness against the tissue.
    """
    rng = np.random.default_rng(seed)
    ky, kx = np.fft.fftfreq(Ly)[:, None], np.fft.rfftfreq(Lx)[None, :]
    k2 = ky**2 + kx**2

    def field(scale: float) -> np.ndarray:  # periodic band-limited random field, unit std
        spec = np.fft.rfft2(rng.standard_normal((Ly, Lx))) * np.exp(-k2 * (np.pi * scale) ** 2 * 2)
        out = np.fft.irfft2(spec, s=(Ly, Lx))
        return (out - out.mean()) / out.std()

    tissue = np.clip(1.0 + texture * field(1.2) + 0.2 * field(4.0), 0.05, None)  # fine + coarse texture
    glow = np.clip(1.0 + 0.5 * field(25.0), 0.1, None)  # neuropil, brighter in places
    margin = 4 * 3.0 + 2
    centres = rng.uniform(margin, [Ly - margin, Lx - margin], (n_cells, 2))
    yy, xx = np.mgrid[:Ly, :Lx]
    masks = np.zeros((n_cells, Ly, Lx), np.float32)
    for k, (cy, cx) in enumerate(centres):
        r = np.hypot(yy - cy, xx - cx)
        masks[k] = np.exp(-((r - 3.0) ** 2) / (2 * 1.3**2)) * (r < 7)  # a ring: cytosolic GCaMP, dark nucleus
    tt = np.arange(T)
    traces = np.ones((n_cells, T))
    for k in range(n_cells):
        for onset in rng.choice(T, size=max(1, T // 25), replace=False):
            traces[k, onset:] += rng.uniform(0.5, 2.0) * np.exp(-(tt[onset:] - onset) / 15.0)
    np_trace = 1.0 + 0.3 * np.sin(tt / 40.0 + rng.uniform(0, 6)) + 0.05 * rng.standard_normal(T)
    bleaching = 1.0 - bleach * tt / max(T - 1, 1)
    shifts = np.zeros((T, 2))
    slow = rng.uniform(-max_shift / 3, max_shift / 3, 2)
    for i in range(T):
        slow = slow + rng.normal(0, 0.25, 2)
        if rng.random() < 0.01:
            slow = rng.uniform(-max_shift, max_shift, 2)
        slow = np.clip(slow, -max_shift * 0.9, max_shift * 0.9)
        shifts[i] = np.clip(slow + rng.normal(0, 0.3, 2), -max_shift, max_shift)
    cell_img = masks.reshape(n_cells, -1)
    clean = np.empty((T, Ly, Lx), np.float32)
    frames = np.empty((T, Ly, Lx), np.int16)
    scale = photons / 1.6  # the tissue + glow mean is ~1.6 at baseline
    for i in range(T):
        img = tissue + neuropil * np_trace[i] * glow * 0.6
        img = img + (traces[:, i] @ cell_img).reshape(Ly, Lx) * cell_brightness
        img = img * bleaching[i]
        clean[i] = img * scale * gain
        spec = np.fft.rfft2(img) * np.exp(-2j * np.pi * (ky * shifts[i, 0] + kx * shifts[i, 1]))
        lam = np.clip(np.fft.irfft2(spec, s=(Ly, Lx)) * scale, 0, None)
        n_ph = rng.poisson(lam)
        counts = np.where(n_ph > 0, rng.gamma(np.maximum(n_ph, 1), gain), 0.0)  # exponential gain per photon
        counts += offset + rng.normal(0, 0.3 * gain, (Ly, Lx))
        frames[i] = np.clip(counts, -32768, 32767).astype(np.int16)
    clean_reference = clean.mean(axis=0)
    return PmtMovie(frames, shifts, traces, centres, clean_reference.astype(np.float32), clean, photons, gain)


# ---------------------------------------------------------------- tests of the generator itself


def test_render_places_blob_at_subpixel_centre():
    img = render(40, 40, np.array([10.3]), np.array([20.7]), 2.0, np.array([1.0]))
    yy, xx = np.mgrid[:40, :40]
    assert abs((img * yy).sum() / img.sum() - 10.3) < 1e-6
    assert abs((img * xx).sum() / img.sum() - 20.7) < 1e-6


def test_movie_shifts_move_the_content():
    movie = make_movie(T=20, Ly=96, Lx=96, n_cells=9, max_shift=4.0, photons=1000.0, seed=3)
    assert movie.frames.shape == (20, 96, 96)
    assert np.abs(movie.shifts).max() <= 4.0
    # a frame with a large true shift is closer to the shifted reference than to the unshifted one
    i = int(np.argmax(np.abs(movie.shifts).sum(1)))
    dy, dx = np.round(movie.shifts[i]).astype(int)
    ref = movie.reference
    frame = movie.frames[i].astype(float)
    inner = (slice(10, 86), slice(10, 86))
    moved = np.roll(ref, (dy, dx), axis=(0, 1))
    assert np.abs(frame[inner] - moved[inner]).mean() < np.abs(frame[inner] - ref[inner]).mean()


def test_pmt_movie_counts_photons_times_gain():
    """Mean = offset + photons x gain x brightness; the variance is compound Poisson with exponential gain
    (2 x gain x signal), far above the simulator's Gaussian shot noise: a different noise model."""
    movie = make_pmt_movie(T=4, Ly=64, Lx=64, n_cells=4, photons=4.0, max_shift=0.0, bleach=0.0, seed=2)
    signal = movie.clean.astype(np.float64)  # no motion: the noiseless frames are what was sampled
    frames = movie.frames.astype(np.float64) - 50.0
    assert abs(frames.mean() / signal.mean() - 1) < 0.03
    read_var = (0.3 * movie.gain) ** 2
    ratio = ((frames - signal) ** 2).mean() / (2 * movie.gain * signal.mean() + read_var)
    assert 0.85 < ratio < 1.15
