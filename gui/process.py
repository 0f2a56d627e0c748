"""The console as a process on the rig's bus (``gui.process:ConsoleProcess``, never critical).

It hosts the Qt event loop inside the :class:`~rig.core.process.RigProcess` contract: ``configure`` builds
the QApplication and the window, each ``step`` runs the Qt loop for ~20 ms (the window's timer drains
the bus and redraws in there). Closing the window stops this process only; the supervisor treats the
console as optional, so the session goes on.
"""

from __future__ import annotations

import sys

from PyQt6 import QtCore, QtWidgets

from gui.main_window import MainWindow
from gui.session import ConsoleSession, lower_own_priority
from rig.core.process import RigProcess

STEP_MS = 20


class ConsoleProcess(RigProcess):
    def configure(self) -> None:
        self.app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0] or "rig-console"])
        if self.config.gui.low_priority:
            self.events.write("priority", set=lower_own_priority())  # the rig gets the CPU first
        self.session = ConsoleSession(self.config.gui, self.spec.endpoints["command"], issued_by="console",
                                      keys=self.keys)  # the rig's own pair, when it has keys
        self.window = MainWindow(self.session, title=f"bci-rig console — {self.config.rig.name}")
        self.window.closed.connect(self._on_window_closed)
        self.window.show()
        self._loop = QtCore.QEventLoop()
        self._quit_timer = QtCore.QTimer()
        self._quit_timer.setSingleShot(True)
        self._quit_timer.timeout.connect(self._loop.quit)

    def _on_window_closed(self) -> None:
        self.request_stop("console window closed")

    def step(self) -> None:
        """Run the Qt event loop for one bounded slice (timers, input, redraws)."""
        self._quit_timer.start(STEP_MS)
        self._loop.exec()

    def on_safe_state(self, reason: str) -> None:
        self.session.model.safe_state = reason or "safe state"
        self.session.model.add_warning("error", "supervisor", "safe_state", self.session.model.safe_state)

    def heartbeat_stats(self) -> dict[str, float]:
        reader = self.session.reader
        return {"messages": float(reader.received if reader else 0), "missed": float(reader.gaps if reader else 0)}

    def on_stop(self) -> None:
        window = getattr(self, "window", None)
        if window is not None:
            window.closed.disconnect(self._on_window_closed)
            window.close()
        session = getattr(self, "session", None)
        if session is not None:
            session.close()
