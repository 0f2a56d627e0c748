"""[reward] config validation: every range check names its field first, so the loader can report the key."""

from __future__ import annotations

import msgspec
import pytest

from reward.config import RewardConfig


def test_defaults_are_valid_and_use_the_emulator():
    cfg = RewardConfig()
    assert cfg.uses_emulator and cfg.watchdog_ms == 500
    assert not RewardConfig(port="COM3").uses_emulator


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"port": ""}, "port"),
        ({"baud": 0}, "baud"),
        ({"emulator_transport": "usb"}, "emulator_transport"),
        ({"emulator_tcp_port": 70000}, "emulator_tcp_port"),
        ({"valve": "a/b"}, "valve"),
        ({"volume_ul": float("nan")}, "volume_ul"),
        ({"min_interval_s": -0.1}, "min_interval_s"),
        ({"max_volume_ul": 0.0}, "max_volume_ul"),
        ({"max_open_ms": 2500.0}, "max_open_ms"),
        ({"test_pulse_ms": 600.0}, "test_pulse_ms"),
        ({"retries": -1}, "retries"),
        ({"watchdog_ms": 20}, "watchdog_ms"),
        ({"heartbeat_interval_s": 0.3}, "heartbeat_interval_s"),
        ({"link_timeout_s": 0.1}, "link_timeout_s"),
        ({"ack_timeout_s": 0.0}, "ack_timeout_s"),
    ],
)
def test_bad_values_name_their_field(values, field):
    with pytest.raises(msgspec.ValidationError, match=f"^`{field}`: "):
        msgspec.convert(values, RewardConfig)


def test_unknown_keys_are_rejected():
    with pytest.raises(msgspec.ValidationError, match="unknown field `volume`"):
        msgspec.convert({"volume": 3}, RewardConfig)
