"""Which cells make good BCI targets: ranking baseline traces, suggesting ensembles, checking a choice.

Pure numpy, no Qt, no rig config: the console's ROI picker and ``rig rank`` both call it, and the tests
check it on traces with known answers. What matters for a cell the mouse must learn to drive:

* it is visible above the noise: a high SNR (the 99th percentile of its neuropil-corrected F above the
  median, in units of the frame-to-frame noise);
* it is active: calcium events per minute (rises above the median by ``event_sd`` noise sd, 0.2-s bins);
* its baseline F0 is well above the noise floor: dF/F divides by F0, so an F0 near zero turns noise into
  huge dF/F (the floor is the larger of the decoder's ``f0_floor`` and ``floor_sd`` noise sd);
* ensemble members are apart (no shared pixels, no shared neuropil) and the up cells are not correlated
  with the down cells (else the cursor cancels itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class EnsembleChoiceError(ValueError):
    """An ensemble the rig should not run with; the message names the ROI and the numbers."""


@dataclass(frozen=True)
class RankSettings:
    """How the traces are read; the defaults follow the decoder's (neuropil 0.7, F0 = 10th percentile)."""

    neuropil_coef: float = 0.7
    f0_percentile: float = 10.0
    f0_floor: float = 1.0  # the decoder's f0_floor (F units)
    floor_sd: float = 3.0  # the noise floor is at least this many noise sd
    event_sd: float = 3.0  # an event: F (0.2-s bins) rises above its median + this many noise sd
    min_distance_px: float = 20.0  # suggested ensemble members at least this far apart (centre to centre)
    max_corr: float = 0.3  # suggested up and down cells correlate less than this (dF/F, 1-s bins)


@dataclass(frozen=True)
class CellStats:
    """Per-ROI numbers from a baseline, all arrays of length n_rois."""

    f0: np.ndarray
    noise_sd: np.ndarray
    noise_floor: np.ndarray
    snr: np.ndarray
    event_rate_per_min: np.ndarray
    score: np.ndarray  # 0 for a ROI below the noise floor
    centers: np.ndarray  # (n, 2) y, x
    dff_binned: np.ndarray  # (n, bins) for correlations

    @property
    def n(self) -> int:
        return int(self.f0.size)

    def ranked(self) -> np.ndarray:
        """ROI indices, best first."""
        return np.argsort(-self.score, kind="stable")

    def above_floor(self, roi: int) -> bool:
        return bool(self.f0[roi] > self.noise_floor[roi])


def cell_stats(F: np.ndarray, Fneu: np.ndarray, centers: np.ndarray, fs: float,
               settings: RankSettings = RankSettings()) -> CellStats:
    """The numbers of every ROI over a baseline; ``F``/``Fneu`` are (n_rois, n_frames) as suite2p saves them."""
    F = np.asarray(F, np.float64)
    Fneu = np.asarray(Fneu, np.float64)
    if F.ndim != 2 or F.shape != Fneu.shape:
        raise ValueError(f"F and Fneu must be (n_rois, n_frames) of the same shape, got {F.shape} and {Fneu.shape}")
    n, T = F.shape
    if T < 10:
        raise ValueError(f"{T} frames: too few to rank cells (need at least 10)")
    if not fs > 0:
        raise ValueError(f"frame rate must be > 0 Hz (got {fs})")
    fc = F - settings.neuropil_coef * Fneu
    f0 = np.percentile(fc, settings.f0_percentile, axis=1)
    # frame-to-frame noise, robust to events: MAD of the first difference, / sqrt(2) for the difference
    d = np.diff(fc, axis=1)
    noise = 1.4826 * np.median(np.abs(d - np.median(d, axis=1, keepdims=True)), axis=1) / np.sqrt(2.0)
    noise = np.maximum(noise, 1e-9)
    floor = np.maximum(settings.f0_floor, settings.floor_sd * noise)
    snr = (np.percentile(fc, 99, axis=1) - np.median(fc, axis=1)) / noise
    rate = _event_rate(fc, fs, settings.event_sd)
    ok = f0 > floor
    score = np.where(ok, np.maximum(snr, 0.0) * np.sqrt(rate), 0.0)
    dff = (fc - f0[:, None]) / np.maximum(np.abs(f0), settings.f0_floor)[:, None]
    b = max(1, int(round(fs)))
    bins = T // b
    binned = dff[:, : bins * b].reshape(n, bins, b).mean(axis=2) if bins >= 2 else dff
    return CellStats(f0=f0, noise_sd=noise, noise_floor=floor, snr=snr, event_rate_per_min=rate, score=score,
                     centers=np.asarray(centers, np.float64).reshape(n, 2), dff_binned=binned)


