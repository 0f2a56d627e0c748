"""Host link + controller against the emulated board through the real pyserial stack (pty and socket://),
with injected faults: dropped/delayed acks, garbage, disconnects, resets, stopped heartbeats."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable

import pytest

from reward import protocol as p
from reward.board_model import CAUSE_RESET, FirmwareEmulator
from reward.calibration import ValveCalibration
from reward.config import RewardConfig
from reward.controller import RewardController
from reward.emulator import EmulatorServer
from reward.link import LinkEvent, ProtocolMismatch, ValveLink
from reward.outcome import DELIVERED, FAILED, REFUSED, BoardNotice, LickEvent, RewardOutcome
from reward.transports import windows_like_serial_for_url, windows_tick_select, windows_tick_sleep
from rig.core.clock import now_ns

TRANSPORTS = [pytest.param("pty", marks=pytest.mark.posix_only(reason="pseudo-terminals are POSIX")), "socket"]
# "windows": Windows approximated on Linux (reward/transports.py): socket:// through a port without fileno(), so
# the link reads on its reader thread, and every timed wait of the host and the emulator ends on a 15.625 ms tick.
BOARDS = [*TRANSPORTS, pytest.param("windows", marks=pytest.mark.posix_only(reason="approximates Windows on POSIX"))]
WINDOWS_LINK = {"port_factory": windows_like_serial_for_url, "select_fn": windows_tick_select,
                "sleep_fn": windows_tick_sleep}
CAL = ValveCalibration(valve="valve0", date="2025-01-01T00:00:00", intercept_ms=0.0, slope_ms_per_ul=10.0)


def fast_cfg(**overrides) -> RewardConfig:
    values = dict(
        min_interval_s=0.0, ack_timeout_s=0.1, retries=2, heartbeat_interval_s=0.03, watchdog_ms=300,
        link_timeout_s=0.6, reconnect_interval_s=0.05, handshake_timeout_s=1.0, max_open_ms=2000.0,
        test_pulse_ms=20.0,
    )
    values.update(overrides)
    return RewardConfig(**values)


def pump(controller: RewardController, until: Callable[[list], bool], timeout: float = 5.0) -> list:
    """Drive the controller until ``until(events so far)`` holds; fail with the events if it never does."""
    events: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += controller.poll(0.02)
        if until(events):
            return events
    pytest.fail(f"condition not reached within {timeout} s; events: {events}")


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition on the emulator without driving the host (used when heartbeats must stop)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout} s")
        pause.wait(0.005)


def outcomes(events: list) -> list[RewardOutcome]:
    return [e for e in events if isinstance(e, RewardOutcome)]


def outcome_for(request_id: str) -> Callable[[list], bool]:
    return lambda events: any(o.request_id == request_id for o in outcomes(events))


def notices(events: list) -> list[BoardNotice]:
    return [e for e in events if isinstance(e, BoardNotice)]


def lick_events(events: list) -> list[LickEvent]:
    return [e for e in events if isinstance(e, LickEvent)]


def link_states(events: list) -> list[str]:
    return [e.state for e in events if isinstance(e, LinkEvent)]


def connected_after(index: int = 0) -> Callable[[list], bool]:
    return lambda events: "connected" in link_states(events)[index:]


def opens(server: EmulatorServer) -> list:
    return [e for e in server.events() if e.kind == "open"]


def board_output_read(server: EmulatorServer, controller: RewardController) -> list:
    """Barrier: make the board emit a lick edge and pump until the host reads it.

    The board writes its lines in order, so once this lick arrives the host has read everything the
    board said before it (late DONEs included). Returns the events pumped meanwhile.
    """
    server.set_lick(True)
    return pump(controller, lambda events: any(lick.onset for lick in lick_events(events)))


@pytest.fixture(params=BOARDS)
def board(request):
    """(server, make_controller): an emulated board on each transport and connected controllers on it."""
    if request.param == "windows":
        server = EmulatorServer(transport="socket", select_fn=windows_tick_select).start()
        link_options = WINDOWS_LINK
    else:
        server = EmulatorServer(transport=request.param).start()
        link_options = {}
    made: list[RewardController] = []

    def make(calibration: ValveCalibration | None = CAL, **overrides) -> RewardController:
        cfg = fast_cfg(**overrides)
        controller = RewardController(cfg, calibration, ValveLink.from_config(cfg, server.url, **link_options))
        controller.start()
        pump(controller, connected_after())
        made.append(controller)
        return controller

    yield server, make
    for controller in made:
        controller.close()
    server.stop()


@pytest.fixture
def socket_board():
    """make(emulator=None, **cfg) -> (server, controller): a board (any firmware twin) on socket://, connected."""
    made: list[tuple[EmulatorServer, RewardController]] = []

    def make(emulator: FirmwareEmulator | None = None, **overrides) -> tuple[EmulatorServer, RewardController]:
        server = EmulatorServer(emulator, transport="socket").start()
        cfg = fast_cfg(**overrides)
        controller = RewardController(cfg, CAL, ValveLink.from_config(cfg, server.url))
        made.append((server, controller))
        controller.start()
        pump(controller, connected_after())
        return server, controller

    yield make
    for server, controller in made:
        controller.close()
        server.stop()


