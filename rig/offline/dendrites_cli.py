"""``rig dendrites SESSION``: its command line (the analysis is :mod:`rig.offline.dendrites`, loaded when it runs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = """\
Do the dendrites of the BCI's up and down neurons carry a signed, per-cell instructive signal?
Needs a session with a dendrite plane: [acquisition] n_planes >= 2, dendrite ROIs linked to their somata
(acquisition/planes/planeK/rois/roi_kind.npy, roi_parent.npy; docs/PLANES.md), and completed BCI trials.

What it does (docs/DENDRITES.md):
  1. each dendrite's dF/F minus what its soma's dF/F explains (instrumental variables: the soma's noise would
     otherwise leave part of the soma in the residual, and the soma drives the cursor);
  2. the cursor's error (threshold - cursor), recomputed without the dendrite's own soma (leave-one-out);
  3. per dendrite, the correlation of 1 with 2 over the BCI frames; per role (up, down, other) the mean:
     the instructive index, positive = the dendrite is more active while the cursor is below the target;
     95 % CI by bootstrap over trials; p by circular shifts of the error (at least --min-shift-s);
     p_opposite: up and down both nonzero with opposite signs (the larger of their p-values, 1 if same sign).
Writes OUT/dendrites_aligned.png (hits, misses, rewards) and OUT/dendrites_index.png; the last stdout line is
JSON: up_index, down_index, p_opposite, their CIs and p-values, n dendrites per role, "naive" (the same without
the corrections: raw dendrite against the recorded cursor), warnings.

Examples:
  rig sim session /tmp/s1 --rule vectorized --minutes 45     a simulated two-plane session
  rig dendrites /tmp/s1                                      -> /tmp/s1/dendrites/*.png, JSON line
  rig dendrites /tmp/s1 --soma ols --cursor recorded         the confound, for comparison
Exit 0: analysed; 2: the session cannot be analysed (the message says why: no dendrite plane, no links,
a link to a missing soma, no trials).
"""


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``dendrites`` to the ``rig`` command line."""
    p = sub.add_parser("dendrites", help="instructive signals in the ensemble neurons' dendrites (multi-plane)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("session", help="session folder (rig run, rig sim session)")
    p.add_argument("--out", metavar="DIR", help="where the PNGs go (default: SESSION/dendrites)")
    p.add_argument("--soma", choices=("iv", "ols", "none"), default="iv",
                   help="how the soma's part is removed: iv (instrumental variables, default), ols (least squares "
                        "on the noisy soma: leaves some soma in), none (raw dendrite: shows the confound)")
    p.add_argument("--cursor", choices=("leave-one-out", "recorded"), default="leave-one-out",
                   help="the error's cursor: without the dendrite's own soma (default) or as recorded")
    p.add_argument("--boot", type=int, default=2000, metavar="N", help="bootstrap resamples of trials (2000)")
    p.add_argument("--min-shift-s", type=float, default=60.0, metavar="S",
                   help="smallest circular shift of the error for the permutation null, seconds (60)")
    p.add_argument("--no-plots", action="store_true", help="numbers only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from rig.app.config import ConfigError  # noqa: PLC0415
    from rig.offline.dendrites import analyse, summary_json  # noqa: PLC0415
    from rig.offline.dendrites_data import load_dendrite_data  # noqa: PLC0415
    from rig.offline.session_data import SessionError, load_session  # noqa: PLC0415

    if args.boot < 100:
        print(f"rig dendrites: --boot must be >= 100 (got {args.boot})", file=sys.stderr)
        return 2
    if not args.min_shift_s > 0:
        print(f"rig dendrites: --min-shift-s must be > 0 (got {args.min_shift_s})", file=sys.stderr)
        return 2
    try:
        session = load_session(args.session)
        data = load_dendrite_data(session)
        out = analyse(data, soma=args.soma, leave_one_out=args.cursor == "leave-one-out", n_boot=args.boot,
                      min_shift_s=args.min_shift_s, progress=not args.no_progress)
        result = summary_json(str(session.path), data, out)
        if not args.no_plots:
            from rig.offline.dendrites_plots import save_plots  # noqa: PLC0415

            folder = Path(args.out) if args.out else session.path / "dendrites"
            result["plots"] = [str(p) for p in save_plots(out, folder)]
    except (SessionError, ConfigError, OSError) as exc:
        print(f"rig dendrites: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 2
    for note in session.notes:
        print(f"rig dendrites: note: {note}", file=sys.stderr)
    for warning in result["warnings"]:
        print(f"rig dendrites: warning: {warning}", file=sys.stderr)
    print(json.dumps({"ok": True, **result}), flush=True)
    return 0
