"""Dendrite -> soma links across planes: filtering every plane's ROIs together and applying config links.

A plane's :class:`~acquisition.rois.RoiSet` carries ``kind`` and ``parent`` per ROI; a parent indexes the BCI
plane's ROI set, so filtering the BCI plane (``only_cells``) renumbers every other plane's parents. These
functions keep that bookkeeping in one place, and check links against the ROI sets with messages that name
the link, the plane and the ROI counts (issue 23: a dendrite linked to a missing soma is a clear message).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from acquisition.config import RoiLink
from acquisition.rois import DENDRITE, SOMA, RoiFileError, RoiSet


def cells_only_planes(sets: Mapping[int, RoiSet], bci_plane: int) -> dict[int, RoiSet]:
    """Every plane's :meth:`RoiSet.cells_only`, with parents renumbered into the BCI plane's filtered set."""
    if bci_plane not in sets:
        raise RoiFileError(f"the BCI plane {bci_plane} has no ROI set (planes given: {sorted(sets)})")
    check_parents(sets, bci_plane)
    parent_map = sets[bci_plane].cells_index_map()
    return {plane: roi_set.cells_only(parent_map) for plane, roi_set in sets.items()}


def check_parents(sets: Mapping[int, RoiSet], bci_plane: int) -> None:
    """Every parent names an existing soma (kind 0) of the BCI plane; a RoiFileError names the first that does not."""
    if bci_plane not in sets:
        raise RoiFileError(f"the BCI plane {bci_plane} has no ROI set (planes given: {sorted(sets)})")
    bci = sets[bci_plane]
    assert bci.kind is not None
    for plane, roi_set in sorted(sets.items()):
        assert roi_set.parent is not None
        for roi in np.flatnonzero(roi_set.parent >= 0):
            soma = int(roi_set.parent[roi])
            if soma >= bci.n_rois:
                raise RoiFileError(f"plane {plane} ROI {roi} is linked to soma {soma}, but the BCI plane "
                                   f"({bci_plane}) has {bci.n_rois} ROIs (0..{bci.n_rois - 1})")
            if bci.kind[soma] != SOMA:
                raise RoiFileError(f"plane {plane} ROI {roi} is linked to BCI-plane ROI {soma}, which is a "
                                   "dendrite, not a soma")


def apply_links(sets: Mapping[int, RoiSet], links: Sequence[RoiLink], bci_plane: int) -> dict[int, RoiSet]:
    """The ROI sets with the config's ``[[acquisition.rois.links]]`` applied on top of their files' links.

    Indices are the extracted ones (after ``only_cells``), as the config documents. Each link makes ROI
    ``roi`` of ``plane`` a dendrite whose parent is ``soma``; a link that overrides a different file link wins
    and is noted in that set's ``link_notes``. Two links for one dendrite that disagree are an error.
    """
    if bci_plane not in sets:
        raise RoiFileError(f"the BCI plane {bci_plane} has no ROI set (planes given: {sorted(sets)})")
    n_soma = sets[bci_plane].n_rois
    kinds = {p: np.array(s.kind, copy=True) for p, s in sets.items()}
    parents = {p: np.array(s.parent, copy=True) for p, s in sets.items()}
    notes: dict[int, list[str]] = {p: list(s.link_notes) for p, s in sets.items()}
    seen: dict[tuple[int, int], int] = {}
    for i, link in enumerate(links):
        name = f"acquisition.rois.links[{i}] (plane={link.plane}, roi={link.roi}, soma={link.soma})"
        if link.plane not in sets:
            raise RoiFileError(f"{name}: there is no plane {link.plane} (planes with ROIs: {sorted(sets)})")
        if link.plane == bci_plane:
            raise RoiFileError(f"{name}: a dendrite's plane must not be the BCI plane ({bci_plane})")
        if link.soma >= n_soma:
            raise RoiFileError(f"{name}: soma {link.soma} does not exist: the BCI plane ({bci_plane}) has "
                               f"{n_soma} ROIs (0..{n_soma - 1})")
        n_plane = sets[link.plane].n_rois
        if link.roi >= n_plane:
            raise RoiFileError(f"{name}: dendrite {link.roi} does not exist: plane {link.plane} has {n_plane} "
                               f"ROIs (0..{n_plane - 1})")
        if kinds[bci_plane][link.soma] != SOMA:
            raise RoiFileError(f"{name}: BCI-plane ROI {link.soma} is a dendrite, not a soma")
        key = (link.plane, link.roi)
        if key in seen and links[seen[key]].soma != link.soma:
            raise RoiFileError(f"{name}: plane {link.plane} ROI {link.roi} is already linked to soma "
                               f"{links[seen[key]].soma} by acquisition.rois.links[{seen[key]}]")
        seen[key] = i
        old = int(parents[link.plane][link.roi])
        if old >= 0 and old != link.soma:
            notes[link.plane].append(f"{name} replaces the folder's link of ROI {link.roi} to soma {old}")
        kinds[link.plane][link.roi] = DENDRITE
        parents[link.plane][link.roi] = link.soma
    return {p: dataclasses.replace(s, kind=kinds[p], parent=parents[p], link_notes=notes[p])
            for p, s in sets.items()}


def link_table(sets: Mapping[int, RoiSet]) -> list[tuple[int, int, int]]:
    """Every link as (plane, dendrite ROI, soma ROI on the BCI plane), sorted."""
    out: list[tuple[int, int, int]] = []
    for plane, roi_set in sorted(sets.items()):
        assert roi_set.parent is not None
        out += [(plane, int(r), int(roi_set.parent[r])) for r in np.flatnonzero(roi_set.parent >= 0)]
    return out
