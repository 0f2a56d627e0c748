"""The [decoder] and [task] sections of a rig config. Owned by the decoder package.

Times are given in seconds and turned into frames with the acquisition frame rate (rounded to the
nearest frame) by the engine, so one config serves rigs imaging at different rates.
"""

from __future__ import annotations

import math

import msgspec

from decoder.registry import DECODERS
from rig.core.codes import FrameFlag

CALIBRATION_METHODS = ("hit_rate", "reward_interval")
PREDICTIONS = ("task", "windows")
#: ``decoder.rules_version``: 2 = the rules of docs/TASK_RULES.md; 1 = the rules sessions were recorded with
#: before that key existed (replay only; docs/SESSION_FORMAT.md "Sessions recorded before ...").
RULES_VERSIONS = (1, 2)
F0_MODES = ("running", "frozen", "slow")

#: Frame flags (``rig.core.codes.FrameFlag``) the decoder treats as bad by default: every flag except the
#: informational ones (AFTER_GAP: the first frame after a link drop is a good frame; NOT_REGISTERED: no
#: reference yet, the frame is not shifted, which the baseline tolerates).
DEFAULT_BAD_FRAME_FLAGS = ("WRONG_SHAPE", "WRONG_DTYPE", "ALL_ZERO", "SATURATED", "NAN", "SHIFT_OUT_OF_BOUNDS",
                           "LOW_CORR", "TRUNCATED")


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"`{name}`: must be a finite number")


def _check_rois(name: str, rois: list[int]) -> None:
    if any(i < 0 for i in rois):
        raise ValueError(f"`{name}`: ROI indices must be >= 0")
    if len(set(rois)) != len(rois):
        raise ValueError(f"`{name}`: ROI indices must not repeat")


class CalibrationConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[decoder.calibration]: how the threshold is chosen on the baseline cursor."""

    # "hit_rate": CLOOSE — resample trials of trial length from the baseline, the threshold is the lowest
    # value that at most `target_hit_rate` of them cross. "reward_interval": HoloBMI — the threshold at
    # which running the task on the baseline would give one hit per `target_reward_interval_s`.
    method: str = "hit_rate"
    target_hit_rate: float = 0.5
    target_reward_interval_s: float = 60.0
    n_trials: int = 200  # resampled trials (CLOOSE default)
    seed: int = 0  # the resampling RNG seed: calibration is reproducible
    min_baseline_trials: float = 3.0  # the baseline must last at least this many trial lengths
    min_reward_intervals: float = 3.0  # ... and, for "reward_interval", this many target intervals
    max_rate_error: float = 0.15  # refuse a threshold whose predicted hit rate misses the target by more
    min_cursor_std: float = 1e-6  # a baseline cursor with less spread than this is "flat"
    feedback_min_percentile: float = 0.0  # feedback range starts at this percentile of the baseline cursor
    curve_points: int = 50  # points of the threshold -> predicted hit-rate curve
    # hit_rate method: how a threshold's chance hit rate is predicted. "task": the trial machine itself
    # (decoder/trial.py: ITI, trial, hold, timeout, one crossing one reward, return-to-baseline) run over the
    # baseline cursor, so the prediction is the task's own rate; "windows" (CLOOSE, and sessions recorded
    # before this key): the fraction of n_trials random trial-length windows whose maximum reaches it
    predict: str = "task"
    # The predicted hit rate's 95 % interval (blocks adapted to the cursor's autocorrelation, decoder/uncertainty.py)
    # and when to warn the operator; defaults measured in benchmarks/bench_calibration.py (docs/TASK_RULES.md)
    ci_resamples: int = 200  # resampled baselines (predict = "windows"; the task's interval is batch means)
    max_ci_width: float = 0.7  # warn when the interval is wider than this (a 15-min baseline: ~0.5-0.65)
    rate_tolerance: float = 0.05  # warn when the prediction misses target_hit_rate by more than this

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"`method`: must be one of {', '.join(CALIBRATION_METHODS)}")
        if not 0.0 < self.target_hit_rate < 1.0:
            raise ValueError("`target_hit_rate`: must be between 0 and 1 (exclusive)")
        _finite("target_reward_interval_s", self.target_reward_interval_s)
        if self.target_reward_interval_s <= 0:
            raise ValueError("`target_reward_interval_s`: must be > 0")
        if self.n_trials < 20:
            raise ValueError("`n_trials`: must be >= 20 resampled trials")
        if self.seed < 0:
            raise ValueError("`seed`: must be >= 0")
        if not self.min_baseline_trials >= 1.0:
            raise ValueError("`min_baseline_trials`: must be >= 1")
        if not self.min_reward_intervals >= 1.0:
            raise ValueError("`min_reward_intervals`: must be >= 1")
        if not 0.0 < self.max_rate_error <= 1.0:
            raise ValueError("`max_rate_error`: must be within (0, 1]")
        if not self.min_cursor_std >= 0.0:
            raise ValueError("`min_cursor_std`: must be >= 0")
        if not 0.0 <= self.feedback_min_percentile < 50.0:
            raise ValueError("`feedback_min_percentile`: must be within [0, 50)")
        if self.curve_points < 2:
            raise ValueError("`curve_points`: must be >= 2")
        if self.predict not in PREDICTIONS:
            raise ValueError(f"`predict`: must be one of {', '.join(PREDICTIONS)}")
        if self.ci_resamples < 40:
            raise ValueError("`ci_resamples`: must be >= 40 (a 95 % interval from fewer is noise)")
        if not 0.0 < self.max_ci_width <= 1.0:
            raise ValueError("`max_ci_width`: must be within (0, 1]")
        if not 0.0 < self.rate_tolerance <= self.max_rate_error:
            raise ValueError("`rate_tolerance`: must be within (0, max_rate_error]: it warns before max_rate_error "
                             "refuses")


class SafeguardConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[decoder.safeguards]: which ROIs may enter an ensemble, and the BCI drift / noise warnings
    (decoder/safeguards.py)."""

    min_f0_snr: float = 3.0  # a ROI's lowest baseline F0 must be at least this many F noise widths
    max_noise_ratio: float = 3.0  # a ROI's dF/F noise at most this times its ensemble's median (>= 3 ROIs)
    allow_rois: list[int] = []  # the operator's override: these ROIs may enter despite the checks above
    max_f0_drift: float = 0.3  # during BCI: warn when a decoder ROI's F0 moves this fraction from baseline
    max_noise_growth: float = 2.0  # during BCI: warn when its dF/F noise grows (or shrinks) by this factor
    check_every_s: float = 30.0  # how often the BCI checks run (each on the frames since the last: shorter is noisier)

    def __post_init__(self) -> None:
        for name in ("min_f0_snr", "max_noise_ratio", "max_f0_drift", "max_noise_growth", "check_every_s"):
            _finite(name, getattr(self, name))
        if self.min_f0_snr < 0:
            raise ValueError("`min_f0_snr`: must be >= 0 (0 switches the check off)")
        if self.max_noise_ratio <= 1.0:
            raise ValueError("`max_noise_ratio`: must be > 1")
        if self.max_f0_drift <= 0:
            raise ValueError("`max_f0_drift`: must be > 0")
        if self.max_noise_growth <= 1.0:
            raise ValueError("`max_noise_growth`: must be > 1")
        if self.check_every_s <= 0:
            raise ValueError("`check_every_s`: must be > 0")
        if any(i < 0 for i in self.allow_rois):
            raise ValueError("`allow_rois`: ROI indices must be >= 0")


class DecoderConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[decoder]: fluorescence -> dF/F -> cursor."""

    decoder: str = "two_population"  # a decoder.registry name: one_population | two_population | weighted
    up: list[int] = []  # ROI indices of the "up" ensemble (one_population: the only ensemble)
    down: list[int] = []  # ROI indices of the "down" ensemble
    weights: list[float] = []  # weighted decoder: one weight per ROI (positive pushes up)
    neuropil_coef: float = 0.7  # F_corrected = F - neuropil_coef * Fneu (suite2p's default)
    f0_percentile: float = 10.0  # F0 = this percentile of F_corrected over the running window
    f0_window_s: float = 60.0  # running window of F0 (CLOOSE: 4 trial lengths; HoloBMI: 1-2 min)
    f0_floor: float = 1.0  # dF/F divides by max(F0, f0_floor) (F units); calibration rejects ROIs below it
    # F0 during BCI (docs/TASK_RULES.md): "running" (the window goes on, as in the baseline), "frozen" (F0 stays
    # as it was at the start of BCI) or "slow" (the window takes one frame in f0_slow_factor, so it spans
    # f0_window_s × f0_slow_factor and follows slow drift, not learning). Outside BCI F0 always runs.
    f0_mode: str = "running"
    f0_slow_factor: int = 10
    zscore: bool = False  # decode z-scored dF/F, using the baseline mean and standard deviation
    smoothing_frames: int = 3  # running mean of the cursor over this many frames (CLOOSE: 3)
    cell_cap: float = 0.0  # > 0: clip each cell's signal to [-cap, cap] (HoloBMI style); 0: no cap
    # "all": dF/F of every ROI every frame (during BCI the others' after the decision is sent). "decoder": during
    # BCI only the decoder's ROIs (the others are NaN in the per-frame output until BCI ends): the decode step
    # then costs a fraction (see bench_decoder.py)
    dff_rois: str = "all"
    # The bad-frame rule: a frame carrying any of these flags updates neither F0 nor the cursor (the cursor
    # holds its last value, the frame takes its time in the trial and cannot be a hit). Names of FrameFlag.
    bad_frame_flags: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_BAD_FRAME_FLAGS))
    # 1: the older rules, for replaying sessions recorded before this key (a crossing is paid again after the
    # hold, no F0-safeguard refusal, no BCI drift watch, calibration.predict "windows"); `rig run` refuses it
    rules_version: int = 2
    # auto_protocol's calibration at the end of the baseline: true computes it beside the decision loop (a
    # thread) and applies it before the first frame decided after it is ready, a frame the decoder records
    # (`calibration_applied` in events.jsonl) and replay re-applies; false (sessions recorded before this key)
    # computes it in the loop on the baseline's last frame, which stalls the frames meanwhile
    calibrate_off_loop: bool = True
    # The operator's Calibrate command the same way (with calibrate_off_loop; docs/TASK_RULES.md): until it
    # applies the decoder goes on as before the command, and the operator's later commands wait behind it.
    # false (sessions recorded before this key): computed in the loop between two frames, stalling them
    operator_calibrate_off_loop: bool = True
    calibration: CalibrationConfig = msgspec.field(default_factory=CalibrationConfig)
    safeguards: SafeguardConfig = msgspec.field(default_factory=SafeguardConfig)

    def __post_init__(self) -> None:
        kind = DECODERS.get(self.decoder)
        if kind is None:
            raise ValueError(f"`decoder`: must be one of {', '.join(DECODERS)}")
        _check_rois("up", self.up)
        _check_rois("down", self.down)
        if set(self.up) & set(self.down):
            raise ValueError("`down`: a ROI cannot be in both the up and the down ensemble")
        if self.down and not kind.reads_down:
            raise ValueError(f"`down`: the {self.decoder} decoder reads only the up ensemble; leave down empty")
        for w in self.weights:
            _finite("weights", w)
        if self.weights and not kind.uses_weights:
            users = " or ".join(name for name, spec in DECODERS.items() if spec.uses_weights)
            raise ValueError(f"`weights`: only the {users} decoder uses weights")
        if not 0.0 <= self.neuropil_coef <= 2.0:
            raise ValueError("`neuropil_coef`: must be within [0, 2]")
        if not 0.0 <= self.f0_percentile <= 100.0:
            raise ValueError("`f0_percentile`: must be within [0, 100]")
        _finite("f0_window_s", self.f0_window_s)
        if self.f0_window_s <= 0:
            raise ValueError("`f0_window_s`: must be > 0")
        _finite("f0_floor", self.f0_floor)
        if self.f0_floor <= 0:
            raise ValueError("`f0_floor`: must be > 0")
        if not 1 <= self.smoothing_frames <= 1000:
            raise ValueError("`smoothing_frames`: must be between 1 and 1000")
        _finite("cell_cap", self.cell_cap)
        if self.cell_cap < 0:
            raise ValueError("`cell_cap`: must be >= 0 (0 switches the cap off)")
        if self.f0_mode not in F0_MODES:
            raise ValueError(f"`f0_mode`: must be one of {', '.join(F0_MODES)}")
        if not 2 <= self.f0_slow_factor <= 1000:
            raise ValueError("`f0_slow_factor`: must be between 2 and 1000")
        if self.dff_rois not in ("all", "decoder"):
            raise ValueError('`dff_rois`: must be "all" or "decoder"')
        if self.rules_version not in RULES_VERSIONS:
            raise ValueError(f"`rules_version`: must be one of {RULES_VERSIONS}")
        if self.rules_version == 1 and self.calibration.predict != "windows":
            raise ValueError('`rules_version` 1 (sessions recorded before it) predicted chance on random trial '
                             'windows: set decoder.calibration.predict = "windows"')
        known = [f.name for f in FrameFlag if f and f.name is not None]
        unknown = [name for name in self.bad_frame_flags if name not in known]
        if unknown:
            raise ValueError(f"`bad_frame_flags`: unknown flag(s) {unknown}; known: {', '.join(known)}")

    @property
    def bad_frame_mask(self) -> int:
        """The bad-frame flags as one bit mask."""
        mask = 0
        for name in self.bad_frame_flags:
            mask |= int(FrameFlag[name])
        return mask


class FeedbackConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[task.feedback]: how the normalised cursor maps to a tone and a grating angle."""

    tone_min_hz: float = 2000.0  # cursor at the bottom of the feedback range
    tone_max_hz: float = 18000.0  # cursor at the threshold (log-spaced in between)
    grating_bins: int = 6  # CLOOSE: the grating turns toward the target angle in 6 steps
    grating_start_deg: float = 0.0  # angle of bin 0
    grating_step_deg: float = 15.0  # angle between bins

    def __post_init__(self) -> None:
        _finite("tone_min_hz", self.tone_min_hz)
        _finite("tone_max_hz", self.tone_max_hz)
        if self.tone_min_hz <= 0:
            raise ValueError("`tone_min_hz`: must be > 0")
        if self.tone_max_hz <= self.tone_min_hz:
            raise ValueError("`tone_max_hz`: must be > tone_min_hz")
        if not 1 <= self.grating_bins <= 360:
            raise ValueError("`grating_bins`: must be between 1 and 360")
        _finite("grating_start_deg", self.grating_start_deg)
        _finite("grating_step_deg", self.grating_step_deg)


class TaskConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[task]: the baseline, the trial structure and the session limits."""

    # baseline recorded before BCI (CLOOSE: 15,000 frames; HoloBMI: 15 min). 15 min: shorter baselines give a
    # predicted chance rate whose 95 % interval is wider than 0.4 (docs/TASK_RULES.md, bench_calibration.py)
    baseline_s: float = 900.0
    auto_protocol: bool = True  # after start_baseline: collect, calibrate and start BCI without the operator
    trial_s: float = 30.0  # longest trial (CLOOSE: 870 frames; HoloBMI: 30 s)
    iti_s: float = 5.0  # inter-trial interval before each trial (CLOOSE: 150 frames)
    hold_s: float = 1.0  # after a hit: reward consumption period before the next ITI
    timeout_s: float = 3.0  # after a miss: timeout pause (punishment cue) before the next ITI
    max_trials: int = 0  # 0: no limit
    session_max_s: float = 0.0  # BCI task time limit (paused time excluded); 0: no limit
    return_to_baseline: bool = False  # HoloBMI: after a hit the cursor must fall back before the next hit
    rtb_fraction: float = 0.5  # ... below baseline median + fraction * (threshold - baseline median)
    rtb_frames: int = 2  # ... for this many consecutive frames
    rtb_holds_trials: bool = True  # HoloBMI: no new trial starts until re-armed (false: trials run, cannot be hit)
    feedback: FeedbackConfig = msgspec.field(default_factory=FeedbackConfig)

    def __post_init__(self) -> None:
        for name in ("baseline_s", "trial_s", "iti_s", "hold_s", "timeout_s", "session_max_s", "rtb_fraction"):
            _finite(name, getattr(self, name))
        if self.baseline_s <= 0:
            raise ValueError("`baseline_s`: must be > 0")
        if self.trial_s <= 0:
            raise ValueError("`trial_s`: must be > 0")
        for name in ("iti_s", "hold_s", "timeout_s", "session_max_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}`: must be >= 0")
        if self.max_trials < 0:
            raise ValueError("`max_trials`: must be >= 0 (0: no limit)")
        if self.hold_s == 0 and self.iti_s == 0:
            raise ValueError("`hold_s`/`iti_s`: both are 0, so a crossing that flickers across the threshold "
                             "would be paid again every other frame (one crossing, one reward); give the hold "
                             "or the ITI some time")
        if not 0.0 <= self.rtb_fraction < 1.0:
            raise ValueError("`rtb_fraction`: must be within [0, 1)")
        if self.rtb_frames < 1:
            raise ValueError("`rtb_frames`: must be >= 1")
