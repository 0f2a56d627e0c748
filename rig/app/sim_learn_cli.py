"""``rig sim learn``: its command line (the run itself is :mod:`rig.app.sim_learn`, imported when it runs)."""

from __future__ import annotations

import argparse
import json
import sys

#: as acquisition.sim.config.LEARNING_RULES and rig.app.sim_learn.REWARD_MODES (checked by tests/test_sim_learning.py)
LEARNING_RULES = ("vectorized", "scalar", "none")
REWARD_MODES = ("contingent", "yoked")


def register_learn(subparsers: argparse._SubParsersAction) -> None:
    """Add ``learn`` under ``rig sim``."""
    p = subparsers.add_parser(
        "learn",
        help="a simulated mouse learns the task through the real decoder (trace level, no images)",
        description="Run a simulated BCI session at trace level: TraceSim's F/Fneu -> the decoder engine "
        "(baseline, calibration, trials) -> the feedback the mouse hears -> rewards back to the mouse. The "
        "mouse is not told which cells the decoder reads. Prints one JSON line: hit_rate_first_quarter, "
        "hit_rate_last_quarter (of the BCI trials), chance (the calibration's predicted hit rate) and more. "
        "docs/SIMULATOR.md describes the learning rules.",
    )
    p.add_argument("--rule", choices=LEARNING_RULES, default="vectorized", help="learning rule (vectorized)")
    p.add_argument("--rewards", choices=REWARD_MODES, default="contingent",
                   help="contingent: the decoder's hits reward the mouse; yoked: random rewards at chance rate")
    p.add_argument("--feedback", choices=("on", "off"), default="on", help="present the tone/grating (on)")
    p.add_argument("--minutes", type=float, default=60.0, help="session length, baseline included (60)")
    p.add_argument("--baseline-minutes", type=float, default=10.0, help="baseline before the trials (10)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (0)")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of the simulated traces (10)")
    p.add_argument("--learning-rate", type=float, help="the rule's learning rate (default: MouseConfig's)")
    p.set_defaults(func=run_learn_cli)


def run_learn_cli(args: argparse.Namespace) -> int:
    # the decoder engine and the simulator load only when the command runs (rig --help stays quick)
    from rig.app.sim_learn import LearningError, LearnSpec, run_learning  # noqa: PLC0415

    spec = LearnSpec(rule=args.rule, rewards=args.rewards, feedback=args.feedback == "on", minutes=args.minutes,
                     baseline_minutes=args.baseline_minutes, seed=args.seed, fps=args.fps,
                     learning_rate=args.learning_rate)
    try:
        result = run_learning(spec)
    except (ValueError, LearningError) as exc:
        print(f"rig sim learn: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 2
    print(json.dumps({"ok": True, **result}), flush=True)
    return 0
