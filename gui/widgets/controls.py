"""Operator controls: session metadata, protocol steps, rewards and the valve.

The panel only emits ``command(name, args)``; the window sends it to the supervisor. Stopping the
session asks for confirmation; closing the valve never does.

Two columns (session and reward | protocol) when the panel is at least :data:`TWO_COLUMNS_WIDTH` wide,
one column (session, protocol, reward) when it is narrower, so it fits beside the field of view on a
1280-pixel screen; the window scrolls it when it is short of height. The emergency button
:attr:`ControlPanel.close_valve` is not in the panel's layout: the window puts it in its header, where
scrolling can never hide it.
"""

from __future__ import annotations

from typing import Any

from PyQt6 import QtCore, QtGui, QtWidgets

from gui.widgets.style import ERROR_COLOUR
from rig.core.codes import COMMAND_MODES, mode_name

#: Decoder modes (by name) in which each protocol button makes sense, from ``rig.core.codes``. The
#: decoder has the last word (a command arriving in another mode is refused there); greying the
#: buttons out just keeps the operator from asking for what cannot happen now.
ALLOWED_MODES = {command: tuple(mode_name(m) for m in modes) for command, modes in COMMAND_MODES.items()}

#: Width (px) from which the panel lays its boxes out in two columns (above what two columns need).
TWO_COLUMNS_WIDTH = 450


