"""`rig replay | export | report | summary SESSION`: the offline tools that work on a session folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rig.app.config import ConfigError
from rig.app.session_files import cpu_target
from rig.app.supervisor import git_hash
from rig.offline.session_data import SessionError, load_session

#: `rig replay`'s exit code when no mismatch was found but not every recorded decision could be checked
EXIT_INCOMPLETE = 3


def _fail(command: str, exc: Exception) -> int:
    print(f"rig {command}: {exc}", file=sys.stderr)
    return 2


def _cmd_replay(args: argparse.Namespace) -> int:
    from rig.offline.replay import check, replay  # noqa: PLC0415
    from rig.offline.whatif import default_whatif_dir, whatif_config, write_whatif_session  # noqa: PLC0415

    whatif = bool(args.config or args.set)
    try:
        session = load_session(args.session)
        other = whatif_config(session, args.config, args.set) if whatif else None
        run = replay(session, other, from_traces=args.from_traces, realtime=args.realtime,
                     progress=not args.no_progress)
    except (SessionError, ConfigError, OSError) as exc:
        return _fail("replay", exc)
    if other is not None:
        for note in session.notes:
            print(f"rig replay: note: {note}", file=sys.stderr)
        if run.unreplayable:
            print(f"rig replay: note: the what-if session stops before the last {run.unreplayable} decision(s): "
                  f"{run.unreplayable_reason}", file=sys.stderr)
        out = Path(args.out) if args.out else default_whatif_dir(session)
        config_text = Path(args.config).read_text(encoding="utf-8") if args.config else session.config_text
        config_source = str(Path(args.config).resolve()) if args.config else str(session.path / "config.toml")
        try:
            write_whatif_session(session, run, other, config_text, config_source, out, overrides=args.set)
        except (SessionError, OSError) as exc:
            return _fail("replay", exc)
        hits = sum(1 for e in run.events if e.get("kind") == "trial" and e.get("event") == "hit")
        trials = sum(1 for e in run.events if e.get("kind") == "trial" and e.get("event") == "trial_start")
        print(f"rig replay: what-if session written to {out}", file=sys.stderr)
        print(json.dumps({"frames": len(run.rows), "decisions_checked": 0, "mismatches": 0, "source": run.source,
                          "replay_session": str(out), "trials": trials, "hits": hits}), flush=True)
        return 0
    report = check(session, run)
    for note in report.notes:
        print(f"rig replay: note: {note}", file=sys.stderr)
    recorded_git = str(session.info.get("software", {}).get("git", "unknown"))
    current_git = git_hash()
    if report.mismatches and recorded_git != current_git:
        print(f"rig replay: note: the session was recorded with bci-rig {recorded_git[:12]} and is replayed with "
              f"{current_git[:12]}: mismatches may come from changes in the code, not from the rig",
              file=sys.stderr)
    recorded_cpu = str(session.info.get("software", {}).get("cpu", ""))
    if report.mismatches and recorded_cpu and recorded_cpu != cpu_target():
        print(f"rig replay: note: the session was recorded on CPU \"{recorded_cpu}\" and is replayed on "
              f"\"{cpu_target()}\": the extraction's compiled sums may round differently there (docs/PERFORMANCE.md, "
              "tenth round); replay it on the rig's own PC to check it to the bit", file=sys.stderr)
    if report.first_mismatches:
        print(f"rig replay: {report.mismatches} mismatch(es); the first ones:", file=sys.stderr)
        for m in report.first_mismatches:
            d = m.to_dict()
            print(f"  {m.what} at frame {m.frame}, {m.field}: recorded {d['recorded']!r}, replayed {d['replayed']!r}",
                  file=sys.stderr)
    if not report.complete:
        print(f"rig replay: incomplete check: {report.unchecked_reason}", file=sys.stderr)
    print(json.dumps(report.to_json()), flush=True)
    if report.mismatches:
        return 1
    return 0 if report.complete else EXIT_INCOMPLETE


def _cmd_export(args: argparse.Namespace) -> int:
    from rig.offline.nwb_export import NwbMetadata, export_nwb  # noqa: PLC0415

    meta = NwbMetadata(species=args.species, sex=args.subject_sex, age=args.subject_age,
                       brain_area=args.brain_area, indicator=args.indicator, excitation_nm=args.excitation_nm,
                       include_movie=args.movie)
    try:
        import pynwb  # noqa: F401, PLC0415 - an optional extra: say how to get it rather than fail deep inside
    except ImportError:
        return _fail("export", ImportError("pynwb is not installed: pip install 'bci-rig[nwb]'"))
    try:
        session = load_session(args.session)
        out = export_nwb(session, args.nwb, meta, progress=not args.no_progress)
    except (SessionError, ConfigError, OSError) as exc:
        return _fail("export", exc)
    print(json.dumps({"nwb": str(out), "bytes": out.stat().st_size}), flush=True)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from rig.offline.report import build_report  # noqa: PLC0415

    try:
        session = load_session(args.session)
        out = Path(args.out) if args.out else session.path / "report.html"
        build_report(session, out, progress=not args.no_progress, images_dir=args.images)
    except (SessionError, ConfigError, OSError) as exc:
        return _fail("report", exc)
    print(json.dumps({"report": str(out)}), flush=True)
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from rig.core.store import write_json_atomic  # noqa: PLC0415
    from rig.offline.problems import recorded_outcome, session_problems, with_outcome  # noqa: PLC0415
    from rig.offline.summary import summarize_session  # noqa: PLC0415

    path = Path(args.session)
    if not path.is_dir():
        return _fail("summary", SessionError(f"{path}: not a session folder (no such directory)"))
    notes: list[str] = []
    try:
        summary = summarize_session(path, notes)
        # how it ended (ok, stop_reason, failure) as recorded; the problems judged again from the files
        outcome = recorded_outcome(path)
        summary = with_outcome(summary, outcome, session_problems(path, summary, str(outcome.get("stop_reason", ""))))
    except (ValueError, OSError) as exc:
        return _fail("summary", exc)
    for note in notes:
        print(f"rig summary: note: {note}", file=sys.stderr)
    for problem in summary["problems"]:
        print(f"rig summary: problem: {problem}", file=sys.stderr)
    print(f"rig summary: {'ok' if summary['ok'] else 'NOT ok'} (stop reason: {summary['stop_reason'] or 'not recorded'}"
          + (f"; failure in {summary.get('failed_process')}: {summary['failure']}" if "failure" in summary else "")
          + ")", file=sys.stderr)
    if args.write:
        write_json_atomic(path / "summary.json", summary)
    print(json.dumps(summary), flush=True)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    replay = sub.add_parser(
        "replay", help="re-run a session offline and check every decision against the record",
        description="Feed a session's recorded frames (or, when not kept, its F/Fneu traces) through the same "
                    "pipeline and decoder, re-applying the operator's actions where they happened, and compare "
                    "every decision, trial event and reward request with the record byte for byte. Last stdout "
                    "line: JSON with frames, decisions_checked, decisions_unchecked, mismatches. Exit 0: all checked, "
                    "no mismatch; 1: mismatches; 2: the session cannot be read (one line naming the file); 3: no "
                    "mismatch, but some decisions could not be checked (the reason on stderr). With --config or "
                    "--set, answer a what-if question instead: write a NEW session folder marked as a replay of this "
                    "one.")
    replay.add_argument("session", help="session folder")
    replay.add_argument("--config", default=None, metavar="OTHER.toml",
                        help="what-if: decide with this config (threshold, decoder...) and write a new session")
    replay.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="what-if: override one value of the session's config (or of --config), e.g. "
                             "--set decoder.calibration.target_hit_rate=0.3 (repeatable)")
    replay.add_argument("--out", default=None, metavar="DIR",
                        help="with --config/--set: where to write the new session (default: SESSION.replay-<time>)")
    replay.add_argument("--realtime", action="store_true", help="pace frames at the recorded rate")
    replay.add_argument("--from-traces", action="store_true",
                        help="use the recorded F/Fneu even when the raw frames were kept")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    replay.set_defaults(func=_cmd_replay)

    export = sub.add_parser(
        "export", help="export a session to NWB (Neurodata Without Borders)",
        description="Write the session as an NWB file: imaging plane, ROI masks, F / Fneu / dF/F, cursor, trials, "
                    "rewards, licks, config. Subject facts the rig does not know come from the session metadata "
                    "(keys species, sex, age, brain_area, indicator) or from these options.")
    export.add_argument("session", help="session folder")
    export.add_argument("--nwb", required=True, metavar="OUT.nwb", help="output file")
    export.add_argument("--movie", action="store_true", help="include the raw frames (TwoPhotonSeries)")
    export.add_argument("--species", default=None, help='default "Mus musculus"')
    export.add_argument("--subject-sex", default=None, choices=["M", "F", "U", "O"])
    export.add_argument("--subject-age", default=None, metavar="ISO8601", help='e.g. "P90D"')
    export.add_argument("--brain-area", default=None, help='Allen CCF name or acronym, e.g. "MOp"')
    export.add_argument("--indicator", default=None, help='e.g. "GCaMP6f"')
    export.add_argument("--excitation-nm", type=float, default=None, help="default 920")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")
    export.set_defaults(func=_cmd_export)

    report = sub.add_parser(
        "report", help="write a one-page HTML report of a session",
        description="Hit rate, time to hit, cursor distribution in baseline vs BCI, ensemble activity around hits, "
                    "reward timeline, latency and dropped frames, as one HTML file with embedded plots.")
    report.add_argument("session", help="session folder")
    report.add_argument("--out", default=None, metavar="report.html", help="default: SESSION/report.html")
    report.add_argument("--images", default=None, metavar="DIR", help="also save each plot as a PNG here")
    report.add_argument("--no-progress", action="store_true", help="no progress bar")
    report.set_defaults(func=_cmd_report)

    summary = sub.add_parser(
        "summary", help="recompute a session's JSON summary from its files (e.g. after a crash)",
        description="Read the session folder and print the summary `rig run` prints at exit: the numbers, how "
                    "the session ended (ok, stop_reason, failure, as recorded) and its problems (no frame, every "
                    "frame bad, no calibration, no trial), judged again from the files. ok is true only without "
                    "a failure and without a problem.")
    summary.add_argument("session", help="session folder")
    summary.add_argument("--write", action="store_true", help="also (re)write SESSION/summary.json")
    summary.set_defaults(func=_cmd_summary)
