#!/usr/bin/env python3
"""Thread CPU of the acquisition process's loop around the frame pipeline, per piece, at the 1 kHz settings.

    python benchmarks/bench_loop_overhead.py [--frames 6000] [--warmup 1000] [--repo PATH]

The real :class:`acquisition.process.AcquisitionProcess` runs in this process, configured as ``rig bench --mode
fast`` configures it (64x256, 50 ROIs, a reference built from the first 200 frames), on frames rendered by the
bench's scope twin and handed over by an in-memory source that never waits: so every number is CPU the loop
thread spends, not time it waits for a frame. The loop is :meth:`RigProcess.run`'s running loop (heartbeat,
control poll, ``step``). Two passes over the same frames:

* ``plain``: only the loop's total thread CPU per frame (time.thread_time_ns around the whole pass), and
  ``pipeline.process`` alone on the same frames: the difference is the loop's overhead around the pipeline;
* ``pieces``: every piece wrapped in its own thread-CPU timer (the timers add ~1 us per piece; compare pieces
  with each other, totals with the plain pass).

``--bus`` measures instead one FluorFrame (50 ROIs) through :class:`rig.core.bus.Publisher` and
:class:`~rig.core.bus.Subscriber` on loopback: thread CPU of ``send`` and of ``recv`` (a message waiting).

``--repo`` runs another checkout's code (e.g. ``git archive HEAD | tar -x -C /tmp/base``) for a before/after
on the same frames. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=6000, help="frames measured per pass (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1000, help="frames run first (reference build, JIT) (default 1000)")
    p.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent), help="checkout whose code runs")
    p.add_argument("--bus", action="store_true", help="measure Publisher.send / Subscriber.recv instead")
    p.add_argument("--no-subscriber", action="store_true",
                   help="publish to nobody (default: a SUB of every topic, never read, as the decoder and console)")
    p.add_argument("--workdir", default="", help="where the twin's frames are rendered (kept; default: a temp dir)")
    return p.parse_args()


ARGS = _parse()
sys.path.insert(0, ARGS.repo)

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402

import acquisition.process as acq_process  # noqa: E402
from acquisition.sources.base import Frame, FrameSource  # noqa: E402
from rig.app.config import CONFIG_LOADER, apply_overrides, config_from_dict  # noqa: E402
from rig.core.bus import free_tcp_port  # noqa: E402
from rig.core.clock import now_ns  # noqa: E402
from rig.core.process import ProcessSpec  # noqa: E402
from rig.offline.scope_twin import render_twin_movie  # noqa: E402

SIM = ["acquisition.sim.height_px=64", "acquisition.sim.width_px=256", "acquisition.sim.n_cells=50",
       "acquisition.sim.cell_radius_px=4.0", "acquisition.sim.max_lag_frames=50"]


class MemorySource(FrameSource):
    """The twin's frames, looped, numbered on; a frame is always ready (no waiting is measured)."""

    def __init__(self, frames: np.ndarray, rate: float) -> None:
        super().__init__()
        self._frames = frames
        self._shape, self._rate = (int(frames.shape[1]), int(frames.shape[2])), rate
        self.number = 0

    def open(self) -> None: ...

    def close(self) -> None: ...

    def link_state(self) -> str:
        return "ok"

    def stats(self) -> dict[str, float]:
        return {"frames": float(self.number), "bad_frames": 0.0}

    def read(self, timeout_s: float) -> Frame | None:
        n = self.number
        self.number = n + 1
        return Frame(self._frames[n % len(self._frames)], n, now_ns())


