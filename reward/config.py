"""The [reward] section of a rig config. Owned by the reward package."""

from __future__ import annotations

import math

import msgspec

from reward.protocol import FIRMWARE_MAX_OPEN_MS, WATCHDOG_MAX_MS, WATCHDOG_MIN_MS

EMULATOR_PORT = "emulator"
EMULATOR_TRANSPORTS = ("auto", "pty", "socket")


class RewardConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the reward process reaches the board and what it is allowed to deliver.

    ``port``: "emulator" (serve the simulated board), a device ("COM3", "/dev/ttyACM0") or a
    pyserial URL ("socket://127.0.0.1:5555").
    """

    port: str = EMULATOR_PORT
    baud: int = 115200
    emulator_transport: str = "auto"
    """"auto" = pty on POSIX, socket elsewhere; "pty"; "socket"."""
    emulator_tcp_port: int = 0
    """TCP port of the socket transport; 0 picks a free one."""
    emulator_lick_rate_hz: float = 0.05
    """Spontaneous lick bouts per second of the simulated mouse (0 = none)."""
    emulator_reward_licks: bool = True
    """The simulated mouse usually licks after a reward."""
    emulator_seed: int = 0

    valve: str = "valve0"
    calibration_file: str = ""
    """Valve calibration (TOML/JSON). Relative paths are relative to the config file's folder."""

    volume_ul: float = 5.0
    """Default reward volume when a request does not name one."""
    min_interval_s: float = 1.0
    """Valve openings (rewards, test pulses, flushes) closer than this to the previous one are refused, unless
    an operator overrides it explicitly."""
    max_volume_ul: float = 1500.0
    """Per-session cap on the volume through the valve (rewards, test pulses, flushes); requests beyond it are
    refused, unless an operator overrides it explicitly."""
    max_open_ms: float = 500.0
    """Longest valve opening a reward or test pulse may ask for (the firmware's hard limit is 2000 ms)."""
    test_pulse_ms: float = 50.0

    ack_timeout_s: float = 0.1
    retries: int = 2
    """Re-sends of an unacknowledged command, with the same sequence number (never re-executed)."""
    done_margin_s: float = 0.25
    """How long past its open time a pulse's completion may take before the board's pulse log is asked."""
    reconcile_timeout_s: float = 10.0
    """How long a pulse whose completion was not read waits for the board's pulse log (through a reconnect)
    before it is reported failed with its volume unknown; the valve takes no other pulse meanwhile."""
    heartbeat_interval_s: float = 0.1
    watchdog_ms: int = 500
    """Board closes the valve and refuses pulses after this long without hearing the host."""
    link_timeout_s: float = 1.0
    """No byte from the board for this long while linked = link lost."""
    handshake_timeout_s: float = 3.0
    """Boards that reset on port open (Uno) need ~2 s before they answer HELLO."""
    reconnect_interval_s: float = 0.5
    write_timeout_s: float = 0.1

    def __post_init__(self) -> None:
        if not self.port:
            raise ValueError("`port`: must name 'emulator', a serial device or a pyserial URL")
        if self.baud <= 0:
            raise ValueError("`baud`: must be > 0")
        if self.emulator_transport not in EMULATOR_TRANSPORTS:
            raise ValueError(f"`emulator_transport`: must be one of {', '.join(EMULATOR_TRANSPORTS)}")
        if not 0 <= self.emulator_tcp_port <= 65535:
            raise ValueError("`emulator_tcp_port`: must be in 0..65535")
        if not self.emulator_lick_rate_hz >= 0:
            raise ValueError("`emulator_lick_rate_hz`: must be >= 0")
        if not self.valve or any(c in self.valve for c in '/\\:*?"<>| '):
            raise ValueError("`valve`: must be a non-empty name usable in a file name")
        _positive_finite("volume_ul", self.volume_ul)
        _non_negative_finite("min_interval_s", self.min_interval_s)
        _positive_finite("max_volume_ul", self.max_volume_ul)
        _positive_finite("max_open_ms", self.max_open_ms)
        if self.max_open_ms > FIRMWARE_MAX_OPEN_MS:
            raise ValueError(f"`max_open_ms`: must be <= {FIRMWARE_MAX_OPEN_MS} (the firmware's hard maximum)")
        _positive_finite("test_pulse_ms", self.test_pulse_ms)
        if self.test_pulse_ms > self.max_open_ms:
            raise ValueError("`test_pulse_ms`: must be <= max_open_ms")
        _positive_finite("ack_timeout_s", self.ack_timeout_s)
        if self.retries < 0:
            raise ValueError("`retries`: must be >= 0")
        _positive_finite("done_margin_s", self.done_margin_s)
        _positive_finite("reconcile_timeout_s", self.reconcile_timeout_s)
        if not WATCHDOG_MIN_MS <= self.watchdog_ms <= WATCHDOG_MAX_MS:
            raise ValueError(f"`watchdog_ms`: must be in {WATCHDOG_MIN_MS}..{WATCHDOG_MAX_MS}")
        _positive_finite("heartbeat_interval_s", self.heartbeat_interval_s)
        if self.heartbeat_interval_s * 1000 > self.watchdog_ms / 2:
            raise ValueError("`heartbeat_interval_s`: must be at most half of watchdog_ms")
        _positive_finite("link_timeout_s", self.link_timeout_s)
        if self.link_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError("`link_timeout_s`: must be at least twice heartbeat_interval_s")
        _positive_finite("handshake_timeout_s", self.handshake_timeout_s)
        _positive_finite("reconnect_interval_s", self.reconnect_interval_s)
        _positive_finite("write_timeout_s", self.write_timeout_s)

    @property
    def uses_emulator(self) -> bool:
        return self.port == EMULATOR_PORT


def _positive_finite(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}`: must be a finite number > 0")


def _non_negative_finite(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}`: must be a finite number >= 0")
