"""The ROI picker: choose the up/down ensembles of the next session, and draw, move or delete ROIs by hand.

Opened by ``rig rank SUITE2P_DIR --gui`` on ``rig detect``'s folder (or any suite2p folder), before a session,
and from the console (live: "Pick ensembles…"; review: "Pick ensembles from detection…") through
:func:`session_picker`. Left: the mean (or max) image with every ROI's outline (up green, down orange, other
cells white, non-cells grey). Right: the cells ranked as BCI targets (:mod:`gui.ranking`). What a click on the
image does is the mode: *pick* gives the clicked ROI the role chosen beside it; *draw* puts a round ROI of the
cell diameter there (CLOOSE-style); *move* moves the selected ROI to the click; *delete* removes the clicked
ROI. "Save ROIs" writes ``stat.npy``/``iscell.npy`` in suite2p layout and re-measures the traces; "Save to
config" writes ``suite2p_dir`` and the ensembles into the rig config the next session runs with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from gui.ensemble_file import ConfigWriteError, write_choice
from gui.ranking import CellStats, EnsembleChoiceError, RankSettings, cell_stats, check_choice, problems, suggest
from gui.roi_folder import (
    RoiFolder,
    RoiFolderError,
    add_row_kind,
    delete_row_kind,
    disk_roi,
    load_roi_folder,
    moved_roi,
    save_rois,
    traces,
)

ROLE_PEN = {"up": (80, 220, 120), "down": (255, 160, 40), "cell": (235, 235, 235), "other": (120, 120, 120)}
MODES = ("pick", "draw", "move", "delete")
COLUMNS = ("ROI", "score", "SNR", "events/min", "F0", "floor", "role")


class RoiPicker(QtWidgets.QWidget):
    """Ensembles by click or by "suggest", ROIs by hand; roles follow a ROI through edits (kept by identity)."""

    def __init__(self, folder: RoiFolder, config: str | Path | None = None,
                 settings: RankSettings | None = None, diameter_px: float = 12.0, only_cells: bool = True,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"ROI picker — {folder.plane}")
        self.folder, self.config, self.settings = folder, config, settings or RankSettings()
        self.diameter_px, self.only_cells = diameter_px, only_cells
        self.up: set[int] = set()  # id() of stat dicts
        self.down: set[int] = set()
        self.selected: dict | None = None
        self.stats: CellStats | None = None
        self.rows = np.zeros(0, np.int64)
        self.stale = False

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(300, 300)
        self.view: pg.ViewBox = self.graphics.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image_item)
        self.graphics.scene().sigMouseClicked.connect(self._on_click)
        self._outlines: list[pg.PlotDataItem] = []
        self.image_combo = QtWidgets.QComboBox()
        self.image_combo.addItems(["mean"] + (["max"] if folder.max_img is not None else []))
        self.image_combo.currentTextChanged.connect(self._show_image)
        self.mode_combo = QtWidgets.QComboBox()
        self.mode_combo.addItems(MODES)
        self.role_combo = QtWidgets.QComboBox()
        self.role_combo.addItems(["up", "down", "none"])
        self.n_up, self.n_down = QtWidgets.QSpinBox(), QtWidgets.QSpinBox()
        for box in (self.n_up, self.n_down):
            box.setRange(0, 50)
            box.setValue(4)
        self.suggest_button = QtWidgets.QPushButton("Suggest")
        self.suggest_button.clicked.connect(self.suggest)
        self.cell_button = QtWidgets.QPushButton("Cell / not a cell")
        self.cell_button.setToolTip("mark the selected ROI a cell or not (iscell.npy on Save ROIs): the rig "
                                    "extracts only cells")
        self.cell_button.clicked.connect(self.toggle_cell)
        self.save_rois_button = QtWidgets.QPushButton("Save ROIs")
        self.save_rois_button.clicked.connect(self.save_rois)
        self.save_config_button = QtWidgets.QPushButton("Save to config")
        self.save_config_button.setToolTip("write suite2p_dir and the ensembles into the rig config"
                                           + ("" if config else " (you choose the file)"))
        self.save_config_button.clicked.connect(self.save_choice)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.cellClicked.connect(self._on_row)
        self.message = QtWidgets.QLabel("")
        self.message.setWordWrap(True)

        tools = QtWidgets.QHBoxLayout()
        for label, widget in (("image", self.image_combo), ("click", self.mode_combo), ("role", self.role_combo),
                              ("up", self.n_up), ("down", self.n_down)):
            tools.addWidget(QtWidgets.QLabel(label))
            tools.addWidget(widget)
        for button in (self.suggest_button, self.cell_button, self.save_rois_button, self.save_config_button):
            tools.addWidget(button)
        split = QtWidgets.QHBoxLayout()
        split.addWidget(self.graphics, 3)
        split.addWidget(self.table, 2)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(tools)
        layout.addLayout(split, 1)
        layout.addWidget(self.message)
        self._show_image(self.image_combo.currentText())
        self._rank()
        self._redraw()

    # ------------------------------------------------------------------ state
    def rig_index(self, roi: dict) -> int | None:
        """The rig's ROI number of a stat entry (its position among the ROIs the rig extracts), if extracted."""
        for k, row in enumerate(self.rows):
            if self.folder.stat[row] is roi:
                return k
        return None

    def ensembles(self) -> tuple[list[int], list[int]]:
        """Up and down as the rig's ROI numbers."""
        ids = [id(self.folder.stat[row]) for row in self.rows]
        return [k for k, i in enumerate(ids) if i in self.up], [k for k, i in enumerate(ids) if i in self.down]

    def _rank(self) -> None:
        self.rows = self.folder.rig_rows(self.only_cells)
        self.stats = None
        if self.rows.size:
            try:
                F, Fneu = traces(self.folder)
                self.stats = cell_stats(F[self.rows], Fneu[self.rows], self.folder.centers()[self.rows],
                                        self.folder.fs, self.settings)
            except (RoiFolderError, ValueError) as exc:
                self.message.setText(f"cannot rank: {exc}")
        self.stale = False
        self._fill_table()

    def _fill_table(self) -> None:
        self.table.setRowCount(0)
        if self.stats is None:
            return
        up, down = self.ensembles()
        ranked = self.stats.ranked()
        self.table.setRowCount(len(ranked))
        for r, roi in enumerate(ranked):
            role = "up" if roi in up else "down" if roi in down else ""
            values = (str(roi), f"{self.stats.score[roi]:.1f}", f"{self.stats.snr[roi]:.1f}",
                      f"{self.stats.event_rate_per_min[roi]:.1f}", f"{self.stats.f0[roi]:.3g}",
                      f"{self.stats.noise_floor[roi]:.3g}", role)
            for c, text in enumerate(values):
                self.table.setItem(r, c, QtWidgets.QTableWidgetItem(text))

    def _show_image(self, which: str) -> None:
        img = self.folder.max_img if which == "max" and self.folder.max_img is not None else self.folder.mean_img
        lo, hi = np.percentile(img, [1, 99.5])
        self.image_item.setImage(img, levels=(float(lo), float(max(hi, lo + 1e-6))))

    def _redraw(self) -> None:
        for item in self._outlines:
            self.view.removeItem(item)
        self._outlines = []
        cells = {id(self.folder.stat[row]) for row in self.rows}
        for roi in self.folder.stat:
            key = "up" if id(roi) in self.up else "down" if id(roi) in self.down else \
                "cell" if id(roi) in cells else "other"
            y, x = np.asarray(roi["ypix"]), np.asarray(roi["xpix"])
            cy, cx = float(y.mean()), float(x.mean())
            r = float(np.sqrt(((y - cy) ** 2 + (x - cx) ** 2).max())) + 0.5
            t = np.linspace(0, 2 * np.pi, 33)
            width = 3 if roi is self.selected else 1
            item = pg.PlotDataItem(cx + 0.5 + r * np.cos(t), cy + 0.5 + r * np.sin(t),
                                   pen=pg.mkPen(ROLE_PEN[key], width=width))
            self.view.addItem(item)
            self._outlines.append(item)

    # ------------------------------------------------------------------ actions
    def frame_to_widget(self, y: float, x: float) -> QtCore.QPoint:
        """Viewport coordinates of image position (y, x); tests click with it."""
        return self.graphics.mapFromScene(self.view.mapViewToScene(QtCore.QPointF(x, y)))

    def roi_at(self, y: float, x: float) -> dict | None:
        iy, ix = int(np.floor(y)), int(np.floor(x))
        for roi in self.folder.stat:
            if np.any((np.asarray(roi["ypix"]) == iy) & (np.asarray(roi["xpix"]) == ix)):
                return roi
        return None

    def _on_click(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        pos = self.view.mapSceneToView(event.scenePos())
        event.accept()
        self.click(pos.y(), pos.x())

    def click(self, y: float, x: float) -> None:
        """What a left click at image position (y, x) does in the current mode."""
        y, x = float(np.floor(y)), float(np.floor(x))  # the clicked pixel: ROIs sit on whole pixels
        mode, roi = self.mode_combo.currentText(), self.roi_at(y, x)
        f = self.folder
        try:
            if mode == "draw":
                new = disk_roi(y, x, self.diameter_px / 2.0, f.Ly, f.Lx)
                f.stat.append(new)
                f.iscell = np.vstack([f.iscell.reshape(-1, 2), [[1.0, 1.0]]])
                add_row_kind(f)
                self.selected = new
                self._edited(f"drew ROI at ({y:.0f}, {x:.0f}), {new['npix']} px")
            elif mode == "delete" and roi is not None:
                k = next(i for i, s in enumerate(f.stat) if s is roi)
                del f.stat[k]
                f.iscell = np.delete(f.iscell, k, axis=0)
                delete_row_kind(f, k)
                self.up.discard(id(roi))
                self.down.discard(id(roi))
                self._edited(f"deleted ROI (stat row {k})")
            elif mode == "move" and self.selected is not None and roi is None:
                old = self.selected
                c = np.array([np.mean(old["ypix"]), np.mean(old["xpix"])])
                new = moved_roi(old, int(round(y - c[0])), int(round(x - c[1])), f.Ly, f.Lx)
                k = next(i for i, s in enumerate(f.stat) if s is old)
                f.stat[k] = new
                for group in (self.up, self.down):
                    if id(old) in group:
                        group.discard(id(old))
                        group.add(id(new))
                self.selected = new
                self._edited(f"moved ROI to ({y:.0f}, {x:.0f})")
            elif roi is not None:
                self.selected = roi
                if mode == "pick":
                    self.assign(roi, self.role_combo.currentText())
                self._redraw()
        except RoiFolderError as exc:
            self.message.setText(str(exc))

    def _edited(self, what: str) -> None:
        self.stale = True
        self.message.setText(f"{what}; Save ROIs to measure and rank the edited ROIs")
        self.rows = self.folder.rig_rows(self.only_cells)
        self._redraw()

    def toggle_cell(self) -> None:
        """Mark the selected ROI a cell, or not (suite2p's ``iscell`` column 0); a non-cell leaves its ensemble."""
        roi = self.selected
        if roi is None:
            self.message.setText("select a ROI first (click it, or its row in the table)")
            return
        k = next(i for i, s in enumerate(self.folder.stat) if s is roi)
        now_cell = not self.folder.iscell[k, 0] > 0.5
        self.folder.iscell[k, 0] = 1.0 if now_cell else 0.0
        if not now_cell:
            self.up.discard(id(roi))
            self.down.discard(id(roi))
        self._edited(f"stat row {k} marked {'a cell' if now_cell else 'not a cell'}")

    def assign(self, roi: dict, role: str) -> None:
        self.up.discard(id(roi))
        self.down.discard(id(roi))
        if role in ("up", "down"):
            (self.up if role == "up" else self.down).add(id(roi))
        self._fill_table()
        self._redraw()

    def _on_row(self, row: int, _column: int) -> None:
        item = self.table.item(row, 0)
        if item is not None and self.stats is not None:
            roi = self.folder.stat[self.rows[int(item.text())]]
            self.selected = roi
            if self.mode_combo.currentText() == "pick":
                self.assign(roi, self.role_combo.currentText())
            self._redraw()

    def suggest(self) -> None:
        if self.stats is None or self.stale:
            self.message.setText("save the ROIs first: the ranking is of the ROIs on disk")
            return
        up, down = suggest(self.stats, self.n_up.value(), self.n_down.value(), self.settings)
        self.up = {id(self.folder.stat[self.rows[k]]) for k in up}
        self.down = {id(self.folder.stat[self.rows[k]]) for k in down}
        self.message.setText(f"suggested up {up}, down {down}")
        self._fill_table()
        self._redraw()

    def save_rois(self) -> None:
        try:
            save_rois(self.folder)
        except (RoiFolderError, OSError) as exc:
            self.message.setText(f"ROIs not saved: {exc}")
            return
        self._rank()
        self._redraw()
        self.message.setText(f"{self.folder.n} ROIs saved in {self.folder.plane}")

    def save_choice(self) -> bool:
        """Check the choice (refused below the noise floor, with the numbers) and write it into the config."""
        if self.config is None:  # opened from a review: ask which rig config the next session runs with
            chosen, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Rig config of the next session", "",
                                                              "rig config (*.toml)")
            if not chosen:
                return False
            self.config = chosen
        if self.stale or self.stats is None:
            self.message.setText("save the ROIs first: the ensembles are numbered as the rig will number them")
            return False
        up, down = self.ensembles()
        try:
            check_choice(self.stats, up, down, self.settings)
            write_choice(self.config, self.folder.plane, up, down)
        except (EnsembleChoiceError, ConfigWriteError, OSError) as exc:
            self.message.setText(f"not saved: {exc}")
            return False
        warnings = problems(self.stats, up, down, self.settings)
        self.message.setText(f"saved in {self.config}: up {up}, down {down}" +
                             ("; " + "; ".join(warnings) if warnings else ""))
        return True


