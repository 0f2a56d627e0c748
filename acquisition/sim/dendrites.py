"""Apical dendrites on a second imaging plane: where they are and what their calcium does.

Why its own module: the dendrites are one model shared by both simulators. The trace simulator
(:class:`acquisition.sim.traces.TraceSim`) turns their dF/F into F/Fneu directly; the rendered scope
(:class:`acquisition.sim.scope.SimScope`, plane 1 drawn by :mod:`acquisition.sim.dendrite_plane`) images
them. Both build the same layout and the same activity from the same seed, so a dendrite's events are the
same in either path for the same mouse.

Model (docs/SIMULATOR.md, "Dendrites"), per frame, for dendrite ``j`` of soma ``p = parent[j]``::

    s_j      = mouse.instructive[p]                  the cell's instructive signal as its learning rule computed it
    s_lp_j   = low-pass of s_j over instructive_tau_s
    scale    = running RMS of s_lp over all dendrites (scale_tau_s): makes the signal unit-free per rule
    rate_j   = event_rate_hz * max(0, 1 + instructive_gain * tanh(s_lp_j / scale))
    events_j ~ Bernoulli(rate_j * dt)                dendrite-specific (plateau) events
    input_j  = bap_attenuation * spikes[p] + events_j * amplitude (log-normal, mean event_amplitude)
    dF/F_j   = CalciumModel(indicator with decay * decay_scale)(input_j)

``dff_bap`` is the same calcium model fed with the back-propagated spikes alone: the somatic component
the analysis must regress out. With ``learning_rule = "none"`` the signal is 0 and events come at the base rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from acquisition.sim.calcium import CalciumModel, indicator_preset
from acquisition.sim.config import DendriteConfig, SimConfig
from acquisition.sim.mouse import SimMouse

_BLOCK = 256  # frames of random numbers drawn at once
_SEED_KEY = 23  # spawn key of the dendrites' own random streams (the other streams stay as they were)


@dataclass
class DendriteLayout:
    """Which cells have an imaged dendrite and where it crosses plane 1 (field pixels, zero motion)."""

    parent: np.ndarray  # (n_d,) int64: the soma (plane-0 ROI / cell index) of each dendrite, ascending
    centers: np.ndarray  # (n_d, 2) float64 (y, x)
    radius: np.ndarray  # (n_d,) cross-section radius, px
    brightness: np.ndarray  # (n_d,) baseline photons/pixel/frame where the footprint is 1
    depth_um: float  # plane 1's height above plane 0

    @property
    def n(self) -> int:
        return int(self.parent.size)


def dendrite_seeds(cfg: SimConfig) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """(geometry, activity) streams of the dendrites; another ``day`` keeps the geometry, not the activity."""
    geometry = np.random.SeedSequence(cfg.seed, spawn_key=(_SEED_KEY, 0))
    activity = np.random.SeedSequence(cfg.seed if not cfg.day else [cfg.seed, cfg.day], spawn_key=(_SEED_KEY, 1))
    return geometry, activity


def build_layout(
    cfg: SimConfig,
    soma_centers: np.ndarray,
    soma_brightness: np.ndarray,
    up: Sequence[int] = (),
    down: Sequence[int] = (),
) -> DendriteLayout:
    """Every ensemble cell and ``dendrites.fraction`` of the others get one dendrite near their soma's x-y.

    Every cell's draws are made whether it gets a dendrite or not, so the ensembles given at start change
    only which dendrites exist, never where the others lie."""
    d = cfg.dendrites
    rng = np.random.default_rng(dendrite_seeds(cfg)[0])
    n = soma_centers.shape[0]
    u = rng.random(n)
    offsets = d.offset_px * rng.standard_normal((n, 2))
    radius = d.radius_px * np.exp(d.radius_cv * rng.standard_normal(n))
    radius = np.clip(radius, 0.5 * d.radius_px, 2.0 * d.radius_px)
    rel = d.brightness * np.exp(d.brightness_log_sd * rng.standard_normal(n))
    has = u < d.fraction
    for idx in (up, down):
        for i in idx:
            if 0 <= int(i) < n:
                has[int(i)] = True
    parent = np.flatnonzero(has).astype(np.int64)
    if parent.size == 0:
        raise ValueError(f"`dendrites.fraction`: with {d.fraction} and no ensembles given, none of the {n} cells "
                         "has a dendrite on plane 1; raise it or give the ensembles")
    centers = soma_centers[parent] + offsets[parent]
    pad = radius[parent, None] + 2.0
    hi = np.array([cfg.height_px - 1.0, cfg.width_px - 1.0])
    centers = np.clip(centers, pad, hi - pad)
    return DendriteLayout(parent=parent, centers=centers, radius=radius[parent],
                          brightness=np.asarray(soma_brightness, float)[parent] * rel[parent],
                          depth_um=d.depth_um)


class DendriteActivity:
    """Per-frame dendritic calcium of a layout, driven by the mouse's spikes and instructive signal.

    ``step(spikes)`` after ``mouse.step()``; then ``dff``, ``dff_bap``, ``events``, ``instructive``
    (the parent's raw signal), ``rate_hz`` (this frame's event rate) hold the frame's values (buffers)."""

    def __init__(self, cfg: SimConfig, layout: DendriteLayout, mouse: SimMouse, frame_rate_hz: float) -> None:
        d: DendriteConfig = cfg.dendrites
        self.cfg = d
        self.layout = layout
        self.mouse = mouse
        self._signal = mouse.track_instructive()
        n = layout.n
        self.dt = 1.0 / float(frame_rate_hz)
        self._rng = np.random.default_rng(dendrite_seeds(cfg)[1])
        ind = indicator_preset(cfg.indicator)
        dend_ind = msgspec.structs.replace(ind, tau_decay_s=ind.tau_decay_s * d.decay_scale)
        # one model for both: the first n inputs are the total, the last n the back-propagated spikes alone
        self.calcium = CalciumModel(dend_ind, 2 * n, frame_rate_hz)
        self._a_sig = math.exp(-self.dt / d.instructive_tau_s) if d.instructive_tau_s > 0 else 0.0
        self._a_scale = math.exp(-self.dt / d.scale_tau_s)
        self._mean_sq = 0.0
        self.scale = 0.0  # the running RMS of the low-passed signal over all dendrites
        self.instructive = np.zeros(n)  # s_j: the parent cell's signal this frame (per second)
        self.signal_lp = np.zeros(n)
        self.rate_hz = np.full(n, d.event_rate_hz)
        self.events = np.zeros(n, np.uint8)
        self.amplitude = np.zeros(n)  # this frame's event calcium (spike-equivalents; 0 without an event)
        self._input = np.zeros(2 * n)
        self.bap = self._input[n:]  # back-propagated spikes (spike-equivalents)
        self.dff = self.calcium.dff[:n]
        self.dff_bap = self.calcium.dff[n:]
        self._n = n
        self._spikes = np.zeros(n, np.int64)
        self._had_event = False
        self._inv_n = 1.0 / max(n, 1)
        self._tmp = np.zeros(n)
        self._sigma = math.sqrt(math.log(1.0 + d.event_amplitude_cv**2))
        self._mu = math.log(d.event_amplitude) - 0.5 * self._sigma**2
        self._u = np.zeros((_BLOCK, n))
        self._z = np.zeros((_BLOCK, n))
        self._block_i = _BLOCK

    def _refill(self) -> None:
        self._u[:] = self._rng.random(self._u.shape)
        self._z[:] = self._rng.standard_normal(self._z.shape)
        self._block_i = 0

    def step(self, spikes: np.ndarray) -> np.ndarray:
        """Advance one frame with the somata's spikes of this frame; return the dendrites' dF/F (a buffer)."""
        d = self.cfg
        if self._block_i >= _BLOCK:
            self._refill()
        i = self._block_i
        self._block_i += 1
        parent = self.layout.parent
        np.take(self._signal, parent, out=self.instructive)
        a = self._a_sig
        self.signal_lp *= a
        self.signal_lp += (1.0 - a) * self.instructive
        a = self._a_scale
        self._mean_sq = a * self._mean_sq + (1.0 - a) * float(np.dot(self.signal_lp, self.signal_lp)) * self._inv_n
        self.scale = math.sqrt(self._mean_sq)
        if self.scale > 0.0:
            np.divide(self.signal_lp, self.scale, out=self._tmp)
            np.tanh(self._tmp, out=self._tmp)
            self._tmp *= d.instructive_gain
            self._tmp += 1.0
            np.maximum(self._tmp, 0.0, out=self._tmp)
            np.multiply(self._tmp, d.event_rate_hz, out=self.rate_hz)
        else:
            self.rate_hz.fill(d.event_rate_hz)
        np.multiply(self.rate_hz, self.dt, out=self._tmp)
        fired = self._u[i] < self._tmp
        np.copyto(self.events, fired, casting="unsafe")
        any_event = bool(fired.any())
        if any_event:  # events are rare: most frames skip this
            np.multiply(self._z[i], self._sigma, out=self.amplitude)
            self.amplitude += self._mu
            np.exp(self.amplitude, out=self.amplitude)
            self.amplitude *= fired
        elif self._had_event:
            self.amplitude.fill(0.0)
        self._had_event = any_event
        np.take(spikes, parent, out=self._spikes)
        np.multiply(self._spikes, d.bap_attenuation, out=self.bap)
        np.add(self.bap, self.amplitude, out=self._input[: self._n])
        self.calcium.step(self._input)
        return self.dff
