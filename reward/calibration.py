"""Valve calibration: how long to open the valve for a volume, measured by weighing.

Procedure (as in Bpod, iblrig, Autopilot): dispense N pulses at several open times, weigh the water
(1 mg = 1 µL), and fit ``duration_ms = intercept_ms + slope_ms_per_ul * volume_ul`` per valve. The
file records the valve, the date and the raw points, so a session can record exactly which
calibration it used (:meth:`ValveCalibration.record`).

File format (TOML; ``.json`` with the same keys also works)::

    valve = "valve0"
    date = "2025-03-01T14:05:00"
    intercept_ms = 1.8
    slope_ms_per_ul = 4.1
    rig = ""
    notes = ""

    [[points]]
    open_ms = 20.0
    pulses = 100
    total_mg = 445.0
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from reward.config import RewardConfig


class CalibrationError(ValueError):
    """A calibration is missing, unreadable or unusable; the message says which file and why."""


class CalibrationPoint(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``pulses`` openings of ``open_ms`` each dispensed ``total_mg`` of water in total."""

    open_ms: float
    pulses: int
    total_mg: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.open_ms) and self.open_ms > 0):
            raise ValueError("`open_ms`: must be a finite number > 0")
        if self.pulses < 1:
            raise ValueError("`pulses`: must be >= 1")
        if not (math.isfinite(self.total_mg) and self.total_mg > 0):
            raise ValueError("`total_mg`: must be a finite number > 0")

    @property
    def ul_per_pulse(self) -> float:
        return self.total_mg / self.pulses


class LineFit(msgspec.Struct, frozen=True):
    intercept_ms: float
    slope_ms_per_ul: float
    r_squared: float
    residuals_ms: tuple[float, ...]


def fit(points: list[CalibrationPoint]) -> LineFit:
    """Least-squares ``open_ms = intercept + slope * ul_per_pulse``; needs two distinct volumes."""
    if len(points) < 2:
        raise CalibrationError(f"a calibration needs at least 2 points, got {len(points)}")
    ul = np.array([pt.ul_per_pulse for pt in points], dtype=float)
    ms = np.array([pt.open_ms for pt in points], dtype=float)
    if np.ptp(ul) <= 1e-9 * max(1.0, float(np.max(ul))):
        raise CalibrationError("all points dispensed the same volume per pulse: cannot fit a line")
    slope, intercept = np.polyfit(ul, ms, 1)
    if not slope > 0:
        raise CalibrationError(
            f"fitted slope {slope:.3g} ms/uL is not positive: longer openings did not give more water; "
            "check the weights"
        )
    predicted = intercept + slope * ul
    residuals = ms - predicted
    total = float(np.sum((ms - ms.mean()) ** 2))
    r_squared = 1.0 - float(np.sum(residuals**2)) / total if total > 0 else 1.0
    return LineFit(float(intercept), float(slope), r_squared, tuple(float(r) for r in residuals))


