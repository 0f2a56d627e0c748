"""One imaging plane beside the BCI plane in the field of view (multi-plane acquisition, docs/PLANES.md).

A plane that does not drive the BCI shows its own preview (or reference, or running mean) with its ROI
outlines by kind: somata pale, dendrites cyan, a linked dendrite labelled with its soma's index in that soma's
role colour. Everything is drawn into one RGBA overlay (cheap for hundreds of ROIs) and redrawn only when the
ROIs or the links change; the preview image is replaced a few times a second, like the BCI plane's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore

from gui.plane_rois import DENDRITE
from gui.rois import RoiOutlines

#: outline colours by kind; a linked dendrite is drawn opaque
SOMA_RGBA = (200, 200, 200, 130)
DENDRITE_RGBA = (0, 220, 255, 150)
LINKED_RGBA = (0, 220, 255, 255)
HIGHLIGHT_RGB = (255, 255, 0)
NO_ROLE_RGB = (235, 235, 235)
#: up to this many links every linked dendrite is labelled with its soma; beyond, those of up/down somata only
LABEL_ALL_LINKS = 20
#: the mark on a BCI-plane soma that has a linked dendrite on another plane
SOMA_MARK_RGB = (0, 220, 255)


def display_levels(image: np.ndarray) -> tuple[float, float]:
    """Contrast limits: 1st and 99.7th percentiles (robust to a few hot pixels)."""
    lo, hi = np.percentile(image[::2, ::2], (1.0, 99.7))
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def view_title(view: pg.ViewBox, text: str) -> pg.LabelItem:
    """A title in the view's top-left corner (not a layout row: labels there make the planes' widths unequal)."""
    title = pg.LabelItem(text)
    title.setParentItem(view)
    title.anchor(itemPos=(0, 0), parentPos=(0, 0), offset=(2, 2))
    return title


def highlight_item() -> pg.ScatterPlotItem:
    """Squares on the outline pixels of the highlighted ROIs (a selection and its partners across planes)."""
    item = pg.ScatterPlotItem(pxMode=False, size=1.0, symbol="s", pen=None, brush=pg.mkBrush(*HIGHLIGHT_RGB, 220))
    item.setZValue(12)
    return item


def outline_points(rois: RoiOutlines, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) centres of the outline pixels of ``indices`` (for :func:`highlight_item`)."""
    keep = [i for i in indices if 0 <= i < rois.n]
    if not keep:
        return np.zeros(0), np.zeros(0)
    x = np.concatenate([rois.outline_x[i] for i in keep]) + 0.5
    y = np.concatenate([rois.outline_y[i] for i in keep]) + 0.5
    return x, y


