"""The [gui] section of a rig config. Owned by the gui package.

The console is a slow, optional observer: every number here bounds how much work or memory it may
spend, so that a 30 Hz, 500-ROI session stays responsive on a 2-core machine.
"""

import msgspec


class GuiConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: Start the console with ``rig run`` when a display exists (ignored with ``--headless``).
    enabled: bool = True
    #: How often the window drains the bus and redraws (Hz). The rig never waits for it.
    refresh_hz: float = 10.0
    #: Run the console at a lower CPU priority than the rig's processes (nice 10 / below-normal class),
    #: so on a busy machine the closed loop gets the CPU first and only the display gets slower.
    low_priority: bool = True
    #: Seconds of per-frame history kept for the live plots.
    history_s: float = 60.0
    #: Highest frame rate the preallocated ring buffers are sized for (history_s * this = rows).
    max_frame_rate_hz: float = 60.0
    #: Receive high-water mark of the per-frame SUB socket (FluorFrame, Decision). Beyond it ZeroMQ
    #: drops messages for this subscriber only, so a stalled console never backs up into the rig.
    frame_rcvhwm: int = 300
    #: Receive high-water mark of the event SUB socket (trial events, rewards, licks, health, warnings).
    event_rcvhwm: int = 5000
    #: Receive high-water mark of the preview-image SUB socket (only the newest image is shown).
    preview_rcvhwm: int = 4
    #: Most time one refresh may spend draining the bus (ms); the rest waits for the next tick.
    drain_budget_ms: float = 25.0
    #: Frames over which the per-stage latency p50/p99 are computed.
    latency_window_frames: int = 900
    #: Completed trials in the rolling hit rate.
    hit_rate_window_trials: int = 20
    #: Window for "rewards per minute" (seconds of rig time).
    reward_rate_window_s: float = 60.0
    #: How often the console asks the supervisor for a snapshot (process states, counters, calibration).
    snapshot_interval_s: float = 2.0
    #: Lazy-Pirate request timeout and retries for operator commands.
    command_timeout_s: float = 1.0
    command_retries: int = 3
    #: Heartbeats older than this are shown as late (seconds).
    heartbeat_stale_s: float = 2.0
    #: Warnings kept in the window's list.
    warnings_kept: int = 200
    #: Default target hit rate offered in the calibrate control.
    default_target_hit_rate: float = 0.5

    def __post_init__(self) -> None:
        if not 1.0 <= self.refresh_hz <= 60.0:
            raise ValueError("`refresh_hz`: must be between 1 and 60")
        if not 5.0 <= self.history_s <= 600.0:
            raise ValueError("`history_s`: must be between 5 and 600 seconds")
        if not 1.0 <= self.max_frame_rate_hz <= 2000.0:
            raise ValueError("`max_frame_rate_hz`: must be between 1 and 2000")
        for name in ("frame_rcvhwm", "event_rcvhwm", "preview_rcvhwm"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise ValueError(f"`{name}`: must be between 1 and 100000 messages")
        if not 1.0 <= self.drain_budget_ms <= 200.0:
            raise ValueError("`drain_budget_ms`: must be between 1 and 200 ms")
        if not 10 <= self.latency_window_frames <= 100_000:
            raise ValueError("`latency_window_frames`: must be between 10 and 100000")
        if not 1 <= self.hit_rate_window_trials <= 10_000:
            raise ValueError("`hit_rate_window_trials`: must be between 1 and 10000")
        if self.reward_rate_window_s <= 0:
            raise ValueError("`reward_rate_window_s`: must be > 0")
        if not 0.1 <= self.snapshot_interval_s <= 60.0:
            raise ValueError("`snapshot_interval_s`: must be between 0.1 and 60 seconds")
        if not 0.05 <= self.command_timeout_s <= 30.0:
            raise ValueError("`command_timeout_s`: must be between 0.05 and 30 seconds")
        if not 1 <= self.command_retries <= 20:
            raise ValueError("`command_retries`: must be between 1 and 20")
        if self.heartbeat_stale_s <= 0:
            raise ValueError("`heartbeat_stale_s`: must be > 0")
        if not 1 <= self.warnings_kept <= 10_000:
            raise ValueError("`warnings_kept`: must be between 1 and 10000")
        if not 0.0 < self.default_target_hit_rate < 1.0:
            raise ValueError("`default_target_hit_rate`: must be between 0 and 1 (exclusive)")

    @property
    def history_rows(self) -> int:
        """Rows of the per-frame ring buffers."""
        return int(self.history_s * self.max_frame_rate_hz) + 1
