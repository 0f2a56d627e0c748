"""Issue 21: the end-of-baseline calibration is computed beside the decoder's loop and applied at a recorded frame.

* The compiled task prediction (decoder/task_sim.py) and smoothing give exactly what the Python trial machine
  and RunningMean give, so thresholds are unchanged.
* Sessions are built the way the rig builds them: the real ``DecoderProcess`` (in this process, without its
  bus loop, as tests/test_session_offline.py does) decides every frame with its real calibration thread; a
  gate holds the computation back for a number of frames, so the calibration applies well after the
  baseline's end while frames go on being decided.
* ``rig replay`` must re-decide those sessions bit for bit, applying the calibration where the record says,
  and a session in the layout before ``decoder.calibrate_off_loop`` (calibrated in the loop) still replays.
* The operator's Calibrate takes the same road (``decoder.operator_calibrate_off_loop``): the baseline goes on
  recording while it computes, commands sent meanwhile (a second Calibrate too) wait behind it and apply
  right after it, a failure is refused when it applies, and replay re-applies it at the recorded frame.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
from pathlib import Path

import msgspec
import numpy as np
import pytest

from decoder.calibration import run_task
from decoder.calibration_job import CalibrationJob, ThreadCalibrator
from decoder.decoders import RunningMean
from decoder.task_sim import task_outcomes
from decoder.trial import TrialTiming
from rig.app.config import CONFIG_LOADER, config_from_dict
from rig.core.bus import free_tcp_port
from rig.core.codes import Mode
from rig.core.process import ProcessSpec
from rig.core.schema import Control, FluorFrame
from rig.core.store import EventLog, RecordWriter, read_events, read_records, write_json_atomic
from rig.offline.replay import check, replay
from rig.offline.session_data import load_session
from tests.test_decoder_synthetic import ar1_cursor, synthetic_recording

FPS = 30.0
N_ROIS = 8
N_FRAMES = 700
BASELINE_S = 10.0  # 300 frames: the baseline ends on frame 299 (it starts after frame -1)
BASELINE_END = 299
HELD = 40  # frames decided while the calibration is held back
WAIT_S = 30.0  # generous bound on a condition (never a sleep)


def _config(**decoder: object) -> dict:
    return {
        "rig": {"name": "testrig"},
        "session": {"mouse_id": "m1", "experimenter": "Tester, T"},
        "acquisition": {"source": "sim", "frame_rate_hz": FPS},
        "decoder": {"up": [0, 1], "down": [2, 3], "f0_window_s": 5.0, **decoder},
        "task": {"baseline_s": BASELINE_S, "auto_protocol": True, "trial_s": 1.0, "iti_s": 0.3, "hold_s": 0.2,
                 "timeout_s": 0.3},
        "reward": {"volume_ul": 2.5},
    }


# ---------------------------------------------------------------------------- the compiled prediction


def test_the_compiled_trial_machine_gives_the_python_machines_every_outcome() -> None:
    checked = 0
    for seed, (iti, hold, timeout), rtb, holds, one_crossing in itertools.product(
            range(3), [(30, 15, 15), (0, 3, 0), (10, 0, 5)], (0, 1, 4), (True, False), (True, False)):
        timing = TrialTiming(trial_frames=40, iti_frames=iti, hold_frames=hold, timeout_frames=timeout,
                             rtb_frames=rtb, rtb_holds_trials=holds, one_crossing=one_crossing)
        cursor = ar1_cursor(3000, seed, tau_frames=(2.0, 8.0, 40.0)[seed])
        if seed == 1:
            cursor = np.round(cursor, 1)  # ties at the threshold
        median = float(np.median(cursor))
        for threshold in np.quantile(cursor, [0.5, 0.8, 0.97]).tolist() + [0.5 if seed == 1 else 0.3]:
            rtb_level = median + 0.5 * (threshold - median) if rtb else -np.inf
            for start in (0, 17):
                outcomes: list[tuple[int, bool]] = []
                machine = run_task(cursor[start:].tolist(), timing, threshold, rtb_level, outcomes)
                hits, misses, frames, hit = task_outcomes(cursor, timing, threshold, rtb_level, start)
                assert (hits, misses) == (machine.hits, machine.misses), (timing, threshold, start)
                assert list(zip(frames.tolist(), hit.tolist(), strict=True)) == outcomes
                checked += hits + misses
    assert checked > 10_000


def test_compiled_smoothing_is_running_mean_push_by_push() -> None:
    rng = np.random.default_rng(4)
    up, down = rng.standard_normal(500), rng.standard_normal(500)
    for n in (1, 3, 7):
        live = RunningMean(n)
        pushed = np.array([live.push(float(u), float(d)) for u, d in zip(up, down, strict=True)])
        smooth_up, smooth_down = RunningMean(n).smooth_frames(up, down)
        assert np.array_equal(smooth_up, pushed[:, 0]) and np.array_equal(smooth_down, pushed[:, 1])


# ---------------------------------------------------------------------------- live sessions, built


class GatedCalibrator:
    """The real calibration thread, handed each job only when the test opens the gate (a long calibration)."""

    def __init__(self, thread: ThreadCalibrator) -> None:
        self.thread = thread
        self.gate = threading.Event()
        self.jobs: list[CalibrationJob] = []

    def submit(self, job: CalibrationJob) -> None:
        self.jobs.append(job)

    def release(self) -> CalibrationJob:
        job = self.jobs[-1]
        self.thread.submit(job)
        return job

    def due(self, job: CalibrationJob, frame: int) -> bool:
        return self.thread.due(job, frame)


def build_session(folder: Path, cfg_doc: dict, held: int | None,
                  controls: dict[int, list[tuple[str, dict]]] | None = None, release_at: int | None = None) -> dict:
    """A traces-only session decided by the real DecoderProcess; the calibration is released to its thread
    ``held`` frames after the baseline's end (or before frame ``release_at``) and awaited before the next frame
    (None: the process's own thread, not held). ``controls``: the operator's commands after the baseline's
    start, by the frame they come before. Returns what the test saw while deciding."""
    from decoder.process import DecoderProcess

    cfg = config_from_dict(cfg_doc, "test-config")
    folder.mkdir(parents=True)
    write_json_atomic(folder / "config.resolved.json", msgspec.to_builtins(cfg))
    write_json_atomic(folder / "session.json", {"format": "bci-rig session v1", "status": "ok", "rig": "testrig",
                                                "created": "2025-06-01T10:00:00", "metadata": {"mouse_id": "m1"}})
    acq_dir = folder / "acquisition"
    acq_events = EventLog(acq_dir / "events.jsonl")
    acq_events.write("state", state="ready", reason="", n_rois=str(N_ROIS), frame_rate_hz=repr(FPS))
    frames_rec = RecordWriter(acq_dir / "frames.rec", _frame_dtype())
    endpoints = {name: f"tcp://127.0.0.1:{free_tcp_port()}" for name in ("decoder", "supervisor", "acquisition")}
    spec = ProcessSpec(name="decoder", target="decoder.process:DecoderProcess", config=msgspec.to_builtins(cfg),
                       config_file="test-config", config_loader=CONFIG_LOADER, endpoints=endpoints,
                       session_dir=str(folder), critical=True,
                       extra={"upstream": {"acquisition": {"n_rois": str(N_ROIS), "frame_rate_hz": repr(FPS)}}},
                       watch_parent=False)
    decoder = DecoderProcess(spec)
    decoder.configure()
    gated = GatedCalibrator(decoder.calibrator)
    if held is not None or release_at is not None:
        decoder.core.calibrator = gated
    F, Fneu = synthetic_recording(N_FRAMES, N_ROIS, seed=11)
    seen: dict = {"pending_modes": [], "job": None}
    t0, period = 1_000_000_000_000, int(1e9 / FPS)
    decoder.on_control(Control(command="start_baseline", args={}, issued_by="test"))
    if held is not None and release_at is None:
        release_at = BASELINE_END + 1 + held
    for number in range(N_FRAMES):
        for command, args in (controls or {}).get(number, []):
            decoder.on_control(Control(command=command, args=args, issued_by="test"))
        if number == release_at:
            seen["job"] = job = gated.release()
            assert job.wait(WAIT_S), "the calibration thread did not compute the job"
        pending = bool(gated.jobs) and release_at is not None and number < release_at  # submitted, held back
        t_ready = t0 + number * period
        row = frames_rec.next_row()
        row["frame"], row["t_ready"], row["t_registered"], row["t_extracted"], row["t_sent"] = (
            number, t_ready, t_ready + 900_000, t_ready + 1_000_000, t_ready + 1_050_000)
        row["F"], row["Fneu"] = F[number], Fneu[number]
        frames_rec.commit()
        decoder._decide(FluorFrame(frame=number, t_ready=t_ready, t_registered=t_ready + 900_000,
                                   t_extracted=t_ready + 1_000_000, dy=0.0, dx=0.0, corr=1.0, flags=0,
                                   F=F[number].copy(), Fneu=Fneu[number].copy(), t_sent=t_ready + 1_050_000))
        if pending:
            seen["pending_modes"].append(decoder.core.engine.mode)
    decoder.on_stop()
    decoder._close()
    frames_rec.close()
    acq_events.write("final_stats", frames=N_FRAMES, frames_dropped=0, bad_frames=0, source_stats={})
    acq_events.close()
    return seen


def _frame_dtype() -> np.dtype:
    from acquisition.process import frame_record_dtype

    return frame_record_dtype(N_ROIS)


def _trial_events(folder: Path, kind: str) -> list[dict]:
    return [e for e in read_events(folder / "decoder" / "events.jsonl") if e.get("event") == kind]


def _replay_mismatches(folder: Path) -> tuple[int, int]:
    session = load_session(folder)
    report = check(session, replay(session, from_traces=True, progress=False))
    assert report.complete
    return report.mismatches, report.decisions_checked


@pytest.fixture(scope="module")
def held_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("offloop") / "held"
    return folder, build_session(folder, _config(), HELD)


def test_decisions_keep_flowing_while_the_calibration_is_pending(held_session: tuple[Path, dict]) -> None:
    folder, seen = held_session
    # every frame after the baseline's end was decided while the calibration was pending: IDLE, a cursor, no wait
    assert seen["pending_modes"] == [Mode.IDLE] * HELD
    rows = read_records(folder / "decoder" / "decisions.rec")
    assert len(rows) == N_FRAMES
    pending = rows[BASELINE_END + 1: BASELINE_END + 1 + HELD]
    assert (pending["mode"] == int(Mode.IDLE)).all() and np.isfinite(pending["cursor"]).all()
    applied_at = BASELINE_END + 1 + HELD
    assert int(rows["mode"][applied_at]) == int(Mode.BCI)  # the first frame decided with the calibration
    (applied,) = [e for e in read_events(folder / "decoder" / "events.jsonl") if e["kind"] == "calibration_applied"]
    assert (applied["frame"], applied["baseline_end"], applied["ok"]) == (applied_at, BASELINE_END, True)
    assert [e["frame"] for e in _trial_events(folder, "baseline_done")] == [BASELINE_END]
    assert [e["frame"] for e in _trial_events(folder, "calibrated")] == [applied_at]
    assert [e["frame"] for e in _trial_events(folder, "bci_start")] == [applied_at]
    assert len(_trial_events(folder, "trial_start")) > 5
    cal = json.loads((folder / "decoder" / "calibration.json").read_text(encoding="utf-8"))
    assert cal["threshold"] == _trial_events(folder, "calibrated")[0]["calibration"]["threshold"]
    assert seen["job"].compute_ms > 0 and not seen["job"].error


def test_a_session_whose_calibration_applied_late_replays_bit_exactly(held_session: tuple[Path, dict],
                                                                      tmp_path: Path) -> None:
    folder, _ = held_session
    mismatches, checked = _replay_mismatches(folder)
    assert (mismatches, checked) == (0, N_FRAMES)
    # the record is what makes it exact: without the calibration_applied line it would never apply
    events = folder / "decoder" / "events.jsonl"
    stripped = tmp_path / "stripped"
    shutil.copytree(folder, stripped)
    lines = [line for line in events.read_text(encoding="utf-8").splitlines()
             if json.loads(line).get("kind") != "calibration_applied"]
    (stripped / "decoder" / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _replay_mismatches(stripped)[0] > 0


def test_a_session_calibrated_in_the_loop_before_the_key_still_replays(tmp_path: Path) -> None:
    folder = tmp_path / "legacy"
    build_session(folder, _config(calibrate_off_loop=False), None)
    assert [e["frame"] for e in _trial_events(folder, "calibrated")] == [BASELINE_END]  # in the loop
    resolved = json.loads((folder / "config.resolved.json").read_text(encoding="utf-8"))
    del resolved["decoder"]["calibrate_off_loop"]  # the layout before the key
    write_json_atomic(folder / "config.resolved.json", resolved)
    session = load_session(folder)
    assert session.config.decoder.calibrate_off_loop is False
    assert any("calibrate_off_loop" in note for note in session.notes)
    assert _replay_mismatches(folder) == (0, N_FRAMES)
    # read with today's default it would calibrate a frame later than it did
    today = config_from_dict(resolved, "without the legacy fill")
    assert check(session, replay(session, today, from_traces=True, progress=False)).mismatches > 0


def test_a_failed_calibration_is_reported_on_the_next_frame(tmp_path: Path) -> None:
    folder = tmp_path / "failed"
    # a baseline shorter than the trials it must hold: the calibration fails, in the thread
    doc = _config()
    doc["decoder"]["calibration"] = {"min_baseline_trials": 1000.0}
    build_session(folder, doc, 5)
    (failed,) = _trial_events(folder, "calibration_failed")
    assert failed["frame"] == BASELINE_END + 6 and "too short" in failed["error"]
    applied = [e for e in read_events(folder / "decoder" / "events.jsonl") if e["kind"] == "calibration_applied"]
    assert [(e["frame"], e["ok"]) for e in applied] == [(BASELINE_END + 6, False)]
    assert not _trial_events(folder, "calibrated")
    rows = read_records(folder / "decoder" / "decisions.rec")
    assert (rows["mode"][BASELINE_END + 1:] == int(Mode.IDLE)).all()  # it waits for the operator
    assert _replay_mismatches(folder) == (0, N_FRAMES)


def test_a_crash_in_the_calibration_thread_is_raised_in_the_decoders_thread() -> None:
    class Broken:
        def calibrate(self, decoder: object, cfg: object, allow_rois: object) -> None:
            raise ZeroDivisionError("a bug")

    thread = ThreadCalibrator([], lower=False)
    job = CalibrationJob(12, Broken(), None, None)  # type: ignore[arg-type]
    thread.submit(job)
    assert job.wait(WAIT_S) and thread.close()
    with pytest.raises(RuntimeError, match="frame 12 failed: ZeroDivisionError: a bug"):
        job.check()


def _core_past_baseline(gated: GatedCalibrator) -> tuple:
    """A decoder core 5 frames past the end of its baseline, the calibration held by ``gated``; with its
    recorder and the recording (F, Fneu) it was fed, 20 frames past the baseline."""
    from decoder.config import DecoderConfig, TaskConfig
    from decoder.core import DecoderCore
    from tests.test_decoder_core import Recorder

    out = Recorder()
    core = DecoderCore(DecoderConfig(up=[0, 1], down=[2, 3], f0_window_s=5.0), TaskConfig(baseline_s=BASELINE_S,
                       trial_s=1.0, iti_s=0.3, hold_s=0.2, timeout_s=0.3), 2.5, N_ROIS, FPS, out, gated)
    F, Fneu = synthetic_recording(BASELINE_END + 20, N_ROIS, seed=3)
    core.apply_control("start_baseline", {})
    for number in range(BASELINE_END + 5):
        core.decide(number, F[number], Fneu[number], 0, None)
    return core, out, F, Fneu


def test_an_operator_call_while_it_computes_drops_the_calibration() -> None:
    thread = ThreadCalibrator([], lower=False)
    gated = GatedCalibrator(thread)
    core, out, F, Fneu = _core_past_baseline(gated)
    assert core.engine.calibration_job is gated.jobs[0]
    assert core.apply_control("set_ensembles", {"up": [4, 5], "down": [6]})  # the calibration was for [0, 1] - [2, 3]
    job = gated.release()
    assert job.wait(WAIT_S) and not job.error and thread.close()
    for number in range(BASELINE_END + 5, BASELINE_END + 20):
        core.decide(number, F[number], Fneu[number], 0, None)
    assert core.engine.mode == Mode.IDLE and core.engine.calibration is None
    events = out.of("event")
    assert [e["reason"] for e in events if e["kind"] == "calibration_dropped"] == ["set_ensembles"]
    assert not [e for e in events if e["kind"] == "calibration_applied"] and not out.of("calibration")


# ---------------------------------------------------------------------------- the operator's Calibrate


OP_AFTER = 349  # the operator calibrates after this frame, during a 600-frame baseline
OP_APPLIED = OP_AFTER + 1 + HELD


def _operator_config(**decoder: object) -> dict:
    doc = _config(**decoder)
    doc["task"].update(auto_protocol=False, baseline_s=20.0)
    return doc


@pytest.fixture(scope="module")
def operator_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("offloop") / "operator"
    controls = {OP_AFTER + 1: [("calibrate", {"target_hit_rate": 0.4})], OP_AFTER + 3: [("start_bci", {})]}
    return folder, build_session(folder, _operator_config(), None, controls, release_at=OP_APPLIED)


def test_the_operators_calibration_is_computed_beside_the_loop(operator_session: tuple[Path, dict]) -> None:
    folder, seen = operator_session
    # frames went on being decided while it computed, as before the command: the baseline kept recording
    assert seen["pending_modes"] == [Mode.BASELINE] * HELD
    rows = read_records(folder / "decoder" / "decisions.rec")
    pending = rows[OP_AFTER + 1: OP_APPLIED]
    assert (pending["mode"] == int(Mode.BASELINE)).all() and np.isfinite(pending["cursor"]).all()
    assert int(rows["mode"][OP_APPLIED]) == int(Mode.BCI)  # calibrated, then the start_bci that waited behind it
    events = read_events(folder / "decoder" / "events.jsonl")
    (applied,) = [e for e in events if e["kind"] == "calibration_applied"]
    assert {k: applied[k] for k in ("frame", "requested_by", "job", "after_frame", "ok")} == {
        "frame": OP_APPLIED, "requested_by": "operator", "job": 1, "after_frame": OP_AFTER, "ok": True}
    (held,) = [e for e in events if e["kind"] == "command_held"]
    assert (held["command"], held["after_frame"], held["behind_job"]) == ("start_bci", OP_AFTER + 2, 1)
    # start_bci took effect after the calibration, before the frame it applied at
    assert [(e["command"], e["after_frame"]) for e in events if e["kind"] == "applied"] == [
        ("start_baseline", -1), ("calibrate", OP_AFTER), ("start_bci", OP_APPLIED - 1)]
    for kind in ("baseline_done", "calibrated", "bci_start"):
        assert [e["frame"] for e in _trial_events(folder, kind)] == [OP_APPLIED], kind
    cal = json.loads((folder / "decoder" / "calibration.json").read_text(encoding="utf-8"))
    assert cal["baseline_frames"] == OP_AFTER + 1 and cal["target"] == pytest.approx(0.4)  # the baseline as asked


def test_a_session_with_an_operator_calibration_replays_bit_exactly(operator_session: tuple[Path, dict],
                                                                    tmp_path: Path) -> None:
    folder, _ = operator_session
    assert _replay_mismatches(folder) == (0, N_FRAMES)
    stripped = tmp_path / "stripped"  # without the frame it applied at, replay cannot know it
    shutil.copytree(folder, stripped)
    events = stripped / "decoder" / "events.jsonl"
    lines = [line for line in events.read_text(encoding="utf-8").splitlines()
             if json.loads(line).get("kind") != "calibration_applied"]
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _replay_mismatches(stripped)[0] > 0


def _operator_core(**decoder: object) -> tuple:
    from decoder.config import CalibrationConfig, DecoderConfig, TaskConfig
    from decoder.core import DecoderCore
    from tests.test_decoder_core import Recorder

    out = Recorder()
    gated = GatedCalibrator(ThreadCalibrator([], lower=False))
    if "calibration" in decoder:
        decoder["calibration"] = CalibrationConfig(**decoder["calibration"])  # type: ignore[arg-type]
    core = DecoderCore(DecoderConfig(up=[0, 1], down=[2, 3], f0_window_s=5.0, **decoder),  # type: ignore[arg-type]
                       TaskConfig(baseline_s=20.0, auto_protocol=False, trial_s=1.0, iti_s=0.3, hold_s=0.2,
                                  timeout_s=0.3),
                       2.5, N_ROIS, FPS, out, gated)
    F, Fneu = synthetic_recording(400, N_ROIS, seed=3)
    core.apply_control("start_baseline", {})
    for number in range(320):
        core.decide(number, F[number], Fneu[number], 0, None)
    return core, out, gated, F, Fneu


def test_a_calibrate_while_one_computes_waits_behind_it_and_applies_after() -> None:
    core, out, gated, F, Fneu = _operator_core()
    assert core.apply_control("calibrate", {"target_hit_rate": 0.4})
    assert core.apply_control("calibrate", {"target_hit_rate": 0.6})  # a second one: queued, not refused
    assert core.apply_control("manual_reward", {})  # never waits: the reward goes out at once
    assert len(out.of("reward_request")) == 1 and len(gated.jobs) == 1
    first = gated.release()
    assert first.wait(WAIT_S)
    core.decide(320, F[320], Fneu[320], 0, None)  # the first applies; the second is submitted now
    assert core.engine.calibration.target == pytest.approx(0.4) and len(gated.jobs) == 2
    core.decide(321, F[321], Fneu[321], 0, None)
    second = gated.release()
    assert second.wait(WAIT_S) and gated.thread.close()
    core.decide(322, F[322], Fneu[322], 0, None)
    assert core.engine.mode == Mode.READY and core.engine.calibration.target == pytest.approx(0.6)
    events = out.of("event")
    assert [(e["job"], e["frame"]) for e in events if e["kind"] == "calibration_applied"] == [(1, 320), (2, 322)]
    assert [e["command"] for e in events if e["kind"] == "command_held"] == ["calibrate"]
    assert [c["target"] for c in out.of("calibration")] == [pytest.approx(0.4), pytest.approx(0.6)]


def test_a_failed_operator_calibration_is_refused_when_it_applies_and_changes_nothing() -> None:
    core, out, gated, F, Fneu = _operator_core(calibration={"min_baseline_trials": 1000.0})
    assert core.apply_control("calibrate", {}) and core.apply_control("start_bci", {})
    job = gated.release()
    assert job.wait(WAIT_S) and job.error and gated.thread.close()
    core.decide(320, F[320], Fneu[320], 0, None)
    assert core.engine.mode == Mode.BASELINE and core.engine.baseline_frames == 321  # the recording went on
    assert out.of("refused") == ["calibrate", "start_bci"]  # its error, then the held start_bci: not calibrated
    failed = [e for e in out.of("event") if e["kind"] == "command_failed"]
    assert [e["command"] for e in failed] == ["calibrate", "start_bci"] and "too short" in failed[0]["error"]


def test_with_the_key_off_the_operators_calibration_is_computed_in_the_loop() -> None:
    for key in ("calibrate_off_loop", "operator_calibrate_off_loop"):
        core, out, gated, _, _ = _operator_core(**{key: False})
        assert core.apply_control("calibrate", {})
        assert core.engine.mode == Mode.READY and not gated.jobs and ("busy", "calibrating") in out.calls
        assert gated.thread.close()


def test_a_session_recorded_before_the_operator_key_is_read_with_the_calibration_in_the_loop(
        operator_session: tuple[Path, dict], tmp_path: Path) -> None:
    folder = tmp_path / "before"
    shutil.copytree(operator_session[0], folder)
    resolved = json.loads((folder / "config.resolved.json").read_text(encoding="utf-8"))
    del resolved["decoder"]["operator_calibrate_off_loop"]
    write_json_atomic(folder / "config.resolved.json", resolved)
    session = load_session(folder)
    assert session.config.decoder.operator_calibrate_off_loop is False
    assert any("operator_calibrate_off_loop" in note for note in session.notes)


def test_an_operator_calibrate_while_the_end_of_baseline_one_computes_replaces_it() -> None:
    gated = GatedCalibrator(ThreadCalibrator([], lower=False))
    core, out, F, Fneu = _core_past_baseline(gated)
    auto = core.calibration_pending
    assert auto is not None and not auto.by_operator
    assert core.apply_control("calibrate", {"target_hit_rate": 0.5})  # not held: only the operator's hold commands
    operator = gated.release()
    assert operator.by_operator and operator.wait(WAIT_S) and gated.thread.close()
    core.decide(BASELINE_END + 5, F[BASELINE_END + 5], Fneu[BASELINE_END + 5], 0, None)
    assert core.engine.mode == Mode.READY  # the operator's calibration: READY, no automatic BCI
    events = out.of("event")
    assert [(e["requested_by"], e["reason"]) for e in events if e["kind"] == "calibration_dropped"] == [
        ("auto", "calibrate")]
    assert [e["requested_by"] for e in events if e["kind"] == "calibration_applied"] == ["operator"]
