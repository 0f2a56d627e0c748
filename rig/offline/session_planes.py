"""Every imaging plane of a session folder: its records, ROI set (with ROI kinds and links) and movie.

The BCI plane keeps the single-plane layout (``acquisition/frames.rec``, ``acquisition/rois``, ``movie.*``), so
the decoder's tools read it unchanged; plane K lives in ``acquisition/planes/planeK/`` with the same files
(docs/PLANES.md). :attr:`SessionData.planes` lists them in plane order; a plane folder that is missing or
damaged stops the load with a message naming the file, a torn final record is kept in the session's notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rig.core.movie_file import MOVIE_FILES, ChunkedMovie
from rig.core.store import CorruptFileError
from rig.offline.session_checks import (
    SessionError,
    load_reference,
    movie_layout,
    read_checked_records,
    read_json_object,
)

if TYPE_CHECKING:
    from acquisition.rois import RoiSet
    from rig.offline.session_data import SessionData

__all__ = ["PlaneData", "load_plane_rois", "load_planes", "plane_folder"]


def plane_folder(session_path: Path, plane: int, bci_plane: int) -> Path:
    """Where plane ``plane``'s files are: ``acquisition/`` for the BCI plane, else ``acquisition/planes/planeK``."""
    acq = Path(session_path) / "acquisition"
    return acq if plane == bci_plane else acq / "planes" / f"plane{plane}"


@dataclass
class PlaneData:
    """One plane of a session. ``frames`` are its ``frames.rec`` rows (numbered by volume, like the BCI plane's)."""

    plane: int
    folder: Path
    is_bci: bool
    frames: np.ndarray | None
    movie_meta: dict[str, Any] | None
    roi_set: Any = field(default=None, repr=False)  # acquisition.rois.RoiSet, filled by load_plane_rois

    @property
    def name(self) -> str:
        return f"plane{self.plane}"

    @property
    def n_rois(self) -> int:
        if self.frames is None:
            raise SessionError(f"{self.folder / 'frames.rec'}: missing, so plane {self.plane}'s ROI count is unknown")
        shape = self.frames.dtype["F"].shape
        return int(shape[0]) if shape else 1

    @property
    def kind(self) -> np.ndarray:
        """Per extracted ROI: 0 soma, 1 dendrite."""
        return np.asarray(self.roi_set.kind)

    @property
    def parent(self) -> np.ndarray:
        """Per extracted ROI: its soma's index among the BCI plane's extracted ROIs, -1 none."""
        return np.asarray(self.roi_set.parent)

    def movie(self) -> Any:
        """The plane's raw frames (read-only, whole frames only), or None when the session kept none."""
        if self.movie_meta is None:
            return None
        meta_path = self.folder / "movie.json"
        dtype, height, width = movie_layout(meta_path, self.movie_meta)
        codec = self.movie_meta.get("codec", "raw")
        if codec not in MOVIE_FILES:
            raise SessionError(f"{meta_path}: codec {codec!r} is not one of {', '.join(MOVIE_FILES)}")
        path = self.folder / MOVIE_FILES[codec]
        if not path.exists():
            return None
        if codec == "zstd":
            try:
                chunked = ChunkedMovie(path, dtype, height, width)
            except CorruptFileError as exc:
                raise SessionError(str(exc)) from exc
            return chunked if len(chunked) else None
        n_frames = path.stat().st_size // (height * width * dtype.itemsize)
        return np.memmap(path, dtype=dtype, mode="r", shape=(n_frames, height, width)) if n_frames else None

    def reference(self) -> np.ndarray | None:
        """``rois/reference.npy`` of the plane (None: not saved)."""
        return load_reference(self.folder / "rois" / "reference.npy")


def load_planes(session: SessionData, with_rois: bool = True) -> list[PlaneData]:
    """Every plane of ``session`` (index = plane), records and (``with_rois``) ROI sets, checked together."""
    n_planes, bci_plane = session.n_planes, session.bci_plane
    planes: list[PlaneData] = []
    for plane in range(n_planes):
        folder = plane_folder(session.path, plane, bci_plane)
        if plane == bci_plane:
            planes.append(PlaneData(plane, folder, True, session.frames, session.movie_meta))
            continue
        if not folder.is_dir():
            raise SessionError(f"{folder}: missing: the session's config says n_planes = {n_planes}, so plane "
                               f"{plane}'s records should be here")
        notes: list[str] = []
        frames = read_checked_records(folder / "frames.rec", notes)
        session.notes += [f"plane{plane}/{note}" for note in notes]
        if frames is None:
            raise SessionError(f"{folder / 'frames.rec'}: missing: plane {plane} recorded nothing")
        if "F" not in (frames.dtype.names or ()):
            raise SessionError(f"{folder / 'frames.rec'}.json: rows have no 'F' field")
        meta_path = folder / "movie.json"
        movie_meta = read_json_object(meta_path)
        if movie_meta is not None:
            movie_layout(meta_path, movie_meta)
        planes.append(PlaneData(plane, folder, False, frames, movie_meta))
    if with_rois and any((p.folder / "rois").is_dir() for p in planes):
        for plane, roi_set in load_plane_rois(session, planes).items():
            planes[plane].roi_set = roi_set
    return planes


def load_plane_rois(session: SessionData, planes: list[PlaneData]) -> dict[int, RoiSet]:
    """Each plane's ROI set with kinds and parents, as the acquisition extracted them (cells only if the config
    said so, the parents renumbered into the BCI plane's extracted ROIs) and checked against the records."""
    from acquisition.roi_links import cells_only_planes, check_parents  # noqa: PLC0415 - heavy, offline only
    from acquisition.rois import RoiFileError, load_suite2p  # noqa: PLC0415

    bci_plane = session.bci_plane
    sets: dict[int, RoiSet] = {}
    for p in planes:
        rois_dir = p.folder / "rois"
        if not rois_dir.is_dir():
            raise SessionError(f"{rois_dir}: plane {p.plane} kept no ROI set")
        try:
            sets[p.plane] = load_suite2p(rois_dir)
        except RoiFileError as exc:
            raise SessionError(f"plane {p.plane}'s ROI set is unreadable: {exc}") from exc
    try:
        if session.config.acquisition.rois.only_cells:
            sets = cells_only_planes(sets, bci_plane)
        check_parents(sets, bci_plane)
    except RoiFileError as exc:
        raise SessionError(f"{session.path}: the planes' ROI links do not fit: {exc}") from exc
    session.notes += [f"plane{plane} ROI links: {note}" for plane, roi_set in sorted(sets.items())
                      for note in roi_set.link_notes]
    for p in planes:
        if p.frames is not None and sets[p.plane].n_rois != p.n_rois:
            raise SessionError(f"{p.folder / 'rois'}: holds {sets[p.plane].n_rois} ROIs to extract but "
                               f"{p.folder / 'frames.rec'} has {p.n_rois} columns")
        if (sets[p.plane].Ly, sets[p.plane].Lx) != (sets[bci_plane].Ly, sets[bci_plane].Lx):
            raise SessionError(f"{p.folder / 'rois'}: ROIs for {sets[p.plane].Ly}x{sets[p.plane].Lx} frames, but "
                               f"the BCI plane's are for {sets[bci_plane].Ly}x{sets[bci_plane].Lx}: the planes "
                               "disagree in size")
    return sets
