"""The dendrite -> soma links of a set of plane folders, as the link editor edits them (no Qt).

Which folders (:func:`link_folders`): a finished session's (``acquisition/rois`` for the BCI plane,
``acquisition/planes/planeK/rois`` for plane K: what ``rig dendrites`` reads), or the suite2p plane folders
a rig config names (``[acquisition.rois] plane_dirs``, or ``suite2p_dir``'s ``plane0``, ``plane1``...: what
the next session reads), or folders given one per plane.

Numbering: the editor shows and numbers ROIs as the rig does (after ``only_cells``), like ``decoder.up`` and
``[[acquisition.rois.links]]``; the files are per ``stat.npy`` row, so every edit goes through ``rows``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gui.plane_rois import DENDRITE, SOMA, RoiKindError, read_kinds, session_plane_folders, write_kinds
from gui.planes_model import plane_settings
from gui.rois import RoiLoadError, RoiOutlines, load_roi_outlines
from rig.core.safe_npy import NpyFileError, load_npy
from rig.core.store import CorruptFileError, read_records

#: neuropil subtracted from the traces the suggestion correlates (suite2p's and the decoder's default)
NEUROPIL_COEF = 0.7


class LinkSetError(ValueError):
    """Folders that cannot be linked (missing, unreadable, inconsistent); the message names the folder."""


@dataclass
class PlaneLinks:
    """One plane's folder: its ROIs as shown, and kind/parent per ``stat.npy`` row (parents: BCI-plane rows)."""

    plane: int
    folder: Path
    rois: RoiOutlines
    kind: np.ndarray
    parent: np.ndarray

    def sync(self) -> None:
        """Refresh the shown ROIs' kind/parent after an edit (the field of view draws from them)."""
        self.rois.kind = self.kind[self.rois.rows]
        self.rois.parent = self.parent[self.rois.rows]


def _session_settings(session: Path) -> dict[str, Any]:
    path = session / "config.resolved.json"
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise LinkSetError(f"{path}: unreadable ({exc})") from exc


def config_plane_folders(resolved: dict[str, Any]) -> dict[int, Path]:
    """The suite2p plane folders a rig config names, by plane (empty when it names none: the simulator)."""
    n_planes, _ = plane_settings(resolved)
    rois = (resolved.get("acquisition") or {}).get("rois") or {}
    suite2p_dir = str(rois.get("suite2p_dir") or "")
    plane_dirs = [str(d) for d in rois.get("plane_dirs") or []]
    if plane_dirs:
        return {k: Path(d or suite2p_dir) for k, d in enumerate(plane_dirs) if d or suite2p_dir}
    if not suite2p_dir or n_planes < 2:
        return {}
    base = Path(suite2p_dir)
    parent = base if (base / "plane0").is_dir() else base.parent
    found = {k: parent / f"plane{k}" for k in range(n_planes) if (parent / f"plane{k}").is_dir()}
    return found if len(found) == n_planes else {}


