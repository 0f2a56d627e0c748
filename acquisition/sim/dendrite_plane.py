"""Plane 1 of a two-plane simulated scope: the apical dendrites' cross-sections, imaged like plane 0.

Why its own module: plane 0's renderer (:class:`acquisition.sim.scope.SimScope`) stays exactly as it was,
at the same per-frame cost; this renderer only adds plane 1 when ``n_planes = 2``. Plane 1 lies
``dendrites.depth_um`` above plane 0 (layer 1, the tuft): no somata, its own neuropil texture and
brightness, each imaged dendrite a small soft disk near its soma's x-y (:mod:`acquisition.sim.dendrites`).
It shares the volume's brain motion, bleaching, PMT and noise model with plane 0, with its own noise draws.
Focal-plane (z) motion is modelled for plane 0 only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse
from scipy.special import expit

from acquisition.sim.anatomy import _smooth_noise
from acquisition.sim.dendrites import DendriteActivity, DendriteLayout
from acquisition.sim.neuropil import NeuropilField

if TYPE_CHECKING:
    from acquisition.sim.scope import SimScope

_SEED_KEY = (23, 4)  # plane 1's tissue and noise draws (their own stream)
_EDGE_PX = 0.6  # softness of a dendrite's edge
_BLEACH_RESCALE = 2e-4


class DendritePlane:
    """Renders plane 1 for the volume ``scope`` last advanced; holds the dendrites' footprints (suite2p ROIs)."""

    def __init__(self, scope: SimScope, layout: DendriteLayout, activity: DendriteActivity) -> None:
        cfg = scope.cfg
        self.scope = scope
        self.layout = layout
        self.activity = activity
        m = scope.anatomy.margin
        H, W = scope.anatomy.neuropil.shape
        Ly, Lx = scope.shape
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=_SEED_KEY))
        tissue = 1.0 + 0.25 * _smooth_noise(rng, (H, W), 1.5) + 0.15 * _smooth_noise(rng, (H, W), 6.0)
        tissue += 0.1 * _smooth_noise(rng, (H, W), 40.0)
        np.maximum(tissue, 0.1, out=tissue)
        self.footprints: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (ypix, xpix, lam), field px
        rows, cols, vals = [], [], []
        for j in range(layout.n):
            cy, cx = layout.centers[j]
            r = float(layout.radius[j])
            half = int(math.ceil(r + 3 * _EDGE_PX)) + 1
            iy, ix = int(round(cy)), int(round(cx))
            yy, xx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
            lam = expit((r - np.hypot(yy - cy, xx - cx)) / _EDGE_PX)
            keep = (lam > 0.05) & (yy >= 0) & (yy < Ly) & (xx >= 0) & (xx < Lx)
            ypix, xpix, w = yy[keep].astype(np.int32), xx[keep].astype(np.int32), lam[keep].astype(np.float32)
            self.footprints.append((ypix, xpix, w))
            rows.append((ypix.astype(np.int64) + m) * W + (xpix + m))
            cols.append(np.full(ypix.size, j, np.int64))
            vals.append(w)
        flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        weights = np.concatenate(vals) if vals else np.zeros(0, np.float32)
        self._active, local = np.unique(flat, return_inverse=True)
        self._W = scipy.sparse.csr_matrix((weights, (local, np.concatenate(cols) if cols else flat)),
                                          shape=(self._active.size, layout.n))
        base = np.zeros(H * W, np.float64)
        np.add.at(base, flat, weights * np.repeat(layout.brightness, [f[0].size for f in self.footprints]))
        self._neuropil_photons = (cfg.dendrites.neuropil_photons * tissue).astype(np.float32)
        self._static_raw = (base.reshape(H, W) + self._neuropil_photons).astype(np.float32)
        self._static_const = np.float32(cfg.dark_photons - scope._enf / 8.0)
        self._static = np.empty((H, W), np.float32)
        self._np_scaled = np.empty((H, W), np.float32)
        self._bleach_applied = -1.0
        self._apply_bleach(1.0)
        self._work = np.empty((H, W), np.float32)
        self._work_flat = self._work.reshape(-1)
        self._lam = np.empty((Ly, Lx), np.float32)
        self._amp = np.zeros(layout.n, np.float32)
        self.neuropil_field = NeuropilField(layout.centers.reshape(-1, 2), (H, W), cfg.neuropil_coupling,
                                            cfg.neuropil_sigma_px, origin=m)
        self._noise_rng = rng
        self._choice = np.zeros(8, np.int64)

    def _apply_bleach(self, b: float) -> None:
        np.multiply(self._static_raw, np.float32(b), out=self._static)
        self._static += self._static_const
        np.multiply(self._neuropil_photons, np.float32(b), out=self._np_scaled)
        self._bleach_applied = b

    def render(self, out: np.ndarray, bleach: float) -> None:
        """Plane 1 of the volume the scope last advanced (same motion and bleaching) into ``out`` (uint16)."""
        scope = self.scope
        if abs(bleach - self._bleach_applied) > _BLEACH_RESCALE * self._bleach_applied:
            self._apply_bleach(bleach)
        dff = self.activity.dff
        self.neuropil_field.step(dff)
        work = self._work
        self.neuropil_field.modulate(self._np_scaled, out=work)
        work += self._static
        np.multiply(dff, self.layout.brightness * bleach, out=self._amp, casting="unsafe")
        self._work_flat[self._active] += self._W @ self._amp
        scope._shift_into(work, self._lam)
        k = scope.cfg.noise_bank_frames
        rng, ch, pad = self._noise_rng, self._choice, scope.noise_pad
        ch[0], ch[4] = rng.integers(0, k, 2)
        ch[1:3] = rng.integers(0, pad + 1, 2)
        ch[5:7] = rng.integers(0, pad + 1, 2)
        ch[3], ch[7] = rng.integers(0, 8), rng.integers(0, 4)
        scope._add_noise(self._lam, out, ch)

    def expected_image(self) -> np.ndarray:
        """Noise-free mean image of plane 1 at zero motion and baseline activity, ADC counts (float32)."""
        cfg = self.scope.cfg
        m = self.scope.anatomy.margin
        Ly, Lx = self.scope.shape
        photons = self._static_raw[m : m + Ly, m : m + Lx] + cfg.dark_photons
        return (photons * cfg.pmt_gain + cfg.adc_offset).astype(np.float32)
