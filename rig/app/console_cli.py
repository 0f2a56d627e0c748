"""``rig console``: open the operator console on a rig that is already running (here or elsewhere)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from pathlib import Path

from gui.config import GuiConfig

FINISHED = {"ok", "failed"}


def find_command_endpoint(session_dir: str | None, sessions_root: str) -> str:
    """The command endpoint stored in a session's ``session.json`` (the newest unfinished one by default)."""
    if session_dir is not None:
        candidates = [Path(session_dir) / "session.json"]
    else:
        root = Path(sessions_root)
        candidates = sorted(root.glob("*/session.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        if not candidates:
            raise LookupError(f"no session folders under {root.resolve()}: give --connect tcp://HOST:PORT "
                              "or --session DIR")
    for path in candidates:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            if session_dir is not None:
                raise LookupError(f"{path}: cannot read it ({exc})") from exc
            continue
        if session_dir is None and info.get("status") in FINISHED:
            continue
        endpoint = (info.get("endpoints") or {}).get("command")
        if not endpoint:
            raise LookupError(f"{path}: has no endpoints.command")
        return str(endpoint)
    raise LookupError(f"no running session under {Path(sessions_root).resolve()} (all have finished): "
                      "give --connect tcp://HOST:PORT")


def _settings(config_path: str | None) -> tuple[GuiConfig, str]:
    """The [gui] settings and the sessions folder of the rig config, or the defaults without one."""
    if config_path is None:
        return GuiConfig(), "sessions"
    from rig.app.config import load_config  # noqa: PLC0415 - only when a config is given

    cfg = load_config(config_path)
    return cfg.gui, cfg.rig.sessions_dir


def _display_available() -> bool:
    if os.environ.get("QT_QPA_PLATFORM") or sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_console(endpoint: str, cfg: GuiConfig) -> int:
    """Open the window on the rig at ``endpoint`` and run until it is closed."""
    from PyQt6 import QtCore, QtWidgets  # noqa: PLC0415 - keep `rig --help` fast

    from gui.main_window import MainWindow  # noqa: PLC0415
    from gui.session import ConsoleSession, lower_own_priority  # noqa: PLC0415

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0] or "rig-console"])
    if cfg.low_priority:
        lower_own_priority()  # the rig's processes get the CPU first; only the display slows down
    session = ConsoleSession(cfg, endpoint, issued_by=f"console@{socket.gethostname()}")
    window = MainWindow(session, title=f"bci-rig console — {endpoint}")
    window.show()
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    wake = QtCore.QTimer()  # lets the Python interpreter run the SIGINT handler while Qt waits
    wake.timeout.connect(lambda: None)
    wake.start(200)
    try:
        return int(app.exec())
    finally:
        session.close()


def _cmd_console(args: argparse.Namespace) -> int:
    if not _display_available():
        print("rig console: no display found (set DISPLAY, use ssh -X, or QT_QPA_PLATFORM=offscreen)",
              file=sys.stderr)
        return 2
    try:
        cfg, sessions_dir = _settings(args.config)
        endpoint = args.connect or find_command_endpoint(args.session, args.sessions_dir or sessions_dir)
    except (LookupError, ValueError) as exc:
        print(f"rig console: {exc}", file=sys.stderr)
        return 2
    print(f"[rig console] attaching to {endpoint}", file=sys.stderr, flush=True)
    return run_console(endpoint, cfg)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    console = subparsers.add_parser(
        "console", help="open the operator console on a running rig (also from another machine)",
        description="Attach the console to a rig that is already running. Without --connect, the command "
                    "endpoint is read from the newest unfinished session.json under --sessions-dir. From "
                    "another machine give --connect tcp://RIG-PC:PORT (the rig's bus.host must then be an "
                    "address that machine can reach, e.g. 0.0.0.0). Closing the console never stops the rig.")
    console.add_argument("--connect", metavar="tcp://HOST:PORT", default=None,
                         help="the rig's command endpoint (session.json: endpoints.command)")
    console.add_argument("--session", metavar="DIR", default=None, help="read the endpoint from DIR/session.json")
    console.add_argument("--sessions-dir", metavar="DIR", default=None,
                         help="where to look for running sessions (default: [rig] sessions_dir of --config, "
                              "else ./sessions)")
    console.add_argument("--config", metavar="TOML", default=None,
                         help="the rig config: its [gui] settings (refresh rate, history...) and sessions_dir")
    console.set_defaults(func=_cmd_console)
