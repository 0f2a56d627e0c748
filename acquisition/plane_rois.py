"""Each plane's ROI set in a multi-plane session: where it comes from, that every plane has the same frame
size, and the ROI kinds and dendrite -> soma links the session records (docs/PLANES.md).

All of it is checked when the acquisition configures, before the first frame: a plane whose ROI set is for
another frame size, or a dendrite linked to a soma the BCI plane does not have, would otherwise turn into a
session of flagged frames or an analysis of links to nothing.

The kinds and links themselves (a plane folder's ``roi_kind.npy`` / ``roi_parent.npy``, filtering with
``only_cells``, the config's ``[[acquisition.rois.links]]``) are :mod:`acquisition.rois` and
:mod:`acquisition.roi_links`; each plane's set is saved into the session with its ``rois/`` (extracted ROIs
first, so there a parent is the soma's extracted index on the BCI plane, the number the rig uses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from acquisition.config import AcquisitionConfig, RoiConfig
from acquisition.roi_links import apply_links, cells_only_planes, check_parents
from acquisition.rois import RoiFileError, RoiSet, find_plane_folder, load_suite2p


@dataclass
class PlaneRois:
    """One plane's ROIs as the acquisition extracts them (kinds and links applied)."""

    plane: int
    roi_set: RoiSet
    origin: str  # for messages: the folder, or the simulator's ground truth

    @property
    def shape(self) -> tuple[int, int]:
        return self.roi_set.Ly, self.roi_set.Lx


def plane_roi_folder(rois: RoiConfig, plane: int, bci_plane: int) -> str:
    """The suite2p folder plane ``plane``'s ROIs come from; "" means the source's own ground truth (the sim).

    ``rois.plane_dirs[plane]`` when given ("" for the BCI plane: ``suite2p_dir``); else the BCI plane's is
    ``suite2p_dir`` and plane K's the ``planeK`` folder beside the BCI plane's (suite2p's layout)."""
    if rois.plane_dirs:
        given = rois.plane_dirs[plane]
        return given or (rois.suite2p_dir if plane == bci_plane else "")
    if plane == bci_plane or not rois.suite2p_dir:
        return rois.suite2p_dir
    return str(find_plane_folder(rois.suite2p_dir).parent / f"plane{plane}")


def load_planes(cfg: AcquisitionConfig, truth: Callable[[int], Path] | None) -> list[PlaneRois]:
    """Every plane's ROIs (index = plane), checked: same frame size on every plane, every link to a soma the
    BCI plane has; filtered (``only_cells``) and with the config's links applied.

    ``truth(plane)`` writes the source's ground-truth ROIs of that plane and returns their folder (None: the
    source has none, so every plane needs a folder)."""
    planes = []
    for plane in range(cfg.n_planes):
        folder = plane_roi_folder(cfg.rois, plane, cfg.bci_plane)
        if folder:
            origin, path = folder, Path(folder)
        elif truth is not None:
            path = truth(plane)
            origin = f"the simulator's ground truth of plane {plane} ({path})"
        else:
            key = "rois.plane_dirs" if cfg.rois.plane_dirs else "rois.suite2p_dir"
            raise RoiFileError(f"plane {plane}: no ROI folder (`acquisition.{key}`) and the {cfg.source} source has "
                               "no ROIs of its own: give every plane its suite2p folder")
        try:
            roi_set = load_suite2p(path)
        except RoiFileError as exc:
            if cfg.n_planes == 1:
                raise
            raise RoiFileError(f"plane {plane}'s ROIs: {exc}") from exc
        planes.append(PlaneRois(plane, roi_set, origin))
    if cfg.n_planes == 1:
        if cfg.rois.only_cells:
            planes[0].roi_set = planes[0].roi_set.cells_only()
        return planes
    check_sizes(planes, cfg.bci_plane)
    sets = {p.plane: p.roi_set for p in planes}
    where = "; ".join(f"plane {p.plane}: {p.origin}" for p in planes)
    try:
        if cfg.rois.only_cells:
            sets = cells_only_planes(sets, cfg.bci_plane)
        else:
            check_parents(sets, cfg.bci_plane)
    except RoiFileError as exc:  # a folder's roi_parent.npy naming a soma the BCI plane does not have
        raise RoiFileError(f"{exc} (roi_parent.npy of the planes' ROI folders: {where})") from exc
    sets = apply_links(sets, list(cfg.rois.links), cfg.bci_plane)
    for p in planes:
        p.roi_set = sets[p.plane]
    return planes


def check_sizes(planes: list[PlaneRois], bci_plane: int) -> None:
    """One scope scans every plane of a volume with the same field: ROI sets for other sizes are a wrong folder."""
    bci = planes[bci_plane]
    for p in planes:
        if p.shape != bci.shape:
            raise RoiFileError(
                f"the planes' ROI sets disagree in frame size: plane {p.plane}'s are for {p.shape[0]}x{p.shape[1]} "
                f"frames ({p.origin}), the BCI plane {bci.plane}'s for {bci.shape[0]}x{bci.shape[1]} ({bci.origin}) "
                "(suite2p ops Ly x Lx): every plane of a volume has the same size; point the plane at its own "
                "folder of this field of view")
