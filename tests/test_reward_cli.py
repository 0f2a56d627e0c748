"""`rig valve calibrate|pulse|flush` against the in-process emulator, with the operator on stdin."""

from __future__ import annotations

import argparse
import functools
import io
import threading
from pathlib import Path

import pytest

from reward.board_model import FirmwareEmulator
from reward.calibration import ValveCalibration
from reward.config import RewardConfig
from rig.app import valve_cli as cli


def write_config(folder: Path, **reward) -> Path:
    lines = ["[reward]", 'port = "emulator"'] + [f"{k} = {v!r}".replace("'", '"') for k, v in reward.items()]
    path = folder / "rig.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(argv: list[str], monkeypatch, stdin: str = "") -> int:
    parser = argparse.ArgumentParser(prog="rig")
    cli.register_cli(parser.add_subparsers(dest="command", required=True))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("transport", ["socket", "auto"])
def test_calibrate_with_weights_from_stdin(tmp_path, monkeypatch, capsys, transport):
    config = write_config(tmp_path, calibration_file="cal/valve0.toml", emulator_transport=transport)
    # Enter, weight, Enter, weight, Enter, weight (one pair per open time); one typo re-asked.
    stdin = "\n60\n\nabc\n130\n\n200\n"
    code = run(["valve", "calibrate", str(config), "--open-ms", "5,10,15", "--pulses", "2", "--interval-ms", "1"],
               monkeypatch, stdin)
    out = capsys.readouterr().out
    assert code == 0, out
    saved = tmp_path / "cal" / "valve0.toml"
    cal = ValveCalibration.load(saved)
    assert [(pt.open_ms, pt.total_mg) for pt in cal.points] == [(5.0, 60.0), (10.0, 130.0), (15.0, 200.0)]
    assert {pt.pulses for pt in cal.points} == {2}
    assert cal.slope_ms_per_ul == pytest.approx(10 / 70, rel=0.05)
    assert "is not a number" in out and "R^2" in out and "uL/pulse" in out
    archived = [p for p in saved.parent.glob("valve0.*.toml")]
    assert len(archived) == 1 and ValveCalibration.load(archived[0]) == cal
    assert saved.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_stops_cleanly_when_input_ends(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, calibration_file="cal.toml")
    code = run(["valve", "calibrate", str(config), "--open-ms", "5,10", "--pulses", "1"], monkeypatch, "\n50\n")
    assert code == 1
    assert "input ended before the calibration was complete; nothing was saved" in capsys.readouterr().err
    assert not (tmp_path / "cal.toml").exists()


def test_calibrate_needs_somewhere_to_save(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    assert run(["valve", "calibrate", str(config), "--open-ms", "5,10"], monkeypatch) == 1
    assert "set [reward] calibration_file" in capsys.readouterr().err


def test_calibrate_keeps_heartbeats_going_while_the_operator_types(tmp_path):
    """A slow operator must not trip the board's watchdog between pulses (the link is pumped)."""
    cfg = RewardConfig(calibration_file="cal.toml", watchdog_ms=400, heartbeat_interval_s=0.05)
    answers = iter(["", "50", "", "90"])
    heartbeats = {"count": 0}
    enough = threading.Event()
    states: list[str] = []
    original_write, original_poll = cli.ValveLink._write, cli.RewardController.poll

    def counting_write(self, data: bytes) -> int:
        if data.startswith(b"HB "):
            heartbeats["count"] += 1
            if heartbeats["count"] >= 20:
                enough.set()
        return original_write(self, data)

    def watching_poll(self, timeout_s=0.0):
        events = original_poll(self, timeout_s)
        states.extend(e.state for e in events if getattr(e, "kind", "") == "link")
        return events

    def slow_operator(prompt: str) -> str:
        # Before typing a weight, think for 20 heartbeat periods (2.5 watchdog periods).
        if "Weight" in prompt:
            heartbeats["count"] = 0
            enough.clear()
            assert enough.wait(20.0), "the link was not pumped while the operator was typing"
        return next(answers)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli.ValveLink, "_write", counting_write)
        mp.setattr(cli.RewardController, "poll", watching_poll)
        cal, _ = cli.calibrate(cfg, tmp_path, open_ms=[5.0, 10.0], pulses=1, interval_ms=1.0, plot=False,
                               read=slow_operator, out=io.StringIO())
    assert cal.points[1].total_mg == 90.0
    assert states == ["connecting", "connected"]