def link_folders(paths: list[str | Path], bci_plane: int | None = None) -> tuple[dict[int, Path], int, bool]:
    """(plane -> folder, BCI plane, only_cells) for ``rig console --link``: one session folder, one suite2p
    folder holding ``plane0``, ``plane1``..., or one plane folder per plane in plane order."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise LinkSetError(f"not a folder: {', '.join(missing)}")
    if len(paths) == 1 and (paths[0] / "acquisition" / "rois").is_dir():
        settings = _session_settings(paths[0])
        n_planes, configured_bci = plane_settings(settings)
        bci = configured_bci if bci_plane is None else bci_plane
        folders = session_plane_folders(paths[0], bci)
        only_cells = bool(((settings.get("acquisition") or {}).get("rois") or {}).get("only_cells", True))
        return folders, bci, only_cells
    if len(paths) == 1:
        planes = sorted((p for p in paths[0].glob("plane*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
        if not planes:
            raise LinkSetError(f"{paths[0]}: neither a session folder (acquisition/rois) nor a suite2p folder with "
                               "plane0, plane1...: give one plane folder per plane")
        return {int(p.name[5:]): p for p in planes}, bci_plane or 0, True
    return dict(enumerate(paths)), bci_plane or 0, True


class LinkSet:
    """Every plane's kinds and links; edits in memory until :meth:`save`."""

    def __init__(self, folders: dict[int, Path], bci_plane: int, only_cells: bool = True) -> None:
        if bci_plane not in folders:
            raise LinkSetError(f"no ROI folder for the BCI plane {bci_plane} (planes given: {sorted(folders)})")
        if len(folders) < 2:
            raise LinkSetError(f"only one plane ({sorted(folders)}): links join a dendrite on another plane to its "
                               "soma on the BCI plane")
        self.bci_plane = bci_plane
        self.planes: dict[int, PlaneLinks] = {}
        try:
            bci = load_roi_outlines(folders[bci_plane], only_cells=only_cells)
            self.planes[bci_plane] = PlaneLinks(bci_plane, Path(folders[bci_plane]), bci, bci.kind.copy(),
                                                np.full(bci.n_stat, -1, np.int32))
            for plane, folder in sorted(folders.items()):
                if plane != bci_plane:
                    rois = load_roi_outlines(folder, only_cells=only_cells, n_somata=bci.n_stat)
                    kind, parent = read_kinds(folder, rois.n_stat, bci.n_stat)
                    self.planes[plane] = PlaneLinks(plane, Path(folder), rois, kind, parent)
        except (RoiLoadError, RoiKindError) as exc:
            raise LinkSetError(str(exc)) from exc
        self.changed: set[int] = set()

    @property
    def bci(self) -> PlaneLinks:
        return self.planes[self.bci_plane]

    def other_planes(self) -> list[int]:
        return [p for p in sorted(self.planes) if p != self.bci_plane]

    def _check(self, plane: int, roi: int) -> PlaneLinks:
        if plane == self.bci_plane or plane not in self.planes:
            raise LinkSetError(f"plane {plane}: not a dendrite plane (dendrite planes: {self.other_planes()})")
        links = self.planes[plane]
        if not 0 <= roi < links.rois.n:
            raise LinkSetError(f"plane {plane} has no ROI {roi} (0..{links.rois.n - 1})")
        return links

    def link(self, plane: int, roi: int, soma: int) -> None:
        """Make ROI ``roi`` of ``plane`` a dendrite of soma ``soma`` of the BCI plane (rig numbering)."""
        links = self._check(plane, roi)
        if not 0 <= soma < self.bci.rois.n:
            raise LinkSetError(f"the BCI plane has no soma {soma} (0..{self.bci.rois.n - 1})")
        if self.bci.rois.kind[soma] != SOMA:
            raise LinkSetError(f"BCI-plane ROI {soma} is a dendrite, not a soma")
        row = links.rois.rows[roi]
        links.kind[row], links.parent[row] = DENDRITE, self.bci.rois.rows[soma]
        links.sync()
        self.changed.add(plane)

    def unlink(self, plane: int, roi: int) -> None:
        """Drop the ROI's link; it stays a dendrite (mark it a soma with :meth:`set_kind`)."""
        links = self._check(plane, roi)
        links.parent[links.rois.rows[roi]] = -1
        links.sync()
        self.changed.add(plane)

    def set_kind(self, plane: int, roi: int, kind: int) -> None:
        """Soma or dendrite; a soma loses its link."""
        links = self._check(plane, roi)
        row = links.rois.rows[roi]
        links.kind[row] = DENDRITE if kind == DENDRITE else SOMA
        if kind != DENDRITE:
            links.parent[row] = -1
        links.sync()
        self.changed.add(plane)

    def soma_of(self, plane: int, roi: int) -> int | None:
        """The linked soma's BCI-plane index (rig numbering), None without a link (or a soma not extracted)."""
        links = self._check(plane, roi)
        row = int(links.rois.parent[roi])
        hits = np.flatnonzero(self.bci.rois.rows == row) if row >= 0 else np.zeros(0, np.int64)
        return int(hits[0]) if hits.size else None

    def links(self, plane: int) -> list[tuple[int, int]]:
        """(dendrite, soma) of the plane's links, rig numbering."""
        out = []
        for roi in np.flatnonzero(self.planes[plane].rois.parent >= 0):
            soma = self.soma_of(plane, int(roi))
            if soma is not None:
                out.append((int(roi), soma))
        return out

    def apply(self, plane: int, pairs: list[tuple[int, int]]) -> int:
        """Link every (dendrite, soma) pair (a suggestion); returns how many links changed."""
        changed = 0
        for roi, soma in pairs:
            if self.soma_of(plane, roi) != soma:
                self.link(plane, roi, soma)
                changed += 1
        return changed

    def save(self) -> list[Path]:
        """Write ``roi_kind.npy``/``roi_parent.npy`` into every edited plane's folder; the folders written."""
        written = []
        for plane in sorted(self.changed):
            links = self.planes[plane]
            try:
                write_kinds(links.folder, links.kind, links.parent, self.bci.rois.n_stat)
            except (RoiKindError, OSError) as exc:
                raise LinkSetError(f"plane {plane} not saved: {exc}") from exc
            written.append(links.folder)
        self.changed.clear()
        return written