# ---------------------------------------------------------------- the normal path


def test_reward_round_trip_with_host_and_board_stamps(board):
    server, make = board
    controller = make()
    controller.request("r1", 2.0, "decoder", {"frame": 42, "t_ready": 7})
    [o] = outcomes(pump(controller, outcome_for("r1")))
    assert (o.status, o.reason, o.volume_ul, o.open_ms, o.source) == (DELIVERED, "", 2.0, 20.0, "decoder")
    assert o.meta == {"frame": 42, "t_ready": 7}
    assert o.attempts == 1
    assert 0 < o.t_received <= o.t_written < o.t_ack < o.t_done
    assert 0 <= o.board_us_ack < o.board_us_done
    assert o.open_us >= 20_000  # the board never closes early
    [opened] = opens(server)
    assert (opened.seq, opened.command, opened.duration_us, opened.board_us) == (o.seq, "OPEN", 20_000, o.board_us_ack)
    assert not server.valve_is_open()
    assert controller.budget.delivered_ul == controller.budget.committed_ul == 2.0


def test_test_pulse_uses_the_test_command(board):
    server, make = board
    controller = make()
    controller.test_pulse("t1")
    [o] = outcomes(pump(controller, outcome_for("t1")))
    assert (o.status, o.source, o.open_ms) == (DELIVERED, "test_pulse", 20.0)
    assert [e.command for e in opens(server)] == ["TEST"]


def test_licks_are_streamed_with_board_times(board):
    server, make = board
    controller = make()
    pump(controller, lambda _: controller.link.board_to_host_ns(0) is not None)  # a heartbeat round trip
    server.set_lick(True)
    licks = lick_events(pump(controller, lambda ev: bool(lick_events(ev))))
    server.set_lick(False)
    licks += lick_events(pump(controller, lambda ev: bool(lick_events(ev))))
    assert [(lick.onset, lick.count, lick.missed) for lick in licks] == [(True, 1, 0), (False, 2, 0)]
    assert licks[0].board_us < licks[1].board_us
    assert licks[0].t_ns > 0 and licks[0].t_received > 0


# ---------------------------------------------------------------- retries never double-deliver


def test_dropped_ack_is_retried_with_the_same_seq_and_delivered_once(board):
    server, make = board
    controller = make()
    server.drop_next("ACK", 1, command="OPEN")
    controller.request("r1", 30.0, "decoder")  # 300 ms: the ack timeout (100 ms) fires before the DONE
    [o] = outcomes(pump(controller, outcome_for("r1")))
    assert o.status == DELIVERED and o.attempts == 2
    [opened] = opens(server)
    assert opened.seq == o.seq
    assert o.board_us_ack == opened.board_us  # the board's re-ack carries the original open time
    assert controller.counts["retries"] == 1


def test_delayed_ack_and_retry_still_deliver_once(board):
    server, make = board
    controller = make()
    server.delay_next(1, 0.25)
    controller.request("r1", 1.0, "decoder")
    [o] = outcomes(pump(controller, outcome_for("r1")))
    assert o.status == DELIVERED and o.attempts >= 2
    assert len(opens(server)) == 1


