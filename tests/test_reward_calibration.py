"""Valve calibration: fit, files, and what a session gets with and without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from reward.calibration import (
    CalibrationError,
    CalibrationPoint,
    ValveCalibration,
    fit,
    require_calibration,
    session_calibration,
)
from reward.config import RewardConfig

SIM_CALIBRATION = Path(__file__).resolve().parents[1] / "hardware_configs" / "calibrations" \
    / "valve_calibration_sim.toml"


def points(intercept: float = 3.0, slope: float = 6.0, noise: tuple[float, ...] = (0, 0, 0, 0)) -> list:
    """Weights a valve with open_ms = intercept + slope * uL would give for 100 pulses."""
    out = []
    for ms, extra_mg in zip((15.0, 30.0, 60.0, 90.0), noise, strict=True):
        out.append(CalibrationPoint(open_ms=ms, pulses=100, total_mg=100 * (ms - intercept) / slope + extra_mg))
    return out


def test_fit_recovers_the_line():
    line = fit(points())
    assert line.intercept_ms == pytest.approx(3.0)
    assert line.slope_ms_per_ul == pytest.approx(6.0)
    assert line.r_squared == pytest.approx(1.0)
    noisy = fit(points(noise=(4.0, -3.0, 5.0, -6.0)))
    assert 0.99 < noisy.r_squared < 1.0
    assert noisy.slope_ms_per_ul == pytest.approx(6.0, rel=0.05)


@pytest.mark.parametrize(
    ("pts", "message"),
    [
        ([CalibrationPoint(open_ms=10, pulses=10, total_mg=20)], "at least 2 points"),
        ([CalibrationPoint(open_ms=10, pulses=10, total_mg=20)] * 2, "same volume"),
        (
            [
                CalibrationPoint(open_ms=10, pulses=10, total_mg=40),
                CalibrationPoint(open_ms=20, pulses=10, total_mg=20),
            ],
            "not positive",
        ),
    ],
)
def test_fit_refuses_unusable_points(pts, message):
    with pytest.raises(CalibrationError, match=message):
        fit(pts)


def test_duration_and_volume_are_inverse_and_tiny_volumes_are_refused():
    cal = ValveCalibration.from_points("valve0", points(), date="2025-02-03T04:05:06")
    assert cal.duration_ms(5.0) == pytest.approx(33.0)
    assert cal.volume_ul(cal.duration_ms(2.5)) == pytest.approx(2.5)
    negative = ValveCalibration(valve="v", date="2025-01-01", intercept_ms=-3.0, slope_ms_per_ul=6.0)
    with pytest.raises(ValueError, match="below the smallest volume"):
        negative.duration_ms(0.25)
    with pytest.raises(ValueError, match="finite number > 0"):
        cal.duration_ms(float("inf"))


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    cal = ValveCalibration.from_points("valve1", points(noise=(1, 2, 3, 4)), date="2025-02-03T04:05:06", notes='a "b"')
    path = cal.save(tmp_path / "sub" / f"valve1{suffix}")
    loaded = ValveCalibration.load(path)
    assert loaded == cal
    assert loaded.source == str(path)
    record = loaded.to_dict()
    assert record["valve"] == "valve1" and record["date"] == "2025-02-03T04:05:06"
    assert record["source"] == str(path) and len(record["sha256_16"]) == 16
    assert len(record["points"]) == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("valve = \"v\"\ndate = \"2025-01-01\"\nintercept_ms = 1.0\n", "slope_ms_per_ul"),
        ("valve = \"v\"\ndate = \"yesterday\"\nintercept_ms = 1.0\nslope_ms_per_ul = 2.0\n", "ISO 8601"),
        ("valve = \"v\"\ndate = \"2025-01-01\"\nintercept_ms = 1.0\nslope_ms_per_ul = -2.0\n", "slope_ms_per_ul"),
        ("valve = \"v\"\ndate = \"2025-01-01\"\nintercept_ms = 1.0\nslope_ms_per_ul = 2.0\nwho = 1\n", "who"),
        ("this is = not toml =", "not valid"),
        (
            "valve = \"v\"\ndate = \"2025-01-01\"\nintercept_ms = 1.0\nslope_ms_per_ul = 2.0\n"
            "[[points]]\nopen_ms = 10.0\npulses = 0\ntotal_mg = 1.0\n",
            "pulses",
        ),
    ],
)
def test_invalid_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "cal.toml"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=message) as info:
        ValveCalibration.load(path)
    assert str(path) in str(info.value)


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist: run `rig valve calibrate"):
        ValveCalibration.load(tmp_path / "nope.toml")


def test_live_session_without_calibration_refuses_to_start():
    cfg = RewardConfig(port="/dev/ttyACM0")
    with pytest.raises(CalibrationError, match="does not start uncalibrated"):
        require_calibration(cfg)
    with pytest.raises(CalibrationError, match="rig valve calibrate"):
        session_calibration(cfg)


def test_calibration_for_another_valve_is_refused(tmp_path):
    ValveCalibration.from_points("valveB", points()).save(tmp_path / "cal.toml")
    cfg = RewardConfig(port="COM3", valve="valveA", calibration_file="cal.toml")
    with pytest.raises(CalibrationError, match="for valve 'valveB'"):
        require_calibration(cfg, tmp_path)


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    ValveCalibration.from_points("valve0", points()).save(tmp_path / "cal" / "v0.toml")
    cfg = RewardConfig(port="COM3", calibration_file="cal/v0.toml")
    assert require_calibration(cfg, tmp_path).source == str(tmp_path / "cal" / "v0.toml")
    config_file = tmp_path / "rig.toml"
    assert ValveCalibration.for_config(cfg, config_file).valve == "valve0"


def test_emulator_session_without_calibration_gets_a_labelled_placeholder():
    cal = session_calibration(RewardConfig())
    assert cal.source == "placeholder" and cal.valve == "emulator-placeholder"
    assert cal.duration_ms(5.0) > 0


def test_shipped_sim_calibration_is_valid():
    cal = ValveCalibration.load(SIM_CALIBRATION)
    assert cal.valve == RewardConfig().valve
    assert len(cal.points) >= 3
    assert cal.fit_quality().r_squared > 0.99
    assert cal.fit_quality().intercept_ms == pytest.approx(cal.intercept_ms, abs=1e-3)
    cfg = RewardConfig(calibration_file=SIM_CALIBRATION.name)
    assert session_calibration(cfg, SIM_CALIBRATION.parent) == cal