class ControlPanel(QtWidgets.QWidget):
    command = QtCore.pyqtSignal(str, dict)

    def __init__(self, default_target_hit_rate: float, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        # -------- metadata
        self.mouse_id = QtWidgets.QLineEdit()
        self.mouse_id.setPlaceholderText("e.g. BCI-042")
        self.experimenter = QtWidgets.QLineEdit()
        self.notes = QtWidgets.QPlainTextEdit()
        self.notes.setPlaceholderText("notes saved with the session")
        self.notes.setMaximumHeight(60)
        self.save_metadata = QtWidgets.QPushButton("Save metadata")
        self.save_metadata.setToolTip("store mouse id, experimenter and notes in the session (set_metadata)")
        self.save_metadata.clicked.connect(self._send_metadata)
        meta = QtWidgets.QFormLayout()
        meta.addRow("mouse id", self.mouse_id)
        meta.addRow("experimenter", self.experimenter)
        meta.addRow("notes", self.notes)
        meta.addRow("", self.save_metadata)
        meta_box = QtWidgets.QGroupBox("session")
        meta_box.setLayout(meta)

        # -------- protocol
        self.start_baseline = QtWidgets.QPushButton("1. Start baseline")
        self.start_baseline.setToolTip("saves the metadata above, then starts the baseline recording")
        self.target_hit_rate = QtWidgets.QDoubleSpinBox()
        self.target_hit_rate.setRange(0.05, 0.95)
        self.target_hit_rate.setSingleStep(0.05)
        self.target_hit_rate.setDecimals(2)
        self.target_hit_rate.setValue(default_target_hit_rate)
        self.target_hit_rate.setToolTip("fraction of baseline trials that would have been hits")
        self.allow_rois = QtWidgets.QLineEdit()
        self.allow_rois.setPlaceholderText("e.g. 12, 40")
        self.allow_rois.setToolTip("the F0 safeguards' override: ROIs calibration may use although their F0 is near "
                                   "their noise or their dF/F noise is an outlier (the refusal names them)")
        self.calibrate = QtWidgets.QPushButton("2. Calibrate")
        self.start_bci = QtWidgets.QPushButton("3. Start BCI")
        self.pause = QtWidgets.QPushButton("Pause")
        self.resume = QtWidgets.QPushButton("Resume")
        self.end_block = QtWidgets.QPushButton("End block")
        self.end_block.setToolTip("end this BCI block, not the session: then start another block, or record a new "
                                  "baseline, choose ensembles and calibrate first")
        self.stop = QtWidgets.QPushButton("Stop session")
        self.stop.setToolTip("end the session; every process stops and the data are saved")
        self.start_baseline.clicked.connect(self._on_start_baseline)
        self.calibrate.clicked.connect(self._on_calibrate)
        self.start_bci.clicked.connect(lambda: self._emit("start_bci"))
        self.pause.clicked.connect(lambda: self._emit("pause"))
        self.resume.clicked.connect(lambda: self._emit("resume"))
        self.end_block.clicked.connect(lambda: self._emit("end_block"))
        self.stop.clicked.connect(self._on_stop)
        proto = QtWidgets.QGridLayout()
        proto.addWidget(self.start_baseline, 0, 0, 1, 2)
        proto.addWidget(QtWidgets.QLabel("target hit rate"), 1, 0)
        proto.addWidget(self.target_hit_rate, 1, 1)
        proto.addWidget(QtWidgets.QLabel("override ROIs"), 2, 0)
        proto.addWidget(self.allow_rois, 2, 1)
        proto.addWidget(self.calibrate, 3, 0)
        proto.addWidget(self.start_bci, 3, 1)
        proto.addWidget(self.pause, 4, 0)
        proto.addWidget(self.resume, 4, 1)
        proto.addWidget(self.end_block, 5, 0, 1, 2)
        proto.addWidget(self.stop, 6, 0, 1, 2)
        proto_box = QtWidgets.QGroupBox("protocol")
        proto_box.setLayout(proto)

        # -------- reward
        self.volume = QtWidgets.QDoubleSpinBox()
        self.volume.setRange(0.1, 50.0)
        self.volume.setSingleStep(0.5)
        self.volume.setDecimals(1)
        self.volume.setSuffix(" µL")
        self.volume.setValue(4.0)
        self.manual_reward = QtWidgets.QPushButton("Manual reward")
        self.test_pulse = QtWidgets.QPushButton("Valve test pulse")
        self.close_valve = QtWidgets.QPushButton("CLOSE VALVE")  # placed by the window (see the module doc)
        self.close_valve.setToolTip("emergency: close the solenoid now")
        self.close_valve.setStyleSheet(f"background-color: {ERROR_COLOUR}; color: white; font-weight: bold; "
                                       "padding: 8px;")
        self.manual_reward.clicked.connect(
            lambda: self._emit("manual_reward", volume_ul=round(self.volume.value(), 3)))
        self.test_pulse.clicked.connect(lambda: self._emit("test_pulse"))
        self.close_valve.clicked.connect(lambda: self._emit("close_valve"))
        reward = QtWidgets.QGridLayout()
        reward.addWidget(QtWidgets.QLabel("volume"), 0, 0)
        reward.addWidget(self.volume, 0, 1)
        reward.addWidget(self.manual_reward, 1, 0)
        reward.addWidget(self.test_pulse, 1, 1)
        reward_box = QtWidgets.QGroupBox("reward")
        reward_box.setLayout(reward)

        self.status = QtWidgets.QLabel("")
        self.status.setWordWrap(True)
        self._boxes = (meta_box, proto_box, reward_box)
        self._grid = QtWidgets.QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self.columns = 0
        self.set_columns(1)
        self._metadata_loaded = False
        self.session_over = ""  # why the session ended; every control stays off from then on
        #: Asked before stopping the session; tests replace it.
        self.confirm = self._confirm_dialog

    # ------------------------------------------------------------------ layout
    def set_columns(self, columns: int) -> None:
        """Lay the boxes out in one column (session, protocol, reward) or two (session, reward | protocol)."""
        if columns == self.columns:
            return
        self.columns = columns
        grid = self._grid
        meta_box, proto_box, reward_box = self._boxes
        for widget in (self.status, *self._boxes):
            grid.removeWidget(widget)
        for row in range(grid.rowCount()):
            grid.setRowStretch(row, 0)
        grid.addWidget(self.status, 0, 0, 1, columns)
        if columns == 2:
            grid.addWidget(meta_box, 1, 0)
            grid.addWidget(reward_box, 2, 0)
            grid.addWidget(proto_box, 1, 1, 2, 1)
            grid.setRowStretch(3, 1)
        else:
            grid.addWidget(meta_box, 1, 0)
            grid.addWidget(proto_box, 2, 0)
            grid.addWidget(reward_box, 3, 0)
            grid.setRowStretch(4, 1)

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 - Qt override
        self.set_columns(2 if event.size().width() >= TWO_COLUMNS_WIDTH else 1)
        super().resizeEvent(event)

    # ------------------------------------------------------------------ values in
    def load_metadata(self, metadata: dict[str, str]) -> None:
        """Fill the fields once from the rig (later snapshots never overwrite what the operator types)."""
        if self._metadata_loaded:
            return
        self._metadata_loaded = True
        self.mouse_id.setText(metadata.get("mouse_id", ""))
        self.experimenter.setText(metadata.get("experimenter", ""))
        self.notes.setPlainText(metadata.get("notes", ""))

    def metadata(self) -> dict[str, str]:
        return {"mouse_id": self.mouse_id.text().strip(), "experimenter": self.experimenter.text().strip(),
                "notes": self.notes.toPlainText().strip()}

    # ------------------------------------------------------------------ actions
    def _emit(self, name: str, **args: Any) -> None:
        self.command.emit(name, args)

    def _send_metadata(self) -> None:
        self._emit("set_metadata", **self.metadata())

    def _on_start_baseline(self) -> None:
        if not self.metadata()["mouse_id"]:
            self.status.setText("enter the mouse id before starting")
            self.status.setStyleSheet(f"color: {ERROR_COLOUR};")
            self.mouse_id.setFocus()
            return
        self._send_metadata()
        self._emit("start_baseline")

    def _on_stop(self) -> None:
        if self.confirm("Stop the session? Every process stops and the data are saved."):
            self._emit("stop")

    def _on_calibrate(self) -> None:
        args: dict = {"target_hit_rate": round(self.target_hit_rate.value(), 4)}
        text = self.allow_rois.text().replace(",", " ").split()
        if text:
            if not all(t.isdigit() for t in text):
                self.show_status(f"override ROIs: {self.allow_rois.text()!r} is not a list of ROI numbers", error=True)
                return
            args["allow_rois"] = [int(t) for t in text]
        self._emit("calibrate", **args)

    def _confirm_dialog(self, text: str) -> bool:
        answer = QtWidgets.QMessageBox.question(self, "bci-rig", text)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def set_mode(self, mode: str | None) -> None:
        """Enable the protocol buttons that make sense in decoder mode ``mode`` (all when it is unknown)."""
        if self.session_over:
            return
        buttons = {"start_baseline": self.start_baseline, "calibrate": self.calibrate, "start_bci": self.start_bci,
                   "pause": self.pause, "resume": self.resume, "end_block": self.end_block}
        for name, button in buttons.items():
            allowed = ALLOWED_MODES[name]
            enabled = mode is None or mode in allowed
            button.setEnabled(enabled)
            button.setToolTip("" if enabled else f"only in mode {' or '.join(allowed)} (now: {mode})")

    def set_session_over(self, why: str) -> None:
        """The session ended: nothing can be sent any more, the fields stay readable."""
        self.session_over = why
        for widget in (self.mouse_id, self.experimenter, self.save_metadata, self.start_baseline,
                       self.target_hit_rate, self.allow_rois, self.calibrate, self.start_bci, self.pause,
                       self.resume, self.end_block, self.stop,
                       self.volume, self.manual_reward, self.test_pulse, self.close_valve):
            widget.setEnabled(False)
            widget.setToolTip(f"the session ended: {why}")
        self.notes.setReadOnly(True)
        self.show_status(f"session ended: {why}")

    def show_status(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet(f"color: {ERROR_COLOUR};" if error else "")