def _event_rate(fc: np.ndarray, fs: float, event_sd: float) -> np.ndarray:
    """Calcium events per minute: rises of the 0.2-s binned trace above its median + ``event_sd`` noise sd,
    onsets less than 1 s after the previous one counted as the same event."""
    n, T = fc.shape
    b = max(1, int(round(0.2 * fs)))
    bins = T // b
    if bins < 3:
        return np.zeros(n)
    x = fc[:, : bins * b].reshape(n, bins, b).mean(axis=2)
    d = np.diff(x, axis=1)
    sd = np.maximum(1.4826 * np.median(np.abs(d - np.median(d, axis=1, keepdims=True)), axis=1) / np.sqrt(2.0), 1e-9)
    above = x > (np.median(x, axis=1) + event_sd * sd)[:, None]
    rising = above[:, 1:] & ~above[:, :-1]
    gap = max(1, int(round(fs / b)))  # bins in one second
    counts = np.zeros(n)
    for i in range(n):
        onsets = np.flatnonzero(rising[i])
        counts[i] = int(above[i, 0]) + (1 + np.count_nonzero(np.diff(onsets) >= gap) if onsets.size else 0)
    return counts / (T / fs / 60.0)


def correlation(stats: CellStats, a: int, b: int) -> float:
    """Pearson correlation of two ROIs' binned dF/F (0 when one is flat)."""
    x, y = stats.dff_binned[a], stats.dff_binned[b]
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def suggest(stats: CellStats, n_up: int, n_down: int, settings: RankSettings = RankSettings(),
            exclude: tuple[int, ...] = ()) -> tuple[list[int], list[int]]:
    """Greedy pick by score: each new member is above the floor, ``min_distance_px`` from every member, and
    correlates less than ``max_corr`` with every member of the other ensemble. Up and down alternate, so
    neither gets all the best cells. Fewer than asked when the field has too few good cells."""
    up: list[int] = []
    down: list[int] = []
    for roi in (int(i) for i in stats.ranked()):
        if len(up) >= n_up and len(down) >= n_down:
            break
        if roi in exclude or stats.score[roi] <= 0:
            continue
        chosen = up + down
        if any(np.hypot(*(stats.centers[roi] - stats.centers[c])) < settings.min_distance_px for c in chosen):
            continue
        want_up = len(up) < n_up and (len(up) <= len(down) or len(down) >= n_down)
        target, other = (up, down) if want_up else (down, up)
        if any(correlation(stats, roi, o) >= settings.max_corr for o in other):
            target, other = other, target  # maybe it fits the other ensemble
            if len(target) >= (n_up if target is up else n_down) or any(
                    correlation(stats, roi, o) >= settings.max_corr for o in other):
                continue
        target.append(roi)
    return up, down


def problems(stats: CellStats, up: list[int], down: list[int], settings: RankSettings = RankSettings()) -> list[str]:
    """What is wrong with a choice, one line each with the numbers; errors first (see :func:`check_choice`)."""
    errors, warnings = [], []
    for name, members in (("up", up), ("down", down)):
        for roi in members:
            if not 0 <= roi < stats.n:
                errors.append(f"{name} ROI {roi}: no such ROI (there are {stats.n})")
            elif not stats.above_floor(roi):
                errors.append(
                    f"{name} ROI {roi}: F0 = {stats.f0[roi]:.3g} is below the noise floor {stats.noise_floor[roi]:.3g} "
                    f"(the larger of decoder.f0_floor = {settings.f0_floor:g} and {settings.floor_sd:g} x noise sd "
                    f"{stats.noise_sd[roi]:.3g}): its dF/F would be mostly noise")
    valid = [r for r in up + down if 0 <= r < stats.n]
    for i, a in enumerate(valid):
        for b in valid[i + 1:]:
            dist = float(np.hypot(*(stats.centers[a] - stats.centers[b])))
            if dist < settings.min_distance_px:
                warnings.append(f"ROIs {a} and {b} are {dist:.1f} px apart (less than {settings.min_distance_px:g}): "
                                "they may share pixels or neuropil")
    for a in (r for r in up if 0 <= r < stats.n):
        for b in (r for r in down if 0 <= r < stats.n):
            c = correlation(stats, a, b)
            if c >= settings.max_corr:
                warnings.append(f"up ROI {a} and down ROI {b} correlate at r = {c:.2f} (limit {settings.max_corr:g}): "
                                "they would cancel each other in the cursor")
    return errors + warnings


def check_choice(stats: CellStats, up: list[int], down: list[int], settings: RankSettings = RankSettings()) -> None:
    """Raise :class:`EnsembleChoiceError` when a member is missing or below the noise floor."""
    if not up:
        raise EnsembleChoiceError("the up ensemble is empty: pick at least one ROI")
    errors = [p for p in problems(stats, up, down, settings) if "noise floor" in p or "no such ROI" in p]
    if errors:
        raise EnsembleChoiceError("; ".join(errors))
