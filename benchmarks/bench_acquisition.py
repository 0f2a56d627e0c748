#!/usr/bin/env python3
"""Per-frame cost of online registration + ROI extraction, and of suite2p's rigid registration, same frames.

    python benchmarks/bench_acquisition.py [--frames 300] [--size 512] [--rois 500] [--no-suite2p]

Synthetic 512x512 uint16 movie with known subpixel shifts (Fourier-shifted textured field of view with
cells, shot noise), 500 ROIs with suite2p-like neuropil masks. Prints p50/p99 in ms of: our registration,
our extraction, the whole FramePipeline.process (validation + registration + extraction) and, when suite2p
is importable, suite2p's rigid phase correlation per frame (one frame per call, as online use would, and
in batches of 100, as suite2p runs offline), plus the accuracy of both against the true shifts. The last
stdout line is JSON with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # what the acquisition process runs with
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from acquisition.config import RegistrationConfig  # noqa: E402
from acquisition.extraction import Extractor  # noqa: E402
from acquisition.pipeline import FramePipeline  # noqa: E402
from acquisition.registration import RigidRegistrar  # noqa: E402
from acquisition.rois import RoiSet  # noqa: E402


def synthetic_movie(n_frames: int, size: int, n_rois: int, max_shift: float, seed: int = 0, step_px: float = 0.7):
    """Frames (n, size, size) uint16, true shifts (n, 2: a random walk of ``step_px`` sd per frame and axis),
    noiseless reference, suite2p-style stat."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    field = np.zeros((size, size))
    centres = rng.uniform(12, size - 12, (n_rois, 2))
    stat = []
    for cy, cx in centres:
        y0, y1, x0, x1 = int(cy) - 8, int(cy) + 9, int(cx) - 8, int(cx) + 9
        blob = np.exp(-((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2) / (2 * 3.0**2))
        field[y0:y1, x0:x1] += blob * rng.uniform(0.5, 1.5)
        keep = blob > np.exp(-2.0)  # within 2 sigma
        stat.append({"ypix": yy[y0:y1, x0:x1][keep], "xpix": xx[y0:y1, x0:x1][keep], "lam": blob[keep],
                     "radius": 6.0})
    count = np.zeros((size, size), int)
    for s in stat:
        count[s["ypix"], s["xpix"]] += 1
    for s in stat:
        s["overlap"] = count[s["ypix"], s["xpix"]] > 1
    from scipy.ndimage import gaussian_filter

    field += gaussian_filter(rng.random((size, size)), 1.5) * 3.0  # fine texture
    field += gaussian_filter(rng.random((size, size)), 25) * 20.0  # broad glow
    reference = 200 + 400 * field
    spec = np.fft.rfft2(reference)
    ky, kx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    shifts = np.cumsum(rng.normal(0, step_px, (n_frames, 2)), axis=0)
    shifts = np.clip(shifts - shifts.mean(axis=0), -max_shift, max_shift)
    noise_bank = rng.standard_normal((4, size, size)).astype(np.float32)
    frames = np.empty((n_frames, size, size), np.uint16)
    for i, (dy, dx) in enumerate(shifts):
        clean = np.fft.irfft2(spec * np.exp(-2j * np.pi * (ky * dy + kx * dx)), s=(size, size))
        noise = np.roll(noise_bank[i % 4], rng.integers(0, size, 2), axis=(0, 1))
        frames[i] = np.clip(clean + noise * np.sqrt(clean * 40.0), 0, 65535)
    return frames, shifts, reference.astype(np.float32), stat


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def suite2p_timings(frames: np.ndarray, reference: np.ndarray, batch: int) -> dict | None:
    try:
        import torch
        from suite2p.registration import register, rigid
    except ImportError as exc:
        print(f"suite2p not importable ({exc}); install the suite2p extra to compare", file=sys.stderr)
        return None
    torch.set_num_threads(1)  # same footing as ours: one core for the frame path
    device = torch.device("cpu")
    mask_mul, mask_offset, cf_ref, _, _, _, _, rmin, rmax = register.compute_filters_and_norm(
        reference.astype(np.int16), norm_frames=True, spatial_smooth=1.15, spatial_taper=3.45,
        block_size=None, device=device)
    frames16 = frames.astype(np.int16)

    def run(chunk: np.ndarray):
        t = torch.clip(torch.from_numpy(chunk), int(rmin), int(rmax))
        return rigid.phasecorr(t, cf_ref, mask_mul, mask_offset, maxregshift=0.1, smooth_sigma_time=0)[:2]

    run(frames16[:1])
    single, ys, xs = [], [], []
    for i in range(frames16.shape[0]):
        t0 = time.perf_counter()
        ymax, xmax = run(frames16[i:i + 1])
        single.append((time.perf_counter() - t0) * 1e3)
        ys.append(int(ymax[0]))
        xs.append(int(xmax[0]))
    batched = []
    for start in range(0, frames16.shape[0], batch):
        chunk = frames16[start:start + batch]
        t0 = time.perf_counter()
        run(chunk)
        batched.append((time.perf_counter() - t0) * 1e3 / chunk.shape[0])
    return {"single_frame": percentiles(single), "batched_ms_per_frame": round(float(np.mean(batched)), 3),
            "shifts": np.stack([ys, xs], axis=1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rois", type=int, default=500)
    parser.add_argument("--max-shift", type=float, default=10.0)
    parser.add_argument("--no-suite2p", action="store_true")
    parser.add_argument("--batch", type=int, default=100, help="suite2p batch size for the offline number")
    args = parser.parse_args(argv)

    print(f"making a {args.frames}-frame {args.size}x{args.size} movie with {args.rois} ROIs...", file=sys.stderr)
    frames, shifts, reference, stat = synthetic_movie(args.frames, args.size, args.rois, args.max_shift)
    rois = RoiSet(stat=stat, iscell=np.ones((len(stat), 2)), Ly=args.size, Lx=args.size, ref_img=reference)
    t0 = time.perf_counter()
    pipeline = FramePipeline(rois, registration=RegistrationConfig())
    build_s = time.perf_counter() - t0
    registrar: RigidRegistrar = pipeline.registrar
    summary_bin = registrar.bin
    extractor: Extractor = pipeline.extractor
    n = extractor.n_rois
    F, Fneu = np.zeros(n, np.float32), np.zeros(n, np.float32)

    for frame in frames[:20]:  # warm caches
        pipeline.process(frame)
    reg_ms, ext_ms, total_ms, cpu_ms, est = [], [], [], [], []
    for frame in frames:
        t0 = time.perf_counter()
        dy, dx, _, _ = registrar.register(frame)
        t1 = time.perf_counter()
        extractor.extract(frame, dy, dx, F, Fneu)
        t2 = time.perf_counter()
        c0 = time.thread_time()
        pipeline.process(frame)
        cpu_ms.append((time.thread_time() - c0) * 1e3)
        t3 = time.perf_counter()
        reg_ms.append((t1 - t0) * 1e3)
        ext_ms.append((t2 - t1) * 1e3)
        total_ms.append((t3 - t2) * 1e3)
        est.append((dy, dx))
    est = np.array(est)
    rms = float(np.sqrt(((est - shifts) ** 2).mean()))
    summary = {
        "frame": f"{args.size}x{args.size} uint16", "rois": n, "frames": args.frames, "bin_factor": summary_bin,
        "neuropil_pixels_mean": float(extractor.npix_neuropil.mean()), "setup_s": round(build_s, 2),
        "ours_registration": percentiles(reg_ms), "ours_extraction": percentiles(ext_ms),
        "ours_registration_plus_extraction": percentiles([a + b for a, b in zip(reg_ms, ext_ms, strict=True)]),
        "ours_pipeline_process": percentiles(total_ms), "ours_pipeline_process_cpu_time": percentiles(cpu_ms),
        "ours_rms_error_px": round(rms, 4), "load_average_1min": round(os.getloadavg()[0], 2)
        if hasattr(os, "getloadavg") else None,
    }
    print(f"ours:    registration {summary['ours_registration']}  extraction {summary['ours_extraction']}",
          file=sys.stderr)
    print(f"ours:    registration+extraction {summary['ours_registration_plus_extraction']}  "
          f"pipeline.process {summary['ours_pipeline_process']} (thread CPU time "
          f"{summary['ours_pipeline_process_cpu_time']})  RMS error {rms:.3f} px", file=sys.stderr)
    for factor in (2, 1):  # the same registration at finer resolutions: what the default trades away
        other = RigidRegistrar(reference, bin_factor=factor)
        times, found = [], []
        for frame in frames:
            t0 = time.perf_counter()
            found.append(other.register(frame)[:2])
            times.append((time.perf_counter() - t0) * 1e3)
        err = float(np.sqrt(((np.array(found) - shifts) ** 2).mean()))
        summary[f"ours_registration_bin{factor}"] = {**percentiles(times), "rms_error_px": round(err, 4)}
        print(f"ours:    registration with bin_factor={factor}: {percentiles(times)}, RMS error {err:.3f} px",
              file=sys.stderr)
    variants = (("nearest_pixel", "at the nearest pixel (default: bilinear cell masks)", {"subpixel": False}),
                ("sparse", "the earlier sparse product (extraction.method = \"sparse\")", {"method": "sparse"}))
    for key, what, kwargs in variants:  # suite2p's whole pixels; the way before the compiled kernels
        other_ex = Extractor(rois, max_shift_px=extractor.pad - 1, **kwargs)
        times = []
        for frame, (dy, dx) in zip(frames, est, strict=True):
            t0 = time.perf_counter()
            other_ex.extract(frame, dy, dx, F, Fneu)
            times.append((time.perf_counter() - t0) * 1e3)
        summary[f"ours_extraction_{key}"] = percentiles(times)
        print(f"ours:    extraction {what}: {percentiles(times)}", file=sys.stderr)
    if not args.no_suite2p:
        s2p = suite2p_timings(frames, reference, args.batch)
        if s2p is not None:
            s2p_shifts = s2p.pop("shifts")
            s2p["rms_error_px"] = round(float(np.sqrt(((s2p_shifts - shifts) ** 2).mean())), 4)
            s2p["agree_within_1px"] = round(float(np.mean(np.all(np.abs(est - s2p_shifts) <= 1.0, axis=1))), 4)
            summary["suite2p_rigid"] = s2p
            print(f"suite2p: rigid registration, one frame per call {s2p['single_frame']}, batched "
                  f"{s2p['batched_ms_per_frame']} ms/frame, RMS error {s2p['rms_error_px']} px (integer shifts), "
                  f"agreement within 1 px {s2p['agree_within_1px']:.1%}", file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
