"""``rig sim --export DIR --frames N``: write a synthetic two-photon movie with its ground truth."""

from __future__ import annotations

import argparse
import json
import sys

import msgspec

from acquisition.sim.config import SimConfig
from acquisition.sim.export import export_movie
from rig.app.sim_learn_cli import register_learn
from rig.app.sim_session_cli import register_session


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sim`` subcommand to the ``rig`` command line."""
    p = subparsers.add_parser(
        "sim",
        help="write a simulated two-photon movie with its ground truth (TIFF + suite2p binary)",
        description="Render N frames of the simulated scope as fast as possible into DIR: movie.tif, "
        "suite2p/plane0/data.bin with the true ROIs (stat/iscell/ops.npy) and ground_truth.npz "
        "(true shifts, fluorescence, spikes). The last stdout line is a JSON summary.",
    )
    p.add_argument("--export", metavar="DIR", help="output folder (created if missing); required")
    p.add_argument("--frames", metavar="N", type=int, help="number of frames to render; required")
    p.add_argument(
        "--config",
        metavar="TOML",
        help="rig config whose [acquisition.sim] table and acquisition.frame_rate_hz are used",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set acquisition.sim.n_cells=50 (repeatable; as for rig run)",
    )
    p.add_argument("--seed", type=int, help="override the simulation seed")
    p.add_argument("--fps", type=float, help="override the frame rate (default: the config's, else 30 Hz)")
    p.add_argument("--up", type=int, nargs="*", default=[], help="cells the simulated mouse treats as 'up'")
    p.add_argument("--down", type=int, nargs="*", default=[], help="cells the simulated mouse treats as 'down'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--z-drift-um", type=float, metavar="D",
                   help="slow focal-plane drift, peak-to-peak um over the movie (ground_truth.npz z_um per frame)")
    p.add_argument("--zstack", action="store_true",
                   help="also write zstack.tif: planes every --zstack-step-um um within +-30 um of the focal plane")
    p.add_argument("--zstack-step-um", type=float, default=1.0, metavar="UM", help="z-stack plane spacing (1 um)")
    p.set_defaults(func=run_cli)
    others = p.add_subparsers(dest="sim_command", title="other simulations", metavar="learn|session")
    register_learn(others)
    register_session(others)


def _load(args: argparse.Namespace) -> tuple[SimConfig, float]:
    # rig.app.config pulls in every package's config: import it only when the command runs
    from rig.app.config import apply_overrides, config_from_dict, load_config  # noqa: PLC0415

    if args.config is None:
        rig_cfg = config_from_dict(apply_overrides({}, args.set), "--set")
    else:
        rig_cfg = load_config(args.config, args.set)
    cfg, fps = rig_cfg.acquisition.sim, rig_cfg.acquisition.frame_rate_hz
    if args.seed is not None:
        cfg = msgspec.structs.replace(cfg, seed=args.seed)
    if args.fps is not None:
        fps = args.fps
    if args.z_drift_um is not None:  # D is peak-to-peak over this movie: one half-cosine sweep of its length
        cfg = msgspec.structs.replace(cfg, z_drift_um=args.z_drift_um, z_drift_period_s=args.frames / fps)
        cfg.__post_init__()
    return cfg, fps


def run_cli(args: argparse.Namespace) -> int:
    from rig.app.config import ConfigError  # noqa: PLC0415

    if args.export is None or args.frames is None:
        print("rig sim: --export DIR and --frames N are required (or: rig sim learn --help)", file=sys.stderr)
        return 2
    if args.frames < 1:
        print(f"rig sim: --frames must be >= 1 (got {args.frames})", file=sys.stderr)
        return 2
    if args.fps is not None and args.fps <= 0:
        print(f"rig sim: --fps must be > 0 (got {args.fps})", file=sys.stderr)
        return 2
    try:
        cfg, fps = _load(args)
        summary = export_movie(
            cfg, args.export, args.frames, fps, up=args.up, down=args.down, progress=not args.no_progress,
            zstack=args.zstack, zstack_step_um=args.zstack_step_um,
        )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"rig sim: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 2
    print(json.dumps(summary), flush=True)
    return 0
