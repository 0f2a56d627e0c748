"""The [acquisition.sim] table: the simulated two-photon scope and the simulated mouse.

Numbers default to a typical awake-mouse GCaMP session (see docs and DOMAIN.md section 4): 512x512
at 30 Hz, 150 cells, a few photons per pixel per frame, 2-5 um of motion, slow bleaching.
"""

from __future__ import annotations

import msgspec

INDICATORS = ("6f", "6s", "7f", "8m")
LEARNING_RULES = ("vectorized", "scalar", "none")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"`{name}`: must be > 0 (got {value!r})")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"`{name}`: must be >= 0 (got {value!r})")


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}`: must be within [0, 1] (got {value!r})")


class MouseConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the simulated mouse's neurons fire and how it learns the task.

    Activity: each cell has a log-normal baseline rate, shared latent fluctuations (correlations) and
    private exploration noise. The mouse makes "attempt" bouts; learning changes how strongly each
    cell is driven during a bout (``drive`` in Hz, bounded by ``drive_max_hz``).
    """

    rate_median_hz: float = 0.6
    rate_log_sd: float = 0.6  # spread of log baseline rates across cells
    max_rate_hz: float = 40.0
    n_latents: int = 3  # shared slow fluctuations -> pairwise correlations
    latent_tau_s: float = 2.0
    latent_sd: float = 0.35  # per-cell loading scale, log-rate units
    exploration_sd: float = 0.45  # private log-rate noise (the "exploration" a scalar rule uses)
    exploration_tau_s: float = 0.4
    bout_rate_hz: float = 0.25  # attempts per second
    bout_duration_s: float = 1.5
    learning_rule: str = "vectorized"  # vectorized | scalar | none (docs/SIMULATOR.md)
    # vectorized with feedback: Hz of drive per second of attempt at tone value 1; without: as scalar
    learning_rate_vectorized: float = 0.3
    learning_rate_scalar: float = 0.3  # per (reinforcement - R_bar) x eligibility (Hz)
    drive_max_hz: float = 12.0
    eligibility_tau_s: float = 1.0
    attempt_exploration_hz: float = 1.5  # sd of each attempt's random variation of a cell's drive
    reward_mean_tau_s: float = 120.0  # running mean R-bar of the reward rate
    use_feedback: bool = True  # learn from the feedback it is presented (fbk.update: needs [feedback] enabled)
    feedback_gain: float = 0.2  # scalar rule: pseudo-reward per second per unit of valued tone deviation
    feedback_tau_s: float = 20.0  # running mean of the perceived tone (its deviation is what moves)
    model_tau_s: float = 120.0  # vectorized: memory of the forward model (cell exploration -> tone)
    value_tau_s: float = 300.0  # memory of the tone-reward association
    value_z: float = 2.0  # the association counts only beyond this many standard errors
    # homeostasis: learned drive decays toward 0 with this time constant (0 = never) ...
    forgetting_tau_s: float = 1200.0
    # ... and the summed |drive| over all cells is capped here (0 = no cap): recruiting cells costs
    drive_budget_hz: float = 60.0
    # licking (moves the brain: SimConfig.lick_motion_px)
    lick_latency_s: float = 0.15  # from a reward to the first lick
    lick_bout_s: float = 2.5  # a reward's lick bout
    lick_rate_hz: float = 7.0  # licks per second within a bout
    spontaneous_lick_rate_hz: float = 0.01  # bouts per second without a reward

    def __post_init__(self) -> None:
        for name in (
            "rate_median_hz",
            "max_rate_hz",
            "latent_tau_s",
            "exploration_tau_s",
            "bout_duration_s",
            "eligibility_tau_s",
            "reward_mean_tau_s",
            "drive_max_hz",
            "feedback_tau_s",
            "model_tau_s",
            "value_tau_s",
            "lick_bout_s",
            "lick_rate_hz",
        ):
            _positive(name, getattr(self, name))
        for name in (
            "rate_log_sd",
            "latent_sd",
            "exploration_sd",
            "bout_rate_hz",
            "attempt_exploration_hz",
            "learning_rate_vectorized",
            "learning_rate_scalar",
            "feedback_gain",
            "forgetting_tau_s",
            "drive_budget_hz",
            "value_z",
            "lick_latency_s",
            "spontaneous_lick_rate_hz",
        ):
            _non_negative(name, getattr(self, name))
        if self.n_latents < 0:
            raise ValueError(f"`n_latents`: must be >= 0 (got {self.n_latents})")
        if self.learning_rule not in LEARNING_RULES:
            raise ValueError(f"`learning_rule`: must be one of {LEARNING_RULES} (got {self.learning_rule!r})")


class DendriteConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Plane 1 of a two-plane sim (``n_planes = 2``): the apical dendrites of the plane-0 neurons.

    Dendritic calcium = back-propagating somatic spikes (attenuated) + dendrite-specific events whose rate
    follows the learning rule's own instructive signal (docs/SIMULATOR.md, "Dendrites"):
    ``rate_i = event_rate_hz * max(0, 1 + instructive_gain * tanh(s_i / scale))``, ``s_i`` the cell's signal
    low-passed over ``instructive_tau_s`` and ``scale`` its running RMS over all dendrites (``scale_tau_s``).
    """

    depth_um: float = 120.0  # plane 1 lies this far above plane 0 (the apical tuft, more superficial)
    fraction: float = 0.7  # of the cells outside the initial ensembles, those with a dendrite on plane 1
    offset_px: float = 6.0  # sd of a dendrite's x-y offset from its soma (the apical trunk's tilt)
    radius_px: float = 2.5  # cross-section radius
    radius_cv: float = 0.2
    brightness: float = 0.6  # baseline brightness relative to its soma's
    brightness_log_sd: float = 0.25
    neuropil_photons: float = 1.0  # plane 1's neuropil (per pixel per frame)
    bap_attenuation: float = 0.5  # a back-propagating spike brings this many spikes' worth of calcium
    decay_scale: float = 0.6  # dendritic calcium decays in this fraction of the indicator's somatic decay
    event_rate_hz: float = 0.1  # dendrite-specific (plateau) events per second at zero instructive signal
    event_amplitude: float = 3.0  # one event's calcium, in spike-equivalents (mean)
    event_amplitude_cv: float = 0.3  # its spread (log-normal)
    instructive_gain: float = 1.0  # modulation depth of the event rate by the instructive signal
    instructive_tau_s: float = 0.5  # low-pass of the signal before it sets the rate (0: none)
    scale_tau_s: float = 120.0  # memory of the signal's running RMS (its unit-free scale)

    def __post_init__(self) -> None:
        for name in ("radius_px", "brightness", "decay_scale", "event_amplitude", "scale_tau_s"):
            _positive(f"dendrites.{name}", getattr(self, name))
        for name in ("depth_um", "offset_px", "radius_cv", "brightness_log_sd", "neuropil_photons",
                     "bap_attenuation", "event_rate_hz", "event_amplitude_cv", "instructive_gain",
                     "instructive_tau_s"):
            _non_negative(f"dendrites.{name}", getattr(self, name))
        _fraction("dendrites.fraction", self.fraction)
        if self.radius_px > 10:
            raise ValueError(f"`dendrites.radius_px`: a dendrite cross-section of {self.radius_px} px is not a "
                             "dendrite (must be <= 10)")


class SimConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The simulated scope: field of view, cells, indicator, photon detection, motion, timing."""

    seed: int = 0
    # 1: somata only; 2: plane 0 = somata, plane 1 = their apical dendrites (``dendrites``; docs/SIMULATOR.md)
    n_planes: int = 1
    realtime: bool = True  # pace frames at the frame rate; False = as fast as possible
    max_lag_frames: int = 3  # a consumer further behind than this in real time loses frames
    height_px: int = 512
    width_px: int = 512
    n_cells: int = 150
    indicator: str = "6f"  # GCaMP6f, GCaMP6s, jGCaMP7f, jGCaMP8m
    # anatomy
    cell_radius_px: float = 6.0
    cell_radius_cv: float = 0.15
    nucleus_radius_fraction: float = 0.5
    nucleus_brightness: float = 0.35  # nucleus relative to cytoplasm (GCaMP is excluded from it)
    dendrite_fraction: float = 0.3  # cells with visible processes
    brightness_log_sd: float = 0.3  # expression level spread across cells
    n_vessels: int = 3
    # photons (per pixel per frame) and detection
    cell_photons: float = 3.0  # baseline cytoplasm brightness above neuropil
    neuropil_photons: float = 1.5
    neuropil_coupling: float = 0.5  # neuropil follows the local population's mean dF/F by this factor
    neuropil_sigma_px: float = 150.0  # ... the cells within about this distance (0: one global level)
    dark_photons: float = 0.05
    pmt_gain: float = 100.0  # mean ADC counts per photon
    pmt_gain_var: float = 2300.0  # per-photon variance of the PMT gain (counts^2)
    electronics_noise: float = 2.7  # Gaussian read noise, ADC counts
    adc_offset: float = 50.0
    noise_bank_frames: int = 4  # precomputed noise frames reused at random offsets and flips
    # motion (pixels)
    motion_max_px: float = 5.0  # hard bound on |dy| and |dx|
    motion_walk_sd_px: float = 0.6  # stationary sd of the fast jitter (an OU walk)
    motion_walk_tau_s: float = 0.5
    jump_rate_hz: float = 0.03
    jump_sd_px: float = 2.0
    jump_tau_s: float = 3.0  # a jump relaxes back over this time
    drift_px_per_min: float = 0.3
    lick_motion_px: float = 1.0  # peak brain displacement per lick (licks follow rewards: MouseConfig)
    # slow processes and scanning
    bleach_fraction: float = 0.15  # fraction of brightness lost as t -> infinity
    bleach_tau_s: float = 1800.0
    bidi_offset_px: float = 0.0  # odd lines shifted in x by this much (bidirectional scanning)
    timestamp_jitter_s: float = 0.0003
    history_max_frames: int = 108_000  # ground truth kept in memory (1 h at 30 Hz)
    # depth (acquisition.sim.depth): cells in 3-D seen through an axial point-spread function, z motion
    pixel_size_um: float = 1.0  # field-of-view pixel size (a 16x objective at ~500 um across 512 px)
    axial_fwhm_um: float = 5.0  # axial PSF FWHM (16x/0.8 NA, 920 nm: ~4-6 um)
    cell_depth_sd_um: float = 4.0  # spread of the cells' centres about the focal plane
    z_drift_um: float = 0.0  # peak-to-peak slow z drift over z_drift_period_s (a half cosine, centred on 0)
    z_drift_period_s: float = 600.0
    z_jump_rate_hz: float = 0.0  # occasional z jumps (licks, grooming) that relax back
    z_jump_sd_um: float = 2.0
    z_jump_tau_s: float = 2.0
    # day-to-day: where today's field lies relative to the tissue's (ROI i still == cell i)
    day: int = 0  # another number: the same tissue with new activity, noise and motion (another session)
    day_dy_px: float = 0.0
    day_dx_px: float = 0.0
    day_rotation_deg: float = 0.0
    mouse: MouseConfig = msgspec.field(default_factory=MouseConfig)
    dendrites: DendriteConfig = msgspec.field(default_factory=DendriteConfig)

    def __post_init__(self) -> None:
        if self.n_planes not in (1, 2):
            raise ValueError(f"`n_planes`: the simulator images 1 plane (somata) or 2 (somata and their apical "
                             f"dendrites) (got {self.n_planes})")
        for name in ("height_px", "width_px", "n_cells", "noise_bank_frames", "history_max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}`: must be >= 1 (got {getattr(self, name)})")
        if self.height_px < 32 or self.width_px < 32:
            raise ValueError(
                f"`height_px`: field of view must be at least 32x32 (got {self.height_px}x{self.width_px})"
            )
        if self.indicator not in INDICATORS:
            raise ValueError(f"`indicator`: must be one of {INDICATORS} (got {self.indicator!r})")
        for name in (
            "cell_radius_px",
            "pmt_gain",
            "motion_max_px",
            "motion_walk_tau_s",
            "jump_tau_s",
            "bleach_tau_s",
        ):
            _positive(name, getattr(self, name))
        for name in (
            "cell_radius_cv",
            "brightness_log_sd",
            "cell_photons",
            "neuropil_photons",
            "neuropil_coupling",
            "dark_photons",
            "pmt_gain_var",
            "electronics_noise",
            "adc_offset",
            "motion_walk_sd_px",
            "jump_rate_hz",
            "jump_sd_px",
            "drift_px_per_min",
            "neuropil_sigma_px",
            "lick_motion_px",
            "timestamp_jitter_s",
        ):
            _non_negative(name, getattr(self, name))
        for name in ("pixel_size_um", "axial_fwhm_um", "z_drift_period_s", "z_jump_tau_s"):
            _positive(name, getattr(self, name))
        for name in ("cell_depth_sd_um", "z_drift_um", "z_jump_rate_hz", "z_jump_sd_um"):
            _non_negative(name, getattr(self, name))
        if self.day < 0:
            raise ValueError(f"`day`: must be >= 0 (got {self.day})")
        if abs(self.day_rotation_deg) > 20:
            raise ValueError(f"`day_rotation_deg`: must be within [-20, 20] degrees (got {self.day_rotation_deg})")
        for name in ("nucleus_radius_fraction", "nucleus_brightness", "dendrite_fraction", "bleach_fraction"):
            _fraction(name, getattr(self, name))
        if self.max_lag_frames < 0:
            raise ValueError(f"`max_lag_frames`: must be >= 0 (got {self.max_lag_frames})")
        if self.n_vessels < 0:
            raise ValueError(f"`n_vessels`: must be >= 0 (got {self.n_vessels})")
        if abs(self.bidi_offset_px) > 8:
            raise ValueError(f"`bidi_offset_px`: must be within [-8, 8] pixels (got {self.bidi_offset_px})")
        min_side = min(self.height_px, self.width_px)
        if 4 * (self.cell_radius_px * 1.6 + self.motion_max_px) >= min_side:
            raise ValueError(
                f"`cell_radius_px`: cells of radius {self.cell_radius_px} with motion up to "
                f"{self.motion_max_px} px do not fit a {self.height_px}x{self.width_px} field of view"
            )
