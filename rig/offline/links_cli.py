"""`rig link`: show, suggest and write dendrite -> soma links (``roi_kind.npy`` / ``roi_parent.npy``).

Two kinds of input. A session folder: every plane's ``rois/`` (the session's copy, rows = the ROIs it extracted
first) and ``frames.rec`` (activity, matched by volume number). Or suite2p plane folders, the BCI plane's
first (or ``--bci``): their ``stat.npy``, and ``F.npy``/``Fneu.npy`` for activity when every folder has them.
The suggestion is :func:`gui.link_match.suggest_links`; ``--write`` stores it in the dendrite planes' folders
(never the BCI plane's). A simulator's ``ground_truth.npz`` next to a plane is used to say how many
suggestions are right. Last stdout line: JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.rois import (
    DENDRITE,
    KIND_FILE,
    PARENT_FILE,
    SOMA,
    RoiFileError,
    RoiSet,
    find_plane_folder,
    load_suite2p,
)
from gui.link_match import LinkParams, LinkSuggestion, suggest_links
from rig.core.safe_npy import NpyFileError, load_npy
from rig.offline.session_checks import SessionError


@dataclass
class LinkPlane:
    """One plane as `rig link` sees it: rows are its rois folder's ``stat.npy`` rows."""

    plane: int
    folder: Path  # where roi_kind.npy / roi_parent.npy live
    roi_set: RoiSet  # as loaded, not filtered
    usable: np.ndarray  # bool per row: may be linked (extracted / a cell)
    traces: np.ndarray | None  # (rows, volumes), aligned across planes; None: no activity
    truth_parent: np.ndarray | None  # simulator truth per row (soma row), None: unknown


def session_planes(path: Path) -> tuple[list[LinkPlane], int]:
    """The planes of a session folder, activity from each plane's frames.rec on the volumes all planes have."""
    from rig.offline.session_data import load_session  # noqa: PLC0415
    from rig.offline.session_planes import load_planes  # noqa: PLC0415

    session = load_session(path)
    if session.n_planes < 2:
        raise SessionError(f"{path}: a single-plane session (n_planes = 1): there is no other plane to link")
    records = load_planes(session, with_rois=False)  # the links may be what is wrong: read them raw
    planes = []
    for p in records:
        rois_dir = p.folder / "rois"
        roi_set = _load(rois_dir)
        if p.frames is None:
            raise SessionError(f"{p.folder / 'frames.rec'}: missing: plane {p.plane} recorded nothing")
        if p.n_rois > roi_set.n_rois:
            raise SessionError(f"{p.folder / 'frames.rec'} has {p.n_rois} columns but {rois_dir} only "
                               f"{roi_set.n_rois} ROIs")
        usable = np.arange(roi_set.n_rois) < p.n_rois  # extracted ROIs come first in a session's rois/
        truth = _truth_parent(p.folder / "sim_truth" / "ground_truth.npz", roi_set.n_rois)
        planes.append(LinkPlane(p.plane, rois_dir, roi_set, usable, None, truth))
    frames = [p.frames for p in records]
    volumes = frames[0]["frame"]
    for rows in frames[1:]:
        volumes = np.intersect1d(volumes, rows["frame"])
    for lp, rows in zip(planes, frames, strict=True):
        pick = np.isin(rows["frame"], volumes)
        coef = float(lp.roi_set.ops.get("neuropil_coefficient", 0.7))
        corrected = (rows["F"][pick] - coef * rows["Fneu"][pick]).T.astype(np.float64)
        lp.traces = np.full((lp.roi_set.n_rois, corrected.shape[1]), np.nan)
        lp.traces[:corrected.shape[0]] = corrected
    return planes, session.bci_plane