def shown_stat(links: PlaneLinks) -> list[dict]:
    """The ``stat.npy`` entries of the plane's shown ROIs, in the rig's numbering."""
    try:
        stat = load_npy(links.folder / "stat.npy", allow_objects=True)
    except NpyFileError as exc:
        raise LinkSetError(str(exc)) from exc
    return [dict(stat[row]) for row in links.rois.rows]


def _plane_traces(links: PlaneLinks) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(F - 0.7 Fneu of the shown ROIs (rois, frames), volume numbers or None): a session plane's ``frames.rec``
    (next to its ``rois/``), else suite2p's ``F.npy``/``Fneu.npy``; None when the folder has neither for these ROIs."""
    rec = links.folder.parent / "frames.rec"
    if links.folder.name == "rois" and rec.is_file():
        try:
            rows = read_records(rec)
        except (CorruptFileError, OSError) as exc:
            raise LinkSetError(f"{rec}: {exc}") from exc
        if rows.size and rows["F"].ndim == 2 and rows["F"].shape[1] == links.rois.n:
            corrected = rows["F"].astype(np.float32) - NEUROPIL_COEF * rows["Fneu"].astype(np.float32)
            return corrected.T, np.asarray(rows["frame"])
    f_path, n_path = links.folder / "F.npy", links.folder / "Fneu.npy"
    if f_path.is_file() and n_path.is_file():
        try:
            F = np.asarray(load_npy(f_path, allow_objects=False), np.float32)
            Fneu = np.asarray(load_npy(n_path, allow_objects=False), np.float32)
        except NpyFileError as exc:
            raise LinkSetError(str(exc)) from exc
        if F.ndim == 2 and F.shape[0] == links.rois.n_stat and F.shape == Fneu.shape:
            return (F - NEUROPIL_COEF * Fneu)[links.rois.rows], None
    return None


def suggestion_traces(links: LinkSet, plane: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(dendrite-plane F, BCI-plane F) of the shown ROIs over the same volumes, or None when the folders do not
    hold traces of both (the suggestion then goes by position and overlap only)."""
    dend, soma = _plane_traces(links.planes[plane]), _plane_traces(links.bci)
    if dend is None or soma is None:
        return None
    (f_d, frames_d), (f_s, frames_s) = dend, soma
    if frames_d is not None and frames_s is not None:  # a session: the same volumes by number
        common, i_d, i_s = np.intersect1d(frames_d, frames_s, return_indices=True)
        f_d, f_s = f_d[:, i_d], f_s[:, i_s]
    return (f_d, f_s) if f_d.shape[1] == f_s.shape[1] and f_d.shape[1] >= 3 else None
