"""Field of view: the live (decimated) registered image or the reference, with ROI outlines by role.

ROI outlines are drawn into one RGBA overlay image (cheap for hundreds of ROIs) in full-frame
coordinates; the decimated preview image is stretched over the same rectangle, so outlines line up
whatever the preview decimation. Clicking an ROI assigns it the role chosen in "click sets"; the edits
are pending until "Apply ensembles" sends them to the rig (``set_ensembles``). Without editing (the
session ended, or a finished session under review) a click only selects the ROI.

With several imaging planes (docs/PLANES.md) the other planes stand beside the BCI plane (which stays first, in
the same coordinates), each a :class:`~gui.widgets.plane_view.PlaneView` with its ROIs by kind and its links.
Selecting or hovering over a dendrite highlights its soma on the BCI plane, and a soma its dendrites. With one
plane none of this is created: the field of view is the single-plane one.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from gui.rois import RoiOutlines
from gui.roles import RoleEdit
from gui.widgets.plane_view import (
    SOMA_MARK_RGB,
    PlaneView,
    display_levels,
    highlight_item,
    outline_points,
    view_title,
)
from gui.widgets.style import DOWN_RGB, OTHER_RGBA, SELECTED_RGB, UP_RGB

#: The "mean" view is an exponential running mean over about this many previews (~4 per second).
MEAN_PREVIEWS = 12


class FovWidget(QtWidgets.QWidget):
    """Image + outlines + the ROI-role editing controls."""

    roi_clicked = QtCore.pyqtSignal(int)
    apply_requested = QtCore.pyqtSignal()
    revert_requested = QtCore.pyqtSignal()
    load_requested = QtCore.pyqtSignal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(200, 160)
        self.view: pg.ViewBox = self.graphics.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item.setZValue(10)
        self.view.addItem(self.image_item)
        self.view.addItem(self.overlay_item)
        self.graphics.scene().sigMouseClicked.connect(self._on_scene_click)
        self._labels: list[pg.TextItem] = []

        self.live_radio = QtWidgets.QRadioButton("latest")
        self.mean_radio = QtWidgets.QRadioButton("mean")
        self.mean_radio.setToolTip(f"running mean of the previews (about the last {MEAN_PREVIEWS})")
        self.reference_radio = QtWidgets.QRadioButton("reference")
        self.live_radio.setChecked(True)
        for radio in (self.live_radio, self.mean_radio, self.reference_radio):
            radio.toggled.connect(lambda checked: checked and self._redraw_all())
        self.role_combo = QtWidgets.QComboBox()
        self.role_combo.addItems(["up", "down", "none"])
        self.role_combo.setToolTip("role given to an ROI when you click it")
        self.apply_button = QtWidgets.QPushButton("Apply ensembles")
        self.apply_button.setToolTip("send the edited up/down ensembles to the decoder (set_ensembles); "
                                     "the decoder then needs a new calibration")
        self.apply_button.clicked.connect(self.apply_requested)
        self.revert_button = QtWidgets.QPushButton("Revert")
        self.revert_button.clicked.connect(self.revert_requested)
        self.load_button = QtWidgets.QPushButton("Load ROIs…")
        self.load_button.setToolTip("read ROI outlines from a suite2p plane folder (stat.npy)")
        self.load_button.clicked.connect(self.load_requested)
        self.shift_label = QtWidgets.QLabel("no image yet")
        self.roi_label = QtWidgets.QLabel("ROIs: not loaded")
        self.roi_label.setWordWrap(True)
        self.ensemble_label = QtWidgets.QLabel("")
        self.ensemble_label.setWordWrap(True)
        self.shift_label.setWordWrap(True)
        self.planes_label = QtWidgets.QLabel("")  # several planes: each plane's ROIs and the selection's partner
        self.planes_label.setWordWrap(True)
        self.planes_label.setVisible(False)

        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("show:"))
        top.addWidget(self.live_radio)
        top.addWidget(self.mean_radio)
        top.addWidget(self.reference_radio)
        top.addStretch(1)
        top.addWidget(self.load_button)
        self.edit_row = QtWidgets.QWidget()
        edit = QtWidgets.QHBoxLayout(self.edit_row)
        edit.setContentsMargins(0, 0, 0, 0)
        edit.addWidget(QtWidgets.QLabel("click sets:"))
        edit.addWidget(self.role_combo)
        edit.addWidget(self.apply_button)
        edit.addWidget(self.revert_button)
        edit.addStretch(1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.shift_label)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.planes_label)
        layout.addWidget(self.edit_row)
        layout.addWidget(self.ensemble_label)
        layout.addWidget(self.roi_label)
        self.editing = True  # a click assigns the chosen role; False: it only selects the ROI

        self.rois: RoiOutlines | None = None
        self._overlay: np.ndarray | None = None
        self._live: np.ndarray | None = None
        self._live_levels: tuple[float, float] | None = None
        self._mean: np.ndarray | None = None  # running mean of the previews, allocated at the first one
        self._mean_levels: tuple[float, float] | None = None
        self._ref_levels: tuple[float, float] | None = None
        self._selected: int | None = None
        self._apply_allowed = True
        self._pending = False
        # several planes (set_planes): the other planes' views, the BCI plane's title, highlight and soma marks
        self.bci_plane = 0
        self.plane_views: dict[int, PlaneView] = {}
        self._bci_title: pg.LabelItem | None = None
        self._bci_highlight: pg.ScatterPlotItem | None = None
        self._soma_marks: pg.ScatterPlotItem | None = None
        self._roles = RoleEdit()
        self._focus: tuple[int, int] | None = None  # the selected ROI as (plane, ROI)
        self._hover: tuple[int, int] | None = None
        self.marked: dict[int, list[int]] = {}  # plane -> highlighted ROIs (a selection or hover and its partners)

    # ------------------------------------------------------------------ data in
    def set_rois(self, rois: RoiOutlines, roles: RoleEdit, problem: str = "") -> None:
        self.rois = rois
        Ly, Lx = rois.shape
        self._overlay = np.zeros((Ly, Lx, 4), dtype=np.uint8)
        self._ref_levels = display_levels(rois.reference) if rois.reference is not None else None
        text = f"ROIs: {rois.n} from {rois.folder}"
        if rois.notes:
            text += " — " + "; ".join(rois.notes)
        if problem:
            text += f" — {problem}"
        self.roi_label.setText(text)
        self.roi_label.setStyleSheet("color: #e67e22;" if problem else "")
        self.update_roles(roles)
        self._redraw_image()
        self.view.autoRange(padding=0.01)

    def show_roi_problem(self, text: str) -> None:
        self.roi_label.setText(text)
        self.roi_label.setStyleSheet("color: #e74c3c;")

    def set_live(self, image: np.ndarray, dy: float, dx: float, corr: float, frame: int) -> None:
        self._live = image
        self._live_levels = display_levels(image)
        if self._mean is None or self._mean.shape != image.shape:
            self._mean = np.array(image, dtype=np.float32)
        else:
            self._mean += (image - self._mean) * (1.0 / MEAN_PREVIEWS)
        self._mean_levels = display_levels(self._mean) if self.mean_radio.isChecked() else None
        self.shift_label.setText(f"frame {frame}   shift dy {dy:+.2f} dx {dx:+.2f} px   corr {corr:.3f}")
        if not self.reference_radio.isChecked():
            self._redraw_image()

    def update_roles(self, roles: RoleEdit, selected: int | None = None) -> None:
        """Recolour every outline for the current (possibly pending) roles."""
        self._selected = selected
        self._roles = roles
        if selected is not None:
            self._focus = (self.bci_plane, selected)
        rois, overlay = self.rois, self._overlay
        pending = " (edited, not applied)" if roles.pending else ""
        self.ensemble_label.setText(f"up: {sorted(roles.up)}   down: {sorted(roles.down)}{pending}")
        self.ensemble_label.setStyleSheet("color: #f1c40f;" if roles.pending else "")
        self._pending = roles.pending
        self.apply_button.setEnabled(roles.pending and self._apply_allowed)
        self.revert_button.setEnabled(roles.pending)
        if rois is None or overlay is None:
            return
        overlay[:] = 0
        for i in range(rois.n):
            overlay[rois.outline_y[i], rois.outline_x[i]] = OTHER_RGBA
        for role_ids, rgb in ((roles.up, UP_RGB), (roles.down, DOWN_RGB)):
            for i in role_ids:
                if 0 <= i < rois.n:
                    overlay[rois.outline_y[i], rois.outline_x[i]] = (*rgb, 255)
        if selected is not None and 0 <= selected < rois.n:
            overlay[rois.outline_y[selected], rois.outline_x[selected]] = (*SELECTED_RGB, 255)
        self.overlay_item.setImage(overlay, autoLevels=False, levels=(0, 255))
        self.overlay_item.setRect(QtCore.QRectF(0, 0, rois.shape[1], rois.shape[0]))
        self._update_labels(roles)
        if self.plane_views:
            self.draw_links()

    def _update_labels(self, roles: RoleEdit) -> None:
        for item in self._labels:
            self.view.removeItem(item)
        self._labels.clear()
        if self.rois is None:
            return
        for role_ids, rgb in ((roles.up, UP_RGB), (roles.down, DOWN_RGB)):
            for i in role_ids:
                if 0 <= i < self.rois.n:
                    label = pg.TextItem(str(i), color=rgb, anchor=(0.5, 1.2))
                    y, x = self.rois.centers[i]
                    label.setPos(x, y)
                    label.setZValue(11)
                    self.view.addItem(label)
                    self._labels.append(label)

    def _redraw_all(self) -> None:
        self._redraw_image()
        for view in self.plane_views.values():
            view.redraw(self.showing)

    @property
    def showing(self) -> str:
        """What the views show: latest | mean | reference."""
        return "reference" if self.reference_radio.isChecked() else "mean" if self.mean_radio.isChecked() \
            else "latest"

    def _redraw_image(self) -> None:
        if self.reference_radio.isChecked():
            image = self.rois.reference if self.rois is not None else None
            levels = self._ref_levels
        elif self.mean_radio.isChecked():
            if self._mean is not None and self._mean_levels is None:
                self._mean_levels = display_levels(self._mean)
            image, levels = self._mean, self._mean_levels
        else:
            image, levels = self._live, self._live_levels
        if image is None:
            self.image_item.clear()
            return
        self.image_item.setImage(image, autoLevels=False, levels=levels)
        height, width = image.shape
        if self.rois is not None:
            # The preview keeps every step-th pixel (step = frame size / preview size, rounded): each
            # preview pixel covers step x step frame pixels from the top-left corner.
            height *= max(1, round(self.rois.shape[0] / image.shape[0]))
            width *= max(1, round(self.rois.shape[1] / image.shape[1]))
        self.image_item.setRect(QtCore.QRectF(0, 0, width, height))

    def set_editing(self, editing: bool) -> None:
        """Offer the ensemble editing (a running session) or not (ended, or under review): clicks then only select."""
        self.editing = editing
        self.edit_row.setVisible(editing)

    def show_stills(self, mean_image: np.ndarray | None) -> None:
        """A finished session: no live image; the reference and, when the session kept one, the mean image."""
        self.live_radio.setVisible(False)
        self.load_button.setVisible(False)
        self.mean_radio.setToolTip("the mean image of the session's ROI detection (ops.npy meanImg)")
        self.mean_radio.setVisible(mean_image is not None)
        if mean_image is not None:
            self._mean = np.asarray(mean_image, dtype=np.float32)
            self._mean_levels = display_levels(self._mean)
        (self.mean_radio if mean_image is not None else self.reference_radio).setChecked(True)
        self.shift_label.setText("click an ROI to plot its F, dF/F and the trial events")
        self._redraw_image()

    def set_apply_allowed(self, allowed: bool, why: str = "") -> None:
        """The decoder accepts new ensembles only outside BCI; ``why`` says so on the button."""
        if allowed != self._apply_allowed:
            self._apply_allowed = allowed
            self.apply_button.setEnabled(self._pending and allowed)
            self.apply_button.setText("Apply ensembles" if allowed else f"Apply ensembles ({why})")

    # ------------------------------------------------------------------ clicks
    def frame_to_widget(self, y: float, x: float) -> QtCore.QPoint:
        """Widget (viewport) coordinates of full-frame position (y, x); used by tests to click an ROI."""
        scene = self.view.mapViewToScene(QtCore.QPointF(x, y))
        return self.graphics.mapFromScene(scene)

    def _on_scene_click(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        for plane, view in self.plane_views.items():
            if view.contains(event.scenePos()):
                roi = view.roi_at_scene(event.scenePos())
                if roi is not None:
                    event.accept()
                    self.select_plane_roi(plane, roi)
                return
        if self.rois is None:
            return
        pos = self.view.mapSceneToView(event.scenePos())
        roi = self.rois.roi_at(pos.y(), pos.x())
        if roi is not None:
            event.accept()
            self.roi_clicked.emit(roi)

    @property
    def click_role(self) -> str:
        return self.role_combo.currentText()

    # ------------------------------------------------------------------ several planes
    def set_planes(self, planes: list[int], bci_plane: int) -> None:
        """Show these planes: the BCI plane first (the existing view), then each other one beside it."""
        self.bci_plane = bci_plane
        if self._bci_title is None:
            self._bci_title = view_title(self.view, f"plane {bci_plane} (BCI)")
            self.planes_label.setVisible(True)
            self._bci_highlight = highlight_item()
            self._soma_marks = pg.ScatterPlotItem(size=7, symbol="o", pen=pg.mkPen(*SOMA_MARK_RGB, width=2),
                                                  brush=None)
            self._soma_marks.setZValue(11)
            self.view.addItem(self._bci_highlight)
            self.view.addItem(self._soma_marks)
            self.graphics.scene().sigMouseMoved.connect(self._on_hover)
        for plane in sorted(planes):
            if plane != bci_plane and plane not in self.plane_views:
                self.plane_views[plane] = PlaneView(self.graphics, plane, len(self.plane_views) + 1, MEAN_PREVIEWS)
                if self.rois is not None:
                    self.plane_views[plane].frame_shape = self.rois.shape

    def set_plane_rois(self, plane: int, rois: RoiOutlines) -> None:
        self.plane_views[plane].set_rois(rois)
        self.draw_links()
        for view in (self.view, self.plane_views[plane].view):  # the BCI plane's box narrowed when planes came
            view.autoRange(padding=0.01)

    def set_plane_live(self, plane: int, image: np.ndarray) -> None:
        view = self.plane_views[plane]
        if view.frame_shape is None and self.rois is not None:
            view.frame_shape = self.rois.shape
        view.set_live(image, self.showing)

    def soma_index(self, row: int) -> int | None:
        """The BCI plane's ROI index of its ``stat.npy`` row ``row`` (None when that ROI is not shown)."""
        if self.rois is None:
            return None
        hits = np.flatnonzero(self.rois.rows == row)
        return int(hits[0]) if hits.size else None

    def _soma_rgb(self, soma: int) -> tuple[int, ...] | None:
        return UP_RGB if soma in self._roles.up else DOWN_RGB if soma in self._roles.down else None

    def draw_links(self) -> None:
        """Every plane's outlines by kind with its links, and a mark on each BCI soma that has a dendrite."""
        somata: set[int] = set()
        for view in self.plane_views.values():
            view.draw_outlines(self.soma_index, self._soma_rgb)
            if view.rois is not None:
                linked = [self.soma_index(int(row)) for row in view.rois.parent if row >= 0]
                somata.update(s for s in linked if s is not None)
        if self._soma_marks is not None and self.rois is not None:
            centres = self.rois.centers[sorted(somata)] if somata else np.zeros((0, 2))
            self._soma_marks.setData(x=centres[:, 1] + 0.5, y=centres[:, 0] + 0.5)
        self._show_partners(self._hover or self._focus)

    def partners(self, plane: int, roi: int) -> dict[int, list[int]]:
        """The ROIs linked to ``roi`` of ``plane``, by plane: a dendrite's soma, or a soma's dendrites."""
        if plane != self.bci_plane:
            view = self.plane_views.get(plane)
            if view is None or view.rois is None or not 0 <= roi < view.rois.n or view.rois.parent[roi] < 0:
                return {}
            soma = self.soma_index(int(view.rois.parent[roi]))
            return {} if soma is None else {self.bci_plane: [soma]}
        if self.rois is None or not 0 <= roi < self.rois.n:
            return {}
        row = int(self.rois.rows[roi])
        found = {}
        for other, view in self.plane_views.items():
            if view.rois is not None:
                dendrites = np.flatnonzero(view.rois.parent == row)
                if dendrites.size:
                    found[other] = [int(d) for d in dendrites]
        return found

    def select_plane_roi(self, plane: int, roi: int) -> None:
        """Select ``roi`` of ``plane`` (the BCI plane's selection goes through ``update_roles``)."""
        self._focus = (plane, roi)
        self._show_partners(self._hover or self._focus)

    def _show_partners(self, focus: tuple[int, int] | None) -> None:
        """Highlight ``focus`` and its partners on every plane (nothing when None)."""
        marked = {} if focus is None else self.partners(*focus)
        if focus is not None:
            marked.setdefault(focus[0], []).append(focus[1])
        self.marked = marked
        if self._bci_highlight is not None and self.rois is not None:
            x, y = outline_points(self.rois, marked.get(self.bci_plane, []))
            self._bci_highlight.setData(x=x, y=y)
        lines = []
        for plane, view in self.plane_views.items():
            view.set_highlight(marked.get(plane, []))
            lines.append(view.summary + (f" · {self._describe(plane, marked[plane][0])}" if marked.get(plane) else ""))
        self.planes_label.setText("\n".join(lines))

    def _describe(self, plane: int, roi: int) -> str:
        view = self.plane_views[plane]
        if view.rois is None or not 0 <= roi < view.rois.n:
            return ""
        soma = self.partners(plane, roi).get(self.bci_plane)
        kind = "dendrite" if view.rois.kind[roi] else "soma"
        return f"ROI {roi} ({kind})" + (f" → soma {soma[0]}" if soma else "")

    def _on_hover(self, scene_pos: QtCore.QPointF) -> None:
        """Hovering a ROI highlights its partners across planes; cheap (a label lookup), redrawn on change only."""
        hover = None
        views = [(self.bci_plane, self.view, self.rois)] + [(p, v.view, v.rois) for p, v in self.plane_views.items()]
        for plane, view, rois in views:
            if rois is not None and view.sceneBoundingRect().contains(scene_pos):
                pos = view.mapSceneToView(scene_pos)
                roi = rois.roi_at(pos.y(), pos.x())
                hover = None if roi is None else (plane, roi)
                break
        if hover != self._hover:
            self._hover = hover
            self._show_partners(hover or self._focus)
