"""Spikes -> calcium -> dF/F with GCaMP kinetics, one step per frame for all cells at once.

Calcium kernel of one spike: c(t) = e^(-t/tau_d) * (1 - e^(-t/tau_r)), the difference of two exponentials
with rates 1/tau_d and 1/tau_d + 1/tau_r, so two AR(1) states per cell. The indicator then binds calcium
cooperatively (a Hill curve, as NAOMi models it), on top of the resting calcium::

    F(ca) / F_max = 1/R + (1 - 1/R) * ca^n / (ca^n + Kd^n)        ca = ca_rest + A * c(t)
    dF/F          = F(ca) / F(ca_rest) - 1

with the indicator's published affinity ``Kd``, Hill coefficient ``n`` and dynamic range ``R = F_max/F_min``
(in-vitro titrations) and ``A`` (nM per spike after buffering) chosen so that one spike gives the published
single-AP dF/F at the kernel's peak (a frame-sampled peak is lower for slow rises). Near rest the response
is supralinear (two spikes give more than twice one spike's dF/F, as measured for GCaMP6), and it saturates
at ``dff_max = F_max / F(ca_rest) - 1``.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import msgspec
import numpy as np

CA_REST_NM = 50.0  # resting free calcium of a cortical neuron (NAOMi's value)


class Indicator(msgspec.Struct, frozen=True, kw_only=True):
    """GCaMP kinetics and calcium binding: rise/decay, single-AP amplitude, Hill curve."""

    name: str
    tau_rise_s: float
    tau_decay_s: float
    single_ap_dff: float
    kd_nm: float  # calcium at half-maximal fluorescence
    hill_n: float  # cooperativity
    dynamic_range: float  # F_max / F_min (calcium-saturated over calcium-free)

    def fluorescence(self, ca_nm: np.ndarray | float) -> np.ndarray | float:
        """F / F_max at free calcium ``ca_nm``."""
        x = (np.asarray(ca_nm, float) / self.kd_nm) ** self.hill_n
        return 1.0 / self.dynamic_range + (1.0 - 1.0 / self.dynamic_range) * x / (1.0 + x)

    @property
    def dff_max(self) -> float:
        """The largest dF/F a cell at rest can show (the indicator saturated)."""
        return 1.0 / float(self.fluorescence(CA_REST_NM)) - 1.0


# Rise/decay as published (7f and 8m decays: middle of the published ranges); single-AP dF/F for 6f/6s from
# Chen et al. 2013, 7f/8m from Dana et al. 2019 / Zhang et al. 2023; Kd, Hill n and dynamic range from the
# same papers' in-vitro titrations (docs/SIMULATOR.md).
INDICATOR_PRESETS: MappingProxyType[str, Indicator] = MappingProxyType(
    {
        "6f": Indicator(name="GCaMP6f", tau_rise_s=0.010, tau_decay_s=0.683, single_ap_dff=0.19,
                        kd_nm=375.0, hill_n=2.27, dynamic_range=52.8),
        "6s": Indicator(name="GCaMP6s", tau_rise_s=0.051, tau_decay_s=1.702, single_ap_dff=0.25,
                        kd_nm=144.0, hill_n=2.90, dynamic_range=64.2),
        "7f": Indicator(name="jGCaMP7f", tau_rise_s=0.016, tau_decay_s=0.265, single_ap_dff=0.21,
                        kd_nm=174.0, hill_n=2.3, dynamic_range=31.2),
        "8m": Indicator(name="jGCaMP8m", tau_rise_s=0.0025, tau_decay_s=0.140, single_ap_dff=0.76,
                        kd_nm=108.0, hill_n=1.92, dynamic_range=46.0),
    }
)


def indicator_preset(code: str) -> Indicator:
    """The preset for an indicator code ("6f", "6s", "7f", "8m")."""
    try:
        return INDICATOR_PRESETS[code]
    except KeyError:
        raise ValueError(f"unknown indicator {code!r}: choose one of {sorted(INDICATOR_PRESETS)}") from None


def calcium_per_spike_nm(indicator: Indicator) -> float:
    """``A``: the calcium (nM, at the kernel's peak) of one spike that gives the published single-AP dF/F."""
    f_rest = float(indicator.fluorescence(CA_REST_NM))
    target = f_rest * (1.0 + indicator.single_ap_dff)
    if not target < 1.0:
        raise ValueError(f"{indicator.name}: single-AP dF/F {indicator.single_ap_dff} exceeds dff_max "
                         f"{indicator.dff_max:.2f}")
    lo, hi = 0.0, indicator.kd_nm
    while float(indicator.fluorescence(CA_REST_NM + hi)) < target:
        hi *= 2.0
    for _ in range(100):  # bisection: F is increasing in calcium
        mid = 0.5 * (lo + hi)
        if float(indicator.fluorescence(CA_REST_NM + mid)) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class CalciumModel:
    """Per-frame calcium and dF/F for ``n_cells``; ``step`` reuses its buffers (no per-frame allocation)."""

    def __init__(self, indicator: Indicator, n_cells: int, frame_rate_hz: float) -> None:
        if frame_rate_hz <= 0:
            raise ValueError(f"frame_rate_hz must be > 0 (got {frame_rate_hz})")
        self.indicator = indicator
        dt = 1.0 / frame_rate_hz
        self._decay_slow = math.exp(-dt / indicator.tau_decay_s)
        self._decay_fast = math.exp(-dt * (1.0 / indicator.tau_decay_s + 1.0 / indicator.tau_rise_s))
        # the kernel's peak is below 1 when the rise is not much faster than the decay: normalise it
        slow, fast = 1.0 / indicator.tau_decay_s, 1.0 / indicator.tau_decay_s + 1.0 / indicator.tau_rise_s
        t_peak = math.log(fast / slow) / (fast - slow)
        kernel_peak = math.exp(-slow * t_peak) - math.exp(-fast * t_peak)
        self._scale = calcium_per_spike_nm(indicator) / kernel_peak / indicator.kd_nm  # kernel -> ca / Kd
        self._rest = CA_REST_NM / indicator.kd_nm
        self._n = indicator.hill_n
        self._fmin = 1.0 / indicator.dynamic_range
        self._f_rest = float(indicator.fluorescence(CA_REST_NM))
        self._slow = np.zeros(n_cells, np.float64)
        self._fast = np.zeros(n_cells, np.float64)
        self.calcium = np.zeros(n_cells, np.float64)  # the kernel sum (spikes, normalised)
        self.dff = np.zeros(n_cells, np.float64)
        self._x = np.zeros(n_cells, np.float64)

    def step(self, spikes: np.ndarray) -> np.ndarray:
        """Advance one frame with this frame's spike counts; return dF/F (an internal buffer)."""
        # states are sampled at the end of the frame, a spike arriving at its start: a spike is
        # visible in its own frame (after the rise), as in a real scan
        self._slow += spikes
        self._slow *= self._decay_slow
        self._fast += spikes
        self._fast *= self._decay_fast
        np.subtract(self._slow, self._fast, out=self.calcium)
        x = self._x
        np.multiply(self.calcium, self._scale, out=x)
        x += self._rest
        np.power(x, self._n, out=x)
        np.divide(x, 1.0 + x, out=self.dff)  # Hill occupancy
        self.dff *= 1.0 - self._fmin
        self.dff += self._fmin
        self.dff *= 1.0 / self._f_rest
        self.dff -= 1.0
        return self.dff
