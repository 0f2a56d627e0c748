"""Reward delivery policy: one state machine from request to exactly one outcome.

:class:`RewardController` turns "give request R x µL" into an acknowledged valve pulse and a record of
what happened, and refuses what policy forbids. It is non-blocking: the reward process calls
:meth:`RewardController.request` when a request arrives and :meth:`RewardController.poll` in its loop;
poll also keeps the board's heartbeat going.

Guarantees:

* every request ends in exactly one :class:`RewardOutcome` (delivered, failed or refused);
* a retry re-sends the same line with the same sequence number, and the board never executes a
  sequence number twice, so retries cannot double-deliver;
* one pulse at a time; minimum interval between rewards; per-session volume cap; bounded open time;
* on link loss the pending pulse is failed at once, never retried on the new link;
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


class RewardOutcome(msgspec.Struct, kw_only=True):
    """What happened to one request. Field names match ``rig.core.schema.RewardOutcome``.

    ``t_*`` are ``rig.core.clock.now_ns`` stamps (0 = did not happen): ``t_received`` when request()
    was called, ``t_written`` right after the first write of the command returned, ``t_ack`` when
    the acknowledgement was read, ``t_done`` when the completion was read. ``board_us_*`` are the
    board's clock (-1 = not seen). ``open_us`` is the opening the board measured (-1 = unknown).
    ``meta`` is returned exactly as passed to request().
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
    """Something the operator should know that is not an outcome: corrupted lines, late replies..."""

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
    line: bytes
    t_received: int
    attempts: int = 0
    t_written: int = 0
    t_last_write: int = 0
    t_ack: int = 0
    board_us_ack: int = -1
    ack_deadline: int = 0
    done_deadline: int = 0


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
        self._abandoned: dict[int, str] = {}  # seq -> request id of pulses reported failed early
        self._safe_reason = ""
        self._last_reward_ns: int | None = None
        self._last_lick_count: int | None = None
        self.committed_ul = 0.0
        self.delivered_ul = 0.0
        self.counts = {DELIVERED: 0, FAILED: 0, REFUSED: 0, "retries": 0, "licks": 0, "link_losses": 0}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the link (the handshake completes during poll)."""
        self.link.open()

    def close(self) -> None:
        """Fail anything pending, close the valve and the link."""
        if self._pending is not None:
            self._finish(FAILED, "reward controller closed before completion")
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
        self, request_id: str, volume_ul: float, source: str, meta: dict[str, Any] | None = None
    ) -> None:
        """Ask for one reward. Its outcome (possibly an immediate refusal) comes out of :meth:`poll`."""
        t = self._clock()
        meta = {} if meta is None else meta

        def refuse(reason: str, open_ms: float = 0.0) -> None:
            self._out.append(
                RewardOutcome(
                    request_id=request_id, status=REFUSED, reason=reason, volume_ul=volume_ul, open_ms=open_ms,
                    source=source, t_received=t, meta=meta,
                )
            )
            self.counts[REFUSED] += 1

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
        if self._pending is not None:
            return refuse(f"busy: reward {self._pending.request_id!r} is still in progress", open_ms)
        if self._last_reward_ns is not None:
            since_s = (t - self._last_reward_ns) / 1e9
            if since_s < self.cfg.min_interval_s:
                return refuse(
                    f"minimum interval: {since_s:.3f} s since the last reward < {self.cfg.min_interval_s:g} s", open_ms
                )
        if self.committed_ul + volume_ul > self.cfg.max_volume_ul + 1e-9:
            return refuse(
                f"session volume cap: {self.committed_ul:g} + {volume_ul:g} uL > {self.cfg.max_volume_ul:g} uL", open_ms
            )
        if self._start_pulse(request_id, source, meta, volume_ul, open_ms, "OPEN", t):
            self._last_reward_ns = self._pending.t_written if self._pending is not None else t

    def pulse(
        self,
        request_id: str,
        open_ms: float,
        source: str = SOURCE_TEST,
        meta: dict[str, Any] | None = None,
        *,
        test: bool = True,
    ) -> None:
        """An operator pulse of ``open_ms`` (test pulse, calibration, flush): bounded and acknowledged.

        Not subject to the reward interval or the session cap (an operator asked for it), but its
        estimated volume is counted, and it is refused in safe state or while another pulse runs.
        """
        t = self._clock()
        meta = {} if meta is None else meta
        volume = self.calibration.volume_ul(open_ms) if self.calibration is not None else 0.0
        reason = ""
        if self._safe_reason:
            reason = f"safe state: {self._safe_reason}"
        elif not (math.isfinite(open_ms) and open_ms > 0):
            reason = f"invalid open time {open_ms!r} ms"
        elif open_ms > self._max_open_ms(operator=True):
            reason = f"{open_ms:g} ms is above the {self._max_open_ms(operator=True):g} ms limit"
        elif self._pending is not None:
            reason = f"busy: {self._pending.request_id!r} is still in progress"
        if reason:
            self._out.append(
                RewardOutcome(
                    request_id=request_id, status=REFUSED, reason=reason, volume_ul=volume, open_ms=open_ms,
                    source=source, t_received=t, meta=meta,
                )
            )
            self.counts[REFUSED] += 1
            return
        self._start_pulse(request_id, source, meta, volume, open_ms, "TEST" if test else "OPEN", t)

    def test_pulse(self, request_id: str = "", open_ms: float | None = None) -> None:
        """One test pulse of ``open_ms`` (default ``test_pulse_ms`` from the config)."""
        ms = self.cfg.test_pulse_ms if open_ms is None else open_ms
        self.pulse(request_id or f"test-{self._clock()}", ms, SOURCE_TEST)

    def close_valve(self, reason: str = "valve closed by operator") -> bool:
        """Send CLOSE now; returns whether it was sent.

        A pulse the board has not acknowledged yet is abandoned (reported failed at once, never
        retried): a retry after the CLOSE could otherwise open the valve again. An acknowledged pulse
        completes from the board's DONE (partial delivery). False means the link is down and nothing
        was sent (the board's watchdog closes the valve on its own once heartbeats stop).
        """
        pending = self._pending
        if pending is not None and pending.t_ack == 0:
            self._remember_abandoned(pending)
            self._finish(FAILED, f"abandoned: {reason} before the board acknowledged the pulse")
        return self._send_close()

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
                next_timer = self._pending.done_deadline or self._pending.ack_deadline
                wait_ns = min(wait_ns, next_timer - now)
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
            "licks": self.counts["licks"],
            "link_losses": self.counts["link_losses"],
            "delivered_ul": self.delivered_ul,
            "committed_ul": self.committed_ul,
            "link_rtt_ms": self.link.last_rtt_ns / 1e6 if self.link.last_rtt_ns >= 0 else -1.0,
        }

    # ------------------------------------------------------------ internals

    def _max_open_ms(self, operator: bool = False) -> float:
        board_max = self.link.board.max_open_ms if self.link.board is not None else p.FIRMWARE_MAX_OPEN_MS
        return float(board_max) if operator else min(self.cfg.max_open_ms, board_max)

    def _start_pulse(
        self, request_id: str, source: str, meta: dict[str, Any], volume: float, open_ms: float, command: str, t: int
    ) -> bool:
        if self.link.state != CONNECTED:
            self._out.append(
                RewardOutcome(
                    request_id=request_id, status=FAILED, volume_ul=volume, open_ms=open_ms, source=source,
                    reason=f"reward board not connected ({self.link.state}"
                    + (f": {self.link.last_error})" if self.link.last_error else ")"),
                    t_received=t, meta=meta,
                )
            )
            self.counts[FAILED] += 1
            return False
        duration_us = max(1, round(open_ms * 1000))
        seq = self.link.next_seq()
        line = p.encode_open(seq, duration_us) if command == "OPEN" else p.encode_test(seq, duration_us)
        pending = _Pending(
            request_id=request_id, source=source, meta=meta, volume_ul=volume, open_ms=open_ms,
            command=command, seq=seq, line=line, t_received=t,
        )
        self._pending = pending
        # Counted before the write: a pulse whose ack is lost may still have been delivered.
        self.committed_ul += volume
        self._write_attempt(pending)
        return True

    def _write_attempt(self, pending: _Pending) -> None:
        pending.attempts += 1
        try:
            t = self.link.send(pending.line)
        except LinkDown as exc:
            self._finish(FAILED, f"could not write the command: {exc}")
            return
        if pending.attempts == 1:
            pending.t_written = t
        else:
            self.counts["retries"] += 1
        pending.t_last_write = t
        pending.ack_deadline = t + int(self.cfg.ack_timeout_s * 1e9)

    def _check_timers(self, now: int) -> None:
        pending = self._pending
        if pending is None:
            return
        if pending.done_deadline:
            if now >= pending.done_deadline:
                self._abandon(
                    pending, "no completion message from the board; valve closed by command, delivery unknown"
                )
        elif now >= pending.ack_deadline:
            if pending.attempts <= self.cfg.retries and not self._safe_reason:
                self._write_attempt(pending)
            else:
                self._abandon(
                    pending,
                    f"no acknowledgement after {pending.attempts} attempts "
                    f"({self.cfg.ack_timeout_s * 1000:g} ms each); valve closed by command",
                )

    def _abandon(self, pending: _Pending, reason: str) -> None:
        """Give up on a pulse whose fate is unknown: close the valve and remember its seq."""
        self._remember_abandoned(pending)
        self._finish(FAILED, reason)
        if not self._send_close():  # no caller sees a return value here: tell the operator
            self._notice(
                "close_not_sent",
                f"could not send CLOSE for abandoned request {pending.request_id!r} (reward board link "
                f"{self.link.state}); the board's watchdog closes the valve within {self.cfg.watchdog_ms} ms",
            )

    def _send_close(self) -> bool:
        try:
            self.link.send(p.encode_close(self.link.next_seq()))
        except LinkDown:
            return False  # the link loss itself is reported as a LinkEvent
        return True

    def _finish(self, status: str, reason: str, *, t_done: int = 0, board_us_done: int = -1, open_us: int = -1) -> None:
        pending = self._pending
        assert pending is not None
        self._pending = None
        self.counts[status] += 1
        if status == DELIVERED:
            self.delivered_ul += pending.volume_ul
        self._out.append(
            RewardOutcome(
                request_id=pending.request_id, status=status, reason=reason, volume_ul=pending.volume_ul,
                open_ms=pending.open_ms, source=pending.source, seq=pending.seq, attempts=pending.attempts,
                t_received=pending.t_received, t_written=pending.t_written, t_ack=pending.t_ack, t_done=t_done,
                board_us_ack=pending.board_us_ack, board_us_done=board_us_done, open_us=open_us, meta=pending.meta,
            )
        )

    def _remember_abandoned(self, pending: _Pending) -> None:
        self._abandoned[pending.seq] = pending.request_id
        while len(self._abandoned) > 64:
            del self._abandoned[next(iter(self._abandoned))]

    def _notice(self, code: str, message: str) -> None:
        self._out.append(BoardNotice(code=code, message=message, t_ns=self._clock()))

    def _handle(self, item: LinkEvent | Received) -> None:
        if isinstance(item, LinkEvent):
            self._out.append(item)
            if item.state == "connected":
                self._last_lick_count = None  # a reset board counts licks from 1 again
            if item.state in ("lost", "watchdog_tripped"):
                self.counts["link_losses"] += 1
            if item.state in ("lost", "watchdog_tripped", "closed") and self._pending is not None:
                acked = self._pending.t_ack > 0
                self._remember_abandoned(self._pending)
                self._finish(
                    FAILED,
                    f"link {item.state} ({item.detail}) "
                    + ("while the valve was open: delivery incomplete" if acked else
                       "before the board acknowledged: the valve may or may not have opened"),
                )
            return
        msg, t_read = item.message, item.t_read
        pending = self._pending
        if isinstance(msg, p.Ack):
            if pending is not None and msg.seq == pending.seq and pending.t_ack == 0:
                pending.t_ack = t_read
                pending.board_us_ack = msg.board_us
                pending.done_deadline = t_read + int(pending.open_ms * 1e6 + self.cfg.done_margin_s * 1e9)
            return
        if isinstance(msg, p.Nak):
            if pending is not None and msg.seq == pending.seq:
                self._finish(FAILED, f"board refused the pulse: {msg.code} {msg.detail}")
            elif msg.code != p.NAK_NOLINK:
                self._notice("board_nak", f"board refused command {msg.seq}: {msg.code} {msg.detail}")
            return
        if isinstance(msg, p.Done):
            if pending is not None and msg.seq == pending.seq:
                # (If the ack was lost, the DONE alone proves the pulse ran; t_ack stays 0.)
                if msg.cause == p.CAUSE_TIMER:
                    self._finish(DELIVERED, "", t_done=t_read, board_us_done=msg.board_us, open_us=msg.open_us)
                else:
                    self._finish(
                        FAILED,
                        f"valve {p.DONE_CAUSES[msg.cause]} after {msg.open_us / 1000:.1f} of "
                        f"{pending.open_ms:.1f} ms: partial delivery",
                        t_done=t_read, board_us_done=msg.board_us, open_us=msg.open_us,
                    )
            elif msg.seq in self._abandoned:
                self._notice(
                    "late_completion",
                    f"request {self._abandoned[msg.seq]!r}, reported failed, did open the valve for "
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
