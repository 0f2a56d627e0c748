"""``rig sim session OUT``: its command line (the run itself is :mod:`rig.app.sim_session`, imported when it runs)."""

from __future__ import annotations

import argparse
import json
import sys

from rig.app.sim_learn_cli import LEARNING_RULES, REWARD_MODES


def register_session(subparsers: argparse._SubParsersAction) -> None:
    """Add ``session`` under ``rig sim``."""
    p = subparsers.add_parser(
        "session",
        help="a simulated two-plane BCI session (somata + dendrites) written as a session folder, fast",
        description="Simulate a learning session at trace level with two planes (plane 0: somata that drive the "
        "decoder; plane 1: their apical dendrites, whose dendrite-specific events carry the learning rule's "
        "instructive signal) through the decoder's own core, and write it in the session layout: "
        "acquisition/frames.rec + rois/, acquisition/planes/plane1/ (frames.rec, rois/ with roi_kind.npy and "
        "roi_parent.npy, sim_truth/), decoder/, reward/, summary.json. rig report, rig replay and rig dendrites "
        "read it. 45 simulated minutes take well under a minute. Prints one JSON line (trials, hit rate, learned "
        "drives). docs/DENDRITES.md, docs/SIMULATOR.md.",
    )
    p.add_argument("out", help="the session folder to create (must not exist)")
    p.add_argument("--rule", choices=LEARNING_RULES, default="vectorized",
                   help="learning rule, and so the dendrites' instructive signal (vectorized)")
    p.add_argument("--rewards", choices=REWARD_MODES, default="contingent",
                   help="contingent: the decoder's hits reward the mouse; yoked: random rewards at chance rate")
    p.add_argument("--feedback", choices=("on", "off"), default="on", help="present the tone/grating (on)")
    p.add_argument("--minutes", type=float, default=45.0, help="session length, baseline included (45)")
    p.add_argument("--baseline-minutes", type=float, default=3.0, help="baseline before the trials (3)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (0)")
    p.add_argument("--fps", type=float, default=5.0, help="volume rate: frames per second of each plane (5)")
    p.add_argument("--learning-rate", type=float,
                   help="the rule's learning rate (default: vectorized 1.0, scalar 0.3: each rule's best)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_session_cli)


def run_session_cli(args: argparse.Namespace) -> int:
    from rig.app.sim_learn import LearningError, LearnSpec  # noqa: PLC0415
    from rig.app.sim_session import run_session  # noqa: PLC0415

    spec = LearnSpec(rule=args.rule, rewards=args.rewards, feedback=args.feedback == "on", minutes=args.minutes,
                     baseline_minutes=args.baseline_minutes, seed=args.seed, fps=args.fps,
                     learning_rate=args.learning_rate)
    try:
        result = run_session(spec, args.out, progress=not args.no_progress)
    except (ValueError, LearningError, OSError) as exc:
        print(f"rig sim session: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 2
    print(json.dumps({"ok": True, **result}), flush=True)
    return 0
