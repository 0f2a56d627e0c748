#!/usr/bin/env python3
"""Registration accuracy per reference type and photon level, and per-frame cost, for each method we tried.

    python benchmarks/bench_registration_refs.py [--size 512] [--frames 120] [--photons 2 4 6] [--suite2p]
                                                 [--refine-only | --no-refine] [--methods TEXT ...]

Movies come from the independent generator in tests/test_acq_synth.py (``make_pmt_movie``: band-limited
tissue, ring-shaped cells, slow neuropil, bleaching, Poisson photons times exponential PMT gain, subpixel
motion with rare jumps), not from the simulator. Error: 2-D RMS sqrt(mean(ey^2 + ex^2)) against the true
shifts, constant offset removed (a reference sits wherever it was built). References:

* noiseless: the true mean image (the ideal);
* previous session: a subpixel-aligned mean of other frames of the same field (independent noise);
* suite2p-style refImg: int16 mean of *these* frames aligned by whole pixels, as suite2p builds refImg
  (its noise is partly the frames' own noise), also rescaled (x0.3 + 1000) and with a zero border outside
  a yrange/xrange of 8 px (suite2p 0.x meanImg style);
* build_reference: ours, from the frames;
* mean of today's frames: plain mean of the frames, not aligned (motion-blurred);
* genuine suite2p refImg (``--suite2p``: runs suite2p 1.x on each movie, slow).

Refinement (acquisition/reg_refine.py, what ``registration.refine_reference`` does): for each reference, the
error with the default method before and after refining it from the first 60 frames, its blur ratio (auto
refines below 0.9), where the refined reference sits relative to the given one (the frames' mean shift
against the given one minus against the refined one: ~0 means ROIs drawn on the given one stay valid) and
the refinement's wall time. ``--refine-only`` prints only this table.

Cost: p50/p99 ms per frame of ``register`` for each method on one movie (one thread, as the acquisition
process runs). The last stdout line is JSON with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # what the acquisition process runs with
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from acquisition.reg_refine import refine_reference  # noqa: E402
from acquisition.registration import RigidRegistrar, build_reference, shift_image_subpixel  # noqa: E402
from tests.test_acq_synth import PmtMovie, make_pmt_movie  # noqa: E402

METHODS: dict[str, dict] = {
    "old default: 4x binned only, norm_frames, phase, sigma 1.15": dict(
        bin_factor=4, fine_size=0, norm_frames=True, whitening="phase", smooth_sigma=1.15),
    "4x binned only, no clipping, phase, sigma 1.15": dict(
        bin_factor=4, fine_size=0, whitening="phase", smooth_sigma=1.15),
    "4x + full-res 256 crop, phase, sigma 1.15": dict(bin_factor=4, fine_size=256, whitening="phase",
                                                      smooth_sigma=1.15),
    "4x + full-res 384 crop, phase, sigma 1.7": dict(bin_factor=4, fine_size=384, whitening="phase",
                                                     smooth_sigma=1.7),
    "4x + full-res 256 crop, matched, sigma 1.3": dict(bin_factor=4, fine_size=256),
    "before issue 21: 4x + full-res 384 crop, matched, sigma 1.3": dict(track=False, fft_backend="pocketfft",
                                                                       dft_band=0),
    "new default: same + tracking, ducc0, DFT band 0.3": dict(),
    "default, coarse stage on every frame (track off)": dict(track=False),
    "default, whole spectrum in the DFTs (dft_band 0)": dict(dft_band=0),
    "default, DFT band 0.25": dict(dft_band=0.25),
    "default, 352 crop": dict(fine_size=352),
    "full resolution, matched, sigma 1.3": dict(bin_factor=1),
}


def rms_2d(est: np.ndarray, truth: np.ndarray) -> float:
    err = est - truth
    err -= err.mean(axis=0)
    return float(np.sqrt((err**2).sum(axis=1).mean()))


def suite2p_refimg(frames: np.ndarray) -> np.ndarray:
    """refImg of a genuine suite2p 1.x run (registration only) on ``frames``."""
    import suite2p
    import tifffile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        tifffile.imwrite(root / "data" / "movie.tif", frames)
        settings = suite2p.default_settings()
        settings.update({"torch_device": "cpu", "fs": 30.0})
        settings["run"]["do_detection"] = False
        settings["run"]["do_deconvolution"] = False
        settings["registration"]["nonrigid"] = False
        suite2p.run_s2p(db={"data_path": [str(root / "data")], "save_path0": str(root / "out"), "nplanes": 1,
                            "nchannels": 1}, settings=settings)
        ops = np.load(root / "out" / "suite2p" / "plane0" / "ops.npy", allow_pickle=True).item()
        return np.asarray(ops["refImg"])


def references(movie: PmtMovie, n: int, with_suite2p: bool) -> dict[str, np.ndarray]:
    frames, shifts = movie.frames[:n], movie.shifts[:n]
    rest, rest_shifts = movie.frames[n:], movie.shifts[n:]
    earlier = np.mean([shift_image_subpixel(f, -dy, -dx) for f, (dy, dx) in zip(rest, rest_shifts, strict=True)],
                      axis=0)
    s2p_style = np.mean([np.roll(f.astype(np.float32), (-round(dy), -round(dx)), (0, 1))
                         for f, (dy, dx) in zip(frames, shifts, strict=True)], axis=0).astype(np.int16)
    bordered = np.zeros_like(s2p_style)
    bordered[8:-8, 8:-8] = s2p_style[8:-8, 8:-8]
    refs = {"noiseless": movie.clean_reference, "previous session": earlier.astype(np.float32),
            "suite2p-style refImg (int16)": s2p_style, "  same, x0.3 + 1000": s2p_style * 0.3 + 1000.0,
            "  same, zero border 8 px": bordered, "build_reference": build_reference(frames),
            "mean of today's frames (unaligned)": frames.astype(np.float32).mean(axis=0),
            "mean of the first 30 frames (unaligned)": frames[:30].astype(np.float32).mean(axis=0)}
    if with_suite2p:
        refs["genuine suite2p 1.x refImg"] = suite2p_refimg(movie.frames)
    return refs


def refinement_table(refs: dict[str, np.ndarray], frames: np.ndarray, shifts: np.ndarray, photons: float,
                     results: dict, n_refine: int = 60) -> None:
    """Before/after refinement per reference. "moved": where the refined reference sits relative to the given
    one, in true coordinates: for a plain mean of frames the given one's position is the mean true shift of
    the frames it averages (the centre of its blur), otherwise where the frames' shifts against it put it."""
    print(f"\n## refinement from the first {n_refine} frames, {photons:g} photons/px (default method)\n")
    print("| reference | before, px | blur ratio | disagreement, px | rounds | after, px | moved, px (y, x) "
          "| refine s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ref in refs.items():
        reg = RigidRegistrar(ref)
        before = np.array([reg.register(f)[:2] for f in frames])
        t0 = time.perf_counter()
        refined = refine_reference(ref, list(frames[:n_refine]), RigidRegistrar)
        seconds = time.perf_counter() - t0
        reg = RigidRegistrar(refined.image)
        after = np.array([reg.register(f)[:2] for f in frames])
        made_from = {"mean of today's frames (unaligned)": len(frames), "mean of the first 30 frames (unaligned)": 30}
        given = (shifts[: made_from[name]].mean(axis=0) if name in made_from
                 else (shifts - before).mean(axis=0))  # the given reference's position in true coordinates
        moved = (shifts - after).mean(axis=0) - given
        row = [rms_2d(before, shifts), refined.blur_ratio, refined.disagreement_px, refined.rounds,
               rms_2d(after, shifts), float(moved[0]), float(moved[1]), seconds]
        results["refinement"][f"{photons:g}|{name.strip()}"] = row
        print(f"| {name} | {row[0]:.3f} | {row[1]:.2f} | {row[2]:.3f} | {row[3]} | {row[4]:.3f} | "
              f"{row[5]:+.3f}, {row[6]:+.3f} | {row[7]:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=120, help="frames registered per movie")
    ap.add_argument("--photons", type=float, nargs="+", default=[2.0, 4.0, 6.0])
    ap.add_argument("--suite2p", action="store_true", help="also run suite2p for a genuine refImg (slow)")
    ap.add_argument("--refine-only", action="store_true", help="only the reference-refinement table")
    ap.add_argument("--no-refine", action="store_true", help="skip the reference-refinement table")
    ap.add_argument("--methods", nargs="+", metavar="TEXT",
                    help="only the methods whose name contains one of these (default: all)")
    args = ap.parse_args()
    methods = {name: kw for name, kw in METHODS.items() if not args.methods or any(t in name for t in args.methods)}
    n_cells = int(60 * (args.size / 256) ** 2)
    results: dict = {"accuracy": {}, "cost_ms": {}, "refinement": {}, "load_avg": os.getloadavg()}
    cost_done = False
    for photons in args.photons:
        movie = make_pmt_movie(T=args.frames + 60, Ly=args.size, Lx=args.size, n_cells=n_cells, photons=photons,
                               seed=int(photons * 10))
        frames, shifts = movie.frames[: args.frames], movie.shifts[: args.frames]
        refs = references(movie, args.frames, args.suite2p)
        if not args.no_refine:
            refinement_table(refs, frames, shifts, photons, results)
        if args.refine_only:
            continue
        print(f"\n## {args.size}x{args.size}, {photons:g} photons/px at baseline: 2-D RMS error, px\n")
        names = list(methods)
        print("| reference | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for ref_name, ref in refs.items():
            row = []
            for method, kwargs in methods.items():
                reg = RigidRegistrar(ref, **kwargs)
                est = np.array([reg.register(f)[:2] for f in frames])
                err = rms_2d(est, shifts)
                results["accuracy"][f"{photons:g}|{ref_name.strip()}|{method}"] = err
                row.append(f"{err:.3f}")
            print(f"| {ref_name} | " + " | ".join(row) + " |", flush=True)
        if not cost_done:
            cost_done = True
            print(f"\n## cost per {args.size}x{args.size} frame (register only, one thread)\n")
            print("| method | p50 ms | p99 ms |\n|---|---|---|")
            ref = refs["suite2p-style refImg (int16)"]
            for method, kwargs in methods.items():
                reg = RigidRegistrar(ref, **kwargs)
                for f in frames[:10]:
                    reg.register(f)
                times = []
                for f in frames:
                    t0 = time.perf_counter()
                    reg.register(f)
                    times.append((time.perf_counter() - t0) * 1e3)
                p50, p99 = np.percentile(times, [50, 99])
                results["cost_ms"][method] = [float(p50), float(p99)]
                print(f"| {method} | {p50:.2f} | {p99:.2f} |", flush=True)
    print(f"\nload average during the run: {os.getloadavg()}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
