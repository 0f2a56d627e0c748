"""Windows failure modes, checked on any OS: refused file replaces, priority of optional processes,
backslash escapes in config paths, and what ``rig check`` refuses on Windows."""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import os
import sys
import threading
from types import SimpleNamespace

import psutil
import pytest

from decoder.process import DecoderProcess
from rig.app.cli import platform_problems
from rig.app.config import NO_CONTROL_CHARACTER_KEYS, ConfigError, apply_overrides, config_from_dict, load_config
from rig.app.session_files import SessionRecord
from rig.app.snapshot import SessionTally
from rig.app.supervisor import Supervisor
from rig.core import process as process_module
from rig.core import store
from rig.core.operator import CommandRequest
from rig.core.process import ProcessSpec, RigProcess, priority_decision
from rig.core.schema import CalibrationResult, Control
from rig.core.settings import control_character_problem
from rig.core.store import EventLog, read_events, write_json_atomic


# ---------------------------------------------------------------------------------------------- atomic JSON writes
@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Record the backoff instead of sleeping it."""
    waited: list[float] = []
    monkeypatch.setattr(store.time, "sleep", waited.append)
    return waited


def _refuse_replace(monkeypatch, times: int) -> list[int]:
    """``os.replace`` raises PermissionError (as Windows does while another program holds the file) ``times`` times."""
    real_replace = os.replace
    calls: list[int] = []

    def flaky(src, dst):
        calls.append(1)
        if len(calls) <= times:
            raise PermissionError(errno.EACCES, "Access is denied", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    return calls


def test_a_replace_refused_a_few_times_succeeds_after_backoff(tmp_path, monkeypatch, sleeps):
    (tmp_path / "s.json").write_text('{"old": true}')
    calls = _refuse_replace(monkeypatch, 3)
    write_json_atomic(tmp_path / "s.json", {"new": True})
    assert json.loads((tmp_path / "s.json").read_text()) == {"new": True}
    assert len(calls) == 4 and sleeps == list(store.REPLACE_BACKOFF_S[:3])
    assert not (tmp_path / "s.json.tmp").exists()


def test_a_replace_refused_for_good_raises_after_about_one_second(tmp_path, monkeypatch, sleeps):
    (tmp_path / "s.json").write_text('{"old": true}')
    calls = _refuse_replace(monkeypatch, 1000)
    with pytest.raises(PermissionError, match=r"still refused after 8 attempts.*holds it open") as info:
        write_json_atomic(tmp_path / "s.json", {"new": True})
    assert len(calls) == len(store.REPLACE_BACKOFF_S) + 1 == 8
    assert 0.5 <= sum(sleeps) <= 1.5  # a short wait in all: the caller decides what a failure means
    assert sleeps == sorted(sleeps)  # backing off
    assert info.value.errno == errno.EACCES and info.value.filename == str(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {"old": True}  # readers still see the old file whole
    assert json.loads((tmp_path / "s.json.tmp").read_text()) == {"new": True}  # the new content is not lost


def test_other_replace_errors_are_not_retried(tmp_path, monkeypatch, sleeps):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(tmp_path / "s.json", {"new": True})
    assert sleeps == []


def test_injected_backoff_is_used(tmp_path, monkeypatch, sleeps):
    _refuse_replace(monkeypatch, 2)
    with pytest.raises(PermissionError, match="after 2 attempts"):
        write_json_atomic(tmp_path / "s.json", {"n": 1}, backoff_s=(0.0,))
    assert sleeps == [0.0]


# ---------------------------------------------------------------------------------------------- session.json
def _supervisor_stub(tmp_path) -> Supervisor:
    """A Supervisor with only what writing session.json and relaying a command touch (no sockets, no children)."""
    cfg = config_from_dict({})
    sup = Supervisor.__new__(Supervisor)
    sup.cfg = cfg
    sup.quiet = False
    sup.session_dir = tmp_path
    sup.events = EventLog(tmp_path / "supervisor.events.jsonl")
    sup.tally = SessionTally(cfg)
    sup.endpoints = {"command": "tcp://127.0.0.1:1"}
    sup.children = []
    sup.record = SessionRecord(tmp_path, cfg, "rig.toml", [])
    sent: list[Control] = []
    sup.pub = SimpleNamespace(send=sent.append)
    sup.sent = sent  # type: ignore[attr-defined]
    return sup


def test_a_refused_session_json_rewrite_is_a_warning_not_a_crash(tmp_path, monkeypatch, sleeps, capsys):
    sup = _supervisor_stub(tmp_path)
    sup._write_session_json(status="starting")
    assert json.loads((tmp_path / "session.json").read_text())["status"] == "starting"

    _refuse_replace(monkeypatch, 1000)  # e.g. a viewer holds session.json open for the rest of the session
    sup.relay(CommandRequest(command="set_metadata", args={"weight_g": "21.5"}))  # the set_metadata rewrite
    sup.events.close()

    assert [c.command for c in sup.sent] == ["set_metadata"]  # the command still went out
    warnings = read_events(tmp_path / "supervisor.events.jsonl", {"warning"})
    assert len(warnings) == 1 and warnings[0]["code"] == "session_json_not_written"
    assert "session.json not updated (status 'running')" in warnings[0]["message"]
    assert "session.json not updated" in capsys.readouterr().err
    assert any("session.json not updated" in w.message for w in sup.tally.warnings)  # consoles see it too
    assert json.loads((tmp_path / "session.json").read_text())["status"] == "starting"  # the old file, whole


# ---------------------------------------------------------------------------------------------- calibration.json
CAL = {"threshold": 1.5, "feedback_min": -1.0, "feedback_max": 2.0, "predicted_hit_rate": 0.5, "method": "hit_rate",
       "curve_thresholds": [1.0, 1.5], "curve_hit_rates": [0.7, 0.5], "baseline_frames": 900}


def _decoder_stub(tmp_path) -> SimpleNamespace:
    """What DecoderProcess.calibration_in_force uses of the process: its folder, event log, warn and publish."""
    warned: list[tuple[str, str]] = []
    published: list[object] = []
    return SimpleNamespace(dir=tmp_path, events=EventLog(tmp_path / "events.jsonl"),
                           warn=lambda code, message: warned.append((code, message)), publish=published.append,
                           warned=warned, published=published)


def test_calibration_json_written_after_a_few_refusals(tmp_path, monkeypatch, sleeps):
    dec = _decoder_stub(tmp_path)
    _refuse_replace(monkeypatch, 2)
    DecoderProcess.calibration_in_force(dec, CAL)  # type: ignore[arg-type]
    assert json.loads((tmp_path / "calibration.json").read_text()) == CAL
    assert dec.warned == [] and isinstance(dec.published[0], CalibrationResult)


def test_an_unwritable_calibration_json_is_a_warning_and_goes_to_the_event_log(tmp_path, monkeypatch, sleeps):
    dec = _decoder_stub(tmp_path)
    _refuse_replace(monkeypatch, 1000)
    DecoderProcess.calibration_in_force(dec, CAL)  # type: ignore[arg-type]  # returns: the loop goes on
    dec.events.close()
    assert [code for code, _ in dec.warned] == ["calibration_file"]
    assert "calibration.json" in dec.warned[0][1] and "still refused" in dec.warned[0][1]
    assert len(dec.published) == 1 and dec.published[0].threshold == 1.5  # in force all the same
    (saved,) = read_events(tmp_path / "events.jsonl", {"calibration_not_saved"})
    assert saved["calibration"] == CAL and saved["path"].endswith("calibration.json")


# ---------------------------------------------------------------------------------------------- priority
@pytest.mark.parametrize(("priority", "critical", "decision"), [
    ("high", True, "raise"),
    ("high", False, "keep_non_critical"),
    ("normal", True, "keep"),
    ("normal", False, "keep"),
    ("realtime", True, "raise"),
    ("realtime", False, "keep_non_critical"),
])
def test_priority_decision(priority, critical, decision):
    assert priority_decision(priority, critical) == decision


def test_process_spec_has_no_default_criticality():
    (field,) = [f for f in dataclasses.fields(ProcessSpec) if f.name == "critical"]
    assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


class _FakeProcess:
    """Stands for psutil.Process(): records what the tuning asked the OS for."""

    calls: list[tuple[str, object]] = []

    def nice(self, value: int | None = None) -> int:
        if value is not None:
            _FakeProcess.calls.append(("nice", value))
        return 0

    def cpu_affinity(self, cpus: list[int]) -> None:
        _FakeProcess.calls.append(("cpu_affinity", cpus))


def _tune(tmp_path, monkeypatch, *, critical: bool, priority: str, cpus: list[int] | None = None,
          background: str = "normal", affinity: dict[str, list[int]] | None = None,
          threads: dict[str, int] | None = None):
    """Run RigProcess._tune_for_realtime on a stand-in process; returns (OS calls, events, warnings)."""
    _FakeProcess.calls = []
    monkeypatch.setattr(psutil, "Process", _FakeProcess)
    rig = SimpleNamespace(gc_freeze=False, gc_gen0_threshold=gc.get_threshold()[0], priority=priority,
                          cpu_affinity=affinity if affinity is not None else ({"gui": cpus} if cpus else {}),
                          background_priority=background)
    warned: list[tuple[str, str]] = []
    proc = SimpleNamespace(name="gui", config=SimpleNamespace(rig=rig), spec=SimpleNamespace(critical=critical),
                           events=EventLog(tmp_path / "events.jsonl"),
                           warn=lambda code, message: warned.append((code, message)),
                           realtime_threads=lambda: dict(threads or {}))
    RigProcess._tune_for_realtime(proc)  # type: ignore[arg-type]
    proc.events.close()
    return _FakeProcess.calls, read_events(tmp_path / "events.jsonl"), warned


def test_a_critical_process_is_raised_when_priority_is_high(tmp_path, monkeypatch):
    calls, events, warned = _tune(tmp_path, monkeypatch, critical=True, priority="high")
    assert calls == [("nice", psutil.HIGH_PRIORITY_CLASS if sys.platform == "win32" else -5)]
    assert events == [] and warned == []


def test_a_non_critical_process_is_never_raised(tmp_path, monkeypatch):
    calls, events, warned = _tune(tmp_path, monkeypatch, critical=False, priority="high", cpus=[0])
    assert calls == [("cpu_affinity", [0])]  # pinned as asked, but the priority is left as the process set it
    assert [e["kind"] for e in events] == ["priority_not_raised"] and warned == []


@pytest.mark.parametrize(("refusal", "io"), [("", (1, "")), ("SCHED_FIFO refused (Operation not permitted)", (1, "")),
                                           ("", (0, "no ZeroMQ I/O thread found"))])
def test_realtime_priority_asks_for_fifo_and_reports_a_refusal(tmp_path, monkeypatch, refusal, io):
    """SCHED_FIFO for the loop, then for the ZeroMQ I/O threads and the process's own reader threads (only once the
    loop has it); any refusal is said."""
    raised: list[bool] = []
    own: list[dict[str, int]] = []
    monkeypatch.setattr(process_module, "set_realtime_scheduling", lambda: refusal)
    monkeypatch.setattr(process_module, "raise_zmq_io_threads", lambda: raised.append(True) or io)
    monkeypatch.setattr(process_module, "raise_threads", lambda threads: own.append(threads) or "")
    calls, events, warned = _tune(tmp_path, monkeypatch, critical=True, priority="realtime",
                                  threads={"cloose-tcp-reader": 4242})
    assert calls == [] and [e["kind"] for e in events] == ["scheduling"] and events[0]["refused"] == refusal
    assert raised == ([] if refusal else [True])
    assert own == ([] if refusal else [{"cloose-tcp-reader": 4242}])
    assert events[0]["threads_raised"] == ([] if refusal else ["cloose-tcp-reader"])
    assert (events[0]["zmq_io_threads"], events[0]["zmq_io_refused"]) == ((0, "") if refusal else io)
    if refusal:
        assert warned == [("priority_refused", f"gui: {refusal}; running at normal priority")]
    elif io[1]:
        assert warned == [("priority_refused", f"gui: {io[1]}; the bus's messages may wait for a CPU")]
    else:
        assert warned == []


def test_a_reader_thread_the_os_would_not_raise_is_said(tmp_path, monkeypatch):
    refused = "cloose-tcp-reader: SCHED_FIFO refused (Operation not permitted)"
    monkeypatch.setattr(process_module, "set_realtime_scheduling", lambda: "")
    monkeypatch.setattr(process_module, "raise_zmq_io_threads", lambda: (1, ""))
    monkeypatch.setattr(process_module, "raise_threads", lambda threads: refused)
    _, events, warned = _tune(tmp_path, monkeypatch, critical=True, priority="realtime",
                              threads={"cloose-tcp-reader": 4242})
    assert events[0]["threads_refused"] == refused
    assert warned == [("priority_refused", f"gui: {refused}; they may wait for a CPU behind the loop")]


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="SCHED_FIFO is Linux's")
def test_raise_threads_gives_a_running_thread_the_loops_policy():
    """The real call on a real thread (a source's reader starts before rig.priority is applied)."""
    from rig.core.realtime import FIFO_PRIORITY, raise_threads

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, args=(10,), name="reader")
    thread.start()
    try:
        assert thread.native_id is not None and os.sched_getscheduler(thread.native_id) == os.SCHED_OTHER
        refused = raise_threads({"reader": thread.native_id})
        if refused:
            pytest.skip(f"SCHED_FIFO refused here: {refused}")
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_FIFO
        assert os.sched_getparam(thread.native_id).sched_priority == FIFO_PRIORITY
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller is not touched
    finally:
        stop.set()
        thread.join(5)