def closes(server: EmulatorServer) -> dict[int, int]:
    """seq -> open time (µs) of every opening the emulated valve closed again."""
    return {e.seq: e.open_us for e in server.events() if e.kind == "close"}


def test_no_ack_at_all_closes_the_valve_and_reports_what_it_dispensed(board):
    server, make = board
    controller = make()
    server.drop_next("ACK", 10, command="OPEN")
    controller.request("r1", 150.0, "decoder")  # 1.5 s, far longer than 3 attempts x 100 ms
    [o] = outcomes(pump(controller, outcome_for("r1")))
    assert o.status == FAILED and "no acknowledgement after 3 attempts" in o.reason and "partial delivery" in o.reason
    assert len(opens(server)) == 1
    wait_until(lambda: not server.valve_is_open())
    assert server.events()[-1].cause == p.CAUSE_CLOSE
    assert o.open_us == closes(server)[o.seq] and 0 < o.open_us < 1_500_000
    assert o.dispensed_ul == pytest.approx(o.open_us / 10_000)  # CAL: 10 ms per uL
    assert controller.budget.committed_ul == pytest.approx(o.dispensed_ul)
    assert controller.budget.reward_ul == o.dispensed_ul


# ---------------------------------------------------------------- fail closed


def test_watchdog_closes_the_valve_when_heartbeats_stop_then_the_link_recovers(board):
    server, make = board
    controller = make()
    controller.request("long", 150.0, "decoder")
    pump(controller, lambda _: server.valve_is_open())
    # The host goes quiet (as if it hung): no heartbeats, no commands.
    wait_until(lambda: not server.valve_is_open(), timeout=3.0)
    assert server.events()[-1].cause == p.CAUSE_WATCHDOG
    assert not server.is_linked()
    events = pump(controller, lambda ev: outcome_for("long")(ev) and "connected" in link_states(ev))
    assert "watchdog_tripped" in link_states(events)
    [o] = outcomes(events)
    assert o.status == FAILED and "watchdog" in o.reason
    controller.request("after", 1.0, "decoder")
    assert outcomes(pump(controller, outcome_for("after")))[0].status == DELIVERED


def test_serial_loss_mid_pulse_is_reconciled_with_the_board_log_after_the_reconnect(board):
    server, make = board
    controller = make()
    controller.request("r1", 80.0, "decoder")
    pump(controller, lambda _: controller.busy and server.valve_is_open())
    server.disconnect()
    events = pump(controller, outcome_for("r1"))
    assert link_states(events)[:2] == ["lost", "reconnecting"]  # not failed at the loss: it waited for the board
    if "connected" not in link_states(events):
        pump(controller, connected_after())
    assert controller.link.resumed
    [o] = outcomes(events)
    # Exact whichever answers first on the new connection: the board's log, or a DONE (of the watchdog, which may
    # fire before the new HELLO arrives, or of the handshake that closed the valve).
    assert o.status == FAILED
    assert "lost" in o.reason and "valve was open" in o.reason and "partial delivery" in o.reason
    assert not server.valve_is_open()
    assert server.events()[-1].cause in (p.CAUSE_HELLO, p.CAUSE_WATCHDOG)
    assert o.open_us == closes(server)[o.seq] < 800_000  # what the valve really did, not what was asked
    assert o.dispensed_ul == pytest.approx(o.open_us / 10_000)
    controller.request("r2", 1.0, "decoder")
    assert outcomes(pump(controller, outcome_for("r2")))[0].status == DELIVERED
    assert controller.counts["link_losses"] == 1
    assert controller.budget.reward_ul == pytest.approx(o.dispensed_ul + 1.0)


def test_a_lost_done_is_reconciled_from_the_board_log_as_delivered(board):
    server, make = board
    controller = make()
    server.drop_next("DONE", 1)
    controller.request("r1", 5.0, "decoder")  # 50 ms
    events = pump(controller, outcome_for("r1"))
    [o] = outcomes(events)
    assert o.status == DELIVERED and o.reconciled and "no completion message" in o.reason
    assert o.open_us == 50_000 == closes(server)[o.seq]
    assert o.dispensed_ul == 5.0 and o.t_done > o.t_ack > 0
    assert controller.budget.delivered_ul == controller.budget.reward_ul == controller.budget.committed_ul == 5.0
    assert len(opens(server)) == 1  # asked about, never re-sent


