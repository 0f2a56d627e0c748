#!/usr/bin/env python3
"""The CLOOSE source's hand-off, in one process: bench's scope twin -> cloose_tcp -> FramePipeline, no bus.

    python benchmarks/bench_cloose_handoff.py [--size 512x512] [--rois 500] [--rate 30] [--frames 300]
    python benchmarks/bench_cloose_handoff.py --size 64x256 --rois 50 --rate 1000 --frames 5000

Frames are rendered first (rig.offline.scope_twin), then a separate sender process streams them at ``--rate``
as CLOOSE does (raw column-major uint16 over TCP) and this process runs the acquisition loop's core: read, then
``FramePipeline.process``. Reported, p50/p99 ms: frame ready -> in the reader's ring (what the reader did after
the last byte), ready -> in the loop thread (that plus the wake-up), the loop thread's CPU in ``read()`` and in
``process()``, ready -> registered; and process CPU per frame (reader thread included), frames dropped. The last
stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def main() -> None:
    from acquisition.config import ExtractionConfig, RegistrationConfig
    from acquisition.pipeline import FramePipeline
    from acquisition.rois import load_suite2p
    from acquisition.sources.cloose_tcp import ClooseTcpSource
    from rig.offline.scope_twin import TwinSender, free_port, render_twin_movie

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="512x512", help="HxW (default 512x512)")
    ap.add_argument("--rois", type=int, default=500)
    ap.add_argument("--rate", type=float, default=30.0, help="frames per second sent (default 30)")
    ap.add_argument("--frames", type=int, default=300, help="frames timed (after the reference is in place)")
    args = ap.parse_args()
    H, W = (int(v) for v in args.size.split("x"))
    sim = [f"acquisition.sim.height_px={H}", f"acquisition.sim.width_px={W}", f"acquisition.sim.n_cells={args.rois}"]
    if H < 128:  # as rig bench --mode fast
        sim += ["acquisition.sim.cell_radius_px=4.0", "acquisition.sim.max_lag_frames=50"]
    work = Path(tempfile.mkdtemp(prefix="bench-handoff-"))
    movie = render_twin_movie(sim, 1000 if H < 128 else 300, args.rate, work, progress=False)
    pipe = FramePipeline(load_suite2p(movie.rois), registration=RegistrationConfig(refine_reference="never"),
                         extraction=ExtractionConfig(min_neuropil_pixels=100 if H < 128 else 350))
    port = free_port()
    src = ClooseTcpSource("127.0.0.1", port, H, W, frame_rate_hz=args.rate)
    src.open()
    src.start_keeping()
    ring_lag: list[int] = []
    commit = src._ring.commit

    def timed_commit(number: int, t_ready_ns: int, flags: int) -> bool:
        ring_lag.append(time.perf_counter_ns() - t_ready_ns)  # rig.core.clock.now_ns is perf_counter_ns
        return commit(number, t_ready_ns, flags)

    src._ring.commit = timed_commit  # type: ignore[method-assign]
    twin = TwinSender("cloose", port, movie, args.rate)
    twin.start()
    t_read, t_proc, to_loop, to_reg, numbers = [], [], [], [], []
    try:
        for _ in range(int(args.rate)):  # one second of warm-up
            frame = src.read(1.0)
            if frame is not None:
                pipe.process(frame.data)
        cpu0, wall0 = time.process_time(), time.monotonic()
        while len(numbers) < args.frames:
            a = time.thread_time_ns()
            frame = src.read(0.02)
            b = time.thread_time_ns()
            if frame is None:
                continue
            to_loop.append(time.perf_counter_ns() - frame.t_ready_ns)
            res = pipe.process(frame.data)
            t_read.append(b - a)
            t_proc.append(time.thread_time_ns() - b)
            to_reg.append(res.t_registered - frame.t_ready_ns)
            numbers.append(frame.number)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        sent = twin.finish()
        src.close()
        shutil.rmtree(work)  # the rendered movie and its ROIs: hundreds of MB at 512x512

    def pct(values: list[int]) -> list[float]:
        return [round(float(v), 3) for v in np.percentile(np.array(values) / 1e6, [50, 99])]

    n = len(numbers)
    result = {"size": args.size, "rate_hz": args.rate, "frames": n, "frames_per_s": round(n / wall, 1),
              "dropped": int(numbers[-1] - numbers[0] + 1 - n), "process_cpu_ms_per_frame": round(cpu / n * 1e3, 3),
              "ready_to_ring_ms": pct(ring_lag[-n:]), "ready_to_loop_ms": pct(to_loop),
              "read_thread_cpu_ms": pct(t_read), "process_thread_cpu_ms": pct(t_proc),
              "ready_to_registered_ms": pct(to_reg), "twin": sent,
              "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    for key, value in result.items():
        print(f"{key:26s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
