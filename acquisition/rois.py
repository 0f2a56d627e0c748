"""ROIs from suite2p output (``stat.npy``, ``iscell.npy``, ``ops.npy``), read without importing suite2p.

Both ``ops.npy`` layouts are accepted: suite2p 0.x writes one flat dict; 1.x merges ``db``, ``settings``
(nested: ``ops["registration"]["maxregshift"]``), ``reg_outputs`` and ``detect_outputs``, so ``refImg``,
``meanImg``, ``Ly``, ``Lx`` stay at the top level. :attr:`RoiSet.ops` is always flat.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


class RoiFileError(ValueError):
    """A suite2p output file is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class RoiSet:
    """ROIs to extract, in full-frame pixel coordinates of an (Ly, Lx) field of view.

    ``excluded_stat`` holds ROIs that are not extracted (e.g. non-cells after :meth:`cells_only`) but whose
    pixels still count as cell pixels when neuropil masks are built, exactly as suite2p builds them from
    every detected ROI. ``source_index`` maps each extracted ROI to its row in the original ``stat.npy``.
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

    def __post_init__(self) -> None:
        self.iscell = np.asarray(self.iscell, dtype=np.float64).reshape(-1, 2)
        if len(self.stat) != self.iscell.shape[0]:
            raise ValueError(f"stat has {len(self.stat)} ROIs but iscell has {self.iscell.shape[0]} rows")
        if self.source_index is None:
            self.source_index = np.arange(len(self.stat))
        for what, rois in (("stat", self.stat), ("excluded_stat", self.excluded_stat)):
            for i, roi in enumerate(rois):
                _check_roi(roi, i, self.Ly, self.Lx, what)

    @property
    def n_rois(self) -> int:
        return len(self.stat)

    def cells_only(self) -> RoiSet:
        """The ROIs suite2p classified as cells (``iscell[:, 0] > 0.5``); the others go to ``excluded_stat``."""
        keep = self.iscell[:, 0] > 0.5
        return RoiSet(
            stat=[s for s, k in zip(self.stat, keep, strict=True) if k],
            iscell=self.iscell[keep],
            Ly=self.Ly, Lx=self.Lx, ref_img=self.ref_img, mean_img=self.mean_img, ops=dict(self.ops),
            excluded_stat=self.excluded_stat + [s for s, k in zip(self.stat, keep, strict=True) if not k],
            source_index=np.asarray(self.source_index)[keep],
        )

    def save_suite2p(self, folder: str | Path) -> Path:
        """Write ``stat.npy``, ``iscell.npy`` and ``ops.npy`` (suite2p 1.x nested layout) into ``folder``.

        Excluded ROIs are written too (as non-cells) so the folder loads back with the same neuropil.
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
    try:
        return RoiSet(stat=[copy.copy(s) for s in stat], iscell=iscell[:, :2], Ly=Ly, Lx=Lx,
                      ref_img=ref_img, mean_img=mean_img, ops=ops)
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
