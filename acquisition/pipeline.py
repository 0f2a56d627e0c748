"""Frame -> (validate, register, extract) -> per-ROI F and Fneu. Used live by the acquisition process and
offline by ``rig process``, so both produce the same numbers from the same frames.

Flagged frames: for flags in :data:`acquisition.validate.UNUSABLE` (wrong shape/dtype, all-zero, NaN) F and
Fneu are NaN and the shift is NaN; other flags (SATURATED, LOW_CORR, SHIFT_OUT_OF_BOUNDS...) mark frames that
were still registered (shift clamped to the bound) and extracted. Until a reference exists (none given and
fewer than ``reference_frames`` good frames seen) frames are extracted unshifted and carry NOT_REGISTERED;
the reference is then built from those frames, suite2p style (a few seconds at 512x512). Offline that is one
blocking call, so results are reproducible; with ``background_reference=True`` (the live acquisition process,
which must keep sending heartbeats) it runs in a background thread (numpy/scipy release the GIL) while frames
go on being extracted unshifted with NOT_REGISTERED, and the finished reference is installed on the calling
thread at the start of a later :meth:`FramePipeline.process` call.

A *given* reference (``reference``, ``registration.ref_path`` or the suite2p ``refImg``) may be a plain mean
of frames taken while the field moved, and motion-blurred: with ``registration.refine_reference`` "auto" or
"always" the first ``refine_frames`` good frames registered against it are averaged aligned, in its
coordinates (acquisition.reg_refine), the same way (blocking offline, in the background live) while frames go
on being registered against the given one; "auto" switches only when the given one looks blurred. The frame
index of the switch and both references are kept (:attr:`FramePipeline.reference_switch_frame`,
:attr:`FramePipeline.reference_original`, :meth:`FramePipeline.pop_reference_events`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.config import AcquisitionConfig, ExtractionConfig, RegistrationConfig, ValidationConfig
from acquisition.extract_ahead import ExtractAhead, riskier_part, whole_shift_candidates
from acquisition.extraction import Extractor
from acquisition.reg_refine import RefinedReference, refine_reference
from acquisition.registration import RigidRegistrar, build_reference, compile_kernels
from acquisition.rois import RoiSet
from acquisition.sources.base import Frame
from acquisition.validate import UNUSABLE, FrameFlag, FrameValidator
from rig.core.clock import now_ns
from rig.core.safe_npy import load_npy

_EXTRACT_DTYPES = frozenset(np.dtype(t) for t in (np.uint16, np.int16, np.float32))  # compile_extract_kernels


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
        data = load_npy(path)  # a suite2p ops dict is a pickle: the restricted loader refuses one that runs code
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


class _ReferenceBuild:
    """A reference (and its registrar) being built from warm-up frames in a background thread."""

    def __init__(self, frames: list[np.ndarray], cfg: RegistrationConfig, shape: tuple[int, int],
                 on_thread_start: Callable[[], str] | None = None) -> None:
        self.n_frames = len(frames)
        self.registrar: RigidRegistrar | None = None
        self.reference: np.ndarray | None = None
        self.error: BaseException | None = None
        self.on_thread_start = on_thread_start
        self.thread_refused = ""  # what the OS refused of on_thread_start
        self.thread = threading.Thread(target=self._run, args=(frames, cfg, shape), name="reference-build",
                                       daemon=True)  # daemon: a shutdown mid-build must not wait for it
        self.thread.start()

    def _run(self, frames: list[np.ndarray], cfg: RegistrationConfig, shape: tuple[int, int]) -> None:
        try:
            if self.on_thread_start is not None:
                # e.g. a lower priority: seconds of CPU that must not hold up the frame loop, and under
                # rig.priority = "realtime" it would otherwise inherit the loop's SCHED_FIFO
                self.thread_refused = self.on_thread_start()
            reference = _build_reference_image(frames, cfg)
            self.registrar = _make_registrar(reference, cfg, shape)
            self.reference = reference
        except Exception as exc:  # noqa: BLE001 - handed to the pipeline's thread, which raises it
            self.error = exc


class _Refinement:
    """A given reference being refined from the first good frames (acquisition.reg_refine), blocking or not."""

    def __init__(self, original: np.ndarray, frames: list[np.ndarray], cfg: RegistrationConfig,
                 shape: tuple[int, int], background: bool, on_thread_start: Callable[[], str] | None = None) -> None:
        self.n_frames = len(frames)
        self.result: RefinedReference | None = None
        self.registrar: RigidRegistrar | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.on_thread_start = on_thread_start
        self.thread_refused = ""  # what the OS refused of on_thread_start (e.g. an affinity), for the event
        if background:
            self.thread = threading.Thread(target=self._run, args=(original, frames, cfg, shape),
                                           name="reference-refine", daemon=True)
            self.thread.start()
        else:
            self._run(original, frames, cfg, shape)

    @property
    def done(self) -> bool:
        return self.thread is None or not self.thread.is_alive()

    def _run(self, original: np.ndarray, frames: list[np.ndarray], cfg: RegistrationConfig,
             shape: tuple[int, int]) -> None:
        try:
            if self.on_thread_start is not None and self.thread is not None:
                self.thread_refused = self.on_thread_start()  # e.g. a lower priority: the frame loop goes first
            keep = cfg.refine_blur_ratio if cfg.refine_reference == "auto" else None  # auto: stop early if sharp
            result = refine_reference(original, frames, lambda image: _make_registrar(image, cfg, shape),
                                      keep_sharp=keep, keep_agree_px=cfg.refine_agree_px)
            if (cfg.refine_reference == "always" or result.blur_ratio < cfg.refine_blur_ratio
                    or result.disagreement_px > cfg.refine_agree_px):
                self.registrar = _make_registrar(result.image, cfg, shape)
            self.result = result
        except Exception as exc:  # noqa: BLE001 - handed to the pipeline's thread, which raises it
            self.error = exc


def _build_reference_image(frames: list[np.ndarray], cfg: RegistrationConfig) -> np.ndarray:
    return build_reference(np.stack(frames), maxregshift=cfg.maxregshift, smooth_sigma=cfg.smooth_sigma,
                           spatial_taper=cfg.spatial_taper)


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """The values a pixel type holds (floats: unbounded), for casting a float image to it."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return -np.inf, np.inf


