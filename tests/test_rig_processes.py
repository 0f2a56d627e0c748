"""The process table: which processes a session runs, in which order they start and stop."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from rig.app.config import config_from_dict
from rig.app.processes import PROCESSES, ProcessEntry, check_table, endpoint_names, plan, stop_order


def names(entries: list[ProcessEntry]) -> list[str]:
    return [e.name for e in entries]


def test_start_and_stop_orders_are_the_documented_ones():
    cfg = config_from_dict({"reward": {"port": "emulator"}})
    planned = plan(cfg, headless=False)
    assert names(planned) == ["valve_emulator", "acquisition", "reward", "decoder", "gui"]
    assert names(stop_order(planned)) == ["gui", "acquisition", "decoder", "reward", "valve_emulator"]


def test_enabled_if_follows_the_config_and_headless():
    assert names(plan(config_from_dict({"reward": {"port": "COM3"}}), headless=True)) == [
        "acquisition", "reward", "decoder"]
    assert "gui" not in names(plan(config_from_dict({"gui": {"enabled": False}}), headless=False))
    assert names(plan(config_from_dict({}), headless=True)) == ["valve_emulator", "acquisition", "reward", "decoder"]


def test_only_the_console_is_not_critical_and_keeps_its_endpoint_when_not_started():
    assert [e.name for e in PROCESSES if not e.critical] == ["gui", "feedback"]  # feedback: see below
    planned = plan(config_from_dict({"reward": {"port": "COM3"}}), headless=True)
    # Same order as before the table existed, so bus.base_port gives every process the same port.
    assert endpoint_names(planned) == ["supervisor", "command", "acquisition", "reward", "decoder", "gui"]


@pytest.mark.parametrize("entry", PROCESSES, ids=lambda e: e.name)
def test_every_target_names_a_class_in_an_existing_module(entry):
    module, _, cls = entry.target.partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{entry.name}: no module {module}"
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    assert cls in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}, f"{entry.name}: no class {cls}"


def test_a_bad_table_line_is_refused():
    last = PROCESSES[-1]
    with pytest.raises(ValueError, match="name used more than once"):
        check_table([*PROCESSES, dataclasses.replace(last, start_rank=99, stop_rank=99)])
    with pytest.raises(ValueError, match="start_rank used more than once"):
        check_table([*PROCESSES, dataclasses.replace(last, name="extra", stop_rank=99)])
    with pytest.raises(ValueError, match="stop_rank used more than once"):
        check_table([*PROCESSES, dataclasses.replace(last, name="extra", start_rank=99)])
    with pytest.raises(ValueError, match="not 'package.module:Class'"):
        check_table([dataclasses.replace(last, target="gui.process.ConsoleProcess")])
    with pytest.raises(ValueError, match="supervisor endpoint"):
        check_table([dataclasses.replace(last, name="command")])


def test_a_new_process_is_one_table_line():
    extra = ProcessEntry("camera", "tests.procs:TickProcess", critical=False, start_rank=5, stop_rank=-1,
                         enabled_if=lambda cfg, headless: True)
    table = (*PROCESSES, extra)
    check_table(table)
    planned = plan(config_from_dict({}), headless=True, table=table)
    assert names(planned)[-1] == "camera" and names(stop_order(planned))[0] == "camera"


def test_feedback_runs_when_enabled_and_pausing_on_its_loss_comes_from_the_config():
    assert "feedback" not in names(plan(config_from_dict({}), headless=True))
    for critical in (False, True):
        cfg = config_from_dict({"feedback": {"enabled": True, "critical": critical}})
        planned = plan(cfg, headless=True)
        assert names(planned)[-1] == "feedback"
        entry = planned[-1]
        assert entry.critical is False  # its death never ends the session or closes the valve
        assert entry.pause_trials_on_loss is critical
        assert entry.preflight is not None and entry.preflight() == ""  # the sim twins need no hardware
        assert stop_order(planned)[-1].name == "feedback"  # stopped last: it hears the decoder's last decisions


def test_feedback_hardware_problems_stop_the_session_before_it_starts():
    cfg = config_from_dict({"feedback": {"enabled": True, "audio": "default"}})
    problem = plan(cfg, headless=True)[-1].preflight()
    try:
        import sounddevice  # noqa: F401, PLC0415
    except (ImportError, OSError):
        assert "sounddevice" in problem and "bci-rig[feedback]" in problem
    else:
        assert problem == "" or "no usable output device" in problem


def test_losing_a_process_that_pauses_trials_sends_pause_to_the_decoder():
    """The supervisor's reaction to a lost non-critical process, on the supervisor's own method."""
    from types import SimpleNamespace

    from rig.app.processes import Child
    from rig.app.supervisor import Supervisor

    cfg = config_from_dict({"feedback": {"enabled": True, "critical": True}})
    entry = next(e for e in plan(cfg, headless=True) if e.name == "feedback")
    sent, events, warned = [], [], []
    fake = SimpleNamespace(_failure=None, _send=sent.append, _log=lambda text: None,
                           tally=SimpleNamespace(warn=lambda name, why: warned.append((name, why))),
                           events=SimpleNamespace(write=lambda kind, **fields: events.append(kind)))
    Supervisor._child_failed(fake, Child(entry), "exited with code -9")
    assert fake._failure is None and warned == [("feedback", "exited with code -9")]
    assert [(m.command, m.target) for m in sent] == [("pause", "decoder")]
    assert events == ["warning", "trials_paused"]

    sent.clear()
    quiet = next(e for e in plan(config_from_dict({"feedback": {"enabled": True}}), headless=True)
                 if e.name == "feedback")
    Supervisor._child_failed(fake, Child(quiet), "exited with code -9")
    assert sent == []  # not asked to: the session goes on without feedback
