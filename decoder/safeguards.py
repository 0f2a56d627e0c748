"""F0 safeguards: which ROIs may enter an ensemble, and what to watch in them during BCI.

Why: dF/F divides by F0. A ROI whose F0 is within a few noise widths of zero (a dim cell after neuropil
subtraction) has a dF/F dominated by noise and can supply nearly all of its ensemble's variance, so the
cursor follows its noise, not the animal; the same happens with a ROI whose dF/F is far noisier than its
ensemble's other cells. Calibration refuses such ROIs (:func:`roi_problems`) unless the operator names
them in an explicit override (``decoder.safeguards.allow_rois`` or the calibrate command's
``allow_rois``). During BCI, :class:`DriftMonitor` compares each decoder ROI's F0 and dF/F noise with
their baseline values every ``check_every_s`` and reports a change beyond the limits once per excursion.

Noise is measured from first differences (robust: the median absolute difference · 1.4826 / √2), so
slow activity and drift do not count as noise.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from decoder.config import DecoderConfig, SafeguardConfig
from decoder.trial import Event, frames_for

if TYPE_CHECKING:
    from decoder.calibration import Calibration

_MAD_TO_SD = 1.4826 / math.sqrt(2.0)


def diff_noise(series: np.ndarray) -> np.ndarray:
    """Per column: the noise standard deviation from first differences (robust to slow changes)."""
    series = np.asarray(series, dtype=np.float64)
    if series.shape[0] < 3:
        return np.full(series.shape[1:], np.nan)
    return np.median(np.abs(np.diff(series, axis=0)), axis=0) * _MAD_TO_SD


def roi_problems(rois: list[int], f0_low: np.ndarray, f_noise: np.ndarray, dff_noise: np.ndarray,
                 cfg: SafeguardConfig, allowed: set[int]) -> list[str]:
    """Why each of ``rois`` (the decoder's, in order; the arrays follow it) may not enter an ensemble.

    ``f0_low``: each ROI's lowest baseline F0; ``f_noise``: the noise of its corrected F; ``dff_noise``: of
    its dF/F. ROIs in ``allowed`` are not judged.
    """
    problems = []
    median = float(np.median(dff_noise)) if len(rois) >= 3 else math.nan
    for i, roi in enumerate(rois):
        if roi in allowed:
            continue
        if cfg.min_f0_snr > 0 and f0_low[i] < cfg.min_f0_snr * f_noise[i]:
            problems.append(f"ROI {roi}: F0 falls to {f0_low[i]:.3g}, only {f0_low[i] / f_noise[i]:.1f}× its noise "
                            f"(σ {f_noise[i]:.3g}; min_f0_snr {cfg.min_f0_snr:g}): its dF/F is mostly noise")
        if median > 0 and dff_noise[i] > cfg.max_noise_ratio * median:
            problems.append(f"ROI {roi}: dF/F noise {dff_noise[i]:.3g} is {dff_noise[i] / median:.1f}× the "
                            f"ensemble's median {median:.3g} (max_noise_ratio {cfg.max_noise_ratio:g}): it would "
                            f"drive the cursor with its noise")
    return problems


class DriftMonitor:
    """During BCI: each decoder ROI's F0 and dF/F noise against the baseline's, checked every ``every`` frames.

    ``rois``: the decoder's ROIs; ``f0_baseline`` / ``noise_baseline``: their F0 at the end of the baseline
    and their baseline dF/F noise. :meth:`push` takes each valid frame's dF/F and F0 of those ROIs (in
    order) and appends an "f0_drift" or "noise_change" event the first time a ROI goes past a limit (again
    only after it came back within it).
    """

    def __init__(self, rois: list[int], f0_baseline: np.ndarray, noise_baseline: np.ndarray, cfg: SafeguardConfig,
                 every: int) -> None:
        self.rois = list(rois)
        self.f0_baseline = np.asarray(f0_baseline, dtype=np.float64)
        self.noise_baseline = np.asarray(noise_baseline, dtype=np.float64)
        self.cfg = cfg
        self.every = max(int(every), 3)
        n = len(self.rois)
        self._block = np.empty((self.every, n))
        self._count = 0
        self._drifting = np.zeros(n, dtype=bool)
        self._noisy = np.zeros(n, dtype=bool)
        self.index = np.asarray(self.rois, dtype=np.intp)  # for the caller's np.take into the two buffers
        self.dff_now = np.empty(n)
        self.f0_now = np.empty(n)

    def push(self, dff: np.ndarray, f0: np.ndarray, frame: int, trial: int, events: list[Event]) -> None:
        """One valid BCI frame (dF/F and F0 of the decoder's ROIs)."""
        self._block[self._count] = dff
        self._count += 1
        if self._count < self.every:
            return
        self._count = 0
        cfg = self.cfg
        noise = diff_noise(self._block)
        drift = f0 / self.f0_baseline - 1.0
        growth = noise / self.noise_baseline
        for i, roi in enumerate(self.rois):
            off = bool(abs(drift[i]) > cfg.max_f0_drift)
            if off and not self._drifting[i]:
                events.append(Event("f0_drift", trial, frame, {
                    "roi": roi, "f0": float(f0[i]), "f0_baseline": float(self.f0_baseline[i]),
                    "change": float(drift[i])}))
            self._drifting[i] = off
            ratio = growth[i]
            off = bool(ratio > cfg.max_noise_growth or ratio < 1.0 / cfg.max_noise_growth)
            if off and not self._noisy[i]:
                events.append(Event("noise_change", trial, frame, {
                    "roi": roi, "noise": float(noise[i]), "noise_baseline": float(self.noise_baseline[i]),
                    "ratio": float(ratio)}))
            self._noisy[i] = off


def drift_monitor_for(rois: list[int], cal: Calibration, n_rois: int, decoder_cfg: DecoderConfig,
                      frame_rate_hz: float) -> DriftMonitor | None:
    """The BCI watch of the decoder's ``rois`` against ``cal``'s baseline; None for a calibration stored without
    its baseline noise, or for a session under rules_version 1 (recorded before the watch existed)."""
    index = np.asarray(rois, dtype=np.intp)
    if (len(cal.dff_noise) != n_rois or len(cal.f0) != n_rois or not len(index)
            or decoder_cfg.rules_version < 2):
        return None
    cfg = decoder_cfg.safeguards
    return DriftMonitor([int(r) for r in index], np.asarray(cal.f0)[index], np.asarray(cal.dff_noise)[index],
                        cfg, frames_for(cfg.check_every_s, frame_rate_hz))


def describe(kind: str, detail: dict) -> str:
    """The operator's sentence for an "f0_drift" or "noise_change" event."""
    if kind == "f0_drift":
        return (f"ROI {detail['roi']}: F0 {detail['f0']:.3g} is {detail['change']:+.0%} from its baseline "
                f"{detail['f0_baseline']:.3g} (max_f0_drift): its dF/F scale has changed; check focus and bleaching")
    return (f"ROI {detail['roi']}: dF/F noise {detail['noise']:.3g} is {detail['ratio']:.1f}× its baseline "
            f"{detail['noise_baseline']:.3g} (max_noise_growth): check the imaging of this cell")
