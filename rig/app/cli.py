"""``rig``: the command line of bci-rig. ``rig --help`` lists the commands; each has its own --help."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import msgspec

from rig.app.config import ConfigError

DESCRIPTION = """\
bci-rig: real-time closed-loop BCI for two-photon rigs.

Typical morning:
  rig check hardware_configs/my_scope.toml      validate the rig description
  rig valve pulse hardware_configs/my_scope.toml one test drop: is the line primed?
  rig run hardware_configs/my_scope.toml         run the session with the console
After the session (SESSION is the folder rig run printed):
  rig report SESSION                             one-page HTML report with plots
  rig replay SESSION                             re-decide every frame offline and compare
  rig export SESSION --nwb session.nwb           NWB for sharing and analysis
Try everything without a microscope:
  rig run hardware_configs/sim.toml --headless --duration 60
  rig bench                                      how fast is this PC?
"""

#: Packages that add their own subcommands with ``register_cli(subparsers)``.
PLUGIN_MODULES = (
    "acquisition.offline",
    "rig.app.sim_cli",
    "rig.app.valve_cli",
    "rig.offline.session_cli",
    "rig.offline.bench",
    "rig.app.console_cli",
)


def _cmd_run(args: argparse.Namespace) -> int:
    from rig.app.supervisor import SessionFailed, Supervisor, has_display  # noqa: PLC0415

    if not args.headless and not has_display():
        print("[rig] no display found: running headless (baseline -> calibration -> BCI run by themselves)",
              file=sys.stderr, flush=True)
        args.headless = True
    try:
        sup = Supervisor(args.config, headless=args.headless, duration_s=args.duration,
                         sessions_root=args.sessions_dir, overrides=args.set)
    except (ConfigError, SessionFailed) as exc:
        print(f"rig run: {exc}", file=sys.stderr)
        return 2
    print(f"[rig] session folder: {sup.session_dir}", file=sys.stderr, flush=True)
    summary = sup.run()
    print(json.dumps(summary), flush=True)
    return 0 if summary.get("ok") else 1


def _cmd_check(args: argparse.Namespace) -> int:
    from rig.app.config import load_config  # noqa: PLC0415

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    problems = missing_files(cfg, Path(args.config).resolve().parent) + platform_problems(cfg, sys.platform)
    for problem in problems:
        print(f"{args.config}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.config}: OK (rig {cfg.rig.name!r}, source {cfg.acquisition.source!r}, "
          f"reward port {cfg.reward.port!r})")
    return 0


def missing_files(cfg, config_dir: Path) -> list[str]:  # noqa: ANN001 - RigConfig, imported lazily
    """Files the config names that a session would need and that are not there (checked before a session)."""
    problems = []
    acq = cfg.acquisition
    if acq.rois.suite2p_dir and not Path(acq.rois.suite2p_dir).exists():
        problems.append(f"[acquisition.rois.suite2p_dir]: {acq.rois.suite2p_dir} does not exist")
    if acq.source == "replay" and not Path(acq.replay.path).exists():
        problems.append(f"[acquisition.replay.path]: {acq.replay.path or '(empty)'} does not exist")
    if acq.registration.ref_path and not Path(acq.registration.ref_path).exists():
        problems.append(f"[acquisition.registration.ref_path]: {acq.registration.ref_path} does not exist")
    if cfg.reward.calibration_file:
        cal = Path(cfg.reward.calibration_file)
        cal = cal if cal.is_absolute() else config_dir / cal
        if not cal.exists():
            problems.append(f"[reward.calibration_file]: {cal} does not exist (run: rig valve calibrate CONFIG)")
    elif cfg.reward.port != "emulator":
        problems.append("[reward.calibration_file]: not set; a live session does not start without a valve "
                        "calibration (run: rig valve calibrate CONFIG)")
    return problems


def platform_problems(cfg, platform: str) -> list[str]:  # noqa: ANN001 - RigConfig, imported lazily
    """What the config asks for that cannot work on ``platform`` (a ``sys.platform`` value).

    A parameter, not read here, so that the Windows verdicts are tested on the Linux CI: most scope PCs run
    Windows, and a config written on a Linux analysis machine must be refused by ``rig check`` there, not
    fail halfway through starting a session.
    """
    problems = []
    if platform == "win32":
        if cfg.reward.emulator_transport == "pty":
            problems.append('[reward.emulator_transport]: "pty" does not exist on Windows (pseudo-terminals are '
                            'POSIX); use "socket" or "auto"')
        for key, value in _string_values(msgspec.to_builtins(cfg)):
            if value.lower().startswith("ipc://"):
                problems.append(f"[{key}]: {value}: ipc:// endpoints do not work on Windows; use tcp://127.0.0.1:PORT")
    return problems


def _string_values(node: object, key: str = "") -> list[tuple[str, str]]:
    """Every string in a config document with its dotted key (list items as ``key[i]``)."""
    if isinstance(node, str):
        return [(key, node)]
    if isinstance(node, dict):
        return [kv for name, value in node.items() for kv in _string_values(value, f"{key}.{name}" if key else name)]
    if isinstance(node, list):
        return [kv for i, value in enumerate(node) for kv in _string_values(value, f"{key}[{i}]")]
    return []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rig", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a closed-loop session (simulated, replayed or live)",
                         description="Start every process of the rig, run the session, save it, print a JSON summary "
                                     "as the last stdout line. Ctrl-C ends the session cleanly with data saved, as do "
                                     "SIGTERM, Ctrl-Break and closing the console window (Windows).")
    run.add_argument("config", help="rig description, e.g. hardware_configs/sim.toml")
    run.add_argument("--headless", action="store_true",
                     help="no console window; the protocol runs by itself (baseline -> calibrate -> BCI). "
                          "Without a display this is the default.")
    run.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                     help="end the session this many seconds after every process is running (default: until "
                          "Ctrl-C or the task ends)")
    run.add_argument("--sessions-dir", default=None, metavar="DIR",
                     help="where to create the session folder (default: [rig] sessions_dir of the config)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config value for this session, e.g. --set task.baseline_s=30 "
                          "(repeatable; values are TOML, bare words are strings)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate a rig config and say what is wrong",
                           description="Load and validate a rig TOML (errors name the file, key, value and what "
                                       "is expected), then check that the files it names exist and that what it "
                                       "asks for works on this OS (e.g. no pty or ipc:// on Windows).")
    check.add_argument("config", help="rig description, e.g. hardware_configs/sim.toml")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for rig run")
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
