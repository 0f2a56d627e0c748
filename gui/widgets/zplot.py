"""The focal plane's depth over the session (z-tracking), with the warning band.

Why its own widget: z-tracking is optional (``[acquisition.ztrack] stack_path``); the plot stays hidden until
the first depth estimate arrives, so consoles of rigs without a z-stack are unchanged. It is fed from the
acquisition previews (``Preview.z_um``, the latest estimate, about 4 per second).
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtWidgets

from gui.rings import ColumnRing

#: previews kept: about 10 minutes at 4 per second
HISTORY = 2400


class ZPlotWidget(QtWidgets.QWidget):
    """z (um) against frame number; dashed lines at +-``warn_um``; the label turns red beyond them."""

    def __init__(self, warn_um: float = 3.0, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.warn_um = warn_um
        self.ring = ColumnRing(HISTORY, {"frame": np.int64, "z": np.float32})
        self.plot = pg.PlotWidget()
        self.plot.setMinimumHeight(120)
        self.plot.setLabel("left", "z", units="µm")
        self.plot.setLabel("bottom", "frame")
        self.curve = self.plot.plot(pen=pg.mkPen((80, 160, 255), width=2))
        self.bands = [pg.InfiniteLine(pos=sign * warn_um, angle=0,
                                      pen=pg.mkPen((230, 120, 40), style=pg.QtCore.Qt.PenStyle.DashLine))
                      for sign in (1, -1)]
        for line in self.bands:
            self.plot.addItem(line)
        self.label = QtWidgets.QLabel("z: —")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.plot)
        self.setVisible(False)

    def set_warn_um(self, warn_um: float) -> None:
        """The rig's ``acquisition.ztrack.warn_um`` (from the session snapshot): the band and the red label."""
        self.warn_um = float(warn_um)
        self.bands[0].setValue(self.warn_um)
        self.bands[1].setValue(-self.warn_um)

    def add(self, frame: int, z_um: float) -> None:
        """One preview's estimate (NaN: z-tracking off or no estimate yet: nothing shown)."""
        if not math.isfinite(z_um):
            return
        i = self.ring.advance()
        self.ring.columns["frame"][i] = frame
        self.ring.columns["z"][i] = z_um
        if self.isHidden():
            self.setVisible(True)
        beyond = abs(z_um) > self.warn_um
        self.label.setText(f"z: {z_um:+.1f} µm" + (f"  (beyond ±{self.warn_um:g} µm: refocus?)" if beyond else ""))
        self.label.setStyleSheet("color: #d04010; font-weight: bold" if beyond else "")
        self.curve.setData(self.ring.ordered("frame"), self.ring.ordered("z"))
