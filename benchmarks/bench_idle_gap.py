#!/usr/bin/env python3
"""What a pause between frames costs the next frame: ``FramePipeline.process`` (validation, registration,
extraction) per 512x512 frame with 500 ROIs, timed back to back and after sleeping as a frame period would.

    python benchmarks/bench_idle_gap.py [--frames 150] [--rounds 2] [--gaps 0,0.0003,0.003,0.033]

Why: in a session the loop sleeps ~31 ms of every 33 ms frame waiting for the scope; tight-loop benchmarks
(bench_acquisition.py) never do, so their caches stay warm. On our 2-vCPU VM a frame after a 33-ms sleep costs
about twice a frame processed back to back, which is most of the gap between the component figures and
`rig bench`'s stages (docs/PERFORMANCE.md). Run it on a rig PC to see whether its caches survive a frame period
(a dedicated machine with its power plan on "high performance" usually keeps them). Also times the pipeline
with the extraction computed beside registration (``ahead``) and without. Prints p50/p90 ms per gap and
setting; the last stdout line is JSON.
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


def timed(pipeline: FramePipeline, frames: np.ndarray, gap_s: float, n: int) -> list[float]:
    out = []
    for i in range(n):
        frame = frames[i % len(frames)]
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter_ns()
        pipeline.process(frame)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out[5:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=150, help="frames timed per gap, setting and round")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--gaps", default="0,0.0003,0.003,0.033", help="seconds slept before each frame, comma-separated")
    args = ap.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]
    movie, _, reference, stat = synthetic_movie(100, 512, 500, 0.05 * 512)[:4]
    frames = np.clip(movie, 0, 65535).astype(np.uint16)
    rois = RoiSet(stat=stat, iscell=np.ones((len(stat), 2)), Ly=512, Lx=512, ref_img=reference)
    pipelines = {}
    for name, ahead in (("ahead", True), ("no ahead", False)):
        pipeline = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(
            ahead=ahead, ahead_min_ms=0.0))
        pipeline.set_reference(reference, refine=False)
        pipeline.warm_up(np.uint16)
        pipelines[name] = pipeline
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for gap in gaps:
            for name, pipeline in pipelines.items():
                times.setdefault(f"{name}, gap {gap * 1e3:g} ms", []).extend(timed(pipeline, frames, gap, args.frames))
    result = {"load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    for key, values in times.items():
        p50, p90 = np.percentile(values, [50, 90])
        result[key] = {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3)}
        print(f"pipeline.process, {key:28s} p50 {p50:.3f} ms  p90 {p90:.3f} ms")
    for pipeline in pipelines.values():
        pipeline.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
