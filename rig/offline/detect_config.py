"""``[detect]``: how ``rig detect`` runs suite2p on a baseline movie (see docs/DETECT.md).

Kept apart from :mod:`rig.offline.detect` so the rig config can validate the section without importing
anything heavy: this module needs only msgspec.
"""

from __future__ import annotations

import math

import msgspec

#: Decay time constant (s) of each indicator: suite2p's ``tau``, which sets how many frames are averaged
#: into one activity bin before detection. Published values (Chen 2013; Dana 2019; Zhang 2023).
INDICATOR_TAU_S = {"6f": 0.683, "6s": 1.702, "7f": 0.265, "8m": 0.140}

#: suite2p's detection algorithms that need no extra package (cellpose needs its own install)
ALGORITHMS = ("sourcery", "sparsery")


class DetectConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[detect]: suite2p settings for a BCI field of view (a zoomed-in field of somata, a few minutes of baseline)."""

    indicator: str = "6f"  # GCaMP6f "6f", GCaMP6s "6s", jGCaMP7f "7f", jGCaMP8m "8m": sets tau
    tau_s: float = 0.0  # > 0 overrides the indicator's decay time
    diameter_px: float = 12.0  # soma diameter in pixels at this zoom (sourcery looks for blobs this size)
    algorithm: str = "sourcery"  # sourcery finds soma-shaped ROIs of `diameter_px`; sparsery finds any shape
    threshold_scaling: float = 1.5  # higher: fewer, surer ROIs; lower: more ROIs, more false ones
    min_bins: int = 15  # the movie must hold at least this many tau-long activity bins
    min_frames: int = 200  # and never fewer frames than this (suite2p warns below 200)
    max_rate_mismatch: float = 0.05  # the movie's own frame rate may differ from the config's by this fraction
    threads: int = 0  # torch threads for suite2p; 0: every core of this PC
    # the picker's and rig rank's "suggest": members at least this far apart (centre to centre, pixels), and
    # up cells correlating less than this with down cells (dF/F in 1-s bins of the baseline)
    suggest_min_distance_px: float = 20.0
    suggest_max_corr: float = 0.3

    def __post_init__(self) -> None:
        if self.indicator not in INDICATOR_TAU_S:
            raise ValueError(f"`indicator`: must be one of {', '.join(INDICATOR_TAU_S)} (got {self.indicator!r})")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"`algorithm`: must be one of {', '.join(ALGORITHMS)} (got {self.algorithm!r})")
        for name in ("tau_s", "diameter_px", "threshold_scaling", "max_rate_mismatch"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"`{name}`: must be a finite number")
        if self.tau_s < 0:
            raise ValueError("`tau_s`: must be >= 0 (0 = the indicator's decay time)")
        if not 3.0 <= self.diameter_px <= 100.0:
            raise ValueError(f"`diameter_px`: must be within [3, 100] pixels (got {self.diameter_px})")
        if not self.threshold_scaling > 0:
            raise ValueError("`threshold_scaling`: must be > 0")
        if self.min_bins < 1 or self.min_frames < 10:
            raise ValueError("`min_bins`: must be >= 1 and `min_frames` >= 10")
        if self.threads < 0:
            raise ValueError("`threads`: must be >= 0 (0 = every core)")
        if not 0.0 < self.max_rate_mismatch < 1.0:
            raise ValueError("`max_rate_mismatch`: must be within (0, 1)")
        if not (math.isfinite(self.suggest_min_distance_px) and self.suggest_min_distance_px >= 0):
            raise ValueError("`suggest_min_distance_px`: must be a distance in pixels >= 0")
        if not -1.0 < self.suggest_max_corr <= 1.0:
            raise ValueError("`suggest_max_corr`: must be a correlation within (-1, 1]")

    @property
    def tau(self) -> float:
        """suite2p's ``tau`` in seconds."""
        return self.tau_s if self.tau_s > 0 else INDICATOR_TAU_S[self.indicator]

    def min_frames_at(self, fs: float) -> int:
        """Fewest frames detection accepts at ``fs`` Hz: ``min_bins`` bins of tau, and at least ``min_frames``."""
        return max(self.min_frames, self.min_bins * max(1, round(self.tau * fs)))
