"""Reconciliation with the board's pulse log: what the valve did for a pulse whose completion was not read.

When a pulse's DONE is not read (lost line, no acknowledgement, link loss, board reset), re-sending it could
deliver twice, and guessing could count water that never flowed. So the pulse is never re-sent: after a CLOSE
(or the new handshake, which closes the valve) the board is asked what it did (``LOG <seq>``), and its
answer is the outcome (``reconciled``). Only when the log cannot be read (the board was power-cycled, or
stays unreachable for ``reconcile_timeout_s``) is the volume unknown.

Apart from :mod:`reward.delivery` because it is its own protocol: the LOG query and its deadlines
(:class:`Reconciler`), and what an entry of the log means for the pulse (:func:`read_log_entry`, no I/O).
:class:`reward.delivery.PulseDelivery` turns the reading into the outcome.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from reward import protocol as p
from reward.calibration import ValveCalibration
from reward.config import RewardConfig
from reward.link import CONNECTED, LinkDown, ValveLink
from reward.outcome import DELIVERED, FAILED
from reward.pending import RECONCILING, Pending

# What an entry of the board's pulse log means (LogReading.action).
SETTLED = "settled"  # the log says what the valve did: the outcome is status/reason/dispensed_ul/open_us
STILL_OPEN = "still_open"  # the valve is still open for it: close it, then ask again
UNKNOWN = "unknown"  # the log cannot tell: the volume is unknown (reason says why)
BOARD_REFUSED = "board_refused"  # the board refused the pulse and no attempt of it ran: its NAK is the outcome

MAX_ABANDONED = 64


class LogReading(msgspec.Struct, frozen=True, kw_only=True):
    """What the board's pulse-log entry says about a pending pulse."""

    action: str
    status: str = ""
    reason: str = ""
    dispensed_ul: float = 0.0
    open_us: int = -1


def read_log_entry(pending: Pending, info: p.LogInfo, calibration: ValveCalibration | None) -> LogReading:
    """What the board's log entry ``info`` (for ``pending.seq``) means for ``pending``."""
    why = pending.why
    if info.state == p.LOG_OPEN:  # still open (not after a CLOSE or a HELLO): close it, then ask again
        return LogReading(action=STILL_OPEN)
    if info.state == p.LOG_UNKNOWN:
        if pending.t_ack:
            return LogReading(action=UNKNOWN, reason=f"{why}; the board acknowledged the pulse but its log has no "
                                                     "record of it")
        if pending.nak is not None:
            return LogReading(action=BOARD_REFUSED)
        return LogReading(action=SETTLED, status=FAILED, dispensed_ul=0.0,
                          reason=f"{why}; the board's log shows the valve did not open for it")
    if info.duration_us != pending.duration_us:
        return LogReading(action=UNKNOWN, reason=f"{why}; the board's log entry for seq {info.pulse_seq} is a "
                                                 f"{info.duration_us} us pulse, not this {pending.duration_us} us one")
    if info.state == p.LOG_RESET:
        return LogReading(action=SETTLED, status=FAILED, dispensed_ul=pending.volume_ul,
                          reason=f"{why}; the board was reset while the valve was open for it: open for at most "
                                 f"{pending.open_ms:.1f} ms, volume unknown")
    dispensed = pending.dispensed(info.open_us, calibration)
    if info.state == p.CAUSE_TIMER:
        return LogReading(action=SETTLED, status=DELIVERED, open_us=info.open_us, dispensed_ul=dispensed,
                          reason=f"{why}; delivered, according to the board's pulse log")
    return LogReading(action=SETTLED, status=FAILED, open_us=info.open_us, dispensed_ul=dispensed,
                      reason=f"{why}; the board's log: valve {p.DONE_CAUSES[info.state]} after "
                             f"{info.open_us / 1000:.1f} of {pending.open_ms:.1f} ms: partial delivery")


class Reconciler:
    """Asks the board's pulse log about a pulse, and remembers the pulses reported with their volume unknown.

    :attr:`abandoned` (seq -> request id, the last :data:`MAX_ABANDONED`) lets a DONE that comes after all
    be reported as a late completion.
    """

    def __init__(self, cfg: RewardConfig, link: ValveLink, clock: Callable[[], int]) -> None:
        self.cfg = cfg
        self.link = link
        self._clock = clock
        self.abandoned: dict[int, str] = {}

    def begin(self, pending: Pending, why: str) -> None:
        """Stop sending and waiting: what the valve did for this pulse comes from the board's pulse log.

        Asked now if the link is up (every line sent before, a CLOSE included, is executed first), else after
        the handshake that re-links the board (which closes the valve).
        """
        if pending.phase != RECONCILING:
            pending.phase = RECONCILING
            pending.why = why
            pending.give_up_at = self._clock() + int(self.cfg.reconcile_timeout_s * 1e9)
        pending.query_seq = -1
        if self.link.state == CONNECTED:
            self.ask(pending)

    def ask(self, pending: Pending) -> None:
        """Send the LOG query for ``pending`` (if the link is down, it is asked again once the link is back)."""
        seq = self.link.next_seq()
        try:
            t = self.link.send(p.encode_log(seq, pending.seq))
        except LinkDown:
            pending.query_seq = -1  # asked again once the link is back
            return
        pending.query_seq = seq
        pending.query_deadline = t + int(self.cfg.ack_timeout_s * 1e9)

    def remember(self, pending: Pending) -> None:
        """``pending`` is reported with its volume unknown: keep its seq, for a DONE that comes late."""
        self.abandoned[pending.seq] = pending.request_id
        while len(self.abandoned) > MAX_ABANDONED:
            del self.abandoned[next(iter(self.abandoned))]