class PlaneView:
    """A plane's view box (column ``col`` of the field of view's graphics layout) and its title under it."""

    def __init__(self, graphics: pg.GraphicsLayoutWidget, plane: int, col: int, mean_previews: int) -> None:
        self.plane = plane
        self.view: pg.ViewBox = graphics.addViewBox(row=0, col=col, lockAspect=True, invertY=True, enableMenu=False)
        self.title = view_title(self.view, f"plane {plane}")
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item.setZValue(10)
        self.highlight = highlight_item()
        for item in (self.image_item, self.overlay_item, self.highlight):
            self.view.addItem(item)
        self.rois: RoiOutlines | None = None
        self._overlay: np.ndarray | None = None
        self._labels: list[pg.TextItem] = []
        self._mean_previews = mean_previews
        self.live: np.ndarray | None = None
        self._live_levels: tuple[float, float] | None = None
        self.mean: np.ndarray | None = None
        self._ref_levels: tuple[float, float] | None = None
        self.frame_shape: tuple[int, int] | None = None  # full frame (Ly, Lx), for a preview without ROIs
        self.summary = f"plane {plane}: no ROIs yet"

    def contains(self, scene_pos: QtCore.QPointF) -> bool:
        return self.view.sceneBoundingRect().contains(scene_pos)

    def roi_at_scene(self, scene_pos: QtCore.QPointF) -> int | None:
        if self.rois is None:
            return None
        pos = self.view.mapSceneToView(scene_pos)
        return self.rois.roi_at(pos.y(), pos.x())

    def set_rois(self, rois: RoiOutlines) -> None:
        self.rois = rois
        self.frame_shape = rois.shape
        self._overlay = np.zeros((*rois.shape, 4), dtype=np.uint8)
        self._ref_levels = display_levels(rois.reference) if rois.reference is not None else None

    def draw_outlines(self, soma_index: Callable[[int], int | None],
                      soma_rgb: Callable[[int], tuple[int, ...] | None]) -> None:
        """Outlines by kind; linked dendrites labelled ``→s`` (``soma_index``: a BCI-plane stat row to the soma's
        index there, None when that soma is not shown; ``soma_rgb``: the colour of that soma's role, None without
        one). With many links only those of up/down somata are labelled (the selection names any other)."""
        rois, overlay = self.rois, self._overlay
        for label in self._labels:
            self.view.removeItem(label)
        self._labels.clear()
        if rois is None or overlay is None:
            return
        overlay[:] = 0
        somata = [soma_index(int(p)) if p >= 0 else None for p in rois.parent]
        n_linked = sum(s is not None for s in somata)
        for i, soma in enumerate(somata):
            colour = LINKED_RGBA if soma is not None else DENDRITE_RGBA if rois.kind[i] == DENDRITE else SOMA_RGBA
            overlay[rois.outline_y[i], rois.outline_x[i]] = colour
            rgb = None if soma is None else soma_rgb(soma)
            if soma is not None and (rgb is not None or n_linked <= LABEL_ALL_LINKS):
                label = pg.TextItem(f"→{soma}", color=rgb or NO_ROLE_RGB, anchor=(0.5, 1.2))
                y, x = rois.centers[i]
                label.setPos(x, y)
                label.setZValue(11)
                self.view.addItem(label)
                self._labels.append(label)
        self.overlay_item.setImage(overlay, autoLevels=False, levels=(0, 255))
        self.overlay_item.setRect(QtCore.QRectF(0, 0, rois.shape[1], rois.shape[0]))
        self.summary = (f"plane {self.plane}: {rois.n} ROIs, {int(np.sum(rois.kind == DENDRITE))} dendrites, "
                        f"{n_linked} linked")

    def set_live(self, image: np.ndarray, which: str) -> None:
        """A new preview; drawn unless the reference is shown (``which``: latest | mean | reference)."""
        self.live = image
        self._live_levels = display_levels(image)
        if self.mean is None or self.mean.shape != image.shape:
            self.mean = np.array(image, dtype=np.float32)
        else:
            self.mean += (image - self.mean) * (1.0 / self._mean_previews)
        if which != "reference":
            self.redraw(which)

    def redraw(self, which: str) -> None:
        if which == "mean" and self.mean is not None:
            image, levels = self.mean, display_levels(self.mean)
        elif which == "latest":
            image, levels = self.live, self._live_levels
        else:  # the reference; also for "mean" when the plane has no mean image (a review without ops meanImg)
            image = self.rois.reference if self.rois is not None else None
            levels = self._ref_levels
        if image is None:
            self.image_item.clear()
            return
        self.image_item.setImage(image, autoLevels=False, levels=levels)
        height, width = image.shape
        if self.frame_shape is not None:  # a decimated preview covers the full frame
            height *= max(1, round(self.frame_shape[0] / image.shape[0]))
            width *= max(1, round(self.frame_shape[1] / image.shape[1]))
        self.image_item.setRect(QtCore.QRectF(0, 0, width, height))

    def set_highlight(self, indices: list[int]) -> None:
        if self.rois is None:
            return
        x, y = outline_points(self.rois, indices)
        self.highlight.setData(x=x, y=y)
