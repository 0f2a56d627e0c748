"""``rig process MOVIE --rois SUITE2P_DIR [--ref REF] [--zstack STACK] --out OUT.npz``: the live code, offline.

Reads the movie with the replay source (as fast as possible), runs :class:`FramePipeline` on every frame and
writes shifts, correlation, flags, F and Fneu (suite2p layout: ROIs x frames). The last stdout line is
JSON with ``frames`` and ``frames_per_s``. With ``--zstack`` also ``z_um`` per frame (NaN where not estimated,
acquisition.ztrack). Also runnable as ``python -m acquisition.offline``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and the tracker are imported when a run needs them (the CLI starts fast)
    import numpy as np

    from acquisition.ztrack import ZTracker

HELP = "register a movie and extract ROI fluorescence with the live pipeline, offline"


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("movie", help="movie file: .tif/.tiff (ScanImage, BigTIFF), suite2p data.bin, .npy, .h5")
    p.add_argument("--rois", required=True, metavar="SUITE2P_DIR", help="suite2p plane folder (or its parent)")
    p.add_argument("--ref", default="", metavar="REF",
                   help="reference image (.npy or 1-page .tif); default: refImg of the suite2p folder, "
                        "else built from the movie as suite2p does")
    p.add_argument("--out", required=True, metavar="OUT.npz", help="output file")
    p.add_argument("--all-rois", action="store_true", help="extract every ROI, not only iscell == 1")
    p.add_argument("--no-register", action="store_true", help="extract without motion correction")
    p.add_argument("--maxregshift", type=float, default=0.1, help="max shift, fraction of the frame (0.1)")
    p.add_argument("--smooth-sigma", type=float, default=1.3, help="phase-correlation smoothing, px (1.3)")
    p.add_argument("--min-corr", type=float, default=0.05, help="quality floor for LOW_CORR (0.05)")
    p.add_argument("--reference-frames", type=int, default=300,
                   help="frames (evenly spaced) used to build a reference when none is given (300)")
    p.add_argument("--refine-reference", choices=("auto", "always", "never"), default="auto",
                   help="replace a given reference by an aligned average of the first good frames, in its "
                        "coordinates: auto (when it looks motion-blurred), always, never (auto)")
    p.add_argument("--refine-frames", type=int, default=60, help="good frames averaged for that (60)")
    p.add_argument("--h5-key", default="", help="dataset inside an .h5 movie")
    p.add_argument("--n-channels", type=int, default=1, help="interleaved channels in the file")
    p.add_argument("--channel", type=int, default=0, help="channel to process (0-based)")
    p.add_argument("--n-planes", type=int, default=1, help="interleaved planes in the file")
    p.add_argument("--plane", type=int, default=0, help="plane to process (0-based)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    z = p.add_argument_group("z-tracking (acquisition.ztrack; docs/ZTRACKING.md)")
    z.add_argument("--zstack", default="", metavar="STACK",
                   help="TIFF z-stack centred on the imaging plane: also estimate each frame's depth (z_um)")
    z.add_argument("--z-step-um", type=float, default=None,
                   help="plane step in um (default: the TIFF's ImageJ spacing)")
    z.add_argument("--z-every", type=int, default=1, metavar="N", help="estimate every Nth frame (1)")
    z.add_argument("--z-window", type=int, default=10, metavar="N", help="running mean of N registered frames (10)")
    z.add_argument("--z-warn-um", type=float, default=3.0, help="warn when |z| exceeds this (3 um)")
    z.add_argument("--pixel-size-um", type=float, default=None,
                   help="the movie's pixel size, checked against the stack's (when the stack says)")


DESCRIPTION = """\
Run the live acquisition code (registration + ROI/neuropil extraction) offline on a movie, as fast as
possible, with a progress bar. Writes OUT.npz with the shifts (yoff, xoff), correlation (corrXY), frame
flags, F and Fneu (ROIs x frames, as suite2p) and the reference; the last stdout line is JSON with
frames and frames_per_s. A given reference that looks motion-blurred (a plain mean of frames) is replaced,
after the first good frames, by their aligned average in its coordinates (--refine-reference; OUT.npz then
holds refImg_given and reference_switch_frame, the first frame registered against refImg).

  rig process movie.tif --rois suite2p/plane0 --out traces.npz
