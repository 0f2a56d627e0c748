"""Trace-level simulation: per-ROI F and Fneu straight from the mouse and the calcium model, no images.

Far faster than rendering frames (microseconds per frame), for closed-loop tests of the decoder and the
learning mouse. The numbers follow what suite2p-style extraction of :class:`SimScope` frames gives:
F is the lam-weighted mean of a soma's pixels (cell + neuropil under it, in ADC counts, with the ADC
offset), Fneu the mean of a neuropil ring, both with shot noise scaled to their pixel counts.

Realism that changes what the decoder sees: the neuropil under each ROI follows the cells near it
(:class:`acquisition.sim.neuropil.NeuropilField`, not one global level), and when the mouse licks (after
a reward) the brain moves by up to ``lick_motion_px``, which slides part of each soma out of its fixed
ROI and neuropil in: ``F`` keeps a fraction ``1 - (d / r)^2 / 2`` of the soma at a displacement ``d``.

With ``n_planes = 2`` each step also gives plane 1, the apical dendrites (:mod:`acquisition.sim.dendrites`):
``dend_F``/``dend_Fneu`` per dendrite ROI, ``dend_parent`` its soma (plane-0 ROI), ``dendrites`` the
activity and its truth (``dff_bap``, ``events``, ``instructive``, ``rate_hz``). Plane 0 is bit-identical to
a one-plane run: the dendrites draw from their own random streams and never touch the mouse's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from acquisition.sim.calcium import CalciumModel, indicator_preset
from acquisition.sim.config import SimConfig
from acquisition.sim.dendrites import DendriteActivity, build_layout
from acquisition.sim.mouse import SimMouse
from acquisition.sim.neuropil import NeuropilField

_SOMA_PIXELS = 90.0  # effective pixel count of a lam-weighted soma mean
_NEUROPIL_PIXELS = 350.0  # suite2p's minimum neuropil ring
_SOMA_MEAN_WEIGHT = 0.75  # mean footprint weight over a soma (dark nucleus, soft edge)
_DENDRITE_MEAN_WEIGHT = 0.8  # mean footprint weight over a dendrite's cross-section (soft edge)


class TraceSim:
    """``step()`` -> (F, Fneu) for every simulated cell, ROI i == cell i, like extraction would give."""

    def __init__(
        self,
        cfg: SimConfig,
        frame_rate_hz: float,
        up: Sequence[int] = (),
        down: Sequence[int] = (),
    ) -> None:
        self.cfg = cfg
        self.frame_rate_hz = float(frame_rate_hz)
        n = cfg.n_cells
        root = np.random.SeedSequence(cfg.seed)
        geometry_seq, mouse_seq, noise_seq = root.spawn(3)
        geo = np.random.default_rng(geometry_seq)
        self.mouse = SimMouse(cfg.mouse, n, frame_rate_hz, seed=mouse_seq, up=up, down=down)
        self.calcium = CalciumModel(indicator_preset(cfg.indicator), n, frame_rate_hz)
        self._rng = np.random.default_rng(noise_seq)
        self.brightness = cfg.cell_photons * np.exp(cfg.brightness_log_sd * geo.standard_normal(n))
        self.neuropil = cfg.neuropil_photons * np.exp(0.2 * geo.standard_normal(n))
        self.centers = geo.uniform((0.0, 0.0), (cfg.height_px - 1.0, cfg.width_px - 1.0), (n, 2))
        self.radius = cfg.cell_radius_px * np.exp(cfg.cell_radius_cv * geo.standard_normal(n))
        self.neuropil_field = NeuropilField(self.centers, (cfg.height_px, cfg.width_px), cfg.neuropil_coupling,
                                            cfg.neuropil_sigma_px)
        self._enf = 1.0 + cfg.pmt_gain_var / cfg.pmt_gain**2
        self._bleach_rate = 1.0 / (cfg.bleach_tau_s * frame_rate_hz)
        self._inv_r2 = 0.5 / self.radius**2
        self.frame = 0
        self.displacement_px = 0.0
        self.F = np.zeros(n)
        self.Fneu = np.zeros(n)
        self._lam_soma = np.zeros(n)
        self._lam_np = np.zeros(n)
        self._level = np.ones(n)
        self._kept = np.ones(n)
        self._z = np.zeros((2, n))
        self.dendrites: DendriteActivity | None = None
        if cfg.n_planes == 2:
            self._init_dendrites(up, down)

    def _init_dendrites(self, up: Sequence[int], down: Sequence[int]) -> None:
        """Plane 1: one dendrite per ensemble cell and per ``dendrites.fraction`` of the others."""
        cfg = self.cfg
        layout = build_layout(cfg, self.centers, self.brightness, up, down)
        self.dendrites = DendriteActivity(cfg, layout, self.mouse, self.frame_rate_hz)
        geo = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(23, 2)))
        nd = layout.n
        self.dend_parent = layout.parent
        self.dend_centers = layout.centers
        self.dend_neuropil = cfg.dendrites.neuropil_photons * np.exp(0.2 * geo.standard_normal(nd))
        self._dend_pixels = math.pi * layout.radius**2
        self._dend_inv_r2 = 0.5 / layout.radius**2
        self.dend_neuropil_field = NeuropilField(layout.centers, (cfg.height_px, cfg.width_px),
                                                 cfg.neuropil_coupling, cfg.neuropil_sigma_px)
        self._dend_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(23, 3)))
        self.dend_F = np.zeros(nd)
        self.dend_Fneu = np.zeros(nd)
        self._d_lam = np.zeros(nd)
        self._d_np = np.zeros(nd)
        self._d_level = np.ones(nd)
        self._d_kept = np.ones(nd)
        self._d_z = np.zeros((2, nd))

    def bleach(self) -> float:
        cfg = self.cfg
        return 1.0 - cfg.bleach_fraction * (1.0 - math.exp(-self.frame * self._bleach_rate))

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One frame: mouse spikes -> calcium -> F/Fneu with noise. Returns internal buffers."""
        cfg = self.cfg
        spikes = self.mouse.step()
        dff = self.calcium.step(spikes)
        self.neuropil_field.cell_levels(dff, self._level)
        b = self.bleach()
        # expected photons per pixel, then shot noise of the pixel average (Gaussian: many photons)
        np.multiply(dff, self.brightness, out=self._lam_soma)
        self._lam_soma += self.brightness
        self._lam_soma *= _SOMA_MEAN_WEIGHT
        np.multiply(self.neuropil, self._level, out=self._lam_np)
        self.displacement_px = cfg.lick_motion_px * self.mouse.lick_displacement
        if self.displacement_px > 0.0:
            # a lick moves the soma partly out of its ROI; the neuropil around it slides in
            np.multiply(self._inv_r2, -(self.displacement_px**2), out=self._kept)
            self._kept += 1.0
            np.clip(self._kept, 0.0, 1.0, out=self._kept)
            self._lam_soma *= self._kept
        self._lam_soma += self._lam_np
        self._lam_soma *= b
        self._lam_np *= b
        self._lam_soma += cfg.dark_photons
        self._lam_np += cfg.dark_photons
        self._z[:] = self._rng.standard_normal(self._z.shape)
        g = cfg.pmt_gain
        np.sqrt(self._lam_soma * (self._enf / _SOMA_PIXELS), out=self.F)
        self.F *= self._z[0]
        self.F += self._lam_soma
        self.F *= g
        self.F += cfg.adc_offset
        np.sqrt(self._lam_np * (self._enf / _NEUROPIL_PIXELS), out=self.Fneu)
        self.Fneu *= self._z[1]
        self.Fneu += self._lam_np
        self.Fneu *= g
        self.Fneu += cfg.adc_offset
        if self.dendrites is not None:
            self._step_dendrites(spikes, b)
        self.frame += 1
        return self.F, self.Fneu

    def _step_dendrites(self, spikes: np.ndarray, b: float) -> None:
        """Plane 1's F/Fneu, as for the somata: a small cross-section over its own neuropil."""
        cfg = self.cfg
        assert self.dendrites is not None
        layout = self.dendrites.layout
        dff = self.dendrites.step(spikes)
        self.dend_neuropil_field.cell_levels(dff, self._d_level)
        lam, lam_np = self._d_lam, self._d_np
        np.multiply(dff, layout.brightness, out=lam)
        lam += layout.brightness
        lam *= _DENDRITE_MEAN_WEIGHT
        np.multiply(self.dend_neuropil, self._d_level, out=lam_np)
        if self.displacement_px > 0.0:  # the lick moves a thin dendrite further out of its ROI
            np.multiply(self._dend_inv_r2, -(self.displacement_px**2), out=self._d_kept)
            self._d_kept += 1.0
            np.clip(self._d_kept, 0.0, 1.0, out=self._d_kept)
            lam *= self._d_kept
        lam += lam_np
        lam *= b
        lam_np *= b
        lam += cfg.dark_photons
        lam_np += cfg.dark_photons
        self._d_z[:] = self._dend_rng.standard_normal(self._d_z.shape)
        g = cfg.pmt_gain
        np.sqrt(lam * self._enf / self._dend_pixels, out=self.dend_F)
        self.dend_F *= self._d_z[0]
        self.dend_F += lam
        self.dend_F *= g
        self.dend_F += cfg.adc_offset
        np.sqrt(lam_np * (self._enf / _NEUROPIL_PIXELS), out=self.dend_Fneu)
        self.dend_Fneu *= self._d_z[1]
        self.dend_Fneu += lam_np
        self.dend_Fneu *= g
        self.dend_Fneu += cfg.adc_offset
