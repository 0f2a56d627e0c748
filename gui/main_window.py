"""The operator console window: field of view over the controls | live plots | health.

One QTimer at ``gui.refresh_hz`` drives everything: it lets the :class:`~gui.session.ConsoleSession`
drain the bus within its budget, then redraws from the model. The window holds no socket and never
waits on the rig, so closing it (or it hanging) cannot slow the closed loop.

Fits a 1280×720 screen (rig PCs often have one): the three columns sit in a splitter, each scrolls when
it is short of room instead of being cut off, and the window starts at most as large as the screen. The
header (mode, baseline countdown, CLOSE VALVE) and the banners (safe state, unreachable rig, failed
calibration, session ended) stay above the columns, never scrolled away.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from gui.commands import CommandReply
from gui.plane_console import PlaneConsole
from gui.progress import baseline_countdown
from gui.rings import ColumnRing
from gui.rois import RoiLoadError, RoiOutlines, load_roi_outlines
from gui.session import ConsoleSession
from gui.widgets.controls import ALLOWED_MODES, TWO_COLUMNS_WIDTH, ControlPanel
from gui.widgets.fov import FovWidget
from gui.widgets.health import HealthPanel
from gui.widgets.plots import LivePlots
from gui.widgets.style import ERROR_COLOUR, INFO_COLOUR, WARN_COLOUR
from gui.widgets.zplot import ZPlotWidget

HEALTH_REFRESH_S = 0.5
#: The window opens at most this large (and at most as large as the screen), and never gets smaller than
#: MIN_SIZE: both fit a 1280×720 screen, where everything is still reachable (see the module docstring).
DEFAULT_SIZE = (1680, 1000)
MIN_SIZE = (960, 600)
#: Initial share of the width: field of view + controls, plots, health.
COLUMN_SHARES = (0.37, 0.37, 0.26)
#: Height (px) of the window's header, banners and status bar: what the columns do not get.
CHROME_HEIGHT = 110
BANNER_STYLE = "background-color: {}; color: white; font-weight: bold; padding: 6px;"


def scrolling(widget: QtWidgets.QWidget, min_width: int) -> QtWidgets.QScrollArea:
    """``widget`` in a scroll area: it fills the area when there is room and scrolls when there is not."""
    area = QtWidgets.QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
    widget.setMinimumWidth(min_width)
    return area


def initial_size() -> QtCore.QSize:
    """The default size, shrunk to the screen's available area (never below MIN_SIZE)."""
    width, height = DEFAULT_SIZE
    screen = QtGui.QGuiApplication.primaryScreen()
    if screen is not None:
        available = screen.availableGeometry()
        width, height = min(width, available.width()), min(height, available.height())
    return QtCore.QSize(max(width, MIN_SIZE[0]), max(height, MIN_SIZE[1]))


