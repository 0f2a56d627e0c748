"""``rig rank SUITE2P_DIR``: the detected cells ranked as BCI targets, a suggested up/down choice, and saving it.

The same logic as the console's ROI picker (:mod:`gui.ranking`, :mod:`gui.roi_folder`,
:mod:`gui.ensemble_file`), for a terminal or a script. With ``--write CONFIG`` the config's
``[acquisition.rois] suite2p_dir`` and ``[decoder] up``/``down`` are set in place, so the next ``rig run
CONFIG`` uses them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gui.ensemble_file import ConfigWriteError, write_choice
from gui.ranking import EnsembleChoiceError, RankSettings, cell_stats, check_choice, problems, suggest
from gui.roi_folder import RoiFolderError, load_roi_folder, traces
from rig.app.config import ConfigError, load_config


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROI numbers separated by commas, e.g. 3,7,12 (got {text!r})") \
            from None


def _settings(cfg: Any) -> RankSettings:
    """The ranking reads F as the decoder will: its neuropil coefficient, F0 percentile and floor."""
    if cfg is None:
        return RankSettings()
    return RankSettings(neuropil_coef=cfg.decoder.neuropil_coef, f0_percentile=cfg.decoder.f0_percentile,
                        f0_floor=cfg.decoder.f0_floor, min_distance_px=cfg.detect.suggest_min_distance_px,
                        max_corr=cfg.detect.suggest_max_corr)


def run_picker(folder: str, config: str | None) -> int:
    """Open the ROI picker (:mod:`gui.roi_picker`) on a detection folder, or a session's ``detect/``."""
    from PyQt6 import QtWidgets  # noqa: PLC0415 - Qt only when a window is asked for

    from gui.roi_picker import RoiPicker  # noqa: PLC0415

    path = Path(folder)
    if (path / "session.json").is_file() and (path / "detect").is_dir():
        path = path / "detect"
    try:
        cfg = load_config(config) if config else None
        rf = load_roi_folder(path)
    except (RoiFolderError, ConfigError) as exc:
        print(f"rig: {exc}", file=sys.stderr)
        return 2
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0] or "rig-picker"])
    window = RoiPicker(rf, config=config, settings=_settings(cfg),
                       diameter_px=cfg.detect.diameter_px if cfg else 12.0,
                       only_cells=cfg.acquisition.rois.only_cells if cfg else True)
    window.resize(1200, 700)
    window.show()
    return int(app.exec())


