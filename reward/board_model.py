"""The valve board's firmware as a pure Python state machine: the emulator's core, with no I/O.

It lives apart from the serving code so that the part which must match the sketch byte for byte
(``firmware/bci_reward/bci_reward.ino``; ``tests/test_reward_emulator.py`` compiles the sketch
against a stub Arduino core and compares) can be read, stepped and tested on its own.
:class:`FirmwareEmulator` is a line-for-line port of the sketch: given the same bytes at the same
board times it emits the same bytes. It is driven with explicit board times, so tests can step it
deterministically; :class:`reward.emulator.EmulatorServer` puts it on a real port.

RAM that survives a reset (the sketch's ``.noinit`` block: the pulse log, the host link id, the duty-cycle
carry) is :class:`_Kept`: :meth:`FirmwareEmulator.boot` keeps it (a reset), :meth:`FirmwareEmulator.power_off`
loses it (a power cycle).
"""

from __future__ import annotations

import msgspec

from reward import protocol as p

# Close causes that only appear in the emulator's valve log: the pin dropped without a DONE line.
CAUSE_RESET = "RESET"
CAUSE_SHUTDOWN = "SHUTDOWN"


class ValveEvent(msgspec.Struct, frozen=True):
    """One valve transition, in board time. ``cause`` is a DONE cause (or RESET/SHUTDOWN) for closes, "" for opens."""

    kind: str  # "open" | "close"
    board_us: int
    seq: int
    command: str
    duration_us: int
    open_us: int = 0
    cause: str = ""


class _LogEntry:
    """One opening in the board's pulse log (the sketch's ``LogEntry``). ``state`` "" = empty slot."""

    __slots__ = ("seq", "duration_us", "open_us", "state")

    def __init__(self) -> None:
        self.seq = 0
        self.duration_us = 0
        self.open_us = 0
        self.state = ""


class _Kept:
    """What survives a reset but not a power cycle (the sketch's ``Kept`` in ``.noinit``)."""

    def __init__(self) -> None:
        self.link_id = 0
        self.duty_carry_us = 0
        self.log_next = 0
        self.log = [_LogEntry() for _ in range(p.LOG_SLOTS)]

    def clear_log(self) -> None:
        self.log = [_LogEntry() for _ in range(p.LOG_SLOTS)]
        self.log_next = 0


class _PulseRecord:
    """A remembered OPEN/TEST (the firmware's dedupe slot), so a retried seq is never re-executed."""

    __slots__ = ("seq", "command", "duration_us", "ack_us", "done", "done_us", "open_us", "cause")

    def __init__(self, seq: int, command: str, duration_us: int, ack_us: int) -> None:
        self.seq = seq
        self.command = command
        self.duration_us = duration_us
        self.ack_us = ack_us
        self.done = False
        self.done_us = 0
        self.open_us = 0
        self.cause = ""


