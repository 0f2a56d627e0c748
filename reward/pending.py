"""The one pulse in flight: what the reward controller knows about it while it is sent, runs, or is reconciled.

Its own module because three modules work on it: :mod:`reward.controller` makes it, :mod:`reward.delivery`
drives it (sending, acknowledgement, DONE, timeouts) and :mod:`reward.reconcile` reads the board's pulse log
about it when its fate is unknown.
"""

from __future__ import annotations

from typing import Any

import msgspec

from reward import protocol as p
from reward.calibration import ValveCalibration

# Phases of the pending pulse.
SENDING = "sending"  # written, not acknowledged yet (retried with the same seq)
RUNNING = "running"  # acknowledged: the valve is open until its DONE
RECONCILING = "reconciling"  # its fate is not known: the board's pulse log is asked, never the pulse re-sent


class Pending(msgspec.Struct, kw_only=True):
    request_id: str
    source: str
    meta: dict[str, Any]
    volume_ul: float
    open_ms: float
    command: str
    seq: int
    duration_us: int
    line: bytes
    t_received: int
    volume_kind: str
    override: bool
    issued_by: str
    phase: str = SENDING
    attempts: int = 0
    t_written: int = 0
    t_last_write: int = 0
    t_ack: int = 0
    board_us_ack: int = -1
    ack_deadline: int = 0
    done_deadline: int = 0
    nak: p.Nak | None = None  # a refusal of a retried line: the log decides whether another attempt ran
    why: str = ""  # reconciling: why the fate is unknown
    give_up_at: int = 0  # reconciling: when to stop waiting for the log
    query_seq: int = -1  # reconciling: seq of the LOG query awaiting its answer (-1: none)
    query_deadline: int = 0

    def dispensed(self, open_us: int, calibration: ValveCalibration | None) -> float:
        """Volume of an opening of ``open_us``, by the calibration (0 without one: nothing to estimate with)."""
        if open_us <= 0:
            return 0.0
        if open_us == self.duration_us:
            return self.volume_ul  # exactly what was asked (no round trip through the calibration)
        return calibration.volume_ul(open_us / 1000) if calibration is not None else 0.0
