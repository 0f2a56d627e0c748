"""F0 safeguards: a dim or noisy ROI cannot enter an ensemble without an override; drift and noise in BCI warned."""

from __future__ import annotations

import numpy as np
import pytest

from decoder.calibration import Calibration, CalibrationError
from decoder.config import DecoderConfig, SafeguardConfig, TaskConfig
from decoder.engine import DecoderEngine
from decoder.safeguards import describe, diff_noise
from tests.test_decoder_synthetic import synthetic_recording

FPS = 10.0
N = 6
BASELINE = 600  # frames: 60 s, 30 trial lengths of 2 s


def recording(n_frames: int, *, dim: int | None = None, noisy: int | None = None, seed: int = 5):
    F, Fneu = synthetic_recording(n_frames, N, seed=seed, fps=FPS)
    F = F.astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    if dim is not None:  # corrected F about 40 ± 20 counts: F0 near its own noise
        F[:, dim] = 40.0 + 20.0 * rng.standard_normal(n_frames) + 0.7 * Fneu[:, dim]
    if noisy is not None:  # dF/F noise several times the other cells'
        level = np.median(F[:, noisy] - 0.7 * Fneu[:, noisy])
        F[:, noisy] += 0.2 * level * rng.standard_normal(n_frames)
    return F, Fneu.astype(np.float64)


def engine(**safeguards) -> DecoderEngine:
    dcfg = DecoderConfig(up=[0, 1, 2], down=[3, 4, 5], f0_window_s=10.0, safeguards=SafeguardConfig(**safeguards))
    return DecoderEngine(dcfg, TaskConfig(auto_protocol=False, baseline_s=BASELINE / FPS, trial_s=2.0, iti_s=0.5),
                         N, FPS)


def record_baseline(eng: DecoderEngine, F: np.ndarray, Fneu: np.ndarray) -> None:
    eng.start_baseline()
    for t in range(BASELINE):
        eng.step(t, F[t], Fneu[t])


def test_a_roi_with_f0_near_its_noise_is_refused_with_its_numbers_and_let_in_by_an_override():
    F, Fneu = recording(BASELINE, dim=2)
    eng = engine()
    record_baseline(eng, F, Fneu)
    with pytest.raises(CalibrationError) as info:
        eng.calibrate()
    text = str(info.value)
    assert text.startswith("ROI 2: F0 falls to ") and "× its noise (σ " in text and "min_f0_snr 3" in text
    assert "allow_rois=[2]" in text and "ROI 0" not in text
    cal = eng.calibrate(allow_rois=[2])  # the operator's explicit override
    assert cal.allowed_rois == [2] and len(cal.dff_noise) == N and np.isfinite(cal.dff_noise).all()
    assert Calibration.from_dict(cal.to_dict()).allowed_rois == [2]


def test_a_roi_whose_noise_is_an_outlier_in_its_ensemble_is_refused_unless_configured():
    F, Fneu = recording(BASELINE, noisy=4)
    eng = engine()
    record_baseline(eng, F, Fneu)
    with pytest.raises(CalibrationError, match=r"^ROI 4: dF/F noise [0-9.]+ is [0-9.]+× the ensemble's median"):
        eng.calibrate()
    eng = engine(allow_rois=[4])  # the override in the config
    record_baseline(eng, F, Fneu)
    assert eng.calibrate().allowed_rois == [4]


def test_bci_warns_once_when_a_cells_f0_drifts_or_its_noise_grows():
    n_bci = 1200
    F, Fneu = recording(BASELINE + n_bci)
    rng = np.random.default_rng(0)
    later = slice(BASELINE + 100, None)
    F[later, 0] = 2.0 * (F[later, 0] - 0.7 * Fneu[later, 0]) + 0.7 * Fneu[later, 0]  # the cell doubles
    level = np.median(F[:, 3] - 0.7 * Fneu[:, 3])
    F[BASELINE + 600:, 3] += 0.25 * level * rng.standard_normal(n_bci - 600)  # the cell gets noisy
    eng = engine(check_every_s=15.0)
    record_baseline(eng, F, Fneu)
    eng.calibrate()
    eng.start_bci()
    seen = []
    for t in range(BASELINE, BASELINE + n_bci):
        seen += [(e.kind, e.frame, e.detail) for e in eng.step(t, F[t], Fneu[t]).events
                 if e.kind in ("f0_drift", "noise_change")]
    kinds = [(kind, detail["roi"]) for kind, _, detail in seen]
    assert kinds.count(("f0_drift", 0)) == 1 and kinds.count(("noise_change", 3)) == 1  # once per excursion
    assert {roi for _, roi in kinds} <= {0, 3}  # the untouched cells stay quiet
    frame, drift = next((f, d) for k, f, d in seen if k == "f0_drift")
    assert drift["change"] > 0.3 and frame > BASELINE + 100
    assert drift["f0"] == pytest.approx(2.0 * drift["f0_baseline"], rel=0.2)
    frame, noise = next((f, d) for k, f, d in seen if k == "noise_change" and d["roi"] == 3)
    assert noise["ratio"] > 2.0 and frame > BASELINE + 600
    assert describe("f0_drift", drift).startswith("ROI 0: F0 ") and "from its baseline" in describe("f0_drift", drift)
    assert describe("noise_change", noise).startswith("ROI 3: dF/F noise ")


def test_noise_is_measured_from_differences_so_slow_changes_do_not_count():
    t = np.arange(2000)
    rng = np.random.default_rng(1)
    series = np.stack([np.sin(t / 300.0) * 50 + rng.standard_normal(2000), rng.standard_normal(2000) * 3], axis=1)
    assert diff_noise(series) == pytest.approx([1.0, 3.0], rel=0.1)
    with pytest.raises(ValueError, match="max_noise_ratio"):
        SafeguardConfig(max_noise_ratio=1.0)
