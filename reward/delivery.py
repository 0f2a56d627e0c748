"""The pulse in flight: one valve pulse through the board exactly once, and what it dispensed.

:class:`PulseDelivery` is the part of the reward controller that talks to the board about the one pending
pulse: it writes the command, re-sends the same line (same sequence number) until the board acknowledges it,
waits for its DONE, and, when the pulse's fate is not read (no acknowledgement, lost DONE, link loss, board
reset), closes the valve and settles the pulse from the board's pulse log (:mod:`reward.reconcile`) instead
of re-sending it. Every pulse it is given ends in exactly one :class:`reward.outcome.RewardOutcome`, handed
to ``record``.

Kept apart from :mod:`reward.controller`, which decides whether a pulse may go at all (safe state, limits,
the valve budget) and keeps the books: here is only the protocol, with the link and the board.
"""

from __future__ import annotations

from collections.abc import Callable

from reward import protocol as p
from reward.calibration import ValveCalibration
from reward.config import RewardConfig
from reward.link import LinkDown, LinkEvent, ValveLink
from reward.outcome import DELIVERED, FAILED, REFUSED, RewardOutcome
from reward.pending import RECONCILING, RUNNING, SENDING, Pending
from reward.reconcile import BOARD_REFUSED, STILL_OPEN, UNKNOWN, Reconciler, read_log_entry