def folder_planes(folders: list[Path], bci: int) -> tuple[list[LinkPlane], int]:
    """suite2p plane folders (plane k = the k-th folder), activity from F.npy/Fneu.npy when all have them."""
    planes = []
    for k, folder in enumerate(folders):
        plane_dir = find_plane_folder(folder)
        roi_set = _load(plane_dir)
        truth = _truth_parent(plane_dir.parent.parent / "ground_truth.npz", roi_set.n_rois)
        planes.append(LinkPlane(k, plane_dir, roi_set, roi_set.iscell[:, 0] > 0.5, _npy_traces(plane_dir, roi_set),
                                truth if k != bci else None))
    lengths = {p.traces.shape[1] for p in planes if p.traces is not None}
    if any(p.traces is None for p in planes) or len(lengths) != 1:
        for p in planes:
            p.traces = None
    if not 0 <= bci < len(planes):
        raise SessionError(f"--bci {bci}: there are {len(planes)} folders (0..{len(planes) - 1})")
    return planes, bci


def dendrite_rows(plane: LinkPlane) -> np.ndarray:
    """The rows to link: the usable dendrites (kind 1), or every usable ROI when the plane marks none."""
    dend = np.flatnonzero(plane.usable & (np.asarray(plane.roi_set.kind) == DENDRITE))
    return dend if dend.size else np.flatnonzero(plane.usable)


def suggest_plane(plane: LinkPlane, bci: LinkPlane, params: LinkParams, use_traces: bool) -> LinkSuggestion:
    """The suggestion for one dendrite plane (:func:`dendrite_rows`) against the BCI plane's usable somata."""
    dend = dendrite_rows(plane)
    soma = np.flatnonzero(bci.usable & (np.asarray(bci.roi_set.kind) == SOMA))
    traces = use_traces and plane.traces is not None and bci.traces is not None
    return suggest_links(plane.roi_set.stat, bci.roi_set.stat,
                         _finite(plane.traces, dend) if traces else None,
                         _finite(bci.traces, soma) if traces else None, params, dend, soma)


