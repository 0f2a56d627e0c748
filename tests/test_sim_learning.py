"""The simulated mouse learns the task through the real decoder: vectorized > scalar > none (= chance).

Trace level (no images): TraceSim gives every ROI's F/Fneu, ``decoder.engine.DecoderEngine`` runs the
whole protocol (baseline -> calibration -> BCI trials) and its reward requests are delivered back to the
mouse, like the rig does over the bus. Ten frames a second keeps one simulated 50-minute session to a
few seconds. The decoder and task settings are pinned here so the test measures the mouse, not a
change of the decoder's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from acquisition.sim.config import MouseConfig, SimConfig
from acquisition.sim.traces import TraceSim
from decoder.config import CalibrationConfig, DecoderConfig, TaskConfig
from decoder.engine import DecoderEngine

FPS = 10.0
BASELINE_S = 600.0
BCI_S = 2400.0
UP, DOWN = [0, 1, 2, 3], [4, 5, 6, 7]
N_ROIS = 20
SEED = 8


@dataclass
class Session:
    predicted_hit_rate: float
    outcomes: np.ndarray  # 1 = hit, 0 = miss, in trial order
    drive_up_hz: float
    drive_down_hz: float

    @property
    def hit_rate(self) -> float:
        return float(self.outcomes.mean())

    def quarter(self, i: int) -> float:
        q = len(self.outcomes) // 4
        return float(self.outcomes[i * q : (i + 1) * q].mean())


def run_session(rule: str, seed: int = SEED) -> Session:
    sim = TraceSim(SimConfig(seed=seed, n_cells=N_ROIS, mouse=MouseConfig(learning_rule=rule)), FPS, UP, DOWN)
    decoder_cfg = DecoderConfig(
        decoder="two_population", up=UP, down=DOWN, neuropil_coef=0.7, f0_percentile=10.0, f0_window_s=60.0,
        smoothing_frames=3, calibration=CalibrationConfig(method="hit_rate", target_hit_rate=0.5, seed=0),
    )
    task_cfg = TaskConfig(baseline_s=BASELINE_S, auto_protocol=True, trial_s=30.0, iti_s=5.0, hold_s=1.0,
                          timeout_s=3.0)
    engine = DecoderEngine(decoder_cfg, task_cfg, N_ROIS, FPS)
    engine.start_baseline()
    outcomes: list[int] = []
    predicted = float("nan")
    for frame in range(int((BASELINE_S + BCI_S) * FPS)):
        F, Fneu = sim.step()
        result = engine.step(frame, F, Fneu)
        if result.reward_request:
            sim.mouse.on_reward()  # the reward process delivers; RewardOutcome("delivered") reaches the mouse
        for event in result.events:
            if event.kind == "hit":
                outcomes.append(1)
            elif event.kind == "miss":
                outcomes.append(0)
            elif event.kind == "calibrated":
                predicted = event.detail["calibration"]["predicted_hit_rate"]
            elif event.kind == "calibration_failed":
                raise AssertionError(f"calibration failed: {event.detail}")
    state = sim.mouse.state()
    return Session(predicted, np.array(outcomes), state["drive_up_hz"], state["drive_down_hz"])


@pytest.fixture(scope="module")
def sessions() -> dict[str, Session]:
    return {rule: run_session(rule) for rule in ("vectorized", "scalar", "none")}


def test_without_learning_the_hit_rate_stays_at_calibrated_chance(sessions):
    none = sessions["none"]
    assert 0.3 < none.predicted_hit_rate < 0.7
    assert abs(none.hit_rate - none.predicted_hit_rate) < 0.2
    assert none.drive_up_hz == 0.0
    assert len(none.outcomes) > 60


def test_vectorized_credit_climbs_from_chance_to_80_percent(sessions):
    vec = sessions["vectorized"]
    first_trials = float(vec.outcomes[:20].mean())
    assert first_trials < 0.75  # starts near chance...
    assert vec.quarter(3) >= 0.8  # ...and ends above 80 % within the session
    assert vec.drive_up_hz > 0 > vec.drive_down_hz  # up cells pushed up, down cells down


def test_learning_rules_order_vectorized_scalar_none(sessions):
    vec, scalar, none = sessions["vectorized"], sessions["scalar"], sessions["none"]
    assert vec.hit_rate > scalar.hit_rate + 0.1
    assert scalar.hit_rate > none.hit_rate + 0.1
    assert scalar.drive_up_hz > 0  # the global reward signal found the up cells, slowly