def session_picker(session_dir: str | Path | None, resolved: dict[str, Any], folder: str | Path | None = None,
                   config: str | Path | None = None) -> RoiPicker:
    """The picker on a session's ROIs, as the console's windows open it, read with that session's settings.

    Folder: ``folder``, else the session's ``detect/`` (``rig detect SESSION``), else the suite2p folder the
    session ran with. Config: ``config``, else the file the session was started from (session.json
    ``config_file``), the one the next ``rig run`` reads. ``resolved`` is the session's resolved config: its
    decoder settings, ``[detect]`` suggest limits and diameter, and ``only_cells``. Raises
    :class:`~gui.roi_folder.RoiFolderError` naming what is missing.
    """
    session = Path(session_dir) if session_dir else None
    if folder is None and session is not None and (session / "detect").is_dir():
        folder = session / "detect"
    if folder is None:
        folder = ((resolved.get("acquisition") or {}).get("rois") or {}).get("suite2p_dir") or None
    if folder is None:
        raise RoiFolderError("no ROI folder to pick from: run rig detect on a baseline session (SESSION/detect)")
    if config is None and session is not None and (session / "session.json").is_file():
        try:
            config = json.loads((session / "session.json").read_text(encoding="utf-8")).get("config_file") or None
        except (OSError, ValueError) as exc:
            raise RoiFolderError(f"{session / 'session.json'}: unreadable ({exc})") from exc
    dec, det = resolved.get("decoder") or {}, resolved.get("detect") or {}
    rois = (resolved.get("acquisition") or {}).get("rois") or {}
    d = RankSettings()
    settings = RankSettings(neuropil_coef=float(dec.get("neuropil_coef", d.neuropil_coef)),
                            f0_percentile=float(dec.get("f0_percentile", d.f0_percentile)),
                            f0_floor=float(dec.get("f0_floor", d.f0_floor)),
                            min_distance_px=float(det.get("suggest_min_distance_px", d.min_distance_px)),
                            max_corr=float(det.get("suggest_max_corr", d.max_corr)))
    return RoiPicker(load_roi_folder(folder), config=config, settings=settings,
                     diameter_px=float(det.get("diameter_px", 12.0)), only_cells=bool(rois.get("only_cells", True)))
