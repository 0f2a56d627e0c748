"""The review window: a finished session's field of view, and any ROI's traces against the trial events.

``rig console SESSION_FOLDER`` opens it. Like suite2p's GUI: the mean (or reference) image with the ROI
outlines on the left; click an ROI (or type its number) and its fluorescence F with the neuropil, its dF/F
as the decoder computed it, and the session's trial events appear on the right on one time axis
(seconds from the first frame; drag to pan, wheel to zoom, the three plots move together). Nothing here
talks to a rig: there are no controls, only the files of the session (:mod:`gui.review`).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtGui, QtWidgets

from gui.plane_rois import session_plane_folders
from gui.planes_model import plane_settings
from gui.review import PROTOCOL_EVENTS, ReviewSession, load_rois_for_review
from gui.rois import RoiLoadError, load_roi_outlines
from gui.roles import RoleEdit
from gui.widgets.fov import FovWidget
from gui.widgets.plots import state_shading
from gui.widgets.style import (
    FAILED_RGB,
    HIT_RGB,
    MISS_RGB,
    PULSE_RGB,
    REWARD_RGB,
    TRIAL_STATE_RGBA,
    trial_state_palette,
)
from rig.core.codes import TrialState

F_RGB = (60, 140, 255)  # suite2p draws F in blue and the neuropil in red
FNEU_RGB = (230, 80, 80)
DFF_RGB = (230, 230, 230)
EVENT_ROWS = {"trial start": 3.0, "hit / miss": 2.0, "reward": 1.0, "protocol": 0.0}
#: Bins of the trial-state shading over the whole session (drawn once per ROI, whatever the length).
SHADE_BINS = 4000


class TracePlots(QtWidgets.QWidget):
    """F + neuropil, dF/F with the trial-state shading, and the event raster, on one linked time axis."""

    def __init__(self, review: ReviewSession, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.review = review
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(360, 420)
        g = self.graphics
        self.f_plot = g.addPlot(row=0, col=0, title="click an ROI: its F (blue) and neuropil (red)")
        self.f_plot.addLegend(offset=(5, 5))
        self.f_curve = self.f_plot.plot(pen=pg.mkPen(F_RGB, width=1), name="F")
        self.fneu_curve = self.f_plot.plot(pen=pg.mkPen(FNEU_RGB, width=1), name="Fneu")
        self.dff_plot = g.addPlot(row=1, col=0, title="dF/F (decoder), trial state shaded")
        self.dff_plot.setXLink(self.f_plot)
        self.shade = pg.ImageItem(axisOrder="row-major")
        names = {int(s): s.name.lower() for s in TrialState}
        lut = np.array(((0, 0, 0, 0), *trial_state_palette(names)), dtype=np.uint8)
        self.shade.setLookupTable(lut)
        self.shade.setZValue(-10)
        self.dff_plot.addItem(self.shade, ignoreBounds=True)
        self.dff_curve = self.dff_plot.plot(pen=pg.mkPen(DFF_RGB, width=1))
        self.events_plot = g.addPlot(row=2, col=0, title="trial events and rewards")
        self.events_plot.setXLink(self.f_plot)
        self.events_plot.setYRange(-0.5, 3.5, padding=0)
        self.events_plot.setMouseEnabled(y=False)
        self.events_plot.getAxis("left").setTicks([[(v, k) for k, v in EVENT_ROWS.items()]])
        self.events_plot.setLabel("bottom", "seconds from the first frame")
        for plot in (self.f_plot, self.dff_plot):
            plot.setDownsampling(auto=True, mode="peak")  # hours of frames stay quick to draw
            plot.setClipToView(True)
        g.ci.layout.setRowStretchFactor(0, 3)
        g.ci.layout.setRowStretchFactor(1, 3)
        g.ci.layout.setRowStretchFactor(2, 2)
        self.trial_starts = pg.ScatterPlotItem(symbol="|", size=10, pen=pg.mkPen(150, 150, 150), brush=None)
        self.outcomes = pg.ScatterPlotItem(symbol="o", size=7, pen=None)
        self.reward_ticks = pg.ScatterPlotItem(symbol="|", size=14, pen=None)
        self.protocol_marks = pg.ScatterPlotItem(symbol="d", size=9, pen=None, brush=pg.mkBrush(241, 196, 15))
        for item in (self.trial_starts, self.outcomes, self.reward_ticks, self.protocol_marks):
            self.events_plot.addItem(item)
        self.protocol_lines: list[pg.InfiniteLine] = []
        self._draw_events()
        self.summary = QtWidgets.QLabel("")
        self.summary.setWordWrap(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.summary)
        self.roi: int | None = None

    def _draw_events(self) -> None:
        """The events do not depend on the ROI: drawn once."""
        r = self.review
        starts = [t for t, _ in r.events_of("trial_start")]
        self.trial_starts.setData(starts, np.full(len(starts), EVENT_ROWS["trial start"]))
        outcomes = r.events_of("hit", "miss", "trial_aborted")
        self.outcomes.setData([t for t, _ in outcomes], np.full(len(outcomes), EVENT_ROWS["hit / miss"]),
                              brush=[pg.mkBrush(HIT_RGB if e.get("event") == "hit" else MISS_RGB)
                                     for _, e in outcomes])
        t, delivered, reward = r.reward_times()
        self.reward_ticks.setData(t, np.full(len(t), EVENT_ROWS["reward"]),
                                  pen=[pg.mkPen(FAILED_RGB if not d else (REWARD_RGB if rw else PULSE_RGB), width=2)
                                       for d, rw in zip(delivered, reward, strict=True)])
        protocol = r.events_of(*PROTOCOL_EVENTS)
        self.protocol_marks.setData([t for t, _ in protocol], np.full(len(protocol), EVENT_ROWS["protocol"]))
        for when, event in protocol:
            kind = str(event.get("event"))
            colour = FAILED_RGB if kind.endswith("_failed") else (241, 196, 15)
            for plot, labelled in ((self.dff_plot, True), (self.f_plot, False)):
                line = pg.InfiniteLine(pos=when, angle=90, movable=False,
                                       pen=pg.mkPen(*colour, 160, style=QtCore.Qt.PenStyle.DashLine),
                                       label=kind if labelled else None,
                                       labelOpts={"position": 0.92, "color": colour, "rotateAxis": (1, 0)})
                plot.addItem(line, ignoreBounds=True)
                self.protocol_lines.append(line)

    def show_roi(self, roi: int) -> None:
        """Plot ROI ``roi``'s traces over the whole session (the time zoom stays from one ROI to the next)."""
        first = self.roi is None
        self.roi = roi
        tr = self.review.traces(roi)
        self.f_curve.setData(tr.t_frames, tr.F)
        self.fneu_curve.setData(tr.t_frames, tr.Fneu)
        self.dff_curve.setData(tr.t_decisions, tr.dff)
        self.f_plot.setTitle(f"ROI {roi}: F (blue) and neuropil (red)")
        self.dff_plot.setTitle(f"ROI {roi}: dF/F (decoder), trial state shaded")
        self._shade(tr.t_decisions, tr.dff)
        finite = tr.F[np.isfinite(tr.F)]
        self.summary.setText(f"ROI {roi}: {len(tr.F)} frames of F (median {np.median(finite):.1f})"
                             if finite.size else f"ROI {roi}: no F recorded (no acquisition/frames.rec)")
        if first:
            self.f_plot.autoRange()
        for plot in (self.f_plot, self.dff_plot):  # another ROI has another scale; the time zoom stays
            plot.enableAutoRange(axis=pg.ViewBox.YAxis)

    def _shade(self, t: np.ndarray, dff: np.ndarray) -> None:
        """Trial state behind the dF/F, over the height of this ROI's trace."""
        decisions = self.review.decisions
        if decisions is None or not len(t):
            return
        t0 = float(t[0])
        t1 = max(float(t[-1]), t0 + 1.0)
        frame_gap = 5.0 * (t1 - t0) / len(t) + 0.5  # a pause in the decisions stays unshaded
        image = state_shading(t, decisions["trial_state"], t0, t1, frame_gap, bins=SHADE_BINS)
        self.shade.setImage(image, autoLevels=False, levels=(0, len(TRIAL_STATE_RGBA)))
        finite = dff[np.isfinite(dff)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        self.shade.setRect(QtCore.QRectF(t0, lo, t1 - t0, max(hi - lo, 1e-3)))


class ReviewWindow(QtWidgets.QMainWindow):
    """A finished session, read-only: field of view + ROI picker | traces and events."""

    def __init__(self, review: ReviewSession) -> None:
        super().__init__()
        self.review = review
        self.setWindowTitle(f"bci-rig review — {review.title()}")
        self.header = QtWidgets.QLabel(f"<b>REVIEW</b> (read-only) · {review.title()}<br>{review.summary_line()}")
        self.header.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.header.setWordWrap(True)
        self.notes = QtWidgets.QLabel("; ".join(review.notes))
        self.notes.setWordWrap(True)
        self.notes.setStyleSheet("color: #e67e22;")
        self.notes.setVisible(bool(review.notes))

        self.fov = FovWidget()
        self.fov.set_editing(False)
        self.roi_spin = QtWidgets.QSpinBox()
        self.roi_spin.setRange(0, max(review.n_rois - 1, 0))
        self.roi_spin.setToolTip("the ROI to plot (the rig's ROI index, as in the decoder's ensembles)")
        self.roi_spin.setKeyboardTracking(False)
        picker = QtWidgets.QHBoxLayout()
        picker.addWidget(QtWidgets.QLabel(f"ROI (0–{review.n_rois - 1}):"))
        picker.addWidget(self.roi_spin)
        picker.addStretch(1)
        # a baseline detected with `rig detect SESSION`: choose the next session's ROIs and ensembles from it
        self.pick_button = QtWidgets.QPushButton("Pick ensembles from detection…")
        self.pick_button.setToolTip("rank the cells rig detect found in this session's baseline (SESSION/detect), "
                                    "pick up/down, draw ROIs; saved into the rig config you choose")
        self.pick_button.setVisible((review.folder / "detect").is_dir())
        self.pick_button.clicked.connect(self.open_picker)
        picker.addWidget(self.pick_button)
        self.picker_window: QtWidgets.QWidget | None = None
        # several imaging planes: the other planes beside the BCI plane, and the link editor on this session
        _, self.bci_plane = plane_settings(review.config)
        self.plane_folders = {p: f for p, f in session_plane_folders(review.folder, self.bci_plane).items()
                              if p != self.bci_plane}
        self.links_button = QtWidgets.QPushButton("Links…")
        self.links_button.setToolTip("draw which dendrite belongs to which soma; saved into this session's "
                                     "acquisition/planes/planeK/rois (what rig dendrites reads)")
        self.links_button.setVisible(bool(self.plane_folders))
        self.links_button.clicked.connect(self.open_links)
        picker.addWidget(self.links_button)
        self.links_window: QtWidgets.QWidget | None = None
        left = QtWidgets.QWidget()
        left_layout = QtWidgets.QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.fov, 1)
        left_layout.addLayout(picker)
        self.plots = TracePlots(review)
        self.splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.plots)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.addWidget(self.header)
        layout.addWidget(self.notes)
        layout.addWidget(self.splitter, 1)
        self.setCentralWidget(central)
        self.setMinimumSize(800, 500)
        screen = QtGui.QGuiApplication.primaryScreen()
        available = screen.availableGeometry() if screen is not None else QtCore.QRect(0, 0, 1600, 950)
        self.resize(max(800, min(1600, available.width())), max(500, min(950, available.height())))

        self.roles = RoleEdit()
        up, down = review.ensembles()
        self.roles.set_applied(up, down)
        rois, problem = load_rois_for_review(review)
        self.rois = rois
        if rois is not None:
            self.fov.set_rois(rois, self.roles)
            self.fov.show_stills(rois.mean_image)
        else:
            self.fov.show_stills(None)
            self.fov.show_roi_problem(f"no field of view: {problem} — pick ROIs by number below")
        if self.plane_folders:
            self.fov.set_planes([self.bci_plane, *self.plane_folders], self.bci_plane)
            self.show_planes()
        self.fov.roi_clicked.connect(self.select_roi)
        self.roi_spin.valueChanged.connect(self.select_roi)
        if review.n_rois:
            self.select_roi(0)

    def open_picker(self) -> None:
        """The ROI picker (:mod:`gui.roi_picker`) on this session's detection, in its own window."""
        from gui.roi_folder import RoiFolderError  # noqa: PLC0415
        from gui.roi_picker import session_picker  # noqa: PLC0415

        try:  # the session's own settings; saved into the config file it was started from
            self.picker_window = session_picker(self.review.folder, self.review.config, self.review.folder / "detect")
        except RoiFolderError as exc:
            self.notes.setText(str(exc))
            self.notes.setVisible(True)
            return
        self.picker_window.resize(1200, 700)
        self.picker_window.show()

    def show_planes(self) -> None:
        """Every other plane's ROIs (by kind, with their links) over its mean image or reference."""
        only_cells = bool(((self.review.config.get("acquisition") or {}).get("rois") or {}).get("only_cells", True))
        n_somata = self.rois.n_stat if self.rois is not None else None
        problems = []
        for plane, folder in self.plane_folders.items():
            try:
                rois = load_roi_outlines(folder, only_cells=only_cells, n_somata=n_somata)
            except RoiLoadError as exc:
                problems.append(str(exc))
                continue
            self.fov.set_plane_rois(plane, rois)
            self.fov.plane_views[plane].mean = rois.mean_image
            self.fov.plane_views[plane].redraw(self.fov.showing)
        if problems:
            self.notes.setText("; ".join([*self.review.notes, *problems]))
            self.notes.setVisible(True)

    def open_links(self) -> None:
        """The link editor (:mod:`gui.link_editor`) on this session's planes; its saves redraw the planes here."""
        from gui.link_editor import open_link_editor  # noqa: PLC0415
        from gui.link_set import LinkSetError  # noqa: PLC0415

        try:
            self.links_window = open_link_editor([str(self.review.folder)])
        except LinkSetError as exc:
            self.notes.setText(str(exc))
            self.notes.setVisible(True)
            return
        self.links_window.saved.connect(lambda _folders: self.show_planes())
        self.links_window.resize(1100, 600)
        self.links_window.show()

    def select_roi(self, roi: int) -> None:
        """Show ROI ``roi``: outline highlighted, its traces plotted."""
        if self.roi_spin.value() != roi:
            self.roi_spin.setValue(roi)  # emits valueChanged, which comes back here once
            return
        self.fov.update_roles(self.roles, roi)
        self.plots.show_roi(roi)

