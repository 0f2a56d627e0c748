"""Run a simulated session, attach the operator console under Xvfb, and save a screenshot of it.

    python scripts/console_screenshot.py                       # -> docs/console_screenshot.png
    python scripts/console_screenshot.py --seconds 60 --out /tmp/console.png
    python scripts/console_screenshot.py --size 1280x720 --out /tmp/small.png   # a small rig-PC screen

The rig runs headless in a child process (``rig run CONFIG --headless``: baseline, calibration, then
BCI trials by themselves); the console attaches to it through the command endpoint in the session's
``session.json``, exactly as ``rig console`` does, and the screenshot is grabbed from the X server.
Without a DISPLAY, the script starts its own Xvfb (Debian: ``apt-get install xvfb`` plus Qt's xcb
libraries: ``libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start_xvfb(width: int, height: int) -> tuple[subprocess.Popen, str]:
    """Start Xvfb on a free display number (it reports the number itself through -displayfd)."""
    if shutil.which("Xvfb") is None:
        raise SystemExit("console_screenshot: Xvfb not found (Debian: apt-get install -y xvfb)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if not number:
        proc.kill()
        raise SystemExit(f"console_screenshot: Xvfb did not start: {proc.stderr.read().decode(errors='replace')}")
    return proc, f":{number}"


def wait_for_endpoint(sessions_dir: Path, rig: subprocess.Popen, timeout_s: float) -> tuple[str, Path]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if rig.poll() is not None:
            raise SystemExit(f"console_screenshot: the rig exited early with code {rig.returncode} "
                             f"(see {sessions_dir / 'rig_run.log'})")
        for path in sessions_dir.glob("*/session.json"):
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                continue  # being written (write_json_atomic replaces it whole; a half file is transient)
            endpoint = (info.get("endpoints") or {}).get("command")
            if endpoint:
                return endpoint, path.parent
        time.sleep(0.1)
    raise SystemExit(f"console_screenshot: no session.json with a command endpoint under {sessions_dir}")


def parse_size(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> (1280, 720); a malformed size is refused by argparse with the expected form."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 1280x720")
    return int(width), int(height)


def run_console_and_grab(endpoint: str, config: str, seconds: float, out: Path, view: str,
                         size: tuple[int, int]) -> dict:
    from PyQt6 import QtCore, QtWidgets  # noqa: PLC0415 - after DISPLAY / QT_QPA_PLATFORM are set

    from gui.main_window import MainWindow  # noqa: PLC0415
    from gui.session import ConsoleSession  # noqa: PLC0415
    from rig.app.config import load_config  # noqa: PLC0415

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["console_screenshot"])
    session = ConsoleSession(load_config(config).gui, endpoint, issued_by="console_screenshot")
    window = MainWindow(session, title=f"bci-rig console — {endpoint}")
    window.resize(*size)  # the window's minimum size (gui.main_window.MIN_SIZE) still applies
    {"latest": window.fov.live_radio, "mean": window.fov.mean_radio,
     "reference": window.fov.reference_radio}[view].setChecked(True)
    window.show()
    result: dict = {}

    def grab() -> None:
        window.refresh()
        app.processEvents()
        screen = app.primaryScreen()
        pixmap = screen.grabWindow(window.winId()) if os.environ.get("QT_QPA_PLATFORM") == "xcb" else window.grab()
        out.parent.mkdir(parents=True, exist_ok=True)
        if not pixmap.save(str(out)):
            raise SystemExit(f"console_screenshot: could not write {out}")
        m = session.model
        reader = session.reader
        result.update(trials=m.trials, hits=m.hits, rewards=m.rewards_delivered, calibrated=m.calibration is not None,
                      decisions=m.decisions.total, missed=reader.gaps if reader else None,
                      mode=m.mode_label, refresh_ms=window.refresh_stats(), latency_ms=m.latency_stats(),
                      size=[window.width(), window.height()])
        session.send("stop")
        QtCore.QTimer.singleShot(1500, app.quit)  # let the stop request go out

    QtCore.QTimer.singleShot(int(seconds * 1000), grab)
    app.exec()
    window.close()
    session.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "hardware_configs" / "sim.toml"))
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="session time before the screenshot (baseline + calibration + some trials)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "console_screenshot.png")
    parser.add_argument("--view", choices=("latest", "mean", "reference"), default="mean",
                        help="what the field of view shows in the screenshot")
    parser.add_argument("--size", type=parse_size, default=(1680, 1000), metavar="WIDTHxHEIGHT",
                        help="window size (default 1680x1000; the console fits down to 960x600)")
    parser.add_argument("--platform", choices=("xcb", "offscreen"), default="xcb",
                        help="xcb: a real X server (own Xvfb unless DISPLAY is set); offscreen: no X at all")
    args = parser.parse_args(argv)

    xvfb = None
    if args.platform == "xcb" and not os.environ.get("DISPLAY"):
        xvfb, display = start_xvfb(1920, 1080)
        os.environ["DISPLAY"] = display
    os.environ["QT_QPA_PLATFORM"] = args.platform
    sessions_dir = Path(tempfile.mkdtemp(prefix="console_screenshot_"))
    rig_log = (sessions_dir / "rig_run.log").open("wb")
    rig = subprocess.Popen([sys.executable, "-m", "rig.app.cli", "run", args.config, "--headless",
                            "--duration", str(args.seconds + 60), "--sessions-dir", str(sessions_dir)],
                           cwd=REPO, stdout=rig_log, stderr=subprocess.STDOUT)
    try:
        endpoint, session_dir = wait_for_endpoint(sessions_dir, rig, 120)
        print(f"[console_screenshot] rig session {session_dir}, command endpoint {endpoint}", file=sys.stderr)
        result = run_console_and_grab(endpoint, args.config, args.seconds, args.out, args.view, args.size)
        try:
            rig.wait(60)
        except subprocess.TimeoutExpired:
            rig.terminate()
            rig.wait(10)
        result["rig_exit_code"] = rig.returncode
        result["screenshot"] = str(args.out)
        print(json.dumps(result))
        return 0
    finally:
        if rig.poll() is None:
            rig.terminate()
            rig.wait(10)
        rig_log.close()
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)


if __name__ == "__main__":
    sys.exit(main())
