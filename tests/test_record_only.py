"""Day one on a real scope: `rig run --record-only` records a baseline without ROIs, and `rig detect` reads it.

One short real session (every process it plans, real sockets, the simulated scope), then detect's input
reader on its folder (the one full suite2p run is tests/test_detect_day_one.py). How a recording is judged
(no trial is no problem, no frame still is) is checked from files, in milliseconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from rig.app.config import load_config
from rig.app.processes import plan
from rig.core.store import read_records
from rig.offline.detect import open_baseline, prepare
from rig.offline.problems import session_problems
from rig.offline.summary import summarize_session
from tests.conftest import REPO
from tests.test_session_problems import SIM, make_session

SMALL = ["acquisition.sim.height_px=96", "acquisition.sim.width_px=80", "acquisition.sim.n_cells=20"]


def test_a_recording_keeps_frames_only_and_rig_detect_reads_it(tmp_path):
    cmd = [sys.executable, "-m", "rig.app.cli", "run", str(REPO / "hardware_configs" / "sim.toml"), "--headless",
           "--record-only", "--duration", "3", "--sessions-dir", str(tmp_path / "sessions")]
    for item in SMALL:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "recording" and summary["ok"] is True and summary["problems"] == []
    assert summary["frames_acquired"] > 30 and summary["frames"] == summary["frames_acquired"]
    assert summary["movie_frames_lost"] == 0 and summary["trials"] == 0
    assert "0 ROIs, 96x80 frames" in proc.stderr and "recording ok" in proc.stderr
    session = Path(summary["session"])
    assert not (session / "decoder").exists() and not (session / "reward").exists()  # never started
    assert not (session / "acquisition" / "rois").exists()  # no ROI set was loaded
    rows = read_records(session / "acquisition" / "frames.rec")
    assert len(rows) == summary["frames_acquired"] and rows["F"].shape == (len(rows), 0)

    base = open_baseline(session)  # rig detect's reader: the session's own movie, rate and gap record
    assert base.frames.shape == (len(rows), 96, 80) and base.fs == 30.0 and base.gaps == frozenset()
    assert base.default_out == session / "detect"
    job = json.loads(prepare(base, tmp_path / "det", 30.0).read_text(encoding="utf-8"))
    assert job["nframes"] == len(rows) and job["blank_frames"] == 0
    written = np.fromfile(Path(job["plane"]) / "data.bin", np.int16).reshape(len(rows), 96, 80)
    np.testing.assert_array_equal(written, np.asarray(base.frames[:]).astype(np.int16))
    assert written.std() > 0  # real frames, not zeros


def test_a_recording_plans_no_closed_loop_process_and_needs_no_rois():
    cfg = load_config(SIM, ["session.record_only=true", "reward.port=emulator", "feedback.enabled=true"])
    assert [e.name for e in plan(cfg, headless=False)] == ["acquisition"]
    assert "decoder" in [e.name for e in plan(load_config(SIM), headless=True)]


def test_a_recording_is_judged_on_its_frames_only(tmp_path):
    recorded = make_session(tmp_path / "rec", flags=[0] * 300, overrides=("session.record_only=true",))
    summary = summarize_session(recorded)
    assert summary["kind"] == "recording" and summary["frames_dropped"] == 0
    assert session_problems(recorded, summary, "duration of 10 s reached") == []  # no trial: not a problem
    empty = make_session(tmp_path / "empty", flags=None, overrides=("session.record_only=true",))
    [problem] = session_problems(empty, summarize_session(empty), "duration of 10 s reached")
    assert problem.startswith("no frame was acquired")
    closed_loop = make_session(tmp_path / "bci", flags=[0] * 300)
    assert summarize_session(closed_loop)["kind"] == "bci"
    assert session_problems(closed_loop, summarize_session(closed_loop), "duration of 10 s reached")[0].startswith(
        "no trial ran")
