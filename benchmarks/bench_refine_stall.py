#!/usr/bin/env python3
"""Does refining a given reference in the background (acquisition.reg_refine) stall the live frame loop?

    python benchmarks/bench_refine_stall.py [--size 512] [--rois 500] [--reps 2]

Renders a simulated movie (suite2p layout, its refImg as the given reference), then:

* GIL: a thread that sleeps 1 ms in a loop runs beside a background refinement of 60 frames; its longest
  gap is the longest the refinement kept the interpreter (the switch interval is 5 ms).
* the loop: ``FramePipeline.process`` paced at 30 Hz, ``background_reference=True`` as live, with
  ``refine_reference`` "never", "always" and "always" with the thread lowered (what
  ``rig.background_priority = "low"`` does live); per-frame process() time in ms while the refinement runs
  (frames 60 to the switch) and after it.

Timings depend on what else the machine runs: compare the rows of one run. The last stdout line is JSON.
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

from acquisition.config import RegistrationConfig  # noqa: E402
from acquisition.pipeline import FramePipeline, _Refinement  # noqa: E402
from acquisition.rois import RoiSet, load_suite2p  # noqa: E402
from acquisition.sim.export import export_movie  # noqa: E402
from rig.app.config import apply_overrides, config_from_dict  # noqa: E402
from rig.core.realtime import lower_this_thread  # noqa: E402


def render(size: int, rois: int, frames: int, out: Path) -> tuple[RoiSet, np.ndarray]:
    cfg = config_from_dict(apply_overrides({}, [f"acquisition.sim.height_px={size}", f"acquisition.sim.width_px={size}",
                                                f"acquisition.sim.n_cells={rois}"]), "bench")
    export_movie(cfg.acquisition.sim, out, frames, 30.0, progress=False)
    plane = out / "suite2p" / "plane0"
    return load_suite2p(plane), np.fromfile(plane / "data.bin", np.int16).reshape(frames, size, size)


def gil_gaps(roi_set: RoiSet, frames: np.ndarray) -> dict[str, float]:
    """Gaps of a 1-ms ticker while 60 frames are refined in a background thread."""
    pipe = FramePipeline(roi_set, registration=RegistrationConfig(refine_reference="never"))
    pipe.process(frames[0])
    t0 = time.perf_counter()
    job = _Refinement(pipe.reference, list(frames[:60]), RegistrationConfig(refine_reference="always"),
                      pipe.shape, background=True)
    gaps, t = [], time.perf_counter()
    while not job.done:
        time.sleep(0.001)
        now = time.perf_counter()
        gaps.append((now - t) * 1e3)
        t = now
    if job.error is not None:
        raise job.error
    g = np.array(gaps)
    return {"refine_s": round(time.perf_counter() - t0, 3), "gap_p50_ms": round(float(np.median(g)), 2),
            "gap_p99_ms": round(float(np.percentile(g, 99)), 2), "gap_max_ms": round(float(g.max()), 2)}


def paced_loop(roi_set: RoiSet, frames: np.ndarray, mode: str, lower: bool, n: int = 200) -> dict[str, object]:
    """process() time per frame at 30 Hz, while the refinement runs and after."""
    pipe = FramePipeline(roi_set, registration=RegistrationConfig(refine_reference=mode), background_reference=True,
                         on_thread_start=(lambda: lower_this_thread([])) if lower else None)
    took, t_next = [], time.perf_counter()
    for i in range(n):
        t_next += 1 / 30
        while time.perf_counter() < t_next:
            time.sleep(0.0005)
        t0 = time.perf_counter()
        pipe.process(frames[i % len(frames)])
        took.append((time.perf_counter() - t0) * 1e3)
        pipe.pop_reference_events()
    ms = np.array(took)
    end = pipe.reference_switch_frame or 90
    during, after = ms[60:end + 1], ms[end + 5:]
    return {"mode": mode + (" lowered" if lower else ""), "switch_frame": pipe.reference_switch_frame,
            "during_p50_ms": round(float(np.median(during)), 2), "during_max_ms": round(float(during.max()), 2),
            "after_p50_ms": round(float(np.median(after)), 2),
            "after_p99_ms": round(float(np.percentile(after, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rois", type=int, default=500)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-refine-") as tmp:
        roi_set, frames = render(args.size, args.rois, 120, Path(tmp))
    result: dict[str, object] = {"size": args.size, "rois": args.rois,
                                 "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    result["gil"] = [gil_gaps(roi_set, frames) for _ in range(args.reps)]
    for row in result["gil"]:  # type: ignore[union-attr]
        print(f"GIL: refinement {row['refine_s']} s, ticker gap p50/p99/max {row['gap_p50_ms']}/{row['gap_p99_ms']}/"
              f"{row['gap_max_ms']} ms")
    loops = []
    for _ in range(args.reps):
        for mode, lower in (("never", False), ("always", False), ("always", True)):
            row = paced_loop(roi_set, frames, mode, lower)
            loops.append(row)
            print(f"loop {row['mode']:16s} switch {row['switch_frame']}: during p50/max {row['during_p50_ms']}/"
                  f"{row['during_max_ms']} ms, after p50/p99 {row['after_p50_ms']}/{row['after_p99_ms']} ms")
    result["loop"] = loops
    print(json.dumps(result))


if __name__ == "__main__":
    main()
