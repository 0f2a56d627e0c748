"""The grating as pixels: the offscreen twin (numpy) and the full-screen Qt window on a chosen monitor.

Both draw the same picture: a sinusoidal grating at the stimulus orientation and phase (grey when the
orientation is NaN) and a photodiode patch in one corner that flips between black and white with every
update, so a photodiode on the monitor timestamps each flip against the scope's clock.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from reward.feedback.config import FeedbackConfig
from rig.core.clock import now_ns

GREY = 128


class GratingRenderer:
    """Renders into a preallocated uint8 image; the coordinate grids are computed once."""

    def __init__(self, cfg: FeedbackConfig, width: int, height: int, period_px: float, patch_px: int) -> None:
        self.cfg = cfg
        self.image = np.full((height, width), GREY, np.uint8)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        self._x = x - width / 2
        self._y = y - height / 2
        self._period = period_px
        self._buf = np.empty((height, width), np.float32)
        p = max(1, min(patch_px, width, height))
        rows = slice(0, p) if cfg.photodiode_corner.startswith("top") else slice(height - p, height)
        cols = slice(0, p) if cfg.photodiode_corner.endswith("left") else slice(width - p, width)
        self._patch = (rows, cols)

    def render(self, orientation_deg: float, phase: float, photodiode: bool) -> np.ndarray:
        img = self.image
        if math.isfinite(orientation_deg):
            theta = math.radians(orientation_deg)
            k = 2 * math.pi / self._period
            buf = self._buf
            np.multiply(self._x, k * math.cos(theta), out=buf)
            buf += self._y * np.float32(k * math.sin(theta))
            buf += np.float32(2 * math.pi * phase)
            np.sin(buf, out=buf)
            buf *= np.float32(127.0 * self.cfg.contrast)
            buf += np.float32(127.5)
            img[:] = buf
        else:
            img.fill(GREY)
        img[self._patch] = 255 if photodiode else 0
        return img


class SimDisplay:
    """The monitor's twin: renders offscreen at ``sim_width_px`` × ``sim_height_px``; the flip is the end of the
    render (a real monitor adds its scan-out, which the photodiode measures)."""

    def __init__(self, cfg: FeedbackConfig) -> None:
        scale = cfg.sim_width_px / 1920.0  # the period is given for a 1920-px-wide screen
        period = max(2.0, cfg.spatial_period_px * scale)
        patch = max(1, round(cfg.photodiode_px * scale))
        self.renderer = GratingRenderer(cfg, cfg.sim_width_px, cfg.sim_height_px, period, patch)

    def show(self, orientation_deg: float, phase: float, photodiode: bool) -> int:
        self.renderer.render(orientation_deg, phase, photodiode)
        return now_ns()

    def pump(self) -> None:
        """Nothing to service offscreen."""

    def close(self) -> None:
        """Nothing to release."""


def screen_count() -> int:
    """Monitors Qt sees (creates the application object if this process has none)."""
    from PyQt6.QtWidgets import QApplication  # noqa: PLC0415 - only a rig with a real monitor needs Qt here

    app = QApplication.instance() or QApplication([])
    return len(app.screens())


def monitor_problem(cfg: FeedbackConfig, display_available: bool) -> str:
    """Why the grating cannot go full screen on ``cfg.monitor`` ("" when it can, or when no screen is used)."""
    if cfg.display != "screen":
        return ""
    if not display_available:
        return '[feedback] display = "screen" but no display was found; set feedback.display = "sim"'
    count = screen_count()
    if cfg.monitor >= count:
        return (f"[feedback] monitor = {cfg.monitor}: there is no such monitor (this PC has {count}: "
                f"0..{count - 1})")
    return ""


class ScreenDisplay:
    """The grating full screen on monitor ``cfg.monitor``, drawn from a downscaled numpy image (Qt scales it up
    smoothly).

    Presented with OpenGL on vsync (a ``QOpenGLWidget`` with swap interval 1): the flip stamp is taken when the
    buffer swap is done (``frameSwapped``), the closest the PC can tell to the frame reaching the monitor (the
    photodiode patch measures the rest). Where no OpenGL context can be made (a remote desktop, a headless
    test) the window paints with the raster engine instead and says so: ``presented_by`` is ``"raster"``, a
    ``display_no_opengl`` warning is given, and the stamp is when the paint returned, not a vsync swap.
    """

    DOWNSCALE = 4
    #: The longest a flip waits for its swap before it is stamped anyway (a 30 Hz monitor swaps within 34 ms).
    SWAP_WAIT_S = 0.05

    def __init__(self, cfg: FeedbackConfig) -> None:
        from PyQt6.QtCore import Qt  # noqa: PLC0415
        from PyQt6.QtGui import QImage, QPainter, QSurfaceFormat  # noqa: PLC0415
        from PyQt6.QtOpenGLWidgets import QOpenGLWidget  # noqa: PLC0415
        from PyQt6.QtWidgets import QApplication, QWidget  # noqa: PLC0415

        self.app = QApplication.instance() or QApplication([])
        screens = self.app.screens()
        if cfg.monitor >= len(screens):
            raise RuntimeError(f"[feedback] monitor = {cfg.monitor}: there is no such monitor "
                               f"(this PC has {len(screens)})")
        screen = screens[cfg.monitor]
        geo = screen.geometry()
        w, h = max(8, geo.width() // self.DOWNSCALE), max(8, geo.height() // self.DOWNSCALE)
        self.renderer = GratingRenderer(cfg, w, h, max(2.0, cfg.spatial_period_px / self.DOWNSCALE),
                                        max(1, cfg.photodiode_px // self.DOWNSCALE))
        image = QImage(self.renderer.image.data, w, h, w, QImage.Format.Format_Grayscale8)

        def paint(widget: QWidget) -> None:
            painter = QPainter(widget)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(widget.rect(), image)
            painter.end()

        class _GlWindow(QOpenGLWidget):
            def paintGL(self) -> None:  # noqa: N802 - Qt's name
                paint(self)

        class _RasterWindow(QWidget):
            def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
                paint(self)

        self._swapped_ns = 0
        gl = _GlWindow()
        fmt = QSurfaceFormat()
        fmt.setSwapInterval(1)  # swap on vertical blank: no tearing, and the swap marks the refresh it shows in
        gl.setFormat(fmt)
        gl.frameSwapped.connect(self._on_swapped)
        self.window: QWidget = gl
        self._show(self.window, geo, screen, Qt)
        self.presented_by = "opengl"
        self.problem = ""
        context = gl.context()
        if context is None or not context.isValid():
            gl.close()
            self.window = _RasterWindow()
            self._show(self.window, geo, screen, Qt)
            self.presented_by = "raster"
            self.problem = ("no OpenGL context on this display: the grating is painted without vsync and flip "
                            "stamps are paint times, not buffer swaps")
        self._image = image  # the QImage shares the renderer's buffer: keep both alive

    @staticmethod
    def _show(window: Any, geo: Any, screen: Any, qt: Any) -> None:
        window.setWindowFlag(qt.WindowType.FramelessWindowHint)
        window.setCursor(qt.CursorShape.BlankCursor)
        window.setGeometry(geo)
        window.showFullScreen()
        window.windowHandle().setScreen(screen)

    def _on_swapped(self) -> None:
        self._swapped_ns = now_ns()

    def show(self, orientation_deg: float, phase: float, photodiode: bool) -> int:
        """Draw the new frame; returns its flip stamp (the swap's, or the paint's on the raster fallback)."""
        self.renderer.render(orientation_deg, phase, photodiode)
        if self.presented_by == "raster":
            self.window.repaint()
            return now_ns()
        self._swapped_ns = 0
        self.window.update()
        deadline = now_ns() + int(self.SWAP_WAIT_S * 1e9)
        while not self._swapped_ns and now_ns() < deadline:
            self.app.processEvents()
        return self._swapped_ns or now_ns()

    def pump(self) -> None:
        self.app.processEvents()

    def close(self) -> None:
        self.window.close()
        self.app.processEvents()