def test_a_pulse_that_completes_while_the_link_is_down_is_counted_as_delivered(board):
    server, make = board
    controller = make()
    server.drop_next("DONE", 1)  # the host never reads this pulse's DONE...
    controller.request("r1", 2.0, "decoder")  # 20 ms
    pump(controller, lambda _: opens(server))
    wait_until(lambda: closes(server))  # ...it completes while the host is not reading...
    server.disconnect()  # ...and the link goes down
    events = pump(controller, outcome_for("r1"))
    [o] = outcomes(events)
    assert o.status == DELIVERED and o.reconciled and o.open_us == 20_000 and o.dispensed_ul == 2.0
    assert controller.budget.delivered_ul == 2.0


def test_board_reset_is_a_link_loss_and_is_recovered(board):
    server, make = board
    controller = make()
    server.reset_board()
    events = pump(controller, lambda ev: "connected" in link_states(ev))
    assert link_states(events)[:2] == ["lost", "reconnecting"]
    assert any("reset" in e.detail for e in events if isinstance(e, LinkEvent))


def test_silent_board_is_detected(board):
    server, make = board
    controller = make()
    server.drop_next("ACK", 10_000, command="HB")  # the board stops answering heartbeats
    events = pump(controller, lambda ev: "lost" in link_states(ev), timeout=5.0)
    assert any("silent" in e.detail for e in events if isinstance(e, LinkEvent))
    pump(controller, connected_after())


def test_garbage_from_the_board_is_reported_and_skipped(board):
    server, make = board
    controller = make()
    server.inject_garbage(b"\x00\xffnoise\nACK 1 2 OPEN 5*00\n" + b"Q" * 300 + b"\n")
    controller.request("r1", 1.0, "decoder")
    events = pump(controller, lambda ev: outcome_for("r1")(ev) and len(notices(ev)) >= 3)
    assert outcomes(events)[0].status == DELIVERED
    assert [n.code for n in notices(events)] == ["corrupt_board_line"] * 3
    assert [n.message.split(":")[0] for n in notices(events)] == [
        "unusable line from the board (CHAR", "unusable line from the board (CSUM", "unusable line from the board (LONG"
    ]


def test_garbage_to_the_board_is_rejected_without_losing_the_link(board):
    server, make = board
    controller = make()
    controller.link.send(b"\x01\x02 OPEN 99 1000\n" + b"x" * 100 + b"\n")
    events = pump(controller, lambda ev: len(notices(ev)) >= 2)
    assert [n.message.rsplit(" ", 1)[-1] for n in notices(events)][:2] == ["CHAR", "LONG"]
    assert not opens(server)
    assert controller.link.connected


@pytest.mark.parametrize("seed", [1, 2])
def test_every_request_ends_in_exactly_one_outcome_under_random_faults(board, seed):
    server, make = board
    controller = make()
    rng = random.Random(seed)
    ids = [f"r{i}" for i in range(10)]
    seen: list[RewardOutcome] = []
    for request_id in ids:
        fault = rng.choice(["none", "drop_ack", "drop_done", "delay", "garbage", "disconnect"])
        if fault == "drop_ack":
            server.drop_next("ACK", rng.randint(1, 4), command="OPEN")
        elif fault == "drop_done":
            server.drop_next("DONE", 1)
        elif fault == "delay":
            server.delay_next(rng.randint(1, 3), rng.uniform(0.05, 0.3))
        elif fault == "garbage":
            server.inject_garbage(bytes(rng.randrange(256) for _ in range(40)))
        controller.request(request_id, rng.choice([0.5, 2.0, 15.0]), "decoder")
        if fault == "disconnect":
            server.disconnect()
        seen += outcomes(pump(controller, outcome_for(request_id)))
        if not controller.link.connected:
            pump(controller, lambda _: controller.link.connected)
    seen += outcomes(pump(controller, lambda _: not server.valve_is_open()))
    seen += outcomes(board_output_read(server, controller))  # a late duplicate outcome would be read by now
    assert not controller.busy
    assert sorted(o.request_id for o in seen) == sorted(ids)
    delivered_seqs = [o.seq for o in seen if o.status == DELIVERED]
    open_seqs = [e.seq for e in opens(server)]
    assert len(open_seqs) == len(set(open_seqs))  # no seq ever opened the valve twice
    assert set(delivered_seqs) <= set(open_seqs)
    assert len(open_seqs) <= len(ids)
    # Exact accounting: every outcome says what the valve did for it, and the totals are what flowed.
    flowed = closes(server)
    for o in seen:
        assert o.dispensed_ul == pytest.approx(flowed.get(o.seq, 0) / 10_000), o
        if o.seq in flowed:
            assert o.open_us == flowed[o.seq], o
    assert controller.budget.reward_ul == pytest.approx(sum(flowed.values()) / 10_000)
    assert controller.budget.committed_ul == pytest.approx(controller.budget.reward_ul)


