"""The Windows serial and timer paths, approximated on Linux (reward/transports.py): a ``socket://`` port without
``fileno()`` (the link reads on its reader thread) and timed waits that end on 15.625 ms ticks.

Mechanisms are asserted, not latencies: which path was taken, how often the port was reconfigured, that
threads end, that errors surface. The one timing property (the emulator waking on time despite a coarse
timer) runs on a simulated clock.
"""

from __future__ import annotations

import ctypes
import math
import random
import select
import sys
import threading
import time

import pytest
import zmq

from reward import protocol as p
from reward.controller import RewardController
from reward.emulator import DeadlineWaiter, EmulatorServer
from reward.link import LinkEvent, Received, ValveLink
from reward.outcome import DELIVERED
from reward.serial_reader import READER_TIMEOUT_S
from reward.transports import (
    WindowsLikeSocketSerial,
    windows_like_serial_for_url,
    windows_tick_select,
    windows_tick_sleep,
    windows_timer_period,
)
from tests.test_reward_link import CAL, connected_after, fast_cfg, link_states, outcome_for, outcomes, pump

pytestmark = pytest.mark.posix_only(reason="approximates Windows with POSIX-only calls (FIONREAD)")


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("valve-reader")]


@pytest.fixture
def windows_board():
    """(server, make_controller, ports): an emulated board on Windows-like waits, and links to it without fileno."""
    server = EmulatorServer(transport="socket", select_fn=windows_tick_select).start()
    ports: list[WindowsLikeSocketSerial] = []
    made: list[RewardController] = []

    def port_factory(*args, **kwargs) -> WindowsLikeSocketSerial:  # noqa: ANN002, ANN003 - serial_for_url's
        ports.append(windows_like_serial_for_url(*args, **kwargs))
        return ports[-1]

    def make(**overrides) -> RewardController:
        cfg = fast_cfg(**overrides)
        link = ValveLink.from_config(cfg, server.url, port_factory=port_factory, select_fn=windows_tick_select,
                                     sleep_fn=windows_tick_sleep)
        controller = RewardController(cfg, CAL, link)
        controller.start()
        pump(controller, connected_after())
        made.append(controller)
        return controller

    yield server, make, ports
    for controller in made:
        controller.close()
    server.stop()


def test_without_fileno_the_link_reads_on_a_thread_with_the_timeout_set_once(windows_board):
    server, make, ports = windows_board
    controller = make()
    [port] = ports
    with pytest.raises(OSError):
        port.fileno()  # as pyserial's win32 ports
    assert [t.daemon for t in reader_threads()] == [True]  # never keeps the process alive
    for i in range(5):
        controller.request(f"r{i}", 1.0, "decoder")  # 10 ms pulses
        [o] = outcomes(pump(controller, outcome_for(f"r{i}")))
        assert o.status == DELIVERED and 0 < o.t_written < o.t_ack < o.t_done
    # Dozens of reads (handshake, heartbeats, acks, DONEs), one timeout change: the reader's, right after open.
    assert port.reconfigurations == 1 and port.timeout == READER_TIMEOUT_S
    controller.close()
    assert reader_threads() == []
    assert controller.link.fileno() is None


def test_the_link_descriptor_wakes_a_zmq_poller_like_the_reward_process(windows_board):
    server, make, ports = windows_board
    link = make().link
    fd = link.fileno()
    assert fd is not None and fd >= 0
    link.poll(0.0)  # take everything pending, so only the reply to STATUS can wake the poller
    poller = zmq.Poller()
    poller.register(fd, zmq.POLLIN)
    link.send(p.encode_status(link.next_seq()))
    assert dict(poller.poll(5000)).get(fd) == zmq.POLLIN  # woken by the board, not by the 5 s timeout
    got: list = []
    deadline = time.monotonic() + 5
    while not any(isinstance(e, Received) and getattr(e.message, "command", "") == "STATUS" for e in got):
        assert time.monotonic() < deadline
        got += link.poll(0.05)


def test_serial_loss_on_the_reader_thread_is_reported_and_the_thread_ends(windows_board):
    server, make, ports = windows_board
    controller = make()
    [first] = reader_threads()
    server.disconnect()
    events = pump(controller, connected_after(1))  # lost, then connected again on a new port
    lost = [e for e in events if isinstance(e, LinkEvent) and e.state == "lost"]
    assert lost and "read from" in lost[0].detail and "failed" in lost[0].detail
    assert link_states(events).index("lost") < link_states(events).index("connected")
    first.join(5)
    assert not first.is_alive()
    assert [t for t in reader_threads() if t is not first] != []  # the new port's reader
    assert len(ports) == 2 and ports[1].reconfigurations == 1
    controller.request("after", 1.0, "decoder")
    [o] = outcomes(pump(controller, outcome_for("after")))
    assert o.status == DELIVERED
    controller.close()
    assert reader_threads() == []