def _cmd_rank(args: argparse.Namespace) -> int:
    if args.gui:
        return run_picker(args.folder, args.write)
    try:
        cfg = load_config(args.write) if args.write else None
        settings = _settings(cfg)
        rf = load_roi_folder(args.folder)
        if rf.n == 0:
            raise RoiFolderError(f"{rf.plane}: no ROIs: run rig detect, or draw ROIs in the console")
        rows = rf.rig_rows(cfg.acquisition.rois.only_cells if cfg else True)
        if rows.size == 0:
            raise RoiFolderError(f"{rf.plane}: none of the {rf.n} ROIs is marked a cell (iscell), and the rig "
                                 "extracts only cells: mark them in the console's ROI picker")
        F, Fneu = traces(rf)
        stats = cell_stats(F[rows], Fneu[rows], rf.centers()[rows], rf.fs, settings)
        up, down = (args.up, args.down) if args.up is not None else suggest(stats, args.n_up, args.n_down, settings)
        down = down or []
        if args.up is None and (len(up) < args.n_up or len(down) < args.n_down):
            print(f"rig rank: note: suggest found {len(up)} up and {len(down)} down cells of the {args.n_up} and "
                  f"{args.n_down} asked: too few cells above the noise floor, {settings.min_distance_px:g} px apart "
                  f"and correlating less than {settings.max_corr:g} across ensembles ([detect] "
                  "suggest_min_distance_px, suggest_max_corr)", file=sys.stderr)
        for note in rf.notes:
            print(f"rig rank: note: {note}", file=sys.stderr)
        print(f"rig rank: {rows.size} ROIs the rig extracts (of {rf.n} in stat.npy); ROI = the rig's ROI number",
              file=sys.stderr)
        print(f"{'rank':>4} {'ROI':>4} {'stat':>5} {'score':>7} {'SNR':>6} {'events/min':>10} {'F0':>8} {'floor':>8}"
              "  role", file=sys.stderr)
        for k, roi in enumerate(stats.ranked()[: args.top]):
            role = "up" if roi in up else "down" if roi in down else ""
            print(f"{k + 1:>4} {roi:>4} {rows[roi]:>5} {stats.score[roi]:>7.1f} {stats.snr[roi]:>6.1f} "
                  f"{stats.event_rate_per_min[roi]:>10.1f} {stats.f0[roi]:>8.3g} {stats.noise_floor[roi]:>8.3g}"
                  f"  {role}", file=sys.stderr)
        found = problems(stats, up, down, settings)
        for line in found:
            print(f"rig rank: {line}", file=sys.stderr)
        check_choice(stats, up, down, settings)
        if args.write:
            record = {"members": {str(r): {"snr": round(float(stats.snr[r]), 2), "f0": float(stats.f0[r]),
                                           "events_per_min": round(float(stats.event_rate_per_min[r]), 1)}
                                  for r in up + down}}
            write_choice(args.write, rf.plane, up, down, record)
            print(f"rig rank: {args.write}: suite2p_dir, decoder.up = {up}, decoder.down = {down} written; "
                  f"check it with: rig check {args.write}", file=sys.stderr)
    except (RoiFolderError, ConfigError, ConfigWriteError, EnsembleChoiceError, ValueError, OSError) as exc:
        print(f"rig rank: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"suite2p_dir": str(rf.plane), "rois": int(rows.size), "up": up, "down": down,
                      "warnings": len(found), "written": bool(args.write)}), flush=True)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rank", help="rank detected cells as BCI targets, suggest up/down ensembles, save them in a config",
        description="Rank the ROIs of a suite2p folder (rig detect's output) by what makes a good BCI target: SNR "
                    "(99th percentile of the neuropil-corrected F above its median, in noise sd), calcium events "
                    "per minute, and F0 above the noise floor (the larger of decoder.f0_floor and 3 noise sd: a "
                    "ROI below it scores 0 and is refused in an ensemble). The suggestion picks the best cells, "
                    "at least [detect] suggest_min_distance_px apart (20) and with up cells correlating below "
                    "[detect] suggest_max_corr (0.3) with down cells. The console's ROI picker "
                    "(--gui, or rig console --pick SUITE2P_DIR) does the same with a mouse, and draws, moves and "
                    "deletes ROIs. Last stdout line: JSON.")
    p.add_argument("folder", metavar="SUITE2P_DIR", help="rig detect's suite2p/plane0 folder (or its parent)")
    p.add_argument("--n-up", type=int, default=4, help="suggested up ensemble size (default 4)")
    p.add_argument("--n-down", type=int, default=4, help="suggested down ensemble size (default 4; 0 for one)")
    p.add_argument("--up", type=_ints, default=None, metavar="I,J,...", help="your own up ensemble instead")
    p.add_argument("--down", type=_ints, default=None, metavar="I,J,...", help="your own down ensemble")
    p.add_argument("--top", type=int, default=20, help="rows of the table (default 20)")
    p.add_argument("--write", default=None, metavar="CONFIG.toml",
                   help="write suite2p_dir and the ensembles into this rig config (its decoder settings also "
                        "set the noise floor); the next rig run CONFIG uses them")
    p.add_argument("--gui", action="store_true",
                   help="open the ROI picker window instead (the choice is saved into --write CONFIG)")
    p.set_defaults(func=_cmd_rank)
