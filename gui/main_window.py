"""The operator console window: field of view | live plots | health, with the controls on the left.

One QTimer at ``gui.refresh_hz`` drives everything: it lets the :class:`~gui.session.ConsoleSession`
drain the bus within its budget, then redraws from the model. The window holds no socket and never
waits on the rig, so closing it (or it hanging) cannot slow the closed loop.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from gui.commands import CommandReply
from gui.rings import ColumnRing
from gui.rois import RoiLoadError, RoiOutlines, load_roi_outlines
from gui.session import ConsoleSession
from gui.widgets.controls import ALLOWED_MODES, ControlPanel
from gui.widgets.fov import FovWidget
from gui.widgets.health import HealthPanel
from gui.widgets.plots import LivePlots
from gui.widgets.style import ERROR_COLOUR

HEALTH_REFRESH_S = 0.5


class MainWindow(QtWidgets.QMainWindow):
    closed = QtCore.pyqtSignal()

    def __init__(self, session: ConsoleSession, title: str = "bci-rig console") -> None:
        super().__init__()
        self.session = session
        self.model = session.model
        self.setWindowTitle(title)
        self.fov = FovWidget()
        self.plots = LivePlots(self.model)
        self.health = HealthPanel(self.model)
        self.controls = ControlPanel(session.cfg.default_target_hit_rate)

        self.banner = QtWidgets.QLabel("")
        self.banner.setStyleSheet(f"background-color: {ERROR_COLOUR}; color: white; font-weight: bold; padding: 6px;")
        self.banner.setWordWrap(True)
        self.banner.setVisible(False)
        self.mode_label = QtWidgets.QLabel("connecting…")
        self.mode_label.setStyleSheet("font-size: 14pt; font-weight: bold;")

        left = QtWidgets.QWidget()
        left_layout = QtWidgets.QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.fov, 1)
        left_layout.addWidget(self.controls, 0)
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.plots)
        splitter.addWidget(self.health)
        splitter.setSizes([560, 700, 420])
        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.addWidget(self.banner)
        layout.addWidget(self.mode_label)
        layout.addWidget(splitter, 1)
        self.setCentralWidget(central)
        self.connection_label = QtWidgets.QLabel(f"connecting to {session.command_endpoint}…")
        self.statusBar().addWidget(self.connection_label, 1)
        self.resize(1680, 1000)

        self.controls.command.connect(self.send_command)
        self.fov.roi_clicked.connect(self._on_roi_clicked)
        self.fov.apply_requested.connect(self._apply_ensembles)
        self.fov.revert_requested.connect(self._revert_ensembles)
        self.fov.load_requested.connect(self._choose_roi_folder)
        session.on_reply(self._on_reply)

        self._snapshots_seen = 0
        self._preview_seen = 0
        self._next_health = 0.0
        self._next_roi_check = 0.0
        self._roles_drawn = -1
        self._roi_problem_shown = ""
        self._volume_set = False
        self.refresh_ms = ColumnRing(300, {"ms": np.float32})  # the window's own cost per refresh
        self.timer = QtCore.QTimer(self)
        self.timer.setTimerType(QtCore.Qt.TimerType.CoarseTimer)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(int(1000 / session.cfg.refresh_hz))

    # ------------------------------------------------------------------ the refresh tick
    def refresh(self) -> None:
        """Drain the bus (bounded), then redraw what changed."""
        started = time.perf_counter()
        self.session.tick()
        m = self.model
        if m.snapshots != self._snapshots_seen:
            self._snapshots_seen = m.snapshots
            self._on_snapshot()
        if self.fov.rois is None and m.session_dir and m.n_rois_seen and time.monotonic() >= self._next_roi_check:
            self._next_roi_check = time.monotonic() + 1.0
            self._load_session_rois()
        if m.preview is not None and m.preview_count != self._preview_seen:
            self._preview_seen = m.preview_count
            p = m.preview
            self.fov.set_live(p.image, p.dy, p.dx, p.corr, p.frame)
        if m.roles.version != self._roles_drawn:
            self._roles_drawn = m.roles.version
            self.fov.update_roles(m.roles, m.selected_roi)
        self.plots.refresh()
        self._mode_line()
        now = time.monotonic()
        if now >= self._next_health:
            self._next_health = now + HEALTH_REFRESH_S
            self.health.refresh(self.session.reader, self.refresh_stats())
        self.refresh_ms.columns["ms"][self.refresh_ms.advance()] = (time.perf_counter() - started) * 1e3

    def refresh_stats(self) -> tuple[float, float] | None:
        """(p50, p99) in ms of the window's recent refreshes (bus drain + redraw)."""
        n = len(self.refresh_ms)
        if not n:
            return None
        p50, p99 = np.percentile(self.refresh_ms.columns["ms"][:n], (50, 99))
        return float(p50), float(p99)

    def _mode_line(self) -> None:
        m = self.model
        trial = ""
        if len(m.decisions):
            trial = (f" · trial {int(m.decisions.last('trial'))} "
                     f"({m.state_names.name(int(m.decisions.last('trial_state')))})")
        self.mode_label.setText(f"mode: {m.mode_label}{trial} · rig: {m.supervisor_mode}")
        code = m.mode_code
        known = code is not None and code in m.mode_names.names
        mode = m.mode_names.name(code) if known else None
        self.controls.set_mode(mode)
        ensembles_ok = mode is None or mode in ALLOWED_MODES["set_ensembles"]
        self.fov.set_apply_allowed(ensembles_ok, "" if ensembles_ok else f"not in {mode}")
        if m.safe_state:
            self.banner.setText(f"SAFE STATE — rewards refused, valve closed: {m.safe_state}")
            self.banner.setVisible(True)
        elif self.session.unreachable:
            self.banner.setText(f"rig unreachable at {self.session.command_endpoint}: {self.session.unreachable}")
            self.banner.setVisible(True)
        else:
            self.banner.setVisible(False)

    def _on_snapshot(self) -> None:
        m = self.model
        self.connection_label.setText(f"rig at {self.session.command_endpoint} · session {m.session_dir}")
        self.controls.load_metadata(m.metadata)
        if not self._volume_set:
            volume = (m.config.get("reward") or {}).get("volume_ul")
            if volume is not None:
                self.controls.volume.setValue(float(volume))
            self._volume_set = True
        target = ((m.config.get("decoder") or {}).get("calibration") or {}).get("target_hit_rate")
        if target is not None and m.snapshots == 1:
            self.controls.target_hit_rate.setValue(float(target))

    # ------------------------------------------------------------------ ROIs
    def _only_cells(self) -> bool:
        rois_cfg = (self.model.config.get("acquisition") or {}).get("rois") or {}
        return bool(rois_cfg.get("only_cells", False))

    def _load_session_rois(self) -> None:
        """Outlines of the rig's own ROI set, saved in <session>/acquisition/rois (suite2p layout).

        Tried once the first FluorFrame has told how many ROIs the rig extracts (the folder also lists
        excluded ROIs after those), then every second until it succeeds or the operator loads a folder.
        """
        folder = Path(self.model.session_dir) / "acquisition" / "rois"
        if not (folder / "stat.npy").exists():
            self._show_roi_problem(f"ROIs: none at {folder} (yet) — if the rig runs on another machine, "
                                   "use Load ROIs… with a copy of that folder")
            return
        try:
            rois = load_roi_outlines(folder, first_n=self.model.n_rois_seen)
        except RoiLoadError as exc:
            self._show_roi_problem(str(exc))
            return
        self.set_rois(rois)

    def _show_roi_problem(self, text: str) -> None:
        if text != self._roi_problem_shown:  # retried every second: report each problem once
            self._roi_problem_shown = text
            self.fov.show_roi_problem(text)
            self.model.add_warning("warning", "console", "rois", text)

    def set_rois(self, rois: RoiOutlines) -> None:
        problem = ""
        n_rig = self.model.n_rois_seen
        if n_rig and n_rig != rois.n:
            problem = f"the rig extracts {n_rig} ROIs: indices may not match"
            self.model.add_warning("warning", "console", "roi_count", f"{rois.folder}: {rois.n} ROIs, {problem}")
        self.fov.set_rois(rois, self.model.roles, problem)

    def load_rois_from(self, folder: str | Path) -> bool:
        """Load outlines from a suite2p plane folder (the Load ROIs… button); False and a message on error."""
        try:
            rois = load_roi_outlines(folder, only_cells=self._only_cells())
        except RoiLoadError as exc:
            self.fov.show_roi_problem(str(exc))
            self.model.add_warning("warning", "console", "rois", str(exc))
            return False
        self.set_rois(rois)
        return True

    def _choose_roi_folder(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "suite2p plane folder (with stat.npy)")
        if folder:
            self.load_rois_from(folder)

    def _on_roi_clicked(self, roi: int) -> None:
        self.model.roles.assign(roi, self.fov.click_role)
        self.model.select_roi(roi)
        self.fov.update_roles(self.model.roles, roi)

    def _apply_ensembles(self) -> None:
        roles = self.model.roles
        self.send_command("set_ensembles", {"up": sorted(roles.up), "down": sorted(roles.down)})

    def _revert_ensembles(self) -> None:
        roles = self.model.roles
        roles.set_applied(roles.applied_up, roles.applied_down)
        self.fov.update_roles(roles, self.model.selected_roi)

    # ------------------------------------------------------------------ commands
    def send_command(self, name: str, args: dict[str, Any]) -> int:
        request_id = self.session.send(name, **args)
        self.controls.show_status(f"sent {name}…")
        return request_id

    def _on_reply(self, reply: CommandReply) -> None:
        if reply.ok:
            self.controls.show_status(f"{reply.command}: done")
            if reply.command == "set_ensembles":
                self.model.roles.set_applied(reply.args.get("up", []), reply.args.get("down", []))
                self.fov.update_roles(self.model.roles, self.model.selected_roi)
            elif reply.command == "set_metadata":
                self.model.metadata.update({k: str(v) for k, v in reply.args.items()})
        else:
            self.controls.show_status(f"{reply.command} FAILED: {reply.error}", error=True)

    # ------------------------------------------------------------------ lifecycle
    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.timer.stop()
        self.closed.emit()
        super().closeEvent(event)
