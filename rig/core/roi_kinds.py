"""ROI kinds and parent links on disk (``roi_kind.npy``, ``roi_parent.npy`` beside a suite2p ``stat.npy``).

Checked here once, because the acquisition (which extracts the ROIs) and the console (which draws and edits
links, and may not import the acquisition) read the same files and must refuse them with the same message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SOMA, DENDRITE = 0, 1
KIND_FILE, PARENT_FILE = "roi_kind.npy", "roi_parent.npy"


class RoiKindError(ValueError):
    """A ``roi_kind.npy``/``roi_parent.npy`` that cannot be used; the message names the file and the problem."""


def checked_kind(kind: Any, n: int, what: str) -> np.ndarray:
    """``kind`` as int8 if it has one 0 (soma) / 1 (dendrite) entry per ROI."""
    arr = np.asarray(kind)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise RoiKindError(f"{what}: {arr.size} entries (shape {arr.shape}) but stat.npy has {n} ROIs")
    if arr.dtype.kind not in "biu":
        raise RoiKindError(f"{what}: dtype {arr.dtype}, expected integers (0 soma, 1 dendrite)")
    bad = np.flatnonzero((arr != SOMA) & (arr != DENDRITE))
    if bad.size:
        raise RoiKindError(f"{what}: values must be 0 (soma) or 1 (dendrite), found {arr[bad[0]]} (ROI {bad[0]}, "
                           f"{bad.size} bad entries)")
    return arr.astype(np.int8)


def checked_parent(parent: Any, n: int, what: str) -> np.ndarray:
    """``parent`` as int32 if it has one entry per ROI, each a soma index >= 0 or -1 (none)."""
    arr = np.asarray(parent)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise RoiKindError(f"{what}: {arr.size} entries (shape {arr.shape}) but stat.npy has {n} ROIs")
    if arr.dtype.kind not in "iu":
        raise RoiKindError(f"{what}: dtype {arr.dtype}, expected integers (a soma index, -1 none)")
    bad = np.flatnonzero(arr < -1)
    if bad.size:
        raise RoiKindError(f"{what}: ROI {bad[0]} has parent {arr[bad[0]]}; a parent is a soma index >= 0 or "
                           "-1 (none)")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise RoiKindError(f"{what}: parent {arr.max()} does not fit int32")
    return arr.astype(np.int32)
