"""The console on a real running simulated rig: every process, real sockets, real serial stack.

The supervisor runs in a child process with the console enabled (its own ConsoleProcess child, on
the offscreen Qt platform), and the test attaches a second console the way ``rig console --connect``
does. That console drives the protocol and watches the effect on the bus; then the rig's own console
process is killed, and the session must go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from PyQt6 import QtCore

from gui.config import GuiConfig
from gui.main_window import MainWindow
from gui.session import ConsoleSession
from rig.core.codes import Mode
from tests.conftest import REPO, wait_for

LEFT = QtCore.Qt.MouseButton.LeftButton
WAIT_MS = 30_000

#: sim.toml, made short: a 6 s baseline (12 trial lengths) calibrates on 0.5 s trials.
OVERRIDES = ["task.baseline_s=6.0", "task.trial_s=0.5", "task.iti_s=0.2", "task.hold_s=0.2", "task.timeout_s=0.2",
             "task.auto_protocol=true", "session.save_frames=false", "session.mouse_id=from-config",
             "session.auto_start=false"]

RUN_RIG = """
import json, sys
from rig.app.supervisor import Supervisor
config, duration, root, overrides = sys.argv[1], float(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
print(json.dumps(Supervisor(config, headless=False, duration_s=duration, sessions_root=root,
                            overrides=overrides).run()))
"""


@pytest.fixture
def running_rig(tmp_path):
    config = REPO / "hardware_configs" / "sim.toml"
    # Headless=False starts the rig's own console (offscreen); DISPLAY only satisfies the supervisor's check.
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", DISPLAY=os.environ.get("DISPLAY", ":0"))
    log = (tmp_path / "rig.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", RUN_RIG, str(config), "90", str(tmp_path / "sessions"),
                             json.dumps(OVERRIDES)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log)

    def session_json() -> Path | None:
        assert proc.poll() is None, f"the rig exited early: {(tmp_path / 'rig.log').read_text()[-3000:]}"
        found = list((tmp_path / "sessions").glob("*/session.json"))
        return found[0] if found else None

    path = wait_for(session_json, 60, "the rig's session.json")
    endpoint = json.loads(path.read_text(encoding="utf-8"))["endpoints"]["command"]
    yield proc, endpoint, path.parent
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    log.close()


def test_console_drives_a_running_simulated_rig(qtbot, running_rig, tmp_path):
    proc, endpoint, session_dir = running_rig
    window = MainWindow(ConsoleSession(GuiConfig(refresh_hz=20), endpoint))
    qtbot.addWidget(window)
    window.show()
    m, c = window.model, window.controls
    try:
        # Joined: the processes, the decoder's stream and the rig's ROIs.
        qtbot.waitUntil(lambda: len(m.decisions) > 10 and m.mode_code == Mode.IDLE, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: window.fov.rois is not None and window.fov.rois.n == m.n_rois_seen, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: m.processes.get("gui") is not None and m.processes["gui"].state == "running",
                        timeout=WAIT_MS)
        # Metadata, then the baseline; the auto protocol calibrates and starts BCI after it.
        c.mouse_id.setText("BCI-007")
        c.experimenter.setText("test")
        qtbot.mouseClick(c.start_baseline, LEFT)
        qtbot.waitUntil(lambda: m.mode_code == Mode.BASELINE, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: m.mode_code == Mode.BCI, timeout=WAIT_MS)
        assert m.calibration is not None and window.plots.threshold_line.isVisible()
        # Pause and resume: the decoder's mode in the Decision stream follows.
        qtbot.waitUntil(lambda: c.pause.isEnabled(), timeout=WAIT_MS)
        qtbot.mouseClick(c.pause, LEFT)
        qtbot.waitUntil(lambda: m.mode_code == Mode.PAUSED, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: c.resume.isEnabled(), timeout=WAIT_MS)
        qtbot.mouseClick(c.resume, LEFT)
        qtbot.waitUntil(lambda: m.mode_code == Mode.BCI, timeout=WAIT_MS)
        qtbot.mouseClick(c.test_pulse, LEFT)
        qtbot.waitUntil(lambda: c.status.text() == "test_pulse: done", timeout=WAIT_MS)
        # The rig's own console process crashes: the loop goes on and the window says so.
        gui_pid = m.processes["gui"].pid
        assert gui_pid > 0
        psutil.Process(gui_pid).kill()  # SIGKILL; TerminateProcess on Windows
        qtbot.waitUntil(lambda: any(w.source == "gui" for w in m.warnings), timeout=WAIT_MS)
        frame_after_crash = m.decisions.last("frame")
        qtbot.waitUntil(lambda: m.decisions.last("frame") > frame_after_crash + 30, timeout=WAIT_MS)
        assert proc.poll() is None
        # Stop from the console: the session ends cleanly with the metadata saved.
        c.confirm = lambda text: True
        qtbot.mouseClick(c.stop, LEFT)
        out, _ = proc.communicate(timeout=60)
    finally:
        window.close()
        window.session.close()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["ok"], summary
    assert proc.returncode == 0
    saved = json.loads((session_dir / "session.json").read_text(encoding="utf-8"))
    assert saved["metadata"]["mouse_id"] == "BCI-007" and saved["metadata"]["experimenter"] == "test"
