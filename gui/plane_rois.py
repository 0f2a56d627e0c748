"""ROI kinds and dendrite -> soma links of a plane's ROI folder (docs/PLANES.md), as the console reads them.

Two optional files sit next to a plane folder's ``stat.npy``, one entry per ``stat.npy`` row:
``roi_kind.npy`` (int8: 0 soma, 1 dendrite; absent = every ROI a soma) and ``roi_parent.npy`` (int32: the row of
the dendrite's parent soma in the *BCI plane's* ``stat.npy``, -1 none; absent = no links). The acquisition reads
the same files (``acquisition.rois``); the console may not import it, so the checks are repeated here with the
same messages (keep them in step). Pure numpy: the live console, the review window and the link editor share it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rig.core.roi_kinds import (  # noqa: F401 - re-exported for the console
    DENDRITE,
    KIND_FILE,
    PARENT_FILE,
    SOMA,
    RoiKindError,
    checked_kind,
    checked_parent,
)
from rig.core.safe_npy import NpyFileError, load_npy

KIND_NAMES = {SOMA: "soma", DENDRITE: "dendrite"}


def check_kinds(kind: np.ndarray, parent: np.ndarray, n_somata: int | None, what: str) -> None:
    """Only dendrites have a parent, and (``n_somata``: the BCI plane's ``stat.npy`` length, None = not known
    yet) every parent is a soma the BCI plane has."""
    bad = np.flatnonzero((kind == SOMA) & (parent >= 0))
    if bad.size:
        raise RoiKindError(f"{what}: ROI {bad[0]} has parent {parent[bad[0]]} but is not a dendrite (kind 1 in "
                           f"{KIND_FILE}); only dendrites link to a soma")
    if n_somata is not None:
        missing = np.flatnonzero(parent >= n_somata)
        if missing.size:
            i = int(missing[0])
            raise RoiKindError(f"{what}: ROI {i} is linked to soma {int(parent[i])}, but the BCI plane has "
                               f"{n_somata} ROIs (0..{n_somata - 1})")


def _read(path: Path) -> np.ndarray:
    try:
        return np.asarray(load_npy(path, allow_objects=False))
    except NpyFileError as exc:
        raise RoiKindError(str(exc)) from exc


def read_kinds(folder: str | Path, n_rois: int, n_somata: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kind int8, parent int32), one per ``stat.npy`` row of ``folder``; defaults when the files are absent
    (a parent file without a kind file links somata, which is refused, as the acquisition refuses it)."""
    folder = Path(folder)
    kind_path, parent_path = folder / KIND_FILE, folder / PARENT_FILE
    kind = checked_kind(_read(kind_path), n_rois, str(kind_path)) if kind_path.is_file() \
        else np.zeros(n_rois, np.int8)
    parent = checked_parent(_read(parent_path), n_rois, str(parent_path)) if parent_path.is_file() \
        else np.full(n_rois, -1, np.int32)
    where = str(parent_path) + ("" if kind_path.is_file() else f" (no {KIND_FILE}: every ROI is a soma)")
    check_kinds(kind, parent, n_somata, where)
    return kind, parent


def write_kinds(folder: str | Path, kind: np.ndarray, parent: np.ndarray, n_somata: int | None) -> None:
    """Write both files (checked first; each replaced whole, so a reader never sees half of one)."""
    folder = Path(folder)
    kind = checked_kind(kind, np.size(kind), str(folder / KIND_FILE))
    parent = checked_parent(parent, kind.size, str(folder / PARENT_FILE))
    check_kinds(kind, parent, n_somata, str(folder / PARENT_FILE))
    for name, value in ((KIND_FILE, kind), (PARENT_FILE, parent)):
        tmp = folder / f".{name}.tmp.npy"
        np.save(tmp, value)
        os.replace(tmp, folder / name)


def session_plane_folders(session: str | Path, bci_plane: int = 0) -> dict[int, Path]:
    """Plane -> ROI folder of a session (docs/PLANES.md): ``acquisition/rois`` for the BCI plane,
    ``acquisition/planes/planeK/rois`` for every other plane K found; BCI plane first."""
    acq = Path(session) / "acquisition"
    folders = {bci_plane: acq / "rois"}
    planes = acq / "planes"
    if planes.is_dir():
        for sub in sorted(planes.iterdir()):
            if sub.name.startswith("plane") and sub.name[5:].isdigit() and (sub / "rois").is_dir():
                plane = int(sub.name[5:])
                if plane != bci_plane:
                    folders[plane] = sub / "rois"
    return folders


def links_of(kind: np.ndarray, parent: np.ndarray) -> list[tuple[int, int]]:
    """(dendrite row, soma row) of every linked dendrite."""
    rows = np.flatnonzero((kind == DENDRITE) & (parent >= 0))
    return [(int(r), int(parent[r])) for r in rows]