def _finite(traces: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """Rows not considered may be NaN (not extracted): zero them, they are never candidates."""
    assert traces is not None
    out = np.zeros_like(traces)
    out[rows] = traces[rows]
    return out


def write_links(plane: LinkPlane, suggestion: LinkSuggestion) -> Path:
    """Store the suggestion: the linked ROIs (:func:`dendrite_rows`) become dendrites with the suggested parent
    (-1: none); the other rows keep what the folder said."""
    rows = dendrite_rows(plane)
    kind = np.array(plane.roi_set.kind, np.int8)
    parent = np.array(plane.roi_set.parent, np.int32)
    kind[rows] = DENDRITE
    parent[rows] = suggestion.parent[rows]
    np.save(plane.folder / KIND_FILE, kind)
    np.save(plane.folder / PARENT_FILE, parent)
    return plane.folder


def _load(folder: Path) -> RoiSet:
    try:
        return load_suite2p(folder)
    except RoiFileError as exc:
        raise SessionError(str(exc)) from exc


def _npy_traces(plane_dir: Path, roi_set: RoiSet) -> np.ndarray | None:
    if not ((plane_dir / "F.npy").is_file() and (plane_dir / "Fneu.npy").is_file()):
        return None
    try:
        F, Fneu = (np.asarray(load_npy(plane_dir / n, allow_objects=False), np.float64) for n in ("F.npy", "Fneu.npy"))
    except NpyFileError as exc:
        raise SessionError(str(exc)) from exc
    if F.shape != Fneu.shape or F.ndim != 2 or F.shape[0] != roi_set.n_rois:
        raise SessionError(f"{plane_dir}: F.npy {F.shape} / Fneu.npy {Fneu.shape} do not hold one trace per ROI of "
                           f"stat.npy ({roi_set.n_rois})")
    return F - float(roi_set.ops.get("neuropil_coefficient", 0.7)) * Fneu


def _truth_parent(path: Path, n_rows: int) -> np.ndarray | None:
    """A simulator's per-dendrite parent soma (ground_truth.npz ``parent``), when it covers these rows."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as truth:
        if "parent" not in truth.files:
            return None
        parent = np.asarray(truth["parent"], np.int64).reshape(-1)
    return parent if parent.size == n_rows else None


def _params(args: argparse.Namespace) -> LinkParams:
    try:
        dy, dx = (float(v) for v in args.offset.split(","))
        return LinkParams(offset_yx=(dy, dx), max_distance_px=args.max_distance, sigma_px=args.sigma,
                          w_corr=args.w_corr, min_score=args.min_score, max_per_soma=args.max_per_soma)
    except ValueError as exc:
        raise SessionError(f"bad suggestion limits: {exc} (--offset is DY,DX in pixels, e.g. 0,-3)") from exc


def _cmd_link(args: argparse.Namespace) -> int:
    if args.write and not args.suggest:
        print("rig link: --write stores a suggestion: add --suggest", file=sys.stderr)
        return 2
    paths = [Path(p) for p in args.paths]
    try:
        if len(paths) == 1 and (paths[0] / "acquisition").is_dir():
            planes, bci = session_planes(paths[0])
        elif len(paths) >= 2:
            planes, bci = folder_planes(paths, args.bci)
        else:
            raise SessionError(f"{paths[0]}: not a session folder (no acquisition/); give a session, or two or more "
                               "suite2p plane folders (the BCI plane's first)")
        summary = run_link(planes, bci, args)
    except (SessionError, RoiFileError, ValueError) as exc:
        print(f"rig link: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def run_link(planes: list[LinkPlane], bci: int, args: argparse.Namespace) -> dict[str, Any]:
    """Print each dendrite plane's links (current, or suggested), write them if asked; the JSON summary."""
    summary: dict[str, Any] = {"bci_plane": bci, "planes": {}, "written": []}
    params = _params(args) if args.suggest else None
    for plane in planes:
        if plane.plane == bci:
            continue
        current = np.asarray(plane.roi_set.parent)
        info: dict[str, Any] = {"rois": plane.roi_set.n_rois, "dendrites": int(np.sum(plane.roi_set.kind == DENDRITE)),
                                "linked": int(np.sum(current >= 0))}
        if params is None:
            print(f"plane {plane.plane} ({plane.folder}): {info['dendrites']} dendrites, {info['linked']} linked")
            for d in np.flatnonzero(current >= 0):
                print(f"  dendrite {d:4d} -> soma {current[d]}")
            summary["planes"][str(plane.plane)] = info
            continue
        suggestion = suggest_plane(plane, planes[bci], params, not args.no_traces)
        print_table(plane, suggestion, args.top)
        linked = suggestion.parent >= 0
        info.update(suggested=int(linked.sum()), considered=sum(1 for c in suggestion.candidates if c),
                    changed=int(np.sum(linked & (suggestion.parent != current))),
                    traces=not args.no_traces and plane.traces is not None and planes[bci].traces is not None)
        if plane.truth_parent is not None:
            truth = plane.truth_parent
            info["truth_agreement"] = round(float(np.mean(suggestion.parent == truth)), 4)
            info["truth_wrong"] = int(np.sum(linked & (suggestion.parent != truth)))
        if args.write:
            summary["written"].append(str(write_links(plane, suggestion)))
            print(f"wrote {plane.folder / KIND_FILE} and {PARENT_FILE}", file=sys.stderr)
        summary["planes"][str(plane.plane)] = info
    return summary


def print_table(plane: LinkPlane, suggestion: LinkSuggestion, top: int) -> None:
    rows = suggestion.table()
    print(f"plane {plane.plane} ({plane.folder}): {int(np.sum(suggestion.parent >= 0))} of {len(rows)} dendrites "
          "linked")
    print(f"  {'dendrite':>8} {'soma':>5} {'score':>6} {'dist':>5} {'overlap':>7} {'corr':>6} {'next':>5} "
          f"{'nscore':>6} {'now':>5}" + (f" {'truth':>5}" if plane.truth_parent is not None else ""))
    for row in rows[:top] if top > 0 else rows:
        d = row["dendrite"]
        cells = [f"{d:>8}", f"{row['soma']:>5}", _cell(row["score"], 6), _cell(row["distance_px"], 5),
                 _cell(row["overlap"], 7), _cell(row["corr"], 6), _cell(row["next_soma"], 5),
                 _cell(row["next_score"], 6), f"{int(plane.roi_set.parent[d]):>5}"]
        if plane.truth_parent is not None:
            cells.append(f"{int(plane.truth_parent[d]):>5}")
        print("  " + " ".join(cells))
    if top > 0 and len(rows) > top:
        print(f"  ... {len(rows) - top} more (--top 0 lists all)")


def _cell(value: Any, width: int) -> str:
    return f"{'-' if value is None else value:>{width}}"


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "link", help="dendrite -> soma links across planes: show them, suggest them (--suggest), save them (--write)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A dendrite ROI on another plane is linked to its soma on the BCI plane by roi_kind.npy "
                    "(0 soma, 1 dendrite) and roi_parent.npy (the soma's row in the BCI plane's stat.npy, -1 none) "
                    "in the dendrite plane's folder (docs/PLANES.md). Without --suggest: list the links there.\n"
                    "--suggest ranks the BCI plane's somata for each dendrite by x-y proximity/overlap (after "
                    "--offset) and, when activity is at hand, by correlation (relative to the dendrite's best "
                    "soma), then links greedily, best score first, each soma at most --max-per-soma times.\n"
                    "--write saves the suggestion into the dendrite planes' folders (then `rig run` uses it, or "
                    "`rig dendrites`/`rig export` on a session).\n\n"
                    "  rig link SESSION --suggest               a recorded session: ROIs and activity of every "
                    "plane\n"
                    "  rig link s2p/plane0 s2p/plane1 --suggest --write   suite2p folders (F.npy/Fneu.npy for "
                    "activity)\n"
                    "  [[acquisition.rois.links]] plane=1, roi=4, soma=12   or link by hand in the config\n"
                    "With a simulator's ground truth the table shows the true parent and the JSON "
                    "truth_agreement. Last stdout line: JSON.")
    p.add_argument("paths", nargs="+", metavar="SESSION_OR_PLANE_FOLDER",
                   help="a session folder, or suite2p plane folders (plane k = the k-th; the BCI plane's with --bci)")
    p.add_argument("--suggest", action="store_true", help="suggest links (proximity + correlated activity)")
    p.add_argument("--write", action="store_true", help="save the suggestion as roi_kind.npy/roi_parent.npy")
    p.add_argument("--bci", type=int, default=0, help="with folders: which one is the BCI plane (default 0)")
    p.add_argument("--offset", default="0,0", metavar="DY,DX",
                   help="where a dendrite lies relative to its soma, px (the planes' lateral shift; default 0,0)")
    p.add_argument("--max-distance", type=float, default=LinkParams.max_distance_px, metavar="PX",
                   help=f"farthest candidate soma after the offset (default {LinkParams.max_distance_px:g})")
    p.add_argument("--sigma", type=float, default=LinkParams.sigma_px, metavar="PX",
                   help=f"length scale of the x-y score (default {LinkParams.sigma_px:g}: the trunk's tilt)")
    p.add_argument("--w-corr", type=float, default=LinkParams.w_corr,
                   help=f"weight of correlated activity in the score, 0..1 (default {LinkParams.w_corr:g})")
    p.add_argument("--min-score", type=float, default=LinkParams.min_score,
                   help=f"a dendrite whose best score is lower stays unlinked (default {LinkParams.min_score:g})")
    p.add_argument("--max-per-soma", type=int, default=LinkParams.max_per_soma,
                   help=f"dendrites one soma may receive (default {LinkParams.max_per_soma})")
    p.add_argument("--no-traces", action="store_true", help="x-y only, ignore activity")
    p.add_argument("--top", type=int, default=30, help="rows of each table (default 30; 0: all)")
    p.set_defaults(func=_cmd_link)
