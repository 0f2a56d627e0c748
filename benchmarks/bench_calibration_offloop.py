"""Issue 21: what the end-of-baseline calibration costs, and whether computing it in a thread delays the loop.

    python benchmarks/bench_calibration_offloop.py [--minutes 15] [--rois 500] [--reps 6] [--python-machine]

1. Calibration wall time on a simulated baseline (30 Hz, ``--rois`` ROIs, ensembles of 4 + 4), as the decoder
   computes it (``CalibrationJob.run``: the compiled task prediction of decoder/task_sim.py), and with
   ``--python-machine`` the same calibration with the prediction run by the Python trial machine
   (``decoder.calibration.run_task``, what the decoder ran before; same result, checked here).
2. A stand-in for the decoder's loop: ``DecoderEngine.step`` on a 500-ROI frame every 2 ms, each frame's
   delay past its due time (p50 / p99 / max, ms) — with nothing beside it, and while the calibration computes
   in :class:`decoder.calibration_job.ThreadCalibrator` at Python's default switch interval (5 ms) and at the
   one the calibrator sets (0.5 ms). Computed in the loop instead, the loop stalls for the whole calibration.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoder import calibration  # noqa: E402
from decoder.calibration_job import CalibrationJob, ThreadCalibrator  # noqa: E402
from decoder.config import DecoderConfig, TaskConfig  # noqa: E402
from decoder.engine import DecoderEngine  # noqa: E402
from tests.test_decoder_synthetic import synthetic_recording  # noqa: E402

FPS = 30.0
PERIOD_S = 0.002


def _python_outcomes(values, timing, threshold, rtb_level, start=0):  # noqa: ANN001, ANN202
    """task_outcomes by the Python trial machine (the decoder's prediction before it was compiled)."""
    outcomes: list[tuple[int, bool]] = []
    machine = calibration.run_task(np.asarray(values)[start:].tolist(), timing, threshold, rtb_level, outcomes)
    return (machine.hits, machine.misses, np.array([f for f, _ in outcomes], dtype=np.int64),
            np.array([h for _, h in outcomes], dtype=bool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rois", type=int, default=500)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--python-machine", action="store_true", help="also time the Python trial machine")
    args = parser.parse_args()
    n = int(args.minutes * 60 * FPS)
    F, Fneu = synthetic_recording(n, args.rois, seed=1)
    dcfg = DecoderConfig(up=[0, 1, 2, 3], down=[4, 5, 6, 7])
    task = TaskConfig(baseline_s=n / FPS, auto_protocol=False)
    engine = DecoderEngine(dcfg, task, args.rois, FPS)
    engine.load_baseline(F, Fneu)
    probe = DecoderEngine(dcfg, task, args.rois, FPS)

    def job() -> CalibrationJob:
        return CalibrationJob(0, engine._baseline.snapshot(), engine._decoder.clone(), engine._calibration_cfg)

    with open("/proc/loadavg", encoding="ascii") if Path("/proc/loadavg").exists() else _Nothing() as f:
        print(f"load average: {f.read().strip()}")
    print(f"baseline: {args.minutes:g} min at {FPS:g} Hz ({n} frames), {args.rois} ROIs")
    runs = []
    for _ in range(args.reps):
        j = job()
        j.run()
        runs.append(j.compute_ms)
    print(f"calibration, compiled prediction (ms): {np.round(runs, 0).tolist()}  threshold {j.calibration.threshold!r}")
    if args.python_machine:
        with mock.patch.object(calibration, "task_outcomes", _python_outcomes):
            ref = job()
            ref.run()
        same = ref.as_dict == j.as_dict
        print(f"calibration, Python trial machine (ms): {ref.compute_ms:.0f}  identical result: {same}")

    frame = [0]

    def loop_while(running) -> np.ndarray:  # noqa: ANN001
        late = []
        due = time.perf_counter()
        while running():
            due += PERIOD_S
            while time.perf_counter() < due - 0.0003:
                time.sleep(0.0002)
            while time.perf_counter() < due:
                pass
            i = frame[0] % n
            probe.step(frame[0], F[i], Fneu[i])
            frame[0] += 1
            late.append((time.perf_counter() - due) * 1e3)
        return np.asarray(late)

    def show(label: str, late: np.ndarray) -> None:
        print(f"{label:<46} frames {len(late):5d}  delay p50 {np.median(late):.3f}  p99 "
              f"{np.percentile(late, 99):.3f}  max {late.max():.2f} ms")

    t_end = time.perf_counter() + 2.0
    show("loop alone", loop_while(lambda: time.perf_counter() < t_end))
    for interval in (0.005, ThreadCalibrator.SWITCH_INTERVAL_S):
        with mock.patch.object(ThreadCalibrator, "SWITCH_INTERVAL_S", interval):
            thread = ThreadCalibrator([], lower=True)
            lates = []
            for _ in range(args.reps):
                j = job()
                thread.submit(j)
                lates.append(loop_while(lambda j=j: not j.done))
            thread.close()
        show(f"loop beside the thread, switch interval {interval * 1e3:g} ms", np.concatenate(lates))


class _Nothing:
    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self) -> str:
        return "n/a"


if __name__ == "__main__":
    main()
