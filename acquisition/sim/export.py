"""Write the simulated session to disk in suite2p layout: its ground truth (live and offline) and whole movies.

Why these live together: both write the same on-disk layout, which suite2p, ``rig.offline`` and the
acquisition process's own ROI loader read back; the renderer (:mod:`acquisition.sim.scope`) and the
scene (:mod:`acquisition.sim.anatomy`) only hold state in memory. The acquisition process writes the
ground truth of a live sim session (its ROIs at start, every frame's truth at stop); ``rig sim --export``
renders a whole movie with it.

Layout of an export folder (``write_ground_truth`` writes the last two lines, ``export_movie`` all)::

    movie.tif                        multi-page uint16 TIFF, one page per frame
    suite2p/plane0/data.bin          the same frames as int16 (suite2p binary layout, unregistered)
    suite2p/plane0/{stat,iscell,ops}.npy   the true ROIs (ROI i == cell i), ops in suite2p 1.x layout
    ground_truth.npz                 true shifts, F, dF/F, spikes, bleaching, focal depth z_um per frame;
                                     day_transform (dy, dx, rotation_deg, scale), pixel_size_um
    zstack.tif                       (with --zstack) ImageJ z-stack centred on the focal plane, spacing in um

Plane 1 of a two-plane sim (``write_ground_truth(..., plane=1)``, into its own folder; ``export_movie`` uses
``plane1/`` of the export folder and adds its ``movie.tif`` and ``suite2p/plane1/data.bin``)::

    suite2p/plane1/{stat,iscell,ops}.npy   the dendrite ROIs (ROI j == dendrite j)
    suite2p/plane1/roi_kind.npy      int8, all 1 (dendrite); roi_parent.npy int32: the soma's index in plane 0
    ground_truth.npz                 per volume and dendrite: F_true, dff_true, dff_bap (the back-propagated
                                     spikes' part), events, instructive, event_rate_hz; parent, centers, radii...
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from acquisition.sim.anatomy import Anatomy
from acquisition.sim.calcium import indicator_preset
from acquisition.sim.config import SimConfig
from acquisition.sim.depth import DepthModel
from acquisition.sim.scope import SimScope
from rig.core.safe_npy import load_npy

_INT16_MAX = np.iinfo(np.int16).max


def suite2p_stat(anatomy: Anatomy) -> list[dict]:
    """The cells as suite2p ROIs (``stat.npy`` entries); ROI i is cell i."""
    Ly, Lx = anatomy.shape
    counts = np.zeros((Ly, Lx), np.int32)
    for c in anatomy.cells:
        counts[c.ypix, c.xpix] += 1
    stat = []
    for c in anatomy.cells:
        ys, xs = c.ypix[c.soma], c.xpix[c.soma]
        if ys.size:
            med = [int(np.median(ys)), int(np.median(xs))]
        else:  # moved out of the field on another simulated day: the centre, clipped into it
            med = [int(np.clip(round(c.center[0]), 0, Ly - 1)), int(np.clip(round(c.center[1]), 0, Lx - 1))]
        npix_soma = int(c.soma.sum())
        dist = np.hypot(ys - med[0], xs - med[1])
        disk_mean = (2.0 / 3.0) * math.sqrt(max(npix_soma, 1) / math.pi)  # mean distance in a disk
        stat.append(
            {
                "ypix": c.ypix.copy(),
                "xpix": c.xpix.copy(),
                "lam": c.lam.copy(),
                "med": med,
                "npix": int(c.ypix.size),
                "npix_soma": npix_soma,
                "radius": float(c.radius),
                "compact": float(dist.mean() / disk_mean) if npix_soma else 1.0,
                "soma_crop": c.soma.copy(),
                "overlap": counts[c.ypix, c.xpix] > 1,
                "inmerge": 0,
            }
        )
    return stat


def suite2p_ops(scope: SimScope, mean_img: np.ndarray | None = None, n_frames: int = 0) -> dict:
    """An ``ops`` dict in suite2p 1.x layout: top-level images and sizes, settings nested by stage."""
    Ly, Lx = scope.shape
    ref = scope.expected_image()
    truth = scope.truth(n_frames) if n_frames else None
    yoff = truth["shifts"][:, 0] if truth is not None else np.zeros(0, np.float32)
    xoff = truth["shifts"][:, 1] if truth is not None else np.zeros(0, np.float32)
    diameter = 2.0 * scope.cfg.cell_radius_px
    return {
        "Ly": Ly,
        "Lx": Lx,
        "nframes": int(n_frames),
        "fs": scope.frame_rate_hz,
        "tau": indicator_preset(scope.cfg.indicator).tau_decay_s,
        "diameter": [diameter, diameter],
        "refImg": ref,
        "meanImg": ref if mean_img is None else mean_img.astype(np.float32),
        "yoff": yoff,
        "xoff": xoff,
        "corrXY": np.ones(len(yoff), np.float32),
        "badframes": np.zeros(len(yoff), bool),
        "yrange": [0, Ly],
        "xrange": [0, Lx],
        "version": "bci-rig-sim",
        "sim": {"seed": scope.cfg.seed, "indicator": scope.cfg.indicator, "n_cells": scope.n_cells},
        "run": {"do_registration": 1, "do_detection": True, "do_deconvolution": True},
        "io": {"combined": True, "save_mat": False, "delete_bin": False},
        "registration": {
            "nimg_init": 400,
            "maxregshift": 0.1,
            "do_bidiphase": scope.cfg.bidi_offset_px != 0.0,
            "bidiphase": float(scope.cfg.bidi_offset_px),
            "batch_size": 100,
            "nonrigid": False,
            "smooth_sigma": 1.15,
            "smooth_sigma_time": 0.0,
            "spatial_taper": 3.45,
            "th_badframes": 1.0,
            "norm_frames": True,
            "two_step_registration": False,
        },
        "detection": {"algorithm": "sparsery", "denoise": False, "threshold_scaling": 1.0, "max_overlap": 0.75},
        "extraction": {
            "neuropil_extract": True,
            "neuropil_coefficient": 0.7,
            "inner_neuropil_radius": 2,
            "min_neuropil_pixels": 350,
            "lam_percentile": 50.0,
            "allow_overlap": False,
        },
        "dcnv_preprocess": {"baseline": "maximin", "win_baseline": 60.0, "sig_baseline": 10.0},
    }


def write_ground_truth(
    scope: SimScope, folder: str | Path, n_frames: int | None = None, mean_img: np.ndarray | None = None,
    plane: int = 0,
) -> Path:
    """Write ``suite2p/plane0/{stat,iscell,ops}.npy`` and ``ground_truth.npz`` under ``folder``.

    ``n_frames`` (default: all generated so far) selects how much of the per-frame truth to write.
    Returns the ``plane0`` folder. ``plane = 1``: the dendrites instead (:func:`write_dendrite_truth`).
    """
    if plane == 1:
        return write_dendrite_truth(scope, folder, n_frames, mean_img)
    if plane != 0:
        raise ValueError(f"ground truth for plane {plane} requested; the simulated scope images planes "
                         f"0..{scope.cfg.n_planes - 1}")
    folder = Path(folder)
    plane = folder / "suite2p" / "plane0"
    plane.mkdir(parents=True, exist_ok=True)
    n = scope.frames_recorded if n_frames is None else int(n_frames)
    truth = scope.truth(n)
    stat = suite2p_stat(scope.anatomy)
    np.save(plane / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
    iscell = np.column_stack([np.ones(scope.n_cells), np.ones(scope.n_cells)]).astype(np.float32)
    np.save(plane / "iscell.npy", iscell)
    np.save(plane / "ops.npy", np.array(suite2p_ops(scope, mean_img, n), dtype=object), allow_pickle=True)
    np.savez_compressed(
        folder / "ground_truth.npz",
        frame_rate_hz=np.float64(scope.frame_rate_hz),
        n_frames=np.int64(n),
        history_truncated=np.bool_(scope.history_truncated),
        brightness=scope.brightness.astype(np.float32),
        centers=np.array([c.center for c in scope.anatomy.cells], np.float32),
        radii=np.array([c.radius for c in scope.anatomy.cells], np.float32),
        up=np.flatnonzero(scope.mouse.role > 0),
        down=np.flatnonzero(scope.mouse.role < 0),
        base_rate_hz=scope.mouse.base_rate_hz.astype(np.float32),
        # day-to-day: tissue (day 0) -> this field, about the field's centre; see acquisition.align.Similarity
        day_transform=np.array([scope.day_transform.dy, scope.day_transform.dx, scope.day_transform.rotation_deg,
                                scope.day_transform.scale], np.float64),
        pixel_size_um=np.float64(scope.cfg.pixel_size_um),
        **truth,  # includes z_um: the focal plane's depth per frame (0 without z motion)
    )
    return plane


def write_dendrite_truth(
    scope: SimScope, folder: str | Path, n_frames: int | None = None, mean_img: np.ndarray | None = None
) -> Path:
    """Plane 1: ``suite2p/plane1/{stat,iscell,ops,roi_kind,roi_parent}.npy`` and ``ground_truth.npz`` under
    ``folder``; ``roi_parent`` is each dendrite's soma as a row of plane 0's ``stat.npy``. Returns ``plane1``."""
    if scope.plane1 is None or scope.dendrites is None:
        raise ValueError("ground truth for plane 1 requested, but the simulated scope images one plane "
                         "(set [acquisition.sim] n_planes = 2)")
    folder = Path(folder)
    out = folder / "suite2p" / "plane1"
    out.mkdir(parents=True, exist_ok=True)
    n = scope.frames_recorded if n_frames is None else int(n_frames)
    truth = scope.dendrite_truth(n)
    layout = scope.dendrites.layout
    Ly, Lx = scope.shape
    counts = np.zeros((Ly, Lx), np.int32)
    for ypix, xpix, _ in scope.plane1.footprints:
        counts[ypix, xpix] += 1
    stat = []
    for j, (ypix, xpix, lam) in enumerate(scope.plane1.footprints):
        cy, cx = layout.centers[j]
        med = [int(np.clip(round(cy), 0, Ly - 1)), int(np.clip(round(cx), 0, Lx - 1))]
        stat.append({"ypix": ypix.copy(), "xpix": xpix.copy(), "lam": lam.copy(), "med": med, "npix": int(ypix.size),
                     "npix_soma": int(ypix.size), "radius": float(layout.radius[j]), "compact": 1.0,
                     "soma_crop": np.ones(ypix.size, bool), "overlap": counts[ypix, xpix] > 1, "inmerge": 0})
    nd = layout.n
    np.save(out / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
    np.save(out / "iscell.npy", np.ones((nd, 2), np.float32))
    np.save(out / "roi_kind.npy", np.ones(nd, np.int8))
    np.save(out / "roi_parent.npy", layout.parent.astype(np.int32))
    ops = suite2p_ops(scope, mean_img, n)
    ref = scope.plane1.expected_image()
    ops.update(refImg=ref, meanImg=ref if mean_img is None else mean_img.astype(np.float32), iplane=1,
               diameter=[2.0 * scope.cfg.dendrites.radius_px] * 2)
    ops["sim"]["plane"] = 1
    np.save(out / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    np.savez_compressed(
        folder / "ground_truth.npz",
        plane=np.int64(1),
        frame_rate_hz=np.float64(scope.frame_rate_hz),
        n_frames=np.int64(n),
        history_truncated=np.bool_(scope.history_truncated),
        parent=layout.parent.astype(np.int32),
        centers=layout.centers.astype(np.float32),
        radii=layout.radius.astype(np.float32),
        brightness=layout.brightness.astype(np.float32),
        depth_um=np.float64(layout.depth_um),
        up=np.flatnonzero(scope.mouse.role > 0),
        down=np.flatnonzero(scope.mouse.role < 0),
        rule=np.str_(scope.cfg.mouse.learning_rule),
        pixel_size_um=np.float64(scope.cfg.pixel_size_um),
        **truth,
    )
    return out


class _PlaneWriter:
    """One plane's movie as a multi-page TIFF and a suite2p int16 binary, with its mean image."""

    def __init__(self, tif_path: Path, bin_path: Path, shape: tuple[int, int], n_frames: int, fps: float) -> None:
        self.tif_path, self.bin_path = tif_path, bin_path
        self.frame = np.empty(shape, np.uint16)
        self._as_int16 = np.empty(shape, np.int16)
        self._clip = np.empty(shape, np.uint16)
        self._mean = np.zeros(shape, np.float64)
        self._fps = fps
        self.written = 0
        self.clipped = 0
        self._tif = tifffile.TiffWriter(tif_path, bigtiff=n_frames * self.frame.nbytes > 3_900_000_000)
        self._bin = open(bin_path, "wb")  # noqa: SIM115 (closed in close())

    def write(self) -> None:
        frame = self.frame
        self._mean += frame
        self._tif.write(frame, contiguous=True, metadata={"fps": self._fps} if self.written == 0 else None)
        np.minimum(frame, _INT16_MAX, out=self._clip)
        self.clipped += int(np.count_nonzero(frame > _INT16_MAX))
        np.copyto(self._as_int16, self._clip, casting="unsafe")
        self._bin.write(self._as_int16.tobytes())
        self.written += 1

    def close(self) -> None:
        self._tif.close()
        self._bin.close()

    def mean_image(self) -> np.ndarray:
        return (self._mean / max(self.written, 1)).astype(np.float32)

    def finish_ops(self, plane: Path) -> None:
        ops = load_npy(plane / "ops.npy").item()
        ops["reg_file"] = str(self.bin_path.resolve())
        ops["save_path"] = str(plane.resolve())
        ops["tiff"] = str(self.tif_path.resolve())
        np.save(plane / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)


