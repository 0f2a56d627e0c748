"""A suite2p ROI folder as the ROI picker edits it: detected and hand-drawn ROIs, their baseline traces.

``rig detect`` writes ``stat.npy``, ``iscell.npy``, ``ops.npy``, ``F.npy``, ``Fneu.npy`` and the registered
``data.bin``; the picker adds, moves and deletes ROIs and saves them back in the same layout (``stat`` entries
with ``ypix``, ``xpix``, ``lam``, ``med``, ``npix``; ``iscell``), so a hand-drawn ROI reaches the rig by the same
path as a detected one. When the ROIs change, ``F.npy``/``Fneu.npy`` are recomputed from ``data.bin`` (a
weighted mean of the ROI's pixels; the neuropil a ring around it without any ROI's pixels, as suite2p
builds it) so the ranking always reads traces of the ROIs on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gui.plane_rois import KIND_FILE, PARENT_FILE, RoiKindError, read_kinds, write_kinds
from rig.core.safe_npy import NpyFileError, load_npy

#: neuropil ring: from this many pixels outside the cell, with at least this many pixels (suite2p's defaults)
INNER_NEUROPIL_PX = 2
MIN_NEUROPIL_PIXELS = 350


class RoiFolderError(ValueError):
    """The folder cannot be edited or ranked; the message names the file."""


@dataclass
class RoiFolder:
    plane: Path
    stat: list[dict]
    iscell: np.ndarray  # (n, 2)
    ops: dict[str, Any]
    Ly: int
    Lx: int
    fs: float
    mean_img: np.ndarray
    max_img: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    # per stat row: kind (0 soma, 1 dendrite) and the parent soma's row in the BCI plane's stat.npy (-1 none),
    # from roi_kind.npy / roi_parent.npy (docs/PLANES.md); None: the folder has neither file
    kind: np.ndarray | None = None
    parent: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.stat)

    def rig_rows(self, only_cells: bool = True) -> np.ndarray:
        """The ``stat.npy`` rows the rig extracts, in its order: ensemble index i is row ``rig_rows()[i]``
        (``[acquisition.rois] only_cells``, the default, keeps the rows with ``iscell`` = 1)."""
        if not only_cells:
            return np.arange(self.n)
        return np.flatnonzero(self.iscell[:, 0] > 0.5) if self.n else np.zeros(0, np.int64)

    def centers(self) -> np.ndarray:
        return np.array([[float(np.mean(s["ypix"])), float(np.mean(s["xpix"]))] for s in self.stat]).reshape(-1, 2)


def _load(path: Path, objects: bool) -> Any:
    if not path.is_file():
        raise RoiFolderError(f"{path}: file not found")
    try:
        value = load_npy(path, allow_objects=objects)
    except NpyFileError as exc:
        raise RoiFolderError(str(exc)) from exc
    return value.item() if isinstance(value, np.ndarray) and value.dtype == object and value.shape == () else value


def find_plane(folder: str | Path) -> Path:
    folder = Path(folder)
    for candidate in (folder, folder / "plane0", folder / "suite2p" / "plane0"):
        if (candidate / "ops.npy").is_file():
            return candidate
    raise RoiFolderError(f"{folder}: no ops.npy here, in plane0/ or in suite2p/plane0/ (run rig detect first)")


def load_roi_folder(folder: str | Path) -> RoiFolder:
    """The folder's ROIs (none yet is fine: ROIs can be drawn on the mean image), images and frame rate."""
    plane = find_plane(folder)
    ops = _load(plane / "ops.npy", True)
    if not isinstance(ops, dict):
        raise RoiFolderError(f"{plane / 'ops.npy'}: expected a dict")
    mean = ops.get("meanImg")
    if mean is None:
        raise RoiFolderError(f"{plane / 'ops.npy'}: no meanImg to draw ROIs on")
    mean = np.asarray(mean, np.float32)
    Ly, Lx = mean.shape
    fs = float(ops.get("fs") or 0.0)
    if not fs > 0:
        raise RoiFolderError(f"{plane / 'ops.npy'}: no frame rate 'fs'")
    max_img = None
    if ops.get("max_proj") is not None:  # suite2p's max projection covers only the registered crop
        crop = np.asarray(ops["max_proj"], np.float32)
        max_img = np.zeros((Ly, Lx), np.float32)
        y0, x0 = int(np.ravel(ops.get("yrange", [0]))[0]), int(np.ravel(ops.get("xrange", [0]))[0])
        max_img[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop[: Ly - y0, : Lx - x0]
    stat: list[dict] = []
    iscell = np.zeros((0, 2))
    if (plane / "stat.npy").is_file():
        stat = [dict(s) for s in _load(plane / "stat.npy", True)]
        iscell = np.asarray(_load(plane / "iscell.npy", False), np.float64).reshape(len(stat), -1)[:, :2] \
            if (plane / "iscell.npy").is_file() else np.ones((len(stat), 2))
    kind = parent = None
    if (plane / KIND_FILE).is_file() or (plane / PARENT_FILE).is_file():
        try:
            kind, parent = read_kinds(plane, len(stat))
        except RoiKindError as exc:
            raise RoiFolderError(str(exc)) from exc
    return RoiFolder(plane, stat, iscell, ops, Ly, Lx, fs, mean, max_img, kind=kind, parent=parent)


def disk_roi(cy: float, cx: float, radius: float, Ly: int, Lx: int) -> dict:
    """A hand-drawn round ROI: every pixel within ``radius`` of the centre, equal weights."""
    r = max(1.0, float(radius))
    ys, xs = np.mgrid[max(0, int(cy - r)):min(Ly, int(cy + r) + 1), max(0, int(cx - r)):min(Lx, int(cx + r) + 1)]
    inside = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
    ypix, xpix = ys[inside].astype(np.int32), xs[inside].astype(np.int32)
    if ypix.size == 0:
        raise RoiFolderError(f"a ROI at ({cy:.0f}, {cx:.0f}) of radius {r:g} px has no pixel in the {Ly}x{Lx} image")
    lam = np.full(ypix.size, 1.0 / ypix.size, np.float32)
    return {"ypix": ypix, "xpix": xpix, "lam": lam, "med": [int(round(cy)), int(round(cx))], "npix": int(ypix.size),
            "radius": r, "manual": True}


def moved_roi(roi: dict, dy: int, dx: int, Ly: int, Lx: int) -> dict:
    """``roi`` shifted by (dy, dx) whole pixels; pixels that leave the image are dropped (never all of them)."""
    ypix, xpix = np.asarray(roi["ypix"]) + int(dy), np.asarray(roi["xpix"]) + int(dx)
    keep = (ypix >= 0) & (ypix < Ly) & (xpix >= 0) & (xpix < Lx)
    if not keep.any():
        raise RoiFolderError(f"moving the ROI by ({dy}, {dx}) px would put it outside the {Ly}x{Lx} image")
    lam = np.asarray(roi["lam"], np.float32)[keep]
    out = {k: v for k, v in roi.items() if k not in ("overlap", "soma_crop", "neuropil_mask")}
    out.update(ypix=ypix[keep].astype(np.int32), xpix=xpix[keep].astype(np.int32), lam=lam,
               med=[int(np.median(ypix[keep])), int(np.median(xpix[keep]))], npix=int(keep.sum()), manual=True)
    return out


def add_row_kind(rf: RoiFolder) -> None:
    """A ROI was appended to ``rf.stat``: a soma without a parent, when the folder has kinds."""
    if rf.kind is not None and rf.parent is not None:
        rf.kind = np.append(rf.kind, np.int8(0))
        rf.parent = np.append(rf.parent, np.int32(-1))


def delete_row_kind(rf: RoiFolder, row: int) -> None:
    """Stat row ``row`` was deleted: its kind and parent go with it."""
    if rf.kind is not None and rf.parent is not None:
        rf.kind = np.delete(rf.kind, row)
        rf.parent = np.delete(rf.parent, row)


def _movie(rf: RoiFolder) -> np.ndarray | None:
    path = rf.plane / "data.bin"
    if not path.is_file():
        return None
    n = path.stat().st_size // (rf.Ly * rf.Lx * 2)
    return np.memmap(path, np.int16, "r", shape=(n, rf.Ly, rf.Lx)) if n else None


def extract_traces(rf: RoiFolder, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """F and Fneu (n_rois, n_frames) of the current ROIs from the registered ``data.bin``."""
    movie = _movie(rf)
    if movie is None:
        raise RoiFolderError(f"{rf.plane / 'data.bin'}: no registered movie to measure the ROIs on")
    cell = np.zeros((rf.Ly, rf.Lx), bool)
    for s in rf.stat:
        cell[s["ypix"], s["xpix"]] = True
    yy, xx = np.mgrid[: rf.Ly, : rf.Lx]
    cells, rings = [], []
    for s in rf.stat:
        idx = np.asarray(s["ypix"]) * rf.Lx + np.asarray(s["xpix"])
        w = np.asarray(s["lam"], np.float64)
        cells.append((idx, w / w.sum() if w.sum() > 0 else np.full(w.size, 1.0 / w.size)))
        cy, cx = float(np.mean(s["ypix"])), float(np.mean(s["xpix"]))
        r_in = math.sqrt(len(idx) / math.pi) + INNER_NEUROPIL_PX
        r_out = r_in + 1.0
        while True:  # grow the ring until it holds enough non-cell pixels
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            ring = (d2 >= r_in ** 2) & (d2 < r_out ** 2) & ~cell
            if ring.sum() >= MIN_NEUROPIL_PIXELS or r_out > max(rf.Ly, rf.Lx):
                break
            r_out += 2.0
        rings.append(np.flatnonzero(ring))
    T = movie.shape[0]
    F = np.zeros((rf.n, T), np.float32)
    Fneu = np.zeros((rf.n, T), np.float32)
    for t0 in range(0, T, chunk):
        flat = np.asarray(movie[t0:t0 + chunk], np.float32).reshape(-1, rf.Ly * rf.Lx)
        for i, ((idx, w), ring) in enumerate(zip(cells, rings, strict=True)):
            F[i, t0:t0 + flat.shape[0]] = flat[:, idx] @ w
            Fneu[i, t0:t0 + flat.shape[0]] = flat[:, ring].mean(axis=1) if ring.size else 0.0
    return F, Fneu


def traces(rf: RoiFolder) -> tuple[np.ndarray, np.ndarray]:
    """The baseline traces of the ROIs on disk: suite2p's ``F.npy``/``Fneu.npy`` when they match, else measured."""
    f_path, n_path = rf.plane / "F.npy", rf.plane / "Fneu.npy"
    if f_path.is_file() and n_path.is_file():
        F, Fneu = _load(f_path, False), _load(n_path, False)
        if F.ndim == 2 and F.shape[0] == rf.n and F.shape == Fneu.shape:
            return np.asarray(F, np.float32), np.asarray(Fneu, np.float32)
        rf.notes.append(f"{f_path.name} does not match the {rf.n} ROIs of stat.npy: measured again from data.bin")
    return extract_traces(rf)


def save_rois(rf: RoiFolder) -> None:
    """Write ``stat.npy`` and ``iscell.npy`` (suite2p layout) and traces that match them."""
    arr = np.empty(rf.n, dtype=object)
    arr[:] = rf.stat
    np.save(rf.plane / "stat.npy", arr, allow_pickle=True)
    np.save(rf.plane / "iscell.npy", np.asarray(rf.iscell, np.float32).reshape(rf.n, 2))
    if rf.kind is not None and rf.parent is not None:  # kept aligned with stat.npy through the edits
        try:
            write_kinds(rf.plane, rf.kind, rf.parent, None)
        except RoiKindError as exc:
            raise RoiFolderError(str(exc)) from exc
    for stale in ("spks.npy",):
        (rf.plane / stale).unlink(missing_ok=True)
    if _movie(rf) is not None and rf.n:
        F, Fneu = extract_traces(rf)
        np.save(rf.plane / "F.npy", F)
        np.save(rf.plane / "Fneu.npy", Fneu)
    else:
        for stale in ("F.npy", "Fneu.npy"):
            (rf.plane / stale).unlink(missing_ok=True)
