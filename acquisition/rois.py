"""ROIs from suite2p output (``stat.npy``, ``iscell.npy``, ``ops.npy``), read without importing suite2p.

Both ``ops.npy`` layouts are accepted: suite2p 0.x writes one flat dict; 1.x merges ``db``, ``settings``
(nested: ``ops["registration"]["maxregshift"]``), ``reg_outputs`` and ``detect_outputs``, so ``refImg``,
``meanImg``, ``Ly``, ``Lx`` stay at the top level. :attr:`RoiSet.ops` is always flat.

ROI kinds and links (docs/PLANES.md): a plane folder may hold ``roi_kind.npy`` (int8, 0 soma / 1 dendrite)
and ``roi_parent.npy`` (int32, the parent soma's row in the BCI plane's ``stat.npy``, -1 none), aligned with
its ``stat.npy``. Links across planes (filtering, config links) are in :mod:`acquisition.roi_links`.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rig.core.roi_kinds import DENDRITE, KIND_FILE, PARENT_FILE, SOMA, RoiKindError, checked_kind, checked_parent
from rig.core.safe_npy import NpyFileError, load_npy

#: settings sections of suite2p 1.x, flattened in this order (earlier sections win a key clash, so
#: ``batch_size`` and ``block_size`` keep their registration meaning)
OPS_SECTIONS = ("registration", "extraction", "detection", "classification", "dcnv_preprocess", "run", "io")

#: keys of each section that :meth:`RoiSet.save_suite2p` writes back into the nested 1.x layout
_SECTION_KEYS = {
    "registration": ("align_by_chan2", "nimg_init", "maxregshift", "do_bidiphase", "bidiphase", "batch_size",
                     "nonrigid", "block_size", "smooth_sigma_time", "smooth_sigma", "spatial_taper",
                     "th_badframes", "norm_frames", "snr_thresh", "subpixel", "two_step_registration",
                     "reg_tif", "reg_tif_chan2", "maxregshiftNR"),
    "extraction": ("snr_threshold", "neuropil_extract", "neuropil_coefficient", "inner_neuropil_radius",
                   "min_neuropil_pixels", "lam_percentile", "allow_overlap", "circular_neuropil"),
}

#: suite2p's defaults for the settings this package uses, filled in when an ops file lacks them
SUITE2P_DEFAULTS: dict[str, Any] = {
    "maxregshift": 0.1, "smooth_sigma": 1.15, "spatial_taper": 3.45, "norm_frames": True, "nimg_init": 400,
    "inner_neuropil_radius": 2, "min_neuropil_pixels": 350, "lam_percentile": 50.0, "allow_overlap": False,
    "neuropil_coefficient": 0.7,
}


#: ROI kinds (``roi_kind.npy``; the kind and parent files are checked in rig.core.roi_kinds)
KIND_NAMES = {SOMA: "soma", DENDRITE: "dendrite"}


class RoiFileError(ValueError):
    """A suite2p output file is missing, unreadable or inconsistent; the message names the file."""


class RoiLinkWarning(UserWarning):
    """A dendrite lost its link because its soma was filtered out (e.g. not a cell); it stays a dendrite."""


@dataclass
class RoiSet:
    """ROIs to extract, in full-frame pixel coordinates of an (Ly, Lx) field of view.

    ``excluded_stat`` holds ROIs that are not extracted (e.g. non-cells after :meth:`cells_only`) but whose
    pixels still count as cell pixels when neuropil masks are built, exactly as suite2p builds them from
    every detected ROI. ``source_index`` maps each extracted ROI to its row in the original ``stat.npy``.

    ``kind`` (int8, :data:`SOMA`/:data:`DENDRITE`) and ``parent`` (int32, -1 none) are per extracted ROI;
    ``parent`` indexes the BCI plane's ROI set as it stands next to this one: its ``stat.npy`` rows when
    loaded, its extracted ROIs after :func:`acquisition.roi_links.cells_only_planes` (which passes the BCI
    plane's :meth:`cells_index_map` to :meth:`cells_only`). ``link_notes`` lists links that were dropped.
    """

    stat: list[dict]
    iscell: np.ndarray  # (n, 2): [is-cell 0/1, classifier probability]
    Ly: int
    Lx: int
    ref_img: np.ndarray | None = None
    mean_img: np.ndarray | None = None
    ops: dict[str, Any] = field(default_factory=dict)
    excluded_stat: list[dict] = field(default_factory=list)
    source_index: np.ndarray | None = None
    kind: np.ndarray | None = None  # None: all soma
    parent: np.ndarray | None = None  # None: no links
    link_notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.iscell = np.asarray(self.iscell, dtype=np.float64).reshape(-1, 2)
        if len(self.stat) != self.iscell.shape[0]:
            raise ValueError(f"stat has {len(self.stat)} ROIs but iscell has {self.iscell.shape[0]} rows")
        if self.source_index is None:
            self.source_index = np.arange(len(self.stat))
        n = len(self.stat)
        self.kind = np.zeros(n, np.int8) if self.kind is None else _checked_kind(self.kind, n, "kind")
        self.parent = np.full(n, -1, np.int32) if self.parent is None else _checked_parent(self.parent, n, "parent")
        _check_kind_parent(self.kind, self.parent, "RoiSet")
        for what, rois in (("stat", self.stat), ("excluded_stat", self.excluded_stat)):
            for i, roi in enumerate(rois):
                _check_roi(roi, i, self.Ly, self.Lx, what)

    @property
    def n_rois(self) -> int:
        return len(self.stat)

    @property
    def has_links(self) -> bool:
        """Any dendrite or any parent: worth writing ``roi_kind.npy``/``roi_parent.npy``."""
        assert self.kind is not None and self.parent is not None
        return bool(np.any(self.kind != SOMA) or np.any(self.parent >= 0))

    def cells_index_map(self) -> np.ndarray:
        """For each ROI of this set, its index after :meth:`cells_only` (-1: filtered out)."""
        keep = self.iscell[:, 0] > 0.5
        out = np.full(self.n_rois, -1, np.int32)
        out[keep] = np.arange(int(keep.sum()), dtype=np.int32)
        return out

    def cells_only(self, parent_map: np.ndarray | None = None) -> RoiSet:
        """The ROIs suite2p classified as cells (``iscell[:, 0] > 0.5``); the others go to ``excluded_stat``.

        ``kind``/``parent`` follow their ROIs. ``parent_map`` (the BCI plane's :meth:`cells_index_map`) renumbers
        the parents into the BCI plane's filtered set; a dendrite whose soma was filtered out keeps its kind,
        loses its link (-1) and the loss is warned and kept in ``link_notes`` (not an error: suite2p's
        classifier may reject a soma whose dendrite is still worth recording). Without ``parent_map`` the
        parents are left as they are (right when the BCI plane's set is not filtered).
        """
        keep = self.iscell[:, 0] > 0.5
        assert self.kind is not None and self.parent is not None
        parent = self.parent[keep].copy()
        notes = list(self.link_notes)
        if parent_map is not None:
            parent_map = np.asarray(parent_map, dtype=np.int64)
            rows = np.flatnonzero(keep)
            for i in np.flatnonzero(parent >= 0):
                old = int(parent[i])
                if old >= parent_map.size:
                    raise RoiFileError(f"ROI {rows[i]} is linked to soma {old}, but the BCI plane has only "
                                       f"{parent_map.size} ROIs (0..{parent_map.size - 1})")
                parent[i] = parent_map[old]
                if parent[i] < 0:
                    note = (f"dendrite ROI {rows[i]} (now {i}) lost its link: its soma, BCI-plane ROI {old}, "
                            "is not a cell (iscell) and is not extracted")
                    notes.append(note)
                    warnings.warn(note, RoiLinkWarning, stacklevel=2)
        return RoiSet(
            stat=[s for s, k in zip(self.stat, keep, strict=True) if k],
            iscell=self.iscell[keep],
            Ly=self.Ly, Lx=self.Lx, ref_img=self.ref_img, mean_img=self.mean_img, ops=dict(self.ops),
            excluded_stat=self.excluded_stat + [s for s, k in zip(self.stat, keep, strict=True) if not k],
            source_index=np.asarray(self.source_index)[keep],
            kind=self.kind[keep], parent=parent, link_notes=notes,
        )

    def save_suite2p(self, folder: str | Path, *, links: bool | None = None) -> Path:
        """Write ``stat.npy``, ``iscell.npy`` and ``ops.npy`` (suite2p 1.x nested layout) into ``folder``.

        Excluded ROIs are written too (as non-cells) so the folder loads back with the same neuropil.
        ``roi_kind.npy``/``roi_parent.npy`` are written when ``links`` is True, or None and :attr:`has_links`
        (excluded rows as unlinked somata); otherwise stale ones are removed so the folder reloads as saved.
        The extracted ROIs come first, so a parent index stays valid against the saved BCI plane.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stat = list(self.stat) + list(self.excluded_stat)
        iscell = np.concatenate([self.iscell, np.zeros((len(self.excluded_stat), 2))], axis=0)
        stat_arr = np.empty(len(stat), dtype=object)
        stat_arr[:] = stat
        np.save(folder / "stat.npy", stat_arr, allow_pickle=True)
        np.save(folder / "iscell.npy", iscell.astype(np.float32))
        np.save(folder / "ops.npy", self._nested_ops(), allow_pickle=True)
        assert self.kind is not None and self.parent is not None
        if links or (links is None and self.has_links):
            n_ex = len(self.excluded_stat)
            np.save(folder / KIND_FILE, np.concatenate([self.kind, np.zeros(n_ex, np.int8)]))
            np.save(folder / PARENT_FILE, np.concatenate([self.parent, np.full(n_ex, -1, np.int32)]))
        else:
            for name in (KIND_FILE, PARENT_FILE):
                (folder / name).unlink(missing_ok=True)
        return folder

    def _nested_ops(self) -> dict[str, Any]:
        flat = dict(SUITE2P_DEFAULTS)
        flat.update(self.ops)
        nested: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTION_KEYS}
        for key, value in flat.items():
            for name, keys in _SECTION_KEYS.items():
                if key in keys:
                    sections[name][key] = value
                    break
            else:
                nested[key] = value
        nested.update(sections)
        nested["Ly"], nested["Lx"] = self.Ly, self.Lx
        if self.ref_img is not None:
            nested["refImg"] = self.ref_img
        if self.mean_img is not None:
            nested["meanImg"] = self.mean_img
        return nested


def _checked_kind(kind: Any, n: int, what: str) -> np.ndarray:
    try:
        return checked_kind(kind, n, what)
    except RoiKindError as exc:
        raise RoiFileError(str(exc)) from None


def _checked_parent(parent: Any, n: int, what: str) -> np.ndarray:
    try:
        return checked_parent(parent, n, what)
    except RoiKindError as exc:
        raise RoiFileError(str(exc)) from None


def _check_kind_parent(kind: np.ndarray, parent: np.ndarray, what: str) -> None:
    bad = np.flatnonzero((kind == SOMA) & (parent >= 0))
    if bad.size:
        raise RoiFileError(f"{what}: ROI {bad[0]} has parent {parent[bad[0]]} but is not a dendrite (kind 1 in "
                           f"{KIND_FILE}); only dendrites link to a soma")


def _load_kinds(plane: Path, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``roi_kind.npy``/``roi_parent.npy`` if present, checked (absent: every ROI a soma, no links; so a
    parent file without a kind file links somata, which is refused)."""
    kind_path, parent_path = plane / KIND_FILE, plane / PARENT_FILE
    kind = _checked_kind(_load_npy(kind_path, pickled=False), n, str(kind_path)) if kind_path.is_file() else None
    parent = (_checked_parent(_load_npy(parent_path, pickled=False), n, str(parent_path))
              if parent_path.is_file() else None)
    if parent is not None:
        where = f"{parent_path}" + ("" if kind is not None else f" (no {KIND_FILE}: every ROI is a soma)")
        _check_kind_parent(np.zeros(n, np.int8) if kind is None else kind, parent, where)
    return kind, parent


def _check_roi(roi: Any, i: int, Ly: int, Lx: int, what: str) -> None:
    if not isinstance(roi, dict):
        raise RoiFileError(f"{what}[{i}] is a {type(roi).__name__}, expected a dict")
    for key in ("ypix", "xpix", "lam"):
        if key not in roi:
            raise RoiFileError(f"{what}[{i}] has no {key!r}")
    ypix, xpix, lam = (np.asarray(roi[k]) for k in ("ypix", "xpix", "lam"))
    if not (ypix.shape == xpix.shape == lam.shape) or ypix.ndim != 1:
        raise RoiFileError(f"{what}[{i}]: ypix, xpix and lam must be 1-D and of equal length, got "
                           f"{ypix.shape}, {xpix.shape}, {lam.shape}")
    if ypix.size and (ypix.min() < 0 or ypix.max() >= Ly or xpix.min() < 0 or xpix.max() >= Lx):
        raise RoiFileError(f"{what}[{i}]: pixels outside the {Ly}x{Lx} field of view")
    if "overlap" in roi and np.asarray(roi["overlap"]).shape != ypix.shape:
        raise RoiFileError(f"{what}[{i}]: 'overlap' has shape {np.asarray(roi['overlap']).shape}, "
                           f"expected {ypix.shape}")


def normalise_ops(ops: dict[str, Any]) -> dict[str, Any]:
    """Flatten a suite2p 1.x nested ops dict (a flat 0.x one passes through); fill missing defaults."""
    flat = {k: v for k, v in ops.items() if not (k in OPS_SECTIONS and isinstance(v, dict))}
    for section in OPS_SECTIONS:
        sub = ops.get(section)
        if isinstance(sub, dict):
            for key, value in sub.items():
                flat.setdefault(key, value)
    for key, value in SUITE2P_DEFAULTS.items():
        flat.setdefault(key, value)
    return flat


def _load_npy(path: Path, *, pickled: bool) -> Any:
    """Read one suite2p file through the restricted loader: a ``stat.npy`` that would run code is refused."""
    if not path.is_file():
        raise RoiFileError(f"{path}: file not found")
    try:
        return load_npy(path, allow_objects=pickled)
    except NpyFileError as exc:  # the message names the file (and, for a malicious pickle, the global)
        raise RoiFileError(str(exc)) from exc


def find_plane_folder(folder: str | Path) -> Path:
    """The folder holding ``stat.npy``: ``folder`` itself, ``folder/plane0`` or ``folder/suite2p/plane0``."""
    folder = Path(folder)
    for candidate in (folder, folder / "plane0", folder / "suite2p" / "plane0"):
        if (candidate / "stat.npy").is_file():
            return candidate
    if not folder.exists():
        raise RoiFileError(f"{folder}: folder not found")
    raise RoiFileError(f"{folder}: no stat.npy here, in plane0/ or in suite2p/plane0/")


def load_suite2p(folder: str | Path) -> RoiSet:
    """Load ROIs, classification and ops from a suite2p plane folder (or its parent)."""
    plane = find_plane_folder(folder)
    stat_path, iscell_path, ops_path = plane / "stat.npy", plane / "iscell.npy", plane / "ops.npy"
    stat_raw = _load_npy(stat_path, pickled=True)
    try:
        stat = list(stat_raw.tolist()) if isinstance(stat_raw, np.ndarray) else list(stat_raw)
    except TypeError as exc:
        raise RoiFileError(f"{stat_path}: expected an array of ROI dicts, got {type(stat_raw).__name__}") from exc
    iscell = np.asarray(_load_npy(iscell_path, pickled=False))
    if iscell.ndim == 1:
        iscell = np.stack([iscell, iscell], axis=1)  # some tools save only the 0/1 column
    if iscell.ndim != 2 or iscell.shape[1] < 2 or iscell.shape[0] != len(stat):
        raise RoiFileError(f"{iscell_path}: shape {iscell.shape}, expected ({len(stat)}, 2) to match stat.npy")
    ops_raw = _load_npy(ops_path, pickled=True)
    if isinstance(ops_raw, np.ndarray) and ops_raw.dtype == object and ops_raw.shape == ():
        ops_raw = ops_raw.item()
    if not isinstance(ops_raw, dict):
        raise RoiFileError(f"{ops_path}: expected a dict, got {type(ops_raw).__name__}")
    ops = normalise_ops(ops_raw)
    reg_path = plane / "reg_outputs.npy"
    if "refImg" not in ops and reg_path.is_file():
        reg = _load_npy(reg_path, pickled=True)
        reg = reg.item() if isinstance(reg, np.ndarray) and reg.shape == () else reg
        if isinstance(reg, dict):
            for key in ("refImg", "meanImg"):
                if key in reg:
                    ops.setdefault(key, reg[key])
    ref_img = _image_or_none(ops.get("refImg"), ops_path, "refImg")
    mean_img = _image_or_none(ops.get("meanImg"), ops_path, "meanImg")
    Ly, Lx = _frame_size(ops, ref_img, mean_img, ops_path)
    for name, img in (("refImg", ref_img), ("meanImg", mean_img)):
        if img is not None and img.shape != (Ly, Lx):
            raise RoiFileError(f"{ops_path}: {name} has shape {img.shape}, but Ly, Lx = {Ly}, {Lx}")
    for key in ("refImg", "meanImg"):
        ops.pop(key, None)
    kind, parent = _load_kinds(plane, len(stat))
    try:
        return RoiSet(stat=[copy.copy(s) for s in stat], iscell=iscell[:, :2], Ly=Ly, Lx=Lx,
                      ref_img=ref_img, mean_img=mean_img, ops=ops, kind=kind, parent=parent)
    except RoiFileError as exc:
        raise RoiFileError(f"{stat_path}: {exc}") from exc


def _image_or_none(value: Any, path: Path, name: str) -> np.ndarray | None:
    if value is None:
        return None
    img = np.asarray(value)
    if img.ndim != 2:
        raise RoiFileError(f"{path}: {name} is not a 2-D image (shape {img.shape})")
    return img


def _frame_size(ops: dict[str, Any], ref_img: np.ndarray | None, mean_img: np.ndarray | None,
                path: Path) -> tuple[int, int]:
    if "Ly" in ops and "Lx" in ops:
        return int(ops["Ly"]), int(ops["Lx"])
    for img in (ref_img, mean_img):
        if img is not None:
            return int(img.shape[0]), int(img.shape[1])
    raise RoiFileError(f"{path}: has neither Ly/Lx nor refImg/meanImg, so the frame size is unknown")