def _make_registrar(reference: np.ndarray, cfg: RegistrationConfig, shape: tuple[int, int]) -> RigidRegistrar:
    if reference.shape != shape:
        raise ValueError(f"reference shape {reference.shape} differs from the ROI set's frame {shape}")
    return RigidRegistrar.from_config(reference, cfg)


class FramePipeline:
    """Validate, register and extract one frame at a time, into preallocated outputs.

    The reference is ``reference`` if given, else the ROI set's ``ref_img``, else built from the first
    ``registration.reference_frames`` usable frames: blocking inside :meth:`process` by default (offline:
    reproducible), in a background thread with ``background_reference=True`` (live: process() stays fast).
    """

    def __init__(self, roi_set: RoiSet, *, reference: np.ndarray | None = None,
                 registration: RegistrationConfig | None = None, extraction: ExtractionConfig | None = None,
                 validation: ValidationConfig | None = None, blas_threads: int | None = 1,
                 background_reference: bool = False, on_thread_start: Callable[[], str] | None = None) -> None:
        self.reg_cfg = registration or RegistrationConfig()
        if self.reg_cfg.enabled:
            compile_kernels()  # now, not on the first frame: a first compile takes seconds
        ext = extraction or ExtractionConfig()
        self.ext_cfg = ext
        val = validation or ValidationConfig()
        self.roi_set = roi_set
        self.shape = (roi_set.Ly, roi_set.Lx)
        self._blas_limit = limit_blas_threads(blas_threads) if blas_threads else None
        self.validator = FrameValidator(self.shape, saturation_level=val.saturation_level,
                                        max_saturated_fraction=val.max_saturated_fraction)
        max_shift = int(min(round(self.reg_cfg.maxregshift * min(self.shape)), min(self.shape) // 2))
        self.extractor = Extractor(roi_set, ext.inner_neuropil_radius, ext.min_neuropil_pixels, ext.allow_overlap,
                                   lam_percentile=ext.lam_percentile, subpixel=ext.subpixel,
                                   mask_sigma=ext.mask_sigma, max_shift_px=max_shift, method=ext.method,
                                   neuropil_hold_px=ext.neuropil_hold_px, cell_sums=ext.cell_sums)
        self._extract_ahead: ExtractAhead | None = None  # "always": from the start; "auto": choose_extract_ahead
        self._extraction_ms = math.nan  # the extraction's cost, timed by warm_up
        self._last_registered: np.ndarray | None = None
        if ext.ahead == "always":
            self._start_extract_ahead()
        self.n_rois = roi_set.n_rois
        self.result = PipelineResult(F=np.full(self.n_rois, np.nan, np.float32),
                                     Fneu=np.full(self.n_rois, np.nan, np.float32))
        self.registrar: RigidRegistrar | None = None
        self._warmup: list[np.ndarray] = []
        self.background_reference = background_reference
        # run first in the reference build and refinement threads; returns what the OS refused
        self.on_thread_start = on_thread_start
        self._build: _ReferenceBuild | None = None
        self._refine_frames: list[np.ndarray] | None = None  # good frames kept while a refinement is pending
        self._refinement: _Refinement | None = None
        self.reference_original: np.ndarray | None = None  # the given reference, when it was refined
        self.refinement: RefinedReference | None = None
        self.reference_switch_frame: int | None = None  # first frame registered against the refined reference
        self._reference_events: list[dict[str, Any]] = []
        self.frames = 0
        self.flag_counts: dict[str, int] = {f.name: 0 for f in FrameFlag if f and f.name}
        self.flagged_frames = 0
        if reference is None:
            reference = roi_set.ref_img
        if reference is not None and self.reg_cfg.enabled:
            self.set_reference(reference)

    @classmethod
    def from_config(cls, roi_set: RoiSet, cfg: AcquisitionConfig, *, blas_threads: int | None = 1,
                    background_reference: bool = False,
                    on_thread_start: Callable[[], str] | None = None) -> FramePipeline:
        """Reference: ``registration.ref_path`` if set, else the suite2p ``refImg``, else built from live frames
        (in a background thread if ``background_reference``: what the live acquisition process wants)."""
        reference = None
        if cfg.registration.enabled and cfg.registration.ref_path:
            reference = load_reference_image(cfg.registration.ref_path)
        return cls(roi_set, reference=reference, registration=cfg.registration, extraction=cfg.extraction,
                   validation=cfg.validation, blas_threads=blas_threads, background_reference=background_reference,
                   on_thread_start=on_thread_start)

    def close(self) -> None:
        """End the extraction worker; give BLAS its thread count back (matters when the process goes on working)."""
        if self._extract_ahead is not None:
            self._extract_ahead.close()
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    @property
    def reference(self) -> np.ndarray | None:
        return self._reference if self.registrar is not None else None

    @property
    def reference_building(self) -> bool:
        """True while a background reference build is under way (or finished but not yet installed)."""
        return self._build is not None

    def set_reference(self, reference: np.ndarray, *, refine: bool = True) -> None:
        """Register against ``reference`` from now on (a background build still running is discarded); with
        ``refine`` and ``registration.refine_reference`` not "never", refine it from the next good frames."""
        reference = np.asarray(reference, dtype=np.float32)
        self._install(reference, _make_registrar(reference, self.reg_cfg, self.shape))
        self._refinement = None
        self._refine_frames = [] if refine and self.reg_cfg.refine_reference != "never" else None

    def warm_up(self, dtype: np.dtype | type = np.uint16) -> None:
        """The per-frame work once on a stand-in frame (the reference, else zeros) of the source's pixel type,
        before the session's first frame: its registration and extraction cost 6-7 ms more than the next frames'
        (FFT plans, first touches of buffers and tables). Leaves no trace: registration state and counters are as
        they were, F/Fneu go to scratch arrays. Then times the extraction (for :meth:`choose_extract_ahead`)."""
        stand_in = self._stand_in(dtype)
        self.validator.check(stand_in)  # its kernel compiled (or loaded) for this pixel type now
        if self.registrar is not None:
            self.registrar.warm_up(stand_in)
        scratch = np.empty(self.n_rois, np.float32), np.empty(self.n_rois, np.float32)
        self.extractor.extract(stand_in, 0.0, 0.0, *scratch)
        self.extractor.extract(stand_in, 0.3, -0.3, *scratch)  # the bilinear path too
        cost_ms = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            self.extractor.extract(stand_in, 0.3, -0.3, *scratch)
            cost_ms = min(cost_ms, (time.perf_counter() - t0) * 1e3)
        self._extraction_ms = cost_ms
        self.extractor.forget_shift()

    def expect_column_order(self, dtype: np.dtype | type = np.uint16) -> None:
        """Frames will be processed from their column-major pixels (``Frame.wire``): build the extraction's tables
        for that order and extract once from a stand-in in it, so that the first frame pays for neither."""
        self.extractor.prepare_column_order()
        scratch = np.empty(self.n_rois, np.float32), np.empty(self.n_rois, np.float32)
        stand_in = np.asfortranarray(self._stand_in(dtype))
        self.validator.check(stand_in)
        self.extractor.extract(stand_in, 0.3, -0.3, *scratch)
        self.extractor.forget_shift()

    def _stand_in(self, dtype: np.dtype | type) -> np.ndarray:
        """A frame of the source's pixel type to warm the per-frame work on: the reference, else zeros."""
        reference = self.reference
        return (np.zeros(self.shape, dtype) if reference is None
                else np.clip(reference, *_dtype_range(np.dtype(dtype))).astype(dtype))

    def prewarm(self) -> None:
        """Register the last registered frame again, the result discarded, just before the next frame is due
        (acquisition.pacer): the registration's code and buffers are then warm when it comes. The extraction
        worker, when used, meanwhile computes the last frame's cells and neuropil at its likeliest whole shifts on
        its own CPU (results never taken), as it will for the next frame."""
        if self.registrar is None or self._last_registered is None:
            return
        ahead, last = self._extract_ahead, self.extractor.last_shift
        if ahead is not None and last is not None:
            ahead.rehearse(self._last_registered, *whole_shift_candidates(*last, self.extractor.subpixel, 1,
                                                                          self.extractor.neuropil_shift,
                                                                          ahead.cell_block))
        self.registrar.prewarm(self._last_registered)

    def choose_extract_ahead(self, realtime: bool, paced: bool = True) -> dict[str, Any]:
        """With ``[acquisition.extraction] ahead = "auto"`` (the default), use the worker that computes the
        extraction beside registration only where it was measured to pay: the loop runs at real-time priority
        (``realtime``) or frames come back to back (not ``paced``: a replay at speed "fast"), and the extraction,
        timed by :meth:`warm_up`, costs at least ``ahead_min_ms`` (below, its hand-offs cost more: 64x256 with 50
        ROIs at 1 kHz). Paced at normal priority the worker slowed registration by about what it saved. Returns
        the decision with its reasons, for the session's events."""
        ext = self.ext_cfg
        decision: dict[str, Any] = {"ahead": ext.ahead, "realtime": realtime, "paced": paced,
                                    "extraction_ms": round(self._extraction_ms, 4), "min_ms": ext.ahead_min_ms}
        if ext.ahead == "auto" and self._extract_ahead is None:
            if not self._ahead_possible():
                decision["why_not"] = "needs the compiled extraction and registration"
            elif paced and not realtime:
                decision["why_not"] = "frames paced by the scope and the loop not at real-time priority"
            elif not self._extraction_ms >= ext.ahead_min_ms:
                decision["why_not"] = "the extraction costs less than ahead_min_ms"
            else:
                self._start_extract_ahead()
        decision["used"] = self._extract_ahead is not None
        return decision

    def _ahead_possible(self) -> bool:
        return self.ext_cfg.method == "compiled" and self.reg_cfg.enabled

    def _start_extract_ahead(self) -> None:
        if self._ahead_possible():
            ex = self.extractor
            self._extract_ahead = ExtractAhead(ex.cells_ahead, ex.neuropil_ahead, ex.n_rois,
                                               self.ext_cfg.ahead_candidates, first_cells=ex.first_cells_ahead,
                                               first_rois=ex.first_half, cell_block=ex.cell_block)

    def pop_reference_events(self) -> list[dict[str, Any]]:
        """What happened to the reference since the last call (for the session's events): refinement
        finished, switched or kept the given reference, with the frame index and the numbers."""
        events, self._reference_events = self._reference_events, []
        return events

    def _keep_for_refinement(self, data: np.ndarray) -> None:
        frames = self._refine_frames
        assert frames is not None and self._reference is not None
        frames.append(np.array(data, order="C"))  # a copy in row order: the source may reuse its buffer
        if len(frames) >= self.reg_cfg.refine_frames:
            self._refine_frames = None
            self._refinement = _Refinement(self._reference, frames, self.reg_cfg, self.shape,
                                           self.background_reference, self.on_thread_start)  # installed later

    def _finish_refinement(self) -> None:
        """Switch to the refined reference once it is ready (or record why not); raise what the refinement raised."""
        job = self._refinement
        if job is None or not job.done:
            return
        if job.thread is not None:
            job.thread.join()
        self._refinement = None
        if job.error is not None:
            raise RuntimeError(f"refining the registration reference from {job.n_frames} frames failed: "
                               f"{job.error}") from job.error
        result = job.result
        assert result is not None
        self.refinement = result
        info: dict[str, Any] = {"frame": self.frames, "mode": self.reg_cfg.refine_reference,
                                "blur_ratio": round(result.blur_ratio, 4), "frames_used": result.frames_used,
                                "disagreement_px": round(result.disagreement_px, 4), "rounds": result.rounds,
                                "recentre_px": [round(v, 4) for v in result.recentre],
                                "mean_shift_original_px": [round(v, 4) for v in result.mean_shift_original],
                                "mean_shift_refined_px": [round(v, 4) for v in result.mean_shift_refined]}
        if job.thread_refused:
            info["thread_refused"] = job.thread_refused
        if job.registrar is None:
            self._reference_events.append({"event": "reference_kept", **info})
            return
        self._switch(result.image, job.registrar)
        self._reference_events.append({"event": "reference_refined", **info})

    def switch_reference(self, reference: np.ndarray) -> None:
        """Register against ``reference`` from the next frame on exactly as a finished refinement switches
        (the current reference kept as :attr:`reference_original`, no refinement started): a replay installs
        the refined reference a live session saved at the frame it switched, instead of refining again."""
        if self.registrar is None:
            raise RuntimeError("switch_reference: the pipeline has no reference to switch from")
        reference = np.asarray(reference, dtype=np.float32)
        self._switch(reference, _make_registrar(reference, self.reg_cfg, self.shape))

    def _switch(self, reference: np.ndarray, registrar: RigidRegistrar) -> None:
        self.reference_original = self._reference
        self.registrar = registrar
        self._reference = reference
        self.reference_switch_frame = self.frames

    def _install(self, reference: np.ndarray, registrar: RigidRegistrar) -> None:
        self.registrar = registrar
        self._reference = reference
        self._warmup = []
        self._build = None

    def _finish_background_build(self) -> None:
        """Install the background-built reference once its thread is done; raise what the build raised."""
        build = self._build
        if build is None or build.thread.is_alive():
            return
        build.thread.join()
        self._build = None
        if build.error is not None:
            raise RuntimeError(f"building the registration reference from {build.n_frames} live frames failed: "
                               f"{build.error}") from build.error
        assert build.reference is not None and build.registrar is not None
        self._install(build.reference, build.registrar)
        if build.thread_refused:  # the build ran, but not as low as asked: said, not ignored
            self._reference_events.append({"event": "reference_build_thread_refused", "frame": self.frames,
                                           "thread_refused": build.thread_refused})

    def ahead_stats(self) -> dict[str, int] | None:
        """What the extraction worker did (None when it was not used): parts taken and missed, computations the
        loop gave up waiting for, frames that queued behind an earlier computation, pre-warms it ran."""
        ahead = self._extract_ahead
        if ahead is None:
            return None
        return {"cells_taken": ahead.taken[0], "cells_missed": ahead.missed[0], "neuropil_taken": ahead.taken[1],
                "neuropil_missed": ahead.missed[1], "gave_up": ahead.gave_up, "busy": ahead.busy,
                "rehearsals": ahead.rehearsals,
                "handed": dict(zip(("cells", "neuropil", "first_cells"), ahead.handed, strict=True)),
                "handed_taken": dict(zip(("cells", "neuropil", "first_cells"), ahead.handed_taken, strict=True))}

    def stats(self) -> dict[str, float]:
        out = {"frames": float(self.frames), "flagged_frames": float(self.flagged_frames)}
        out.update({f"flag_{name.lower()}": float(n) for name, n in self.flag_counts.items()})
        return out

    def process(self, frame: Frame | np.ndarray) -> PipelineResult:
        """Register and extract one frame. Never raises for bad pixels: they are flagged.

        A frame handed over early (``Frame.wire``, :meth:`FrameSource.deliver_early`) is checked, registered and
        extracted from its pixels in the scope's order while the source puts them in row order: ``frame.data`` may
        still be incomplete when this returns, so the caller reads it through ``Frame.wait_data``. The numbers are
        the same either way (tests/test_acq_suite2p.py, test_acq_latency.py; :meth:`expect_column_order`)."""
        data = frame.data if isinstance(frame, Frame) else frame
        early = frame if isinstance(frame, Frame) and frame.wire is not None else None
        pixels = data if early is None else early.wire  # complete now, in whichever order
        res = self.result
        if self._build is not None:
            self._finish_background_build()
        if self._refinement is not None:
            self._finish_refinement()
        ahead = self._submit_ahead(pixels)  # before the checks: the worker starts while they read the frame
        flags = self.validator.check(pixels)
        if flags & UNUSABLE:
            if ahead is not None:
                ahead.withdraw()
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
                    self._collect_for_reference(data if early is None else early.wait_data())
                else:
                    ahead = ahead or self._submit_ahead(pixels, checked=True)
                    dy, dx, corr, reg_flags = self.registrar.register(pixels)
                    # what prewarm() registers and extracts again, in the order the next frame will come in (not a
                    # copy: any pixels do, even those of a slot the source has since refilled)
                    self._last_registered = pixels
                    flags |= reg_flags
                    if self._refine_frames is not None and not flags:
                        self._keep_for_refinement(pixels)
            res.dy, res.dx, res.corr = dy, dx, corr
            res.t_registered = now_ns()
            self.extractor.extract(pixels, dy, dx, res.F, res.Fneu, ahead=ahead)
            res.t_extracted = now_ns()
        res.flags = int(flags)
        self.frames += 1
        if flags:
            self.flagged_frames += 1
            for f in FrameFlag:
                if f and f.name and flags & f:
                    self.flag_counts[f.name] += 1
        return res

    def _submit_ahead(self, pixels: np.ndarray, checked: bool = False) -> ExtractAhead | None:
        """Give the extraction worker this frame at the whole shifts the last frame makes likely (None: not used).
        Before the checks only frames of the shape and pixel types the kernels are compiled for."""
        ahead, last, ex = self._extract_ahead, self.extractor.last_shift, self.extractor
        if ahead is None or last is None or self.registrar is None or not self.reg_cfg.enabled or not (
                checked or (pixels.shape == self.shape and pixels.dtype in _EXTRACT_DTYPES)):
            return None
        held = ex.neuropil_shift
        return ahead if ahead.submit(pixels, *whole_shift_candidates(*last, ex.subpixel, ahead.candidates, held,
                                                                     ahead.cell_block),
                                     riskier_part(*last, ex.subpixel, held, ahead.cell_block)) else None

    def _collect_for_reference(self, data: np.ndarray) -> None:
        if self._build is not None:
            return  # the reference is being built from the frames already collected
        self._warmup.append(np.array(data))  # a copy: the source may reuse its buffer
        if len(self._warmup) >= self.reg_cfg.reference_frames:
            frames, self._warmup = self._warmup, []
            if self.background_reference:
                self._build = _ReferenceBuild(frames, self.reg_cfg, self.shape, self.on_thread_start)
            else:
                self.set_reference(_build_reference_image(frames, self.reg_cfg), refine=False)

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
