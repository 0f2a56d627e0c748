"""Two mistakes that used to end with exit code 0 and "ok": true, run for real (every process, real sockets).

A calibration that fails, and a frame stream on the wrong port: both sessions run to their end and are
saved, say so on stderr while they run, end ``"ok": false`` with the reason in ``problems`` and exit 1.
(The other cases are judged by the same code from files: tests/test_session_problems.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rig.core.bus import free_tcp_port
from tests.conftest import REPO
from tests.test_rig_checks import suite2p_folder

pytestmark = pytest.mark.slow

SMALL = ["acquisition.sim.height_px=96", "acquisition.sim.width_px=96", "acquisition.sim.n_cells=20",
         "task.baseline_s=5", "task.trial_s=1.5", "task.iti_s=0.3", "session.save_frames=false"]


def run_rig(tmp_path: Path, duration: float, *overrides: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    cmd = [sys.executable, "-m", "rig.app.cli", "run", str(REPO / "hardware_configs" / "sim.toml"), "--headless",
           "--duration", str(duration), "--sessions-dir", str(tmp_path / "sessions")]
    for item in SMALL + list(overrides):
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_failed_calibration_is_said_at_once_and_fails_the_session(tmp_path):
    # a cursor can never be this spread: calibration refuses the baseline as flat when it ends, 5 s in
    proc, summary = run_rig(tmp_path, 8, "decoder.calibration.min_cursor_std=1e9")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "[rig] WARNING supervisor: calibration_failed: the calibration failed: the baseline cursor is flat" \
        in proc.stderr
    assert summary["ok"] is False and summary["trials"] == 0 and summary["frames"] > 100
    assert summary["problems"][0].startswith("the calibration failed and the session was never calibrated")
    assert f"[rig] PROBLEM: {summary['problems'][0]}" in proc.stderr
    session = Path(summary["session"])  # saved in full all the same
    assert json.loads((session / "summary.json").read_text(encoding="utf-8")) == summary
    assert json.loads((session / "session.json").read_text(encoding="utf-8"))["status"] == "failed"
    assert (session / "decoder" / "decisions.rec").stat().st_size > 0


def test_a_stream_on_the_wrong_port_is_said_at_once_and_fails_the_session(tmp_path):
    rois = suite2p_folder(tmp_path / "plane0", size=(48, 48))
    nobody = f"tcp://127.0.0.1:{free_tcp_port()}"  # the scope publishes elsewhere: nothing ever arrives
    proc, summary = run_rig(tmp_path, 11, "acquisition.source=zmq_stream",
                            f'acquisition.zmq_stream.endpoint="{nobody}"',
                            f'acquisition.rois.suite2p_dir="{rois.as_posix()}"', "decoder.up=[0]", "decoder.down=[1]",
                            "session.mouse_id=M1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "[rig] WARNING supervisor: no_frames: no frame from the scope 10 s after the start" in proc.stderr
    assert nobody in proc.stderr
    assert summary["ok"] is False and summary["frames_acquired"] == 0
    assert summary["problems"][0].startswith("no frame was acquired") and nobody in summary["problems"][0]
    assert (Path(summary["session"]) / "summary.json").exists()
