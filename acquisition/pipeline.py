"""Frame -> (validate, register, extract) -> per-ROI F and Fneu. Used live by the acquisition process and
offline by ``rig process``, so both produce the same numbers from the same frames.

Flagged frames: for flags in :data:`acquisition.validate.UNUSABLE` (wrong shape/dtype, all-zero, NaN) F and
Fneu are NaN and the shift is NaN; other flags (SATURATED, LOW_CORR, SHIFT_OUT_OF_BOUNDS...) mark frames that
were still registered (shift clamped to the bound) and extracted. Until a reference exists (none given and
fewer than ``reference_frames`` good frames seen) frames are extracted unshifted and carry NOT_REGISTERED;
the reference is then built from those frames, suite2p style, in one blocking call (a few seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.config import AcquisitionConfig, ExtractionConfig, RegistrationConfig, ValidationConfig
from acquisition.extraction import Extractor
from acquisition.registration import RigidRegistrar, build_reference
from acquisition.rois import RoiSet
from acquisition.sources.base import Frame
from acquisition.validate import UNUSABLE, FrameFlag, FrameValidator
from rig.clock import now_ns


def limit_blas_threads(n_threads: int = 1) -> Any:
    """Pin BLAS to ``n_threads`` threads for this process; returns the limiter (``.restore_original_limits()``).

    Registration does tiny matrix products per frame; OpenBLAS hands them to its thread pool, whose
    wake-ups cost milliseconds when the cores are busy (measured: p50 16 ms instead of 1.2 ms per frame
    with another process running). Setting ``OPENBLAS_NUM_THREADS=1`` before numpy is imported does the same.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n_threads, user_api="blas")


