"""Reward path latency against the emulated board: write -> ack round trip, and how late the valve closes.

The emulator runs in its own process (as in a session) and the host side is the real stack:
RewardController -> ValveLink -> pyserial -> pty or socket:// -> FirmwareEmulator. Each reward is
a 1 ms pulse; the next one is sent after the previous completes.

    python benchmarks/bench_reward.py                 # both transports, 500 rewards each
    python benchmarks/bench_reward.py --n 2000 --transport socket
    python benchmarks/bench_reward.py --windows-approx --n 300   # Windows approximated on Linux

Prints, per transport: write->ack (t_ack - t_written: host write() returned -> ack line read),
board close lateness (board-measured open time - requested; 0 since the emulator runs the firmware's
timers at their due board time, as the board's loop() does), and write->done (which shows how
promptly the emulator woke to close the valve and send DONE).

``--windows-approx`` runs the reward process's own wait loop (a zmq poller on the request socket and
``ValveLink.fileno()``, 5 ms blocks with a descriptor, 1 ms without) over a ``socket://`` port that
behaves like a Windows COM port (no ``fileno()``), with every timed wait of the host and of the
emulator ending on the next 15.625 ms tick (Windows' default timer), and requests for 50 ms pulses
arriving at random moments from another thread, as from the decoder. See
``reward.transports.WindowsLikeSocketSerial`` and ``windows_tick_select``. It prints the board ACK
latency (host write() returned -> ACK line read), the pulse overrun (board-measured open time -
requested), how late the DONE line reaches the host (write -> DONE read - requested), the port's
reconfigurations after open, and the CPU both sides used. Results: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
import select
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward.calibration import ValveCalibration  # noqa: E402
from reward.config import RewardConfig  # noqa: E402
from reward.controller import RewardController  # noqa: E402
from reward.emulator import run_emulator  # noqa: E402
from reward.link import ValveLink  # noqa: E402
from reward.outcome import DELIVERED, RewardOutcome  # noqa: E402
from reward.protocol import DUTY_WINDOW_MS  # noqa: E402
from reward.transports import (  # noqa: E402
    WindowsLikeSocketSerial,
    windows_like_serial_for_url,
    windows_tick_select,
    windows_tick_sleep,
    windows_tick_timeout,
)
from rig.core.clock import now_ns  # noqa: E402


def _serve(transport: str, urls: mp.Queue, stop: mp.Event, windows_approx: bool = False) -> None:
    cfg = RewardConfig(emulator_lick_rate_hz=0.0, emulator_reward_licks=False)
    # --windows-approx keeps the valve open ~70 % of the time (50 ms pulses, 2-40 ms apart), far above the
    # firmware's duty-cycle limit (2000 ms open per 10 s, 20 %), which refuses most pulses once the first ~40
    # have used it up. This benchmark measures latency, not that limit (tests/test_reward_link.py covers it), so
    # its emulator allows 100 % open time, which no real board would. The plain benchmark keeps the firmware's limit.
    duty = {"duty_max_ms": DUTY_WINDOW_MS, "duty_window_ms": DUTY_WINDOW_MS} if windows_approx else {}
    run_emulator(transport, urls.put, stop, cfg=cfg, select_fn=windows_tick_select if windows_approx else select.select,
                 **duty)
    urls.put(time.process_time())  # the emulator's CPU time: what precise pulse timing costs


def _stats(values_ms: np.ndarray) -> str:
    p50, p99 = np.percentile(values_ms, [50, 99])
    return f"p50 {p50:7.3f}  p99 {p99:7.3f}  max {values_ms.max():7.3f} ms"


def _percentiles(values_ms: np.ndarray) -> str:
    p50, p90, p99 = np.percentile(values_ms, [50, 90, 99])
    return f"p50 {p50:7.3f}  p90 {p90:7.3f}  p99 {p99:7.3f}  max {values_ms.max():7.3f} ms"


def _start_emulator(transport: str, windows_approx: bool = False) -> tuple[mp.Process, mp.Queue, mp.Event, str]:
    ctx = mp.get_context("spawn")
    urls: mp.Queue = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(transport, urls, stop, windows_approx), daemon=True)
    proc.start()
    return proc, urls, stop, urls.get(timeout=20)


def _stop_emulator(proc: mp.Process, urls: mp.Queue, stop: mp.Event) -> float:
    """Stop the emulator process; its CPU seconds (NaN if it did not say)."""
    stop.set()
    try:
        cpu = float(urls.get(timeout=10))
    except Exception:  # noqa: BLE001 - only a statistic
        cpu = math.nan
    proc.join(5)
    return cpu


def _connect(controller: RewardController, url: str) -> None:
    controller.start()
    deadline = now_ns() + int(10e9)
    while not controller.link.connected:
        if now_ns() > deadline:
            raise RuntimeError(f"emulator at {url} did not answer: {controller.link.last_error}")
        controller.poll(0.05)


def bench(transport: str, n: int) -> None:
    proc, urls, stop, url = _start_emulator(transport)
    try:
        cfg = RewardConfig(port=url, min_interval_s=0.0, max_volume_ul=1e6, ack_timeout_s=0.5)
        # 1 uL = 1 ms: every reward is a 1 ms pulse.
        cal = ValveCalibration(valve="bench", date="2025-01-01T00:00:00", intercept_ms=0.0, slope_ms_per_ul=1.0)
        controller = RewardController(cfg, cal, ValveLink.from_config(cfg, url))
        _connect(controller, url)
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
        _stop_emulator(proc, urls, stop)
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


def _request_feeder(ctx: zmq.Context, n: int, go: threading.Event, seed: int) -> None:
    """The decoder's part: one request at a random moment after each outcome (sent on a zmq PAIR)."""
    sender = ctx.socket(zmq.PAIR)
    sender.connect("inproc://bench-requests")
    rng = random.Random(seed)
    try:
        for i in range(n):
            if not go.wait(10):
                return
            go.clear()
            time.sleep(rng.uniform(0.002, 0.040))  # a real wait in another process: not on the host's ticks
            sender.send(b"%d" % i)
    finally:
        sender.close(linger=0)


