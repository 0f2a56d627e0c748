"""``rig sim learn``: a simulated mouse learns the BCI task through the real decoder engine, at trace level.

No images: :class:`acquisition.sim.traces.TraceSim` gives every ROI's F and Fneu, the decoder's own
:class:`decoder.engine.DecoderEngine` runs the protocol (baseline -> calibration -> BCI trials with its
trial rules), the feedback planner of the feedback process (:class:`reward.feedback.plan.FeedbackPlanner`)
turns each decision into what the mouse hears, and rewards go back to the mouse as the reward process
would deliver them. This runs in one process, thousands of frames a second, so a simulated hour takes
about a minute.

``rewards = "yoked"`` is the control: the decoder's hits are still counted, but the mouse is rewarded
at random, at the chance rate the calibration predicted, at a random moment of each trial, whatever it
does. ``feedback = False`` presents nothing (the mouse hears no tone): it learns from rewards only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
import numpy as np

from acquisition.sim.config import LEARNING_RULES, MouseConfig, SimConfig
from acquisition.sim.mouse import SimMouse
from acquisition.sim.traces import TraceSim
from decoder.config import CalibrationConfig, DecoderConfig, TaskConfig
from decoder.engine import DecoderEngine, StepResult
from reward.feedback.config import FeedbackConfig
from reward.feedback.plan import FeedbackPlanner
from rig.core.codes import Mode

REWARD_MODES = ("contingent", "yoked")


class LearningError(RuntimeError):
    """The simulated session could not run its protocol (e.g. calibration failed on the baseline)."""


@dataclass
class LearnSpec:
    """One simulated learning session: who learns how, what it perceives, how long."""

    rule: str = "vectorized"
    rewards: str = "contingent"
    feedback: bool = True
    minutes: float = 60.0  # the whole session, baseline included
    baseline_minutes: float = 10.0
    seed: int = 0
    fps: float = 10.0
    n_cells: int = 100  # the population the mouse explores: it does not know which of them the decoder reads
    ensemble_cells: int = 4  # cells per ensemble: up = 0..k-1, down = k..2k-1
    learning_rate: float | None = None  # None: the rule's default in MouseConfig
    mouse: MouseConfig = field(default_factory=MouseConfig)

    def check(self) -> None:
        if self.rule not in LEARNING_RULES:
            raise ValueError(f"`rule`: must be one of {', '.join(LEARNING_RULES)} (got {self.rule!r})")
        if self.rewards not in REWARD_MODES:
            raise ValueError(f"`rewards`: must be one of {', '.join(REWARD_MODES)} (got {self.rewards!r})")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"`fps`: must be > 0 (got {self.fps})")
        if not self.baseline_minutes > 0:
            raise ValueError(f"`baseline_minutes`: must be > 0 (got {self.baseline_minutes})")
        if not self.minutes > self.baseline_minutes + 2.0:
            raise ValueError(f"`minutes`: the session ({self.minutes} min) must outlast the baseline "
                             f"({self.baseline_minutes} min) by at least 2 min of trials")
        if self.ensemble_cells < 1:
            raise ValueError(f"`ensemble_cells`: must be >= 1 (got {self.ensemble_cells})")
        if self.n_cells < 2 * self.ensemble_cells:
            raise ValueError(f"`n_cells`: needs at least {2 * self.ensemble_cells} cells for two ensembles of "
                             f"{self.ensemble_cells}")
        if self.learning_rate is not None and not self.learning_rate >= 0:
            raise ValueError(f"`learning_rate`: must be >= 0 (got {self.learning_rate})")


def _mouse_config(spec: LearnSpec) -> MouseConfig:
    cfg = msgspec.structs.replace(spec.mouse, learning_rule=spec.rule, use_feedback=spec.feedback)
    if spec.learning_rate is not None:
        key = "learning_rate_vectorized" if spec.rule == "vectorized" else "learning_rate_scalar"
        cfg = msgspec.structs.replace(cfg, **{key: spec.learning_rate})
    return cfg


def session_configs(spec: LearnSpec) -> tuple[SimConfig, DecoderConfig, TaskConfig]:
    """The simulator, decoder and task settings a learning session pins (up = 0..k-1, down = k..2k-1)."""
    sim_cfg = SimConfig(seed=spec.seed, n_cells=spec.n_cells, mouse=_mouse_config(spec))
    up, down = ensembles(spec)
    # calibrate_off_loop False: a simulation is not paced in real time, so the calibration is computed in the loop
    # on the baseline's last frame (no thread: the run stays a pure function of the seed)
    decoder_cfg = DecoderConfig(decoder="two_population", up=up, down=down, neuropil_coef=0.7,
                                f0_percentile=10.0, f0_window_s=60.0, smoothing_frames=3, calibrate_off_loop=False,
                                calibration=CalibrationConfig(method="hit_rate", target_hit_rate=0.5, seed=0))
    task_cfg = TaskConfig(baseline_s=spec.baseline_minutes * 60.0, auto_protocol=True, trial_s=30.0, iti_s=5.0,
                          hold_s=1.0, timeout_s=3.0)
    return sim_cfg, decoder_cfg, task_cfg


def ensembles(spec: LearnSpec) -> tuple[list[int], list[int]]:
    """The up and down ensembles a session labels: up = cells 0..k-1, down = k..2k-1 (k = ensemble_cells)."""
    k = spec.ensemble_cells
    return list(range(k)), list(range(k, 2 * k))


class MouseLoop:
    """Between the decoder and the simulated mouse, once per decided frame: what the mouse hears (the feedback
    process's planner), the trial outcomes, and the rewards it gets (contingent: the decoder's; yoked: random
    at the calibrated chance rate). Shared by ``rig sim learn`` and ``rig sim session``."""

    def __init__(self, spec: LearnSpec, mouse: SimMouse, task_cfg: TaskConfig, fps: float) -> None:
        self.spec = spec
        self.mouse = mouse
        self.planner = FeedbackPlanner(FeedbackConfig())
        self._yoke_rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(17,)))
        self._trial_frames = round(task_cfg.trial_s * fps)
        self._frame_ns = 1e9 / fps
        self.outcomes: list[int] = []
        self.chance = math.nan
        self._yoked_at = -1
        self.rewards_delivered = 0

    def after_decision(self, frame: int, res: StepResult) -> bool:
        """Feed the decision back to the mouse; True when the mouse was rewarded on this frame."""
        spec = self.spec
        stim = self.planner.on_decision(frame, int(frame * self._frame_ns), int(res.mode), int(res.trial_state),
                                        res.cursor_norm, res.angle_bin)
        for event in res.events:
            kind = event.kind
            if kind in ("hit", "miss"):
                self.outcomes.append(1 if kind == "hit" else 0)
                self.planner.on_trial(kind, frame)
            elif kind == "trial_start" and spec.rewards == "yoked" and self._yoke_rng.random() < self.chance:
                self._yoked_at = frame + int(self._yoke_rng.integers(0, self._trial_frames))
            elif kind == "calibrated":
                self.chance = float(event.detail["calibration"]["predicted_hit_rate"])
            elif kind == "calibration_failed":
                raise LearningError(f"calibration failed on the simulated baseline (seed {spec.seed}): "
                                    f"{event.detail.get('error')}")
        if spec.feedback:
            self.mouse.on_feedback(stim.perceived)
        rewarded = res.reward_request if spec.rewards == "contingent" else frame == self._yoked_at
        if rewarded:
            self.mouse.on_reward()
            self.rewards_delivered += 1
        return bool(rewarded)


def run_learning(spec: LearnSpec) -> dict:
    """Run one session; return the hit rates per quarter of the BCI trials, chance and what the mouse learned."""
    spec.check()
    fps = spec.fps
    sim_cfg, decoder_cfg, task_cfg = session_configs(spec)
    up, down = ensembles(spec)
    sim = TraceSim(sim_cfg, fps, up, down)
    engine = DecoderEngine(decoder_cfg, task_cfg, spec.n_cells, fps)
    mouse = sim.mouse
    loop = MouseLoop(spec, mouse, task_cfg, fps)

    engine.start_baseline()
    for frame in range(round(spec.minutes * 60.0 * fps)):
        F, Fneu = sim.step()
        res = engine.step(frame, F, Fneu)
        loop.after_decision(frame, res)
        if res.mode == Mode.STOPPED:
            break
    outcomes, chance, rewards_delivered = loop.outcomes, loop.chance, loop.rewards_delivered
    if len(outcomes) < 8:
        raise LearningError(f"only {len(outcomes)} trials ran in {spec.minutes} min: too short to compare quarters")
    hits = np.array(outcomes, float)
    q = len(hits) // 4
    quarters = [float(hits[i * q : (i + 1) * q].mean()) for i in range(4)]
    state = mouse.state()
    return {
        "rule": spec.rule,
        "rewards": spec.rewards,
        "feedback": "on" if spec.feedback else "off",
        "minutes": spec.minutes,
        "baseline_minutes": spec.baseline_minutes,
        "seed": spec.seed,
        "fps": fps,
        "learning_rate": (mouse.cfg.learning_rate_vectorized if spec.rule == "vectorized"
                          else mouse.cfg.learning_rate_scalar),
        "chance": chance,
        "trials": len(outcomes),
        "hit_rate": float(hits.mean()),
        "hit_rate_first_quarter": quarters[0],
        "hit_rate_last_quarter": quarters[3],
        "hit_rate_quarters": quarters,
        "gain": quarters[3] - quarters[0],
        "rewards_delivered": rewards_delivered,
        "drive_up_hz": state["drive_up_hz"],
        "drive_down_hz": state["drive_down_hz"],
        "tone_value": state["tone_value"],
    }

