"""``rig dendrites``: do the dendrites of the BCI's up and down neurons carry a signed, per-cell instructive signal?

The analysis (docs/DENDRITES.md):

1. **The soma's part out.** A dendrite's calcium is mostly its soma's back-propagating spikes. Each dendrite's
   dF/F is regressed on its parent soma's dF/F (lags -1, 0, +1 frame and the square: the dendrite's calcium
   decays faster and saturates differently) and the residual is kept. The soma's dF/F is measured with noise,
   and ordinary least squares on a noisy regressor underestimates the coefficient (errors in variables), which
   would leave part of the somatic signal in the residual. So the coefficients are estimated by instrumental
   variables (two-stage least squares): the soma's dF/F two and three frames away, whose shot noise is
   independent of this frame's, predicts the soma's true activity. ``--soma ols`` and ``--soma none`` exist to
   show what the confound does.
2. **The task regressor.** The cursor's error ``threshold - cursor`` (how far below the target the cursor is),
   with the cursor recomputed *without the dendrite's own soma* (leave-one-out, with the read-out weight
   fitted to the decoder's recorded dF/F): the cursor is a function of the soma, so any somatic activity or
   noise left in the residual would otherwise correlate with it, positively for up cells and negatively for
   down cells — opposite signs with no instructive signal at all.
3. **The index.** Per dendrite: the correlation of its residual with the error over the BCI frames. Per role
   (up/down/other, the parent soma's ensemble): the mean over its dendrites. 95 % CI by bootstrap over
   trials; p-value by circular shifts of the error against the residuals (every shift of at least
   ``min_shift_s``); ``p_opposite`` = the larger of the up and down p-values when their signs differ, else 1
   (both must be nonzero, with opposite signs: an intersection-union test).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from rig.offline.dendrites_data import DendriteData, DendriteError

SOMA_METHODS = ("iv", "ols", "none")
ROLES = ("up", "down", "other")
REGRESSOR_LAGS = (-1, 0, 1)  # the soma's dF/F at these frames (and its square at 0) explain the dendrite
INSTRUMENT_LAGS = (-3, -2, 2, 3)  # frames whose noise is independent of every regressor's
ALIGN_S = (-3.0, 5.0)  # event-aligned windows
RESPONSE_S = (0.0, 2.0)  # the window an event's response is measured in


def _shifted(x: np.ndarray, lag: int) -> np.ndarray:
    """x(t + lag), NaN where it falls off the record."""
    out = np.full_like(x, np.nan)
    if lag > 0:
        out[:-lag] = x[lag:]
    elif lag < 0:
        out[-lag:] = x[:lag]
    else:
        out[:] = x
    return out


def _lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares by the normal equations (a few columns, thousands of rows: far faster than an SVD)."""
    scale = np.sqrt((A * A).mean(axis=0))
    scale[scale == 0] = 1.0
    As = A / scale
    coef = np.linalg.lstsq(As.T @ As, As.T @ y, rcond=None)[0]
    return coef / (scale[:, None] if coef.ndim == 2 else scale)


