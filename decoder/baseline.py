"""The baseline recording calibration works on, and the assembly of a :class:`Calibration` from it.

Why corrected F and the live F0 of each frame, not dF/F: calibration gives every baseline frame an F0
from a full window (:func:`decoder.dff.baseline_f0`), computes dF/F series only for the decoder's ROIs
and for every other ROI just its mean and spread (z-scoring, the stored record), and summarises the
last F0 window for warm starts; all of that follows from these two arrays.
"""

from __future__ import annotations

import copy

import numpy as np

from decoder.calibration import Calibration, CalibrationError, calibrate_cursor, rtb_level_for
from decoder.config import CalibrationConfig, DecoderConfig, TaskConfig
from decoder.decoders import RunningMean
from decoder.dff import baseline_dff_stats, baseline_f0, corrected_f, dff_from
from decoder.percentile import RunningPercentile
from decoder.registry import Decoder
from decoder.safeguards import diff_noise, roi_problems
from decoder.trial import TrialTiming

#: Percentile levels of the baseline F0-window summary stored in a calibration (for warm starts).
F0_LEVELS = tuple(float(v) for v in range(0, 101, 5))


class Baseline:
    """Corrected F and live F0 of each baseline frame (recorded live or loaded), and calibration on them.

    ``decoder_cfg``, ``task_cfg``, ``timing`` and ``frame_rate_hz`` are the session's; the calibration
    config is passed to :meth:`calibrate` because the operator may change it (a new target hit rate).
    """

    def __init__(self, n_rois: int, f0_window: int, decoder_cfg: DecoderConfig, task_cfg: TaskConfig,
                 timing: TrialTiming, frame_rate_hz: float) -> None:
        self.n_rois = n_rois
        self.f0_window = f0_window
        self.decoder_cfg = decoder_cfg
        self.task_cfg = task_cfg
        self.timing = timing
        self.frame_rate_hz = frame_rate_hz
        self.corrected = np.empty((0, n_rois))
        self.f0 = np.empty((0, n_rois))
        self.count = 0  # frames recorded (or loaded)
        self.gap_frames = 0  # frames missing from the recording
        self.bad_frames = 0  # frames left out by the bad-frame rule

    def start(self, frames: int) -> None:
        """Drop the previous baseline; make room for a recording of ``frames`` frames."""
        self.corrected = np.empty((frames, self.n_rois))
        self.f0 = np.empty((frames, self.n_rois))
        self.count = 0
        self.gap_frames = 0
        self.bad_frames = 0

    def snapshot(self) -> Baseline:
        """This baseline as it is now, for a calibration computed beside the loop: the arrays are shared, not
        copied (cheap), which is safe because a recording never writes into them again: :meth:`start` and
        :meth:`load` put new arrays in place."""
        return copy.copy(self)

    def record(self, corrected: np.ndarray, f0: np.ndarray) -> None:
        """Append one frame (its corrected F and live F0)."""
        i = self.count
        if i == self.corrected.shape[0]:  # start() sizes the buffers for the whole recording: a bug if hit
            raise RuntimeError("the baseline buffer is full")
        self.corrected[i] = corrected
        self.f0[i] = f0
        self.count = i + 1

    def load(self, F: np.ndarray, Fneu: np.ndarray, running: RunningPercentile | None) -> None:
        """Use a baseline recorded earlier (frames × n_rois F and Fneu); ValueError leaves everything as it was.

        Its live F0 is computed by pushing every frame into ``running`` (reset first: the engine passes its
        own F0 window to warm-start it), or into a new window when None.
        """
        F = np.asarray(F)
        Fneu = np.asarray(Fneu)
        if F.ndim != 2 or F.shape[1] != self.n_rois or F.shape != Fneu.shape:
            raise ValueError(f"`F`/`Fneu`: expected two (frames, {self.n_rois}) arrays, got {F.shape} and {Fneu.shape}")
        if F.shape[0] < 1:
            raise ValueError("`F`: the baseline has no frames")
        corrected = corrected_f(F, Fneu, self.decoder_cfg.neuropil_coef)
        bad = np.flatnonzero(~np.isfinite(corrected).all(axis=1))
        if bad.size:
            raise ValueError(f"`F`/`Fneu`: baseline frames {bad[:10].tolist()} have non-finite values")
        live_f0 = np.empty_like(corrected)
        if running is None:
            running = RunningPercentile(self.n_rois, self.f0_window, self.decoder_cfg.f0_percentile)
        running.reset()
        for t, row in enumerate(corrected):
            live_f0[t] = running.push(row)
        self.corrected = corrected
        self.f0 = live_f0
        self.count = corrected.shape[0]
        self.gap_frames = 0
        self.bad_frames = 0

    def calibrate(self, decoder: Decoder, cal_cfg: CalibrationConfig, allow_rois: list[int] | None = None
                  ) -> Calibration:
        """Calibrate ``decoder`` (not modified) on this baseline; CalibrationError says why it cannot.

        ``allow_rois``: the operator's override of the F0 safeguards for these ROIs (besides the config's).
        """
        n = self.count
        if n == 0:
            raise CalibrationError("no baseline: record one (start_baseline) or load one (load_baseline) first")
        if not decoder.ready:
            raise CalibrationError(f"the {decoder.kind} decoder has no ensembles: set the up/down ensembles first")
        cfg = self.decoder_cfg
        task = self.task_cfg
        corrected = self.corrected[:n]
        live_f0 = self.f0[:n]
        rois = decoder.rois
        # dF/F series only for the decoder's ROIs; for every ROI just its mean and spread (z-scoring, record)
        f0 = baseline_f0(corrected[:, rois], live_f0[:, rois], self.f0_window, cfg.f0_percentile)
        low = f0.min(axis=0)
        dim = [int(r) for r, v in zip(rois, low, strict=True) if not v > cfg.f0_floor]
        if dim:
            raise CalibrationError(
                f"ROIs {dim}: baseline F0 falls to or below f0_floor ({cfg.f0_floor:g}), so their dF/F is not "
                f"meaningful (neuropil-corrected F near zero); pick other cells or lower neuropil_coef")
        dff = dff_from(corrected[:, rois], f0, cfg.f0_floor)
        allowed = sorted(set(cfg.safeguards.allow_rois) | set(allow_rois or []))
        dff_noise = diff_noise(dff)
        problems = roi_problems([int(r) for r in rois], low, diff_noise(corrected[:, rois]), dff_noise,
                                cfg.safeguards, set(allowed))
        if problems and cfg.rules_version >= 2:  # rules_version 1: sessions recorded before the safeguards
            named = sorted({int(p.split(":")[0].removeprefix("ROI ")) for p in problems})
            raise CalibrationError(
                f"{'; '.join(problems)}. These ROIs cannot enter an ensemble: pick other cells, or override with "
                f"calibrate allow_rois={named} (or decoder.safeguards.allow_rois)")
        noise_all = np.full(self.n_rois, np.nan)
        noise_all[rois] = dff_noise
        mean, std, last_f0 = baseline_dff_stats(corrected, live_f0, self.f0_window, cfg.f0_percentile, cfg.f0_floor)
        if cfg.zscore:
            flat = [int(r) for r in rois if not std[r] > 0.0]
            if flat:
                raise CalibrationError(f"ROIs {flat}: the baseline dF/F is flat, they cannot be z-scored")
        probe = decoder.clone()  # the live decoder keeps its z-score statistics until the calibration applies
        probe.set_zscore_stats(mean, std)
        up, down = probe.decode_frames(dff, rois_only=True)
        up_s, down_s = RunningMean(cfg.smoothing_frames).smooth_frames(up, down)
        cursor = up_s - down_s
        part = calibrate_cursor(cursor, cal_cfg, self.timing, self.frame_rate_hz, task.rtb_fraction,
                                legacy=cfg.rules_version < 2)
        return Calibration(
            threshold=part.threshold, feedback_min=part.feedback_min, feedback_max=part.feedback_max,
            predicted_hit_rate=part.predicted_hit_rate, method=cal_cfg.method,
            curve_thresholds=part.curve_thresholds, curve_hit_rates=part.curve_hit_rates, baseline_frames=n,
            target=part.target, predicted_reward_interval_s=part.predicted_reward_interval_s,
            cursor_median=part.cursor_median, cursor_std=part.cursor_std,
            rtb_level=rtb_level_for(part.threshold, part.cursor_median, task.rtb_fraction, task.return_to_baseline),
            trial_frames=self.timing.trial_frames, n_trials=cal_cfg.n_trials, seed=cal_cfg.seed,
            frame_rate_hz=self.frame_rate_hz, decoder=decoder.kind, up=list(decoder.up), down=list(decoder.down),
            weights=[float(w) for w in decoder.weights] if decoder.uses_weights else [],
            zscore=cfg.zscore, n_rois=self.n_rois, f0=[float(v) for v in last_f0],
            dff_mean=[float(v) for v in mean], dff_std=[float(v) for v in std],
            f0_levels=[float(v) for v in F0_LEVELS],
            f0_quantiles=np.percentile(corrected[-self.f0_window :], F0_LEVELS, axis=0).tolist(),
            predicted_hit_rate_ci95=part.predicted_hit_rate_ci95, warnings=part.warnings,
            needed_baseline_s=part.needed_baseline_s, dff_noise=[float(v) for v in noise_all],
            allowed_rois=[r for r in allowed if r in set(int(x) for x in rois)],
        )
