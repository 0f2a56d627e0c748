"""The simulated twin of the reward board, served over a real port: this module assembles the parts.

:class:`EmulatorServer` runs a :class:`reward.board_model.FirmwareEmulator` (the sketch's logic)
on a :mod:`reward.transports` port (a pty on POSIX, or a TCP port reachable with pyserial's
``socket://127.0.0.1:PORT`` on any OS), with the board clock taken from ``time.perf_counter_ns``,
an optional seeded :class:`reward.licks.LickGenerator`, a valve event log, the test faults of
:mod:`reward.faults` (drop or delay lines, inject garbage, disconnect, reset) and a stalled firmware loop
with the AVR hardware watchdog that ends it (:meth:`EmulatorServer.stall`).

:func:`run_emulator` is the blocking entry point a supervised process calls.

The firmware's deadlines (valve close, watchdog, lick debounce) are met with :class:`DeadlineWaiter`,
not with a timed select alone: Windows ends timed waits on its ~15.6 ms timer tick, which made the
emulated valve overrun its pulses by up to a tick.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Protocol

import msgspec

from reward import protocol as p
from reward.board_model import FirmwareEmulator, ValveEvent
from reward.config import RewardConfig
from reward.faults import FaultInjector
from reward.licks import LickGenerator
from reward.transports import open_transport, resolve_transport, windows_timer_period

SelectFn = Callable[[Sequence[object], Sequence[object], Sequence[object], float], tuple[list, list, list]]

SERIAL_RX_BUFFER = 63
"""Bytes the Uno's UART receive ring holds (64, one kept free) while loop() is not reading: the rest is lost."""


class _Stall:
    """A hung firmware loop from ``start_us`` to ``end_us`` (board times) and what the UART received meanwhile."""

    def __init__(self, start_us: int, end_us: int) -> None:
        self.start_us = start_us
        self.end_us = end_us
        self.held = b""

    @property
    def reset_us(self) -> int:
        """When the AVR watchdog resets the chip: ``AVR_WATCHDOG_MS`` after the last loop() pass."""
        return self.start_us + p.AVR_WATCHDOG_MS * 1000

    @property
    def resolves_us(self) -> int:
        """When the stall ends: the loop resumes, or the watchdog resets the chip first."""
        return min(self.end_us, self.reset_us)


class StopFlag(Protocol):
    """threading.Event or multiprocessing.Event: anything with is_set()."""

    def is_set(self) -> bool: ...


class DeadlineWaiter:
    """select() on readers that wakes within a fraction of a millisecond after a deadline, on any timer.

    Why: a timed wait may end late by up to the OS timer tick (Windows: 15.6 ms by default), and the
    emulated valve closes when the serving loop wakes. So for a precise deadline, block only until
    ``margin_s`` before it, then poll with a zero timeout (which returns at once everywhere) until it
    passes or input arrives. ``margin_s`` is learnt: the largest lateness of the last ``history`` timed
    waits that ran out, plus 0.5 ms, within [``min_margin_s``, ``max_margin_s``]; until ``learn_after``
    waits have been measured it is ``max_margin_s`` (an unknown timer is assumed coarse). On Linux that
    spins about 1 ms per deadline; with 15.6 ms ticks about 16 ms.
    """

    def __init__(
        self,
        select_fn: SelectFn = select.select,
        clock: Callable[[], float] = time.perf_counter,
        *,
        min_margin_s: float = 0.001,
        max_margin_s: float = 0.03,
        history: int = 64,
        learn_after: int = 16,
    ) -> None:
        self._select = select_fn
        self._clock = clock
        self._min_margin = min_margin_s
        self._max_margin = max_margin_s
        self._late: deque[float] = deque(maxlen=max(history, learn_after))
        self._learn_after = learn_after
        self.margin_s = max_margin_s

    def wait(self, readers: Sequence[object], timeout_s: float, *, precise: bool) -> list:
        """Readers that are ready; [] once ``timeout_s`` passed (not before it when ``precise``)."""
        start = self._clock()
        if not precise or timeout_s > self.margin_s:
            block = max(0.0, timeout_s - self.margin_s) if precise else timeout_s
            ready, _, _ = self._select(readers, [], [], block)
            if ready:
                return ready
            if block > 0:
                self._learn(self._clock() - start - block)
            if not precise:
                return []
        deadline = start + timeout_s
        while True:
            ready, _, _ = self._select(readers, [], [], 0)  # releases the GIL: threads run meanwhile
            if ready or self._clock() >= deadline:
                return ready

    def _learn(self, late_s: float) -> None:
        self._late.append(max(0.0, late_s))
        if len(self._late) >= self._learn_after:
            self.margin_s = min(self._max_margin, max(self._min_margin, max(self._late) + 0.0005))