def test_low_background_keeps_the_console_off_the_decoders_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(process_module, "background_cpus", lambda avoid: [c for c in (0, 1) if c not in avoid])
    calls, _, _ = _tune(tmp_path, monkeypatch, critical=False, priority="normal", background="low",
                        affinity={"decoder": [1]})
    assert calls == [("cpu_affinity", [0])]
    calls, _, _ = _tune(tmp_path, monkeypatch, critical=False, priority="normal", affinity={"decoder": [1]})
    assert calls == []  # the switch off: nothing moved


def test_normal_priority_touches_nothing(tmp_path, monkeypatch):
    calls, events, _ = _tune(tmp_path, monkeypatch, critical=True, priority="normal")
    assert calls == [] and events == []


# ---------------------------------------------------------------------------------------------- config paths
def test_the_control_character_message_gives_the_path_as_typed():
    assert control_character_problem("D:\bci\rigs") == (
        'contains a control character (\\x08 after "D:"): a backslash in a TOML "..." string starts an escape; '
        "write the path with / or in single quotes: 'D:\\bci\\rigs'")
    assert control_character_problem("D:/bci/rigs") == ""
    assert control_character_problem("\tdata").startswith("contains a control character (\\x09 at the start)")
    assert control_character_problem("a\x01b").endswith("single quotes")  # not from an escape: no guess
    assert control_character_problem("x\x7fy").startswith("contains a control character (\\x7f")