def load_reference_image(path: str | Path) -> np.ndarray:
    """A 2-D reference image from ``.npy`` (an image, or a suite2p ops dict with ``refImg``) or a 1-page TIFF."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reference image not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        data = np.load(path, allow_pickle=True)
        if data.dtype == object and data.shape == ():
            item = data.item()
            if not isinstance(item, dict) or "refImg" not in item:
                raise ValueError(f"{path}: a pickled object without 'refImg'")
            data = np.asarray(item["refImg"])
    elif suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) != 1:
                raise ValueError(f"{path}: {len(tif.pages)} pages; a reference must be a single image")
            data = tif.pages[0].asarray()
    else:
        raise ValueError(f"{path}: reference must be .npy or .tif, not {suffix!r}")
    if data.ndim != 2:
        raise ValueError(f"{path}: reference has shape {data.shape}; expected a 2-D image")
    return data.astype(np.float32)


@dataclass
class PipelineResult:
    """Result of one :meth:`FramePipeline.process` call. Reused: valid until the next call."""

    F: np.ndarray  # (n_rois,) float32
    Fneu: np.ndarray  # (n_rois,) float32
    dy: float = math.nan
    dx: float = math.nan
    corr: float = math.nan
    flags: int = 0
    t_registered: int = 0
    t_extracted: int = 0


class FramePipeline:
    """Validate, register and extract one frame at a time, into preallocated outputs.

    The reference is ``reference`` if given, else the ROI set's ``ref_img``, else built from the first
    ``registration.reference_frames`` usable frames.
    """

    def __init__(self, roi_set: RoiSet, *, reference: np.ndarray | None = None,
                 registration: RegistrationConfig | None = None, extraction: ExtractionConfig | None = None,
                 validation: ValidationConfig | None = None, blas_threads: int | None = 1) -> None:
        self.reg_cfg = registration or RegistrationConfig()
        ext = extraction or ExtractionConfig()
        val = validation or ValidationConfig()
        self.roi_set = roi_set
        self.shape = (roi_set.Ly, roi_set.Lx)
        self._blas_limit = limit_blas_threads(blas_threads) if blas_threads else None
        self.validator = FrameValidator(self.shape, saturation_level=val.saturation_level,
                                        max_saturated_fraction=val.max_saturated_fraction)
        max_shift = int(min(round(self.reg_cfg.maxregshift * min(self.shape)), min(self.shape) // 2))
        self.extractor = Extractor(roi_set, ext.inner_neuropil_radius, ext.min_neuropil_pixels, ext.allow_overlap,
                                   lam_percentile=ext.lam_percentile, subpixel=ext.subpixel,
                                   max_shift_px=max_shift)
        self.n_rois = roi_set.n_rois
        self.result = PipelineResult(F=np.full(self.n_rois, np.nan, np.float32),
                                     Fneu=np.full(self.n_rois, np.nan, np.float32))
        self.registrar: RigidRegistrar | None = None
        self._warmup: list[np.ndarray] = []
        self.frames = 0
        self.flag_counts: dict[str, int] = {f.name: 0 for f in FrameFlag if f and f.name}
        self.flagged_frames = 0
        if reference is None:
            reference = roi_set.ref_img
        if reference is not None and self.reg_cfg.enabled:
            self.set_reference(reference)

    @classmethod
    def from_config(cls, roi_set: RoiSet, cfg: AcquisitionConfig, *, blas_threads: int | None = 1) -> FramePipeline:
        """Reference: ``registration.ref_path`` if set, else the suite2p ``refImg``, else built from live frames."""
        reference = None
        if cfg.registration.enabled and cfg.registration.ref_path:
            reference = load_reference_image(cfg.registration.ref_path)
        return cls(roi_set, reference=reference, registration=cfg.registration, extraction=cfg.extraction,
                   validation=cfg.validation, blas_threads=blas_threads)

    def close(self) -> None:
        """Give BLAS its thread count back (only matters when the process goes on doing other work)."""
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    @property
    def reference(self) -> np.ndarray | None:
        return self._reference if self.registrar is not None else None

    def set_reference(self, reference: np.ndarray) -> None:
        reference = np.asarray(reference, dtype=np.float32)
        if reference.shape != self.shape:
            raise ValueError(f"reference shape {reference.shape} differs from the ROI set's frame {self.shape}")
        c = self.reg_cfg
        self.registrar = RigidRegistrar(reference, c.maxregshift, c.smooth_sigma, c.spatial_taper, c.min_corr,
                                        bin_factor=c.bin_factor or None, norm_frames=c.norm_frames)
        self._reference = reference
        self._warmup = []

    def stats(self) -> dict[str, float]:
        out = {"frames": float(self.frames), "flagged_frames": float(self.flagged_frames)}
        out.update({f"flag_{name.lower()}": float(n) for name, n in self.flag_counts.items()})
        return out

    def process(self, frame: Frame | np.ndarray) -> PipelineResult:
        """Register and extract one frame. Never raises for bad pixels: they are flagged."""
        data = frame.data if isinstance(frame, Frame) else frame
        res = self.result
        flags = self.validator.check(data)
        if flags & UNUSABLE:
            res.F.fill(np.nan)
            res.Fneu.fill(np.nan)
            res.dy = res.dx = res.corr = math.nan
            res.t_registered = res.t_extracted = now_ns()
        else:
            dy = dx = 0.0
            corr = math.nan
            if self.reg_cfg.enabled:
                if self.registrar is None:
                    flags |= FrameFlag.NOT_REGISTERED
                    self._collect_for_reference(data)
                else:
                    dy, dx, corr, reg_flags = self.registrar.register(data)
                    flags |= reg_flags
            res.dy, res.dx, res.corr = dy, dx, corr
            res.t_registered = now_ns()
            self.extractor.extract(data, dy, dx, res.F, res.Fneu)
            res.t_extracted = now_ns()
        res.flags = int(flags)
        self.frames += 1
        if flags:
            self.flagged_frames += 1
            for f in FrameFlag:
                if f and f.name and flags & f:
                    self.flag_counts[f.name] += 1
        return res

    def _collect_for_reference(self, data: np.ndarray) -> None:
        self._warmup.append(np.array(data))  # a copy: the source may reuse its buffer
        if len(self._warmup) >= self.reg_cfg.reference_frames:
            c = self.reg_cfg
            ref = build_reference(np.stack(self._warmup), maxregshift=c.maxregshift, smooth_sigma=c.smooth_sigma,
                                  spatial_taper=c.spatial_taper)
            self.set_reference(ref)

    def preview_image(self, data: np.ndarray, max_size: int = 256) -> np.ndarray:
        """A decimated copy of ``data`` moved by the last shift so it looks registered (for the console)."""
        step = max(1, math.ceil(max(data.shape) / max_size))
        small = np.asarray(data[::step, ::step], dtype=np.float32)
        dy, dx = self.result.dy, self.result.dx
        if not (math.isfinite(dy) and math.isfinite(dx)):
            return small
        iy, ix = round(-dy / step), round(-dx / step)
        if iy == 0 and ix == 0:
            return small
        from acquisition.registration import shift_image_integer

        return shift_image_integer(small, iy, ix, float(small.mean()))
