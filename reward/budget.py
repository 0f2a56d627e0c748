"""The valve budget: the minimum interval between openings, the session volume cap, and the volume totals.

One budget for every pulse (rewards, test pulses, flushes, calibration), kept apart from the controller's
state machine because it is policy over numbers, not over the link: what may open now, what the session has
dispensed so far and as what. An operator override lets a pulse pass the interval and the cap (its volume
still counts); the board's own duty-cycle limit is not part of it (nothing on the host overrides that).
"""

from __future__ import annotations

from reward.config import RewardConfig
from reward.outcome import VOLUME_REWARD


class ValveBudget:
    """Minimum interval and volume cap of ``cfg``, and the totals they are checked against."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self.last_open_ns: int | None = None
        """When the last pulse was written (None: no pulse yet)."""
        self.committed_ul = 0.0
        """What the volume cap counts: dispensed (or, where unknown, asked) volume of every pulse sent so far."""
        self.delivered_ul = 0.0
        """What delivered pulses dispensed."""
        self.reward_ul = 0.0
        """What the valve dispensed for rewards (request()), delivered or cut short."""
        self.other_ul = 0.0
        """What the valve dispensed for test pulses, flushes and calibration (pulse())."""

    def check(self, volume_ul: float, t: int, override: bool) -> tuple[str, str]:
        """Whether a pulse of ``volume_ul`` may open at ``t``: ``(refusal, overridden)``.

        ``refusal`` is why it may not ("" = it may); ``overridden`` what an override let pass ("" = nothing).
        """
        problems: list[str] = []
        if self.last_open_ns is not None:
            since_s = (t - self.last_open_ns) / 1e9
            if since_s < self.cfg.min_interval_s:
                problems.append(
                    f"minimum interval: {since_s:.3f} s since the last valve opening < {self.cfg.min_interval_s:g} s"
                )
        if self.committed_ul + volume_ul > self.cfg.max_volume_ul + 1e-9:
            problems.append(
                f"session volume cap: {self.committed_ul:g} + {volume_ul:g} uL > {self.cfg.max_volume_ul:g} uL"
            )
        if not problems:
            return "", ""
        return ("", "; ".join(problems)) if override else ("; ".join(problems), "")

    def commit(self, volume_ul: float) -> None:
        """A pulse is about to be written: its asked volume counts now (its ack may be lost, the pulse delivered)."""
        self.committed_ul += volume_ul

    def opened(self, t_written: int) -> None:
        """A pulse was written at ``t_written``: the minimum interval runs from there."""
        self.last_open_ns = t_written

    def settle(self, asked_ul: float, dispensed_ul: float, volume_kind: str, delivered: bool) -> None:
        """A pulse's outcome is known: the cap counts what flowed instead of what was asked, the totals add it."""
        self.committed_ul += dispensed_ul - asked_ul
        if volume_kind == VOLUME_REWARD:
            self.reward_ul += dispensed_ul
        else:
            self.other_ul += dispensed_ul
        if delivered:
            self.delivered_ul += dispensed_ul
