"""A simulated mouse: spiking neurons with correlated activity that learns the BCI task from what it perceives.

Activity model (per frame, all cells at once)::

    rate_i = base_i * exp(latents . loading_i + xi_i - c) + (drive_i + zeta_i) * bout(t)   in [0, max]
    spikes_i ~ Poisson(rate_i * dt)

``base_i`` is log-normal (L2/3 spontaneous rates are well below 1 Hz to a few Hz), the shared slow
latents give pairwise correlations, ``xi_i`` is private exploration noise (an OU process), and
``bout(t)`` is 1 during the mouse's "attempts" (short bouts at ``bout_rate_hz``); each attempt also
tries a random variation ``zeta_i`` of the command (motor exploration, fresh per attempt). Learning
changes only ``drive_i``: how strongly each cell is recruited during an attempt. A naive mouse has
drive 0, so its attempts move the cursor only by chance and it is rewarded at the calibrated chance rate.

What the mouse knows: its own cells' activity (``a_i`` and the exploration ``a_i - a_bar_i`` it made), the
rewards it receives (``on_reward``) and the feedback it is presented (``on_feedback``: the cursor as it can
be read off the tone or grating, NaN while nothing is presented). It is never told which cells the decoder
reads: :meth:`SimMouse.set_ensembles` only labels cells for reports and ground truth (``role``), and no
learning rule reads ``role``.

Signals every rule shares (docs/SIMULATOR.md):

* eligibility ``e_i``: a low-pass (``eligibility_tau_s``) of ``(a_i - a_bar_i)`` during attempts;
* reward prediction error ``dR = R - R_bar`` (``R_bar`` a running mean of the reward rate);
* tone deviation ``dp = p - p_bar`` of the perceived feedback from its running mean (``feedback_tau_s``);
* tone value ``M``: how strongly a raised tone precedes reward, the running covariance of ``dR`` with the
  recent tone (``value_tau_s``), counted only beyond ``value_z`` standard errors and expressed per unit of
  reward rate. With yoked (non-contingent) rewards it stays at zero; with contingent ones it becomes
  positive after a few rewards.

Learning rules (``MouseConfig.learning_rule``):

* ``vectorized`` - cell-specific instructive signals (Feulner & Clopath 2021; Francioni 2026). The mouse
  learns a forward model ``w_i``: the running covariance of each cell's eligibility with the tone deviation
  ``dp`` (how cell i's own exploration moves what it hears). Each cell then gets its own error
  ``M * w_i / max|w|``: during attempts ``d drive_i = eta_v * dt * M * w_hat_i * room_i`` (soft-bounded at
  ``drive_max_hz``). Without feedback nothing dense is perceived, and the only cell-specific signal left is
  the coincidence of each cell's own eligibility with the reward: ``d drive_i = eta_v * dR * e_i``.
* ``scalar`` - one global reinforcement signal, reward-modulated Hebbian with exploration noise (Legenstein
  et al. 2010): ``d drive_i = eta_s * r * e_i`` with ``r = dR`` plus, with feedback, the valued tone as a
  pseudo-reward ``feedback_gain * dt * M * dp``. It must find by correlation which cells matter.
* ``none`` - drive stays 0; the hit rate stays at chance.

Homeostasis (every rule): learned drive decays toward 0 (``forgetting_tau_s``) and the summed |drive| over all
cells is capped at ``drive_budget_hz`` (scaled down when exceeded), so drive given to cells that do not move
the cursor costs drive the ensembles could have had: pushing every cell at random no longer pays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from acquisition.sim.config import MouseConfig

_BLOCK = 256  # frames of random numbers drawn at once (keeps per-frame Python overhead low)
_TONE_TRACE_TAU_S = 0.5  # the "recent tone" the value compares with a reward


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

        dt = self.dt
        self._a_lat = math.exp(-dt / cfg.latent_tau_s)
        self._a_xi = math.exp(-dt / cfg.exploration_tau_s)
        self._a_elig = math.exp(-dt / cfg.eligibility_tau_s)
        self._a_reward = math.exp(-dt / cfg.reward_mean_tau_s)
        self._a_fb = math.exp(-dt / cfg.feedback_tau_s)
        self._a_tone = math.exp(-dt / _TONE_TRACE_TAU_S)
        self._a_model = math.exp(-dt / cfg.model_tau_s)
        self._model_se_factor = math.sqrt((1.0 - self._a_model) / (1.0 + self._a_model))
        self._a_value = math.exp(-dt / cfg.value_tau_s)
        # standard error of a running mean with coefficient a over independent terms: sd * sqrt((1-a)/(1+a))
        self._value_se_factor = math.sqrt((1.0 - self._a_value) / (1.0 + self._a_value))
        self._forget = math.exp(-dt / cfg.forgetting_tau_s) if cfg.forgetting_tau_s > 0 else 1.0
        self._bout_p = 1.0 - math.exp(-cfg.bout_rate_hz * dt)
        self._bout_frames = max(1, round(cfg.bout_duration_s * frame_rate_hz))
        self._lick_delay = round(cfg.lick_latency_s * frame_rate_hz)
        self._lick_frames = max(1, round(cfg.lick_bout_s * frame_rate_hz))
        self._lick_spont_p = 1.0 - math.exp(-cfg.spontaneous_lick_rate_hz * dt)

        self.latents = self._rng.standard_normal(max(k, 1)) if k > 0 else np.zeros(1)
        self.exploration = cfg.exploration_sd * self._rng.standard_normal(n_cells)
        self.drive_hz = np.zeros(n_cells)
        self.rates_hz = self.base_rate_hz.copy()
        self.expected_rate_hz = self.base_rate_hz.copy()  # a-bar: the rate without exploration
        self.attempt_variation_hz = np.zeros(n_cells)  # zeta of the current attempt
        self.eligibility = np.zeros(n_cells)
        self.forward_model = np.zeros(n_cells)  # w_i: cov(eligibility_i, tone deviation)
        self._model_sq = np.zeros(n_cells)  # its running second moment (for the standard error)
        self.credit = np.zeros(n_cells)  # w_hat_i: the reliable part of w_i, max |w_hat| = 1
        # per-cell instructive signal of the last step, as the rule computed it (None until track_instructive)
        self.instructive: np.ndarray | None = None
        self.spikes = np.zeros(n_cells, np.int64)
        self.role = np.zeros(n_cells)  # labels for reports only: never read by a learning rule
        self.bout = 0.0
        self._bout_left = 0
        self.licking = 0.0  # 1 while the mouse licks (after a reward, or spontaneously)
        self.lick_phase = 0.0  # cycles of the lick rhythm since the bout started
        self._lick_left = 0
        self._lick_wait = -1  # frames until a reward-triggered lick bout starts (-1: none pending)
        self.reward_mean = 0.0  # R_bar, rewards per frame
        self.rewards_received = 0
        self.frames = 0
        self._pending_rewards = 0
        self._feedback = math.nan  # the tone perceived this frame (NaN: nothing presented)
        self.feedback_mean = math.nan  # p_bar
        self._tone_trace = math.nan  # the recent tone (a short low-pass of p)
        self._value = 0.0  # running cov(dR, recent tone deviation), Hz
        self._value_sq = 0.0
        self.value = 0.0  # M: the significant part of it per unit of reward rate
        self._tmp = np.zeros(n_cells)
        self._block_i = _BLOCK
        self._z_lat = np.zeros((_BLOCK, max(k, 1)))
        self._z_xi = np.zeros((_BLOCK, n_cells))
        self._z_attempt = np.zeros((_BLOCK, n_cells))
        self._u_bout = np.zeros(_BLOCK)
        self._u_lick = np.zeros(_BLOCK)
        self.set_ensembles(up, down)

    # ---------------------------------------------------------------- events from the rig

    def set_ensembles(self, up: Sequence[int], down: Sequence[int]) -> None:
        """Label the cells the decoder reads (``role``: +1 up, -1 down) for reports and ground truth.

        The mouse does not learn from this: it has to find out which cells move what it perceives."""
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

    def track_instructive(self) -> np.ndarray:
        """From now on keep ``instructive``: each cell's instructive (error) signal per step, per second.

        It is the signal the learning rule itself applies, so that ``d drive_i = eta * instructive_i * dt``
        (vectorized with feedback: ``M * w_hat_i`` during attempts, times the soft bound; without feedback
        ``dR * e_i / dt``; scalar: the shared reinforcement ``r / dt`` for every cell, times each cell's
        eligibility in the update; none: 0). Off by default: the mouse pays nothing for it unless asked."""
        if self.instructive is None:
            self.instructive = np.zeros(self.n_cells)
        return self.instructive

    def on_reward(self) -> None:
        """A reward was delivered; it is credited at the next ``step`` and starts a lick bout."""
        self._pending_rewards += 1
        if self._lick_wait < 0 and self._lick_left == 0:
            self._lick_wait = self._lick_delay

    def on_feedback(self, perceived: float) -> None:
        """What the mouse reads off the tone / grating this frame (normalised cursor; NaN: nothing shown)."""
        self._feedback = float(perceived)

    # ---------------------------------------------------------------- per frame

    def _refill(self) -> None:
        rng = self._rng
        self._z_lat[:] = rng.standard_normal(self._z_lat.shape)
        self._z_xi[:] = rng.standard_normal(self._z_xi.shape)
        self._z_attempt[:] = rng.standard_normal(self._z_attempt.shape)
        self._u_bout[:] = rng.random(_BLOCK)
        self._u_lick[:] = rng.random(_BLOCK)
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
        self._step_licks(self._u_lick[i])

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
        # eligibility: (a - a_bar) * x, x = the attempt (presynaptic) signal. The deviation is taken before
        # the rates are clipped at 0: clipping would give every weakly driven cell a positive mean deviation
        self.eligibility *= self._a_elig
        if self.bout:
            np.subtract(rates, expected, out=self._tmp)
            self._tmp *= 1.0 - self._a_elig
            self.eligibility += self._tmp
        np.clip(expected, 0.0, cfg.max_rate_hz, out=expected)
        np.clip(rates, 0.0, cfg.max_rate_hz, out=rates)

        np.multiply(self.rates_hz, self.dt, out=self._tmp)
        self.spikes[:] = self._rng.poisson(self._tmp)
        self.frames += 1
        return self.spikes

    def _step_licks(self, u: float) -> None:
        """Lick bouts: ``lick_latency_s`` after a reward (and spontaneously), ``lick_bout_s`` long."""
        if self._lick_wait >= 0:
            if self._lick_wait == 0:
                self._lick_left = self._lick_frames
                self.lick_phase = 0.0
            self._lick_wait -= 1
        elif self._lick_left == 0 and u < self._lick_spont_p:
            self._lick_left = self._lick_frames
            self.lick_phase = 0.0
        if self._lick_left > 0:
            self._lick_left -= 1
            self.licking = 1.0
            self.lick_phase += self.cfg.lick_rate_hz * self.dt
        else:
            self.licking = 0.0

    def _perceive(self, reward_error_hz: float) -> float:
        """Update the tone statistics and the tone's value; return the tone deviation dp (0 if none)."""
        p = self._feedback
        self._feedback = math.nan  # one value per frame: a frame without feedback perceives nothing
        if not (self.cfg.use_feedback and math.isfinite(p)):
            return 0.0
        if not math.isfinite(self.feedback_mean):
            self.feedback_mean = p
            self._tone_trace = p
        deviation = p - self.feedback_mean
        self._tone_trace = self._a_tone * self._tone_trace + (1.0 - self._a_tone) * p
        # value: does reward follow a raised tone? (covariance of dR with the recent tone deviation)
        u = reward_error_hz * (self._tone_trace - self.feedback_mean)
        a = self._a_value
        self._value = a * self._value + (1.0 - a) * u
        self._value_sq = a * self._value_sq + (1.0 - a) * u * u
        se = math.sqrt(max(self._value_sq - self._value**2, 0.0)) * self._value_se_factor
        excess = abs(self._value) - self.cfg.value_z * se
        rate = self.reward_mean * self.frame_rate_hz
        self.value = math.copysign(excess, self._value) / rate if excess > 0 and rate > 0 else 0.0
        self.feedback_mean = self._a_fb * self.feedback_mean + (1.0 - self._a_fb) * p
        return deviation

    def _update_forward_model(self, deviation: float) -> None:
        """How each cell's own exploration moves the tone: running cov(e_i, dp), and the part of it that
        stands ``value_z`` standard errors out of the noise, scaled to max 1 (``credit``)."""
        a = self._a_model
        np.multiply(self.eligibility, deviation, out=self._tmp)
        self.forward_model *= a
        self.forward_model += (1.0 - a) * self._tmp
        self._tmp *= self._tmp
        self._model_sq *= a
        self._model_sq += (1.0 - a) * self._tmp
        np.square(self.forward_model, out=self._tmp)
        np.subtract(self._model_sq, self._tmp, out=self._tmp)
        np.maximum(self._tmp, 0.0, out=self._tmp)
        np.sqrt(self._tmp, out=self._tmp)
        self._tmp *= self.cfg.value_z * self._model_se_factor
        np.abs(self.forward_model, out=self.credit)
        self.credit -= self._tmp
        np.maximum(self.credit, 0.0, out=self.credit)
        scale = float(self.credit.max())
        if scale > 0.0:
            self.credit *= np.sign(self.forward_model) / scale

    def _learn(self) -> None:
        cfg = self.cfg
        rewards = self._pending_rewards
        self._pending_rewards = 0
        self.rewards_received += rewards
        surprise = rewards - self.reward_mean  # dR per frame
        deviation = self._perceive(surprise * self.frame_rate_hz)
        perceived = deviation != 0.0

        if self._forget != 1.0:
            self.drive_hz *= self._forget
        instructive = self.instructive
        if instructive is not None:
            instructive.fill(0.0)
        rule = cfg.learning_rule
        if rule == "vectorized":
            if cfg.use_feedback and perceived:
                self._update_forward_model(deviation)
            if cfg.use_feedback and self.feedback_mean == self.feedback_mean:
                if self.value != 0.0 and self.bout:
                    # each cell's own error: the tone's value along its estimated effect on the tone
                    room = 1.0 - np.sign(self.credit) * self.drive_hz / cfg.drive_max_hz
                    np.multiply(self.credit, room, out=self._tmp)
                    self._tmp *= cfg.learning_rate_vectorized * self.dt * self.value
                    self.drive_hz += self._tmp
                    if instructive is not None:
                        np.multiply(self.credit, self.value, out=instructive)
            elif surprise != 0.0:
                # no feedback: the only cell-specific signal is each cell's own eligibility at the reward
                self.drive_hz += cfg.learning_rate_vectorized * surprise * self.eligibility
                if instructive is not None:
                    np.multiply(self.eligibility, surprise * self.frame_rate_hz, out=instructive)
            np.clip(self.drive_hz, -cfg.drive_max_hz, cfg.drive_max_hz, out=self.drive_hz)
        elif rule == "scalar":
            reinforcement = surprise + cfg.feedback_gain * self.dt * self.value * deviation
            if instructive is not None:
                instructive.fill(reinforcement * self.frame_rate_hz)
            if reinforcement != 0.0:
                self.drive_hz += cfg.learning_rate_scalar * reinforcement * self.eligibility
                np.clip(self.drive_hz, -cfg.drive_max_hz, cfg.drive_max_hz, out=self.drive_hz)
        if cfg.drive_budget_hz > 0.0:
            total = float(np.abs(self.drive_hz).sum())
            if total > cfg.drive_budget_hz:
                self.drive_hz *= cfg.drive_budget_hz / total
        self.reward_mean = self._a_reward * self.reward_mean + (1.0 - self._a_reward) * rewards

    @property
    def lick_displacement(self) -> float:
        """How far a lick pushes the brain now, 0..1 of the peak (a raised cosine per lick cycle)."""
        if not self.licking:
            return 0.0
        return 0.5 * (1.0 - math.cos(2.0 * math.pi * self.lick_phase))

    # ---------------------------------------------------------------- reporting

    def state(self) -> dict[str, float]:
        """Small summary for logs and the console: how far learning has gone (by the labelled roles)."""
        up, down = self.role > 0, self.role < 0
        return {
            "rewards": float(self.rewards_received),
            "reward_rate_hz": self.reward_mean * self.frame_rate_hz,
            "drive_up_hz": float(self.drive_hz[up].mean()) if up.any() else 0.0,
            "drive_down_hz": float(self.drive_hz[down].mean()) if down.any() else 0.0,
            "tone_value": self.value,
            "bout": self.bout,
            "licking": self.licking,
        }