# ---------------------------------------------------------------- policy


def test_minimum_interval_refuses_early_requests(board):
    _, make = board
    controller = make(min_interval_s=60.0)
    controller.request("r1", 1.0, "decoder")
    controller.request("r2", 1.0, "decoder")  # while r1 runs: busy comes first
    pump(controller, outcome_for("r1"))
    controller.request("r3", 1.0, "decoder")
    [o3] = outcomes(pump(controller, outcome_for("r3")))
    assert o3.status == REFUSED and "minimum interval" in o3.reason


def test_test_pulses_share_the_minimum_interval_with_rewards_unless_overridden(board):
    server, make = board
    controller = make(min_interval_s=60.0)
    for i in range(20):  # an operator (or a script) hammering "test pulse": one opening, then refusals
        controller.test_pulse(f"t{i}")
    events = pump(controller, lambda ev: len(outcomes(ev)) == 20)
    assert [o.status for o in outcomes(events)].count(DELIVERED) == 1
    assert all("minimum interval" in o.reason or "busy" in o.reason for o in outcomes(events) if o.status == REFUSED)
    controller.request("r1", 1.0, "decoder")  # a reward right after a test pulse: the same valve budget
    [r1] = outcomes(pump(controller, outcome_for("r1")))
    assert r1.status == REFUSED and "minimum interval" in r1.reason
    controller.test_pulse("t-override", override=True, issued_by="console@rig1")
    events = pump(controller, outcome_for("t-override"))
    [o] = outcomes(events)
    assert (o.status, o.override, o.issued_by, o.volume_kind) == (DELIVERED, True, "console@rig1", "other")
    [notice] = [n for n in notices(events) if n.code == "operator_override"]
    assert "console@rig1" in notice.message and "minimum interval" in notice.message
    assert len(opens(server)) == 2


def test_test_pulses_and_flushes_count_against_the_volume_cap_apart_from_rewards(board):
    server, make = board
    controller = make(max_volume_ul=5.0)
    controller.test_pulse("t1", 20.0)  # 2 uL with CAL
    pump(controller, outcome_for("t1"))
    controller.pulse("f1", 20.0, "flush")
    pump(controller, outcome_for("f1"))
    controller.test_pulse("t2", 20.0)
    [t2] = outcomes(pump(controller, outcome_for("t2")))
    assert t2.status == REFUSED and "volume cap" in t2.reason
    controller.request("r1", 1.0, "decoder")
    [r1] = outcomes(pump(controller, outcome_for("r1")))
    assert r1.status == DELIVERED and r1.volume_kind == "reward" and r1.dispensed_ul == 1.0
    assert (controller.budget.other_ul, controller.budget.reward_ul, controller.budget.committed_ul) == (4.0, 1.0, 5.0)
    controller.pulse("f2", 20.0, "flush", override=True, issued_by="bench")
    [f2] = outcomes(pump(controller, outcome_for("f2")))
    assert f2.status == DELIVERED and f2.override and controller.budget.other_ul == 6.0  # counted, not capped
    assert len(opens(server)) == 4