class EmulatorServer:
    """Serves a :class:`FirmwareEmulator` on a pty (POSIX) or a localhost TCP port.

    ``transport``: "pty", "socket" or "auto" (pty on POSIX, socket elsewhere). On a pty, ``url`` is
    a stable symlink to the current slave (a disconnect fault swaps the pty behind it, like a USB
    re-plug); on a socket, ``url`` is ``socket://127.0.0.1:PORT`` and one client is served at a
    time (a second one is turned away, like an exclusively opened COM port). ``select_fn`` is the
    wait the serving loop uses (tests and the benchmark pass
    :func:`reward.transports.windows_tick_select` to approximate Windows' timer).
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
        select_fn: SelectFn = select.select,
    ) -> None:
        transport = resolve_transport(transport)
        self.transport = transport
        self.emulator = emulator if emulator is not None else FirmwareEmulator()
        self.licks = licks
        self.reset_on_connect = reset_on_connect
        self._waiter = DeadlineWaiter(select_fn)
        self._lock = threading.Lock()
        self._faults = FaultInjector()
        self._log_path = Path(log_path) if log_path is not None else None
        self._log: IO[str] | None = None
        self._logged_events = 0
        self._t0_ns = time.perf_counter_ns()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._stall: _Stall | None = None
        self.lines_sent = 0
        self.lines_dropped = 0
        self.connections = 0
        self.watchdog_resets = 0
        self.rx_bytes_lost = 0  # received while loop() hung, beyond the UART ring
        self._port = open_transport(transport, port)
        self.url = self._port.url
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
            self._faults.drop_output(message, command, count)

    def drop_next_command(self, command: str, count: int = 1) -> None:
        """Fault: the next ``count`` host lines of ``command`` (e.g. "OPEN") never reach the firmware."""
        with self._lock:
            self._faults.drop_input(command, count)

    def delay_next(self, lines: int, seconds: float) -> None:
        """Fault: hold the next ``lines`` output lines (and everything behind them) for ``seconds``."""
        with self._lock:
            self._faults.delay_output(lines, seconds)

    def inject_garbage(self, data: bytes) -> None:
        """Fault: write raw bytes to the host as if the line were noisy."""
        with self._lock:
            self._faults.add_garbage(data)
        self._wake()

    def disconnect(self) -> None:
        """Fault: drop the connection (socket: close the client; pty: hang up and swap the pty)."""
        with self._lock:
            self._faults.request_disconnect()
        self._wake()

    def reset_board(self) -> None:
        """Fault: the board reboots (valve closes, link is lost, BOOT is sent)."""
        with self._lock:
            self._faults.request_reset()
        self._wake()

    def stall(self, seconds: float) -> int:
        """Fault: the firmware's loop() hangs for ``seconds`` from now; returns the board time it hung at.

        Nothing runs meanwhile: no valve timer, no heartbeat watchdog, no reply; the UART still receives into
        its 63-byte ring. As on the board, the AVR hardware watchdog resets the chip ``AVR_WATCHDOG_MS`` after
        the hang began if it lasts that long (valve closed, BOOT sent, the reset's RAM kept); a shorter hang
        ends with loop() running late (a pulse that fell due meanwhile closes late).
        """
        if not seconds > 0:
            raise ValueError(f"a stall lasts > 0 s, got {seconds!r}")
        with self._lock:
            now_us = max(self.board_us(), self.emulator.now_us)
            self._advance(now_us)  # what fell due before the hang still ran
            if self._stall is None:
                self._stall = _Stall(now_us, now_us + round(seconds * 1e6))
            start = self._stall.start_us
        self._wake()
        return start

    def is_stalled(self) -> bool:
        with self._lock:
            return self._stall is not None

    def set_lick(self, active: bool) -> None:
        """Drive the lick sensor by hand (tests)."""
        with self._lock:
            self._advance(self.board_us())  # timers due before this change run first
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
        with windows_timer_period(1):
            self._serve(stop_event)

    def _serve(self, stop_event: StopFlag) -> None:
        while not stop_event.is_set() and not self._stop.is_set():
            timeout, precise = self._select_timeout()
            readers: list[object] = [self._wake_r, *self._port.readers()]
            ready = self._waiter.wait(readers, timeout, precise=precise)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            if self._port.accept(ready):
                self._on_connect()
            data = self._port.read(ready)
            with self._lock:
                self._advance(self.board_us())
                self._apply_faults()
                self._run_firmware(data)
                self._route_output()
                self._write_log()

    def _on_connect(self) -> None:
        self.connections += 1
        with self._lock:
            self.emulator.reset_input()  # a new host starts at a fresh line
            self._faults.forget_partial_input()
            if self.reset_on_connect:
                self._boot(self.board_us())

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

    def _select_timeout(self) -> tuple[float, bool]:
        """How long to wait for input, and whether that wait ends on a firmware deadline (to meet precisely)."""
        timeout = 0.05  # bounds how long a stop request waits
        now_us = self.board_us()
        with self._lock:
            stall = self._stall
            deadline = stall.resolves_us if stall is not None else self.emulator.next_deadline_us()
            if self.licks is not None:
                lick_due = self.licks.next_change_us(now_us)
                if lick_due is not None:
                    deadline = lick_due if deadline is None else min(deadline, lick_due)
            release = self._faults.next_release()
            if release is not None:
                timeout = min(timeout, max(0.0, release - time.perf_counter()))
            # Only the valve's close is met precisely (spinning the last ~ms): its DONE line is what the host times.
            # Watchdog and lick-debounce timers run at their due board time anyway (see serve), so a wake a tick
            # late only delays a line, and spinning for each of them cost the emulator ~5 % of a core.
            precise_due = self.emulator.valve_close_due_us()
        if deadline is not None and (deadline - now_us) / 1e6 <= timeout:
            return max(0.0, (deadline - now_us) / 1e6), precise_due is not None and precise_due <= deadline
        return timeout, False

    def _advance(self, now_us: int) -> None:
        """Bring the firmware up to ``now_us``: simulated licks and timers, each at its own board time.

        Why: the board's loop() runs every few microseconds, so its valve closes on time whatever the
        host does, while this process may wake late (preempted, or a coarse timer). Timers that fell
        due are run at their due time, before anything that happens now (host input, faults, a lick
        set by hand), so neither the emulated valve, its DONE stamp nor valve.jsonl is late; only
        the DONE line's write is. Caller holds the lock.
        """
        emu = self.emulator
        if self.licks is not None:
            for t_us, level in self.licks.pop_due(now_us):
                self._catch_up(t_us)
                emu.set_lick_input(level)  # the pin changes even while loop() hangs; it reads it later
                if self._stall is None:
                    emu.step(max(t_us, emu.now_us))
        self._catch_up(now_us)

    def _catch_up(self, now_us: int) -> None:
        """Run the firmware's timers due before ``now_us`` at their due board time (none while loop() hangs)."""
        emu = self.emulator
        for _ in range(8):  # each step resolves the deadline it runs at; a few can be due at once
            if self._stall is not None:
                if not self._end_stall(now_us):
                    return
                continue
            due = emu.next_deadline_us()
            if due is None or due >= now_us:
                return
            emu.step(max(due, emu.now_us))

    def _end_stall(self, now_us: int) -> bool:
        """End the hang if it is over by ``now_us``: the watchdog's reset, or loop() running again (late)."""
        stall = self._stall
        assert stall is not None
        if now_us < stall.resolves_us:
            return False
        if stall.reset_us <= stall.end_us:
            self.watchdog_resets += 1
            self._boot(stall.reset_us)  # the received bytes were in RAM: gone with the reset
        else:
            self._stall = None
            self._step(stall.end_us, stall.held)  # timers that fell due meanwhile run now, late, as on the board
        return True

    def _boot(self, now_us: int) -> None:
        """The board resets (a reset ends any hang)."""
        self._stall = None
        self.emulator.boot(max(now_us, self.emulator.now_us))

    def _step(self, now_us: int, data: bytes) -> None:
        emu = self.emulator
        opened_before = len(emu.events)
        emu.step(now_us, data)
        if self.licks is not None:
            for event in emu.events[opened_before:]:
                if event.kind == "open":
                    self.licks.on_reward(event.board_us)

    def _run_firmware(self, data: bytes) -> None:
        now_us = max(self.board_us(), self.emulator.now_us)
        self._advance(now_us)
        data, dropped = self._faults.filter_input(data)
        self.lines_dropped += dropped
        stall = self._stall
        if stall is not None:  # loop() hangs: the UART ring fills, what does not fit is lost
            room = SERIAL_RX_BUFFER - len(stall.held)
            stall.held += data[:room]
            self.rx_bytes_lost += max(0, len(data) - room)
            return
        self._step(now_us, data)

    def _apply_faults(self) -> None:
        if self._faults.take_reset():
            self._boot(self.board_us())
        if self._faults.take_disconnect():
            self._hang_up()
        for chunk in self._faults.take_garbage():
            self._write(chunk)

    def _route_output(self) -> None:
        """Apply drop/delay faults to the emulator's output, then write what is due."""
        due, dropped = self._faults.route_output(self.emulator.take_output(), time.perf_counter())
        self.lines_dropped += dropped
        for line in due:
            self._write(line)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _write(self, data: bytes) -> None:
        self.lines_sent += 1
        if not self._port.write(data):
            self.lines_dropped += 1

    def _hang_up(self) -> None:
        self._port.hang_up()
        self._faults.forget_partial_input()
        self.emulator.reset_input()

    def close(self) -> None:
        """Release the port, the wake-up pair and the log (called by :meth:`stop`)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:  # the board powers down: valve.jsonl must not end on an open valve
            self.emulator.power_off(self.board_us())
            self._write_log()
        self._port.close()
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
    duty_max_ms: int = p.DUTY_MAX_OPEN_MS,
    duty_window_ms: int = p.DUTY_WINDOW_MS,
    select_fn: SelectFn = select.select,
) -> None:
    """Serve a simulated reward board until ``stop_event`` is set (blocking).

    ``transport``: "auto", "pty" or "socket". ``on_ready`` receives the serial URL to open (a pty
    path or ``socket://127.0.0.1:PORT``) once the port exists. ``cfg`` supplies the ``emulator_*``
    settings (TCP port, seeded lick generator: spontaneous bouts and licks after rewards); defaults
    if None. Valve opens/closes are appended to ``log_path`` as JSON lines. ``max_open_ms``, ``duty_max_ms``,
    ``duty_window_ms``: the firmware's limits (defaults: the sketch's; a benchmark that pulses faster than the
    real board allows raises the duty limit). ``select_fn``: see :class:`EmulatorServer`. On Windows the
    process asks for a 1 ms timer tick while serving.
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
        FirmwareEmulator(max_open_ms=max_open_ms, duty_max_ms=duty_max_ms, duty_window_ms=duty_window_ms), transport,
        port=cfg.emulator_tcp_port, log_path=log_path, licks=licks, select_fn=select_fn,
    )
    try:
        on_ready(server.url)
        server.serve(stop_event)
    finally:
        server.close()
