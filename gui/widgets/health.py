"""Health: frame rate, drops, per-stage latency p50/p99, registration, processes, links, warnings."""

from __future__ import annotations

from PyQt6 import QtCore, QtGui, QtWidgets

from gui.bus_reader import BusReader
from gui.model import LATENCY_STAGES, ConsoleModel
from gui.widgets.style import ERROR_COLOUR, OK_COLOUR, WARN_COLOUR

GOOD_STATES = {"running", "ready", "configuring"}
PROCESS_COLUMNS = ("process", "state", "heartbeat", "pid", "stats")


def _fmt_stats(stats: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in list(stats.items())[:5])


class HealthPanel(QtWidgets.QWidget):
    def __init__(self, model: ConsoleModel, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.rate_label = QtWidgets.QLabel("frame rate: –")
        self.frames_label = QtWidgets.QLabel("frames: –")
        self.registration_label = QtWidgets.QLabel("registration: –")
        self.link_label = QtWidgets.QLabel("reward board link: –")
        self.console_label = QtWidgets.QLabel("console: –")
        self.console_label.setWordWrap(True)
        for label in (self.rate_label, self.frames_label, self.registration_label, self.link_label):
            label.setTextFormat(QtCore.Qt.TextFormat.RichText)
            label.setWordWrap(True)

        self.latency_table = QtWidgets.QTableWidget(len(LATENCY_STAGES) + 1, 2)
        self.latency_table.setHorizontalHeaderLabels(["p50 ms", "p99 ms"])
        self.latency_table.setVerticalHeaderLabels([name for name, _, _ in LATENCY_STAGES] + ["reward write"])
        self.latency_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.latency_table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.latency_table.verticalHeader().setDefaultSectionSize(22)
        self.latency_table.setVerticalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.latency_table.setFixedHeight(self.latency_table.horizontalHeader().sizeHint().height()
                                          + 22 * self.latency_table.rowCount() + 2 * self.latency_table.frameWidth())
        for row in range(self.latency_table.rowCount()):
            for col in range(2):
                self.latency_table.setItem(row, col, QtWidgets.QTableWidgetItem("–"))

        self.process_table = QtWidgets.QTableWidget(0, len(PROCESS_COLUMNS))
        self.process_table.setHorizontalHeaderLabels(list(PROCESS_COLUMNS))
        self.process_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.process_table.verticalHeader().setVisible(False)
        header = self.process_table.horizontalHeader()
        for col in range(len(PROCESS_COLUMNS) - 1):
            header.setSectionResizeMode(col, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(PROCESS_COLUMNS) - 1, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.process_table.verticalHeader().setDefaultSectionSize(22)
        self.process_table.setMaximumHeight(26 + 22 * 7)

        self.warning_list = QtWidgets.QListWidget()
        self.warning_list.setWordWrap(True)
        self.events_view = QtWidgets.QPlainTextEdit()
        self.events_view.setReadOnly(True)
        self.events_view.setMaximumBlockCount(200)
        tabs = QtWidgets.QTabWidget()
        tabs.addTab(self.warning_list, "warnings")
        tabs.addTab(self.events_view, "events")
        tabs.setMinimumHeight(150)  # the column scrolls before the warnings shrink out of sight
        self.tabs = tabs

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for label in (self.rate_label, self.frames_label, self.registration_label, self.link_label):
            layout.addWidget(label)
        layout.addWidget(QtWidgets.QLabel("latency per stage (Decision stamps)"))
        layout.addWidget(self.latency_table)
        layout.addWidget(QtWidgets.QLabel("processes"))
        layout.addWidget(self.process_table)
        layout.addWidget(self.console_label)
        layout.addWidget(tabs, 1)
        self._warnings_shown = 0
        self._events_shown = 0

    def refresh(self, reader: BusReader | None, refresh_ms: tuple[float, float] | None) -> None:
        m = self.model
        st = m.acq_status
        console_fps = m.console_frame_rate()
        if st is None:
            self.rate_label.setText(f"frame rate: rig – · console {console_fps:.1f} Hz")
            self.frames_label.setText("frames: –")
        else:
            link_colour = OK_COLOUR if st.link in ("ok", "connected", "streaming", "running") else WARN_COLOUR
            self.rate_label.setText(f"frame rate: rig <b>{st.fps:.1f} Hz</b> · console {console_fps:.1f} Hz · "
                                    f'source <span style="color:{link_colour}">{st.link}</span>')
            drop_colour = ERROR_COLOUR if st.frames_dropped else OK_COLOUR
            self.frames_label.setText(
                f'frames <b>{st.frames}</b> · dropped <span style="color:{drop_colour}"><b>{st.frames_dropped}</b>'
                f"</span> · bad (registration/flags) <b>{st.bad_frames}</b>")
        reg = m.registration_quality()
        if reg is not None:
            ok = not reg["corr_z"] < -5.0 and reg["bad_fraction"] < 0.05  # NaN z (too few frames yet) is ok
            colour = OK_COLOUR if ok else WARN_COLOUR
            self.registration_label.setText(
                f'registration: corr <span style="color:{colour}"><b>{reg["corr"]:.3f}</b></span> '
                f'(z {reg["corr_z"]:+.1f} vs recent frames; mean {reg["corr_mean"]:.3f}, min {reg["corr_min"]:.3f}) '
                f'· shift dy {reg["dy"]:+.2f} '
                f'dx {reg["dx"]:+.2f} px · flagged {reg["bad_fraction"]:.1%}')
        link_colour = OK_COLOUR if m.link_state == "connected" else (
            "#888" if m.link_state == "unknown" else ERROR_COLOUR)
        detail = f" ({m.link_detail})" if m.link_detail else ""
        self.link_label.setText(f'reward board link: <span style="color:{link_colour}"><b>{m.link_state}</b></span>'
                                f"{detail}")
        stats = m.latency_stats()
        for row, (name, _, _) in enumerate(LATENCY_STAGES):
            p50, p99 = stats.get(name, (float("nan"), float("nan")))
            self.latency_table.item(row, 0).setText(f"{p50:.2f}")
            self.latency_table.item(row, 1).setText(f"{p99:.2f}")
        rl = m.reward_latency_stats()
        self.latency_table.item(len(LATENCY_STAGES), 0).setText("–" if rl is None else f"{rl[0]:.2f}")
        self.latency_table.item(len(LATENCY_STAGES), 1).setText("–" if rl is None else f"{rl[1]:.2f}")
        self._processes()
        if reader is None:
            bus = "not connected yet"
        else:
            bus = (f"{reader.received} messages · missed {reader.gaps} (the rig never waits for the console; "
                   f"it drops for it) · undecodable {reader.bad_messages}")
        cost = "" if refresh_ms is None else f" · refresh p50 {refresh_ms[0]:.1f} ms, p99 {refresh_ms[1]:.1f} ms"
        self.console_label.setText(f"console: {bus}{cost} · ring memory {m.memory_bytes() / 1e6:.1f} MB")
        self._warnings()
        self._events()

    def _processes(self) -> None:
        m = self.model
        names = sorted(m.processes)
        table = self.process_table
        if table.rowCount() != len(names):
            table.setRowCount(len(names))
            for row in range(len(names)):
                for col in range(len(PROCESS_COLUMNS)):
                    table.setItem(row, col, QtWidgets.QTableWidgetItem(""))
        stale_s = m.cfg.heartbeat_stale_s
        for row, name in enumerate(names):
            proc = m.processes[name]
            age = m.heartbeat_age(name)
            if proc.state in GOOD_STATES and age is not None and age <= stale_s:
                colour = OK_COLOUR
            elif proc.state in ("failed", "lost"):
                colour = ERROR_COLOUR
            else:
                colour = WARN_COLOUR
            values = (name + ("" if proc.critical else " (optional)"), proc.state,
                      "–" if age is None else f"{age:.1f} s ago", str(proc.pid or ""),
                      proc.error or _fmt_stats(proc.stats))
            for col, text in enumerate(values):
                item = table.item(row, col)
                item.setText(text)
                item.setToolTip(text)
                if col == 1:
                    item.setForeground(QtGui.QBrush(QtGui.QColor(colour)))

    def _warnings(self) -> None:
        total = self.model.warnings_total
        if total == self._warnings_shown:
            return
        self._warnings_shown = total
        self.warning_list.clear()
        for entry in reversed(self.model.warnings):
            item = QtWidgets.QListWidgetItem(f"{entry.when} [{entry.source}] {entry.code}: {entry.message}")
            colour = {"error": ERROR_COLOUR, "warning": WARN_COLOUR}.get(entry.level, "#aaa")
            item.setForeground(QtGui.QBrush(QtGui.QColor(colour)))
            self.warning_list.addItem(item)
        if total:
            self.tabs.setTabText(0, f"warnings ({total})")

    def _events(self) -> None:
        if self.model.events_total == self._events_shown:
            return
        self._events_shown = self.model.events_total
        self.events_view.setPlainText("\n".join(self.model.events))
        self.events_view.verticalScrollBar().setValue(self.events_view.verticalScrollBar().maximum())
