"""What the console knows of the imaging planes that do not drive the BCI (multi-plane acquisition, docs/PLANES.md).

The BCI plane stays in :class:`gui.model.ConsoleModel` as before (FluorFrame, Preview); every other plane's
``PlaneFluor`` (topic ``acq.plane``) and ``Preview`` (``Preview.plane``) land here. Only scalars and the newest
preview per plane are kept, so memory is fixed whatever the session length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rig.core.schema import PlaneFluor, Preview


@dataclass
class PlaneLive:
    """One non-BCI plane as last heard from."""

    plane: int
    n_rois: int = 0  # ROIs the rig extracts on this plane (the PlaneFluor's F length); 0 = none heard yet
    frame: int = -1  # volume number of the newest PlaneFluor
    dy: float = 0.0
    dx: float = 0.0
    corr: float = float("nan")
    frames: int = 0  # PlaneFluor messages received
    preview_image: np.ndarray | None = None
    preview_frame: int = -1
    preview_count: int = 0


class PlanesState:
    """Non-BCI planes by plane index, fed by the model."""

    def __init__(self) -> None:
        self.planes: dict[int, PlaneLive] = {}

    def _plane(self, plane: int) -> PlaneLive:
        live = self.planes.get(plane)
        if live is None:
            live = self.planes[plane] = PlaneLive(plane)
        return live

    def on_fluor(self, msg: PlaneFluor) -> None:
        live = self._plane(msg.plane)
        live.n_rois = int(msg.F.shape[0])
        live.frame, live.dy, live.dx, live.corr = msg.frame, msg.dy, msg.dx, msg.corr
        live.frames += 1

    def on_preview(self, msg: Preview) -> None:
        live = self._plane(msg.plane)
        live.preview_image, live.preview_frame = msg.image, msg.frame  # a read-only view: the newest only
        live.preview_count += 1

    def known(self) -> list[int]:
        return sorted(self.planes)


def plane_settings(config: dict[str, Any]) -> tuple[int, int]:
    """(n_planes, bci_plane) of the rig's resolved config (1 and 0 when it does not say)."""
    acq = config.get("acquisition") or {}
    return int(acq.get("n_planes", 1) or 1), int(acq.get("bci_plane", 0) or 0)
