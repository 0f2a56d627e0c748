"""Reward path latency against the emulated board: write -> ack round trip, and how late the valve closes.

The emulator runs in its own process (as in a session) and the host side is the real stack:
RewardController -> ValveLink -> pyserial -> pty or socket:// -> FirmwareEmulator. Each reward is
a 1 ms pulse; the next one is sent after the previous completes.

    python benchmarks/bench_reward.py                 # both transports, 500 rewards each
    python benchmarks/bench_reward.py --n 2000 --transport socket

Prints, per transport: write->ack (t_ack - t_written: host write() returned -> ack line read),
board close lateness (board-measured open time - requested), and write->done.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward.calibration import ValveCalibration  # noqa: E402
from reward.config import RewardConfig  # noqa: E402
from reward.controller import DELIVERED, RewardController, RewardOutcome  # noqa: E402
from reward.emulator import run_emulator  # noqa: E402
from reward.link import ValveLink  # noqa: E402
from rig.core.clock import now_ns  # noqa: E402


def _serve(transport: str, urls: mp.Queue, stop: mp.Event) -> None:
    cfg = RewardConfig(emulator_lick_rate_hz=0.0, emulator_reward_licks=False)
    run_emulator(transport, urls.put, stop, cfg=cfg)


def _stats(values_ms: np.ndarray) -> str:
    p50, p99 = np.percentile(values_ms, [50, 99])
    return f"p50 {p50:7.3f}  p99 {p99:7.3f}  max {values_ms.max():7.3f} ms"


def bench(transport: str, n: int) -> None:
    ctx = mp.get_context("spawn")
    urls: mp.Queue = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(transport, urls, stop), daemon=True)
    proc.start()
    try:
        url = urls.get(timeout=20)
        cfg = RewardConfig(port=url, min_interval_s=0.0, max_volume_ul=1e6, ack_timeout_s=0.5)
        # 1 uL = 1 ms: every reward is a 1 ms pulse.
        cal = ValveCalibration(valve="bench", date="2025-01-01T00:00:00", intercept_ms=0.0, slope_ms_per_ul=1.0)
        controller = RewardController(cfg, cal, ValveLink.from_config(cfg, url))
        controller.start()
        deadline = now_ns() + int(10e9)
        while not controller.link.connected:
            if now_ns() > deadline:
                raise RuntimeError(f"emulator at {url} did not answer: {controller.link.last_error}")
            controller.poll(0.05)
        results: list[RewardOutcome] = []
        for i in range(n):
            controller.request(f"b{i}", 1.0, "bench")
            got = None
            while got is None:
                for event in controller.poll(1.0):
                    if isinstance(event, RewardOutcome):
                        got = event
            results.append(got)
        rtt_hb = controller.link.last_rtt_ns
        controller.close()
    finally:
        stop.set()
        proc.join(5)
    ok = [r for r in results if r.status == DELIVERED and r.t_ack]
    ack = np.array([(r.t_ack - r.t_written) / 1e6 for r in ok])
    late = np.array([(r.open_us - r.open_ms * 1000) / 1e3 for r in ok])
    done = np.array([(r.t_done - r.t_written) / 1e6 for r in ok])
    print(f"{transport:6s} {url}  delivered {len(ok)}/{n}, retries {sum(r.attempts - 1 for r in results)}")
    print(f"  write->ack          {_stats(ack)}")
    print(f"  close lateness      {_stats(late)}   (board-measured open - requested 1 ms)")
    print(f"  write->done         {_stats(done)}")
    if rtt_hb >= 0:
        print(f"  last heartbeat RTT  {rtt_hb / 1e6:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--transport", choices=["pty", "socket", "both"], default="both")
    args = parser.parse_args()
    transports = ["pty", "socket"] if args.transport == "both" else [args.transport]
    if os.name != "posix" and "pty" in transports:
        transports.remove("pty")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, n={args.n}")
    for transport in transports:
        bench(transport, args.n)


if __name__ == "__main__":
    main()
