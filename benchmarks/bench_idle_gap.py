#!/usr/bin/env python3
"""What a pause between frames costs the next frame: ``FramePipeline.process`` (validation, registration,
extraction) per 512x512 frame with 500 ROIs, timed back to back and after sleeping as a frame period would.

    python benchmarks/bench_idle_gap.py [--frames 150] [--rounds 2] [--gaps 0,0.0003,0.003,0.033]
           [--registration-only] [--wait sleep,spin] [--prewarm-ms 0,2]

Why: in a session the loop sleeps ~31 ms of every 33 ms frame waiting for the scope; tight-loop benchmarks
(bench_acquisition.py) never do, so their caches stay warm. On our 2-vCPU VM a frame after a 33-ms sleep costs
about twice a frame processed back to back, which is most of the gap between the component figures and
`rig bench`'s stages (docs/PERFORMANCE.md). Run it on a rig PC to see whether its caches survive a frame period
(a dedicated machine with its power plan on "high performance" usually keeps them). Also times the pipeline
with the extraction computed beside registration (``ahead = "always"``) and without; ``--registration-only``
times ``RigidRegistrar.register`` alone. ``--wait spin`` passes each gap in a busy loop instead of sleeping (the
loop gives up the GIL with ``time.sleep(0)``, as an acquisition loop would have to): does this machine lose the
caches while the CPU halts, or while any time passes? ``--prewarm-ms P`` registers the previous frame again P ms
before each frame (the pipeline: ``FramePipeline.prewarm``), as the acquisition process does
(``[acquisition.registration] prewarm_ms``). Several values of each are measured interleaved. Prints p50/p90 ms
per gap and setting; the last stdout line is JSON.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_acquisition import synthetic_movie  # noqa: E402

from acquisition.config import ExtractionConfig, RegistrationConfig  # noqa: E402
from acquisition.pipeline import FramePipeline  # noqa: E402
from acquisition.rois import RoiSet  # noqa: E402


def spin(seconds: float) -> None:
    """Pass ``seconds`` without letting the CPU idle; ``time.sleep(0)`` gives other threads the GIL meanwhile."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        time.sleep(0)


def timed(pipeline: FramePipeline, frames: np.ndarray, gap_s: float, n: int, registration_only: bool,
          wait: str = "sleep", prewarm_s: float = 0.0) -> list[float]:
    out = []
    registrar = pipeline.registrar
    work = registrar.register if registration_only and registrar is not None else pipeline.process
    pause = spin if wait == "spin" else time.sleep
    for i in range(n):
        frame = frames[i % len(frames)]
        if gap_s and 0 < prewarm_s < gap_s:
            pause(gap_s - prewarm_s)
            if registration_only and registrar is not None:
                registrar.prewarm(frames[(i - 1) % len(frames)])
            else:
                pipeline.prewarm()
            pause(prewarm_s)
        elif gap_s:
            pause(gap_s)
        t0 = time.perf_counter_ns()
        work(frame)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out[5:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=150, help="frames timed per gap, setting and round")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--registration-only", action="store_true", help="time RigidRegistrar.register alone")
    ap.add_argument("--movie-frames", type=int, default=200, help="frames rendered (played in a loop)")
    ap.add_argument("--gaps", default="0,0.0003,0.003,0.033", help="seconds slept before each frame, comma-separated")
    ap.add_argument("--wait", default="sleep",
                    help="how each gap passes, comma-separated: sleep (the CPU may idle) and/or spin (busy)")
    ap.add_argument("--prewarm-ms", default="0",
                    help="ms before each frame to pre-warm with the previous frame (0: none), comma-separated")
    args = ap.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]
    waits = args.wait.split(",")
    if not set(waits) <= {"sleep", "spin"}:
        ap.error(f"--wait: sleep and/or spin, not {args.wait!r}")
    prewarms = [float(p) / 1e3 for p in args.prewarm_ms.split(",")]
    # back to back (gap 0) there is nothing to wait through and no time to pre-warm in: measured once
    conditions = [(gap, wait, prewarm) for gap in gaps for wait in (waits if gap else waits[:1])
                  for prewarm in (prewarms if gap else [0.0]) if prewarm < gap or not prewarm]
    # motion as the simulator's at 30 Hz (an OU walk of 0.6 px sd, 0.5 s: ~0.22 px a frame), not the 0.7 px
    # steps bench_acquisition.py uses to exercise registration
    movie, _, reference, stat = synthetic_movie(args.movie_frames, 512, 500, 0.05 * 512, step_px=0.22)[:4]
    frames = np.clip(movie, 0, 65535).astype(np.uint16)
    rois = RoiSet(stat=stat, iscell=np.ones((len(stat), 2)), Ly=512, Lx=512, ref_img=reference)
    pipelines = {}
    settings = (("registration", "never"),) if args.registration_only else (("ahead", "always"), ("no ahead", "never"))
    for name, ahead in settings:
        pipeline = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(ahead=ahead))
        pipeline.set_reference(reference, refine=False)
        pipeline.warm_up(np.uint16)
        pipelines[name] = pipeline
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for gap, wait, prewarm in conditions:
            for name, pipeline in pipelines.items():
                got = timed(pipeline, frames, gap, args.frames, args.registration_only, wait, prewarm)
                label = f"{name}, gap {gap * 1e3:g} ms"
                if gap and (len(waits) > 1 or wait != "sleep"):
                    label += f", {wait}"
                if prewarm:
                    label += f", pre-warm {prewarm * 1e3:g} ms before"
                times.setdefault(label, []).extend(got)
    result = {"load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    for key, values in times.items():
        p50, p90 = np.percentile(values, [50, 90])
        result[key] = {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3)}
        what = "register" if args.registration_only else "pipeline.process"
        print(f"{what}, {key:56s} p50 {p50:.3f} ms  p90 {p90:.3f} ms")
    for pipeline in pipelines.values():
        pipeline.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