def export_movie(
    cfg: SimConfig,
    out_dir: str | Path,
    n_frames: int,
    frame_rate_hz: float = 30.0,
    up: list[int] | tuple[int, ...] = (),
    down: list[int] | tuple[int, ...] = (),
    progress: bool = True,
    zstack: bool = False,
    zstack_range_um: float = 30.0,
    zstack_step_um: float = 1.0,
) -> dict:
    """Render ``n_frames`` frames as fast as possible into ``out_dir``; return a summary dict.

    ``zstack``: also write ``zstack.tif``, planes from ``-zstack_range_um`` to ``+zstack_range_um`` around the
    focal plane (see :func:`write_zstack`). With ``n_planes = 2`` plane 1 (the dendrites) goes to
    ``out_dir/plane1/`` (``movie.tif``, ``suite2p/plane1/``, ``ground_truth.npz``); ``n_frames`` counts volumes.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1 (got {n_frames})")
    out = Path(out_dir)
    plane = out / "suite2p" / "plane0"
    plane.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    scope = SimScope(cfg, frame_rate_hz, up=up, down=down)
    writers = [_PlaneWriter(out / "movie.tif", plane / "data.bin", scope.shape, n_frames, frame_rate_hz)]
    plane1 = out / "plane1" / "suite2p" / "plane1"
    if scope.plane1 is not None:
        plane1.mkdir(parents=True, exist_ok=True)
        writers.append(_PlaneWriter(out / "plane1" / "movie.tif", plane1 / "data.bin", scope.shape, n_frames,
                                    frame_rate_hz))
    render_s = 0.0
    try:
        with tqdm(total=n_frames, desc="rig sim export", unit="frame", disable=not progress) as bar:
            for _ in range(n_frames):
                t0 = time.perf_counter()
                scope.render(writers[0].frame)
                render_s += time.perf_counter() - t0
                writers[0].write()
                if len(writers) > 1:
                    scope.render_dendrites(writers[1].frame)
                    writers[1].write()
                bar.update(1)
    finally:
        for w in writers:
            w.close()
    write_ground_truth(scope, out, n_frames=n_frames, mean_img=writers[0].mean_image())
    writers[0].finish_ops(plane)
    summary_plane1 = None
    if len(writers) > 1:
        write_ground_truth(scope, out / "plane1", n_frames=n_frames, mean_img=writers[1].mean_image(), plane=1)
        writers[1].finish_ops(plane1)
        summary_plane1 = {"dir": str((out / "plane1").resolve()), "tiff": str(writers[1].tif_path),
                          "binary": str(writers[1].bin_path), "n_dendrites": scope.plane1.layout.n,
                          "int16_clipped_pixels": writers[1].clipped}
    stack_path = write_zstack(scope, out / "zstack.tif", zstack_range_um, zstack_step_um) if zstack else None
    elapsed = time.perf_counter() - t_start
    summary = {
        "zstack": str(stack_path) if stack_path else None,
        "z_drift_um": cfg.z_drift_um,
        "ok": True,
        "dir": str(out.resolve()),
        "frames": n_frames,
        "shape": list(scope.shape),
        "frame_rate_hz": frame_rate_hz,
        "seed": cfg.seed,
        "n_cells": scope.n_cells,
        "indicator": cfg.indicator,
        "tiff": str(writers[0].tif_path),
        "binary": str(writers[0].bin_path),
        "ground_truth": str(out / "ground_truth.npz"),
        "int16_clipped_pixels": writers[0].clipped,
        "render_ms_per_frame": 1e3 * render_s / n_frames,
        "seconds": elapsed,
    }
    if summary_plane1 is not None:
        summary["plane1"] = summary_plane1
    return summary


def write_zstack(scope: SimScope, path: str | Path, range_um: float = 30.0, step_um: float = 1.0,
                 frames_averaged: int = 60) -> Path:
    """An ImageJ TIFF z-stack of today's field at zero motion, centred on the focal plane (plane k is at
    ``-range_um + k * step_um``), each plane as the mean of ``frames_averaged`` noisy frames would be.

    The ImageJ ``spacing`` is the step in um and the resolution is ``1 / pixel_size_um`` per um, as Fiji writes.
    """
    if step_um <= 0 or range_um < step_um:
        raise ValueError(f"z-stack: need step > 0 and range >= step (got range {range_um}, step {step_um} um)")
    depth = scope.depth if scope.depth is not None else DepthModel(scope)
    n_half = int(round(range_um / step_um))
    cfg = scope.cfg
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(6,)))
    enf = 1.0 + cfg.pmt_gain_var / cfg.pmt_gain**2
    planes = []
    for k in range(-n_half, n_half + 1):
        mean = depth.expected_image(scope, k * step_um).astype(np.float64)
        photons = np.maximum((mean - cfg.adc_offset) / cfg.pmt_gain, 0.0)
        sd = np.sqrt(cfg.pmt_gain**2 * enf * photons + cfg.electronics_noise**2) / math.sqrt(frames_averaged)
        planes.append(np.clip(mean + sd * rng.standard_normal(mean.shape), 0, 65535).astype(np.uint16))
    path = Path(path)
    tifffile.imwrite(path, np.stack(planes), imagej=True,
                     resolution=(1.0 / cfg.pixel_size_um, 1.0 / cfg.pixel_size_um),
                     metadata={"spacing": step_um, "unit": "um", "axes": "ZYX"})
    return path
