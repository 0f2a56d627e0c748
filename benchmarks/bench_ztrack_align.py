"""Accuracy and cost of z-tracking and of day-to-day field alignment, on simulated sessions.

Run: python benchmarks/bench_ztrack_align.py [--size 256] [--frames 1800] [--seeds 3] [--json OUT.json]

z-tracking: per seed, a simulated session (``--size`` px, 30 Hz) whose focal plane drifts 20 um peak-to-peak
(-10 to +10 um, one half-cosine over the movie) plus occasional z jumps (0.05/s, sd 2 um, relaxing in 2 s),
and the simulator's z-stack (+-30 um, 1 um planes, 60-frame averages). Every frame is registered by the
live pipeline (``acquisition.pipeline.FramePipeline``, as ``rig process``), then ``acquisition.ztrack.ZTracker``
estimates its depth (every frame, 10-frame running mean). Reported: RMS and 95th percentile of |error| against
the true z per frame, and the tracker's cost per frame (its ``update`` alone, median and 95th percentile).

Alignment: per seed and rotation (0, +-1, +-2, +-3 degrees, with shifts up to 8 px), day 0 and day 1 are two
sessions of the same tissue (new activity, noise and motion on day 1, ``SimConfig.day``); each reference is
the session's mean image of ``--align-frames`` noisy, moving frames (ops ``meanImg``), as a quick morning
recording would give. ``acquisition.align.estimate_transform`` is run on the two; reported: the error of the
shift (px, at the field's centre and at its corners, i.e. including the rotation error) and of the rotation.
The true transform between two mean images includes each session's mean motion (a mean image is the tissue
moved by it), which the ground truth's per-frame shifts give.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acquisition.align import Similarity, estimate_transform  # noqa: E402
from acquisition.sim.config import SimConfig  # noqa: E402
from acquisition.sim.export import export_movie  # noqa: E402


def z_run(seed: int, size: int, frames: int, tmp: Path) -> dict:
    import tifffile

    from acquisition.pipeline import FramePipeline
    from acquisition.rois import load_suite2p
    from acquisition.ztrack import ZTracker, load_zstack

    cfg = SimConfig(seed=seed, height_px=size, width_px=size, n_cells=int(100 * (size / 256) ** 2),
                    z_drift_um=20.0, z_drift_period_s=frames / 30.0, z_jump_rate_hz=0.05, z_jump_sd_um=2.0)
    out = tmp / f"z{seed}"
    export_movie(cfg, out, frames, 30.0, progress=False, zstack=True)
    truth = np.load(out / "ground_truth.npz")["z_um"]
    rois = load_suite2p(out)
    movie = tifffile.imread(out / "movie.tif")
    pipe = FramePipeline(rois, reference=rois.mean_img)
    tracker = ZTracker(load_zstack(out / "zstack.tif"), rois.mean_img)
    z = np.full(frames, np.nan)
    cost = np.zeros(frames)
    for i, frame in enumerate(movie):
        res = pipe.process(frame)
        t0 = time.perf_counter()
        z[i] = tracker.update(frame, res.dy, res.dx)
        cost[i] = time.perf_counter() - t0
    pipe.close()
    err = np.abs(z - truth)
    return {"seed": seed, "rms_um": float(np.sqrt(np.nanmean(err**2))), "p95_um": float(np.nanpercentile(err, 95)),
            "true_range_um": [float(truth.min()), float(truth.max())],
            "ms_per_frame_median": 1e3 * float(np.median(cost)),
            "ms_per_frame_p95": 1e3 * float(np.percentile(cost, 95))}


def align_run(seed: int, size: int, frames: int, rotation: float, tmp: Path) -> dict:
    rng = np.random.default_rng(1000 * seed + int(10 * rotation) + 50)
    dy, dx = rng.uniform(-8, 8, 2)
    base = {"seed": seed, "height_px": size, "width_px": size, "n_cells": int(100 * (size / 256) ** 2)}
    d0, d1 = tmp / f"a{seed}_0", tmp / f"a{seed}_1_{rotation}"
    if not d0.exists():
        export_movie(SimConfig(**base), d0, frames, 30.0, progress=False)
    export_movie(SimConfig(**base, day=1, day_dy_px=dy, day_dx_px=dx, day_rotation_deg=rotation), d1, frames, 30.0,
                 progress=False)
    ref0 = np.load(d0 / "suite2p/plane0/ops.npy", allow_pickle=True).item()["meanImg"]
    ref1 = np.load(d1 / "suite2p/plane0/ops.npy", allow_pickle=True).item()["meanImg"]
    t0 = time.perf_counter()
    al = estimate_transform(ref0, ref1)
    seconds = time.perf_counter() - t0
    # a mean image is the tissue moved by the session's mean motion m: ref0 -> ref1 is "undo m0, the day's
    # transform, add m1", i.e. the day's rotation with the shift t + m1 - R m0
    m0 = np.load(d0 / "ground_truth.npz")["shifts"].mean(0)
    m1 = np.load(d1 / "ground_truth.npz")["shifts"].mean(0)
    day = Similarity.about_center((size, size), dy, dx, rotation)
    cy, cx = (size - 1) / 2.0, (size - 1) / 2.0
    ry, rx = day.forward(np.array([cy + m0[0]]), np.array([cx + m0[1]]))
    true = Similarity.about_center((size, size), dy + m1[0] - (ry[0] - cy - dy), dx + m1[1] - (rx[0] - cx - dx),
                                   rotation)
    corners = np.array([[0, 0], [0, size - 1], [size - 1, 0], [size - 1, size - 1], [(size - 1) / 2] * 2], float)
    ty, tx = true.forward(corners[:, 0], corners[:, 1])
    ey, ex = al.transform.forward(corners[:, 0], corners[:, 1])
    point_err = np.hypot(ey - ty, ex - tx)
    return {"seed": seed, "rotation_deg": rotation, "dy": float(dy), "dx": float(dx),
            "center_err_px": float(point_err[-1]), "corner_err_px": float(point_err[:4].max()),
            "rotation_err_deg": float(al.transform.rotation_deg - rotation), "corr": al.corr, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=1800, help="frames per z-tracking session (1800 = 1 min)")
    ap.add_argument("--align-frames", type=int, default=300, help="frames in each alignment reference")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", default="", metavar="OUT.json")
    args = ap.parse_args()
    results: dict = {"size": args.size, "z": [], "align": []}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for seed in range(args.seeds):
            r = z_run(seed, args.size, args.frames, tmp)
            results["z"].append(r)
            print(f"z seed {seed}: RMS {r['rms_um']:.2f} um, p95 {r['p95_um']:.2f} um over "
                  f"[{r['true_range_um'][0]:.1f}, {r['true_range_um'][1]:.1f}] um; tracker "
                  f"{r['ms_per_frame_median']:.2f} ms/frame (p95 {r['ms_per_frame_p95']:.2f})", flush=True)
            for rot in (0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0):
                a = align_run(seed, args.size, args.align_frames, rot, tmp)
                results["align"].append(a)
                print(f"align seed {seed} rot {rot:+.0f}: centre err {a['center_err_px']:.3f} px, worst corner "
                      f"{a['corner_err_px']:.3f} px, rotation err {a['rotation_err_deg']:+.3f} deg, corr "
                      f"{a['corr']:.2f}, {a['seconds']:.1f} s", flush=True)
    z_rms = math.sqrt(np.mean([r["rms_um"] ** 2 for r in results["z"]]))
    worst_center = max(a["center_err_px"] for a in results["align"])
    worst_corner = max(a["corner_err_px"] for a in results["align"])
    print(f"summary: z RMS {z_rms:.2f} um over {args.seeds} sessions; alignment worst centre error "
          f"{worst_center:.3f} px, worst corner error {worst_corner:.3f} px over {len(results['align'])} pairs")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