@pytest.mark.parametrize("keys", NO_CONTROL_CHARACTER_KEYS, ids=[".".join(k) for k in NO_CONTROL_CHARACTER_KEYS])
def test_every_path_key_is_checked_at_load(tmp_path, keys):
    toml = f'[{".".join(keys[:-1])}]\n{keys[-1]} = "data\\new"\n'
    (tmp_path / "rig.toml").write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "rig.toml")
    # named by its key, and shown as typed (before a relative path is resolved against the config's folder)
    assert f'[{".".join(keys)}]: contains a control character (\\x0a after "data")' in str(info.value)
    assert str(info.value).endswith("'data\\new'")


def test_a_set_override_with_a_control_character_is_refused():
    with pytest.raises(ConfigError, match=r"^--set: \[rig.sessions_dir\]: contains a control character"):
        apply_overrides({}, ['rig.sessions_dir="D:\\bci"'])
    assert apply_overrides({}, ["rig.sessions_dir=D:\\bci"])["rig"]["sessions_dir"] == "D:\\bci"  # a bare word


def test_paths_in_single_quotes_or_with_slashes_load(tmp_path):
    (tmp_path / "rig.toml").write_text("[rig]\nsessions_dir = 'D:\\bci\\rigs'\n", encoding="utf-8")
    assert load_config(tmp_path / "rig.toml").rig.sessions_dir == "D:\\bci\\rigs"
    (tmp_path / "rig.toml").write_text('[rig]\nsessions_dir = "D:/bci/rigs"\n', encoding="utf-8")
    assert load_config(tmp_path / "rig.toml").rig.sessions_dir == "D:/bci/rigs"


# ---------------------------------------------------------------------------------------------- rig check per OS
def test_windows_refuses_pty_and_ipc():
    cfg = config_from_dict({"reward": {"emulator_transport": "pty"},
                            "acquisition": {"zmq_stream": {"endpoint": "ipc:///tmp/frames"}}})
    problems = platform_problems(cfg, "win32")
    assert len(problems) == 2
    assert problems[0].startswith('[reward.emulator_transport]: "pty" does not exist on Windows')
    assert problems[1].startswith("[acquisition.zmq_stream.endpoint]: ipc:///tmp/frames: ipc:// endpoints do not work")
    assert platform_problems(cfg, "linux") == []
    assert platform_problems(cfg, "darwin") == []


def test_the_shipped_configs_pass_the_windows_check(repo):
    for path in sorted((repo / "hardware_configs").glob("*.toml")):
        assert platform_problems(load_config(path), "win32") == [], path.name
