"""The records the reward controller hands out: outcomes of requests, licks, notices for the operator.

Kept apart from :mod:`reward.controller` so that what a request ended in (the fields every reader of
``reward_outcome`` relies on: the reward process, the valve CLI, benchmarks, tests) is defined in one
small place, without the state machine that produces it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

DELIVERED = "delivered"
FAILED = "failed"
REFUSED = "refused"

SOURCE_TEST = "test_pulse"
SOURCE_FLUSH = "flush"

# What a pulse's volume counts as (RewardOutcome.volume_kind): a reward for the mouse (request()), or
# water that is not a reward (pulse(): test pulses, flushes, calibration).
VOLUME_REWARD = "reward"
VOLUME_OTHER = "other"


class RewardOutcome(msgspec.Struct, kw_only=True):
    """What happened to one request. The fields up to ``meta`` match ``rig.core.schema.RewardOutcome``.

    ``t_*`` are ``rig.core.clock.now_ns`` stamps (0 = did not happen): ``t_received`` when request()
    was called, ``t_written`` right after the first write of the command returned, ``t_ack`` when
    the acknowledgement was read, ``t_done`` when the completion (or the board's log entry) was read.
    ``board_us_*`` are the board's clock (-1 = not seen). ``open_us`` is the opening the board measured
    (-1 = unknown). ``meta`` is returned exactly as passed to request().

    ``volume_ul`` is what was asked for; ``dispensed_ul`` what the valve dispensed (the calibration's volume
    for the board-measured open time; 0 if it never opened; the asked volume, an upper bound, when the
    board could not tell, which the reason says). ``volume_kind``: "reward" or "other". ``reconciled``: the
    result came from the board's pulse log, not from its DONE line. ``override``/``issued_by``: an operator
    override of the minimum interval and the volume cap, and who issued the request. ``board_nak``: the
    board's refusal code (e.g. "DUTY"), if it refused.
    """

    kind: ClassVar[str] = "outcome"
    request_id: str
    status: str
    reason: str
    volume_ul: float
    open_ms: float
    source: str
    seq: int = -1
    attempts: int = 0
    t_received: int = 0
    t_written: int = 0
    t_ack: int = 0
    t_done: int = 0
    board_us_ack: int = -1
    board_us_done: int = -1
    open_us: int = -1
    meta: dict[str, Any] = {}
    dispensed_ul: float = 0.0
    volume_kind: str = VOLUME_REWARD
    reconciled: bool = False
    override: bool = False
    issued_by: str = ""
    board_nak: str = ""


class LickEvent(msgspec.Struct, kw_only=True):
    """A debounced lick onset/offset. ``t_ns`` maps the board time to the host clock (0 = no sync yet)."""

    kind: ClassVar[str] = "lick"
    onset: bool
    board_us: int
    t_ns: int
    t_received: int
    count: int
    missed: int = 0


class BoardNotice(msgspec.Struct, kw_only=True):
    """Something the operator should know that is not an outcome: corrupted lines, late replies, overrides..."""

    kind: ClassVar[str] = "notice"
    code: str
    message: str
    t_ns: int