"""


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("process", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Process the movie; returns the exit code (2 for bad inputs, with the reason on stderr)."""
    import msgspec
    import numpy as np
    from tqdm import tqdm

    from acquisition.config import RegistrationConfig
    from acquisition.pipeline import FramePipeline, load_reference_image
    from acquisition.rois import RoiFileError, load_suite2p
    from acquisition.sources.base import EndOfStream
    from acquisition.sources.movie import MovieError
    from acquisition.sources.replay import ReplaySource

    try:
        reg_cfg = RegistrationConfig(enabled=not args.no_register, maxregshift=args.maxregshift,
                                     smooth_sigma=args.smooth_sigma, min_corr=args.min_corr,
                                     reference_frames=max(args.reference_frames, 2),
                                     refine_reference=args.refine_reference, refine_frames=args.refine_frames)
        roi_set = load_suite2p(args.rois)
        if not args.all_rois:
            roi_set = roi_set.cells_only()
        source = ReplaySource(args.movie, speed="fast", h5_key=args.h5_key, n_channels=args.n_channels,
                              channel=args.channel, n_planes=args.n_planes, plane=args.plane)
        if source.shape != (roi_set.Ly, roi_set.Lx):
            raise ValueError(f"{args.movie}: frames are {source.shape[0]}x{source.shape[1]} but the ROIs in "
                             f"{args.rois} are for {roi_set.Ly}x{roi_set.Lx}")
        reference = None
        if reg_cfg.enabled:
            if args.ref:
                reference = load_reference_image(args.ref)
            elif roi_set.ref_img is not None:
                reference = roi_set.ref_img
            else:
                reference = _reference_from_movie(source, reg_cfg)
                reg_cfg = msgspec.structs.replace(reg_cfg, refine_reference="never")  # already an aligned average
        pipeline = FramePipeline(roi_set, reference=reference, registration=reg_cfg)
        ztracker = _ztracker(args, reference if reference is not None else roi_set.mean_img)
    except (RoiFileError, MovieError, FileNotFoundError, ValueError, msgspec.ValidationError) as exc:
        print(f"rig process: {exc}", file=sys.stderr)
        return 2

    n_total = source.n_frames if not args.max_frames else min(args.max_frames, source.n_frames)
    n_rois = pipeline.n_rois
    F = np.full((n_rois, n_total), np.nan, np.float32)
    Fneu = np.full((n_rois, n_total), np.nan, np.float32)
    shifts = np.full((n_total, 2), np.nan, np.float32)
    corr = np.full(n_total, np.nan, np.float32)
    flags = np.zeros(n_total, np.int32)
    z_um = np.full(n_total, np.nan, np.float32)
    t_start = time.perf_counter()
    done = 0
    source.open()
    try:
        with tqdm(total=n_total, unit="frame", file=sys.stderr, disable=args.no_progress,
                  mininterval=0.5) as bar:
            while done < n_total:
                try:
                    frame = source.read(1.0)
                except EndOfStream:
                    break
                if frame is None:
                    continue
                res = pipeline.process(frame.data)
                F[:, done] = res.F
                Fneu[:, done] = res.Fneu
                shifts[done] = (res.dy, res.dx)
                corr[done] = res.corr
                flags[done] = res.flags | frame.flags
                if ztracker is not None:
                    z_um[done] = ztracker.update(frame.data, res.dy, res.dx)
                done += 1
                bar.update(1)
    finally:
        source.close()
        pipeline.close()
    elapsed = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, yoff=shifts[:done, 0], xoff=shifts[:done, 1], corrXY=corr[:done], flags=flags[:done],
             F=F[:, :done], Fneu=Fneu[:, :done], roi_index=np.asarray(roi_set.source_index),
             refImg=pipeline.reference if pipeline.reference is not None else np.zeros((0, 0), np.float32),
             Ly=roi_set.Ly, Lx=roi_set.Lx, **({"z_um": z_um[:done]} if ztracker is not None else {}),
             **_refinement_fields(pipeline))
    summary = {"frames": done, "frames_per_s": round(done / elapsed, 2) if elapsed > 0 else 0.0,
               "flagged_frames": int(np.count_nonzero(flags[:done])), "rois": n_rois, "out": str(out),
               "reference_switch_frame": pipeline.reference_switch_frame}
    if ztracker is not None:
        summary.update(_z_summary(ztracker, z_um[:done]))
    print(json.dumps(summary), flush=True)
    return 0


def _refinement_fields(pipeline) -> dict[str, Any]:  # noqa: ANN001 - FramePipeline, imported lazily
    """npz fields saying whether the given reference was refined (acquisition.reg_refine) and from which frame
    on the refined one (``refImg``) was used; frames before it were registered against ``refImg_given``."""
    import numpy as np

    result = pipeline.refinement
    if result is None:
        return {}
    fields = {"reference_blur_ratio": np.float32(result.blur_ratio),
              "reference_switch_frame": np.int64(-1 if pipeline.reference_switch_frame is None
                                                 else pipeline.reference_switch_frame)}
    if pipeline.reference_original is not None:
        fields["refImg_given"] = pipeline.reference_original
    return fields


def _ztracker(args: argparse.Namespace, reference: np.ndarray | None) -> ZTracker | None:
    """The z-tracker for ``--zstack`` (None without one); it checks the stack against the session reference."""
    if not args.zstack:
        return None
    from acquisition.ztrack import ZTracker, load_zstack

    if reference is None:
        raise ValueError("--zstack needs a reference image to check the stack against: give --ref, or ROIs with a "
                         "refImg/meanImg, or leave registration on")
    return ZTracker(load_zstack(args.zstack, args.z_step_um), reference, pixel_size_um=args.pixel_size_um,
                    every=args.z_every, window=args.z_window, warn_um=args.z_warn_um)


def _z_summary(tracker: ZTracker, z_um: np.ndarray) -> dict[str, Any]:
    """JSON fields for the depth estimates; a warning on stderr when the plane moved beyond the threshold."""
    import numpy as np

    ok = np.isfinite(z_um)
    worst = float(np.max(np.abs(z_um[ok]))) if ok.any() else float("nan")
    if tracker.warnings:
        print(f"rig process: WARNING: the focal plane moved more than {tracker.warn_um:g} um in "
              f"{tracker.warnings} estimate(s) (largest |z| {worst:.1f} um): F0 changes there may be z drift",
              file=sys.stderr)
    return {"z_estimated": int(ok.sum()), "z_ref_um": round(tracker.ref_z_um, 2),
            "z_max_abs_um": round(worst, 2) if ok.any() else None, "z_warnings": tracker.warnings}


def _reference_from_movie(source, reg_cfg):  # noqa: ANN001, ANN202 - types imported lazily
    """suite2p-style reference from up to ``reference_frames`` frames spread evenly over the movie."""
    import numpy as np

    from acquisition.registration import build_reference

    n = source.n_frames
    picks = np.unique(np.linspace(0, n - 1, min(reg_cfg.reference_frames, n)).astype(int))
    return build_reference(source.sample_frames(picks), maxregshift=reg_cfg.maxregshift,
                           smooth_sigma=reg_cfg.smooth_sigma, spatial_taper=reg_cfg.spatial_taper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rig process", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
