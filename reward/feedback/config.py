"""The [feedback] section of a rig config. Owned by the reward package (its feedback subpackage).

Like ``reward.port = "emulator"``, each output names its device or its simulated twin: ``audio = "sim"``
writes what would be played to ``feedback/audio.wav``; ``display = "sim"`` renders the grating offscreen and
logs every flip. A real sound card or monitor is used only when named, so the sim rig needs neither.
"""

from __future__ import annotations

import math

import msgspec

SIM = "sim"
OFF = "off"
ORIENTATION_MODES = ("steps", "continuous")
#: Sample rates a sound card is expected to run at; 96 and 192 kHz reach the top of the mouse's range.
SAMPLE_RATES = (44100, 48000, 88200, 96000, 176400, 192000)
MAX_BLOCK_MS = 5.0
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


class FeedbackConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What the animal hears and sees, and on which devices."""

    enabled: bool = False
    """Start the feedback process (``rig run ... --set feedback.enabled=true``)."""
    critical: bool = False
    """A dead feedback process pauses the trials (the supervisor sends ``pause`` to the decoder) instead of
    letting them run blind; false: a warning and the session goes on without feedback."""
    during_baseline: bool = False
    """Present feedback while the baseline is recorded (off: silence and a grey screen, the usual protocol)."""

    # ---------------------------------------------------------------- audio
    audio: str = SIM
    """"sim" (WAV twin), "off", "default" (the system's default output) or a sounddevice name or index."""
    sample_rate: int = 96000
    block_ms: float = 2.0
    """Audio block length: a new pitch is heard at most this long after it arrives (at most 5 ms)."""
    tone_min_hz: float = 2000.0
    """Pitch at the bottom of the feedback range (cursor_norm 0); log-spaced up to ``tone_max_hz``."""
    tone_max_hz: float = 18000.0
    tone_volume: float = 0.3
    """Amplitude of the tone, 0..1 of full scale."""
    hit_cue_hz: float = 6000.0
    hit_cue_ms: float = 200.0
    hit_volume: float = 0.5
    miss_cue_ms: float = 500.0
    """The miss cue is a white-noise burst."""
    miss_volume: float = 0.3
    ramp_ms: float = 5.0
    """Raised-cosine on/off ramp of the tone and the cues (no click when they start or stop)."""
    noise_seed: int = 0

    # ---------------------------------------------------------------- visual
    display: str = SIM
    """"sim" (offscreen render, every flip logged), "off" or "screen" (full screen on ``monitor``)."""
    monitor: int = 0
    """Index of the monitor (Qt's screen list) the grating fills when ``display = "screen"``."""
    orientation: str = "steps"
    """"steps": CLOOSE-like, the decoder's angle_bin; "continuous": follows cursor_norm."""
    start_deg: float = 0.0
    """Grating orientation at the bottom of the range (bin 0)."""
    step_deg: float = 15.0
    bins: int = 6
    """Steps from start_deg to the target orientation start_deg + (bins - 1) * step_deg."""
    hold_target_s: float = 1.0
    """After a hit the target orientation stays on screen this long."""
    iti_grey: bool = True
    """Grey screen (and silence) in the inter-trial interval and the timeout."""
    spatial_period_px: float = 40.0
    """Grating period on screen (the offscreen render scales it to its width)."""
    drift_hz: float = 1.0
    """Temporal frequency of the drifting grating (0: static)."""
    contrast: float = 1.0
    photodiode_px: int = 60
    photodiode_corner: str = "bottom_right"
    sim_width_px: int = 64
    sim_height_px: int = 36

    def __post_init__(self) -> None:
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"`sample_rate`: must be one of {', '.join(map(str, SAMPLE_RATES))}")
        if not (math.isfinite(self.block_ms) and 0.5 <= self.block_ms <= MAX_BLOCK_MS):
            raise ValueError(f"`block_ms`: must be within 0.5..{MAX_BLOCK_MS:g} ms")
        for name in ("tone_min_hz", "tone_max_hz", "hit_cue_hz"):
            _positive_finite(name, getattr(self, name))
        if self.tone_max_hz <= self.tone_min_hz:
            raise ValueError("`tone_max_hz`: must be > tone_min_hz")
        nyquist = self.sample_rate / 2
        for name in ("tone_max_hz", "hit_cue_hz"):
            if getattr(self, name) >= nyquist:
                raise ValueError(f"`{name}`: must be below the Nyquist frequency {nyquist:g} Hz of sample_rate "
                                 f"{self.sample_rate} (raise sample_rate to 96000 or 192000)")
        for name in ("tone_volume", "hit_volume", "miss_volume", "contrast"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"`{name}`: must be within 0..1")
        if self.tone_volume + max(self.hit_volume, self.miss_volume) > 1.0:
            raise ValueError("`tone_volume`: tone_volume plus the louder cue must be <= 1 (the sum would clip)")
        for name in ("hit_cue_ms", "miss_cue_ms", "ramp_ms", "spatial_period_px"):
            _positive_finite(name, getattr(self, name))
        for name in ("hold_target_s", "drift_hz"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}`: must be a finite number >= 0")
        if not self.audio.strip():
            raise ValueError('`audio`: must be "sim", "off", "default" or a sound device name or index')
        if self.display not in (SIM, OFF, "screen"):
            raise ValueError('`display`: must be "sim", "off" or "screen"')
        if self.monitor < 0:
            raise ValueError("`monitor`: must be >= 0")
        if self.orientation not in ORIENTATION_MODES:
            raise ValueError(f"`orientation`: must be one of {', '.join(ORIENTATION_MODES)}")
        if self.bins < 2:
            raise ValueError("`bins`: must be >= 2")
        for name in ("start_deg", "step_deg"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"`{name}`: must be a finite number")
        if self.photodiode_corner not in CORNERS:
            raise ValueError(f"`photodiode_corner`: must be one of {', '.join(CORNERS)}")
        if self.photodiode_px < 1:
            raise ValueError("`photodiode_px`: must be >= 1")
        if not (8 <= self.sim_width_px <= 1024 and 8 <= self.sim_height_px <= 1024):
            raise ValueError("`sim_width_px`: the offscreen render must be 8..1024 px each way")

    @property
    def block_samples(self) -> int:
        return max(1, int(self.sample_rate * self.block_ms / 1000.0))

    @property
    def target_deg(self) -> float:
        """The orientation the animal is trained to reach (the top of the range)."""
        return self.start_deg + (self.bins - 1) * self.step_deg

    @property
    def real_audio(self) -> bool:
        return self.audio not in (SIM, OFF)


def _positive_finite(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}`: must be a finite number > 0")
