"""Spikes -> calcium -> dF/F with GCaMP kinetics, one step per frame for all cells at once.

Calcium kernel of one spike (DOMAIN.md section 4): c(t) = e^(-t/tau_d) * (1 - e^(-t/tau_r)), i.e. the
difference of two exponentials with rates 1/tau_d and 1/tau_d + 1/tau_r, so two AR(1) states per cell.
The indicator then saturates: dF/F = dff_max * x / (1 + x) with x = k * c, k chosen so one spike gives
the published single-AP dF/F at the kernel's peak (a frame-sampled peak is lower for slow rises).
"""

from __future__ import annotations

import math
from types import MappingProxyType

import msgspec
import numpy as np


class Indicator(msgspec.Struct, frozen=True, kw_only=True):
    """GCaMP kinetics: rise/decay time constants, single-AP amplitude, saturation."""

    name: str
    tau_rise_s: float
    tau_decay_s: float
    single_ap_dff: float
    dff_max: float


# Rise/decay from DOMAIN.md section 4 (7f and 8m decays: middle of the published ranges);
# single-AP dF/F for 6f/6s from Chen et al. 2013, 7f/8m from DOMAIN.md; saturation after NAOMi.
INDICATOR_PRESETS: MappingProxyType[str, Indicator] = MappingProxyType(
    {
        "6f": Indicator(name="GCaMP6f", tau_rise_s=0.010, tau_decay_s=0.683, single_ap_dff=0.19, dff_max=25.0),
        "6s": Indicator(name="GCaMP6s", tau_rise_s=0.051, tau_decay_s=1.702, single_ap_dff=0.25, dff_max=25.0),
        "7f": Indicator(name="jGCaMP7f", tau_rise_s=0.016, tau_decay_s=0.265, single_ap_dff=0.21, dff_max=25.0),
        "8m": Indicator(name="jGCaMP8m", tau_rise_s=0.0025, tau_decay_s=0.140, single_ap_dff=0.76, dff_max=25.0),
    }
)


def indicator_preset(code: str) -> Indicator:
    """The preset for an indicator code ("6f", "6s", "7f", "8m")."""
    try:
        return INDICATOR_PRESETS[code]
    except KeyError:
        raise ValueError(f"unknown indicator {code!r}: choose one of {sorted(INDICATOR_PRESETS)}") from None


class CalciumModel:
    """Per-frame calcium and dF/F for ``n_cells``; ``step`` reuses its buffers (no per-frame allocation)."""

    def __init__(self, indicator: Indicator, n_cells: int, frame_rate_hz: float) -> None:
        if frame_rate_hz <= 0:
            raise ValueError(f"frame_rate_hz must be > 0 (got {frame_rate_hz})")
        self.indicator = indicator
        dt = 1.0 / frame_rate_hz
        self._decay_slow = math.exp(-dt / indicator.tau_decay_s)
        self._decay_fast = math.exp(-dt * (1.0 / indicator.tau_decay_s + 1.0 / indicator.tau_rise_s))
        a1, dmax = indicator.single_ap_dff, indicator.dff_max
        # the kernel's peak is below 1 when the rise is not much faster than the decay: normalise it
        slow, fast = 1.0 / indicator.tau_decay_s, 1.0 / indicator.tau_decay_s + 1.0 / indicator.tau_rise_s
        t_peak = math.log(fast / slow) / (fast - slow)
        kernel_peak = math.exp(-slow * t_peak) - math.exp(-fast * t_peak)
        self._k = a1 / (dmax - a1) / kernel_peak
        self._slow = np.zeros(n_cells, np.float64)
        self._fast = np.zeros(n_cells, np.float64)
        self.calcium = np.zeros(n_cells, np.float64)
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
        np.multiply(self.calcium, self._k, out=self._x)
        np.divide(self._x, 1.0 + self._x, out=self.dff)
        self.dff *= self.indicator.dff_max
        return self.dff
