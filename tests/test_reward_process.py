"""The reward process's side of the valve budget: operator commands (test_pulse, flush, close_valve) with and without
``override``, and what its events.jsonl records of each outcome. The process object runs on a controller connected
to the emulated board, without the rig around it (its event log and bus are lists)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from reward.controller import RewardController
from reward.emulator import EmulatorServer
from reward.link import ValveLink
from reward.outcome import DELIVERED, REFUSED, RewardOutcome
from reward.process import RewardProcess, request_topics
from rig.core.bus import SpinWaiter
from rig.core.schema import Control, Decision, RewardRequest
from rig.core.schema import RewardOutcome as BusOutcome
from tests.test_reward_link import CAL, connected_after, fast_cfg, pump


class EventLog:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, kind: str, **fields: Any) -> None:
        self.lines.append({"kind": kind, **fields})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["kind"] == kind]


@pytest.fixture
def process():
    """A RewardProcess (no configure(): no rig) whose controller talks to an emulated board; min interval 60 s."""
    server = EmulatorServer(transport="socket").start()
    cfg = fast_cfg(min_interval_s=60.0)
    controller = RewardController(cfg, CAL, ValveLink.from_config(cfg, server.url))
    controller.start()
    pump(controller, connected_after())
    proc = RewardProcess.__new__(RewardProcess)
    proc.name = "reward"
    proc.config = SimpleNamespace(reward=cfg)
    proc.controller = controller
    proc.link = controller.link
    proc.events = EventLog()
    proc.published = []
    proc.publish = proc.published.append
    proc.warnings = []
    proc.warn = lambda code, message: proc.warnings.append((code, message))
    proc.delivered = proc.failed = 0
    yield proc
    controller.close()
    server.stop()


def run(proc: RewardProcess, control: Control) -> RewardOutcome:
    """Hand the command to the process, then drive its controller to the outcome, which the process records."""
    proc.on_control(control)
    [outcome] = [e for e in pump(proc.controller, lambda ev: any(isinstance(e, RewardOutcome) for e in ev))
                 if isinstance(e, RewardOutcome)]
    proc._publish_event(outcome)
    return outcome


def test_operator_pulses_go_through_the_valve_budget_unless_overridden_and_who_is_logged(process):
    first = run(process, Control(command="test_pulse", issued_by="console@rig1", seq=1))
    assert first.status == DELIVERED
    second = run(process, Control(command="flush", args={"ms": 30}, issued_by="console@rig1", seq=2))
    assert second.status == REFUSED and "minimum interval" in second.reason
    third = run(process, Control(command="flush", args={"ms": 30, "override": True}, issued_by="ops@rig1", seq=3))
    assert (third.status, third.source, third.override, third.issued_by) == (DELIVERED, "flush", True, "ops@rig1")
    [logged] = process.events.of("operator_override")
    assert (logged["command"], logged["issued_by"]) == ("flush", "ops@rig1")
    assert logged["args"] == {"ms": 30, "override": True}
    records = process.events.of("reward_outcome")
    assert [r["request_id"] for r in records] == ["test-1", "flush-2", "flush-3"]
    assert records[2]["override"] is True and records[2]["issued_by"] == "ops@rig1"
    # What the valve dispensed, apart from rewards, with the session's totals: 20 ms and 30 ms at 10 ms/uL.
    assert [(r["volume_kind"], r["dispensed_ul"]) for r in records] == [("other", 2.0), ("other", 0.0), ("other", 3.0)]
    assert (records[-1]["session_other_ul"], records[-1]["session_reward_ul"]) == (5.0, 0.0)
    # The bus message keeps the schema's fields.
    assert all(isinstance(m, BusOutcome) for m in process.published) and len(process.published) == 3


def test_a_malformed_override_or_flush_is_not_applied_and_says_why(process):
    run(process, Control(command="test_pulse", seq=1))
    refused = run(process, Control(command="test_pulse", args={"override": "yes"}, issued_by="x", seq=2))
    assert refused.status == REFUSED and not refused.override
    process.on_control(Control(command="flush", args={"override": True}, issued_by="x", seq=3))
    assert [code for code, _ in process.warnings if code.startswith("bad_")] == ["bad_override", "bad_flush"]
    assert not process.controller.busy


def test_the_reward_process_hears_decisions_only_when_it_busy_polls_for_them():
    assert request_topics(SpinWaiter(1 / 30, 0.0)) == [RewardRequest.topic]
    assert request_topics(SpinWaiter(1 / 30, 3.0)) == [RewardRequest.topic, Decision.topic]
    assert request_topics(SpinWaiter(1 / 1000, 3.0)) == [RewardRequest.topic]  # too fast to spin for
