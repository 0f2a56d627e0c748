"""The simulated twin of the reward board: the firmware's logic in Python, served over a real port.

:class:`FirmwareEmulator` is a line-for-line port of ``firmware/bci_reward/bci_reward.ino``: given
the same bytes at the same board times it emits the same bytes (a test compiles the sketch against
a stub Arduino core and compares). It is a pure state machine driven with explicit board times, so
tests can step it deterministically.

:class:`EmulatorServer` serves one emulator on a pseudo-terminal (POSIX) or a TCP port reachable
with pyserial's ``socket://127.0.0.1:PORT`` (any OS), with the board clock taken from
``time.perf_counter_ns``, an optional seeded lick generator, an event log, and fault injection for
tests (drop or delay lines, inject garbage, disconnect, reset).

:func:`run_emulator` is the blocking entry point a supervised process calls.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import select
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

import msgspec

from reward import protocol as p
from reward.config import RewardConfig

# ================================================================ the firmware's logic

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
    :class:`EmulatorServer` serialises access.
    """

    def __init__(
        self,
        *,
        max_open_ms: int = p.FIRMWARE_MAX_OPEN_MS,
        firmware: str = p.FIRMWARE_VERSION,
        debounce_us: int = p.LICK_DEBOUNCE_US,
    ) -> None:
        if not 1 <= max_open_ms <= 3_600_000:
            raise ValueError(f"max_open_ms must be in 1..3600000, got {max_open_ms}")
        self.max_open_us = max_open_ms * 1000
        self.firmware = firmware
        self.debounce_us = debounce_us
        self._parser = p.CommandParser(p.MAX_COMMAND_LINE)
        self._out: list[bytes] = []
        self.events: list[ValveEvent] = []
        self._lick_input = False
        self._reset_state()

    # ------------------------------------------------------------ state

    def _reset_state(self) -> None:
        self._parser.reset()
        self._slots: list[_PulseRecord | None] = [None] * p.DEDUPE_SLOTS
        self._next_slot = 0
        self._active: _PulseRecord | None = None
        self.valve_open = False
        self._opened_at = 0
        self._pulse_us = 0
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
        """Power-on / reset: valve closed, link down, ``BOOT`` line. Pending output is discarded."""
        self._power_cut(now_us, CAUSE_RESET)  # power cycle: the pin drops, no DONE is sent
        self._out.clear()
        self._reset_state()
        self._now = now_us
        self._emit(p.encode_boot(now_us, p.PROTOCOL_VERSION, self.firmware))

    def power_off(self, now_us: int) -> None:
        """The board stops (emulator shut down): an open valve drops closed, logged with cause SHUTDOWN."""
        self._power_cut(now_us, CAUSE_SHUTDOWN)

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

    def next_deadline_us(self) -> int | None:
        """Earliest board time at which :meth:`step` has something to do without new input."""
        deadlines: list[int] = []
        if self.valve_open:
            deadlines.append(self._opened_at + min(self._pulse_us, self.max_open_us))
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

    def _service_valve(self, now: int) -> None:
        if not self.valve_open:
            return
        elapsed = now - self._opened_at
        if elapsed >= self._pulse_us:
            self._close_valve(now, p.CAUSE_TIMER)
        elif elapsed >= self.max_open_us:
            self._close_valve(now, p.CAUSE_MAX_OPEN)

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

    def _open_valve(self, record: _PulseRecord, now: int) -> None:
        self.valve_open = True
        self._opened_at = now
        self._pulse_us = record.duration_us
        self._active = record
        self.pulses = (self.pulses + 1) & p.MAX_U32
        self.events.append(ValveEvent("open", now, record.seq, record.command, record.duration_us))

    def _close_valve(self, now: int, cause: str) -> None:
        record = self._active
        assert record is not None
        open_us = min(now - self._opened_at, p.MAX_U32)
        self.valve_open = False
        self._active = None
        record.done, record.done_us, record.open_us, record.cause = True, now, open_us, cause
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
        if len(args) != 2 or values[0] is None or values[1] is None:
            self._nak(seq, now, p.NAK_ARGS)
            return
        protocol, watchdog_ms = values
        if protocol != p.PROTOCOL_VERSION:
            self._nak(seq, now, p.NAK_VERSION, p.PROTOCOL_VERSION)
            return
        if not p.WATCHDOG_MIN_MS <= watchdog_ms <= p.WATCHDOG_MAX_MS:
            self._nak(seq, now, p.NAK_RANGE, p.WATCHDOG_MAX_MS)
            return
        self._emit(
            p.encode_ack(seq, now, "HELLO", p.PROTOCOL_VERSION, self.firmware, self.max_open_us // 1000, watchdog_ms)
        )
        if self.valve_open:
            self._close_valve(now, p.CAUSE_HELLO)
        self._slots = [None] * p.DEDUPE_SLOTS
        self._next_slot = 0
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
        record = _PulseRecord(seq, name, duration, now)
        self._slots[self._next_slot] = record
        self._next_slot = (self._next_slot + 1) % p.DEDUPE_SLOTS
        self._emit(p.encode_ack(seq, now, name, duration))
        self._open_valve(record, now)


# ================================================================ simulated mouse licks


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


# ================================================================ serving it on a port


class StopFlag(Protocol):
    """threading.Event or multiprocessing.Event: anything with is_set()."""

    def is_set(self) -> bool: ...


class _Faults:
    """Pending faults, filled by test threads and consumed by the server thread (under its lock)."""

    def __init__(self) -> None:
        self.drop: list[tuple[str, str | None, int]] = []  # (message type, ACK command or None, count)
        self.drop_input: list[tuple[str, int]] = []  # (host command name, count): lost before the board
        self.delay_s = 0.0
        self.delay_lines = 0
        self.garbage: deque[bytes] = deque()
        self.disconnect = False
        self.reset = False


class EmulatorServer:
    """Serves a :class:`FirmwareEmulator` on a pty (POSIX) or a localhost TCP port.

    ``transport``: "pty", "socket" or "auto" (pty on POSIX, socket elsewhere). On a pty, ``url`` is
    a stable symlink to the current slave (a disconnect fault swaps the pty behind it, like a USB
    re-plug); on a socket, ``url`` is ``socket://127.0.0.1:PORT`` and one client is served at a
    time (a second one is turned away, like an exclusively opened COM port).
    """

    def __init__(
        self,
        emulator: FirmwareEmulator | None = None,
        transport: str = "auto",
        *,
        port: int = 0,
        log_path: str | Path | None = None,
        licks: LickGenerator | None = None,
        reset_on_connect: bool = False,
    ) -> None:
        if transport == "auto":
            transport = "pty" if os.name == "posix" else "socket"
        if transport not in ("pty", "socket"):
            raise ValueError(f"emulator transport must be 'auto', 'pty' or 'socket', got {transport!r}")
        if transport == "pty" and os.name != "posix":
            raise ValueError("emulator transport 'pty' needs a POSIX system; use 'socket' on Windows")
        self.transport = transport
        self.emulator = emulator if emulator is not None else FirmwareEmulator()
        self.licks = licks
        self.reset_on_connect = reset_on_connect
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._held: deque[tuple[float, bytes]] = deque()  # delayed output: (release perf time, line)
        self._log_path = Path(log_path) if log_path is not None else None
        self._log: IO[str] | None = None
        self._logged_events = 0
        self._input_partial = b""  # an unfinished host line, held only while input faults are pending
        self._t0_ns = time.perf_counter_ns()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self.lines_sent = 0
        self.lines_dropped = 0
        self.connections = 0
        # transport state
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_dir: str | None = None
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        if transport == "pty":
            self._pty_dir = tempfile.mkdtemp(prefix="bci-reward-")
            self._link_path = os.path.join(self._pty_dir, "reward-board")
            self._open_pty()
            self.url = self._link_path
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind(("127.0.0.1", port))
            self._listener.listen(2)
            self._listener.setblocking(False)
            self.url = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"
        with self._lock:
            self.emulator.boot(self.board_us())
            self._route_output()

    # ------------------------------------------------------------ public, thread-safe

    def board_us(self) -> int:
        """The board clock: µs since the emulator started."""
        return (time.perf_counter_ns() - self._t0_ns) // 1000

    def events(self) -> list[ValveEvent]:
        """A copy of the valve event log."""
        with self._lock:
            return list(self.emulator.events)

    def valve_is_open(self) -> bool:
        with self._lock:
            return self.emulator.valve_open

    def is_linked(self) -> bool:
        with self._lock:
            return self.emulator.linked

    def drop_next(self, message: str = "ACK", count: int = 1, command: str | None = None) -> None:
        """Fault: silently drop the next ``count`` lines of type ``message`` (ACK only for ``command``)."""
        with self._lock:
            self._faults.drop.append((message, command, count))

    def drop_next_command(self, command: str, count: int = 1) -> None:
        """Fault: the next ``count`` host lines of ``command`` (e.g. "OPEN") never reach the firmware."""
        with self._lock:
            self._faults.drop_input.append((command, count))

    def delay_next(self, lines: int, seconds: float) -> None:
        """Fault: hold the next ``lines`` output lines (and everything behind them) for ``seconds``."""
        with self._lock:
            self._faults.delay_s = seconds
            self._faults.delay_lines = lines

    def inject_garbage(self, data: bytes) -> None:
        """Fault: write raw bytes to the host as if the line were noisy."""
        with self._lock:
            self._faults.garbage.append(bytes(data))
        self._wake()

    def disconnect(self) -> None:
        """Fault: drop the connection (socket: close the client; pty: hang up and swap the pty)."""
        with self._lock:
            self._faults.disconnect = True
        self._wake()

    def reset_board(self) -> None:
        """Fault: the board reboots (valve closes, link is lost, BOOT is sent)."""
        with self._lock:
            self._faults.reset = True
        self._wake()

    def set_lick(self, active: bool) -> None:
        """Drive the lick sensor by hand (tests)."""
        with self._lock:
            self.emulator.set_lick_input(active)
        self._wake()

    def start(self) -> EmulatorServer:
        """Serve on a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            raise RuntimeError("emulator server already started")
        self._thread = threading.Thread(target=self.serve, args=(self._stop,), name="reward-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                raise RuntimeError("reward emulator thread did not stop within 5 s")
            self._thread = None
        self.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ serving loop

    def serve(self, stop_event: StopFlag) -> None:
        """Blocking loop: read input, run the firmware at its deadlines, write output."""
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self._log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        while not stop_event.is_set() and not self._stop.is_set():
            timeout = self._select_timeout()
            readers: list[object] = [self._wake_r]
            if self._master is not None:
                readers.append(self._master)
            if self._listener is not None:
                readers.append(self._listener)
            if self._client is not None:
                readers.append(self._client)
            ready, _, _ = select.select(readers, [], [], timeout)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            data = b""
            if self._master is not None and self._master in ready:
                data = self._read_pty()
            if self._listener is not None and self._listener in ready:
                self._accept()
            if self._client is not None and self._client in ready:
                data += self._read_client()
            with self._lock:
                self._apply_faults()
                self._run_firmware(data)
                self._route_output()
                self._write_log()

    def _write_log(self) -> None:
        """Append valve events not yet logged (caller holds the lock)."""
        if self._log is None or len(self.emulator.events) <= self._logged_events:
            return
        host_ns = time.perf_counter_ns()
        for event in self.emulator.events[self._logged_events:]:
            record = {"host_ns": host_ns, **msgspec.to_builtins(event)}
            self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        self._logged_events = len(self.emulator.events)

    def _select_timeout(self) -> float:
        timeout = 0.05  # bounds how long a stop request waits
        now_us = self.board_us()
        with self._lock:
            deadline = self.emulator.next_deadline_us()
            if self.licks is not None:
                lick_due = self.licks.next_change_us(now_us)
                if lick_due is not None:
                    deadline = lick_due if deadline is None else min(deadline, lick_due)
            if self._held:
                timeout = min(timeout, max(0.0, self._held[0][0] - time.perf_counter()))
        if deadline is not None:
            timeout = min(timeout, max(0.0, (deadline - now_us) / 1e6))
        return timeout

    def _run_firmware(self, data: bytes) -> None:
        emu = self.emulator
        if self.licks is not None:
            for t_us, level in self.licks.pop_due(self.board_us()):
                emu.set_lick_input(level)
                emu.step(max(t_us, emu.now_us))
        opened_before = len(emu.events)
        emu.step(self.board_us(), self._filter_input(data))
        if self.licks is not None:
            for event in emu.events[opened_before:]:
                if event.kind == "open":
                    self.licks.on_reward(event.board_us)

    def _filter_input(self, data: bytes) -> bytes:
        """Apply drop_next_command faults: remove whole host lines naming the command."""
        faults = self._faults
        if not faults.drop_input and not self._input_partial:
            return data
        data = self._input_partial + data
        *lines, self._input_partial = data.split(b"\n")
        kept: list[bytes] = []
        for line in lines:
            name = line.split(b" ", 1)[0].decode("ascii", "replace")
            for i, (command, count) in enumerate(faults.drop_input):
                if command == name:
                    if count <= 1:
                        del faults.drop_input[i]
                    else:
                        faults.drop_input[i] = (command, count - 1)
                    self.lines_dropped += 1
                    break
            else:
                kept.append(line + b"\n")
        return b"".join(kept)

    def _apply_faults(self) -> None:
        faults = self._faults
        if faults.reset:
            faults.reset = False
            self.emulator.boot(self.board_us())
        if faults.disconnect:
            faults.disconnect = False
            self._hang_up()
        while faults.garbage:
            self._write(faults.garbage.popleft())

    def _route_output(self) -> None:
        """Apply drop/delay faults to the emulator's output, then write what is due."""
        faults = self._faults
        now = time.perf_counter()
        for line in self.emulator.take_output():
            if self._should_drop(line):
                self.lines_dropped += 1
                continue
            if faults.delay_lines > 0:
                faults.delay_lines -= 1
                self._held.append((now + faults.delay_s, line))
            elif self._held:
                self._held.append((self._held[-1][0], line))  # keep order behind held lines
            else:
                self._write(line)
        while self._held and self._held[0][0] <= now:
            self._write(self._held.popleft()[1])

    def _should_drop(self, line: bytes) -> bool:
        faults = self._faults
        if not faults.drop:
            return False
        parsed = p.parse_board_line(line.rstrip(b"\n"))
        kind = line.split(b" ", 1)[0].decode("ascii", "replace")
        for i, (message, command, count) in enumerate(faults.drop):
            if kind != message:
                continue
            if command is not None and not (isinstance(parsed, p.Ack) and parsed.command == command):
                continue
            if count <= 1:
                del faults.drop[i]
            else:
                faults.drop[i] = (message, command, count - 1)
            return True
        return False

    # ------------------------------------------------------------ transports

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _write(self, data: bytes) -> None:
        self.lines_sent += 1
        if self._master is not None:
            try:
                written = os.write(self._master, data)
            except BlockingIOError:
                written = 0  # nobody is reading the port: like a board talking to no host
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                written = 0
            if written < len(data):
                self.lines_dropped += 1
        elif self._client is not None:
            try:
                self._client.sendall(data)
            except (TimeoutError, OSError):
                self._drop_client()
        else:
            self.lines_dropped += 1

    def _open_pty(self) -> None:
        import tty  # POSIX only; imported here so the module loads on Windows

        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no newline translation: a byte pipe like a USB CDC port
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        # Keep our own slave fd open so the master never sees EIO between host sessions.
        tmp_link = self._link_path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_link)
        os.symlink(os.ttyname(slave), tmp_link)
        os.replace(tmp_link, self._link_path)

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def _read_pty(self) -> bytes:
        assert self._master is not None
        try:
            return os.read(self._master, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._client is not None:
            conn.close()  # the port is taken
            return
        conn.setblocking(True)
        conn.settimeout(0.5)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        self.connections += 1
        with self._lock:
            self.emulator.reset_input()  # a new host starts at a fresh line
            self._input_partial = b""
            if self.reset_on_connect:
                self.emulator.boot(self.board_us())

    def _read_client(self) -> bytes:
        assert self._client is not None
        try:
            data = self._client.recv(4096)
        except (TimeoutError, BlockingIOError):
            return b""
        except OSError:
            data = b""
        if not data:
            self._drop_client()
        return data

    def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.shutdown(socket.SHUT_RDWR)
            self._client.close()
            self._client = None

    def _hang_up(self) -> None:
        if self.transport == "socket":
            self._drop_client()
        else:
            self._close_pty()
            self._open_pty()
        self._input_partial = b""
        self.emulator.reset_input()

    def close(self) -> None:
        """Release the port, the wake-up pair and the log (called by :meth:`stop`)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:  # the board powers down: valve.jsonl must not end on an open valve
            self.emulator.power_off(self.board_us())
            self._write_log()
        self._drop_client()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.transport == "pty":
            self._close_pty()
            if self._pty_dir is not None:
                shutil.rmtree(self._pty_dir, ignore_errors=True)
        self._wake_r.close()
        self._wake_w.close()
        if self._log is not None:
            self._log.close()
            self._log = None


def run_emulator(
    transport: str,
    on_ready: Callable[[str], None],
    stop_event: StopFlag,
    log_path: str | Path | None = None,
    *,
    cfg: RewardConfig | None = None,
    max_open_ms: int = p.FIRMWARE_MAX_OPEN_MS,
) -> None:
    """Serve a simulated reward board until ``stop_event`` is set (blocking).

    ``transport``: "auto", "pty" or "socket". ``on_ready`` receives the serial URL to open (a pty
    path or ``socket://127.0.0.1:PORT``) once the port exists. ``cfg`` supplies the ``emulator_*``
    settings (TCP port, seeded lick generator: spontaneous bouts and licks after rewards); defaults
    if None. Valve opens/closes are appended to ``log_path`` as JSON lines.
    """
    cfg = cfg if cfg is not None else RewardConfig()
    licks = None
    if cfg.emulator_lick_rate_hz > 0 or cfg.emulator_reward_licks:
        licks = LickGenerator(
            cfg.emulator_seed,
            bout_rate_hz=cfg.emulator_lick_rate_hz,
            reward_bout_probability=0.9 if cfg.emulator_reward_licks else 0.0,
        )
    server = EmulatorServer(
        FirmwareEmulator(max_open_ms=max_open_ms), transport, port=cfg.emulator_tcp_port, log_path=log_path,
        licks=licks,
    )
    try:
        on_ready(server.url)
        server.serve(stop_event)
    finally:
        server.close()
