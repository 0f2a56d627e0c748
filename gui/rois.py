"""ROI outlines for the field-of-view display, read from a suite2p folder.

The rig's acquisition process saves the ROI set it extracts in ``<session>/acquisition/rois/`` in the
suite2p layout (``stat.npy`` with ``ypix``/``xpix``, optional ``iscell.npy``, ``ops.npy``) plus
``reference.npy``. ROI index ``i`` here is the rig's ROI index ``i`` (the decoder's ensemble indices),
so the console must read the same ROIs in the same order: from the session folder, or from the
suite2p folder the rig was configured with (with the same ``only_cells`` filter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gui.plane_rois import RoiKindError, read_kinds
from rig.core.safe_npy import NpyFileError, load_npy


class RoiLoadError(ValueError):
    """A folder that does not hold usable suite2p ROIs; the message names the folder and the problem."""


@dataclass
class RoiOutlines:
    folder: Path
    shape: tuple[int, int]  # full-frame (Ly, Lx) the ROI coordinates refer to
    label: np.ndarray  # (Ly, Lx) int32: ROI index per pixel, -1 outside every ROI
    outline_y: list[np.ndarray]
    outline_x: list[np.ndarray]
    centers: np.ndarray  # (n, 2) float: (y, x) of each ROI's median pixel
    reference: np.ndarray | None = None
    mean_image: np.ndarray | None = None  # ops.npy meanImg, when the folder has one (suite2p's mean image)
    notes: list[str] = field(default_factory=list)
    # per shown ROI: its stat.npy row, kind (gui.plane_rois: 0 soma, 1 dendrite) and parent soma's row in the
    # BCI plane's stat.npy (-1 none); n_stat: rows in stat.npy (the kind files' length)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    parent: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    n_stat: int = 0

    @property
    def n(self) -> int:
        return len(self.outline_y)

    def roi_at(self, y: float, x: float) -> int | None:
        """The ROI under full-frame position (y, x), if any."""
        iy, ix = int(np.floor(y)), int(np.floor(x))
        if 0 <= iy < self.shape[0] and 0 <= ix < self.shape[1]:
            roi = int(self.label[iy, ix])
            return roi if roi >= 0 else None
        return None


def _load_npy(path: Path, what: str, *, allow_objects: bool = True) -> np.ndarray:
    """suite2p stores lists of dicts as pickled object arrays: read them with the restricted loader, so a
    ``stat.npy`` that would run code (e.g. copied from another rig or a shared drive) is refused."""
    try:
        return load_npy(path, allow_objects=allow_objects)
    except NpyFileError as exc:  # names the file, and for a malicious pickle the forbidden global
        raise RoiLoadError(f"cannot read {what}: {exc}") from exc


def _ops_dict(folder: Path) -> dict:
    for name in ("ops.npy", "reg_outputs.npy"):
        path = folder / name
        if path.exists():
            ops = _load_npy(path, name)
            if ops.dtype == object and ops.shape == () and isinstance(ops.item(), dict):
                return dict(ops.item())
    return {}


def outline_pixels(ypix: np.ndarray, xpix: np.ndarray, thickness: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ROI's outline: mask pixels within ``thickness`` steps (4-neighbourhood) of a pixel outside it."""
    y0, x0 = int(ypix.min()), int(xpix.min())
    h, w = int(ypix.max()) - y0 + 1, int(xpix.max()) - x0 + 1
    mask = np.zeros((h + 2, w + 2), dtype=bool)
    mask[ypix - y0 + 1, xpix - x0 + 1] = True
    interior = mask
    for _ in range(thickness):
        eroded = np.zeros_like(interior)
        eroded[1:-1, 1:-1] = (interior[1:-1, 1:-1] & interior[:-2, 1:-1] & interior[2:, 1:-1]
                              & interior[1:-1, :-2] & interior[1:-1, 2:])
        interior = eroded
    ey, ex = np.nonzero(mask & ~interior)
    return (ey + y0 - 1).astype(np.int32), (ex + x0 - 1).astype(np.int32)


