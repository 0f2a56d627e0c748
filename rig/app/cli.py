"""``rig``: the command line of bci-rig. ``rig --help`` lists the commands; each has its own --help."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from rig.app.config import ConfigError

DESCRIPTION = """\
bci-rig: real-time closed-loop BCI for two-photon rigs.

Day one, no ROIs yet (docs/DETECT.md):
  rig run hardware_configs/my_scope.toml --record-only --duration 900   record a baseline movie, no BCI
  rig detect SESSION --out detected              suite2p finds the cells (needs the suite2p extra)
  rig rank detected/suite2p/plane0 --gui --write hardware_configs/my_scope.toml   pick up/down ensembles
Typical morning:
  rig align TODAY --to YESTERDAY                 same field as yesterday? carry the ROIs over (docs/ZTRACKING.md)
  rig check hardware_configs/my_scope.toml      validate the rig description
  rig valve pulse hardware_configs/my_scope.toml one test drop: is the line primed?
  rig check --probe hardware_configs/my_scope.toml   is the scope link up? frames/s, size, a preview
  rig run hardware_configs/my_scope.toml         run the session with the console (it asks for the mouse ID)
After the session (SESSION is the folder rig run printed):
  rig console SESSION                            review it: click any ROI for its F, dF/F and trial events
  rig report SESSION                             one-page HTML report with plots
  rig replay SESSION                             re-decide every frame offline and compare
  rig export SESSION --nwb session.nwb           NWB for sharing and analysis
  rig dendrites SESSION                          two planes: instructive signals in the dendrites
  rig link SESSION --suggest                     several planes: which dendrite belongs to which soma
Try everything without a microscope:
  rig run hardware_configs/sim.toml --headless --duration 60
  rig bench                                      how fast is this PC?
