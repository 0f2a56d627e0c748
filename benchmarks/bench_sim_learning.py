"""The simulated mouse's learning: learning-rate sweep of the vectorized and scalar rules, and the controls.

Run:  python benchmarks/bench_sim_learning.py [--minutes 60] [--seeds 0 1 2] [--jobs 2] [--out results.json]

Each run is ``rig sim learn`` in-process (rig.app.sim_learn.run_learning): a trace-level session of
``--minutes`` (10 of them baseline) through the real decoder engine. Printed (and written with --out):

* sweep: per rule (vectorized and scalar with feedback, vectorized without) and learning rate, over
  the seeds, the mean BCI hit rate (how fast it learned: the area under its learning curve), the mean
  gain (last quarter - first quarter of the trials) and the cursor-relevant drive (mean drive of the
  up cells - of the down cells, Hz);
* each rule at its best learning rate (the highest mean hit rate);
* controls at the default learning rates: yoked rewards for every rule, vectorized with feedback off.

docs/SIMULATOR.md quotes the numbers of one run of this script.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from rig.app.sim_learn import LearnSpec, run_learning

RATES = (0.03, 0.1, 0.3, 1.0, 3.0)
#: swept conditions: (rule, feedback presented)
SWEPT = {"vectorized": ("vectorized", True), "scalar": ("scalar", True),
         "vectorized_feedback_off": ("vectorized", False)}


def _run(kw: dict) -> dict:
    return run_learning(LearnSpec(**kw))


def _summary(runs: list[dict]) -> dict:
    return {
        "hit_rate": float(np.mean([r["hit_rate"] for r in runs])),
        "gain": float(np.mean([r["gain"] for r in runs])),
        "gains": [round(r["gain"], 3) for r in runs],
        "first_quarter": float(np.mean([r["hit_rate_first_quarter"] for r in runs])),
        "last_quarter": float(np.mean([r["hit_rate_last_quarter"] for r in runs])),
        "chance": float(np.mean([r["chance"] for r in runs])),
        "drive_contrast_hz": float(np.mean([r["drive_up_hz"] - r["drive_down_hz"] for r in runs])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    base = {"minutes": args.minutes}
    jobs: dict[tuple, dict] = {}
    for name, (rule, feedback) in SWEPT.items():
        for lr in RATES:
            for seed in args.seeds:
                jobs[("sweep", name, lr, seed)] = {**base, "rule": rule, "feedback": feedback, "learning_rate": lr,
                                                   "seed": seed}
    for rule in ("vectorized", "scalar", "none"):
        for seed in args.seeds:
            jobs[("yoked", rule, None, seed)] = {**base, "rule": rule, "rewards": "yoked", "seed": seed}
    for seed in args.seeds:
        jobs[("feedback_off", "vectorized", None, seed)] = {**base, "rule": "vectorized", "feedback": False,
                                                            "seed": seed}
        jobs[("feedback_on", "vectorized", None, seed)] = {**base, "rule": "vectorized", "seed": seed}
        jobs[("contingent", "none", None, seed)] = {**base, "rule": "none", "seed": seed}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(zip(jobs, pool.map(_run, jobs.values()), strict=True))
    wall = time.perf_counter() - t0

    def group(kind: str, rule: str, lr: float | None) -> dict:
        return _summary([results[(kind, rule, lr, s)] for s in args.seeds])

    sweep = {name: {str(lr): group("sweep", name, lr) for lr in RATES} for name in SWEPT}
    best = {rule: max(rows.items(), key=lambda kv: kv[1]["hit_rate"]) for rule, rows in sweep.items()}
    out = {
        "minutes": args.minutes,
        "seeds": args.seeds,
        "sweep": sweep,
        "best": {rule: {"learning_rate": float(lr), **row} for rule, (lr, row) in best.items()},
        "yoked": {rule: group("yoked", rule, None) for rule in ("vectorized", "scalar", "none")},
        "contingent_none": group("contingent", "none", None),
        "vectorized_feedback_on": group("feedback_on", "vectorized", None),
        "vectorized_feedback_off": group("feedback_off", "vectorized", None),
        "runs": len(results),
        "wall_s": wall,
    }
    for rule, rows in sweep.items():
        for lr, row in rows.items():
            print(f"{rule:10s} lr={lr:5s} hit={row['hit_rate']:.3f} gain={row['gain']:+.3f} "
                  f"drive(up-down)={row['drive_contrast_hz']:+.2f} Hz")
    print(json.dumps({k: v for k, v in out.items() if k != "sweep"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