def load_roi_outlines(folder: str | Path, *, only_cells: bool = False, first_n: int | None = None,
                      frame_shape: tuple[int, int] | None = None, n_somata: int | None = None) -> RoiOutlines:
    """Read ``stat.npy`` (and the reference image, when present) from a suite2p plane folder.

    ``first_n``: keep only the first n ROIs. The rig's own ``acquisition/rois`` folder lists the ROIs
    it extracts first, in extraction order, then the ones it excluded (they only shape the neuropil),
    so the first n (n = ROIs per FluorFrame) are exactly the rig's ROI indices 0..n-1.
    ``only_cells``: keep the ROIs ``iscell.npy`` marks as cells, as the rig does with
    ``acquisition.rois.only_cells`` when it reads a suite2p folder.
    Kinds and links (``roi_kind.npy``/``roi_parent.npy``) are read and checked too; ``n_somata``: the BCI plane's
    ``stat.npy`` length, the range of a dendrite's parent (``None``: not checked).
    """
    folder = Path(folder)
    stat_path = folder / "stat.npy"
    if not stat_path.exists():
        raise RoiLoadError(f"{folder}: no stat.npy here (pick a suite2p plane folder, e.g. suite2p/plane0)")
    stat = _load_npy(stat_path, "stat.npy")
    if stat.ndim != 1:
        raise RoiLoadError(f"{stat_path}: expected a list of ROIs, got an array of shape {stat.shape}")
    notes: list[str] = []
    n_stat = len(stat)
    try:
        kind, parent = read_kinds(folder, n_stat, n_somata)
    except RoiKindError as exc:
        raise RoiLoadError(str(exc)) from exc
    rows = np.arange(n_stat)
    if first_n is not None:
        if first_n > len(stat):
            raise RoiLoadError(f"{stat_path}: {len(stat)} ROIs, but the rig extracts {first_n}")
        if first_n < len(stat):
            notes.append(f"{len(stat) - first_n} excluded ROIs not shown")
        stat = stat[:first_n]
        rows = rows[:first_n]
    if only_cells:
        iscell_path = folder / "iscell.npy"
        if not iscell_path.exists():
            raise RoiLoadError(f"{folder}: only_cells is set but there is no iscell.npy")
        iscell = _load_npy(iscell_path, "iscell.npy", allow_objects=False)
        keep = np.asarray(iscell).reshape(len(stat), -1)[:, 0] > 0.5
        stat = [s for s, k in zip(stat, keep, strict=True) if k]
        rows = rows[keep]
        notes.append(f"kept the {len(stat)} ROIs marked as cells in iscell.npy")
    ops = _ops_dict(folder)
    reference = None
    ref_path = folder / "reference.npy"
    if ref_path.exists():
        reference = np.asarray(_load_npy(ref_path, "reference.npy", allow_objects=False), dtype=np.float32)
    if reference is None and ("refImg" in ops or "meanImg" in ops):
        reference = np.asarray(ops.get("refImg", ops.get("meanImg")), dtype=np.float32)
    mean_image = np.asarray(ops["meanImg"], dtype=np.float32) if "meanImg" in ops else None
    if frame_shape is None and "Ly" in ops and "Lx" in ops:
        frame_shape = (int(ops["Ly"]), int(ops["Lx"]))
    if frame_shape is None and reference is not None and reference.ndim == 2:
        frame_shape = (int(reference.shape[0]), int(reference.shape[1]))
    ys, xs = [], []
    for i, roi in enumerate(stat):
        try:
            ypix = np.asarray(roi["ypix"], dtype=np.int64)
            xpix = np.asarray(roi["xpix"], dtype=np.int64)
        except (KeyError, TypeError, IndexError) as exc:
            raise RoiLoadError(f"{stat_path}: ROI {i} has no ypix/xpix ({exc})") from exc
        if ypix.size == 0 or ypix.shape != xpix.shape:
            raise RoiLoadError(f"{stat_path}: ROI {i} has {ypix.size} ypix and {xpix.size} xpix")
        ys.append(ypix)
        xs.append(xpix)
    if frame_shape is None:
        frame_shape = (int(max(y.max() for y in ys)) + 1, int(max(x.max() for x in xs)) + 1) if ys else (1, 1)
        notes.append("frame size not stored (no ops.npy or reference): taken from the ROI extent")
    Ly, Lx = frame_shape
    # The field of view is drawn a few hundred pixels wide: thicker outlines on large frames stay visible.
    thickness = max(1, round(max(Ly, Lx) / 300))
    label = np.full((Ly, Lx), -1, dtype=np.int32)
    outline_y: list[np.ndarray] = []
    outline_x: list[np.ndarray] = []
    centers = np.zeros((len(ys), 2), dtype=np.float64)
    for i, (ypix, xpix) in enumerate(zip(ys, xs, strict=True)):
        inside = (ypix >= 0) & (ypix < Ly) & (xpix >= 0) & (xpix < Lx)
        if not inside.all():
            raise RoiLoadError(f"{stat_path}: ROI {i} lies outside the {Ly}x{Lx} frame")
        label[ypix, xpix] = i
        oy, ox = outline_pixels(ypix, xpix, thickness)
        outline_y.append(oy)
        outline_x.append(ox)
        centers[i] = (np.median(ypix), np.median(xpix))
    return RoiOutlines(folder=folder, shape=(Ly, Lx), label=label, outline_y=outline_y, outline_x=outline_x,
                       centers=centers, reference=reference, mean_image=mean_image, notes=notes, rows=rows,
                       kind=kind[rows], parent=parent[rows], n_stat=n_stat)