class BrokenRead(WindowsLikeSocketSerial):
    """A port whose read hits a bug (not a serial error) once the link is up."""

    armed = False

    def read(self, size: int = 1) -> bytes:
        if BrokenRead.armed:
            raise ZeroDivisionError("a bug in the read path")
        return super().read(size)


def test_an_unexpected_error_in_the_reader_thread_is_raised_not_swallowed():
    server = EmulatorServer(transport="socket").start()

    def factory(url: str, *args, do_not_open: bool = False, **kwargs) -> BrokenRead:  # noqa: ANN002, ANN003
        ser = BrokenRead(None, *args, **kwargs)
        ser.port = url
        if not do_not_open:
            ser.open()
        return ser

    link = ValveLink(server.url, watchdog_ms=500, port_factory=factory)
    try:
        link.open()
        deadline = time.monotonic() + 5
        while not link.connected:
            assert time.monotonic() < deadline, link.last_error
            link.poll(0.05)
        BrokenRead.armed = True
        server.set_lick(True)  # something to read, so the next read certainly happens
        with pytest.raises(ZeroDivisionError, match="a bug in the read path"):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                link.poll(0.05)
    finally:
        BrokenRead.armed = False
        link.close()
        server.stop()
    assert link.state == "closed" and reader_threads() == []


class CoarseTimer:
    """A simulated clock whose timed waits end on the next 15.625 ms tick; a zero-timeout poll costs 0.1 ms."""

    TICK = 0.015625

    def __init__(self) -> None:
        self.t = 1000.0

    def clock(self) -> float:
        return self.t

    def select(self, r, w, x, timeout: float):  # noqa: ANN001 - select.select's signature
        if timeout > 0:
            self.t = math.ceil((self.t + timeout) / self.TICK) * self.TICK
        else:
            self.t += 0.0001
        return [], [], []


def test_the_emulator_wakes_on_time_for_a_deadline_despite_a_coarse_timer():
    timer = CoarseTimer()
    waiter = DeadlineWaiter(timer.select, timer.clock)
    rng = random.Random(3)
    late_plain, late_precise = [], []
    for i in range(200):
        timer.t += rng.uniform(0, 0.02)  # deadlines at every phase of the tick
        start = timer.t
        if i % 2:
            waiter.wait([], 0.05, precise=False)  # an idle wait: lateness is learnt from these
            late_plain.append(timer.t - start - 0.05)
        else:
            waiter.wait([], 0.05, precise=True)  # a valve-close deadline
            late_precise.append(timer.t - start - 0.05)
    assert max(late_plain) > 0.010  # the timer really is coarse
    assert min(late_precise) >= 0.0 and max(late_precise) <= 0.0002  # yet every deadline is met within 0.2 ms
    assert 0.0156 <= waiter.margin_s <= 0.0170  # learnt: one tick plus 0.5 ms of spinning


def test_an_emulator_that_wakes_late_still_times_the_valve_exactly():
    def preempted_select(r, w, x, timeout: float):  # noqa: ANN001 - select.select's signature
        ready = select.select(r, w, x, timeout)
        if not ready[0]:
            time.sleep(0.04)  # the process was descheduled: it sees the timeout 40 ms late
        return ready

    server = EmulatorServer(transport="socket", select_fn=preempted_select).start()
    cfg = fast_cfg()
    controller = RewardController(cfg, CAL, ValveLink.from_config(cfg, server.url))
    try:
        controller.start()
        pump(controller, connected_after())
        controller.request("r1", 2.0, "decoder")  # 20 ms
        [o] = outcomes(pump(controller, outcome_for("r1")))
    finally:
        controller.close()
        server.stop()
    assert o.status == DELIVERED
    # The board's loop() would have closed the valve on time; the emulator steps its timers at their due time.
    assert o.open_us == 20_000 and o.board_us_done - o.board_us_ack == 20_000
    [closed] = [e for e in server.events() if e.kind == "close"]
    assert (closed.cause, closed.open_us) == (p.CAUSE_TIMER, 20_000)


class FakeWinmm:
    def __init__(self, begin_result: int = 0) -> None:
        self.calls: list[tuple[str, int]] = []
        self._begin_result = begin_result

    def timeBeginPeriod(self, ms: int) -> int:  # noqa: N802 - the Windows API's name
        self.calls.append(("begin", ms))
        return self._begin_result

    def timeEndPeriod(self, ms: int) -> int:  # noqa: N802
        self.calls.append(("end", ms))
        return 0


@pytest.mark.parametrize("begin_result, expected", [(0, [("begin", 1), ("end", 1)]), (97, [("begin", 1)])])
def test_windows_timer_period_is_requested_and_released_only_on_windows(monkeypatch, begin_result, expected):
    winmm = FakeWinmm(begin_result)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name: winmm, raising=False)
    with windows_timer_period(1):
        pass
    assert winmm.calls == []  # not Windows: nothing asked
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(RuntimeError, match="inside"), windows_timer_period(1):
        assert winmm.calls == [("begin", 1)]
        raise RuntimeError("inside")
    assert winmm.calls == expected  # released even on an exception; never released if it was refused