A console on another PC, or a bus off this PC: rig keys --help and docs/SECURITY.md.
"""

#: Packages that add their own subcommands with ``register_cli(subparsers)``.
PLUGIN_MODULES = (
    "acquisition.offline",
    "rig.app.sim_cli",
    "rig.app.valve_cli",
    "rig.offline.session_cli",
    "rig.offline.align",
    "rig.offline.bench",
    "rig.app.console_cli",
    "rig.app.keys_cli",
    "rig.offline.detect",
    "rig.offline.rank_cli",
    "rig.offline.links_cli",
    "rig.offline.dendrites_cli",
)


def _cmd_run(args: argparse.Namespace) -> int:
    from rig.app.supervisor import SessionFailed, StartRefused, Supervisor, has_display  # noqa: PLC0415

    if not args.headless and not has_display():
        print("[rig] no display found: running headless (baseline -> calibration -> BCI run by themselves)",
              file=sys.stderr, flush=True)
        args.headless = True
    if not _mouse_id_given(args):
        return 2
    # a recording is its frames: --record-only keeps them whatever the config's save_frames says
    overrides = [*args.set, "session.record_only=true", "session.save_frames=true"] if args.record_only else args.set
    try:
        sup = Supervisor(args.config, headless=args.headless, duration_s=args.duration,
                         sessions_root=args.sessions_dir, overrides=overrides)
    except StartRefused as exc:
        for reason in exc.reasons:
            print(f"rig run: refused: {args.config}: {reason}", file=sys.stderr)
        return 2
    except (ConfigError, SessionFailed, OSError) as exc:
        print(f"rig run: {exc}", file=sys.stderr)
        return 2
    print(f"[rig] session folder: {sup.session_dir}", file=sys.stderr, flush=True)
    summary = sup.run()
    print(json.dumps(summary), flush=True)
    code = 0 if summary.get("ok") else 1
    if not args.headless and not args.no_review and "gui" in {c.name for c in sup.children}:
        # The live console closed with the session; the same session stays on screen, read from its files.
        from rig.app.console_cli import run_review  # noqa: PLC0415

        print("[rig] session saved; it stays open in the console for review: close the window to exit",
              file=sys.stderr, flush=True)
        run_review(str(sup.session_dir))
    return code


def _mouse_id_given(args: argparse.Namespace) -> bool:
    """A live session names its mouse before its folder exists: ask (console dialog, or the terminal) when the
    config leaves it empty; headless without a terminal the start check refuses it with the way to set it."""
    from rig.app.checks import mouse_id_findings  # noqa: PLC0415
    from rig.app.config import load_config  # noqa: PLC0415

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError:
        return True  # the supervisor reports the config error itself, in its own words
    if not mouse_id_findings(cfg, error=True):
        return True
    if not args.headless:
        from gui.mouse_id import ask_mouse_id  # noqa: PLC0415

        answer = ask_mouse_id(cfg.rig.name)
    elif sys.stdin is not None and sys.stdin.isatty():
        from gui.mouse_id import VALID_MOUSE_ID  # noqa: PLC0415

        answer = input(f"Mouse ID for this session on {cfg.rig.name}: ").strip()
        if answer and not VALID_MOUSE_ID.fullmatch(answer):
            print(f"rig run: {answer!r} cannot name a session folder (letters, digits, '_', '.', '-')", file=sys.stderr)
            return False
    else:
        return True  # nobody to ask: the start check refuses with its one line
    if not answer:
        print("rig run: no mouse ID given: the session was not started", file=sys.stderr)
        return False
    args.set = [*args.set, f'session.mouse_id="{answer}"']  # quoted: "0042" stays a string
    return True


def _cmd_check(args: argparse.Namespace) -> int:
    from rig.app.checks import check_config  # noqa: PLC0415
    from rig.app.config import load_config  # noqa: PLC0415

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    checked = check_config(cfg, Path(args.config).resolve().parent, platform=sys.platform)
    findings = list(checked.findings)
    if args.probe:
        from rig.app.probe import probe_findings, probe_line, probe_preview, probe_source  # noqa: PLC0415

        print(f"{args.config}: probing the scope link for up to {args.probe_s:g} s...", file=sys.stderr, flush=True)
        try:
            result = probe_source(cfg, args.probe_s)
        except (OSError, ValueError) as exc:
            findings.append(_finding(f"acquisition.{cfg.acquisition.source}", f"cannot open the link: {exc}"))
        else:
            print(f"{args.config}: {probe_line(cfg, result)}", file=sys.stderr)
            for line in probe_preview(result):
                print(f"    |{line}|", file=sys.stderr)
            for warning in result.warnings:
                print(f"{args.config}: probe: {warning}", file=sys.stderr)
            findings += probe_findings(cfg, checked, result, args.probe_s)
    for finding in findings:
        print(f"{args.config}: {'' if finding.error else 'warning: '}{finding}", file=sys.stderr)
    if any(f.error for f in findings):
        return 1
    rois = checked.rois
    seen = f", {rois.n_rois} ROIs for {rois.height}x{rois.width} frames" if rois else ""
    print(f"{args.config}: OK (rig {cfg.rig.name!r}, source {cfg.acquisition.source!r}{seen}, "
          f"reward port {cfg.reward.port!r})")
    return 0


def _finding(key: str, message: str):  # noqa: ANN202 - rig.app.checks.Finding, imported lazily
    from rig.app.checks import Finding  # noqa: PLC0415

    return Finding(key, message)


def platform_problems(cfg, platform: str) -> list[str]:  # noqa: ANN001 - RigConfig, imported lazily
    """:func:`rig.app.checks.platform_problems` (kept importable from here)."""
    from rig.app.checks import platform_problems as problems  # noqa: PLC0415

    return problems(cfg, platform)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rig", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a closed-loop session (simulated, replayed or live)",
                         description="Check the config as `rig check` does (a refused start says why in one line "
                                     "and exits 2), start every process of the rig, run the session, save it, print "
                                     "a JSON summary as the last stdout line. Warnings and errors of every process "
                                     "are printed on stderr as they happen. Ctrl-C ends the session cleanly with "
                                     "data saved, as do SIGTERM, Ctrl-Break and closing the console window "
                                     "(Windows). Exit 0 only when the summary says ok: a failed process, no frame, "
                                     "every frame bad, a failed calibration or a session with no trial exits 1 "
                                     "(the reasons are in the summary's problems). A session on a real scope needs "
                                     "[session] mouse_id (or --set session.mouse_id=M123).")
    run.add_argument("config", help="rig description, e.g. hardware_configs/sim.toml")
    run.add_argument("--headless", action="store_true",
                     help="no console window; the protocol runs by itself (baseline -> calibrate -> BCI). "
                          "Without a display this is the default.")
    run.add_argument("--no-review", action="store_true",
                     help="with the console: exit when the session ends instead of keeping the finished session "
                          "open for review (click any ROI for its F, dF/F and trial events)")
    run.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                     help="end the session this many seconds after every process is running (default: until "
                          "Ctrl-C or the task ends); shorter than the baseline and two trials is warned at start")
    run.add_argument("--record-only", action="store_true",
                     help="record frames only (session.record_only, with save_frames on): the movie, and "
                          "previews on the bus for `rig console`; no ROIs, decoder, reward, feedback, calibration "
                          "or console window. The first "
                          "baseline on a new field, for `rig detect SESSION`; the summary says \"kind\": "
                          "\"recording\" (docs/DETECT.md)")
    run.add_argument("--sessions-dir", default=None, metavar="DIR",
                     help="where to create the session folder (default: [rig] sessions_dir of the config)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config value for this session, e.g. --set task.baseline_s=30 or --set "
                          "session.mouse_id=M123 (repeatable; values are TOML, bare words are strings). PATHS GIVEN "
                          "WITH --set ARE RELATIVE TO THE CURRENT DIRECTORY, like any path typed on a command line "
                          "(paths written in the config file are relative to the file's folder)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate a rig config and say what is wrong",
                           description="Load and validate a rig TOML (errors name the file, key, value and what "
                                       "is expected), then load what it points at and cross-check it: the files "
                                       "exist; the frame size is the suite2p folder's (ops Ly x Lx); the ensemble "
                                       "indices address its ROIs (iscell-filtered with only_cells); the baseline "
                                       "lasts the trial lengths calibration needs; buffers fit in memory; "
                                       "heartbeats leave room for a stall; the valve calibration loads and the "
                                       "serial port exists; it works on this OS. `rig run` refuses what this "
                                       "reports as an error. Exit 0: OK (warnings allowed), 1: errors, 2: the file "
                                       "is not a valid config. --probe also opens the scope link.")
    check.add_argument("config", help="rig description, e.g. hardware_configs/sim.toml")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="as for rig run (paths relative to the current directory)")
    check.add_argument("--probe", action="store_true",
                       help="open the scope link as a session would (listen, bind or connect) and wait for frames: "
                            "reports frames/s and frame size seen; no frame within --probe-s is an error")
    check.add_argument("--probe-s", type=float, default=5.0, metavar="SECONDS",
                       help="how long --probe waits for a first frame (default 5)")
    check.set_defaults(func=_cmd_check)

    for module_name in PLUGIN_MODULES:
        importlib.import_module(module_name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
