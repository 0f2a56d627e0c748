"""Suggested dendrite -> soma links: which soma on the BCI plane each dendrite ROI of another plane belongs to.

An apical dendrite rises from its soma, so in x-y it lies near the soma (shifted by the trunk's tilt, and by
any lateral offset between the planes), and it carries the soma's back-propagating spikes, so its activity
correlates with the soma's. Each (dendrite, soma) pair within ``max_distance_px`` gets a score from both:

* spatial: ``max(exp(-d^2 / 2 sigma^2), overlap)``, ``d`` the distance between the dendrite's centroid and the
  soma's shifted by ``offset_yx``, ``overlap`` the fraction of the dendrite's mask weight on the shifted soma mask;
* activity (when traces are given): the Pearson correlation ``r`` of the two traces after slow drift is removed
  (a running mean over ``detrend_frames``) and shot noise smoothed (a running mean over ``smooth_frames``),
  taken relative to the dendrite's best correlation with any soma: ``corr = max(r, 0) / r_best``, and 0 when
  ``r < min_corr`` (a dendrite whose soma is not on the BCI plane correlates with none). Relative, because
  the absolute level depends on noise and firing rates, while the parent stands out against its neighbours;
* ``score = (1 - w_corr) * spatial + w_corr * corr`` (spatial alone without traces).

A greedy one-to-one assignment then links pairs best score first, each dendrite once, each soma at most
``max_per_soma`` times, none below ``min_score``. Pure numpy: the console, ``rig link`` and tests share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LinkParams:
    """Limits and weights of the suggestion (see the module doc)."""

    offset_yx: tuple[float, float] = (0.0, 0.0)  # dendrite position minus soma position, px (planes' lateral shift)
    max_distance_px: float = 18.0  # pairs farther apart (after the offset) are never candidates
    sigma_px: float = 6.0  # spatial score's length scale (the apical trunk's tilt)
    w_corr: float = 0.6  # weight of the activity correlation when traces are given
    min_score: float = 0.25  # below it a dendrite stays unlinked
    max_per_soma: int = 1  # dendrites one soma may receive
    detrend_frames: int = 300  # running-mean window removed from traces before correlating (0: none)
    smooth_frames: int = 5  # running-mean smoothing of the traces before correlating (1: none)
    min_corr: float = 0.05  # a correlation below it counts as none
    max_candidates: int = 5  # candidates kept per dendrite for display
    max_frames: int = 20000  # longer traces are averaged in bins of frames down to this many (memory)

    def __post_init__(self) -> None:
        if not self.max_distance_px > 0 or not self.sigma_px > 0:
            raise ValueError(f"max_distance_px and sigma_px must be > 0 (got {self.max_distance_px}, {self.sigma_px})")
        if not 0 <= self.w_corr <= 1:
            raise ValueError(f"w_corr must be within 0..1 (got {self.w_corr})")
        if min(self.max_per_soma, self.max_candidates, self.smooth_frames) < 1 or self.detrend_frames < 0 \
                or self.max_frames < 100:
            raise ValueError("max_per_soma, max_candidates and smooth_frames must be >= 1, detrend_frames >= 0, "
                             "max_frames >= 100")


@dataclass(frozen=True)
class Candidate:
    dendrite: int  # row of the dendrite plane's stat
    soma: int  # row of the BCI plane's stat
    distance_px: float
    overlap: float
    corr: float  # Pearson r of the cleaned traces; nan without traces
    score: float


@dataclass
class LinkSuggestion:
    """``parent`` (one per dendrite-plane ROI, -1 none) indexes the BCI plane's stat: ready for roi_parent.npy."""

    parent: np.ndarray  # int32
    score: np.ndarray  # float64, nan where unlinked
    candidates: list[list[Candidate]] = field(default_factory=list)  # per dendrite-plane ROI, best first

    def table(self) -> list[dict[str, Any]]:
        """One row per considered dendrite: its link (or -1), the score and the runner-up, for display."""
        rows = []
        for d, cands in enumerate(self.candidates):
            if not cands and self.parent[d] < 0:
                continue
            chosen = next((c for c in cands if c.soma == self.parent[d]), None)
            other = next((c for c in cands if c.soma != self.parent[d]), None)
            rows.append({"dendrite": d, "soma": int(self.parent[d]),
                         "score": None if chosen is None else round(chosen.score, 3),
                         "distance_px": None if chosen is None else round(chosen.distance_px, 1),
                         "overlap": None if chosen is None else round(chosen.overlap, 2),
                         "corr": None if chosen is None or np.isnan(chosen.corr) else round(chosen.corr, 3),
                         "next_soma": None if other is None else other.soma,
                         "next_score": None if other is None else round(other.score, 3)})
        return rows