def test_the_board_duty_cycle_limit_refuses_whatever_the_host_allows(socket_board):
    # A board allowing 100 ms per 5 s (the real one: 2 s per 10 s), so that short pulses reach the limit.
    server, controller = socket_board(FirmwareEmulator(duty_max_ms=100, duty_window_ms=5000), max_volume_ul=1e6)
    assert (controller.link.board.duty_max_ms, controller.link.board.duty_window_ms) == (100, 5000)
    controller.test_pulse("t1", 60.0)
    assert outcomes(pump(controller, outcome_for("t1")))[0].status == DELIVERED
    controller.test_pulse("t2", 60.0, override=True, issued_by="console@rig1")  # no host override passes it
    [o] = outcomes(pump(controller, outcome_for("t2")))
    assert (o.status, o.board_nak, o.dispensed_ul) == (REFUSED, p.NAK_DUTY, 0.0)
    assert "duty-cycle limit (at most 100 ms open per 5 s): 40.0 ms of open time left, 60 ms asked" in o.reason
    assert len(opens(server)) == 1
    assert controller.budget.other_ul == controller.budget.committed_ul == 6.0  # the refused pulse is not counted
    controller.test_pulse("t3", 40.0)  # what is left still goes
    assert outcomes(pump(controller, outcome_for("t3")))[0].status == DELIVERED


def test_a_stalled_board_is_reset_by_its_avr_watchdog_within_500_ms(socket_board):
    server, controller = socket_board(watchdog_ms=2000, heartbeat_interval_s=0.1, link_timeout_s=5.0)
    controller.request("r1", 150.0, "decoder")  # 1.5 s
    pump(controller, lambda _: server.valve_is_open())
    hung_at = server.stall(4.0)  # the firmware's loop() hangs: no timer, no heartbeat watchdog, no reply
    wait_until(lambda: not server.valve_is_open(), timeout=3.0)
    [closed] = [e for e in server.events() if e.kind == "close"]
    assert closed.cause == CAUSE_RESET and closed.board_us - hung_at == p.AVR_WATCHDOG_MS * 1000
    assert server.watchdog_resets == 1 and not server.is_stalled()
    # The host sees the BOOT, re-links (the log survived the reset) and asks what the valve did.
    events = pump(controller, outcome_for("r1"))
    assert "lost" in link_states(events) and controller.link.resumed
    [o] = outcomes(events)
    assert o.status == FAILED and o.reconciled and "reset while the valve was open" in o.reason
    assert o.dispensed_ul == 150.0  # the upper bound: the board cannot tell how long it was open
    controller.request("r2", 1.0, "decoder")
    assert outcomes(pump(controller, outcome_for("r2")))[0].status == DELIVERED


def test_a_short_stall_closes_the_valve_late_as_the_board_would(socket_board):
    server, controller = socket_board(done_margin_s=1.0)
    controller.request("r1", 30.0, "decoder")  # 300 ms
    pump(controller, lambda _: server.valve_is_open())
    hung_at = server.stall(0.45)  # spans the pulse's end, shorter than the AVR watchdog: loop() resumes, late
    [o] = outcomes(pump(controller, outcome_for("r1")))
    [opened] = opens(server)
    [closed] = [e for e in server.events() if e.kind == "close"]
    assert opened.board_us + 300_000 > hung_at, "the hang began after the pulse's end: the test proves nothing"
    assert closed.cause == p.CAUSE_TIMER and closed.board_us == hung_at + 450_000
    assert server.watchdog_resets == 0
    assert o.status == DELIVERED and o.open_us == closed.open_us > 300_000
    assert o.dispensed_ul == pytest.approx(o.open_us / 10_000)  # what really flowed: more than asked


def test_busy_requests_are_refused(board):
    _, make = board
    controller = make()
    controller.request("r1", 10.0, "decoder")
    controller.request("r2", 1.0, "console")
    [o2] = outcomes(pump(controller, outcome_for("r2")))
    assert o2.status == REFUSED and "busy" in o2.reason


def test_session_volume_cap(board):
    server, make = board
    controller = make(max_volume_ul=5.0)
    controller.request("r1", 3.0, "decoder")
    pump(controller, outcome_for("r1"))
    controller.request("r2", 3.0, "decoder")
    [o2] = outcomes(pump(controller, outcome_for("r2")))
    assert o2.status == REFUSED and "volume cap" in o2.reason
    controller.request("r3", 2.0, "decoder")
    assert outcomes(pump(controller, outcome_for("r3")))[0].status == DELIVERED
    assert len(opens(server)) == 2