class Pieces:
    """Thread CPU per named piece: wraps bound methods / module functions in place."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        inner: Callable[..., Any] = getattr(owner, attr)
        ns, calls, clock = self.ns, self.calls, time.thread_time_ns
        ns[name], calls[name] = 0, 0

        def timed(*a: Any, **k: Any) -> Any:
            t0 = clock()
            try:
                return inner(*a, **k)
            finally:
                ns[name] += clock() - t0
                calls[name] += 1

        setattr(owner, attr, timed)


def build(workdir: Path, frames: np.ndarray, rois: Path) -> acq_process.AcquisitionProcess:
    raw = apply_overrides({}, [*SIM, "acquisition.frame_rate_hz=1000", "acquisition.registration.reference_frames=200",
                               "acquisition.extraction.min_neuropil_pixels=100", "decoder.f0_window_s=5",
                               "session.save_frames=false", "acquisition.source=zmq_stream",
                               "acquisition.zmq_stream.endpoint=\"tcp://127.0.0.1:1\"",
                               f"acquisition.rois.suite2p_dir={json.dumps(str(rois))}"])
    cfg = config_from_dict(raw, "bench-loop")
    session = workdir / f"session-{os.getpid()}-{time.time_ns()}"
    session.mkdir(parents=True)
    endpoints = {name: f"tcp://127.0.0.1:{free_tcp_port()}" for name in ("acquisition", "supervisor")}
    spec = ProcessSpec(name="acquisition", target="acquisition.process:AcquisitionProcess",
                       config=msgspec.to_builtins(cfg), config_file="bench-loop", config_loader=CONFIG_LOADER,
                       endpoints=endpoints, session_dir=str(session), critical=True, watch_parent=False)
    source = MemorySource(frames, 1000.0)
    acq_process.make_source = lambda *a, **k: source  # type: ignore[assignment]
    return acq_process.AcquisitionProcess(spec)


def running_loop(proc: Any, n: int) -> None:
    """RigProcess.run's running loop for ``n`` steps: this checkout's ``_run_steps`` when it has one (stopped
    after ``n`` steps), else the loop it had before (heartbeat, control poll, step). Both count steps alike."""
    inner = proc.step
    count = [0]

    def counted() -> None:
        inner()
        count[0] += 1
        if count[0] >= n:
            proc._stop_reason = "bench"

    if hasattr(proc, "_run_steps"):
        proc.step = counted
        try:
            proc._run_steps()
        finally:
            proc.step = inner
            proc._stop_reason = ""
        return
    while count[0] < n:
        proc._heartbeat()
        proc._service_control(0)
        counted()
    proc._stop_reason = ""


def bench_bus(n: int) -> None:
    """Thread CPU of Publisher.send and Subscriber.recv for one 50-ROI FluorFrame, one message at a time."""
    from rig.core.bus import Publisher, Subscriber  # noqa: PLC0415
    from rig.core.schema import FluorFrame  # noqa: PLC0415

    ctx = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pub, sub = Publisher(ctx, endpoint, "acquisition"), Subscriber(ctx, [endpoint], [FluorFrame.topic])
    F = np.arange(50, dtype=np.float32)
    send_ns = recv_ns = 0
    try:
        for i in range(-200, n):  # the first 200: the subscription joins, caches warm
            msg = FluorFrame(frame=i, t_ready=1, t_registered=2, t_extracted=3, dy=0.0, dx=0.0, corr=1.0, flags=0,
                             F=F, Fneu=F, t_sent=4)
            t0 = time.thread_time_ns()
            pub.send(msg)
            t1 = time.thread_time_ns()
            if not sub.poll(1000):
                if i < 0:
                    continue
                raise RuntimeError(f"frame {i} never arrived")
            t2 = time.thread_time_ns()
            got = sub.recv(0)
            t3 = time.thread_time_ns()
            assert got is not None and got.frame == i
            if i >= 0:
                send_ns += t1 - t0
                recv_ns += t3 - t2
    finally:
        sub.close()
        pub.close()
        ctx.term()
    report = {"repo": ARGS.repo, "messages": n, "send_us": round(send_ns / n / 1e3, 2),
              "recv_us": round(recv_ns / n / 1e3, 2)}
    print(f"Publisher.send {report['send_us']:.2f} us, Subscriber.recv {report['recv_us']:.2f} us (thread CPU)")
    print(json.dumps(report))


def main() -> None:
    if ARGS.bus:
        bench_bus(ARGS.frames)
        return
    workdir = Path(ARGS.workdir or tempfile.mkdtemp(prefix="bench-loop-"))
    cached = workdir / "twin" / "frames.npy"
    if not cached.exists():
        render_twin_movie(SIM, 2000, 1000.0, workdir, progress=False)
    frames = np.load(cached)
    proc = build(workdir, frames, workdir / "twin" / "suite2p" / "plane0")
    proc.configure()
    listener = None
    if not ARGS.no_subscriber:  # its own context: its I/O thread, not this one, takes the messages in
        listener_ctx = zmq.Context()
        listener = listener_ctx.socket(zmq.SUB)
        listener.setsockopt(zmq.RCVHWM, 0)
        listener.setsockopt(zmq.SUBSCRIBE, b"")
        listener.connect(proc.spec.endpoints["acquisition"])
        time.sleep(0.3)  # the subscription reaches the PUB
    proc._tune_for_realtime()
    proc._started = True
    proc._set_state("running")
    proc.on_start()
    try:
        running_loop(proc, ARGS.warmup)
        assert proc.pipeline.reference is not None, "no reference after the warm-up: raise --warmup"
        # plain: the loop alone, then the pipeline alone on the same frames
        gc.collect()
        t0 = time.thread_time_ns()
        running_loop(proc, ARGS.frames)
        loop_ns = (time.thread_time_ns() - t0) / ARGS.frames
        t0 = time.thread_time_ns()
        for i in range(ARGS.frames):
            proc.pipeline.process(frames[i % len(frames)])
        pipe_ns = (time.thread_time_ns() - t0) / ARGS.frames
        # pieces
        pieces = Pieces()
        for owner, attr, name in ((proc, "_heartbeat", "heartbeat"), (proc, "_service_control", "control poll"),
                                  (proc, "step", "step (all)"), (proc.source, "read", "source.read"),
                                  (proc.source, "pop_warnings", "source.pop_warnings"),
                                  (proc.pipeline, "process", "pipeline.process"),
                                  (proc.pipeline, "pop_reference_events", "pop_reference_events"),
                                  (proc, "publish", "publish (FluorFrame, Preview, AcqStatus)"),
                                  (proc.pub._codec, "encode", "  of which codec.encode"),
                                  (proc.records, "next_row", "records.next_row"),
                                  (proc.records, "commit", "records.commit"),
                                  (proc._bad_run, "observe", "bad-run watch"),
                                  (acq_process, "keep_frame", "keep_frame (movie, count, preview due)"),
                                  (proc, "_maybe_status", "status")):
            if hasattr(owner, attr):
                pieces.wrap(owner, attr, name)
        gc.collect()
        t0 = time.thread_time_ns()
        running_loop(proc, ARGS.frames)
        pieces_loop_ns = (time.thread_time_ns() - t0) / ARGS.frames
        n = ARGS.frames
        inner = sum(v for k, v in pieces.ns.items()
                    if k not in ("step (all)", "heartbeat", "control poll") and not k.startswith("  of which"))
        report = {
            "repo": ARGS.repo, "frames": n, "subscriber": listener is not None,
            "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "plain_us_per_frame": {"loop": round(loop_ns / 1e3, 1), "pipeline.process alone": round(pipe_ns / 1e3, 1),
                                   "loop - pipeline": round((loop_ns - pipe_ns) / 1e3, 1)},
            "pieces_us_per_frame": {k: round(v / n / 1e3, 2) for k, v in pieces.ns.items()},
            "pieces_calls_per_frame": {k: round(v / n, 3) for k, v in pieces.calls.items()},
            "step other (rows, counters, lookups)_us": round((pieces.ns["step (all)"] - inner) / n / 1e3, 2),
            "pieces_loop_us_per_frame": round(pieces_loop_ns / 1e3, 1),
        }
        for k, v in report["plain_us_per_frame"].items():
            print(f"{k:45s} {v:8.1f} us/frame")
        print("pieces (timed one by one):")
        for k, v in report["pieces_us_per_frame"].items():
            print(f"  {k:43s} {v:8.2f} us/frame  ({report['pieces_calls_per_frame'][k]:.3f} calls/frame)")
        other = report["step other (rows, counters, lookups)_us"]
        print(f"  {'step other (rows, counters, lookups)':43s} {other:8.2f}")
        print(json.dumps(report))
    finally:
        proc.on_stop()
        proc._close()
        if listener is not None:
            listener.close(linger=0)
            listener_ctx.term()


if __name__ == "__main__":
    main()