class FirmwareEmulator:
    """The sketch's ``setup()``/``loop()`` as a state machine over explicit board times (µs).

    Drive it like the firmware's main loop: :meth:`boot` once, then :meth:`step` with the current
    board time and whatever bytes arrived. Collect output with :meth:`take_output`. Not thread-safe:
    :class:`reward.emulator.EmulatorServer` serialises access.
    """

    def __init__(
        self,
        *,
        max_open_ms: int = p.FIRMWARE_MAX_OPEN_MS,
        firmware: str = p.FIRMWARE_VERSION,
        debounce_us: int = p.LICK_DEBOUNCE_US,
        duty_max_ms: int = p.DUTY_MAX_OPEN_MS,
        duty_window_ms: int = p.DUTY_WINDOW_MS,
    ) -> None:
        """The defaults are the sketch's constants (the conformance test uses them); other limits let tests and
        benchmarks run without waiting for a 10 s duty-cycle window."""
        if not 1 <= max_open_ms <= 3_600_000:
            raise ValueError(f"max_open_ms must be in 1..3600000, got {max_open_ms}")
        if not (10 <= duty_window_ms <= 3_600_000 and duty_window_ms % 10 == 0):
            raise ValueError(f"duty_window_ms must be a multiple of 10 in 10..3600000, got {duty_window_ms}")
        if not 1 <= duty_max_ms <= duty_window_ms:
            raise ValueError(f"duty_max_ms must be in 1..duty_window_ms, got {duty_max_ms}")
        self.max_open_us = max_open_ms * 1000
        self.duty_max_us = duty_max_ms * 1000
        self.duty_window_us = duty_window_ms * 1000
        self._duty_bucket_us = self.duty_window_us // 10
        self.firmware = firmware
        self.debounce_us = debounce_us
        self._parser = p.CommandParser(p.MAX_COMMAND_LINE)
        self._out: list[bytes] = []
        self.events: list[ValveEvent] = []
        self._lick_input = False
        self._kept: _Kept | None = None  # power-on RAM: no valid kept block
        self._reset_state()

    # ------------------------------------------------------------ state

    def _reset_state(self) -> None:
        """The sketch's initState()."""
        self._parser.reset()
        self._slots: list[_PulseRecord | None] = [None] * p.DEDUPE_SLOTS
        self._next_slot = 0
        self._active: _PulseRecord | None = None
        self._active_log = 0
        self.valve_open = False
        self._opened_at = 0
        self._pulse_us = 0
        self._duty_allow_us = 0
        self._duty_open_us = [0] * p.DUTY_BUCKETS
        self._duty_bucket = 0
        self._duty_next_us = 0
        self.linked = False
        self._last_host_us = 0
        self._watchdog_us = 500_000
        self.pulses = 0
        self.rejected = 0
        self._candidate = False
        self._candidate_since = 0
        self.lick_state = False
        self.lick_count = 0
        self._now = 0

    def boot(self, now_us: int) -> None:
        """Power-on or reset (the first boot, or after :meth:`power_off`, is a power-on): valve closed, link
        down, ``BOOT`` line. Pending output is discarded; the kept block (pulse log, duty carry) survives a reset."""
        self._power_cut(now_us, CAUSE_RESET)  # the pin drops, no DONE is sent
        self._out.clear()
        self._reset_state()
        self._now = now_us
        self._recover_kept(now_us)
        self._emit(p.encode_boot(now_us, p.PROTOCOL_VERSION, self.firmware))

    def power_off(self, now_us: int) -> None:
        """The board loses power (emulator shut down): an open valve drops closed, logged with cause SHUTDOWN,
        and the RAM kept across resets is gone."""
        self._power_cut(now_us, CAUSE_SHUTDOWN)
        self._kept = None

    def _power_cut(self, now_us: int, cause: str) -> None:
        active = self._active
        if self.valve_open and active is not None:
            self.events.append(
                ValveEvent("close", now_us, active.seq, active.command, active.duration_us,
                           min(max(0, now_us - self._opened_at), p.MAX_U32), cause)
            )
            self.valve_open = False
            self._active = None

    def set_lick_input(self, active: bool) -> None:
        """Level of the lick sensor pin (already mapped to active/inactive)."""
        self._lick_input = bool(active)

    @property
    def now_us(self) -> int:
        """Board time of the last boot/step."""
        return self._now

    def reset_input(self) -> None:
        """Forget a partial input line (the host side of the port went away)."""
        self._parser.reset()

    def take_output(self) -> list[bytes]:
        """Lines emitted since the last call, each ending in a newline."""
        out, self._out = self._out, []
        return out

    def valve_close_due_us(self) -> int | None:
        """When the open valve closes by itself (its pulse, the hard limit or the duty allowance), else None."""
        if not self.valve_open:
            return None
        return self._opened_at + min(self._pulse_us, self.max_open_us, self._duty_allow_us)

    def next_deadline_us(self) -> int | None:
        """Earliest board time at which :meth:`step` has something to do without new input."""
        deadlines: list[int] = []
        if self.valve_open:
            deadlines.append(self._opened_at + min(self._pulse_us, self.max_open_us, self._duty_allow_us))
        if self.linked:
            deadlines.append(self._last_host_us + self._watchdog_us)
        if self._candidate != self.lick_state:
            deadlines.append(self._candidate_since + self.debounce_us)
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------ loop()

    def step(self, now_us: int, data: bytes = b"") -> None:
        """One pass of the firmware's loop(): timers, lick input, then the received bytes."""
        if now_us < self._now:
            raise ValueError(f"board time went backwards: {now_us} < {self._now}")
        self._now = now_us
        self._duty_advance(now_us)
        self._service_valve(now_us)
        self._service_watchdog(now_us)
        self._service_lick(now_us)
        if data:
            for item in self._parser.feed(data):
                if isinstance(item, p.LineError):
                    self._error(now_us, item.code)
                else:
                    self._execute(item, now_us)

    def _emit(self, line: bytes) -> None:
        self._out.append(line)

    def _error(self, now: int, code: str) -> None:
        self.rejected += 1
        self._emit(p.encode_error(now, code))

    def _nak(self, seq: int, now: int, code: str, detail: int = 0) -> None:
        self.rejected += 1
        self._emit(p.encode_nak(seq, now, code, detail))

    # ------------------------------------------------------------ kept block and duty-cycle limit

    def _duty_used(self) -> int:
        return sum(self._duty_open_us)

    def _duty_keep(self) -> None:
        assert self._kept is not None
        self._kept.duty_carry_us = self._duty_used() + (self._pulse_us if self.valve_open else 0)

    def _duty_advance(self, now: int) -> None:
        if now < self._duty_next_us:
            return
        bucket = now // self._duty_bucket_us
        if bucket - self._duty_bucket >= p.DUTY_BUCKETS:
            self._duty_open_us = [0] * p.DUTY_BUCKETS
        else:
            while self._duty_bucket != bucket:
                self._duty_bucket += 1
                self._duty_open_us[self._duty_bucket % p.DUTY_BUCKETS] = 0
        self._duty_bucket = bucket
        self._duty_next_us = (bucket + 1) * self._duty_bucket_us
        self._duty_keep()

    def _duty_book(self, start: int, end: int) -> None:
        self._duty_advance(end)
        if self._duty_bucket >= p.DUTY_BUCKETS - 1:
            start = max(start, (self._duty_bucket - (p.DUTY_BUCKETS - 1)) * self._duty_bucket_us)
        while start < end:
            bucket = start // self._duty_bucket_us
            stop = min((bucket + 1) * self._duty_bucket_us, end)
            self._duty_open_us[bucket % p.DUTY_BUCKETS] += stop - start
            start = stop

    def _recover_kept(self, now: int) -> None:
        kept = self._kept
        if kept is None:
            self._kept = kept = _Kept()
        else:
            for entry in kept.log:
                if entry.state == p.LOG_OPEN:
                    entry.state = p.LOG_RESET
        carry = kept.duty_carry_us
        self._duty_advance(now)
        self._duty_open_us[self._duty_bucket % p.DUTY_BUCKETS] += carry
        self._duty_keep()

    # ------------------------------------------------------------ valve

    def _service_valve(self, now: int) -> None:
        if not self.valve_open:
            return
        elapsed = now - self._opened_at
        if elapsed >= self._pulse_us:
            self._close_valve(now, p.CAUSE_TIMER)
        elif elapsed >= self.max_open_us:
            self._close_valve(now, p.CAUSE_MAX_OPEN)
        elif elapsed >= self._duty_allow_us:
            self._close_valve(now, p.CAUSE_DUTY)

    def _service_watchdog(self, now: int) -> None:
        if self.linked and now - self._last_host_us >= self._watchdog_us:
            self.linked = False
            self._emit(p.encode_watchdog(now))
            if self.valve_open:
                self._close_valve(now, p.CAUSE_WATCHDOG)

    def _service_lick(self, now: int) -> None:
        raw = self._lick_input
        if raw != self._candidate:
            self._candidate = raw
            self._candidate_since = now
        if self._candidate != self.lick_state and now - self._candidate_since >= self.debounce_us:
            self.lick_state = self._candidate
            self.lick_count = (self.lick_count + 1) & p.MAX_U32
            self._emit(p.encode_lick(self.lick_count, self._candidate_since, self.lick_state))

    def _open_valve(self, record: _PulseRecord, allow_us: int, now: int) -> None:
        kept = self._kept
        assert kept is not None
        self.valve_open = True
        self._opened_at = now
        self._pulse_us = record.duration_us
        self._duty_allow_us = allow_us
        self._active = record
        self.pulses = (self.pulses + 1) & p.MAX_U32
        self._active_log = kept.log_next
        entry = kept.log[kept.log_next]
        entry.seq, entry.duration_us, entry.open_us, entry.state = record.seq, record.duration_us, 0, p.LOG_OPEN
        kept.log_next = (kept.log_next + 1) % p.LOG_SLOTS
        self._duty_keep()
        self.events.append(ValveEvent("open", now, record.seq, record.command, record.duration_us))

    def _close_valve(self, now: int, cause: str) -> None:
        record = self._active
        assert record is not None and self._kept is not None
        open_us = min(now - self._opened_at, p.MAX_U32)
        self.valve_open = False
        self._active = None
        record.done, record.done_us, record.open_us, record.cause = True, now, open_us, cause
        entry = self._kept.log[self._active_log]
        entry.open_us, entry.state = open_us, cause
        self._duty_book(self._opened_at, now)
        self._duty_keep()
        self.events.append(
            ValveEvent("close", now, record.seq, record.command, record.duration_us, open_us, cause)
        )
        self._emit(p.encode_done(record.seq, now, open_us, cause))

    # ------------------------------------------------------------ commands

    def _execute(self, cmd: p.Command, now: int) -> None:
        if self.linked:
            self._last_host_us = now  # any valid command proves the host is alive
        name, seq, args = cmd.name, cmd.seq, cmd.args
        if name == "HELLO":
            self._hello(seq, args, now)
        elif name == "HB":
            if args:
                self._nak(seq, now, p.NAK_ARGS)
            elif not self.linked:
                self._nak(seq, now, p.NAK_NOLINK)
            else:
                self._emit(p.encode_ack(seq, now, "HB"))
        elif name in p.PULSE_COMMANDS:
            self._pulse(name, seq, args, now)
        elif name == "CLOSE":
            if args:
                self._nak(seq, now, p.NAK_ARGS)
                return
            was_open = self.valve_open
            self._emit(p.encode_ack(seq, now, "CLOSE", int(was_open)))
            if was_open:
                self._close_valve(now, p.CAUSE_CLOSE)
        elif name == "LOG":
            self._log(seq, args, now)
        elif name == "STATUS":
            if args:
                self._nak(seq, now, p.NAK_ARGS)
                return
            self._emit(
                p.encode_ack(
                    seq, now, "STATUS", int(self.linked), int(self.valve_open), int(self.lick_state),
                    self.pulses, self.rejected, 0,
                )
            )
        else:
            self._nak(seq, now, p.NAK_UNKNOWN)

    def _hello(self, seq: int, args: tuple[str, ...], now: int) -> None:
        values = [p.parse_u32(a) for a in args]
        if len(args) != 3 or None in values:
            self._nak(seq, now, p.NAK_ARGS)
            return
        protocol, watchdog_ms, link_id = values
        if protocol != p.PROTOCOL_VERSION:
            self._nak(seq, now, p.NAK_VERSION, p.PROTOCOL_VERSION)
            return
        if not p.WATCHDOG_MIN_MS <= watchdog_ms <= p.WATCHDOG_MAX_MS:
            self._nak(seq, now, p.NAK_RANGE, p.WATCHDOG_MAX_MS)
            return
        kept = self._kept
        assert kept is not None
        resumed = link_id != 0 and link_id == kept.link_id  # the same host again: its pulse log is kept
        self._emit(
            p.encode_ack(
                seq, now, "HELLO", p.PROTOCOL_VERSION, self.firmware, self.max_open_us // 1000, watchdog_ms,
                int(resumed), self.duty_max_us // 1000, self.duty_window_us // 1000,
            )
        )
        if self.valve_open:
            self._close_valve(now, p.CAUSE_HELLO)
        self._slots = [None] * p.DEDUPE_SLOTS
        self._next_slot = 0
        if not resumed:
            kept.clear_log()  # another host (or none before): its pulses are not this one's to ask about
            kept.link_id = link_id
        self.linked = True
        self._last_host_us = now
        self._watchdog_us = watchdog_ms * 1000

    def _pulse(self, name: str, seq: int, args: tuple[str, ...], now: int) -> None:
        duration = p.parse_u32(args[0]) if len(args) == 1 else None
        if duration is None:
            self._nak(seq, now, p.NAK_ARGS)
            return
        for record in self._slots:
            if record is not None and record.seq == seq:
                if record.command != name or record.duration_us != duration:
                    self._nak(seq, now, p.NAK_SEQ)
                    return
                # A retry of a pulse already executed: repeat what was said, never re-open.
                self._emit(p.encode_ack(seq, record.ack_us, name, duration))
                if record.done:
                    self._emit(p.encode_done(seq, record.done_us, record.open_us, record.cause))
                return
        if not self.linked:
            self._nak(seq, now, p.NAK_NOLINK)
            return
        if duration < 1 or duration > self.max_open_us:
            self._nak(seq, now, p.NAK_RANGE, self.max_open_us)
            return
        if self.valve_open:
            assert self._active is not None
            self._nak(seq, now, p.NAK_BUSY, self._active.seq)
            return
        self._duty_advance(now)
        left = max(0, self.duty_max_us - self._duty_used())
        if duration > left:
            self._nak(seq, now, p.NAK_DUTY, left)
            return
        record = _PulseRecord(seq, name, duration, now)
        self._slots[self._next_slot] = record
        self._next_slot = (self._next_slot + 1) % p.DEDUPE_SLOTS
        self._emit(p.encode_ack(seq, now, name, duration))
        self._open_valve(record, left, now)

    def _log(self, seq: int, args: tuple[str, ...], now: int) -> None:
        pulse_seq = p.parse_u32(args[0]) if len(args) == 1 else None
        if pulse_seq is None:
            self._nak(seq, now, p.NAK_ARGS)
            return
        kept = self._kept
        assert kept is not None
        for k in range(1, p.LOG_SLOTS + 1):  # newest first
            entry = kept.log[(kept.log_next - k) % p.LOG_SLOTS]
            if not entry.state or entry.seq != pulse_seq:
                continue
            open_us = now - self._opened_at if entry.state == p.LOG_OPEN else entry.open_us
            self._emit(p.encode_ack(seq, now, "LOG", pulse_seq, entry.duration_us, min(open_us, p.MAX_U32),
                                    entry.state))
            return
        self._emit(p.encode_ack(seq, now, "LOG", pulse_seq, 0, 0, p.LOG_UNKNOWN))