@pytest.mark.parametrize(
    ("volume", "reason"),
    [(0.0, "invalid volume"), (float("nan"), "invalid volume"), (-1.0, "invalid volume"), (60.0, "limit")],
)
def test_invalid_or_too_large_volumes_are_refused(board, volume, reason):
    server, make = board
    controller = make(max_open_ms=500.0)
    controller.request("r", volume, "decoder")
    [o] = outcomes(pump(controller, outcome_for("r")))
    assert o.status == REFUSED and reason in o.reason
    assert not opens(server)


def test_no_calibration_refuses_rewards(board):
    _, make = board
    controller = make(calibration=None)
    controller.request("r", 1.0, "decoder")
    [o] = outcomes(pump(controller, outcome_for("r")))
    assert o.status == REFUSED and "calibration" in o.reason


def test_safe_state_closes_the_valve_and_refuses_everything_after(board):
    server, make = board
    controller = make()
    controller.request("r1", 100.0, "decoder")
    pump(controller, lambda _: server.valve_is_open())
    controller.enter_safe_state("supervisor lost the decoder")
    [o1] = outcomes(pump(controller, outcome_for("r1")))
    assert o1.status == FAILED and "CLOSE" in o1.reason
    assert server.events()[-1].cause == p.CAUSE_CLOSE
    controller.request("r2", 1.0, "decoder")
    controller.test_pulse("t")
    refused = outcomes(pump(controller, lambda ev: len(outcomes(ev)) == 2))
    assert [(o.status, "safe state" in o.reason) for o in refused] == [(REFUSED, True), (REFUSED, True)]
    assert len(opens(server)) == 1


def test_close_valve_cuts_a_pulse_short(board):
    server, make = board
    controller = make()
    controller.request("r1", 100.0, "decoder")
    pump(controller, lambda _: server.valve_is_open())
    assert controller.close_valve()
    [o] = outcomes(pump(controller, outcome_for("r1")))
    assert o.status == FAILED and "partial delivery" in o.reason and 0 <= o.open_us < 1_000_000


def close_by(controller: RewardController, how: str) -> bool:
    return controller.close_valve() if how == "close_valve" else controller.enter_safe_state("test: decoder lost")


@pytest.mark.parametrize("how", ["close_valve", "enter_safe_state"])
def test_close_before_the_ack_abandons_the_pulse_and_no_retry_opens_the_valve(board, how):
    server, make = board
    controller = make()
    server.drop_next_command("OPEN", 1)  # the board never gets the first OPEN
    controller.request("r1", 30.0, "decoder")
    close_sent = close_by(controller, how)
    events = pump(controller, outcome_for("r1"))
    assert not controller.busy
    # Past the last moment a retry could have been due, then until the board's output is all read.
    retry_window_ns = int((controller.cfg.retries + 1) * controller.cfg.ack_timeout_s * 1e9)
    t_written = outcomes(events)[0].t_written
    events += pump(controller, lambda _: now_ns() > t_written + retry_window_ns)
    events += board_output_read(server, controller)
    [o] = outcomes(events)
    assert o.status == FAILED and o.reason.startswith("abandoned:") and "before the board acknowledged" in o.reason
    assert o.reconciled and "did not open" in o.reason and o.dispensed_ul == 0.0  # the board's log says so
    assert o.attempts == 1 and controller.counts["retries"] == 0
    assert opens(server) == []  # the valve never opened, not even after the CLOSE
    assert not server.valve_is_open()
    assert close_sent is True


def test_close_before_a_lost_ack_abandons_and_reports_what_the_valve_dispensed(board):
    server, make = board
    controller = make()
    server.drop_next("ACK", 3, command="OPEN")  # the board opens, but the host never hears so (nor on retries)
    controller.request("r1", 30.0, "decoder")
    pump(controller, lambda _: server.valve_is_open())
    assert controller.close_valve() is True
    events = pump(controller, outcome_for("r1"))
    events += board_output_read(server, controller)
    [o] = outcomes(events)
    assert o.status == FAILED and o.reason.startswith("abandoned:") and "partial delivery" in o.reason
    assert [e.seq for e in opens(server)] == [o.seq]  # opened once, by the original OPEN only
    assert server.events()[-1].cause == p.CAUSE_CLOSE
    assert o.open_us == closes(server)[o.seq] and o.dispensed_ul == pytest.approx(o.open_us / 10_000)