def test_pulse(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, test_pulse_ms=30.0)
    assert run(["valve", "pulse", str(config)], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "test-pulse: delivered" in out and "operator override by rig valve pulse (" in out
    assert run(["valve", "pulse", str(config), "--ms", "5000"], monkeypatch) == 1
    assert "above the 2000 ms limit" in capsys.readouterr().err


def test_bench_pulses_override_the_session_budget_and_say_who(tmp_path):
    """Back-to-back calibration pulses pass a 60 s minimum interval and a 1 uL cap: the bench operator overrides them,
    and every outcome records it."""
    cfg = RewardConfig(min_interval_s=60.0, max_volume_ul=1.0, calibration_file="cal.toml")
    answers = iter(["", "50", "", "90"])
    outcomes: list = []
    original = cli._pulse_once

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - _pulse_once's own
        outcomes.append(original(*args, **kwargs))
        return outcomes[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_pulse_once", recording)
        cli.calibrate(cfg, tmp_path, open_ms=[5.0, 10.0], pulses=2, interval_ms=1.0, plot=False,
                      read=lambda _: next(answers), out=io.StringIO())
    assert [o.status for o in outcomes] == ["delivered"] * 4
    assert all(o.override and o.issued_by.startswith("rig valve calibrate (") for o in outcomes)


def test_flush_splits_into_bounded_pulses(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    monkeypatch.setattr(cli, "FirmwareEmulator", functools.partial(FirmwareEmulator, max_open_ms=500))
    outcomes = cli.flush(cli.load_reward_config(config)[0], 1200.0, out=io.StringIO())
    assert [o.open_ms for o in outcomes] == [500.0, 500.0, 200.0]
    assert all(o.status == "delivered" and o.source == "flush" and o.override for o in outcomes)
    assert run(["valve", "flush", str(config), "--ms", "0"], monkeypatch) == 1
    assert "--ms must be in" in capsys.readouterr().err


def test_flush_is_paced_by_the_board_duty_cycle_limit(tmp_path, monkeypatch):
    # A board allowing 100 ms per 0.5 s (the real one: 2 s per 10 s), so the test waits about a second, not minutes.
    config = write_config(tmp_path)
    monkeypatch.setattr(cli, "FirmwareEmulator",
                        functools.partial(FirmwareEmulator, duty_max_ms=100, duty_window_ms=500))
    out = io.StringIO()
    outcomes = cli.flush(cli.load_reward_config(config)[0], 250.0, out=out)
    assert [o.open_ms for o in outcomes] == [100.0, 100.0, 50.0] and {o.status for o in outcomes} == {"delivered"}
    assert "duty-cycle limit" in out.getvalue() and "waiting for the board's budget" in out.getvalue()


def test_unreachable_board_is_a_clear_error(tmp_path, monkeypatch, capsys):
    config = tmp_path / "rig.toml"
    config.write_text('[reward]\nport = "socket://127.0.0.1:1"\nhandshake_timeout_s = 0.2\n')
    assert run(["valve", "pulse", str(config)], monkeypatch) == 1
    err = capsys.readouterr().err
    assert "no reward board answered at socket://127.0.0.1:1" in err and "cannot open" in err


def test_bad_config_is_a_clear_error(tmp_path, monkeypatch, capsys):
    config = tmp_path / "rig.toml"
    config.write_text("[reward]\nmin_interval_s = -1\n")
    assert run(["valve", "pulse", str(config)], monkeypatch) == 1
    assert "min_interval_s" in capsys.readouterr().err
    assert run(["valve", "pulse", str(tmp_path / "missing.toml")], monkeypatch) == 1
    assert "missing.toml: cannot read the file" in capsys.readouterr().err
