"""Reward delivery policy: one state machine from request to exactly one outcome.

:class:`RewardController` turns "give request R x µL" (:meth:`RewardController.request`) or "open the valve
for x ms" (:meth:`RewardController.pulse`: test pulses, flushes, calibration) into an acknowledged valve
pulse and a record of what happened, and refuses what policy forbids. It is non-blocking: the reward
process calls request/pulse when a request arrives and :meth:`RewardController.poll` in its loop; poll
also keeps the board's heartbeat going.

Guarantees:

* every request ends in exactly one :class:`RewardOutcome` (delivered, failed or refused);
* a retry re-sends the same line with the same sequence number, and the board never executes a
  sequence number twice, so retries cannot double-deliver;
* one valve budget: rewards, test pulses and flushes all go through the minimum interval between
  openings and the per-session volume cap, unless an operator override is explicit (``override=True``,
  recorded with who issued it); one pulse at a time; bounded open time. The board adds its own
  duty-cycle limit, which nothing on the host can override (refusals are REFUSED with board_nak DUTY);
* what the valve dispensed is exact: when a pulse's completion is not read (lost DONE, no
  acknowledgement, link loss, board reset), the pulse is never re-sent: after a CLOSE (or the new
  handshake, which closes the valve) the board's pulse log is asked (LOG) what it did, and the outcome
  says so (``reconciled``). Only when the log cannot be read (the board was power-cycled, or stays
  unreachable for ``reconcile_timeout_s``) is the volume unknown: the outcome is failed and counts the
  requested volume as an upper bound;
* after :meth:`enter_safe_state` the valve is closed and every later request is refused;
* CLOSE (operator or safe state) abandons a pulse the board has not acknowledged, so no retry can
  open the valve after it.

The pulse in flight (retries, acknowledgement, DONE, reconciliation) is :class:`reward.delivery.PulseDelivery`;
the minimum interval, volume cap and totals are :class:`reward.budget.ValveBudget`; the records it hands out are
in :mod:`reward.outcome`. This module is the policy in front (what may be asked, refusals, safe state) and the
books behind (counts, the budget's totals, licks and notices).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from reward import protocol as p
from reward.budget import ValveBudget
from reward.calibration import ValveCalibration
from reward.config import RewardConfig
from reward.delivery import PulseDelivery
from reward.link import CONNECTED, LinkEvent, Received, ValveLink
from reward.outcome import (
    DELIVERED,
    FAILED,
    REFUSED,
    SOURCE_TEST,
    VOLUME_OTHER,
    VOLUME_REWARD,
    BoardNotice,
    LickEvent,
    RewardOutcome,
)
from reward.pending import RECONCILING, Pending
from rig.core.clock import now_ns

Event = RewardOutcome | LickEvent | LinkEvent | BoardNotice


class RewardController:
    """Non-blocking reward state machine over a :class:`ValveLink` (see module docstring)."""

    def __init__(
        self,
        cfg: RewardConfig,
        calibration: ValveCalibration | None,
        link: ValveLink,
        *,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.cfg = cfg
        self.calibration = calibration
        self.link = link
        self._clock = clock
        self._out: list[Event] = []
        self._safe_reason = ""
        self._last_lick_count: int | None = None
        self.budget = ValveBudget(cfg)
        """Minimum interval, volume cap and the session's volume totals (``reward_ul``, ``other_ul``...)."""
        self.counts = {DELIVERED: 0, FAILED: 0, REFUSED: 0, "retries": 0, "licks": 0, "link_losses": 0,
                       "reconciled": 0}
        self._delivery = PulseDelivery(cfg, calibration, link, clock, record=self._record, notice=self._notice,
                                       counts=self.counts)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the link (the handshake completes during poll)."""
        self.link.open()

    def close(self) -> None:
        """Fail anything pending, close the valve and the link."""
        self._delivery.close()
        self.link.close()
        for item in self.link.poll(0.0):  # the "closed" link event, for whoever polls next
            self._handle(item)

    def shutdown(self, timeout_s: float = 1.0) -> list[Event]:
        """End of session: let a running pulse finish (up to ``timeout_s``), then :meth:`close`.

        Returns every event produced meanwhile, including the outcome of anything still pending.
        """
        events: list[Event] = []
        deadline = self._clock() + int(timeout_s * 1e9)
        while self._delivery.pending is not None and (remaining := deadline - self._clock()) > 0:
            events += self.poll(remaining / 1e9)
        self.close()
        out, self._out = self._out, []
        return events + out

    @property
    def safe(self) -> bool:
        return bool(self._safe_reason)

    @property
    def busy(self) -> bool:
        return self._delivery.pending is not None

    # ------------------------------------------------------------ commands

    def request(
        self,
        request_id: str,
        volume_ul: float,
        source: str,
        meta: dict[str, Any] | None = None,
        *,
        override: bool = False,
        issued_by: str = "",
    ) -> None:
        """Ask for one reward. Its outcome (possibly an immediate refusal) comes out of :meth:`poll`.

        ``override``: an operator's explicit override of the minimum interval and the session volume cap
        (the volume still counts); ``issued_by`` says who asked, and goes in the outcome.
        """
        t = self._clock()
        meta = {} if meta is None else meta

        def refuse(reason: str, open_ms: float = 0.0) -> None:
            self._refuse(request_id, source, meta, volume_ul, open_ms, VOLUME_REWARD, override, issued_by, reason, t)

        if self._safe_reason:
            return refuse(f"safe state: {self._safe_reason}")
        if not (isinstance(volume_ul, int | float) and math.isfinite(volume_ul) and volume_ul > 0):
            return refuse(f"invalid volume {volume_ul!r} uL: must be a finite number > 0")
        if self.calibration is None:
            return refuse("no valve calibration loaded: run `rig valve calibrate`")
        try:
            open_ms = self.calibration.duration_ms(volume_ul)
        except ValueError as exc:
            return refuse(str(exc))
        limit_ms = self._max_open_ms()
        if open_ms > limit_ms:
            return refuse(f"{volume_ul:g} uL needs {open_ms:.1f} ms open, above the {limit_ms:g} ms limit", open_ms)
        reason = self._budget_problem(request_id, volume_ul, t, override, issued_by)
        if reason:
            return refuse(reason, open_ms)
        self._start_pulse(request_id, source, meta, volume_ul, open_ms, "OPEN", t, VOLUME_REWARD, override, issued_by)

    def pulse(
        self,
        request_id: str,
        open_ms: float,
        source: str = SOURCE_TEST,
        meta: dict[str, Any] | None = None,
        *,
        test: bool = True,
        override: bool = False,
        issued_by: str = "",
    ) -> None:
        """An operator pulse of ``open_ms`` (test pulse, flush, calibration): bounded and acknowledged.

        Up to the board's maximum open time (not the config's reward limit). Like a reward it goes through the
        minimum interval and the session volume cap unless ``override`` (see :meth:`request`); its estimated
        volume counts as "other" water, not as a reward.
        """
        t = self._clock()
        meta = {} if meta is None else meta
        valid = isinstance(open_ms, int | float) and not isinstance(open_ms, bool) and math.isfinite(open_ms)
        volume = self.calibration.volume_ul(open_ms) if self.calibration is not None and valid else 0.0
        reason = ""
        if self._safe_reason:
            reason = f"safe state: {self._safe_reason}"
        elif not (valid and open_ms > 0):
            reason = f"invalid open time {open_ms!r} ms"
        elif open_ms > self._max_open_ms(operator=True):
            reason = f"{open_ms:g} ms is above the {self._max_open_ms(operator=True):g} ms limit"
        else:
            reason = self._budget_problem(request_id, volume, t, override, issued_by)
        if reason:
            self._refuse(request_id, source, meta, volume, open_ms, VOLUME_OTHER, override, issued_by, reason, t)
            return
        self._start_pulse(request_id, source, meta, volume, open_ms, "TEST" if test else "OPEN", t, VOLUME_OTHER,
                          override, issued_by)

    def test_pulse(
        self, request_id: str = "", open_ms: float | None = None, *, override: bool = False, issued_by: str = ""
    ) -> None:
        """One test pulse of ``open_ms`` (default ``test_pulse_ms`` from the config)."""
        ms = self.cfg.test_pulse_ms if open_ms is None else open_ms
        self.pulse(request_id or f"test-{self._clock()}", ms, SOURCE_TEST, override=override, issued_by=issued_by)

    def close_valve(self, reason: str = "valve closed by operator") -> bool:
        """Send CLOSE now; returns whether it was sent.

        A pulse the board has not acknowledged yet is abandoned (never retried: a retry after the CLOSE
        could open the valve again); its outcome comes from the board's pulse log. An acknowledged pulse
        completes from the board's DONE (partial delivery). False means the link is down and nothing was
        sent (the board's watchdog closes the valve on its own once heartbeats stop).
        """
        return self._delivery.close_valve(reason)

    def enter_safe_state(self, reason: str) -> bool:
        """Close the valve and refuse every later request; returns whether the CLOSE was sent.

        An unacknowledged pulse is abandoned; an acknowledged one completes as failed (cut short).
        """
        self._safe_reason = reason or "requested"
        self._delivery.retry = False
        return self.close_valve(f"valve closed by safe state ({self._safe_reason})")

    # ------------------------------------------------------------ driving

    def tick(self) -> list[Event]:
        """Service the link without waiting (heartbeats, timeouts); same as ``poll(0)``."""
        return self.poll(0.0)

    def poll(self, timeout_s: float = 0.0) -> list[Event]:
        """Wait up to ``timeout_s`` for something to happen; return outcomes, licks, link changes, notices."""
        deadline = self._clock() + int(max(0.0, timeout_s) * 1e9)
        while True:
            # Read before judging timeouts: after a stall the ack may already be waiting.
            now = self._clock()
            wait_ns = 0 if self._out else deadline - now
            timer = self._delivery.next_timer()
            if timer is not None:
                wait_ns = min(wait_ns, timer - now)
            for item in self.link.poll(max(0, wait_ns) / 1e9):
                self._handle(item)
            self._delivery.check_timers(self._clock())
            if self._out or self._clock() >= deadline:
                break
        out, self._out = self._out, []
        return out

    def stats(self) -> dict[str, float]:
        """Small counters for the process heartbeat."""
        return {
            "delivered": self.counts[DELIVERED],
            "failed": self.counts[FAILED],
            "refused": self.counts[REFUSED],
            "retries": self.counts["retries"],
            "reconciled": self.counts["reconciled"],
            "licks": self.counts["licks"],
            "link_losses": self.counts["link_losses"],
            "delivered_ul": self.budget.delivered_ul,
            "committed_ul": self.budget.committed_ul,
            "reward_ul": self.budget.reward_ul,
            "other_ul": self.budget.other_ul,
            "link_rtt_ms": self.link.last_rtt_ns / 1e6 if self.link.last_rtt_ns >= 0 else -1.0,
        }

    # ------------------------------------------------------------ policy

    def _max_open_ms(self, operator: bool = False) -> float:
        board_max = self.link.board.max_open_ms if self.link.board is not None else p.FIRMWARE_MAX_OPEN_MS
        return float(board_max) if operator else min(self.cfg.max_open_ms, board_max)

    def _budget_problem(self, request_id: str, volume_ul: float, t: int, override: bool, issued_by: str) -> str:
        """Why the valve budget refuses a pulse now ("" = it may go): busy, minimum interval, volume cap.

        An override lets the interval and the cap pass (never a running pulse), with a notice naming who asked.
        """
        pending = self._delivery.pending
        if pending is not None:
            what = "awaits the board's pulse log" if pending.phase == RECONCILING else "is still in progress"
            return f"busy: {pending.request_id!r} {what}"
        refusal, overridden = self.budget.check(volume_ul, t, override)
        if overridden:
            self._notice("operator_override", f"{request_id!r}: override by {issued_by or 'an unnamed operator'}, "
                                              f"not applied: {overridden}")
        return refusal

    def _refuse(
        self, request_id: str, source: str, meta: dict[str, Any], volume_ul: float, open_ms: float, volume_kind: str,
        override: bool, issued_by: str, reason: str, t: int,
    ) -> None:
        self._out.append(
            RewardOutcome(
                request_id=request_id, status=REFUSED, reason=reason, volume_ul=volume_ul, open_ms=open_ms,
                source=source, t_received=t, meta=meta, volume_kind=volume_kind, override=override,
                issued_by=issued_by,
            )
        )
        self.counts[REFUSED] += 1

    # ------------------------------------------------------------ the pulse and its outcome

    def _start_pulse(
        self, request_id: str, source: str, meta: dict[str, Any], volume: float, open_ms: float, command: str, t: int,
        volume_kind: str, override: bool, issued_by: str,
    ) -> None:
        if self.link.state != CONNECTED:
            self._out.append(
                RewardOutcome(
                    request_id=request_id, status=FAILED, volume_ul=volume, open_ms=open_ms, source=source,
                    reason=f"reward board not connected ({self.link.state}"
                    + (f": {self.link.last_error})" if self.link.last_error else ")"),
                    t_received=t, meta=meta, volume_kind=volume_kind, override=override, issued_by=issued_by,
                )
            )
            self.counts[FAILED] += 1
            return
        duration_us = max(1, round(open_ms * 1000))
        seq = self.link.next_seq()
        line = p.encode_open(seq, duration_us) if command == "OPEN" else p.encode_test(seq, duration_us)
        pending = Pending(
            request_id=request_id, source=source, meta=meta, volume_ul=volume, open_ms=open_ms, command=command,
            seq=seq, duration_us=duration_us, line=line, t_received=t, volume_kind=volume_kind, override=override,
            issued_by=issued_by,
        )
        # Counted before the write: a pulse whose ack is lost may still have been delivered. _record corrects
        # it to what the valve dispensed.
        self.budget.commit(volume)
        self._delivery.send(pending)
        if pending.t_written:
            self.budget.opened(pending.t_written)

    def _record(self, outcome: RewardOutcome) -> None:
        """A pulse ended: count it, settle the budget to what the valve dispensed, hand the outcome out."""
        self.counts[outcome.status] += 1
        self.counts["reconciled"] += outcome.reconciled
        self.budget.settle(outcome.volume_ul, outcome.dispensed_ul, outcome.volume_kind, outcome.status == DELIVERED)
        self._out.append(outcome)

    def _notice(self, code: str, message: str) -> None:
        self._out.append(BoardNotice(code=code, message=message, t_ns=self._clock()))

    # ------------------------------------------------------------ what the link reports

    def _handle(self, item: LinkEvent | Received) -> None:
        if isinstance(item, LinkEvent):
            self._on_link_event(item)
            return
        msg, t_read = item.message, item.t_read
        if self._delivery.handle(msg, t_read):  # ACK, NAK, DONE: about pulses
            return
        if isinstance(msg, p.LickEdge):
            missed = 0
            if self._last_lick_count is not None:
                missed = max(0, ((msg.count - self._last_lick_count) & p.MAX_U32) - 1)
            self._last_lick_count = msg.count
            self.counts["licks"] += msg.onset
            mapped = self.link.board_to_host_ns(msg.board_us)
            self._out.append(
                LickEvent(
                    onset=msg.onset, board_us=msg.board_us, t_ns=mapped if mapped is not None else 0,
                    t_received=t_read, count=msg.count, missed=missed,
                )
            )
            return
        if isinstance(msg, p.BoardError):
            self._notice("board_rejected_line", f"board rejected a line from the host: {msg.code}")
            return
        if isinstance(msg, p.LineError):
            self._notice("corrupt_board_line", f"unusable line from the board ({msg.code}: {msg.detail}): {msg.raw!r}")
            return

    def _on_link_event(self, item: LinkEvent) -> None:
        self._out.append(item)
        if item.state == "connected":
            self._last_lick_count = None  # a reset board counts licks from 1 again
        elif item.state in ("lost", "watchdog_tripped"):
            self.counts["link_losses"] += 1
        self._delivery.on_link_event(item)
