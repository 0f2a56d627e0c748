"""The link editor: draw which dendrite (on another plane) belongs to which soma (on the BCI plane).

Left: the BCI plane's somata; right: a dendrite plane (chosen above when there are several), each over its
reference (or mean) image, outlines by kind (somata pale, dendrites cyan, a linked dendrite labelled with its
soma). Click a ROI on the dendrite plane, then its soma on the BCI plane: linked (the ROI becomes a dendrite).
Selecting either highlights its partner. "Unlink" drops the selected dendrite's link, "Soma / dendrite"
changes its kind, "Suggest" links by :mod:`gui.link_match` (overlap across planes, correlated activity),
"Save" writes ``roi_kind.npy``/``roi_parent.npy`` into the plane folders (:class:`gui.link_set.LinkSet`).

Opened by ``rig console --link SESSION_OR_FOLDERS`` and by the live console's "Links…" button.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from gui import link_match
from gui.link_set import LinkSet, LinkSetError, config_plane_folders, link_folders, shown_stat, suggestion_traces
from gui.plane_rois import DENDRITE, KIND_NAMES, SOMA, session_plane_folders
from gui.planes_model import plane_settings
from gui.widgets.plane_view import PlaneView


def suggest_links(links: LinkSet, plane: int) -> tuple[list[tuple[int, int]], bool]:
    """(dendrite, soma) pairs suggested for ``plane`` by :mod:`gui.link_match` (the one call into it), rig
    numbering, and whether activity was used (traces of both planes in the folders) besides position and overlap.
    The candidates are the plane's dendrites when some are marked, else all its ROIs; the BCI plane's somata."""
    dend, soma = links.planes[plane].rois, links.bci.rois
    traces = suggestion_traces(links, plane)
    dendrites = np.flatnonzero(dend.kind == DENDRITE)
    try:
        found = link_match.suggest_links(shown_stat(links.planes[plane]), shown_stat(links.bci),
                                         None if traces is None else traces[0], None if traces is None else traces[1],
                                         dendrites=dendrites if dendrites.size else None,
                                         somata=np.flatnonzero(soma.kind == SOMA))
    except ValueError as exc:
        raise LinkSetError(f"Suggest: {exc}") from exc
    return [(int(d), int(s)) for d, s in enumerate(found.parent) if s >= 0], traces is not None


class LinkEditor(QtWidgets.QWidget):
    """See the module docstring. ``links``: the folders' kinds and links, edited in memory until Save."""

    saved = QtCore.pyqtSignal(list)  # the folders written

    def __init__(self, links: LinkSet, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.links = links
        self.setWindowTitle(f"Links — {links.bci.folder}")
        self.plane = links.other_planes()[0]
        self.selected: tuple[int, int] | None = None  # (plane, ROI)

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(500, 260)
        self.bci_view = PlaneView(self.graphics, links.bci_plane, 0, 1)
        self.plane_view = PlaneView(self.graphics, self.plane, 1, 1)
        self.graphics.scene().sigMouseClicked.connect(self._on_click)
        self.plane_combo = QtWidgets.QComboBox()
        self.plane_combo.addItems([f"plane {p}" for p in links.other_planes()])
        self.plane_combo.currentIndexChanged.connect(lambda i: self.show_plane(links.other_planes()[i]))
        self.image_combo = QtWidgets.QComboBox()
        self.image_combo.addItems(["reference", "mean"])
        self.image_combo.currentTextChanged.connect(lambda _: self._redraw_images())
        self.unlink_button = QtWidgets.QPushButton("Unlink")
        self.unlink_button.clicked.connect(self.unlink_selected)
        self.kind_button = QtWidgets.QPushButton("Soma / dendrite")
        self.kind_button.setToolTip("change the selected ROI's kind (a soma has no link)")
        self.kind_button.clicked.connect(self.toggle_kind)
        self.suggest_button = QtWidgets.QPushButton("Suggest")
        self.suggest_button.setToolTip("link by overlap across planes and correlated activity (gui.link_match)")
        self.suggest_button.clicked.connect(self.suggest)
        self.save_button = QtWidgets.QPushButton("Save")
        self.save_button.setToolTip("write roi_kind.npy and roi_parent.npy into the plane folders")
        self.save_button.clicked.connect(self.save)
        self.table = QtWidgets.QListWidget()
        self.table.setMaximumWidth(220)
        self.table.currentRowChanged.connect(self._on_row)
        self.message = QtWidgets.QLabel("click a ROI on the dendrite plane (right), then its soma on the BCI plane")
        self.message.setWordWrap(True)

        tools = QtWidgets.QHBoxLayout()
        for label, widget in (("dendrite plane", self.plane_combo), ("image", self.image_combo)):
            tools.addWidget(QtWidgets.QLabel(label))
            tools.addWidget(widget)
        for button in (self.unlink_button, self.kind_button, self.suggest_button, self.save_button):
            tools.addWidget(button)
        tools.addStretch(1)
        split = QtWidgets.QHBoxLayout()
        split.addWidget(self.graphics, 1)
        split.addWidget(self.table)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(tools)
        layout.addLayout(split, 1)
        layout.addWidget(self.message)
        self.bci_view.set_rois(links.bci.rois)
        self.bci_view.mean = links.bci.rois.mean_image
        self.show_plane(self.plane)

    # ------------------------------------------------------------------ display
    def show_plane(self, plane: int) -> None:
        self.plane = plane
        self.plane_view.plane = plane
        self.plane_view.set_rois(self.links.planes[plane].rois)
        self.plane_view.mean = self.links.planes[plane].rois.mean_image
        self.selected = None
        self._redraw_images()
        self.redraw()
        for view in (self.bci_view, self.plane_view):
            view.view.autoRange(padding=0.01)

    def _redraw_images(self) -> None:
        for view in (self.bci_view, self.plane_view):
            view.redraw(self.image_combo.currentText())

    def redraw(self) -> None:
        """Outlines, link labels, the list of links and the highlight of the selection and its partner."""
        bci = self.links.bci.rois

        def soma_index(row: int) -> int | None:
            hits = (bci.rows == row).nonzero()[0]
            return int(hits[0]) if hits.size else None

        self.plane_view.draw_outlines(soma_index, lambda _soma: None)
        self.bci_view.draw_outlines(soma_index, lambda _soma: None)
        pairs = self.links.links(self.plane)
        self.bci_view.title.setText(f"plane {self.links.bci_plane} (BCI): {bci.n} somata")
        self.plane_view.title.setText(self.plane_view.summary)
        self.table.blockSignals(True)
        self.table.clear()
        self.table.addItems([f"dendrite {d} → soma {s}" for d, s in pairs])
        self.table.blockSignals(False)
        self._highlight()

    def _highlight(self) -> None:
        bci_marks: list[int] = []
        plane_marks: list[int] = []
        if self.selected is not None:
            plane, roi = self.selected
            if plane == self.links.bci_plane:
                bci_marks.append(roi)
                plane_marks += [d for d, s in self.links.links(self.plane) if s == roi]
            else:
                plane_marks.append(roi)
                soma = self.links.soma_of(plane, roi)
                bci_marks += [] if soma is None else [soma]
        self.bci_view.set_highlight(bci_marks)
        self.plane_view.set_highlight(plane_marks)

    # ------------------------------------------------------------------ clicks
    def frame_to_widget(self, plane: int, y: float, x: float) -> QtCore.QPoint:
        """Viewport coordinates of (y, x) in ``plane``'s view; tests click with it."""
        view = self.bci_view if plane == self.links.bci_plane else self.plane_view
        return self.graphics.mapFromScene(view.view.mapViewToScene(QtCore.QPointF(x, y)))

    def _on_click(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        for view in (self.bci_view, self.plane_view):
            if view.contains(event.scenePos()):
                roi = view.roi_at_scene(event.scenePos())
                if roi is not None:
                    event.accept()
                    self.click(view.plane, roi)
                return

    def click(self, plane: int, roi: int) -> None:
        """A click on ``roi`` of ``plane``: select it, or link the selected dendrite-plane ROI to this soma."""
        previous = self.selected
        try:
            if plane == self.links.bci_plane and previous is not None and previous[0] != self.links.bci_plane:
                self.links.link(previous[0], previous[1], roi)
                self.selected = None
                self.message.setText(f"linked plane {previous[0]} ROI {previous[1]} → soma {roi} (not saved yet)")
            else:
                self.selected = (plane, roi)
                self.message.setText(self._describe(plane, roi))
        except LinkSetError as exc:
            self.message.setText(str(exc))
        self.redraw()

    def _describe(self, plane: int, roi: int) -> str:
        if plane == self.links.bci_plane:
            dendrites = [d for d, s in self.links.links(self.plane) if s == roi]
            return f"soma {roi}: dendrites {dendrites} on plane {self.plane}" if dendrites else \
                f"soma {roi}: no dendrite on plane {self.plane}"
        rois = self.links.planes[plane].rois
        soma = self.links.soma_of(plane, roi)
        return (f"plane {plane} ROI {roi} ({KIND_NAMES[int(rois.kind[roi])]})"
                + (f" → soma {soma}" if soma is not None else ": now click its soma on the BCI plane"))

    def _on_row(self, row: int) -> None:
        pairs = self.links.links(self.plane)
        if 0 <= row < len(pairs):
            self.selected = (self.plane, pairs[row][0])
            self.message.setText(self._describe(*self.selected))
            self._highlight()

    # ------------------------------------------------------------------ actions
    def _selected_dendrite(self) -> tuple[int, int] | None:
        if self.selected is None or self.selected[0] == self.links.bci_plane:
            self.message.setText("select a ROI on the dendrite plane first")
            return None
        return self.selected

    def unlink_selected(self) -> None:
        chosen = self._selected_dendrite()
        if chosen is not None:
            self.links.unlink(*chosen)
            self.message.setText(f"plane {chosen[0]} ROI {chosen[1]} unlinked (not saved yet)")
            self.redraw()

    def toggle_kind(self) -> None:
        chosen = self._selected_dendrite()
        if chosen is not None:
            now = int(self.links.planes[chosen[0]].rois.kind[chosen[1]])
            self.links.set_kind(*chosen, SOMA if now == DENDRITE else DENDRITE)
            self.message.setText(self._describe(*chosen) + " (not saved yet)")
            self.redraw()

    def suggest(self) -> None:
        try:
            pairs, by_activity = suggest_links(self.links, self.plane)
            n = self.links.apply(self.plane, pairs)
        except LinkSetError as exc:
            self.message.setText(str(exc))
            return
        how = "position, overlap and activity" if by_activity else \
            "position and overlap only (no traces of both planes)"
        self.message.setText(f"suggested {len(pairs)} links by {how}: {n} changed on plane {self.plane} (check "
                             "them, then Save)")
        self.redraw()

    def save(self) -> bool:
        try:
            written = self.links.save()
        except LinkSetError as exc:
            self.message.setText(str(exc))
            return False
        self.message.setText("saved roi_kind.npy and roi_parent.npy in " + ", ".join(map(str, written))
                             if written else "nothing changed: nothing saved")
        if written:
            self.saved.emit(written)
        return True


def live_link_editor(session_dir: str | Path | None, resolved: dict[str, Any]) -> LinkEditor:
    """The editor as the live console opens it: on the suite2p folders the rig config names (saved for the next
    session), else on the session's own plane folders. Raises :class:`LinkSetError` naming what is missing."""
    n_planes, bci = plane_settings(resolved)
    folders = config_plane_folders(resolved)
    if not folders and session_dir:
        folders = session_plane_folders(session_dir, bci)
    if len(folders) < 2:
        raise LinkSetError(f"no plane folders to link: the config names none and the session "
                           f"({session_dir or 'unknown'}) has {len(folders)} of its {n_planes} planes' ROIs yet")
    only_cells = bool(((resolved.get("acquisition") or {}).get("rois") or {}).get("only_cells", True))
    return LinkEditor(LinkSet(folders, bci, only_cells))


def open_link_editor(paths: list[str], bci_plane: int | None = None) -> LinkEditor:
    """``rig console --link``: the editor on a session folder, a suite2p folder of planes, or plane folders."""
    folders, bci, only_cells = link_folders(paths, bci_plane)
    return LinkEditor(LinkSet(folders, bci, only_cells))