class PulseDelivery:
    """One pending pulse at a time over ``link`` (see module docstring).

    ``record`` receives each finished pulse's outcome, ``notice`` (code, message) what the operator should
    know; ``counts["retries"]`` counts re-sent commands. :attr:`retry` False (safe state) stops re-sending.
    """

    def __init__(
        self,
        cfg: RewardConfig,
        calibration: ValveCalibration | None,
        link: ValveLink,
        clock: Callable[[], int],
        *,
        record: Callable[[RewardOutcome], None],
        notice: Callable[[str, str], None],
        counts: dict[str, int],
    ) -> None:
        self.cfg = cfg
        self.calibration = calibration
        self.link = link
        self._record = record
        self._notice = notice
        self._counts = counts
        self.reconciler = Reconciler(cfg, link, clock)
        self.pending: Pending | None = None
        self.retry = True

    def send(self, pending: Pending) -> None:
        """Make ``pending`` the pulse in flight (there is none: the controller checked) and write its first attempt."""
        self.pending = pending
        self._write_attempt(pending)

    def close_valve(self, reason: str) -> bool:
        """Send CLOSE; a pulse not acknowledged yet is abandoned to the board's log (see the controller's)."""
        pending = self.pending
        abandon = pending is not None and pending.phase == SENDING
        sent = self._send_close()
        if abandon:
            assert pending is not None
            self.reconciler.begin(pending, f"abandoned: {reason} before the board acknowledged the pulse")
        return sent

    def close(self) -> None:
        """The controller closes: the pending pulse, if any, ends with its volume unknown."""
        pending = self.pending
        if pending is not None:
            if pending.phase == RECONCILING:
                self._finish_unknown(pending, "reward controller closed before the board's pulse log was read")
            else:
                self._finish_unknown(pending, "reward controller closed before completion")

    # ------------------------------------------------------------ timers

    def next_timer(self) -> int | None:
        """When :meth:`check_timers` has something to do for the pending pulse (None: no pulse)."""
        pending = self.pending
        if pending is None:
            return None
        if pending.phase == SENDING:
            return pending.ack_deadline
        if pending.phase == RUNNING:
            return pending.done_deadline
        if pending.query_seq >= 0:
            return min(pending.query_deadline, pending.give_up_at)
        return pending.give_up_at

    def check_timers(self, now: int) -> None:
        pending = self.pending
        if pending is None:
            return
        if pending.phase == RUNNING:
            if now >= pending.done_deadline:
                self._abandon(pending, "no completion message from the board in time")
        elif pending.phase == SENDING:
            if now >= pending.ack_deadline:
                if pending.attempts <= self.cfg.retries and self.retry:
                    self._write_attempt(pending)
                else:
                    self._abandon(
                        pending,
                        f"no acknowledgement after {pending.attempts} attempts "
                        f"({self.cfg.ack_timeout_s * 1000:g} ms each)",
                    )
        elif now >= pending.give_up_at:
            self._finish_unknown(
                pending, f"{pending.why}; the board's pulse log could not be read within "
                         f"{self.cfg.reconcile_timeout_s:g} s"
            )
        elif pending.query_seq >= 0 and now >= pending.query_deadline:
            self.reconciler.ask(pending)  # the query or its answer was lost: ask again

    # ------------------------------------------------------------ what the board and the link report

    def handle(self, msg: p.BoardMessage | p.LineError, t_read: int) -> bool:
        """Take an ACK, NAK or DONE line (True); other messages are not about pulses (False)."""
        pending = self.pending
        if isinstance(msg, p.Ack):
            if pending is None:
                return True
            if msg.seq == pending.seq and pending.t_ack == 0:
                pending.t_ack = t_read
                pending.board_us_ack = msg.board_us
                if pending.phase == SENDING:
                    pending.phase = RUNNING
                    pending.done_deadline = t_read + int(pending.open_ms * 1e6 + self.cfg.done_margin_s * 1e9)
            elif msg.command == "LOG" and msg.seq == pending.query_seq and pending.phase == RECONCILING:
                info = p.log_info(msg)
                if info.pulse_seq == pending.seq:
                    self._settle_from_log(pending, info, t_read)
            return True
        if isinstance(msg, p.Nak):
            if pending is not None and msg.seq == pending.seq:
                if pending.attempts == 1 and pending.phase == SENDING:
                    self._finish_nak(pending, msg)
                else:  # delayed, and another attempt of it may have run: the log decides
                    pending.nak = msg
                    self.reconciler.begin(pending, f"the board refused an attempt ({msg.code} {msg.detail})")
            elif pending is not None and msg.seq == pending.query_seq:
                self._finish_unknown(pending, f"{pending.why}; the board refused the LOG query: {msg.code}")
            elif msg.code != p.NAK_NOLINK:
                self._notice("board_nak", f"board refused command {msg.seq}: {msg.code} {msg.detail}")
            return True
        if isinstance(msg, p.Done):
            if pending is not None and msg.seq == pending.seq:
                # (If the ack was lost, the DONE alone proves the pulse ran; t_ack stays 0.)
                # (While reconciling, the DONE answers first: it ran to completion, or the CLOSE cut it short.)
                dispensed = pending.dispensed(msg.open_us, self.calibration)
                why = f"{pending.why}; " if pending.phase == RECONCILING else ""
                if msg.cause == p.CAUSE_TIMER:
                    self._finish(pending, DELIVERED, f"{why}completed, said the board's DONE" if why else "",
                                 t_done=t_read, board_us_done=msg.board_us, open_us=msg.open_us, dispensed=dispensed)
                else:
                    self._finish(
                        pending, FAILED,
                        f"{why}valve {p.DONE_CAUSES[msg.cause]} after {msg.open_us / 1000:.1f} of "
                        f"{pending.open_ms:.1f} ms: partial delivery",
                        t_done=t_read, board_us_done=msg.board_us, open_us=msg.open_us, dispensed=dispensed,
                    )
            elif msg.seq in self.reconciler.abandoned:
                self._notice(
                    "late_completion",
                    f"request {self.reconciler.abandoned[msg.seq]!r}, reported with its volume unknown, opened the "
                    f"valve for {msg.open_us / 1000:.1f} ms ({p.DONE_CAUSES[msg.cause]})",
                )
            return True
        return False

    def on_link_event(self, item: LinkEvent) -> None:
        """What a change of the link means for the pending pulse."""
        pending = self.pending
        if pending is None:
            return
        if item.state == "connected":
            if pending.phase == RECONCILING:
                if self.link.resumed:
                    self.reconciler.ask(pending)
                else:
                    self._finish_unknown(pending, f"{pending.why}; the board's pulse log is gone (it was power-"
                                                  "cycled, or another host linked to it)")
        elif item.state in ("lost", "watchdog_tripped"):
            if pending.phase == RECONCILING:
                pending.query_seq = -1  # its answer will not come on this link: asked again after the handshake
            else:
                acked = pending.t_ack > 0
                self.reconciler.begin(
                    pending,
                    f"link {item.state} ({item.detail}) "
                    + ("while the valve was open" if acked else "before the board acknowledged the pulse"),
                )
        elif item.state == "closed":
            self._finish_unknown(pending, f"link closed ({item.detail})")

    # ------------------------------------------------------------ internals

    def _write_attempt(self, pending: Pending) -> None:
        pending.attempts += 1
        try:
            t = self.link.send(pending.line)
        except LinkDown as exc:  # part of it, or an earlier attempt, may have reached the board: the log says
            self.reconciler.begin(pending, f"could not write attempt {pending.attempts} of the command: {exc}")
            return
        if pending.attempts == 1:
            pending.t_written = t
        else:
            self._counts["retries"] += 1
        pending.t_last_write = t
        pending.ack_deadline = t + int(self.cfg.ack_timeout_s * 1e9)

    def _abandon(self, pending: Pending, why: str) -> None:
        """A pulse whose fate is unknown on a live link: close the valve, then ask the board's log."""
        if self._send_close():
            why += "; valve closed by command"
        else:  # no caller sees a return value here: tell the operator
            self._notice(
                "close_not_sent",
                f"could not send CLOSE for request {pending.request_id!r} (reward board link "
                f"{self.link.state}); the board's watchdog closes the valve within {self.cfg.watchdog_ms} ms",
            )
        self.reconciler.begin(pending, why)

    def _settle_from_log(self, pending: Pending, info: p.LogInfo, t_read: int) -> None:
        """The board's log says what became of the pulse: that is the outcome."""
        reading = read_log_entry(pending, info, self.calibration)
        if reading.action == STILL_OPEN:
            self._send_close()
            self.reconciler.ask(pending)
        elif reading.action == UNKNOWN:
            self._finish_unknown(pending, reading.reason)
        elif reading.action == BOARD_REFUSED:
            assert pending.nak is not None
            self._finish_nak(pending, pending.nak)
        else:
            self._finish(pending, reading.status, reading.reason, open_us=reading.open_us,
                         dispensed=reading.dispensed_ul, reconciled=True, t_done=t_read)

    def _send_close(self) -> bool:
        try:
            self.link.send(p.encode_close(self.link.next_seq()))
        except LinkDown:
            return False  # the link loss itself is reported as a LinkEvent
        return True

    def _finish_nak(self, pending: Pending, nak: p.Nak) -> None:
        """The board refused the pulse and no attempt of it ran."""
        if nak.code == p.NAK_DUTY:
            board = self.link.board
            limit = (f"at most {board.duty_max_ms} ms open per {board.duty_window_ms / 1000:g} s"
                     if board is not None else "its open-time budget")
            self._finish(pending, REFUSED, f"board duty-cycle limit ({limit}): {nak.detail / 1000:.1f} ms of open "
                                           f"time left, {pending.open_ms:g} ms asked", dispensed=0.0,
                         board_nak=nak.code)
        else:
            self._finish(pending, FAILED, f"board refused the pulse: {nak.code} {nak.detail}", dispensed=0.0,
                         board_nak=nak.code)

    def _finish_unknown(self, pending: Pending, reason: str) -> None:
        """No one can tell what the valve did: failed, counted at the asked volume (an upper bound)."""
        self.reconciler.remember(pending)
        self._finish(pending, FAILED, f"{reason}: what the valve dispensed is unknown (at most {pending.open_ms:.1f} "
                                      "ms open)", dispensed=pending.volume_ul)

    def _finish(
        self, pending: Pending, status: str, reason: str, *, dispensed: float, t_done: int = 0,
        board_us_done: int = -1, open_us: int = -1, reconciled: bool = False, board_nak: str = "",
    ) -> None:
        assert self.pending is pending
        self.pending = None
        self._record(
            RewardOutcome(
                request_id=pending.request_id, status=status, reason=reason, volume_ul=pending.volume_ul,
                open_ms=pending.open_ms, source=pending.source, seq=pending.seq, attempts=pending.attempts,
                t_received=pending.t_received, t_written=pending.t_written, t_ack=pending.t_ack, t_done=t_done,
                board_us_done=board_us_done, board_us_ack=pending.board_us_ack, open_us=open_us, meta=pending.meta,
                dispensed_ul=dispensed, volume_kind=pending.volume_kind, reconciled=reconciled,
                override=pending.override, issued_by=pending.issued_by, board_nak=board_nak,
            )
        )
