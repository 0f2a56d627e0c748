"""Write a synthetic movie and its ground truth to disk for offline use (suite2p, registration tests).

Layout of the export folder::

    movie.tif                        multi-page uint16 TIFF, one page per frame
    suite2p/plane0/data.bin          the same frames as int16 (suite2p binary layout, unregistered)
    suite2p/plane0/{stat,iscell,ops}.npy   the true ROIs (ROI i == cell i), ops in suite2p 1.x layout
    ground_truth.npz                 true shifts, F, dF/F, spikes, bleaching per frame
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from acquisition.sim.config import SimConfig
from acquisition.sim.scope import SimScope

_INT16_MAX = np.iinfo(np.int16).max


def export_movie(
    cfg: SimConfig,
    out_dir: str | Path,
    n_frames: int,
    frame_rate_hz: float = 30.0,
    up: list[int] | tuple[int, ...] = (),
    down: list[int] | tuple[int, ...] = (),
    progress: bool = True,
) -> dict:
    """Render ``n_frames`` frames as fast as possible into ``out_dir``; return a summary dict."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1 (got {n_frames})")
    out = Path(out_dir)
    plane = out / "suite2p" / "plane0"
    plane.mkdir(parents=True, exist_ok=True)
    tif_path = out / "movie.tif"
    bin_path = plane / "data.bin"
    t_start = time.perf_counter()
    scope = SimScope(cfg, frame_rate_hz, up=up, down=down)
    frame = np.empty(scope.shape, np.uint16)
    as_int16 = np.empty(scope.shape, np.int16)
    clip_buf = np.empty(scope.shape, np.uint16)
    mean_acc = np.zeros(scope.shape, np.float64)
    clipped = 0
    render_s = 0.0
    bigtiff = n_frames * frame.nbytes > 3_900_000_000
    with (
        tifffile.TiffWriter(tif_path, bigtiff=bigtiff) as tif,
        open(bin_path, "wb") as binary,
        tqdm(total=n_frames, desc="rig sim export", unit="frame", disable=not progress) as bar,
    ):
        for _ in range(n_frames):
            t0 = time.perf_counter()
            scope.render(frame)
            render_s += time.perf_counter() - t0
            mean_acc += frame
            tif.write(frame, contiguous=True, metadata={"fps": frame_rate_hz} if _ == 0 else None)
            np.minimum(frame, _INT16_MAX, out=clip_buf)
            clipped += int(np.count_nonzero(frame > _INT16_MAX))
            np.copyto(as_int16, clip_buf, casting="unsafe")
            binary.write(as_int16.tobytes())
            bar.update(1)
    mean_img = (mean_acc / n_frames).astype(np.float32)
    scope.write_ground_truth(out, n_frames=n_frames, mean_img=mean_img)
    ops = np.load(plane / "ops.npy", allow_pickle=True).item()
    ops["reg_file"] = str(bin_path.resolve())
    ops["save_path"] = str(plane.resolve())
    ops["tiff"] = str(tif_path.resolve())
    np.save(plane / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    elapsed = time.perf_counter() - t_start
    return {
        "ok": True,
        "dir": str(out.resolve()),
        "frames": n_frames,
        "shape": list(scope.shape),
        "frame_rate_hz": frame_rate_hz,
        "seed": cfg.seed,
        "n_cells": scope.n_cells,
        "indicator": cfg.indicator,
        "tiff": str(tif_path),
        "binary": str(bin_path),
        "ground_truth": str(out / "ground_truth.npz"),
        "int16_clipped_pixels": clipped,
        "render_ms_per_frame": 1e3 * render_s / n_frames,
        "seconds": elapsed,
    }
