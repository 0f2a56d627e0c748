"""Stop requests from the operating system, handled the same way on every platform.

Ctrl-C (SIGINT), SIGTERM (``kill``, systemd, a job scheduler), Ctrl-Break (SIGBREAK, Windows only) and, on
Windows, the console window closing, the user logging off and the system shutting down all mean one thing to a
rig process: stop cleanly and keep the data. :func:`install_stop_handlers` routes every one of them to a single
callback, so :class:`rig.core.process.RigProcess` and the supervisor have one code path for all of them.

Windows gives a process about 5 s after ``CTRL_CLOSE_EVENT`` (logoff and shutdown: similar) and kills it as soon
as the console handler returns, so that handler requests the stop and then blocks until the owner says the
session is final (:meth:`StopHandlers.finished`) or :data:`CLOSE_WAIT_S` pass. Python's own console handler
turns Ctrl-C and Ctrl-Break into SIGINT and SIGBREAK; this one passes those on.

Only the standard library: the contract layer imports nothing else. The win32 branch is reached only when
``platform == "win32"``; ``signal_module``, ``platform`` and ``kernel32`` are parameters so tests exercise it
on any OS with fakes.
"""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: The reason given to the callback (the signal or console event's name) -> what the operator reads.
STOP_REASONS: dict[str, str] = {
    "SIGINT": "Ctrl-C",
    "SIGTERM": "SIGTERM",
    "SIGBREAK": "Ctrl-Break",
    "CTRL_CLOSE_EVENT": "console window closed",
    "CTRL_LOGOFF_EVENT": "user logged off",
    "CTRL_SHUTDOWN_EVENT": "system shutdown",
}

#: Signals that request a clean stop; SIGBREAK exists on Windows only.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGBREAK")

#: Console control events that end the process once the handler returns (``dwCtrlType`` values of wincon.h).
CTRL_CLOSE_EVENT = 2
CTRL_LOGOFF_EVENT = 5
CTRL_SHUTDOWN_EVENT = 6
CONSOLE_EVENTS: dict[int, str] = {
    CTRL_CLOSE_EVENT: "CTRL_CLOSE_EVENT",
    CTRL_LOGOFF_EVENT: "CTRL_LOGOFF_EVENT",
    CTRL_SHUTDOWN_EVENT: "CTRL_SHUTDOWN_EVENT",
}

#: How long the console handler holds the process open for the clean stop (Windows kills it at ~5 s).
CLOSE_WAIT_S = 4.0


def describe(reason: str) -> str:
    """The operator's words for a stop reason the callback was given ("SIGINT" -> "Ctrl-C")."""
    return STOP_REASONS.get(reason, reason)


def is_stop_reason(reason: str) -> bool:
    """Whether ``reason`` names an OS stop request (a child stopped by one reports it as its stop reason)."""
    return reason in STOP_REASONS


class StopHandlers:
    """What :func:`install_stop_handlers` installed; the owner calls :meth:`finished`, then :meth:`restore`."""

    def __init__(self, signal_module: ModuleType, close_wait_s: float) -> None:
        self._signal = signal_module
        self._close_wait_s = close_wait_s
        self._done = threading.Event()
        self.previous: dict[int, Any] = {}  # signal number -> the handler it had before
        self.kernel32: Any = None
        self.console_routine: Any = None  # the ctypes callback; referenced here so it is never collected

    def finished(self) -> None:
        """The session (or process) is final: a console handler waiting for it may now let Windows end us."""
        self._done.set()

    def restore(self) -> None:
        """Put back the handlers that were there before, and remove the console handler."""
        for signum, handler in self.previous.items():
            self._signal.signal(signum, handler)
        self.previous = {}
        if self.console_routine is not None:
            if not self.kernel32.SetConsoleCtrlHandler(self.console_routine, False):
                raise OSError(f"SetConsoleCtrlHandler could not remove the stop handler "
                              f"(error {self.kernel32.GetLastError()})")
            self.console_routine = None

    def on_console_event(self, ctrl_type: int, callback: Callable[[str], None]) -> bool:
        """The console handler's body (runs in a thread Windows starts); True = handled, False = pass it on."""
        reason = CONSOLE_EVENTS.get(ctrl_type)
        if reason is None:
            return False  # Ctrl-C / Ctrl-Break: Python's handler turns them into SIGINT / SIGBREAK
        callback(reason)
        self._done.wait(self._close_wait_s)
        return True


def install_stop_handlers(
    callback: Callable[[str], None],
    *,
    signal_module: ModuleType = signal,
    platform: str = sys.platform,
    kernel32: Any = None,
    close_wait_s: float = CLOSE_WAIT_S,
) -> StopHandlers:
    """Call ``callback(reason)`` on every OS stop request; ``reason`` is a key of :data:`STOP_REASONS`.

    Must run in the main thread (Python delivers signals there). The signal handlers call ``callback`` in the
    main thread; the Windows console handler calls it from the thread Windows starts for the event, so the
    callback must only record the request (set a flag, write one line). ``kernel32`` defaults to
    ``ctypes.windll.kernel32`` on Windows.
    """
    installed = StopHandlers(signal_module, close_wait_s)
    names = {getattr(signal_module, name): name for name in STOP_SIGNALS if hasattr(signal_module, name)}

    def on_signal(signum: int, frame: Any) -> None:
        callback(names[signum])

    for signum in names:
        installed.previous[signum] = signal_module.signal(signum, on_signal)
    if platform == "win32":
        try:
            _install_console_handler(installed, callback, kernel32)
        except BaseException:
            installed.restore()  # all or nothing: never leave half the handlers behind
            raise
    return installed


def _install_console_handler(installed: StopHandlers, callback: Callable[[str], None], kernel32: Any) -> None:
    if kernel32 is None:
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]  # win32 only
    # BOOL WINAPI HandlerRoutine(DWORD dwCtrlType); WINFUNCTYPE is the stdcall prototype (Windows only).
    prototype = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)(ctypes.c_int, ctypes.c_uint32)
    routine = prototype(lambda ctrl_type: installed.on_console_event(ctrl_type, callback))
    if not kernel32.SetConsoleCtrlHandler(routine, True):
        raise OSError(f"SetConsoleCtrlHandler refused the stop handler (error {kernel32.GetLastError()})")
    installed.kernel32 = kernel32
    installed.console_routine = routine