class MainWindow(QtWidgets.QMainWindow):
    closed = QtCore.pyqtSignal()

    def __init__(self, session: ConsoleSession, title: str = "bci-rig console") -> None:
        super().__init__()
        self.session = session
        self.model = session.model
        self.setWindowTitle(title)
        self.fov = FovWidget()
        self.plots = LivePlots(self.model)
        self.zplot = ZPlotWidget()  # hidden until z-tracking sends a depth
        self.health = HealthPanel(self.model)
        self.controls = ControlPanel(session.cfg.default_target_hit_rate)

        self.banner = QtWidgets.QLabel("")
        self.banner.setWordWrap(True)
        self.banner.setVisible(False)
        self._banner_colour = ""
        self.calibration_banner = QtWidgets.QLabel("")
        self.calibration_banner.setStyleSheet(BANNER_STYLE.format(WARN_COLOUR))
        self.calibration_banner.setWordWrap(True)
        self.calibration_banner.setVisible(False)
        self.mode_label = QtWidgets.QLabel("connecting…")
        self.mode_label.setStyleSheet("font-size: 14pt; font-weight: bold;")
        self.mode_label.setWordWrap(True)
        self.baseline_bar = QtWidgets.QProgressBar()
        self.baseline_bar.setVisible(False)
        self.baseline_bar.setMinimumWidth(260)
        header = QtWidgets.QHBoxLayout()
        header.addWidget(self.mode_label, 1)
        header.addWidget(self.baseline_bar)
        self.pick_button = QtWidgets.QPushButton("Pick ensembles…")
        self.pick_button.setToolTip("the ROI picker on this session's ROIs (its rig detect folder, else the ROIs it "
                                    "runs with): rank cells, pick up/down, draw ROIs; saved into the session's "
                                    "config file for the next session")
        self.pick_button.clicked.connect(lambda: self.open_picker())
        self.picker_window: QtWidgets.QWidget | None = None
        header.addWidget(self.pick_button)
        self.links_button = QtWidgets.QPushButton("Links…")
        self.links_button.setToolTip("the link editor: which dendrite (other planes) belongs to which soma (BCI "
                                     "plane); saved into the plane folders the config names, for the next session")
        self.links_button.clicked.connect(lambda: self.open_links())
        self.links_button.setVisible(False)  # shown once the rig images several planes
        self.links_window: QtWidgets.QWidget | None = None
        header.addWidget(self.links_button)
        header.addWidget(self.controls.close_valve)  # the emergency button: always in sight

        # Columns: field of view over the controls | plots | health; each scrolls rather than being cut off.
        self.controls_scroll = scrolling(self.controls, 240)
        self.left = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        self.left.addWidget(self.fov)
        self.left.addWidget(self.controls_scroll)
        self.left.setChildrenCollapsible(False)
        self.left.setStretchFactor(0, 1)  # a taller window gives the image the height, not the buttons
        self.left.setStretchFactor(1, 0)
        plots_column = QtWidgets.QWidget()
        plots_layout = QtWidgets.QVBoxLayout(plots_column)
        plots_layout.setContentsMargins(0, 0, 0, 0)
        plots_layout.addWidget(self.plots, 1)
        plots_layout.addWidget(self.zplot)
        self.plots_scroll = scrolling(plots_column, 320)
        self.health_scroll = scrolling(self.health, 280)
        self.splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        for column in (self.left, self.plots_scroll, self.health_scroll):
            self.splitter.addWidget(column)
        self.splitter.setChildrenCollapsible(False)
        for i, share in enumerate(COLUMN_SHARES):
            self.splitter.setStretchFactor(i, round(share * 100))
        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addWidget(self.banner)
        layout.addWidget(self.calibration_banner)
        layout.addLayout(header)
        layout.addWidget(self.splitter, 1)
        self.setCentralWidget(central)
        self.connection_label = QtWidgets.QLabel(f"connecting to {session.command_endpoint}…")
        self.statusBar().addWidget(self.connection_label, 1)
        self.setMinimumSize(*MIN_SIZE)
        size = initial_size()
        self.resize(size)
        widths = [round(share * size.width()) for share in COLUMN_SHARES]
        self.splitter.setSizes(widths)
        # The controls get the height they need (up to half the column); the field of view the rest.
        self.controls.set_columns(2 if widths[0] >= TWO_COLUMNS_WIDTH else 1)
        column_height = size.height() - CHROME_HEIGHT
        controls_height = min(self.controls.sizeHint().height() + 4, column_height // 2)
        self.left.setSizes([column_height - controls_height, controls_height])
        self._ended_shown = ""
        self._gone_shown = False

        self.controls.command.connect(self.send_command)
        self.fov.roi_clicked.connect(self._on_roi_clicked)
        self.fov.apply_requested.connect(self._apply_ensembles)
        self.fov.revert_requested.connect(self._revert_ensembles)
        self.fov.load_requested.connect(self._choose_roi_folder)
        self.planes = PlaneConsole(self.model, self.fov)  # other imaging planes: nothing with one plane
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
            self.zplot.add(p.frame, p.z_um)
        if self.planes.tick() and self.links_button.isHidden():
            self.links_button.setVisible(True)
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
        self._baseline_bar()
        code = m.mode_code
        known = code is not None and code in m.mode_names.names
        mode = m.mode_names.name(code) if known else None
        self.controls.set_mode(mode)
        ensembles_ok = mode is None or mode in ALLOWED_MODES["set_ensembles"]
        self.fov.set_apply_allowed(ensembles_ok, "" if ensembles_ok else f"not in {mode}")
        if self.session.ended and self.session.ended != self._ended_shown:
            self._session_over(self.session.ended)
        if self.session.rig_gone and not self._gone_shown:
            self._gone_shown = True
            self.connection_label.setText(f"rig at {self.session.command_endpoint}: shut down after the session "
                                          f"· session {m.session_dir}")
        self._banners()

    def _baseline_bar(self) -> None:
        """The seconds left in the baseline recording, while there is one."""
        countdown = baseline_countdown(self.model)
        self.baseline_bar.setVisible(countdown is not None)
        if countdown is None:
            return
        self.baseline_bar.setRange(0, max(countdown.total, 1))
        self.baseline_bar.setValue(countdown.done)
        self.baseline_bar.setFormat(countdown.text())

    def _banners(self) -> None:
        m, session = self.model, self.session
        if session.ended:
            text = (f"SESSION ENDED — {session.ended}. The controls are off; what the console received stays "
                    "here for review. Close the window to exit.")
            colour = INFO_COLOUR
            if m.safe_state:
                text += f" (safe state: {m.safe_state})"
        elif m.safe_state:
            text, colour = f"SAFE STATE — rewards refused, valve closed: {m.safe_state}", ERROR_COLOUR
        elif session.unreachable:
            text, colour = f"rig unreachable at {session.command_endpoint}: {session.unreachable}", ERROR_COLOUR
        else:
            text, colour = "", ""
        if colour != self._banner_colour:  # restyling every refresh would re-polish the label each time
            self._banner_colour = colour
            self.banner.setStyleSheet(BANNER_STYLE.format(colour) if colour else "")
        self.banner.setText(text)
        self.banner.setVisible(bool(text))
        failure = m.calibration_failure
        doubts = list((m.calibration or {}).get("warnings") or []) if not failure else []
        self.calibration_banner.setVisible(bool(failure or doubts))
        if failure:
            self.calibration_banner.setText(
                f"CALIBRATION FAILED: {failure} — the decoder waits in idle: record a new baseline or calibrate "
                "again")
        elif doubts:
            self.calibration_banner.setText("CALIBRATION UNCERTAIN: " + "; ".join(doubts))

    def _session_over(self, why: str) -> None:
        """The session ended: controls off, ROI clicks only select, the window stays for review."""
        self._ended_shown = why
        self.controls.set_session_over(why)
        self.fov.set_editing(False)
        self.setWindowTitle(f"{self.windowTitle().split(' — session ended')[0]} — session ended")

    def _on_snapshot(self) -> None:
        m = self.model
        self.connection_label.setText(f"rig at {self.session.command_endpoint} · session {m.session_dir}")
        self.controls.load_metadata(m.metadata)
        if not self._volume_set:
            volume = (m.config.get("reward") or {}).get("volume_ul")
            if volume is not None:
                self.controls.volume.setValue(float(volume))
            self._volume_set = True
        warn_um = ((m.config.get("acquisition") or {}).get("ztrack") or {}).get("warn_um")
        if warn_um is not None:  # the z plot's band is the rig's z-drift warning threshold
            self.zplot.set_warn_um(float(warn_um))
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

    def open_picker(self, folder: str | Path | None = None, config: str | Path | None = None) -> bool:
        """The ROI picker in its own window, before or after a BCI block (:func:`gui.roi_picker.session_picker`:
        this session's ``detect/``, else its ROI folder; saved into the config file it was started from).
        False and a message in the status bar when there is nothing to open."""
        from gui.roi_folder import RoiFolderError  # noqa: PLC0415 - the picker's modules only when it is opened
        from gui.roi_picker import session_picker  # noqa: PLC0415

        try:
            self.picker_window = session_picker(self.model.session_dir or None, self.model.config, folder, config)
        except RoiFolderError as exc:
            self.statusBar().showMessage(f"ROI picker: {exc}", 10_000)
            return False
        self.picker_window.resize(1200, 700)
        self.picker_window.show()
        return True

    def open_links(self) -> bool:
        """The link editor in its own window (:func:`gui.link_editor.live_link_editor`); False and a message in
        the status bar when there is nothing to link."""
        from gui.link_editor import live_link_editor  # noqa: PLC0415 - only when it is opened
        from gui.link_set import LinkSetError  # noqa: PLC0415

        try:
            self.links_window = live_link_editor(self.model.session_dir or None, self.model.config)
        except LinkSetError as exc:
            self.statusBar().showMessage(f"Links: {exc}", 10_000)
            return False
        self.links_window.saved.connect(lambda _folders: self.planes.reload())  # the session's own: redraw
        self.links_window.resize(1100, 600)
        self.links_window.show()
        return True

    def _on_roi_clicked(self, roi: int) -> None:
        if self.fov.editing:
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
        """Send an operator command; -1 (nothing sent) once the session ended."""
        if self.session.ended:
            self.controls.show_status(f"{name} not sent: the session ended", error=True)
            return -1
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
