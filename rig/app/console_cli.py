"""``rig console``: open the operator console on a rig that is already running (here or elsewhere), or
review a finished session (``rig console SESSION_FOLDER``).

Arguments are checked here, before any window opens: a ``--connect`` that is not ``tcp://HOST:PORT`` is
refused with one line on stderr (exit 2) instead of failing later inside the window.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gui.config import GuiConfig
from rig.core.auth import CurveKeys, load_client_keys
from rig.core.platform_signals import install_stop_handlers

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


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is ``tcp://HOST:PORT``; raises ValueError with a one-line message otherwise."""
    expected = "expected tcp://HOST:PORT, e.g. tcp://rig-pc:5600 (session.json: endpoints.command)"
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:  # urlsplit refuses a port that is not a number or out of range
        raise ValueError(f"--connect {endpoint!r}: {exc}; {expected}") from exc
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        hint = f" (did you mean tcp://{endpoint}?)" if "://" not in endpoint else ""
        raise ValueError(f"--connect {endpoint!r}: {expected}{hint}")
    if port == 0:
        raise ValueError(f"--connect {endpoint!r}: port 0 is not a port a rig listens on; {expected}")
    return endpoint


def _settings(config_path: str | None) -> tuple[GuiConfig, str]:
    """The [gui] settings and the sessions folder of the rig config, or the defaults without one."""
    if config_path is None:
        return GuiConfig(), "sessions"
    from rig.app.config import load_config  # noqa: PLC0415 - only when a config is given

    cfg = load_config(config_path)
    return cfg.gui, cfg.rig.sessions_dir


def _keys(keys_dir: str | None, config_path: str | None) -> CurveKeys | None:
    """This console's CURVE keys: from ``--keys``, else the rig's own when ``--config`` has ``[bus] keys_dir``."""
    if keys_dir is None and config_path is not None:
        from rig.app.config import load_config  # noqa: PLC0415 - only when a config is given

        keys_dir = load_config(config_path).bus.keys_dir or None
    return load_client_keys(keys_dir) if keys_dir else None


def _display_available() -> bool:
    if os.environ.get("QT_QPA_PLATFORM") or sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_console(endpoint: str, cfg: GuiConfig, keys: CurveKeys | None = None) -> int:
    """Open the window on the rig at ``endpoint`` and run until it is closed (``keys``: for a rig with keys)."""
    from PyQt6 import QtWidgets  # noqa: PLC0415 - keep `rig --help` fast

    from gui.main_window import MainWindow  # noqa: PLC0415
    from gui.session import ConsoleSession, lower_own_priority  # noqa: PLC0415

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0] or "rig-console"])
    if cfg.low_priority:
        lower_own_priority()  # the rig's processes get the CPU first; only the display slows down
    session = ConsoleSession(cfg, endpoint, issued_by=f"console@{socket.gethostname()}", keys=keys)
    window = MainWindow(session, title=f"bci-rig console — {endpoint}")
    window.show()
    try:
        return _exec_until_stopped(app)
    finally:
        session.close()


def run_review(folder: str) -> int:
    """Open a finished session for review (read-only) and run until the window is closed."""
    from PyQt6 import QtWidgets  # noqa: PLC0415 - keep `rig --help` fast

    from gui.review import ReviewError, load_review  # noqa: PLC0415
    from gui.review_window import ReviewWindow  # noqa: PLC0415

    try:
        review = load_review(folder)
    except ReviewError as exc:
        print(f"rig console: {exc}", file=sys.stderr)
        return 2
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0] or "rig-console"])
    window = ReviewWindow(review)
    window.show()
    return _exec_until_stopped(app)


def run_link_editor(paths: list[str], bci_plane: int | None) -> int:
    """The link editor on a session folder, a suite2p folder of planes, or one folder per plane; until closed."""
    from PyQt6 import QtWidgets  # noqa: PLC0415 - keep `rig --help` fast

    from gui.link_editor import open_link_editor  # noqa: PLC0415
    from gui.link_set import LinkSetError  # noqa: PLC0415

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0] or "rig-console"])
    try:
        window = open_link_editor(paths, bci_plane)
    except LinkSetError as exc:
        print(f"rig console --link: {exc}", file=sys.stderr)
        return 2
    window.resize(1100, 600)
    window.show()
    return _exec_until_stopped(app)


def _exec_until_stopped(app: Any) -> int:
    """Run the Qt event loop until the window closes or the OS asks the console to stop (Ctrl-C, SIGTERM,
    Ctrl-Break, the console window closing). The stop request only sets a flag (on Windows it arrives on
    another thread); a timer in the GUI thread, which also lets Python run its signal handlers while Qt
    waits, turns it into a quit."""
    from PyQt6 import QtCore  # noqa: PLC0415

    stop = threading.Event()
    handlers = install_stop_handlers(lambda reason: stop.set())
    wake = QtCore.QTimer()
    wake.timeout.connect(lambda: app.quit() if stop.is_set() else None)
    wake.start(200)
    try:
        return int(app.exec())
    finally:
        wake.stop()
        handlers.finished()
        handlers.restore()