def soma_residual(dend: np.ndarray, soma: np.ndarray, method: str = "iv",
                  motion: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The dendrite's dF/F minus what its soma's dF/F (and the brain's motion) explains: (residual, coefficients).

    ``iv``: two-stage least squares with the soma's dF/F at :data:`INSTRUMENT_LAGS` (and squares) as
    instruments; ``ols``: least squares on the measured soma (attenuated by its noise); ``none``: no removal.
    ``motion``: the plane's registration shift (px); its square and itself are regressed out too (a thin
    dendrite loses light when the brain moves, e.g. licking after a reward), as measured (exogenous) terms.
    """
    if method not in SOMA_METHODS:
        raise ValueError(f"soma method must be one of {', '.join(SOMA_METHODS)} (got {method!r})")
    if method == "none":
        return dend - np.nanmean(dend), np.zeros(0)
    exo = [np.ones_like(soma)]
    if motion is not None and np.any(motion != 0):
        exo += [motion, motion**2]
    X = np.column_stack(exo + [_shifted(soma, lag) for lag in REGRESSOR_LAGS] + [soma**2])
    ok = np.isfinite(X).all(axis=1) & np.isfinite(dend)
    if method == "iv":
        inst = [_shifted(soma, lag) for lag in INSTRUMENT_LAGS]
        Z = np.column_stack(exo + inst + [z**2 for z in inst] + [inst[1] * inst[2]])
        ok &= np.isfinite(Z).all(axis=1)
        Zo, Xo = Z[ok], X[ok]
        first = _lstsq(Zo, Xo)  # stage 1: the soma's activity predicted from other frames
        beta = _lstsq(Zo @ first, dend[ok])  # stage 2
    else:
        beta = _lstsq(X[ok], dend[ok])
    resid = np.full_like(dend, np.nan)
    resid[ok] = dend[ok] - X[ok] @ beta  # the measured soma: its noise here is independent of the regressor
    return resid, beta


def _running_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing mean over ``k`` frames (the decoder's cursor smoothing), per column."""
    c = np.cumsum(np.nan_to_num(x), axis=0)
    out = c.copy()
    out[k:] = c[k:] - c[:-k]
    n = np.minimum(np.arange(1, len(x) + 1), k)
    return out / n[:, None]


def task_errors(data: DendriteData, leave_one_out: bool = True) -> tuple[np.ndarray, list[str]]:
    """(T, n_d): the cursor's error for each dendrite, the cursor recomputed without the dendrite's soma
    (``leave_one_out`` False: the recorded cursor's, which the soma itself moves: for showing the confound)."""
    notes: list[str] = []
    rois = sorted(set(data.up) | set(data.down))
    err = np.repeat((data.threshold - data.cursor)[:, None], data.n, axis=1)
    if not leave_one_out:
        return err, notes
    if not rois:
        return err, ["the decoder has no ensembles: the error is the recorded cursor's"]
    smooth = _running_mean(data.decoder_dff[:, rois], max(1, data.smoothing_frames))
    fit = data.bci & np.isfinite(smooth).all(axis=1)
    A = np.column_stack([np.ones(int(fit.sum())), smooth[fit]])
    w, *_ = np.linalg.lstsq(A, data.cursor[fit], rcond=None)
    pred = A @ w
    ss = float(np.sum((data.cursor[fit] - data.cursor[fit].mean()) ** 2))
    r2 = 1.0 - float(np.sum((data.cursor[fit] - pred) ** 2)) / ss if ss > 0 else 0.0
    if r2 < 0.98:
        notes.append(f"the cursor is not a linear read-out of the recorded dF/F (R2 {r2:.3f}): the leave-one-out "
                     "cursor is approximate")
    col = {r: i for i, r in enumerate(rois)}
    for j, d in enumerate(data.dendrites):
        if d.soma in col:
            err[:, j] += w[1 + col[d.soma]] * smooth[:, col[d.soma]]
    return err, notes


@dataclass
class IndexResult:
    per_dendrite: np.ndarray  # (n_d,)
    per_dendrite_ci: np.ndarray  # (n_d, 2)
    role: dict[str, dict[str, Any]]
    null: dict[str, np.ndarray]  # role -> the circular-shift null of its index


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    sd = x.std(axis=0)
    return x / np.where(sd > 0, sd, 1.0)


def instructive_index(resid: np.ndarray, err: np.ndarray, trial: np.ndarray, roles: list[str], rate_hz: float,
                      *, n_boot: int = 2000, min_shift_s: float = 60.0, seed: int = 0) -> IndexResult:
    """Per dendrite and per role: corr(residual, error) over the given frames, bootstrap CI, circular-shift p."""
    r, x = _standardise(resid), _standardise(err)
    T = len(r)
    per = (r * x).mean(axis=0)
    # bootstrap over trials: per-trial sums, resampled
    _, block = np.unique(trial, return_inverse=True)
    nb = int(block.max()) + 1
    sums = np.zeros((nb, r.shape[1]))
    np.add.at(sums, block, r * x)
    counts = np.bincount(block, minlength=nb).astype(float)
    rng = np.random.default_rng(seed)
    W = rng.multinomial(nb, np.full(nb, 1.0 / nb), size=n_boot).astype(float)
    boot = (W @ sums) / (W @ counts)[:, None]  # (n_boot, n_d)
    # circular shifts of the error: every shift of at least min_shift_s, by FFT
    spec = np.fft.rfft(r, axis=0) * np.conj(np.fft.rfft(x, axis=0))
    shifted = np.fft.irfft(spec, n=T, axis=0) / T  # [s, j] = mean_t r_j(t) x_j(t - s)
    lo = max(1, int(round(min_shift_s * rate_hz)))
    shifts = np.arange(lo, T - lo + 1)
    if shifts.size < 20:
        raise DendriteError(f"only {T} BCI frames: too few for circular shifts of at least {min_shift_s} s")
    roles_arr = np.array(roles)
    out: dict[str, dict[str, Any]] = {}
    nulls: dict[str, np.ndarray] = {}
    for role in ROLES:
        cols = np.flatnonzero(roles_arr == role)
        if not cols.size:
            out[role] = {"index": None, "ci95": None, "p": None, "n": 0}
            continue
        obs = float(per[cols].mean())
        dist = boot[:, cols].mean(axis=1)
        null = shifted[shifts][:, cols].mean(axis=1)
        p = (1.0 + float(np.sum(np.abs(null) >= abs(obs)))) / (1.0 + null.size)
        out[role] = {"index": obs, "ci95": [float(np.percentile(dist, 2.5)), float(np.percentile(dist, 97.5))],
                     "p": p, "n": int(cols.size), "null_sd": float(null.std())}
        nulls[role] = null
    ci = np.percentile(boot, [2.5, 97.5], axis=0).T
    return IndexResult(per_dendrite=per, per_dendrite_ci=ci, role=out, null=nulls)


def p_opposite(up: dict[str, Any], down: dict[str, Any]) -> float | None:
    """Intersection-union test of "up and down are both nonzero, with opposite signs": max of the two p-values."""
    if up["index"] is None or down["index"] is None:
        return None
    if math.copysign(1.0, up["index"]) == math.copysign(1.0, down["index"]):
        return 1.0
    return max(up["p"], down["p"])


def p_same(up: dict[str, Any], down: dict[str, Any]) -> float | None:
    """The same test for "both nonzero with the same sign" (a shared, scalar signal)."""
    if up["index"] is None or down["index"] is None:
        return None
    if math.copysign(1.0, up["index"]) != math.copysign(1.0, down["index"]):
        return 1.0
    return max(up["p"], down["p"])


def aligned(z: np.ndarray, rows: list[int], rate_hz: float, *, n_boot: int = 1000,
            seed: int = 0) -> dict[str, Any] | None:
    """Event-aligned average of one trace (``z``) with a bootstrap 95 % band over events; None without events."""
    a, b = int(round(ALIGN_S[0] * rate_hz)), int(round(ALIGN_S[1] * rate_hz))
    snippets = [z[i + a: i + b + 1] for i in rows if i + a >= 0 and i + b < len(z)]
    if not snippets:
        return None
    block = np.array(snippets)
    rng = np.random.default_rng(seed)
    W = rng.multinomial(len(block), np.full(len(block), 1.0 / len(block)), size=n_boot) / len(block)
    boot = W @ np.nan_to_num(block)
    t = np.arange(a, b + 1) / rate_hz
    resp = (t >= RESPONSE_S[0]) & (t < RESPONSE_S[1])
    pre = (t >= -RESPONSE_S[1]) & (t < 0)
    per_event = np.nanmean(block[:, resp], axis=1) - np.nanmean(block[:, pre], axis=1)
    return {"t": t, "mean": np.nanmean(block, axis=0), "lo": np.percentile(boot, 2.5, axis=0),
            "hi": np.percentile(boot, 97.5, axis=0), "n": len(block), "response": per_event}


def analyse(data: DendriteData, *, soma: str = "iv", leave_one_out: bool = True, n_boot: int = 2000,
            min_shift_s: float = 60.0, progress: bool = True) -> dict[str, Any]:
    """The whole analysis: residuals, errors, indices and event-aligned responses (numbers and plot data)."""
    warnings = list(data.warnings)
    if not data.outcomes:
        raise DendriteError("no trials: no BCI trial was completed, so there is no cursor error to align to")
    resid = np.full_like(data.dend_dff, np.nan)
    fits = []
    for j in tqdm(range(data.n), desc="soma regression", unit="dendrite", disable=not progress, file=sys.stderr):
        resid[:, j], beta = soma_residual(data.dend_dff[:, j], data.soma_dff[:, j], soma, data.motion[:, j])
        fits.append(beta)
    err, notes = task_errors(data, leave_one_out)
    warnings += notes
    use = data.bci & np.isfinite(resid).all(axis=1) & np.isfinite(err).all(axis=1)
    n_bci = int(use.sum())
    if n_bci < 60 * data.rate_hz:
        warnings.append(f"only {n_bci / data.rate_hz:.0f} s of BCI frames: the index is uncertain")
    roles = [d.role for d in data.dendrites]
    for role in ("up", "down"):
        n = roles.count(role)
        if n == 0:
            warnings.append(f"no dendrite is linked to a {role} soma: no {role} index")
        elif n < 3:
            warnings.append(f"only {n} dendrite(s) of {role} cells: the {role} index rests on few cells")
    n_trials = len(np.unique(data.trial[use]))
    if n_trials < 10:
        warnings.append(f"only {n_trials} trials: the bootstrap CI over trials is rough")
    result = instructive_index(resid[use], err[use], data.trial[use], roles, data.rate_hz, n_boot=n_boot,
                               min_shift_s=min_shift_s)
    up, down = result.role["up"], result.role["down"]
    # the naive analysis beside it (raw dendrite against the recorded cursor): how much the corrections changed
    raw_err, _ = task_errors(data, leave_one_out=False)
    raw_use = data.bci & np.isfinite(data.dend_dff).all(axis=1) & np.isfinite(raw_err).all(axis=1)
    naive = instructive_index(data.dend_dff[raw_use], raw_err[raw_use], data.trial[raw_use], roles, data.rate_hz,
                              n_boot=200, min_shift_s=min_shift_s)
    z = _standardise(np.where(np.isfinite(resid), resid, np.nanmean(resid, axis=0)))
    events: dict[str, dict[str, Any]] = {}
    hits = [i for i, o in data.outcomes if o == "hit"]
    misses = [i for i, o in data.outcomes if o == "miss"]
    for role in ROLES:
        cols = [j for j, r in enumerate(roles) if r == role]
        if not cols:
            continue
        trace = z[:, cols].mean(axis=1)
        events[role] = {name: aligned(trace, rows, data.rate_hz) for name, rows in
                        (("hit", hits), ("miss", misses), ("reward", data.rewards))}
    return {"result": result, "resid": resid, "err": err, "use": use, "events": events, "warnings": warnings,
            "roles": roles, "soma": soma, "leave_one_out": leave_one_out, "fits": fits, "up": up, "down": down,
            "p_opposite": p_opposite(up, down), "p_same": p_same(up, down),
            "naive": {"up_index": naive.role["up"]["index"], "down_index": naive.role["down"]["index"],
                      "p_opposite": p_opposite(naive.role["up"], naive.role["down"])}, "n_bci_frames": n_bci,
            "n_trials": n_trials}


def _response(events: dict[str, Any], role: str, name: str) -> dict[str, Any] | None:
    ev = events.get(role, {}).get(name)
    if ev is None:
        return None
    resp = ev["response"]
    rng = np.random.default_rng(1)
    boot = [float(np.mean(resp[rng.integers(0, len(resp), len(resp))])) for _ in range(1000)]
    return {"mean": float(np.mean(resp)), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "n": int(len(resp))}


def summary_json(session_path: str, data: DendriteData, out: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: the indices with CIs and p-values, counts, event responses, warnings."""
    up, down, other = out["up"], out["down"], out["result"].role["other"]
    responses = {f"{role}_{name}_response": _response(out["events"], role, name)
                 for role in ("up", "down") for name in ("hit", "miss", "reward")}
    return {
        "session": session_path, "soma_regression": out["soma"],
        "cursor": "leave-one-out" if out["leave_one_out"] else "recorded",
        "up_index": up["index"], "down_index": down["index"], "p_opposite": out["p_opposite"],
        "p_same_sign": out["p_same"], "up_ci95": up["ci95"], "down_ci95": down["ci95"], "up_p": up["p"],
        "down_p": down["p"], "other_index": other["index"], "other_ci95": other["ci95"], "other_p": other["p"],
        "n_up": up["n"], "n_down": down["n"], "n_other": other["n"], "n_dendrites": data.n,
        "bci_frames": out["n_bci_frames"], "trials": out["n_trials"], "hits": sum(o == "hit" for _, o in data.outcomes),
        "misses": sum(o == "miss" for _, o in data.outcomes), "rewards": len(data.rewards), **responses,
        "naive": out["naive"],
        "per_dendrite": [{"plane": d.plane, "roi": d.roi, "soma": d.soma, "role": d.role,
                          "index": float(out["result"].per_dendrite[j]),
                          "ci95": [float(v) for v in out["result"].per_dendrite_ci[j]]}
                         for j, d in enumerate(data.dendrites)],
        "warnings": out["warnings"],
    }
