"""No silent failures, without a rig: the problems judged from a session's files, the live watch that says
them while the session runs, the start-up lines, and the one hit-rate definition.

Sessions here are a few files written the way the processes write them (frames.rec rows, event lines),
so every case (no frame, every frame bad, a failed calibration, no trial) is built in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from acquisition.process import frame_record_dtype
from acquisition.validate import FrameFlag
from rig.app.config import load_config
from rig.app.startup import StartupLog, compiles_kernels, kernels_cached
from rig.app.watch import BAD_WINDOW_FRAMES, SessionWatch, WarningLines
from rig.core.schema import AcqStatus, CalibrationResult, ProcessError, RigWarning, TrialEvent
from rig.core.store import EventLog, RecordWriter, write_json_atomic
from rig.offline.numbers import hit_rate, hit_rate_text, sig
from rig.offline.problems import (
    recorded_outcome,
    session_problems,
    stopped_by_operator,
    with_outcome,
)
from rig.offline.summary import summarize_session
from tests.conftest import REPO

SIM = REPO / "hardware_configs" / "sim.toml"
N_ROIS = 4


def make_session(folder: Path, *, flags: list[int] | None, trial_events: tuple[tuple[str, dict[str, Any]], ...] = (),
                 stop: str = "duration of 60 s reached", overrides: tuple[str, ...] = (),
                 command_failed: str = "") -> Path:
    """A session folder as the processes leave it: frames.rec with ``flags`` per frame (None: no frame at
    all), the decoder's trial events, the supervisor's start and stop."""
    folder.mkdir(parents=True)
    cfg = load_config(SIM, list(overrides))
    write_json_atomic(folder / "config.resolved.json", msgspec.to_builtins(cfg))
    (folder / "acquisition").mkdir()
    (folder / "decoder").mkdir()
    if flags is not None:
        writer = RecordWriter(folder / "acquisition" / "frames.rec", frame_record_dtype(N_ROIS))
        for i, flag in enumerate(flags):
            row = writer.next_row()
            row["frame"], row["flags"] = i, flag
            writer.commit()
        writer.close()
    acq_log = EventLog(folder / "acquisition" / "events.jsonl")
    if flags and flags[0] & FrameFlag.WRONG_SHAPE:
        acq_log.write("warning", code="wrong_shape", message="frame 0 is 512x796 pixels, the ROI set's frames are "
                                                           "512x512")
    acq_log.close()
    log = EventLog(folder / "decoder" / "events.jsonl")
    for n, (event, detail) in enumerate(trial_events):
        log.write("trial", event=event, trial=0, frame=n, hits=0, trials=0, **detail)
    if command_failed:
        log.write("command_failed", command="calibrate", error=command_failed)
    log.close()
    sup = EventLog(folder / "supervisor.events.jsonl")
    sup.write("session_start", t_ns=1_000_000_000)
    if stop == "failure":
        sup.write("failure", t_ns=31_000_000_000, process="decoder", reason="ValueError: boom")
    elif stop:
        sup.write("stop_requested", t_ns=31_000_000_000, reason=stop)
    sup.close()
    return folder


def judged(folder: Path, stop: str = "duration of 60 s reached") -> list[str]:
    return session_problems(folder, summarize_session(folder), stop)


TRIALS = (("baseline_start", {}), ("baseline_done", {}), ("calibrated", {}), ("bci_start", {}),
          ("trial_start", {}), ("hit", {}), ("trial_start", {}), ("miss", {}), ("trial_start", {}))


def test_a_good_session_has_no_problem(tmp_path):
    folder = make_session(tmp_path / "s", flags=[0] * 100, trial_events=TRIALS)
    summary = summarize_session(folder)
    assert judged(folder) == []
    # one hit-rate definition: hits over completed trials (the open third trial does not count)
    assert (summary["trials"], summary["completed_trials"], summary["hit_rate"]) == (3, 2, 0.5)


def test_no_frame_is_a_problem_that_says_where_frames_were_expected(tmp_path):
    folder = make_session(tmp_path / "s", flags=None, overrides=(
        "acquisition.source=zmq_stream", 'acquisition.zmq_stream.endpoint="tcp://127.0.0.1:5999"'))
    problems = judged(folder)
    assert problems[0].startswith("no frame was acquired in 30 s of session") and "tcp://127.0.0.1:5999" in problems[0]
    assert problems[1] == "no trial ran (because of the problem above)"


def test_every_frame_bad_is_a_problem_but_frames_before_the_reference_are_not(tmp_path):
    wrong = make_session(tmp_path / "wrong", flags=[int(FrameFlag.WRONG_SHAPE)] * 97 + [0] * 3, trial_events=TRIALS)
    [problem] = judged(wrong)
    assert problem.startswith("97 of 100 frames (97 %) were flagged bad (WRONG_SHAPE on 97)")
    assert "512x796" in problem  # the acquisition's first wrong_shape warning says which size came
    warmup = make_session(tmp_path / "warmup", flags=[int(FrameFlag.NOT_REGISTERED)] * 100, trial_events=TRIALS)
    assert judged(warmup) == []


def test_a_failed_calibration_never_followed_by_one_is_a_problem(tmp_path):
    failed = (("baseline_start", {}), ("baseline_done", {}),
              ("calibration_failed", {"error": "the baseline cursor is flat (standard deviation 0.01 <= 1e+09)"}))
    folder = make_session(tmp_path / "s", flags=[0] * 100, trial_events=failed)
    problems = judged(folder)
    assert problems[0].startswith("the calibration failed and the session was never calibrated") \
        and "cursor is flat" in problems[0]
    again = make_session(tmp_path / "again", flags=[0] * 100, trial_events=(*failed, *TRIALS[2:]))
    assert judged(again) == []  # recalibrated by the operator: the session went on
    by_hand = make_session(tmp_path / "by_hand", flags=[0] * 100, trial_events=TRIALS[:2],
                           command_failed="CalibrationError: the baseline is too short")
    assert "too short" in judged(by_hand, "Ctrl-C")[0]


def test_no_trial_is_a_problem_when_the_rig_ended_the_session_not_when_the_operator_did(tmp_path):
    folder = make_session(tmp_path / "s", flags=[0] * 100, trial_events=(("baseline_start", {}),))
    [problem] = judged(folder)
    assert problem.startswith("no trial ran: the session ended 30 s after the start, during the 30 s baseline")
    assert judged(folder, "Ctrl-C") == [] and judged(folder, "stop from console") == []
    assert judged(folder, "failure") == []  # the failure itself says why
    assert stopped_by_operator("SIGTERM") and not stopped_by_operator("task finished")
    assert not stopped_by_operator("the frame source ended (end of the replayed movie)")


def test_the_outcome_is_read_back_for_rig_summary(tmp_path, capsys):
    from rig.app.cli import main

    folder = make_session(tmp_path / "s", flags=[0] * 100, trial_events=(("baseline_start", {}),))
    outcome = recorded_outcome(folder)
    assert outcome == {"stop_reason": "duration of 60 s reached"}
    summary = with_outcome(summarize_session(folder), outcome, judged(folder))
    assert summary["ok"] is False and summary["stop_reason"] == "duration of 60 s reached"
    assert main(["summary", str(folder)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["ok"] is False and printed["stop_reason"] == "duration of 60 s reached"
    assert printed["problems"] == summary["problems"]
    assert "rig summary: problem: no trial ran" in captured.err and "NOT ok" in captured.err
    crashed = make_session(tmp_path / "crashed", flags=[0] * 10, trial_events=TRIALS, stop="")
    assert recorded_outcome(crashed) == {"ended": False}
    assert "no recorded end" in with_outcome({}, recorded_outcome(crashed), [])["problems"][0]
    failed = make_session(tmp_path / "failed", flags=[0] * 10, trial_events=TRIALS, stop="failure")
    assert with_outcome({}, recorded_outcome(failed), [])["failure"] == "ValueError: boom"


def test_numbers_for_readers():
    assert sig(0.12345678901234568) == "0.1235" and sig(1234567.0) == "1.235e+06" and sig(None) == "—"
    assert hit_rate(2, 3) == 0.4 and hit_rate(0, 0) is None
    assert hit_rate_text(2, 3) == "2 hits in 5 completed trials (40 %)"
    assert hit_rate_text(1, 0) == "1 hit in 1 completed trial (100 %)"


def test_a_flood_of_one_warning_is_one_line_per_window():
    lines = WarningLines(window_s=10)
    assert lines.line("WARNING", "acquisition", "wrong_shape", "frame 0", 0.0) == \
        "WARNING acquisition: wrong_shape: frame 0"
    assert [lines.line("WARNING", "acquisition", "wrong_shape", f"frame {i}", i * 0.1) for i in range(1, 50)] == \
        [None] * 49
    assert lines.line("WARNING", "decoder", "wrong_shape", "other process", 1.0) is not None
    assert lines.line("WARNING", "acquisition", "wrong_shape", "frame 300", 10.0).endswith("(+49 more like it in "
                                                                                          "the last 10 s)")
    lines.line("WARNING", "acquisition", "wrong_shape", "frame 301", 10.5)
    assert lines.flush() == ["... and 1 more wrong_shape warning(s) from acquisition not shown"]


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.warnings: list[tuple[str, str]] = []

    def log(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, code: str, message: str) -> None:
        self.warnings.append((code, message))


def watch(recorder: Recorder, warmup: int = 0, **overrides: Any) -> SessionWatch:
    cfg = load_config(SIM, [f"{k}={v}" for k, v in overrides.items()])
    return SessionWatch(msgspec.to_builtins(cfg.acquisition), warmup_frames=warmup, headless=True, log=recorder.log,
                        warn=recorder.warn)


def test_the_watch_prints_every_process_warning_and_error():
    rec = Recorder()
    w = watch(rec)
    w.on_message(RigWarning(process="acquisition", code="link_lost", message="scope gone"), 0.0)
    w.on_message(ProcessError(process="decoder", error_type="ValueError", message="bad"), 0.0)
    w.on_message(CalibrationResult(threshold=0.12345678901234568, feedback_min=0, feedback_max=1,
                                   predicted_hit_rate=0.3, method="hit_rate", baseline_frames=900), 0.0)
    assert rec.lines == ["WARNING acquisition: link_lost: scope gone", "ERROR decoder: ValueError: bad",
                         "calibrated: threshold 0.1235, predicted hit rate 30 % (hit_rate, 900 baseline frames)"]


def test_the_watch_says_at_once_when_no_frame_comes():
    rec = Recorder()
    w = watch(rec, **{"acquisition.source": "cloose_tcp", "acquisition.cloose_tcp.port": 30123})
    w.running(100.0)
    w.poll(109.0)
    assert rec.warnings == []
    w.poll(110.0)
    w.poll(200.0)
    [(code, message)] = rec.warnings  # said once
    assert code == "no_frames" and message.startswith("no frame from the scope 10 s after the start") \
        and "127.0.0.1:30123" in message


def test_the_watch_says_when_the_frames_are_all_bad_after_the_warmup():
    rec = Recorder()
    w = watch(rec, warmup=300)
    for frames in range(0, 301, 30):  # the live reference is being built: every frame NOT_REGISTERED
        w.on_message(AcqStatus(frames=frames, frames_dropped=0, bad_frames=frames, link="ok", fps=30), 0.0)
    assert rec.warnings == []
    w.on_message(AcqStatus(frames=330, frames_dropped=0, bad_frames=330, link="ok", fps=30), 0.0)
    w.on_message(AcqStatus(frames=330 + BAD_WINDOW_FRAMES, frames_dropped=0, bad_frames=330 + BAD_WINDOW_FRAMES,
                           link="ok", fps=30), 0.0)
    [(code, message)] = rec.warnings
    assert code == "frames_bad" and message.startswith(f"{BAD_WINDOW_FRAMES} of the last {BAD_WINDOW_FRAMES} frames")


def test_the_watch_says_when_the_calibration_failed():
    rec = Recorder()
    w = watch(rec)
    w.on_message(TrialEvent(kind="calibration_failed", trial=0, frame=900, detail={"error": "the cursor is flat"}), 0)
    [(code, message)] = rec.warnings
    assert code == "calibration_failed" and "the cursor is flat" in message and "idle to its end" in message
    w.finish({"ok": False, "stop_reason": "duration of 60 s reached", "problems": ["p1"], "frames": 10, "trials": 0,
              "hits": 0, "misses": 0, "rewards_delivered": 0, "volume_ul": 0.0})
    assert rec.lines[-2:] == ["PROBLEM: p1", "session NOT ok (duration of 60 s reached): 10 frames decided, 0 trials, "
                                             "0 hits, no completed trial, 0 rewards (0 µL)"]


def test_startup_is_never_silent_for_more_than_a_second():
    now = [0.0]
    lines: list[str] = []
    log = StartupLog(lines.append, clock=lambda: now[0], compiles=lambda name: name == "decoder")
    log.starting("decoder", 42)
    assert lines == ["starting decoder (pid 42)", "decoder: compiling its numba kernels (first run on this PC or after "
                                                  "an update: up to ~10 s more; cached for the next runs)"]
    for t in np.arange(0.02, 3.01, 0.02):
        now[0] = float(t)
        log.waiting("decoder", "configuring")
    assert lines[2:] == [f"... decoder starting, compiling kernels ({s} s)" for s in (1, 2, 3)]
    log.ready("decoder", "12 ROIs")
    assert lines[-1] == "decoder ready in 3.0 s: 12 ROIs"


def test_a_cold_numba_cache_is_recognised(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert not kernels_cached("decoder.dff") and compiles_kernels("decoder")
    assert not compiles_kernels("reward")  # no kernels
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "dff._correct-17.py311.nbi").write_bytes(b"")
    assert kernels_cached("decoder.dff")


@pytest.mark.parametrize("stop", ["duration of 9 s reached", "Ctrl-C"])
def test_the_summary_keys_of_the_outcome(tmp_path, stop):
    folder = make_session(tmp_path / "s", flags=[0] * 100, trial_events=TRIALS, stop=stop)
    summary = with_outcome(summarize_session(folder), recorded_outcome(folder), judged(folder, stop))
    assert (summary["ok"], summary["stop_reason"], summary["problems"]) == (True, stop, [])