def bench_windows_approx(n: int, pulse_ms: float, seed: int = 1) -> None:
    """The reward process's loop (as ``RewardProcess.step``) with Windows approximated on both sides."""
    proc, urls, stop, url = _start_emulator("socket", windows_approx=True)
    ports: list[WindowsLikeSocketSerial] = []

    def port_factory(*args: object, **kwargs: object) -> WindowsLikeSocketSerial:
        ser = windows_like_serial_for_url(*args, **kwargs)
        ports.append(ser)
        return ser

    zctx = zmq.Context()
    requests = zctx.socket(zmq.PAIR)
    requests.bind("inproc://bench-requests")
    go = threading.Event()
    feeder = threading.Thread(target=_request_feeder, args=(zctx, n, go, seed), daemon=True)
    results: list[RewardOutcome] = []
    cpu0 = time.process_time()
    try:
        cfg = RewardConfig(port=url, min_interval_s=0.0, max_volume_ul=1e6, ack_timeout_s=0.5)
        cal = ValveCalibration(valve="bench", date="2025-01-01T00:00:00", intercept_ms=0.0, slope_ms_per_ul=1.0)
        link = ValveLink.from_config(cfg, url, port_factory=port_factory, select_fn=windows_tick_select,
                                     sleep_fn=windows_tick_sleep)
        controller = RewardController(cfg, cal, link)
        _connect(controller, url)
        poller = zmq.Poller()
        poller.register(requests, zmq.POLLIN)
        polled_fd: int | None = None
        waited_on_fd = False
        feeder.start()
        go.set()
        give_up = time.monotonic() + n * (pulse_ms / 1000 + 0.5) + 10
        while len(results) < n:
            if time.monotonic() > give_up:
                raise RuntimeError(f"only {len(results)}/{n} outcomes before giving up")
            fd = link.fileno()  # as RewardProcess.step: the descriptor may change on reconnect
            if fd != polled_fd:
                if polled_fd is not None:
                    poller.unregister(polled_fd)
                if fd is not None and fd >= 0:
                    poller.register(fd, zmq.POLLIN)
                polled_fd = fd if fd is not None and fd >= 0 else None
            waited_on_fd |= polled_fd is not None
            block_s = (5 if polled_fd is not None else 1) / 1000
            poller.poll(math.ceil((windows_tick_timeout(block_s) or 0.0) * 1000))  # zmq_poll on Windows: ticks too
            while True:
                try:
                    i = int(requests.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                controller.request(f"w{i}", pulse_ms, "bench")
            for event in controller.poll(0.0):
                if isinstance(event, RewardOutcome):
                    results.append(event)
                    go.set()
        host_cpu = time.process_time() - cpu0
        controller.close()
    finally:
        go.set()
        requests.close(linger=0)
        feeder.join(5)
        zctx.term()
        emulator_cpu = _stop_emulator(proc, urls, stop)
    ok = [r for r in results if r.status == DELIVERED and r.t_ack]
    ack = np.array([(r.t_ack - r.t_written) / 1e6 for r in ok])
    over = np.array([(r.open_us - r.open_ms * 1000) / 1e3 for r in ok])
    done = np.array([(r.t_done - r.t_written) / 1e6 for r in ok])
    reader = "pollable link (ValveLink.fileno)" if waited_on_fd else "no descriptor: 1 ms polls"
    print(f"windows-approx {url}  delivered {len(ok)}/{n}, retries {sum(r.attempts - 1 for r in results)}, "
          f"{pulse_ms:g} ms pulses, host reads: {reader}")
    print(f"  board ACK (write->ack)  {_percentiles(ack)}")
    print(f"  pulse overrun           {_percentiles(over)}   (board-measured open - requested)")
    print(f"  write->done - requested {_percentiles(done - pulse_ms)}   (DONE line late, as the host sees it)")
    print(f"  port reconfigurations after open: {[p.reconfigurations for p in ports]}")
    wall = (results[-1].t_done - results[0].t_written) / 1e9 if ok else math.nan
    print(f"  CPU over {wall:.1f} s: host {host_cpu:.2f} s, emulator process {emulator_cpu:.2f} s (whole run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--transport", choices=["pty", "socket", "both"], default="both")
    parser.add_argument("--windows-approx", action="store_true",
                        help="approximate Windows on Linux (no fileno, 15.625 ms timer ticks), 50 ms pulses")
    parser.add_argument("--pulse-ms", type=float, default=50.0, help="pulse length with --windows-approx")
    args = parser.parse_args()
    if args.windows_approx:
        load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, 1-min load {load}, n={args.n}")
        bench_windows_approx(args.n, args.pulse_ms)
        return
    transports = ["pty", "socket"] if args.transport == "both" else [args.transport]
    if os.name != "posix" and "pty" in transports:
        transports.remove("pty")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, n={args.n}")
    for transport in transports:
        bench(transport, args.n)


if __name__ == "__main__":
    main()
