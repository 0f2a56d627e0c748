"""Whole-rig tests: real processes, real sockets, the real serial stack against the board emulator.

Small frames and short task timings keep them quick; what they check is behaviour, not speed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest

from rig.app.session_files import cpu_target
from rig.core.movie_file import ChunkedMovie
from rig.core.store import read_events, read_records
from tests.conftest import CTRL_C_POPEN, CTRL_C_REASON, REPO, send_ctrl_c, wait_for

pytestmark = pytest.mark.slow

SMALL = [
    "acquisition.sim.height_px=128", "acquisition.sim.width_px=128", "acquisition.sim.n_cells=40",
    "acquisition.registration.reference_frames=30",
    "task.baseline_s=8", "task.trial_s=1.5", "task.iti_s=0.3", "task.hold_s=0.2", "task.timeout_s=0.2",
    "reward.min_interval_s=0.3", "session.save_frames=true", "decoder.calibration.target_hit_rate=0.5",
]


def rig_cmd(tmp_path: Path, duration: float, *extra: str, module: str = "rig.app.cli") -> list[str]:
    """``rig run`` on sim.toml made small; ``module`` is the entry point (a test's wrapper of rig.app.cli)."""
    cmd = [sys.executable, "-m", module, "run", str(REPO / "hardware_configs" / "sim.toml"), "--headless",
           "--duration", str(duration), "--sessions-dir", str(tmp_path)]
    for item in SMALL + list(extra):
        cmd += ["--set", item]
    return cmd


def session_dir(tmp_path: Path) -> Path:
    found = wait_for(lambda: sorted(p for p in tmp_path.iterdir() if p.is_dir()), 30, "the session folder")
    return found[0]


def spawned_pids(session: Path) -> dict[str, int]:
    return {e["process"]: e["pid"] for e in read_events(session / "supervisor.events.jsonl", {"spawned"})}


def decisions_so_far(session: Path) -> int:
    path = session / "decoder" / "decisions.rec"
    return len(read_records(path)) if path.exists() and Path(str(path) + ".json").exists() else 0


def run_rig_until(tmp_path: Path, interrupt: Callable[[Path, subprocess.Popen], None], *extra: str,
                  frames: int = 60, module: str = "rig.app.cli") -> tuple[subprocess.Popen, str, str, Path]:
    """Start a headless sim session, wait until the decoder decided ``frames`` frames, call
    ``interrupt(session, proc)`` (kill a process, send Ctrl-C, ...), and collect the rig's output."""
    proc = subprocess.Popen(rig_cmd(tmp_path, 120, *extra, module=module), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, **CTRL_C_POPEN)
    try:
        session = session_dir(tmp_path)
        wait_for(lambda: decisions_so_far(session) > frames, 90, f"the decoder to decide {frames} frames")
        interrupt(session, proc)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, out, err, session


def test_headless_sim_session_closes_the_loop(tmp_path):
    proc = subprocess.run(rig_cmd(tmp_path, 22), capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("session", "frames", "frames_dropped", "trials", "hits", "rewards_delivered", "rewards_failed",
                "latency_ms", "reward_latency_ms"):
        assert key in summary, key
    session = Path(summary["session"])
    assert summary["ok"] is True
    # ~20 s at 30 Hz
    assert summary["frames"] > 400
    assert summary["trials"] >= 2, summary
    assert summary["rewards_delivered"] + summary["rewards_failed"] == len(
        read_events(session / "decoder" / "events.jsonl", {"reward_request"}))
    assert summary["hits"] >= 1, summary  # calibrated to 50 % chance: some of the trials are hits
    assert summary["rewards_delivered"] >= 1
    assert summary["reward_latency_ms"]["p50"] > 0
    for stat in ("p50", "p99", "max"):
        assert summary["latency_ms"][stat] > 0
    # the session folder holds what every process owns
    for rel in ("session.json", "config.toml", "config.resolved.json", "summary.json", "acquisition/frames.rec",
                "acquisition/movie.zchunks", "acquisition/rois/stat.npy", "decoder/decisions.rec",
                "decoder/calibration.json", "reward/events.jsonl", "reward/valve_calibration.json"):
        assert (session / rel).exists(), rel
    decisions = read_records(session / "decoder" / "decisions.rec")
    assert len(decisions) == summary["frames"]
    assert np.all(decisions["t_decided"] >= decisions["t_ready"])
    assert np.all(np.diff(decisions["frame"]) > 0)
    movie = json.loads((session / "acquisition" / "movie.json").read_text())
    saved = ChunkedMovie(session / "acquisition" / "movie.zchunks", np.dtype(movie["dtype"]), 128, 128)
    assert len(saved) == summary["frames_acquired"] and movie["codec"] == "zstd"  # compressed by default
    assert summary["movie_bytes"] == (session / "acquisition" / "movie.zchunks").stat().st_size
    assert summary["movie_bytes_per_min"] > 0 and summary["movie_compression"] > 1
    assert summary["late_decisions"] >= 0 and "late_decision_causes" in summary
    assert movie["shape"][1:] == [128, 128]
    meta = json.loads((session / "session.json").read_text())
    assert meta["status"] == "ok" and meta["software"]["version"]
    assert meta["software"]["cpu"] == cpu_target()  # what replay names when it runs on another CPU


RECORD_OF = {"acquisition": ("acquisition/frames.rec", "t_sent"), "decoder": ("decoder/decisions.rec", "t_decided")}


@pytest.mark.parametrize("victim", ["acquisition", "decoder", "reward"])
def test_kill_9_of_any_process_keeps_the_data_and_makes_the_rig_safe(tmp_path, victim):
    from rig.core.clock import now_ns
    from rig.offline.session_data import load_session

    seen: dict[str, int] = {}

    def kill(session: Path, proc: subprocess.Popen) -> None:
        seen["rows_before"] = decisions_so_far(session)
        psutil.Process(spawned_pids(session)[victim]).kill()  # SIGKILL; TerminateProcess on Windows
        seen["killed_ns"] = now_ns()

    proc, out, err, session = run_rig_until(tmp_path, kill)
    rows_before, killed_ns = seen["rows_before"], seen["killed_ns"]
    assert proc.returncode == 1, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["failed_process"] == victim
    assert "exited unexpectedly" in summary["failure"] or "heartbeat" in summary["failure"]
    assert f"FAILURE in {victim}" in err
    assert json.loads((session / "session.json").read_text())["status"] == "failed"
    if victim != "reward":
        # the reward process was told to go safe (valve closed, rewards refused) before the stop
        safe = read_events(session / "reward" / "events.jsonl", {"safe_state"})
        assert safe and f"{victim} failed" in safe[0]["reason"]
    # whoever died, the (emulated) board never stays open: every open in its log is followed by a close
    valve = [json.loads(line) for line in (session / "valve_emulator" / "valve.jsonl").read_text().splitlines()]
    opens = sum(1 for e in valve if e["kind"] == "open")
    closes = sum(1 for e in valve if e["kind"] == "close")
    assert opens == closes, valve[-4:]
    # nothing written before the kill is lost or corrupted, and the session opens and reads
    assert len(read_records(session / "decoder" / "decisions.rec")) >= rows_before
    data = load_session(session)
    assert data.decisions is not None and len(data.decisions) >= rows_before
    if victim in RECORD_OF:
        # the killed process lost at most its last flush interval (50 ms) of records: its newest record on
        # disk is that recent (bound kept loose for a loaded machine: 100 ms + one frame + scheduling)
        rel, stamp = RECORD_OF[victim]
        rows = read_records(session / rel)
        assert killed_ns - int(rows[stamp][-1]) < 250_000_000, (killed_ns - int(rows[stamp][-1])) / 1e6


def test_ctrl_c_ends_the_session_cleanly_with_data_saved(tmp_path):
    proc, out, err, session = run_rig_until(tmp_path, lambda session, proc: send_ctrl_c(proc))
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    # POSIX: only the supervisor got the signal. Windows: the whole process group got the Ctrl-Break, and a
    # child's report of it may in principle reach the supervisor before its own handler ran.
    reason = summary["stop_reason"]
    assert summary["ok"] is True and (reason == CTRL_C_REASON or (
        sys.platform == "win32" and reason.startswith(f"{CTRL_C_REASON} in "))), reason
    assert summary["frames"] == len(read_records(session / "decoder" / "decisions.rec")) > 60
    exits = {e["process"]: e["exitcode"] for e in read_events(session / "supervisor.events.jsonl", {"exited"})}
    assert exits == {"valve_emulator": 0, "reward": 0, "acquisition": 0, "decoder": 0}


@pytest.mark.posix_only(reason="SIGTERM is TerminateProcess on Windows: nothing a process could handle")
def test_sigterm_ends_the_session_like_ctrl_c(tmp_path):
    """``kill``, systemd and job schedulers stop a program with SIGTERM: a finished, saved session, exit code 0."""
    proc, out, err, session = run_rig_until(tmp_path, lambda session, proc: proc.send_signal(signal.SIGTERM),
                                            frames=30)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["stop_reason"] == "SIGTERM", summary
    assert json.loads((session / "summary.json").read_text(encoding="utf-8"))["stop_reason"] == "SIGTERM"
    assert json.loads((session / "session.json").read_text(encoding="utf-8"))["status"] == "ok"
    exits = {e["process"]: e["exitcode"] for e in read_events(session / "supervisor.events.jsonl", {"exited"})}
    assert exits == {"valve_emulator": 0, "reward": 0, "acquisition": 0, "decoder": 0}


def delivered_rewards(session: Path) -> int:
    outcomes = read_events(session / "reward" / "events.jsonl", {"reward_outcome"})
    return sum(1 for e in outcomes if e["status"] == "delivered")


def test_a_session_on_the_windows_serial_path_delivers_rewards(tmp_path):
    """What a Windows rig runs: the emulated board over TCP, and a serial port without ``fileno()`` (pyserial's
    COM ports), so the reward link cannot select() on the port: it reads it on a reader thread whose wake-up socket
    wakes the reward process's poller (reward/link.py)."""
    from tests.serial_nofileno import REFUSED

    def after_two_rewards(session: Path, proc: subprocess.Popen) -> None:
        wait_for(lambda: delivered_rewards(session) >= 2, 90, "two delivered rewards")
        send_ctrl_c(proc)

    # a 5 s baseline (the least for 3 trials of 1.5 s) calibrated to 80 % hits: rewards come within seconds
    proc, out, err, session = run_rig_until(tmp_path, after_two_rewards, "reward.emulator_transport=socket",
                                            "task.baseline_s=5", "decoder.calibration.target_hit_rate=0.8",
                                            frames=1, module="tests.rig_without_fileno")
    assert proc.returncode == 0, err[-3000:]
    assert REFUSED in err  # the reward process's port really had no descriptor
    [link] = read_events(session / "reward" / "events.jsonl", {"link_url"})
    assert link["url"].startswith("socket://127.0.0.1:")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is True, summary
    assert summary["rewards_delivered"] >= 2 and summary["reward_latency_ms"]["p50"] > 0, summary
    # every valve opening the board made was closed again
    valve = [json.loads(line) for line in (session / "valve_emulator" / "valve.jsonl").read_text().splitlines()]
    assert sum(e["kind"] == "open" for e in valve) == sum(e["kind"] == "close" for e in valve) >= 2


def test_a_replay_session_ends_when_the_movie_does(tmp_path):
    movie = tmp_path / "movie"
    export = subprocess.run(
        [sys.executable, "-m", "rig.app.cli", "sim", "--export", str(movie), "--frames", "240", "--no-progress",
         "--set", "acquisition.sim.height_px=96", "--set", "acquisition.sim.width_px=96",
         "--set", "acquisition.sim.n_cells=20"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert export.returncode == 0, export.stderr[-2000:]
    cmd = [sys.executable, "-m", "rig.app.cli", "run", str(REPO / "hardware_configs" / "replay.toml"), "--headless",
           "--duration", "120", "--sessions-dir", str(tmp_path / "sessions"),
           "--set", f'acquisition.replay.path="{(movie / "movie.tif").as_posix()}"',
           "--set", f'acquisition.rois.suite2p_dir="{(movie / "suite2p" / "plane0").as_posix()}"',
           "--set", "acquisition.replay.speed=fast", "--set", "task.baseline_s=4", "--set", "task.trial_s=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] and "frame source ended" in summary["stop_reason"]
    assert summary["frames"] == summary["frames_acquired"] == 240


def test_rig_check_names_missing_files(tmp_path):
    missing = (tmp_path / "nowhere" / "movie.tif").as_posix()  # forward slashes: valid in TOML, fine on Windows
    proc = subprocess.run([sys.executable, "-m", "rig.app.cli", "check", str(REPO / "hardware_configs" / "replay.toml"),
                           "--set", f'acquisition.replay.path="{missing}"'],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1
    assert f"[acquisition.replay.path]: {missing} does not exist" in proc.stderr


def test_a_hung_process_is_caught_by_missed_heartbeats(tmp_path):
    # Suspending (SIGSTOP; NtSuspendProcess on Windows) freezes the decoder without killing it: only its
    # silence tells the supervisor, which then kills it (a suspended process can still be killed)
    def freeze(session: Path, proc: subprocess.Popen) -> None:
        psutil.Process(spawned_pids(session)["decoder"]).suspend()

    proc, out, err, session = run_rig_until(tmp_path, freeze, "bus.stop_timeout_s=2", frames=30)
    assert proc.returncode == 1, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["failed_process"] == "decoder" and "no heartbeat" in summary["failure"], summary
    safe = read_events(session / "reward" / "events.jsonl", {"safe_state"})
    assert safe and "decoder failed" in safe[0]["reason"]


def test_new_ensembles_reach_decoder_record_and_simulated_mouse_in_a_live_session(tmp_path):
    """set_ensembles during the baseline: the decoder decodes the new cells, calibrates on them, the record
    says so, the console's snapshot shows them and the simulated mouse now drives them (ground truth)."""
    from rig.core.client import CommandClient
    from rig.core.operator import reply_from_json

    new_up, new_down = [10, 11, 12, 13], [14, 15, 16, 17]  # sim.toml's are [0..3] and [4..7]
    proc = subprocess.Popen(rig_cmd(tmp_path, 18, "task.baseline_s=10"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        session = session_dir(tmp_path)
        wait_for(lambda: decisions_so_far(session) > 30, 90, "the baseline to run")
        info = json.loads((session / "session.json").read_text())
        client = CommandClient(info["endpoints"]["command"], timeout_s=2.0)
        reply = reply_from_json(client.request("set_ensembles", issued_by="test", up=new_up, down=new_down))
        assert reply.ok, reply.error

        def snapshot_ensembles():
            snap = reply_from_json(client.request("snapshot")).snapshot
            return snap is not None and snap.ensembles is not None and snap.ensembles.up == new_up and snap

        snap = wait_for(snapshot_ensembles, 10, "the snapshot to show the new ensembles")
        assert snap.ensembles.down == new_down
        client.close()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    events = read_events(session / "decoder" / "events.jsonl")
    assert not [e for e in events if e["kind"] == "command_failed"]
    changed = [e for e in events if e["kind"] == "trial" and e["event"] == "ensembles"]
    assert len(changed) == 1 and changed[0]["up"] == new_up and changed[0]["down"] == new_down
    calibration = json.loads((session / "decoder" / "calibration.json").read_text())
    assert (calibration["up"], calibration["down"]) == (new_up, new_down)
    truth = np.load(session / "acquisition" / "sim_truth" / "ground_truth.npz")
    assert truth["up"].tolist() == new_up and truth["down"].tolist() == new_down
