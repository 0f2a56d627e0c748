"""`rig console`: finding a running rig's command endpoint, and the subcommand's arguments."""

from __future__ import annotations

import argparse
import json

import pytest

from rig.app.console_cli import find_command_endpoint, register_cli


def write_session(root, name: str, status: str, port: int) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "session.json").write_text(json.dumps(
        {"status": status, "endpoints": {"command": f"tcp://127.0.0.1:{port}"}}), encoding="utf-8")


def test_the_newest_unfinished_session_is_found(tmp_path):
    write_session(tmp_path, "20250101-090000_m1_rig", "running", 5001)
    write_session(tmp_path, "20250101-100000_m1_rig", "ok", 5002)  # finished: never attached to
    assert find_command_endpoint(None, str(tmp_path)) == "tcp://127.0.0.1:5001"
    assert find_command_endpoint(str(tmp_path / "20250101-100000_m1_rig"), "unused") == "tcp://127.0.0.1:5002"


def test_no_running_session_is_a_clear_error(tmp_path):
    with pytest.raises(LookupError, match="no session folders"):
        find_command_endpoint(None, str(tmp_path))
    write_session(tmp_path, "s1", "failed", 5003)
    with pytest.raises(LookupError, match="all have finished"):
        find_command_endpoint(None, str(tmp_path))
    with pytest.raises(LookupError, match="cannot read"):
        find_command_endpoint(str(tmp_path / "nope"), "unused")


def test_console_subcommand_arguments():
    parser = argparse.ArgumentParser(prog="rig")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["console", "--connect", "tcp://rig-pc:5600"])
    assert args.connect == "tcp://rig-pc:5600" and args.sessions_dir is None and callable(args.func)


def test_rig_console_attaches_to_a_running_rig_and_quits_on_ctrl_c(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import CTRL_C_POPEN, REPO, send_ctrl_c, wait_for
    from tests.gui_fakes import FakeRig

    run_cli = ("import argparse, sys\n"
               "from rig.app.console_cli import register_cli\np = argparse.ArgumentParser(prog='rig')\n"
               "register_cli(p.add_subparsers())\nargs = p.parse_args(sys.argv[1:])\nsys.exit(args.func(args))\n")
    with FakeRig(tmp_path / "s") as rig:
        rig.start_stream()
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
        proc = subprocess.Popen([sys.executable, "-c", run_cli, "console", "--connect", rig.endpoints["command"]],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **CTRL_C_POPEN)
        try:
            wait_for(lambda: rig.snapshots_served >= 1 or proc.poll() is not None, 30, "the console's snapshots")
            assert proc.poll() is None, proc.communicate()[1].decode()
            send_ctrl_c(proc)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, err.decode()
        assert f"attaching to {rig.endpoints['command']}" in err.decode()
        assert rig.command_names() == []  # attaching and quitting send no operator command


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rig")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("endpoint", ["localhost:5601", "tcp://localhost", "tcp://:5601", "http://rig:5601",
                                      "tcp://rig:5601/x", "tcp://rig:99999", "tcp://rig:0"])
def test_connect_must_be_tcp_host_port(capsys, endpoint):
    assert run_cli(["console", "--connect", endpoint]) == 2  # refused before any window or socket exists
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "expected tcp://HOST:PORT" in err and endpoint in err


def test_connect_without_a_scheme_suggests_one(capsys):
    assert run_cli(["console", "--connect", "localhost:5601"]) == 2
    assert "did you mean tcp://localhost:5601?" in capsys.readouterr().err


def test_check_endpoint_accepts_tcp_host_port():
    from rig.app.console_cli import check_endpoint

    for endpoint in ("tcp://rig-pc:5600", "tcp://127.0.0.1:5601", "tcp://[::1]:5601"):
        assert check_endpoint(endpoint) == endpoint


def test_a_review_and_a_live_rig_at_once_are_refused(capsys, tmp_path):
    assert run_cli(["console", str(tmp_path), "--connect", "tcp://rig:5600"]) == 2
    assert "not both" in capsys.readouterr().err


def test_reviewing_a_folder_that_is_no_session_is_one_line(capsys, tmp_path):
    assert run_cli(["console", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rig console:") and "not a session folder" in err[-1]


def close_when(qtbot, window_type, ready) -> list:
    """Close the first visible ``window_type`` window once ``ready(window)``; returns what was seen then."""
    from PyQt6 import QtCore, QtWidgets

    seen: list = []

    def poke() -> None:
        for widget in QtWidgets.QApplication.topLevelWidgets():
            if isinstance(widget, window_type) and widget.isVisible() and ready(widget):
                seen.append(widget)
                widget.close()

    timer = QtCore.QTimer()
    timer.timeout.connect(poke)
    timer.start(50)
    seen.append(timer)  # kept alive by the caller's reference
    return seen


def hang_guard(seconds: float):
    """Ends a hung ``app.exec()`` with code 99 (a clean exit is 0); stop it when done so no later test sees it."""
    from PyQt6 import QtCore, QtWidgets

    guard = QtCore.QTimer()
    guard.setSingleShot(True)
    guard.timeout.connect(lambda: QtWidgets.QApplication.instance().exit(99))
    guard.start(int(seconds * 1000))
    return guard


def test_rig_console_exits_0_when_the_window_of_an_ended_rig_is_closed(qtbot, tmp_path):
    from gui.config import GuiConfig
    from gui.main_window import MainWindow
    from rig.app.console_cli import run_console
    from tests.gui_fakes import FakeRig

    rig = FakeRig(tmp_path / "s")
    steps: list[str] = []

    def ready(window: MainWindow) -> bool:
        """Drive the rig to its end, then close the window once the console knows the rig is gone."""
        if window.model.snapshots and "ended" not in steps:
            steps.append("ended")
            rig.end_session()
        if window.session.ended and "closed" not in steps:
            steps.append("closed")
            rig.close()
        if window.session.rig_gone:
            window.refresh()
            steps.append(window.banner.text())
            return True
        return False

    seen = close_when(qtbot, MainWindow, ready)
    guard = hang_guard(60)
    cfg = GuiConfig(refresh_hz=20, command_timeout_s=0.2, command_retries=1, snapshot_interval_s=0.2,
                    low_priority=False)
    try:
        code = run_console(rig.endpoints["command"], cfg)
    finally:
        guard.stop()
        seen[0].stop()
        rig.close()
    assert code == 0, "the console did not exit when its window was closed"
    assert len(seen) == 2, "the window was never closed"
    assert steps[:2] == ["ended", "closed"] and "SESSION ENDED" in steps[-1] and "unreachable" not in steps[-1]


def test_rig_console_session_folder_opens_a_review_and_exits_0(qtbot, tmp_path):
    from gui.review_window import ReviewWindow
    from tests.gui_fakes import write_finished_session

    folder = write_finished_session(tmp_path / "20250601-100000_m42_rig1")
    seen = close_when(qtbot, ReviewWindow, lambda window: window.plots.roi == 0)
    guard = hang_guard(60)
    try:
        code = run_cli(["console", str(folder)])
    finally:
        guard.stop()
        seen[0].stop()
    assert code == 0 and len(seen) == 2
    window = seen[1]
    assert window.review.folder == folder and window.fov.rois.n == 9
