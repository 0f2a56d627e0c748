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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

from reward import protocol as p
from reward.calibration import ValveCalibration
from reward.config import RewardConfig
from reward.link import CONNECTED, LinkDown, LinkEvent, Received, ValveLink
from rig.core.clock import now_ns

DELIVERED = "delivered"
FAILED = "failed"
REFUSED = "refused"

SOURCE_TEST = "test_pulse"
SOURCE_FLUSH = "flush"

# What a pulse's volume counts as (RewardOutcome.volume_kind): a reward for the mouse (request()), or
# water that is not a reward (pulse(): test pulses, flushes, calibration).
VOLUME_REWARD = "reward"
VOLUME_OTHER = "other"

# Phases of the pending pulse.
_SENDING = "sending"  # written, not acknowledged yet (retried with the same seq)
_RUNNING = "running"  # acknowledged: the valve is open until its DONE
_RECONCILING = "reconciling"  # its fate is not known: the board's pulse log is asked, never the pulse re-sent


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


Event = RewardOutcome | LickEvent | LinkEvent | BoardNotice


class _Pending(msgspec.Struct, kw_only=True):
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
    phase: str = _SENDING
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
        self._pending: _Pending | None = None
        self._out: list[Event] = []
        self._abandoned: dict[int, str] = {}  # seq -> request id of pulses reported with their fate unknown
        self._safe_reason = ""
        self._last_open_ns: int | None = None
        self._last_lick_count: int | None = None
        self.committed_ul = 0.0
        """What the volume cap counts: dispensed (or, where unknown, asked) volume of every pulse sent so far."""
        self.delivered_ul = 0.0
        """What delivered pulses dispensed."""
        self.reward_ul = 0.0
        """What the valve dispensed for rewards (request()), delivered or cut short."""
        self.other_ul = 0.0
        """What the valve dispensed for test pulses, flushes and calibration (pulse())."""
        self.counts = {DELIVERED: 0, FAILED: 0, REFUSED: 0, "retries": 0, "licks": 0, "link_losses": 0,
                       "reconciled": 0}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the link (the handshake completes during poll)."""
        self.link.open()

    def close(self) -> None:
        """Fail anything pending, close the valve and the link."""
        pending = self._pending
        if pending is not None:
            self._remember_abandoned(pending)
            if pending.phase == _RECONCILING:
                self._finish_unknown(pending, "reward controller closed before the board's pulse log was read")
            else:
                self._finish_unknown(pending, "reward controller closed before completion")
        self.link.close()
        for item in self.link.poll(0.0):  # the "closed" link event, for whoever polls next
            self._handle(item)

    def shutdown(self, timeout_s: float = 1.0) -> list[Event]:
        """End of session: let a running pulse finish (up to ``timeout_s``), then :meth:`close`.

        Returns every event produced meanwhile, including the outcome of anything still pending.
        """
        events: list[Event] = []
        deadline = self._clock() + int(timeout_s * 1e9)
        while self._pending is not None and (remaining := deadline - self._clock()) > 0:
            events += self.poll(remaining / 1e9)
        self.close()
        out, self._out = self._out, []
        return events + out

    @property
    def safe(self) -> bool:
        return bool(self._safe_reason)

    @property
    def busy(self) -> bool:
        return self._pending is not None

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
        pending = self._pending
        abandon = pending is not None and pending.phase == _SENDING
        sent = self._send_close()
        if abandon:
            assert pending is not None
            self._reconcile(pending, f"abandoned: {reason} before the board acknowledged the pulse")
        return sent

    def enter_safe_state(self, reason: str) -> bool:
        """Close the valve and refuse every later request; returns whether the CLOSE was sent.

        An unacknowledged pulse is abandoned; an acknowledged one completes as failed (cut short).
        """
        self._safe_reason = reason or "requested"
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
            if self._pending is not None:
                wait_ns = min(wait_ns, self._next_timer(self._pending) - now)
            for item in self.link.poll(max(0, wait_ns) / 1e9):
                self._handle(item)
            self._check_timers(self._clock())
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
            "delivered_ul": self.delivered_ul,
            "committed_ul": self.committed_ul,
            "reward_ul": self.reward_ul,
            "other_ul": self.other_ul,
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
        if self._pending is not None:
            what = "awaits the board's pulse log" if self._pending.phase == _RECONCILING else "is still in progress"
            return f"busy: {self._pending.request_id!r} {what}"
        problems: list[str] = []
        if self._last_open_ns is not None:
            since_s = (t - self._last_open_ns) / 1e9
            if since_s < self.cfg.min_interval_s:
                problems.append(
                    f"minimum interval: {since_s:.3f} s since the last valve opening < {self.cfg.min_interval_s:g} s"
                )
        if self.committed_ul + volume_ul > self.cfg.max_volume_ul + 1e-9:
            problems.append(
                f"session volume cap: {self.committed_ul:g} + {volume_ul:g} uL > {self.cfg.max_volume_ul:g} uL"
            )
        if not problems:
            return ""
        if not override:
            return "; ".join(problems)
        self._notice("operator_override", f"{request_id!r}: override by {issued_by or 'an unnamed operator'}, "
                                          f"not applied: {'; '.join(problems)}")
        return ""

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

    # ------------------------------------------------------------ the pending pulse

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
        pending = _Pending(
            request_id=request_id, source=source, meta=meta, volume_ul=volume, open_ms=open_ms, command=command,
            seq=seq, duration_us=duration_us, line=line, t_received=t, volume_kind=volume_kind, override=override,
            issued_by=issued_by,
        )
        self._pending = pending
        # Counted before the write: a pulse whose ack is lost may still have been delivered. _finish corrects
        # it to what the valve dispensed.
        self.committed_ul += volume
        self._write_attempt(pending)
        if pending.t_written:
            self._last_open_ns = pending.t_written

    def _write_attempt(self, pending: _Pending) -> None:
        pending.attempts += 1
        try:
            t = self.link.send(pending.line)
        except LinkDown as exc:  # part of it, or an earlier attempt, may have reached the board: the log says
            self._reconcile(pending, f"could not write attempt {pending.attempts} of the command: {exc}")
            return
        if pending.attempts == 1:
            pending.t_written = t
        else:
            self.counts["retries"] += 1
        pending.t_last_write = t
        pending.ack_deadline = t + int(self.cfg.ack_timeout_s * 1e9)

    def _next_timer(self, pending: _Pending) -> int:
        if pending.phase == _SENDING:
            return pending.ack_deadline
        if pending.phase == _RUNNING:
            return pending.done_deadline
        if pending.query_seq >= 0:
            return min(pending.query_deadline, pending.give_up_at)
        return pending.give_up_at

    def _check_timers(self, now: int) -> None:
        pending = self._pending
        if pending is None:
            return
        if pending.phase == _RUNNING:
            if now >= pending.done_deadline:
                self._abandon(pending, "no completion message from the board in time")
        elif pending.phase == _SENDING:
            if now >= pending.ack_deadline:
                if pending.attempts <= self.cfg.retries and not self._safe_reason:
                    self._write_attempt(pending)
                else:
                    self._abandon(
                        pending,
                        f"no acknowledgement after {pending.attempts} attempts "
                        f"({self.cfg.ack_timeout_s * 1000:g} ms each)",
                    )
        elif now >= pending.give_up_at:
            self._remember_abandoned(pending)
            self._finish_unknown(
                pending, f"{pending.why}; the board's pulse log could not be read within "
                         f"{self.cfg.reconcile_timeout_s:g} s"
            )
        elif pending.query_seq >= 0 and now >= pending.query_deadline:
            self._query_log(pending)  # the query or its answer was lost: ask again

    def _abandon(self, pending: _Pending, why: str) -> None:
        """A pulse whose fate is unknown on a live link: close the valve, then ask the board's log."""
        if self._send_close():
            why += "; valve closed by command"
        else:  # no caller sees a return value here: tell the operator
            self._notice(
                "close_not_sent",
                f"could not send CLOSE for request {pending.request_id!r} (reward board link "
                f"{self.link.state}); the board's watchdog closes the valve within {self.cfg.watchdog_ms} ms",
            )
        self._reconcile(pending, why)

    def _reconcile(self, pending: _Pending, why: str) -> None:
        """Stop sending and waiting: what the valve did for this pulse comes from the board's pulse log.

        Asked now if the link is up (every line sent before, a CLOSE included, is executed first), else after
        the handshake that re-links the board (which closes the valve).
        """
        if pending.phase != _RECONCILING:
            pending.phase = _RECONCILING
            pending.why = why
            pending.give_up_at = self._clock() + int(self.cfg.reconcile_timeout_s * 1e9)
        pending.query_seq = -1
        if self.link.state == CONNECTED:
            self._query_log(pending)

    def _query_log(self, pending: _Pending) -> None:
        seq = self.link.next_seq()
        try:
            t = self.link.send(p.encode_log(seq, pending.seq))
        except LinkDown:
            pending.query_seq = -1  # asked again once the link is back
            return
        pending.query_seq = seq
        pending.query_deadline = t + int(self.cfg.ack_timeout_s * 1e9)

    def _settle_from_log(self, pending: _Pending, info: p.LogInfo, t_read: int) -> None:
        """The board's log says what became of the pulse: that is the outcome."""
        why = pending.why
        if info.state == p.LOG_OPEN:  # still open (not after a CLOSE or a HELLO): close it, then ask again
            self._send_close()
            self._query_log(pending)
            return
        if info.state == p.LOG_UNKNOWN:
            if pending.t_ack:
                self._remember_abandoned(pending)
                self._finish_unknown(pending, f"{why}; the board acknowledged the pulse but its log has no record "
                                              "of it")
            elif pending.nak is not None:
                self._finish_nak(pending, pending.nak)
            else:
                self._finish(pending, FAILED, f"{why}; the board's log shows the valve did not open for it",
                             dispensed=0.0, reconciled=True, t_done=t_read)
            return
        if info.duration_us != pending.duration_us:
            self._remember_abandoned(pending)
            self._finish_unknown(pending, f"{why}; the board's log entry for seq {info.pulse_seq} is a "
                                          f"{info.duration_us} us pulse, not this {pending.duration_us} us one")
            return
        if info.state == p.LOG_RESET:
            self._finish(pending, FAILED, f"{why}; the board was reset while the valve was open for it: open for "
                                          f"at most {pending.open_ms:.1f} ms, volume unknown",
                         dispensed=pending.volume_ul, reconciled=True, t_done=t_read)
            return
        dispensed = self._dispensed(pending, info.open_us)
        if info.state == p.CAUSE_TIMER:
            self._finish(pending, DELIVERED, f"{why}; delivered, according to the board's pulse log",
                         open_us=info.open_us, dispensed=dispensed, reconciled=True, t_done=t_read)
        else:
            self._finish(pending, FAILED, f"{why}; the board's log: valve {p.DONE_CAUSES[info.state]} after "
                                          f"{info.open_us / 1000:.1f} of {pending.open_ms:.1f} ms: partial delivery",
                         open_us=info.open_us, dispensed=dispensed, reconciled=True, t_done=t_read)

    def _finish_nak(self, pending: _Pending, nak: p.Nak) -> None:
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

    def _finish_unknown(self, pending: _Pending, reason: str) -> None:
        """No one can tell what the valve did: failed, counted at the asked volume (an upper bound)."""
        self._finish(pending, FAILED, f"{reason}: what the valve dispensed is unknown (at most {pending.open_ms:.1f} "
                                      "ms open)", dispensed=pending.volume_ul)

    def _dispensed(self, pending: _Pending, open_us: int) -> float:
        """Volume of an opening of ``open_us``, by the calibration (0 without one: nothing to estimate with)."""
        if open_us <= 0:
            return 0.0
        if open_us == pending.duration_us:
            return pending.volume_ul  # exactly what was asked (no round trip through the calibration)
        return self.calibration.volume_ul(open_us / 1000) if self.calibration is not None else 0.0

    def _send_close(self) -> bool:
        try:
            self.link.send(p.encode_close(self.link.next_seq()))
        except LinkDown:
            return False  # the link loss itself is reported as a LinkEvent
        return True

    def _finish(
        self, pending: _Pending, status: str, reason: str, *, dispensed: float, t_done: int = 0,
        board_us_done: int = -1, open_us: int = -1, reconciled: bool = False, board_nak: str = "",
    ) -> None:
        assert self._pending is pending
        self._pending = None
        self.counts[status] += 1
        self.counts["reconciled"] += reconciled
        self.committed_ul += dispensed - pending.volume_ul  # the cap counts what flowed, once it is known
        if pending.volume_kind == VOLUME_REWARD:
            self.reward_ul += dispensed
        else:
            self.other_ul += dispensed
        if status == DELIVERED:
            self.delivered_ul += dispensed
        self._out.append(
            RewardOutcome(
                request_id=pending.request_id, status=status, reason=reason, volume_ul=pending.volume_ul,
                open_ms=pending.open_ms, source=pending.source, seq=pending.seq, attempts=pending.attempts,
                t_received=pending.t_received, t_written=pending.t_written, t_ack=pending.t_ack, t_done=t_done,
                board_us_ack=pending.board_us_ack, board_us_done=board_us_done, open_us=open_us, meta=pending.meta,
                dispensed_ul=dispensed, volume_kind=pending.volume_kind, reconciled=reconciled,
                override=pending.override, issued_by=pending.issued_by, board_nak=board_nak,
            )
        )

    def _remember_abandoned(self, pending: _Pending) -> None:
        self._abandoned[pending.seq] = pending.request_id
        while len(self._abandoned) > 64:
            del self._abandoned[next(iter(self._abandoned))]

    def _notice(self, code: str, message: str) -> None:
        self._out.append(BoardNotice(code=code, message=message, t_ns=self._clock()))

    # ------------------------------------------------------------ what the link reports

    def _handle(self, item: LinkEvent | Received) -> None:
        if isinstance(item, LinkEvent):
            self._on_link_event(item)
            return
        msg, t_read = item.message, item.t_read
        pending = self._pending
        if isinstance(msg, p.Ack):
            if pending is None:
                return
            if msg.seq == pending.seq and pending.t_ack == 0:
                pending.t_ack = t_read
                pending.board_us_ack = msg.board_us
                if pending.phase == _SENDING:
                    pending.phase = _RUNNING
                    pending.done_deadline = t_read + int(pending.open_ms * 1e6 + self.cfg.done_margin_s * 1e9)
            elif msg.command == "LOG" and msg.seq == pending.query_seq and pending.phase == _RECONCILING:
                info = p.log_info(msg)
                if info.pulse_seq == pending.seq:
                    self._settle_from_log(pending, info, t_read)
            return
        if isinstance(msg, p.Nak):
            if pending is not None and msg.seq == pending.seq:
                if pending.attempts == 1 and pending.phase == _SENDING:
                    self._finish_nak(pending, msg)
                else:  # delayed, and another attempt of it may have run: the log decides
                    pending.nak = msg
                    self._reconcile(pending, f"the board refused an attempt ({msg.code} {msg.detail})")
            elif pending is not None and msg.seq == pending.query_seq:
                self._remember_abandoned(pending)
                self._finish_unknown(pending, f"{pending.why}; the board refused the LOG query: {msg.code}")
            elif msg.code != p.NAK_NOLINK:
                self._notice("board_nak", f"board refused command {msg.seq}: {msg.code} {msg.detail}")
            return
        if isinstance(msg, p.Done):
            if pending is not None and msg.seq == pending.seq:
                # (If the ack was lost, the DONE alone proves the pulse ran; t_ack stays 0.)
                # (While reconciling, the DONE answers first: it ran to completion, or the CLOSE cut it short.)
                dispensed = self._dispensed(pending, msg.open_us)
                why = f"{pending.why}; " if pending.phase == _RECONCILING else ""
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
            elif msg.seq in self._abandoned:
                self._notice(
                    "late_completion",
                    f"request {self._abandoned[msg.seq]!r}, reported with its volume unknown, opened the valve for "
                    f"{msg.open_us / 1000:.1f} ms ({p.DONE_CAUSES[msg.cause]})",
                )
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
        pending = self._pending
        if item.state == "connected":
            self._last_lick_count = None  # a reset board counts licks from 1 again
            if pending is not None and pending.phase == _RECONCILING:
                if self.link.resumed:
                    self._query_log(pending)
                else:
                    self._remember_abandoned(pending)
                    self._finish_unknown(pending, f"{pending.why}; the board's pulse log is gone (it was power-"
                                                  "cycled, or another host linked to it)")
            return
        if item.state in ("lost", "watchdog_tripped"):
            self.counts["link_losses"] += 1
            if pending is not None:
                if pending.phase == _RECONCILING:
                    pending.query_seq = -1  # its answer will not come on this link: asked again after the handshake
                else:
                    acked = pending.t_ack > 0
                    self._reconcile(
                        pending,
                        f"link {item.state} ({item.detail}) "
                        + ("while the valve was open" if acked else "before the board acknowledged the pulse"),
                    )
            return
        if item.state == "closed" and pending is not None:
            self._remember_abandoned(pending)
            self._finish_unknown(pending, f"link closed ({item.detail})")
