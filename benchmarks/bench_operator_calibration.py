"""Issue 21: how long the operator's Calibrate blocks the decoder's loop, in the loop and beside it.

    python benchmarks/bench_operator_calibration.py [--minutes 5] [--rois 500]

A :class:`decoder.core.DecoderCore` with the decoder process's calibration thread records a ``--minutes``
baseline (synthetic traces of bench_decoder.py, 30 Hz, ensembles 10 + 10), then the operator calibrates:
with ``decoder.operator_calibrate_off_loop`` false (the command computes in the loop) and true (the thread
computes it; frames go on being decided, one every 33 ms, until it applies). Printed for each: the wall
time the command itself held the loop, the frame it applied before, the slowest frame decision meanwhile,
and the calibration's own compute time. The output keeps events in memory (the live process also writes
``calibration.json``, ~1 ms, in the frame the calibration applies before, either way).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decoder import synthetic  # noqa: E402
from decoder.calibration_job import ThreadCalibrator  # noqa: E402
from decoder.config import DecoderConfig, TaskConfig  # noqa: E402
from decoder.core import DecoderCore  # noqa: E402

FPS = 30.0


class _Memory:
    """A DecoderOutput that keeps the events (nothing published)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append({"kind": kind, **fields})

    def trial_event(self, *args: Any) -> None:
        pass

    def calibration_in_force(self, cal: dict[str, Any]) -> None:
        pass

    def reward_request(self, *args: Any, **kwargs: Any) -> None:
        pass

    def decision(self, res: Any) -> None:
        pass

    def refused(self, command: str, error: str) -> None:
        raise SystemExit(f"{command} refused: {error}")

    def busy(self, what: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rois", type=int, default=500)
    args = ap.parse_args()
    frames = int(args.minutes * 60 * FPS)
    F, Fneu = synthetic(frames + 600, args.rois, FPS)
    for off_loop in (False, True):
        thread = ThreadCalibrator([], lower=True)
        out = _Memory()
        core = DecoderCore(DecoderConfig(up=list(range(10)), down=list(range(10, 20)),
                                         operator_calibrate_off_loop=off_loop),
                           TaskConfig(baseline_s=args.minutes * 60 + 100, auto_protocol=False), 2.5, args.rois, FPS,
                           out, thread)
        core.apply_control("start_baseline", {})
        for i in range(frames):
            core.decide(i, F[i], Fneu[i], 0, None)
        t0 = time.perf_counter()
        core.apply_control("calibrate", {"target_hit_rate": 0.5})
        blocked_ms = (time.perf_counter() - t0) * 1e3
        slowest_ms, i = 0.0, frames
        while core.engine.calibration is None:
            if i == len(F):
                raise SystemExit("the calibration never applied")
            t0 = time.perf_counter()
            core.decide(i, F[i], Fneu[i], 0, None)
            slowest_ms = max(slowest_ms, (time.perf_counter() - t0) * 1e3)
            i += 1
            time.sleep(1.0 / FPS)
        applied = [e for e in out.events if e["kind"] == "calibration_applied"]
        compute = f"{applied[0]['compute_ms']:.1f} ms in the thread" if applied else "in the command"
        print(f"operator_calibrate_off_loop={str(off_loop).lower():5s}: the command held the loop {blocked_ms:.1f} ms; "
              + (f"applied before the {i - frames}th frame after it; slowest decision meanwhile {slowest_ms:.2f} ms; "
                 if i > frames else "in force at once; ") + f"calibration {compute}")
        thread.close()


if __name__ == "__main__":
    main()
