"""OS stop requests (rig.core.platform_signals) and the portability plumbing of the test suite.

The Windows branch runs here on any OS: the signal module and kernel32 are injected fakes, and the console
handler is the real ctypes callback the module registers, called the way Windows would call it.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import pytest

from rig.core import platform_signals as ps
from tests import conftest
from tests.conftest import wait_for


class PosixSignalModule:
    """The part of :mod:`signal` install_stop_handlers uses, as on POSIX (no SIGBREAK)."""

    SIGINT = 2
    SIGTERM = 15

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {2: "python-default-int", 15: "default"}

    def signal(self, signum: int, handler: Any) -> Any:
        previous, self.handlers[signum] = self.handlers[signum], handler
        return previous


class FakeSignalModule(PosixSignalModule):
    """As on Windows: SIGBREAK too."""

    SIGBREAK = 21

    def __init__(self) -> None:
        self.handlers = {2: "python-default-int", 15: "default", 21: "default"}


class FakeKernel32:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.calls: list[tuple[Any, bool]] = []

    def SetConsoleCtrlHandler(self, routine: Any, add: bool) -> int:  # noqa: N802 - the Win32 name
        self.calls.append((routine, add))
        return 1 if self.accept else 0

    def GetLastError(self) -> int:  # noqa: N802 - the Win32 name
        return 87


class Untouchable:
    """A kernel32 that fails the test if anything outside Windows reaches for it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"kernel32.{name} used off Windows")


def test_every_stop_signal_reaches_the_callback_by_name_and_restore_puts_the_old_handlers_back():
    seen: list[str] = []
    names = [n for n in ps.STOP_SIGNALS if hasattr(signal, n)]
    before = {n: signal.getsignal(getattr(signal, n)) for n in names}
    # the real signal module; the console part (Windows) has its own tests below, with fakes
    handlers = ps.install_stop_handlers(seen.append, platform="linux", kernel32=Untouchable())
    try:
        for name in names:
            signal.raise_signal(getattr(signal, name))  # runs the Python handler before it returns
    finally:
        handlers.restore()
    assert seen == names
    assert {n: signal.getsignal(getattr(signal, n)) for n in names} == before
    assert [ps.describe(n) for n in seen][:2] == ["Ctrl-C", "SIGTERM"]


def test_off_windows_only_the_signals_are_installed():
    sig = PosixSignalModule()
    handlers = ps.install_stop_handlers(lambda reason: None, signal_module=sig, platform="linux",
                                        kernel32=Untouchable())
    assert sorted(sig.handlers) == [2, 15] and all(callable(h) for h in sig.handlers.values())  # no SIGBREAK
    assert handlers.console_routine is None  # and no console handler


def test_windows_console_close_requests_the_stop_and_holds_the_process_until_finished():
    seen: list[str] = []
    sig, kernel32 = FakeSignalModule(), FakeKernel32()
    handlers = ps.install_stop_handlers(seen.append, signal_module=sig, platform="win32", kernel32=kernel32)
    assert {s: callable(h) for s, h in sig.handlers.items()} == {2: True, 15: True, 21: True}
    [(routine, added)] = kernel32.calls
    assert added is True and routine is handlers.console_routine

    sig.handlers[21](21, None)  # Ctrl-Break, as Python's console handler delivers it
    assert seen == ["SIGBREAK"]
    # Ctrl-C and Ctrl-Break events are passed on to Python's handler (which makes them signals)
    assert routine(0) == 0 and routine(1) == 0 and seen == ["SIGBREAK"]

    result: list[int] = []
    closing = threading.Thread(target=lambda: result.append(routine(ps.CTRL_CLOSE_EVENT)))
    closing.start()
    wait_for(lambda: "CTRL_CLOSE_EVENT" in seen, 5, "the close event to request the stop")
    assert closing.is_alive() and not result  # Windows would kill us as soon as it returns: it waits
    handlers.finished()
    closing.join(5)
    assert result == [1]
    assert ps.describe("CTRL_CLOSE_EVENT") == "console window closed" and ps.is_stop_reason("CTRL_CLOSE_EVENT")

    handlers.restore()
    assert sig.handlers == {2: "python-default-int", 15: "default", 21: "default"}
    assert kernel32.calls[-1] == (routine, False)


def test_windows_logoff_and_shutdown_wait_at_most_close_wait_s():
    seen: list[str] = []
    handlers = ps.install_stop_handlers(seen.append, signal_module=FakeSignalModule(), platform="win32",
                                        kernel32=FakeKernel32(), close_wait_s=0.05)
    # nobody calls finished(): each returns once close_wait_s is over, before Windows' own deadline
    assert handlers.console_routine(ps.CTRL_LOGOFF_EVENT) == 1
    assert handlers.console_routine(ps.CTRL_SHUTDOWN_EVENT) == 1
    assert seen == ["CTRL_LOGOFF_EVENT", "CTRL_SHUTDOWN_EVENT"]
    assert ps.CLOSE_WAIT_S < 5.0  # Windows ends the process ~5 s after the event
    handlers.restore()


def test_a_refused_console_handler_is_an_error_and_leaves_no_handler_behind():
    sig = FakeSignalModule()
    with pytest.raises(OSError, match="SetConsoleCtrlHandler refused the stop handler \\(error 87\\)"):
        ps.install_stop_handlers(lambda reason: None, signal_module=sig, platform="win32",
                                 kernel32=FakeKernel32(accept=False))
    assert sig.handlers == {2: "python-default-int", 15: "default", 21: "default"}


class FakeItem:
    def __init__(self, marker: Any) -> None:
        self.marker = marker
        self.added: list[Any] = []

    def get_closest_marker(self, name: str) -> Any:
        return self.marker if name == "posix_only" else None

    def add_marker(self, marker: Any) -> None:
        self.added.append(marker)


def test_posix_only_tests_are_skipped_on_windows_with_their_reason(monkeypatch):
    marked = FakeItem(pytest.mark.posix_only(reason="pseudo-terminals are POSIX").mark)
    unmarked = FakeItem(None)
    monkeypatch.setattr(sys, "platform", "linux")
    conftest.pytest_collection_modifyitems(None, [marked, unmarked])
    assert marked.added == [] and unmarked.added == []  # not on this (or any non-Windows) platform
    monkeypatch.setattr(sys, "platform", "win32")
    conftest.pytest_collection_modifyitems(None, [marked, unmarked])
    [skip] = marked.added
    assert skip.mark.name == "skip" and skip.mark.kwargs["reason"] == "POSIX only: pseudo-terminals are POSIX"
    assert unmarked.added == []
