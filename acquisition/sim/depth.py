"""The simulated tissue in depth: cells as spheres seen through an axial point-spread function, z motion.

Why its own module: the 2-D scene (:mod:`acquisition.sim.anatomy`) and the renderer
(:mod:`acquisition.sim.scope`) stay as they are when the focal plane does not move; this model only says
how the image changes when it does, so a session without z motion renders exactly as before.

The model, all in micrometres:

* every cell is a sphere of radius ``cell_radius_px * pixel_size_um`` whose centre lies ``cell_z`` from the
  focal plane (the ROIs are cells found in that plane, so ``|cell_z| <= 0.7 radius``);
* its brightness when the focal plane is at ``z`` is the sphere's cross-section area at ``z`` (``1 - d^2/R^2``)
  blurred by a Gaussian axial PSF of FWHM ``axial_fwhm_um``, relative to the same at ``z = 0``;
* the fine and medium neuropil texture changes with depth: the tissue is independent textures every half
  PSF FWHM, seen through the axial PSF (a Gaussian-weighted sum of them, variance kept constant), so the
  texture decorrelates over about the PSF's width as the plane moves away;
* ``z(t)`` is a slow drift ``-(D/2) cos(pi t / period)`` (peak-to-peak ``D = z_drift_um`` over one period,
  centred on the focal plane) plus occasional jumps that relax back.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from acquisition.sim.scope import SimScope

_SPAN_UM = 40.0  # the model covers the focal plane +- this much
_TABLE_STEP_UM = 0.1
_TEXTURE = ((1.2, 0.22), (5.0, 0.18))  # (smoothing px, amplitude) of the depth-varying neuropil components


def axial_profile(dz_um: np.ndarray, radius_um: float, fwhm_um: float) -> np.ndarray:
    """Brightness of a sphere of ``radius_um`` whose centre is ``dz_um`` from the focal plane (peak 1 at 0)."""
    sigma = fwhm_um / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    u = np.arange(-radius_um, radius_um + 1e-9, 0.1)
    area = np.clip(1.0 - (u / radius_um) ** 2, 0.0, None)  # cross-section area of the sphere at depth u
    dz = np.asarray(dz_um, np.float64)
    w = np.exp(-((dz[..., None] - u) ** 2) / (2 * sigma**2))
    out = (w * area).sum(-1)
    peak = (np.exp(-(u**2) / (2 * sigma**2)) * area).sum()
    return out / peak


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for sigma, amp in _TEXTURE:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
        out += np.float32(amp) * (field / (field.std() + 1e-12)).astype(np.float32)
    return out


class DepthModel:
    """Per-cell gain and neuropil change for a focal plane at ``z`` um; steps ``z(t)`` frame by frame."""

    def __init__(self, scope: SimScope) -> None:
        cfg = scope.cfg
        self.cfg = cfg
        self.frame_rate_hz = scope.frame_rate_hz
        # a child of the session seed that no other part of the simulator draws from
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(4,)))
        an = scope.anatomy
        self.radius_um = np.array([c.radius for c in an.cells]) * cfg.pixel_size_um
        self.cell_z_um = np.clip(rng.normal(0.0, cfg.cell_depth_sd_um, len(an.cells)),
                                 -0.7 * self.radius_um, 0.7 * self.radius_um)
        grid = np.arange(-_SPAN_UM, _SPAN_UM + 1e-9, _TABLE_STEP_UM)
        self._grid0 = grid[0]
        table = np.stack([axial_profile(grid - z0, r, cfg.axial_fwhm_um)
                          for z0, r in zip(self.cell_z_um, self.radius_um, strict=True)])
        self._table = table / table[:, [int(round(-grid[0] / _TABLE_STEP_UM))]]  # relative to z = 0
        self._node_um = cfg.axial_fwhm_um / 2.0
        self._psf_sigma = cfg.axial_fwhm_um / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        n_half = int(math.ceil((_SPAN_UM + 3 * self._psf_sigma) / self._node_um))
        self._node_z = self._node_um * np.arange(-n_half, n_half + 1)
        shape = an.neuropil.shape
        weight = an.neuropil / float(an.neuropil.mean())  # dark vessels stay dark at every depth
        self._nodes = [_texture(rng, shape) * weight for _ in range(self._node_z.size)]
        self._node0 = self._blend(0.0, np.empty(shape, np.float32)).copy()
        self._delta = np.empty(shape, np.float32)
        self._jump_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, cfg.day], spawn_key=(5,)))
        self._a_jump = math.exp(-1.0 / (scope.frame_rate_hz * cfg.z_jump_tau_s))
        self._p_jump = 1.0 - math.exp(-cfg.z_jump_rate_hz / scope.frame_rate_hz)
        self._jump = 0.0
        self._frame = 0
        self.z_um = self.z_at(0)
        self.gain = self.gain_at(self.z_um)

    def drift_at(self, frame: int) -> float:
        t = frame / self.frame_rate_hz
        return -0.5 * self.cfg.z_drift_um * math.cos(math.pi * t / self.cfg.z_drift_period_s)

    def z_at(self, frame: int) -> float:
        return self.drift_at(frame) + self._jump

    def step(self) -> np.ndarray:
        """Advance one frame: new ``z_um`` and per-cell ``gain``; returns the gain."""
        self._jump *= self._a_jump
        if self._p_jump > 0 and self._jump_rng.random() < self._p_jump:
            self._jump += self.cfg.z_jump_sd_um * float(self._jump_rng.standard_normal())
        self.z_um = self.z_at(self._frame)
        self._frame += 1
        self.gain = self.gain_at(self.z_um)
        return self.gain

    def gain_at(self, z_um: float) -> np.ndarray:
        """Each cell's brightness at focal depth ``z_um`` relative to its brightness at 0."""
        pos = (min(max(z_um, -_SPAN_UM), _SPAN_UM) - self._grid0) / _TABLE_STEP_UM
        i = min(int(pos), self._table.shape[1] - 2)
        f = pos - i
        return (1.0 - f) * self._table[:, i] + f * self._table[:, i + 1]

    def _blend(self, z_um: float, out: np.ndarray) -> np.ndarray:
        z = min(max(z_um, -_SPAN_UM), _SPAN_UM)
        near = np.flatnonzero(np.abs(self._node_z - z) <= 3 * self._psf_sigma)
        w = np.exp(-((self._node_z[near] - z) ** 2) / (2 * self._psf_sigma**2))
        w /= math.sqrt(float(w @ w))
        out.fill(0.0)
        for k, wk in zip(near, w, strict=True):
            out += np.float32(wk) * self._nodes[k]
        return out

    def texture_delta(self, z_um: float, out: np.ndarray) -> np.ndarray:
        """Relative neuropil brightness change at ``z_um`` (0 at the focal plane), on the canvas, into ``out``."""
        self._blend(z_um, out)
        out -= self._node0
        return out

    def apply(self, work: np.ndarray, amp: np.ndarray, dff: np.ndarray, cell_scale: np.ndarray,
              neuropil: np.ndarray, level: float) -> None:
        """Turn the renderer's in-focus frame into this depth's: cells' changing part and neuropil texture.

        ``amp`` (the cells' change over the static image, photons) becomes ``scale * (gain * (1 + dff) - 1)``;
        ``work`` gains ``neuropil * level * texture_delta``.
        """
        np.multiply(self.gain, 1.0 + dff, out=amp, casting="unsafe")
        amp -= 1.0
        amp *= cell_scale.astype(np.float32)
        if self.z_um != 0.0:
            delta = self.texture_delta(self.z_um, self._delta)
            delta *= neuropil
            delta *= np.float32(level)
            work += delta

    def expected_image(self, scope: SimScope, z_um: float) -> np.ndarray:
        """Noise-free image at focal depth ``z_um``, zero motion, baseline activity, in ADC counts (float32)."""
        # the renderer's precomputed scene (same package: the depth model is the renderer's companion)
        work = scope._static_raw.copy()
        cells = scope.brightness * (self.gain_at(z_um) - 1.0)
        work.reshape(-1)[scope._active] += scope._W @ cells.astype(np.float32)
        delta = self.texture_delta(z_um, np.empty_like(work))
        work += delta * scope._neuropil_photons
        m = scope.anatomy.margin
        Ly, Lx = scope.shape
        photons = work[m : m + Ly, m : m + Lx] + scope.cfg.dark_photons
        return (photons * scope.cfg.pmt_gain + scope.cfg.adc_offset).astype(np.float32)
