"""The process contract, exercised on real spawned processes and real ZeroMQ sockets."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
import zmq

from rig.app.config import CONFIG_LOADER
from rig.core.bus import Publisher, Subscriber, free_tcp_port, free_tcp_ports
from rig.core.process import ProcessSpec, decode_info, process_main
from rig.core.schema import Control, Heartbeat, ProcessError, StateChange
from rig.core.store import read_events
from tests.conftest import close_child, wait_for


class Harness:
    """Plays the supervisor for one child: a control PUB and a SUB on the child's PUB."""

    def __init__(self, tmp_path, target: str) -> None:
        self.ctx = zmq.Context()
        self.endpoints = {"supervisor": f"tcp://127.0.0.1:{free_tcp_port()}",
                          "child": f"tcp://127.0.0.1:{free_tcp_port()}"}
        self.pub = Publisher(self.ctx, self.endpoints["supervisor"], "supervisor")
        self.sub = Subscriber(self.ctx, [self.endpoints["child"]], [b"sys."])
        spec = ProcessSpec(name="child", target=target, config={"bus": {"heartbeat_interval_s": 0.05}},
                           config_file="test.toml", config_loader=CONFIG_LOADER,
                           endpoints=self.endpoints, session_dir=str(tmp_path), critical=True)
        self.proc = multiprocessing.get_context("spawn").Process(target=process_main, args=(spec,))
        self.proc.start()
        self.states: list[str] = []
        self.info: dict[str, str] = {}
        self.errors: list[ProcessError] = []
        self.stats: dict[str, float] = {}

    def pump(self) -> None:
        for msg in self.sub.drain():
            if isinstance(msg, StateChange):
                if not self.states or self.states[-1] != msg.state:
                    self.states.append(msg.state)
                self.info.update(decode_info(msg.reason))
            elif isinstance(msg, Heartbeat):
                if not self.states or self.states[-1] != msg.state:
                    self.states.append(msg.state)
                self.stats = dict(msg.stats)
            elif isinstance(msg, ProcessError):
                self.errors.append(msg)

    def wait_state(self, state: str, timeout_s: float = 20) -> None:
        def seen() -> bool:
            self.pump()
            return bool(self.states) and self.states[-1] == state

        wait_for(seen, timeout_s, f"state {state!r} (seen {self.states})")

    def send_until(self, command: str, state: str) -> None:
        def done() -> bool:
            self.pub.send(Control(command=command))
            self.pump()
            return bool(self.states) and self.states[-1] == state

        wait_for(done, 20, f"{command} -> {state} (seen {self.states})", poll_s=0.05)

    def close(self) -> None:
        close_child(self.proc, self.sub, self.pub, self.ctx)


@pytest.fixture
def harness(tmp_path):
    made = []

    def make(target: str) -> Harness:
        h = Harness(tmp_path, target)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_lifecycle_configure_ready_running_stopping_stopped(harness, tmp_path):
    h = harness("tests.procs:TickProcess")
    h.wait_state("ready")
    assert h.info == {"answer": "42"}
    h.send_until("start", "running")
    wait_for(lambda: (h.pump(), h.stats.get("ticks", 0) > 3)[1], 10, "ticks in heartbeat stats")
    h.send_until("stop", "stopped")
    h.proc.join(10)
    assert h.proc.exitcode == 0
    assert h.states[-3:] == ["running", "stopping", "stopped"]
    logged = [e["state"] for e in read_events(tmp_path / "child" / "events.jsonl", {"state"})]
    assert logged == ["configuring", "ready", "running", "stopping", "stopped"]


def test_exception_is_reported_not_swallowed(harness, tmp_path):
    h = harness("tests.procs:TickProcess")
    h.wait_state("ready")
    h.send_until("start", "running")
    h.pub.send(Control(command="crash"))
    wait_for(lambda: (h.pump(), h.errors)[1], 10, "a ProcessError")
    h.proc.join(10)
    assert h.proc.exitcode == 1
    assert h.errors[0].error_type == "RuntimeError" and "asked to crash" in h.errors[0].message
    assert "Traceback" in h.errors[0].traceback
    errors = read_events(tmp_path / "child" / "events.jsonl", {"error"})
    assert errors and errors[0]["message"] == "asked to crash"


def test_failure_during_configure_is_recorded_and_exits_nonzero(harness, tmp_path):
    # It may fail before any subscriber is connected: the event log is the record of why.
    h = harness("tests.procs:BrokenConfigureProcess")
    h.proc.join(20)
    assert h.proc.exitcode == 1
    errors = read_events(tmp_path / "child" / "events.jsonl", {"error"})
    assert errors[0]["error_type"] == "FileNotFoundError" and "no such scope" in errors[0]["message"]


@pytest.mark.posix_only(reason="os.kill with a signal number; Windows can only send console events to a group")
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_stop_cleanly(harness, tmp_path, signame):
    h = harness("tests.procs:TickProcess")
    h.wait_state("ready")
    h.send_until("start", "running")
    os.kill(h.proc.pid, getattr(signal, signame))
    h.wait_state("stopped")
    h.proc.join(10)
    assert h.proc.exitcode == 0
    # the stop reason is the signal's name: the supervisor reads it to tell the operator who stopped the rig
    stopped = read_events(tmp_path / "child" / "events.jsonl", {"state"})[-1]
    assert stopped["state"] == "stopped" and stopped["reason"] == signame


def test_busy_announces_a_long_operation_before_it_blocks(harness, tmp_path):
    h = harness("tests.procs:TickProcess")
    h.wait_state("ready")
    h.send_until("start", "running")
    h.pub.send(Control(command="block"))
    h.wait_state("busy:blocking")
    h.wait_state("running")
    assert [e["what"] for e in read_events(tmp_path / "child" / "events.jsonl", {"busy"})] == ["blocking"]


def test_free_ports_are_distinct_and_bindable():
    ports = free_tcp_ports(12)
    assert len(set(ports)) == 12
    ctx = zmq.Context()
    try:
        socks = [ctx.socket(zmq.PUB) for _ in ports]
        for sock, port in zip(socks, ports, strict=True):
            sock.bind(f"tcp://127.0.0.1:{port}")
        for sock in socks:
            sock.close(0)
    finally:
        ctx.term()
