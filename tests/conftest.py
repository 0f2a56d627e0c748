"""Shared fixtures. Qt runs offscreen; every wait is a condition with a timeout, never a fixed sleep.

Portability: tests that can only run on POSIX carry ``@pytest.mark.posix_only(reason=...)`` and are skipped
on Windows with that reason; a Ctrl-C to a child the test started goes through :func:`send_ctrl_c`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parent.parent

#: Popen keyword arguments for a child the test will Ctrl-C. Windows delivers a console control event only
#: to a whole process group, and only Ctrl-Break to a group other than the caller's: the child gets its own.
CTRL_C_POPEN: dict[str, Any] = (
    {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if sys.platform == "win32" else {}
)
#: The stop reason the rig records for :func:`send_ctrl_c` (rig.core.platform_signals.STOP_REASONS).
CTRL_C_REASON = "Ctrl-Break" if sys.platform == "win32" else "Ctrl-C"


def send_ctrl_c(proc: subprocess.Popen) -> None:
    """The operator's Ctrl-C to a child started with :data:`CTRL_C_POPEN` (Ctrl-Break to its group on Windows)."""
    if sys.platform == "win32":
        proc.send_signal(signal.CTRL_BREAK_EVENT)
    else:
        proc.send_signal(signal.SIGINT)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``posix_only`` tests on Windows, saying why (the marker's ``reason``)."""
    if sys.platform != "win32":
        return
    for item in items:
        marker = item.get_closest_marker("posix_only")
        if marker is not None:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "needs POSIX")
            item.add_marker(pytest.mark.skip(reason=f"POSIX only: {why}"))


def close_child(proc, sub, pub, ctx) -> None:
    """A test's child process killed if still alive, then its subscriber, publisher and context closed."""
    if proc.is_alive():
        proc.kill()
    proc.join(5)
    sub.close()
    pub.close()
    ctx.term()


def prewarm_between_frames(pipeline: Any) -> None:
    """FramePipeline.prewarm as the pacer calls it, made deterministic for a test: the last frame's hand-off may
    leave the extraction worker finishing a shift nobody took (a rehearsal asked then is refused, as in a session
    it would be), so wait for it first; then wait for the rehearsal to finish, so the next frame finds it idle."""
    worker = pipeline._extract_ahead
    assert worker is not None, "the pipeline has no extraction worker"
    wait_for(lambda: worker.idle, 5, "the last frame's work done")
    pipeline.prewarm()
    wait_for(lambda: worker.idle, 5, "the rehearsal done")


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "condition",
             poll_s: float = 0.01) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


@pytest.fixture
def repo() -> Path:
    return REPO
