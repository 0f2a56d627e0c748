"""F0 during BCI: running (as in the baseline), frozen at the start of BCI, or a slow window; replayed."""

from __future__ import annotations

import numpy as np
import pytest

from decoder.calibration import Calibration
from decoder.config import DecoderConfig, TaskConfig
from decoder.engine import DecoderEngine
from rig.core.codes import Mode

FPS = 10.0
F0 = 100.0


def bci_engine(mode: str, dff_rois: str = "all") -> DecoderEngine:
    """BCI on a stored calibration; the F0 window (10 s = 100 frames) warm-started at F0 = 100."""
    dcfg = DecoderConfig(up=[0], down=[1], smoothing_frames=1, f0_window_s=10.0, f0_mode=mode, f0_slow_factor=5,
                         dff_rois=dff_rois)
    eng = DecoderEngine(dcfg, TaskConfig(auto_protocol=False), 2, FPS)
    eng.set_calibration(Calibration(
        threshold=5.0, feedback_min=-1.0, feedback_max=5.0, predicted_hit_rate=0.5, method="hit_rate",
        curve_thresholds=[], curve_hit_rates=[], baseline_frames=0, decoder="two_population", up=[0], down=[1],
        n_rois=2, f0=[F0, F0], cursor_median=0.0, frame_rate_hz=FPS,
        f0_levels=[0.0, 100.0], f0_quantiles=[[F0 - 0.1, F0 - 0.1], [F0 + 0.1, F0 + 0.1]]))
    eng.start_bci()
    return eng


def f0_after_step(eng: DecoderEngine, frames: int) -> list[float]:
    """F of ROI 0 steps from 100 to 200 at BCI start; F0 of ROI 0 after each frame."""
    out = []
    f0 = np.empty(1)
    for t in range(frames):
        res = eng.step(t, np.array([2 * F0, F0]), np.zeros(2))
        eng._dff.take_f0(np.array([0]), f0)
        out.append(float(f0[0]))
        assert np.isfinite(res.cursor)
    return out


@pytest.mark.parametrize("dff_rois", ["all", "decoder"])
def test_running_frozen_and_slow_f0_during_bci(dff_rois: str):
    running = f0_after_step(bci_engine("running", dff_rois), 600)
    frozen = f0_after_step(bci_engine("frozen", dff_rois), 600)
    slow = f0_after_step(bci_engine("slow", dff_rois), 600)
    assert running[95] == pytest.approx(2 * F0)  # the 10th percentile of a 100-frame window moved within it
    assert frozen == pytest.approx([F0] * 600, abs=0.2)  # F0 as at the start of BCI
    assert slow[95] == pytest.approx(F0, abs=0.2) and slow[-1] == pytest.approx(2 * F0)  # 5x slower
    first = next(i for i, v in enumerate(slow) if v > 1.5 * F0)
    assert 5 * 85 <= first <= 5 * 95


@pytest.mark.parametrize("dff_rois", ["all", "decoder"])
def test_after_bci_f0_runs_again_and_bci_start_records_the_mode(dff_rois: str):
    eng = bci_engine("frozen", dff_rois)
    first = eng.step(0, np.array([F0, F0]), np.zeros(2))
    start = next(e for e in first.events if e.kind == "bci_start")
    assert start.detail["f0_mode"] == "frozen"
    for t in range(1, 50):
        eng.step(t, np.array([2 * F0, F0]), np.zeros(2))
    eng.stop()
    assert eng.mode == Mode.STOPPED
    f0 = np.empty(1)
    eng.step(50, np.array([2 * F0, F0]), np.zeros(2))
    eng._dff.take_f0(np.array([0]), f0)
    assert f0[0] == pytest.approx(F0, abs=0.2)  # 50 of the window's 100 frames at 2·F0: the 10th percentile is F0
    for t in range(51, 100):
        eng.step(t, np.array([2 * F0, F0]), np.zeros(2))
    eng._dff.take_f0(np.array([0]), f0)
    assert f0[0] == pytest.approx(2 * F0)  # running again from every BCI frame, as if it had run all along
    with pytest.raises(ValueError, match="f0_mode"):
        DecoderConfig(f0_mode="mean")