def _cmd_console(args: argparse.Namespace) -> int:
    try:
        if args.session_folder is not None and (args.connect or args.session):
            raise ValueError("give a SESSION_FOLDER to review, or --connect/--session to attach to a running rig, "
                             "not both")
        if getattr(args, "link", None) and (args.session_folder is not None or args.connect or args.session):
            raise ValueError("--link opens the link editor on its own folders: give them after --link, without "
                             "SESSION_FOLDER, --connect or --session")
        if args.connect is not None:
            check_endpoint(args.connect)
    except ValueError as exc:
        print(f"rig console: {exc}", file=sys.stderr)
        return 2
    if not _display_available():
        print("rig console: no display found (set DISPLAY, use ssh -X, or QT_QPA_PLATFORM=offscreen)",
              file=sys.stderr)
        return 2
    if getattr(args, "align", None) is not None:  # before a session: yesterday over today (rig align's folder)
        from gui.align_view import AlignFolderError, open_align_window  # noqa: PLC0415
        from rig.offline.align import config_pixel_size  # noqa: PLC0415

        try:
            return open_align_window(args.align, config_pixel_size(args.config or ""))
        except (AlignFolderError, ValueError, OSError) as exc:
            print(f"rig console: {exc}", file=sys.stderr)
            return 2
    if getattr(args, "link", None):  # dendrite -> soma links of a session's or a config's plane folders
        return run_link_editor(args.link, args.bci_plane)
    if args.pick is not None:  # before a session: choose ROIs and ensembles from a detection (rig detect)
        from rig.offline.rank_cli import run_picker  # noqa: PLC0415

        return run_picker(args.pick, args.config)
    if args.session_folder is not None:
        print(f"[rig console] reviewing {args.session_folder}", file=sys.stderr, flush=True)
        return run_review(args.session_folder)
    try:
        cfg, sessions_dir = _settings(args.config)
        keys = _keys(args.keys, args.config)
        endpoint = args.connect or find_command_endpoint(args.session, args.sessions_dir or sessions_dir)
    except (LookupError, ValueError) as exc:  # KeysProblem and ConfigError are ValueErrors
        print(f"rig console: {exc}", file=sys.stderr)
        return 2
    print(f"[rig console] attaching to {endpoint}" + (f" as {keys.name!r}" if keys else ""), file=sys.stderr,
          flush=True)
    return run_console(endpoint, cfg, keys)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    console = subparsers.add_parser(
        "console", help="open the console on a running rig (also from another PC), or review a finished session",
        description="Attach the console to a rig that is already running. Without --connect, the command "
                    "endpoint is read from the newest unfinished session.json under --sessions-dir. From "
                    "another machine give --connect tcp://RIG-PC:PORT (the rig's bus.host must then be an "
                    "address that machine can reach, e.g. 0.0.0.0). Closing the console never stops the rig. "
                    "With a SESSION_FOLDER it opens that finished session for review instead: the field of view "
                    "and ROIs, and any ROI's F, dF/F and the trial events (read-only, no rig needed).")
    console.add_argument("session_folder", nargs="?", metavar="SESSION_FOLDER", default=None,
                         help="a session folder to review (read-only) instead of attaching to a running rig")
    console.add_argument("--connect", metavar="tcp://HOST:PORT", default=None,
                         help="the rig's command endpoint (session.json: endpoints.command)")
    console.add_argument("--keys", metavar="DIR", default=None,
                         help="this console's keys, for a rig with keys: the folder `rig keys add-console` made "
                              "(default: the rig's own, when --config sets [bus] keys_dir)")
    console.add_argument("--session", metavar="DIR", default=None, help="read the endpoint from DIR/session.json")
    console.add_argument("--sessions-dir", metavar="DIR", default=None,
                         help="where to look for running sessions (default: [rig] sessions_dir of --config, "
                              "else ./sessions)")
    console.add_argument("--config", metavar="TOML", default=None,
                         help="the rig config: its [gui] settings (refresh rate, history...) and sessions_dir")
    console.add_argument("--align", metavar="DIR", default=None,
                         help="before a session: yesterday's field over today's (blend / flicker) and the stage move "
                              "in um (pixel size from --config), from the folder rig align wrote")
    console.add_argument("--pick", metavar="SUITE2P_DIR", default=None,
                         help="before a session: open the ROI picker on rig detect's folder (or a session folder "
                              "with detect/): rank cells, pick up/down, draw ROIs; saved into --config")
    console.add_argument("--link", metavar="SESSION_OR_FOLDERS", nargs="+", default=None,
                         help="several imaging planes: draw which dendrite belongs to which soma, on a finished "
                              "session (saved in its acquisition/planes/planeK/rois, what rig dendrites reads), a "
                              "suite2p folder holding plane0, plane1... or one plane folder per plane (saved there, "
                              "for the next session); docs/PLANES.md")
    console.add_argument("--bci-plane", type=int, default=None, metavar="K",
                         help="with --link: the plane whose somata drive the BCI (default: the session's, else 0)")
    console.set_defaults(func=_cmd_console)