def test_close_reports_whether_the_close_was_sent(board):
    server, make = board
    controller = make()
    server.disconnect()
    pump(controller, lambda ev: "lost" in link_states(ev))
    assert controller.close_valve() is False
    assert controller.enter_safe_state("test: link down") is False
    pump(controller, lambda _: controller.link.connected)
    assert controller.close_valve() is True
    assert controller.enter_safe_state("test: again") is True


def test_shutdown_waits_for_a_running_pulse(board):
    _, make = board
    controller = make()
    controller.request("r1", 5.0, "decoder")
    events = controller.shutdown(timeout_s=2.0)
    assert [o.status for o in outcomes(events)] == [DELIVERED]
    assert link_states(events)[-1] == "closed"


# ---------------------------------------------------------------- link set-up


def test_unreachable_board_fails_requests_and_keeps_retrying():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    cfg = fast_cfg()
    controller = RewardController(cfg, CAL, ValveLink.from_config(cfg, f"socket://127.0.0.1:{port}"))
    controller.start()
    pump(controller, lambda _: "cannot open" in controller.link.last_error)  # the first open attempt failed
    controller.request("r", 1.0, "decoder")
    [o] = outcomes(pump(controller, outcome_for("r")))
    assert o.status == FAILED and "not connected" in o.reason and "cannot open" in o.reason
    controller.close()


def test_protocol_mismatch_is_a_clear_error():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def fake_board() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"HELLO" not in data or not data.endswith(b"\n"):
                data += conn.recv(100)
            seq = int(data.split(b"HELLO ")[1].split(b" ")[0])
            conn.sendall(p.encode_nak(seq, 5, p.NAK_VERSION, 2))
            conn.recv(100)

    thread = threading.Thread(target=fake_board, daemon=True)
    thread.start()
    link = ValveLink(f"socket://127.0.0.1:{port}", watchdog_ms=500)
    link.open()
    with pytest.raises(ProtocolMismatch, match="speaks protocol 2"):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            link.poll(0.05)
    link._close_port()
    listener.close()
    thread.join(2)


# ---------------------------------------------------------------- the supervised-process entry point


def test_run_emulator_serves_until_stopped_and_logs_the_valve(tmp_path):
    urls: list[str] = []
    ready, stop = threading.Event(), threading.Event()
    log = tmp_path / "valve.jsonl"
    sim = RewardConfig(emulator_lick_rate_hz=0.0, emulator_reward_licks=True, emulator_seed=5)

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    from reward.emulator import run_emulator

    thread = threading.Thread(target=run_emulator, args=("auto", on_ready, stop, log), kwargs={"cfg": sim})
    thread.start()
    try:
        assert ready.wait(10)
        cfg = fast_cfg()
        controller = RewardController(cfg, CAL, ValveLink.from_config(cfg, urls[0]))
        controller.start()
        pump(controller, connected_after())
        controller.request("r1", 1.0, "decoder")
        events = pump(controller, lambda ev: outcome_for("r1")(ev) and len(lick_events(ev)) >= 2)
        assert outcomes(events)[0].status == DELIVERED
        licks = lick_events(events)
        assert licks[0].onset and not licks[1].onset  # the simulated mouse licks after the reward
        assert licks[0].board_us > outcomes(events)[0].board_us_ack
        controller.close()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    import json

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["kind"], r["seq"], r["cause"]) for r in records] == [("open", 2, ""), ("close", 2, "T")]


def test_emulator_stop_closes_an_open_valve_and_logs_it(tmp_path):
    log = tmp_path / "valve.jsonl"
    server = EmulatorServer(transport="socket", log_path=log).start()
    cfg = fast_cfg()
    controller = RewardController(cfg, CAL, ValveLink.from_config(cfg, server.url))
    try:
        controller.start()
        pump(controller, connected_after())
        controller.request("r1", 150.0, "decoder")  # 1.5 s: still open when the emulator stops
        pump(controller, lambda _: server.valve_is_open())
    finally:
        server.stop()
    controller.close()
    assert not server.valve_is_open()
    import json

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["kind"], r["cause"]) for r in records] == [("open", ""), ("close", "SHUTDOWN")]
    assert records[1]["seq"] == records[0]["seq"] and records[1]["open_us"] > 0