def centroids(stat: list[dict]) -> np.ndarray:
    """(n, 2) lam-weighted (y, x) centre of each ROI."""
    out = np.zeros((len(stat), 2))
    for i, roi in enumerate(stat):
        lam = np.asarray(roi["lam"], np.float64)
        w = lam / lam.sum() if lam.size and lam.sum() > 0 else np.full(lam.size, 1.0 / max(lam.size, 1))
        out[i] = (float(np.dot(w, roi["ypix"])), float(np.dot(w, roi["xpix"])))
    return out


def _running_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean along the frames of (n, T) ``x`` (edges padded with the edge value)."""
    pad = window // 2
    padded = np.pad(x, ((0, 0), (pad, window - 1 - pad)), mode="edge")
    csum = np.cumsum(np.pad(padded, ((0, 0), (1, 0))), axis=1)
    return (csum[:, window:] - csum[:, :-window]) / window


def detrended_z(traces: np.ndarray, window: int, smooth: int = 1) -> np.ndarray:
    """Traces (n, T) minus their running mean over ``window`` frames, smoothed over ``smooth`` frames, z-scored
    per row (flat rows: 0)."""
    x = np.asarray(traces, np.float64)
    if x.ndim != 2:
        raise ValueError(f"traces must be (n_rois, n_frames), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("traces hold NaN or infinite values")
    if window > 1 and x.shape[1] > window:
        x = x - _running_mean(x, window)
    if smooth > 1 and x.shape[1] > smooth:
        x = _running_mean(x, smooth)
    x = x - x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return np.divide(x, sd, out=np.zeros_like(x), where=sd > 0)


def suggest_links(dend_stat: list[dict], soma_stat: list[dict], dend_traces: np.ndarray | None = None,
                  soma_traces: np.ndarray | None = None, params: LinkParams | None = None,
                  dendrites: np.ndarray | None = None, somata: np.ndarray | None = None) -> LinkSuggestion:
    """Rank the BCI plane's somata for each dendrite ROI and assign links greedily (see the module doc).

    ``dendrites``/``somata`` restrict which rows are considered (e.g. ``kind == 1`` / ``kind == 0``); the
    traces, when given, are (rows, frames) of the same volumes for both planes.
    """
    params = params or LinkParams()
    n_d, n_s = len(dend_stat), len(soma_stat)
    dend_rows = np.arange(n_d) if dendrites is None else np.asarray(dendrites, np.int64).reshape(-1)
    soma_rows = np.arange(n_s) if somata is None else np.asarray(somata, np.int64).reshape(-1)
    for rows, n, what in ((dend_rows, n_d, "dendrites"), (soma_rows, n_s, "somata")):
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(f"{what}: row indices must be within 0..{n - 1} (got {rows.min()}..{rows.max()})")
    corr = _correlations(dend_traces, soma_traces, dend_rows, soma_rows, (n_d, n_s), params)
    relative = None
    if corr is not None:
        best = corr[:, soma_rows].max(axis=1) if soma_rows.size else np.zeros(n_d)
        relative = np.where(corr >= params.min_corr, np.maximum(corr, 0) / np.maximum(best, 1e-9)[:, None], 0.0)
    c_d, c_s = centroids(dend_stat), centroids(soma_stat) + np.asarray(params.offset_yx, np.float64)
    soma_pixels = [_pixel_weights(soma_stat[s], params.offset_yx) for s in range(n_s)]
    candidates: list[list[Candidate]] = [[] for _ in range(n_d)]
    pairs: list[Candidate] = []
    for d in dend_rows:
        dist = np.hypot(*(c_s[soma_rows] - c_d[d]).T) if soma_rows.size else np.zeros(0)
        near = soma_rows[dist <= params.max_distance_px]
        own = _pixel_weights(dend_stat[d], (0.0, 0.0))
        total = sum(own.values()) or 1.0
        for s, dd in zip(near, dist[dist <= params.max_distance_px], strict=True):
            overlap = sum(w for px, w in own.items() if px in soma_pixels[s]) / total
            spatial = max(float(np.exp(-dd * dd / (2 * params.sigma_px ** 2))), overlap)
            r = float(corr[d, s]) if corr is not None else float("nan")
            score = spatial if relative is None else (1 - params.w_corr) * spatial + params.w_corr * relative[d, s]
            candidates[d].append(Candidate(int(d), int(s), float(dd), float(overlap), r, float(score)))
        candidates[d].sort(key=lambda c: -c.score)
        pairs += candidates[d]
    parent = np.full(n_d, -1, np.int32)
    score = np.full(n_d, np.nan)
    taken = np.zeros(n_s, np.int64)
    for c in sorted(pairs, key=lambda c: -c.score):
        if c.score < params.min_score:
            break
        if parent[c.dendrite] < 0 and taken[c.soma] < params.max_per_soma:
            parent[c.dendrite], score[c.dendrite] = c.soma, c.score
            taken[c.soma] += 1
    return LinkSuggestion(parent, score, [c[:params.max_candidates] for c in candidates])


def _correlations(dend_traces: np.ndarray | None, soma_traces: np.ndarray | None, dend_rows: np.ndarray,
                  soma_rows: np.ndarray, n: tuple[int, int], params: LinkParams) -> np.ndarray | None:
    """(n_d, n_s) correlations of the considered rows (0 elsewhere); long recordings binned to ``max_frames``."""
    n_d, n_s = n
    if (dend_traces is None) != (soma_traces is None):
        raise ValueError("give traces for both planes or for neither")
    if dend_traces is None or soma_traces is None:
        return None
    dend, soma = np.asarray(dend_traces), np.asarray(soma_traces)
    if dend.ndim != 2 or soma.ndim != 2 or dend.shape[0] != n_d or soma.shape[0] != n_s:
        raise ValueError(f"traces must be (rois, frames): dendrite traces {dend.shape} for {n_d} ROIs, soma traces "
                         f"{soma.shape} for {n_s} ROIs")
    if dend.shape[1] != soma.shape[1] or dend.shape[1] < 3:
        raise ValueError(f"the two planes' traces must cover the same >= 3 volumes (got {dend.shape[1]} and "
                         f"{soma.shape[1]} frames)")
    dend, soma = dend[dend_rows], soma[soma_rows]
    step = -(-dend.shape[1] // params.max_frames)  # bin long recordings: memory, and it smooths like the kernel
    if step > 1:
        usable = dend.shape[1] // step * step
        dend = dend[:, :usable].reshape(dend.shape[0], -1, step).mean(axis=2)
        soma = soma[:, :usable].reshape(soma.shape[0], -1, step).mean(axis=2)
    window, smooth = params.detrend_frames // step, max(1, params.smooth_frames // step)
    z_d, z_s = detrended_z(dend, window, smooth), detrended_z(soma, window, smooth)
    out = np.zeros((n_d, n_s))
    out[np.ix_(dend_rows, soma_rows)] = z_d @ z_s.T / dend.shape[1]
    return out


def _pixel_weights(roi: dict, offset_yx: tuple[float, float]) -> dict[tuple[int, int], float]:
    """{(y, x): lam} of an ROI's mask, shifted by ``offset_yx`` (rounded to whole pixels)."""
    dy, dx = round(offset_yx[0]), round(offset_yx[1])
    lam = np.asarray(roi["lam"], np.float64)
    return {(int(y) + dy, int(x) + dx): float(w)
            for y, x, w in zip(np.asarray(roi["ypix"]), np.asarray(roi["xpix"]), lam, strict=True)}
