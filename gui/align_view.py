"""Yesterday over today: the previous session's reference moved into today's field, blended or flickered.

Why a window of its own: it is used before the session starts, on the folder ``rig align`` wrote
(``align.json``, ``today_ref.npy``, ``previous_in_today.npy``), so it needs no running rig. It shows the two
references (blend slider, or flicker between them, or both in colour: today green, yesterday magenta), the
transform, the ROIs kept and lost, and how far to move the stage (um, from the pixel size) to put
yesterday's cells back where they were. Opened by ``rig align ... --show``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from rig.core.safe_npy import load_npy

FLICKER_MS = 500


class AlignFolderError(ValueError):
    """The folder is not what ``rig align`` writes; names the missing or bad file."""


def _normalised(img: np.ndarray) -> np.ndarray:
    """0..1 by robust limits (1st and 99.7th percentiles of the finite pixels); NaN (outside the field) is 0."""
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros(img.shape, np.float32)
    lo, hi = np.percentile(finite, (1.0, 99.7))
    out = (np.nan_to_num(img, nan=lo) - lo) / (hi - lo if hi > lo else 1.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def load_align_folder(folder: str | Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """``align.json`` and the two references of a ``rig align`` output folder."""
    folder = Path(folder)
    path = folder / "align.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlignFolderError(f"{path}: cannot read it ({exc}); run rig align first") from exc
    images = []
    for name in ("today_ref.npy", "previous_in_today.npy"):
        img = np.asarray(load_npy(folder / name), np.float32)
        if img.ndim != 2:
            raise AlignFolderError(f"{folder / name}: expected a 2-D image, got shape {img.shape}")
        images.append(img)
    if images[0].shape != images[1].shape:
        raise AlignFolderError(f"{folder}: today_ref.npy is {images[0].shape}, previous_in_today.npy {images[1].shape}")
    return doc, images[0], images[1]


def stage_text(doc: dict[str, Any], pixel_size_um: float) -> str:
    """What to tell the operator about the stage: the move in um, or how to get it."""
    dy, dx = float(doc["dy"]), float(doc["dx"])
    if pixel_size_um > 0:
        return (f"move the field by dy {dy * pixel_size_um:+.1f} um, dx {dx * pixel_size_um:+.1f} um (image axes; "
                f"{pixel_size_um:g} um/px) to put yesterday's cells back in place")
    return f"shift dy {dy:+.1f} px, dx {dx:+.1f} px; set acquisition.pixel_size_um to see the stage move in um"


class AlignView(QtWidgets.QWidget):
    """The two references in one view (blend / flicker / colour overlay) and the alignment's numbers."""

    def __init__(self, doc: dict[str, Any], today: np.ndarray, previous: np.ndarray, pixel_size_um: float = 0.0,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.doc = doc
        self.today = _normalised(today)
        self.previous = _normalised(previous)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(300, 300)
        view = self.graphics.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        view.addItem(self.image_item)

        self.mode_combo = QtWidgets.QComboBox()
        self.mode_combo.addItems(["blend", "flicker", "colour"])
        self.mode_combo.setToolTip("blend: slider between today and yesterday; flicker: alternate every "
                                   f"{FLICKER_MS} ms; colour: today green, yesterday magenta (white where they agree)")
        self.mode_combo.currentTextChanged.connect(self._mode_changed)
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setValue(50)
        self.slider.setToolTip("0: today only, 100: yesterday (moved into today's field) only")
        self.slider.valueChanged.connect(self.redraw)
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(FLICKER_MS)
        self.timer.timeout.connect(self.flicker_step)
        self.showing_previous = False

        kept, lost = doc.get("rois_kept", 0), doc.get("rois_lost", 0)
        ens = doc.get("ensembles") or {}
        ens_text = "; ".join(f"{k}: " + (f"LOST {v['lost']}" if v.get("lost") else "kept") for k, v in ens.items())
        self.info = QtWidgets.QLabel(
            f"shift dy {float(doc['dy']):+.2f} px, dx {float(doc['dx']):+.2f} px, rotation "
            f"{float(doc['rotation_deg']):+.2f} deg; correlation {float(doc.get('corr', float('nan'))):.2f}\n"
            f"ROIs kept {kept}, lost {lost}" + (f"; ensembles {ens_text}" if ens_text else ""))
        self.info.setWordWrap(True)
        self.stage_label = QtWidgets.QLabel(stage_text(doc, pixel_size_um or float(doc.get("pixel_size_um") or 0)))
        self.stage_label.setWordWrap(True)
        self.stage_label.setStyleSheet("font-weight: bold")

        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(QtWidgets.QLabel("show:"))
        controls.addWidget(self.mode_combo)
        controls.addWidget(QtWidgets.QLabel("today"))
        controls.addWidget(self.slider, 1)
        controls.addWidget(QtWidgets.QLabel("yesterday"))
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.graphics, 1)
        layout.addLayout(controls)
        layout.addWidget(self.info)
        layout.addWidget(self.stage_label)
        self.redraw()

    @classmethod
    def from_folder(cls, folder: str | Path, pixel_size_um: float = 0.0) -> AlignView:
        doc, today, previous = load_align_folder(folder)
        return cls(doc, today, previous, pixel_size_um)

    @property
    def mode(self) -> str:
        return self.mode_combo.currentText()

    def _mode_changed(self, mode: str) -> None:
        self.slider.setEnabled(mode == "blend")
        if mode == "flicker":
            self.timer.start()
        else:
            self.timer.stop()
        self.redraw()

    def flicker_step(self) -> None:
        """Swap today and yesterday (the flicker timer's tick)."""
        self.showing_previous = not self.showing_previous
        self.redraw()

    def current_image(self) -> np.ndarray:
        """What the view shows now: gray (blend, flicker) or RGB (colour)."""
        if self.mode == "flicker":
            return self.previous if self.showing_previous else self.today
        if self.mode == "colour":
            return np.stack([self.previous, self.today, self.previous], axis=-1)
        a = self.slider.value() / 100.0
        return (1.0 - a) * self.today + a * self.previous

    def redraw(self) -> None:
        self.image_item.setImage(self.current_image(), levels=(0.0, 1.0), autoLevels=False)


def open_align_window(folder: str | Path, pixel_size_um: float = 0.0) -> int:
    """Show the window for a ``rig align`` output folder until it is closed (Qt event loop); exit code 0."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    view = AlignView.from_folder(folder, pixel_size_um)
    view.setWindowTitle(f"bci-rig: yesterday over today ({folder})")
    view.resize(700, 800)
    view.show()
    return int(app.exec())