class ValveCalibration(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, dict=True):
    """One valve's fit, with its date and the points it came from.

    ``source`` (not stored in the file) says where it came from: the file path it was loaded from
    or saved to, or "placeholder".
    """

    valve: str
    date: str
    intercept_ms: float
    slope_ms_per_ul: float
    points: list[CalibrationPoint] = []
    rig: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.valve:
            raise ValueError("`valve`: must not be empty")
        try:
            dt.datetime.fromisoformat(self.date)
        except ValueError:
            raise ValueError(f"`date`: {self.date!r} is not an ISO 8601 date-time") from None
        if not math.isfinite(self.intercept_ms):
            raise ValueError("`intercept_ms`: must be finite")
        if not (math.isfinite(self.slope_ms_per_ul) and self.slope_ms_per_ul > 0):
            raise ValueError("`slope_ms_per_ul`: must be a finite number > 0")

    @classmethod
    def from_points(
        cls, valve: str, points: list[CalibrationPoint], *, date: str | None = None, rig: str = "", notes: str = ""
    ) -> ValveCalibration:
        line = fit(points)
        when = date or dt.datetime.now().replace(microsecond=0).isoformat()
        return cls(
            valve=valve, date=when, intercept_ms=line.intercept_ms, slope_ms_per_ul=line.slope_ms_per_ul,
            points=list(points), rig=rig, notes=notes,
        )

    def duration_ms(self, volume_ul: float) -> float:
        """Open time for ``volume_ul``. Raises ValueError for volumes the fit cannot give."""
        if not (math.isfinite(volume_ul) and volume_ul > 0):
            raise ValueError(f"volume {volume_ul!r} uL: must be a finite number > 0")
        ms = self.intercept_ms + self.slope_ms_per_ul * volume_ul
        if ms <= 0:
            raise ValueError(
                f"valve {self.valve} calibration ({self.date}) gives {ms:.2f} ms for {volume_ul:g} uL: "
                "below the smallest volume this valve can dispense"
            )
        return ms

    def volume_ul(self, open_ms: float) -> float:
        """Estimated volume of one opening of ``open_ms`` (0 below the intercept)."""
        return max(0.0, (open_ms - self.intercept_ms) / self.slope_ms_per_ul)

    def fit_quality(self) -> LineFit | None:
        """Re-fit from the stored points (None if there are fewer than 2)."""
        return fit(self.points) if len(self.points) >= 2 else None

    @property
    def source(self) -> str:
        return getattr(self, "_source", "")

    def to_dict(self) -> dict[str, Any]:
        """What a session stores to say which calibration it used: the whole fit, its source and hash."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        data["sha256_16"] = hashlib.sha256(msgspec.json.encode(data)).hexdigest()[:16]
        data["source"] = self.source
        return data

    @classmethod
    def for_config(cls, cfg: RewardConfig, config_file: str | Path | None = None) -> ValveCalibration:
        """The calibration a session with this [reward] config uses (see :func:`session_calibration`)."""
        return session_calibration(cfg, Path(config_file).resolve().parent if config_file else None)

    # ------------------------------------------------------------ files

    def to_toml(self) -> str:
        lines = [
            "# bci-rig valve calibration: duration_ms = intercept_ms + slope_ms_per_ul * volume_ul",
            f"valve = {json.dumps(self.valve)}",
            f"date = {json.dumps(self.date)}",
            f"intercept_ms = {self.intercept_ms!r}",
            f"slope_ms_per_ul = {self.slope_ms_per_ul!r}",
            f"rig = {json.dumps(self.rig)}",
            f"notes = {json.dumps(self.notes)}",
        ]
        for pt in self.points:
            lines += [
                "", "[[points]]", f"open_ms = {float(pt.open_ms)!r}", f"pulses = {pt.pulses}",
                f"total_mg = {float(pt.total_mg)!r}",
            ]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write TOML (or JSON if the name ends in .json), creating the folder."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".json":
            path.write_bytes(msgspec.json.format(msgspec.json.encode(self)) + b"\n")
        else:
            path.write_text(self.to_toml(), encoding="utf-8")
        self._source = str(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ValveCalibration:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CalibrationError(
                f"valve calibration file {path} does not exist: run `rig valve calibrate CONFIG`"
            ) from None
        except OSError as exc:
            raise CalibrationError(f"cannot read valve calibration {path}: {exc}") from exc
        try:
            data = json.loads(raw) if path.suffix.lower() == ".json" else tomllib.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"valve calibration {path} is not valid {path.suffix or 'TOML'}: {exc}") from exc
        try:
            calibration = msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise CalibrationError(f"valve calibration {path}: {exc}") from exc
        calibration._source = str(path)
        return calibration


def placeholder_calibration() -> ValveCalibration:
    """A made-up calibration for emulator sessions that configure none; its name says so."""
    calibration = ValveCalibration(
        valve="emulator-placeholder", date="2000-01-01T00:00:00", intercept_ms=2.0, slope_ms_per_ul=4.0,
        notes="placeholder used because the emulator config names no calibration_file; not a real valve",
    )
    calibration._source = "placeholder"
    return calibration


def calibration_path(cfg: RewardConfig, base_dir: str | Path | None = None) -> Path | None:
    """``cfg.calibration_file`` resolved against ``base_dir`` (the config file's folder); None if unset."""
    if not cfg.calibration_file:
        return None
    path = Path(cfg.calibration_file).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def require_calibration(cfg: RewardConfig, base_dir: str | Path | None = None) -> ValveCalibration:
    """The configured calibration, or a CalibrationError saying why a reward session cannot start."""
    path = calibration_path(cfg, base_dir)
    if path is None:
        raise CalibrationError(
            f"no valve calibration for valve {cfg.valve!r}: set [reward] calibration_file, or run "
            "`rig valve calibrate CONFIG` first. A reward session on real hardware does not start uncalibrated."
        )
    calibration = ValveCalibration.load(path)
    if calibration.valve != cfg.valve:
        raise CalibrationError(
            f"valve calibration {path} is for valve {calibration.valve!r}, but [reward] valve is {cfg.valve!r}"
        )
    return calibration


def session_calibration(cfg: RewardConfig, base_dir: str | Path | None = None) -> ValveCalibration:
    """What a reward session uses: the configured file; on the emulator with none, the placeholder."""
    if cfg.uses_emulator and not cfg.calibration_file:
        return placeholder_calibration()
    return require_calibration(cfg, base_dir)
