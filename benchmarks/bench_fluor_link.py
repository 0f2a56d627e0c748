#!/usr/bin/env python3
"""Latency of one FluorFrame (500 ROIs) from one process to another at 30 Hz: the bus against the direct link.

    python benchmarks/bench_fluor_link.py [--frames 300] [--rate 30] [--rois 500] [--rounds 2]

A spawned receiver process waits as the decoder waits (``poll`` with a 10-ms timeout, then ``recv``); this
process sends a FluorFrame stamped with ``time.perf_counter_ns()`` every frame period, through
:class:`rig.core.bus.Publisher` -> :class:`~rig.core.bus.Subscriber` (ZeroMQ PUB/SUB over loopback tcp, what
``[bus] fluor_link = "bus"`` uses) or :class:`rig.core.direct_link.DirectLinkSender` ->
:class:`~rig.core.direct_link.DirectLinkReceiver` (``fluor_link = "direct"``). Rounds alternate the two. Prints
p50 / p90 / p99 / max of send -> received, in ms; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from rig.core.bus import Publisher, Subscriber  # noqa: E402
from rig.core.direct_link import DirectLinkReceiver, DirectLinkSender  # noqa: E402
from rig.core.schema import FluorFrame  # noqa: E402


def _receive(kind: str, where: str, n: int, results: mp.Queue) -> None:
    """The receiver process: poll like the decoder, stamp each frame on arrival."""
    ctx = zmq.Context()
    link = (DirectLinkReceiver(int(where)) if kind == "direct"
            else Subscriber(ctx, [where], [FluorFrame.topic]))
    results.put("ready")
    latencies = []
    deadline = time.monotonic() + 60
    while len(latencies) < n and time.monotonic() < deadline:
        if not link.poll(10):
            continue
        while (msg := link.recv(0)) is not None:
            latencies.append(time.perf_counter_ns() - msg.t_sent)
    results.put(latencies)
    link.close()
    ctx.term()


def _round(kind: str, frames: int, rate: float, rois: int) -> np.ndarray:
    spawn = mp.get_context("spawn")
    results: mp.Queue = spawn.Queue()
    ctx = zmq.Context()
    if kind == "direct":
        sender = DirectLinkSender()
        where = str(sender.port)
    else:
        pub = Publisher(ctx, "tcp://127.0.0.1:*", sender="acquisition")
        where = pub._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    proc = spawn.Process(target=_receive, args=(kind, where, frames, results))
    proc.start()
    assert results.get(timeout=60) == "ready"
    rng = np.random.default_rng(0)
    F, Fneu = rng.random(rois, dtype=np.float32), rng.random(rois, dtype=np.float32)
    period = 1.0 / rate
    warm = 20  # the subscription / connection settles; not counted
    next_t = time.perf_counter()
    for i in range(frames + warm):
        msg = FluorFrame(frame=i, t_ready=0, t_registered=0, t_extracted=0, dy=0.0, dx=0.0, corr=1.0, flags=0,
                         F=F, Fneu=Fneu, t_sent=time.perf_counter_ns())
        if kind == "direct":
            msg.seq, msg.sender = i + 1, "acquisition"
            sender.send(msg)
        else:
            pub.send(msg)
        next_t += period
        time.sleep(max(0.0, next_t - time.perf_counter()))
    latencies = np.asarray(results.get(timeout=60), dtype=np.float64) / 1e6
    proc.join(timeout=10)
    if kind == "direct":
        sender.close()
    else:
        pub.close()
    ctx.term()
    return latencies[warm:] if latencies.size > warm else latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--rois", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    out: dict[str, list[dict[str, float]]] = {"bus": [], "direct": []}
    for _ in range(args.rounds):
        for kind in ("bus", "direct"):
            lat = _round(kind, args.frames, args.rate, args.rois)
            p50, p90, p99, pmax = (float(np.percentile(lat, q)) for q in (50, 90, 99, 100))
            out[kind].append({"p50_ms": round(p50, 3), "p90_ms": round(p90, 3), "p99_ms": round(p99, 3),
                              "max_ms": round(pmax, 3), "n": int(lat.size)})
            print(f"{kind:7s} p50 {p50:.3f}  p90 {p90:.3f}  p99 {p99:.3f}  max {pmax:.3f} ms  (n={lat.size})",
                  file=sys.stderr)
    out["load_average_1min"] = [round(os.getloadavg()[0], 2)] if hasattr(os, "getloadavg") else []  # type: ignore[assignment]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
