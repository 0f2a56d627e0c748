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
