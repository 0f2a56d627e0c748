"""A simulated mouse: spiking neurons with correlated activity that learns the BCI task from rewards.

Activity model (per frame, all cells at once)::

    rate_i = base_i * exp(latents . loading_i + xi_i - c) + (drive_i + zeta_i) * bout(t)   in [0, max]
    spikes_i ~ Poisson(rate_i * dt)

``base_i`` is log-normal (L2/3 spontaneous rates are well below 1 Hz to a few Hz), the shared slow
latents give pairwise correlations, ``xi_i`` is private exploration noise (an OU process), and
``bout(t)`` is 1 during the mouse's "attempts" (short bouts at ``bout_rate_hz``); each attempt also
tries a random variation ``zeta_i`` of the command (motor exploration, fresh per attempt). Learning
changes only ``drive_i``: how strongly each cell is recruited during an attempt. A naive mouse has
drive 0, so its attempts move the cursor only by chance and it is rewarded at the calibrated chance rate.

Learning rules (``MouseConfig.learning_rule``):

* ``vectorized`` - vectorized credit (Feulner & Clopath 2021; Francioni 2026): every reward gives each
  target cell an error whose sign is its role in the cursor (+ for "up" cells, - for "down" cells), so
  up cells are pushed up and down cells down: ``d drive_i = eta * role_i * (1 - role_i * drive_i / max)``.
* ``scalar`` - one global reward signal, reward-modulated Hebbian with exploration noise (Legenstein
  et al. 2010): ``d drive_i = eta * (R - R_bar) * e_i`` with the eligibility trace ``e_i`` a low-pass of
  ``(a_i - a_bar_i) * x``: the cell's deviation from its expected rate (its exploration) times the
  presynaptic attempt signal. It must discover by correlation which cells matter, so it learns more
  slowly and more variably.
* ``none`` - drive stays 0; the hit rate stays at chance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from acquisition.sim.config import MouseConfig

_BLOCK = 256  # frames of random numbers drawn at once (keeps per-frame Python overhead low)


class SimMouse:
    """The neurons of a mouse doing the BCI task. ``step()`` once per frame; events between steps."""

    def __init__(
        self,
        cfg: MouseConfig,
        n_cells: int,
        frame_rate_hz: float,
        seed: int | np.random.SeedSequence = 0,
        up: Sequence[int] = (),
        down: Sequence[int] = (),
    ) -> None:
        if n_cells < 1:
            raise ValueError(f"n_cells must be >= 1 (got {n_cells})")
        if frame_rate_hz <= 0:
            raise ValueError(f"frame_rate_hz must be > 0 (got {frame_rate_hz})")
        self.cfg = cfg
        self.n_cells = n_cells
        self.frame_rate_hz = float(frame_rate_hz)
        self.dt = 1.0 / frame_rate_hz
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        anatomy_seq, activity_seq = seq.spawn(2)
        anatomy = np.random.default_rng(anatomy_seq)
        self._rng = np.random.default_rng(activity_seq)

        self.base_rate_hz = cfg.rate_median_hz * np.exp(cfg.rate_log_sd * anatomy.standard_normal(n_cells))
        k = cfg.n_latents
        self._loading = np.zeros((n_cells, max(k, 1)))
        if k > 0:
            # first latent: a global "arousal" every cell follows positively; the others are mixed
            self._loading[:, 0] = cfg.latent_sd * 0.75 * anatomy.uniform(0.4, 1.6, n_cells)
            if k > 1:
                scale = cfg.latent_sd * 0.6 / math.sqrt(k - 1)
                self._loading[:, 1:] = scale * anatomy.standard_normal((n_cells, k - 1))
        # keep mean rates at base: E[exp(N(0, s^2))] = exp(s^2 / 2)
        self._latent_correction = 0.5 * np.sum(self._loading**2, axis=1)
        self._exploration_correction = 0.5 * cfg.exploration_sd**2
        self._n_latents = k

        self._a_lat = math.exp(-self.dt / cfg.latent_tau_s)
        self._a_xi = math.exp(-self.dt / cfg.exploration_tau_s)
        self._a_elig = math.exp(-self.dt / cfg.eligibility_tau_s)
        self._a_reward = math.exp(-self.dt / cfg.reward_mean_tau_s)
        self._a_feedback = math.exp(-self.dt / 10.0)
        self._forget = math.exp(-self.dt / cfg.forgetting_tau_s) if cfg.forgetting_tau_s > 0 else 1.0
        self._bout_p = 1.0 - math.exp(-cfg.bout_rate_hz * self.dt)
        self._bout_frames = max(1, round(cfg.bout_duration_s * frame_rate_hz))

        self.latents = self._rng.standard_normal(max(k, 1)) if k > 0 else np.zeros(1)
        self.exploration = cfg.exploration_sd * self._rng.standard_normal(n_cells)
        self.drive_hz = np.zeros(n_cells)
        self.rates_hz = self.base_rate_hz.copy()
        self.expected_rate_hz = self.base_rate_hz.copy()  # a-bar: the rate without exploration
        self.attempt_variation_hz = np.zeros(n_cells)  # zeta of the current attempt
        self.eligibility = np.zeros(n_cells)
        self.spikes = np.zeros(n_cells, np.int64)
        self.role = np.zeros(n_cells)
        self.bout = 0.0
        self._bout_left = 0
        self.reward_mean = 0.0  # R_bar, rewards per frame
        self.rewards_received = 0
        self.frames = 0
        self._pending_rewards = 0
        self._feedback: float | None = None
        self._feedback_mean: float | None = None
        self._tmp = np.zeros(n_cells)
        self._block_i = _BLOCK
        self._z_lat = np.zeros((_BLOCK, max(k, 1)))
        self._z_xi = np.zeros((_BLOCK, n_cells))
        self._z_attempt = np.zeros((_BLOCK, n_cells))
        self._u_bout = np.zeros(_BLOCK)
        self.set_ensembles(up, down)

    # ---------------------------------------------------------------- events from the rig

    def set_ensembles(self, up: Sequence[int], down: Sequence[int]) -> None:
        """Which cells the decoder reads: up cells push the cursor up, down cells push it down."""
        up_l, down_l = [int(i) for i in up], [int(i) for i in down]
        for name, idx in (("up", up_l), ("down", down_l)):
            bad = [i for i in idx if not 0 <= i < self.n_cells]
            if bad:
                raise ValueError(f"{name} ensemble has cell indices {bad} outside 0..{self.n_cells - 1}")
        both = set(up_l) & set(down_l)
        if both:
            raise ValueError(f"cells {sorted(both)} are in both the up and the down ensemble")
        self.role[:] = 0.0
        self.role[up_l] = 1.0
        self.role[down_l] = -1.0

    def on_reward(self) -> None:
        """A reward was delivered; it is credited at the next ``step``."""
        self._pending_rewards += 1

    def on_feedback(self, cursor_norm: float) -> None:
        """The feedback the mouse perceives (the decoder's normalised cursor); used if ``use_feedback``."""
        if math.isfinite(cursor_norm):
            self._feedback = float(cursor_norm)

    # ---------------------------------------------------------------- per frame

    def _refill(self) -> None:
        rng = self._rng
        self._z_lat[:] = rng.standard_normal(self._z_lat.shape)
        self._z_xi[:] = rng.standard_normal(self._z_xi.shape)
        self._z_attempt[:] = rng.standard_normal(self._z_attempt.shape)
        self._u_bout[:] = rng.random(_BLOCK)
        self._block_i = 0

    def step(self) -> np.ndarray:
        """Advance one frame: learn from events since the last step, then fire. Returns spike counts."""
        cfg = self.cfg
        self._learn()
        if self._block_i >= _BLOCK:
            self._refill()
        i = self._block_i
        self._block_i += 1

        if self._n_latents > 0:
            self.latents *= self._a_lat
            self.latents += math.sqrt(1.0 - self._a_lat**2) * self._z_lat[i]
        self.exploration *= self._a_xi
        self.exploration += cfg.exploration_sd * math.sqrt(1.0 - self._a_xi**2) * self._z_xi[i]

        if self._bout_left > 0:
            self._bout_left -= 1
        elif self._u_bout[i] < self._bout_p:
            self._bout_left = self._bout_frames
            np.multiply(self._z_attempt[i], cfg.attempt_exploration_hz, out=self.attempt_variation_hz)
        self.bout = 1.0 if self._bout_left > 0 else 0.0

        # expected rate a-bar (shared latents + learned drive), then the actual rate with exploration
        expected = self.expected_rate_hz
        np.dot(self._loading, self.latents, out=expected)
        expected -= self._latent_correction
        np.exp(expected, out=expected)
        expected *= self.base_rate_hz
        rates = self.rates_hz
        np.subtract(self.exploration, self._exploration_correction, out=self._tmp)
        np.exp(self._tmp, out=rates)
        rates *= expected
        if self.bout:
            expected += self.drive_hz
            rates += self.drive_hz
            rates += self.attempt_variation_hz
        np.clip(expected, 0.0, cfg.max_rate_hz, out=expected)
        np.clip(rates, 0.0, cfg.max_rate_hz, out=rates)

        # Hebbian eligibility for the scalar rule: (a - a_bar) * x, x = the attempt (presynaptic) signal
        self.eligibility *= self._a_elig
        if self.bout:
            np.subtract(rates, expected, out=self._tmp)
            self._tmp *= 1.0 - self._a_elig
            self.eligibility += self._tmp

        np.multiply(self.rates_hz, self.dt, out=self._tmp)
        self.spikes[:] = self._rng.poisson(self._tmp)
        self.frames += 1
        return self.spikes

    def _learn(self) -> None:
        cfg = self.cfg
        rewards = self._pending_rewards
        self._pending_rewards = 0
        self.rewards_received += rewards
        pseudo = 0.0
        if cfg.use_feedback and self._feedback is not None:
            if self._feedback_mean is None:
                self._feedback_mean = self._feedback
            pseudo = cfg.feedback_gain * self.dt * (self._feedback - self._feedback_mean)
            self._feedback_mean = self._a_feedback * self._feedback_mean + (1 - self._a_feedback) * self._feedback
        reinforcement = rewards + pseudo

        if self._forget != 1.0:
            self.drive_hz *= self._forget
        rule = cfg.learning_rule
        if rule == "vectorized":
            strength = max(reinforcement, 0.0)
            if strength > 0:
                # each target cell moves along its own role, soft-bounded at drive_max
                room = 1.0 - self.role * self.drive_hz / cfg.drive_max_hz
                self.drive_hz += cfg.learning_rate_vectorized * strength * self.role * room
        elif rule == "scalar":
            surprise = reinforcement - self.reward_mean
            if surprise != 0.0:
                self.drive_hz += cfg.learning_rate_scalar * surprise * self.eligibility
                np.clip(self.drive_hz, -cfg.drive_max_hz, cfg.drive_max_hz, out=self.drive_hz)
        self.reward_mean = self._a_reward * self.reward_mean + (1.0 - self._a_reward) * rewards

    # ---------------------------------------------------------------- reporting

    def state(self) -> dict[str, float]:
        """Small summary for logs and the console: how far learning has gone."""
        up, down = self.role > 0, self.role < 0
        return {
            "rewards": float(self.rewards_received),
            "reward_rate_hz": self.reward_mean * self.frame_rate_hz,
            "drive_up_hz": float(self.drive_hz[up].mean()) if up.any() else 0.0,
            "drive_down_hz": float(self.drive_hz[down].mean()) if down.any() else 0.0,
            "bout": self.bout,
        }
