"""The per-frame feedback signal: normalised cursor, tone frequency and grating angle bin.

The cursor is normalised over the feedback range from calibration (bottom: the baseline minimum or a
low percentile; top: the threshold) and clipped to [0, 1]. The tone is log-spaced between
``tone_min_hz`` (0) and ``tone_max_hz`` (1), as pitch is perceived logarithmically (HoloBMI/Clancy use
2-20 kHz). The grating angle is quantised into ``grating_bins`` bins (CLOOSE: 6 steps of 15°), bin
``grating_bins - 1`` reached in the top bin of the range. Without a range (not calibrated) or without
a cursor the outputs are NaN, NaN, -1 (:data:`NO_BIN`).
"""

from __future__ import annotations

import math

from decoder.config import FeedbackConfig

NO_BIN = -1


class FeedbackMapper:
    """Maps a cursor value to (cursor_norm, tone_hz, angle_bin); scalar Python math, no allocation."""

    def __init__(self, cfg: FeedbackConfig) -> None:
        self.cfg = cfg
        self._log_min = math.log(cfg.tone_min_hz)
        self._log_span = math.log(cfg.tone_max_hz) - self._log_min
        self.low = math.nan
        self.high = math.nan
        self._scale = math.nan

    @property
    def has_range(self) -> bool:
        return math.isfinite(self._scale)

    def set_range(self, low: float, high: float) -> None:
        """Cursor ``low`` maps to 0 and ``high`` (the threshold) to 1."""
        if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
            raise ValueError(f"`feedback range`: needs finite low < high, got [{low}, {high}]")
        self.low = float(low)
        self.high = float(high)
        self._scale = 1.0 / (self.high - self.low)

    def clear_range(self) -> None:
        self.low = self.high = self._scale = math.nan

    def normalise(self, cursor: float) -> float:
        norm = (cursor - self.low) * self._scale
        if norm != norm:  # NaN: no range or no cursor
            return math.nan
        return 0.0 if norm < 0.0 else 1.0 if norm > 1.0 else norm

    def tone_hz(self, norm: float) -> float:
        if norm != norm:
            return math.nan
        return math.exp(self._log_min + norm * self._log_span)

    def angle_bin(self, norm: float) -> int:
        if norm != norm:
            return NO_BIN
        bins = self.cfg.grating_bins
        return min(int(norm * bins), bins - 1)

    def angle_deg(self, angle_bin: int) -> float:
        """The grating angle a renderer shows for ``angle_bin`` (NaN for :data:`NO_BIN`)."""
        if angle_bin == NO_BIN:
            return math.nan
        return self.cfg.grating_start_deg + angle_bin * self.cfg.grating_step_deg

    def map(self, cursor: float) -> tuple[float, float, int]:
        norm = self.normalise(cursor)
        return norm, self.tone_hz(norm), self.angle_bin(norm)
