"""The planes other than the BCI plane in `rig export --nwb` (docs/PLANES.md), and the ROI kind/link columns.

Each plane K gets its own ``ImagingPlane`` ("planeK", imaging rate = the volume rate), its own
``PlaneSegmentation`` ("PlaneSegmentation_planeK") in the same ``ImageSegmentation``, its F/Fneu in
``Fluorescence`` ("F_planeK", "Fneu_planeK", at that plane's own frame stamps) and, with ``--movie``, its raw
frames ("TwoPhotonSeries_planeK"). Every plane's segmentation has the columns ``roi_kind`` ("soma"/"dendrite")
and ``parent_soma``: the row of the dendrite's soma in the BCI plane's "PlaneSegmentation" (-1: none; an index
column, because a DynamicTableRegion cannot say "no soma"). The BCI plane's objects keep their single-plane
names, so readers of single-plane files find them where they always were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rig.offline.session_data import PlaneData, SessionData, SessionError

KIND_TEXT = {0: "soma", 1: "dendrite"}
PARENT_DESCRIPTION = ("row of the dendrite's parent soma in the BCI plane's PlaneSegmentation ({bci}); -1: none "
                      "(a soma, or an unlinked dendrite)")


def plane_depth_um(session: SessionData, plane: int) -> float | None:
    """A plane's depth relative to the BCI plane when the session knows it (the simulator's dendrite plane)."""
    cfg = session.config.acquisition
    if plane == session.bci_plane:
        return 0.0
    if cfg.source == "sim" and plane == 1:
        return -float(cfg.sim.dendrites.depth_um)  # above the somata: more superficial
    return None


def extra_frames(session: SessionData, include_movie: bool) -> int:
    """Rows the other planes add to the export's progress bar."""
    total = 0
    if session.n_planes < 2:
        return 0
    for p in session.planes:
        if p.is_bci or p.frames is None:
            continue
        total += 2 * len(p.frames)
        movie = p.movie() if include_movie else None
        total += 0 if movie is None else min(len(movie), len(p.frames))
    return total


def add_kind_columns(plane_seg: Any, p: PlaneData, bci_name: str) -> None:
    """``roi_kind`` and ``parent_soma`` columns, before any ROI is added."""
    plane_seg.add_column(name="roi_kind", description="soma or dendrite (roi_kind.npy of the plane's rois/)")
    plane_seg.add_column(name="parent_soma", description=PARENT_DESCRIPTION.format(bci=bci_name))


def kind_values(p: PlaneData, i: int) -> dict[str, Any]:
    return {"roi_kind": KIND_TEXT[int(p.kind[i])], "parent_soma": int(p.parent[i])}


def add_planes(nwbfile: Any, session: SessionData, *, device: Any, channel: Any, ophys: Any, segmentation: Any,
               fluorescence: Any, movie_wanted: bool, bar: Any, seconds: Callable[[Any], np.ndarray],
               imaging: dict[str, Any], chunks: Callable[[np.ndarray, Any], Any]) -> None:
    """Every plane but the BCI plane (whose objects the single-plane export made): plane, ROIs, F, movie."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO  # noqa: PLC0415
    from pynwb.ophys import RoiResponseSeries, TwoPhotonSeries  # noqa: PLC0415

    for p in session.planes:
        if p.is_bci:
            continue
        if p.roi_set is None or p.frames is None or not len(p.frames):
            raise SessionError(f"{p.folder}: plane {p.plane} has no ROI set or no frames to export")
        depth = plane_depth_um(session, p.plane)
        where = "depth unknown" if depth is None else f"{depth:+g} um from the BCI plane"
        plane = nwbfile.create_imaging_plane(
            name=p.name, optical_channel=channel, imaging_rate=session.frame_rate_hz, device=device,
            description=f"plane {p.plane} of each volume ({where}); imaging_rate is the volume rate",
            origin_coords=None if depth is None else [0.0, 0.0, depth],
            origin_coords_unit="micrometers", **imaging)
        seg = segmentation.create_plane_segmentation(
            name=f"PlaneSegmentation_{p.name}", imaging_plane=plane,
            description=f"suite2p ROIs plane {p.plane} extracted ({p.folder.name}/rois), with kinds and parent somata")
        add_kind_columns(seg, p, "PlaneSegmentation")
        for i, roi in enumerate(p.roi_set.stat):
            mask = [(int(x), int(y), float(w)) for x, y, w in zip(roi["xpix"], roi["ypix"], roi["lam"], strict=True)]
            seg.add_roi(pixel_mask=mask, **kind_values(p, i))
        region = seg.create_roi_table_region(region=list(range(p.roi_set.n_rois)), description=f"every ROI of {p.name}")
        plane_t = seconds(p.frames["t_ready"])
        for name, desc in (("F", "ROI fluorescence"), ("Fneu", "neuropil fluorescence around each ROI")):
            fluorescence.add_roi_response_series(RoiResponseSeries(
                name=f"{name}_{p.name}", data=chunks(np.ascontiguousarray(p.frames[name]), bar), rois=region,
                unit="a.u.", timestamps=plane_t, description=f"{desc}, plane {p.plane}"))
        if movie_wanted:
            movie = p.movie()
            if movie is None:
                continue
            n = min(len(movie), len(p.frames))
            nwbfile.add_acquisition(TwoPhotonSeries(
                name=f"TwoPhotonSeries_{p.name}", imaging_plane=plane, unit="a.u.", timestamps=plane_t[:n],
                data=H5DataIO(chunks(movie[:n], bar), compression="gzip", compression_opts=4),
                description=f"raw frames of plane {p.plane} as they came from the source (before registration)"))
