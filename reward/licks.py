"""A seeded simulated mouse for the emulated board's lick sensor.

Kept apart from the firmware model because it is not firmware: it stands for the animal on the
other side of the sensor pin. :class:`reward.emulator.EmulatorServer` feeds its level changes to
:meth:`reward.board_model.FirmwareEmulator.set_lick_input` and tells it when the valve opened.
"""

from __future__ import annotations

import random
from collections import deque


class LickGenerator:
    """Seeded lick-sensor levels: spontaneous bouts plus a bout after most rewards.

    Mice lick at ~7 Hz in bouts; each contact lasts tens of ms. Produces (board_us, level) changes
    in time order; :meth:`on_reward` schedules a consummatory bout after a valve opening.
    """

    def __init__(
        self,
        seed: int,
        *,
        bout_rate_hz: float = 0.1,
        reward_bout_probability: float = 0.9,
        lick_rate_hz: float = 7.0,
    ) -> None:
        if bout_rate_hz < 0 or lick_rate_hz <= 0 or not 0 <= reward_bout_probability <= 1:
            raise ValueError("lick generator rates must be >= 0 (lick rate > 0) and probability in [0, 1]")
        self._rng = random.Random(seed)
        self._bout_rate_hz = bout_rate_hz
        self._reward_p = reward_bout_probability
        self._lick_period_us = 1e6 / lick_rate_hz
        self._changes: deque[tuple[int, bool]] = deque()
        self._next_spontaneous: int | None = None

    def _bout(self, start_us: int) -> None:
        # Drop what is scheduled after the new bout starts, then append licks.
        while self._changes and self._changes[-1][0] >= start_us:
            self._changes.pop()
        if self._changes and self._changes[-1][1]:
            self._changes.append((start_us, False))
            start_us += 5_000
        t = float(start_us)
        for _ in range(self._rng.randint(3, 12)):
            contact = self._rng.uniform(15_000, 45_000)
            self._changes.append((int(t), True))
            self._changes.append((int(t + contact), False))
            t += self._lick_period_us * self._rng.uniform(0.8, 1.25)

    def _schedule_spontaneous(self, now_us: int) -> None:
        if self._bout_rate_hz > 0:
            self._next_spontaneous = now_us + int(self._rng.expovariate(self._bout_rate_hz) * 1e6)

    def on_reward(self, board_us: int) -> None:
        if self._rng.random() < self._reward_p:
            self._bout(board_us + int(self._rng.uniform(80_000, 250_000)))

    def next_change_us(self, now_us: int) -> int | None:
        if self._next_spontaneous is None:
            self._schedule_spontaneous(now_us)
        pending = [c for c in (self._next_spontaneous, self._changes[0][0] if self._changes else None) if c is not None]
        return min(pending) if pending else None

    def pop_due(self, now_us: int) -> list[tuple[int, bool]]:
        if self._next_spontaneous is not None and self._next_spontaneous <= now_us:
            start = self._next_spontaneous
            self._schedule_spontaneous(now_us)
            if not self._changes:
                self._bout(start)
        due: list[tuple[int, bool]] = []
        while self._changes and self._changes[0][0] <= now_us:
            due.append(self._changes.popleft())
        return due
