"""The live console's other imaging planes (docs/PLANES.md): their views, ROI outlines and previews.

The main window calls :meth:`PlaneConsole.tick` on every refresh. Nothing happens with one plane: no view is
created, no file is read. With several (the rig config's ``acquisition.n_planes``, or a plane heard on the bus)
the field of view gets one view per plane beside the BCI plane, each plane's ROIs are read from the session's
``acquisition/planes/planeK/rois`` (tried every second until they load, as the BCI plane's), and each plane's
newest preview is drawn when it changes: the drawing cost per plane is the BCI plane's, a few times a second.
"""

from __future__ import annotations

import time
from pathlib import Path

from gui.model import ConsoleModel
from gui.planes_model import plane_settings
from gui.rois import RoiLoadError, load_roi_outlines
from gui.widgets.fov import FovWidget

ROI_RETRY_S = 1.0


class PlaneConsole:
    """See the module docstring."""

    def __init__(self, model: ConsoleModel, fov: FovWidget) -> None:
        self.model, self.fov = model, fov
        self.shown: list[int] = []  # the non-BCI planes with a view
        self.loaded: set[int] = set()  # planes whose ROIs are drawn
        self._preview_seen: dict[int, int] = {}
        self._next_try: dict[int, float] = {}
        self._problem: dict[int, str] = {}
        self._bci_rois_seen: object = None

    @property
    def active(self) -> bool:
        return bool(self.shown)

    def tick(self) -> bool:
        """Views for new planes, their ROIs, their newest previews; True when planes are shown."""
        m = self.model
        if not m.snapshots:  # which plane drives the BCI is in the rig's config: wait for it
            return False
        n_planes, bci = plane_settings(m.config)
        planes = {p for p in range(n_planes) if p != bci} | {p for p in m.planes.known() if p != bci}
        if not planes:
            return False
        if sorted(planes) != self.shown:
            self.shown = sorted(planes)
            self.fov.set_planes([bci, *self.shown], bci)
        if self.fov.rois is not self._bci_rois_seen:  # the BCI plane's ROIs (re)loaded: parents are checked
            self._bci_rois_seen = self.fov.rois        # against them, so read the planes again
            self.loaded.clear()
        now = time.monotonic()
        for plane in self.shown:
            live = m.planes.planes.get(plane)
            if live is None:
                continue
            if live.preview_image is not None and live.preview_count != self._preview_seen.get(plane):
                self._preview_seen[plane] = live.preview_count
                self.fov.set_plane_live(plane, live.preview_image)
            if plane not in self.loaded and live.n_rois and m.session_dir and now >= self._next_try.get(plane, 0.0):
                self._next_try[plane] = now + ROI_RETRY_S
                self._load(plane, live.n_rois)
        return True

    def reload(self) -> None:
        """Read every plane's ROIs again (the link editor saved new links into the session's folders)."""
        self.loaded.clear()
        self._next_try.clear()

    def _load(self, plane: int, n_rois: int) -> None:
        folder = Path(self.model.session_dir) / "acquisition" / "planes" / f"plane{plane}" / "rois"
        n_somata = self.fov.rois.n_stat if self.fov.rois is not None else None
        try:
            if not (folder / "stat.npy").exists():
                raise RoiLoadError(f"plane {plane} ROIs: none at {folder} (yet)")
            rois = load_roi_outlines(folder, first_n=n_rois, n_somata=n_somata)
        except RoiLoadError as exc:
            if str(exc) != self._problem.get(plane):  # retried every second: reported once
                self._problem[plane] = str(exc)
                self.model.add_warning("warning", "console", "rois", str(exc))
            return
        self.loaded.add(plane)
        self.fov.set_plane_rois(plane, rois)
