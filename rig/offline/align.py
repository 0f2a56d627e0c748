"""``rig align TODAY --to PREVIOUS``: find yesterday's cells in today's field of view and carry the ROIs over.

Why: learning takes days, so every session must read the same neurons. This command estimates the
shift/rotation (optionally scale) between the two references (acquisition.align), moves every previous ROI
into today's field, judges each one (how much of it is still in view, how well the tissue around it matches)
and writes today's ROI folder in suite2p layout, with the kept ROIs as cells and the lost ones as non-cells.
It never carries over silently: fields that do not match are refused with the numbers, and the ensemble
cells that would be lost are named.

TODAY and PREVIOUS are each a session folder (``acquisition/rois/`` with its ``reference.npy``, the config), a
suite2p folder (``refImg``/``meanImg`` in ``ops.npy``) or a reference image (.npy / 1-page .tif; PREVIOUS then
has no ROIs to carry). Output folder (``--out``)::

    suite2p/plane0/{stat,iscell,ops}.npy    the moved ROIs, today's reference as refImg
    align.json                              the transform, per-ROI table, ensembles, stage move (the console reads it)
    today_ref.npy, previous_in_today.npy    the two references in today's frame (the console's blend / flicker)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.align import (
    Alignment,
    AlignmentError,
    Similarity,
    estimate_transform,
    highpass,
    local_correlation,
    warp_image,
    warp_roi,
)
from acquisition.pipeline import load_reference_image
from acquisition.rois import RoiFileError, RoiSet, find_plane_folder, load_suite2p
from rig.app.config import ConfigError
from rig.core.store import write_json_atomic


@dataclass
class Field:
    """One side of the alignment: its reference image, its ROIs (if any), its ensembles (ROI indices)."""

    label: str
    reference: np.ndarray
    rois: RoiSet | None = None
    ensembles: dict[str, list[int]] = field(default_factory=dict)
    pixel_size_um: float = 0.0


def _session_config(folder: Path) -> dict[str, Any]:
    """The session's config: ``config.resolved.json`` (every default filled in), else ``config.toml``, else empty."""
    resolved = folder / "config.resolved.json"
    if resolved.is_file():
        try:
            return dict(json.loads(resolved.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise RoiFileError(f"{resolved}: not valid JSON ({exc})") from exc
    path = folder / "config.toml"
    if not path.is_file():
        return {}
    with open(path, "rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise RoiFileError(f"{path}: not valid TOML ({exc})") from exc


def _pixel_size(acq: dict[str, Any]) -> float:
    """``acquisition.pixel_size_um``, else the simulated scope's own when the source is the simulator."""
    pixel = float(acq.get("pixel_size_um", 0.0) or 0.0)
    if not pixel and acq.get("source", "sim") == "sim":
        pixel = float(acq.get("sim", {}).get("pixel_size_um", 0.0) or 0.0)
    return pixel


def load_field(path: str | Path) -> Field:
    """A session folder, a suite2p folder or a reference image, as a :class:`Field`."""
    path = Path(path)
    if path.is_file():
        return Field(str(path), load_reference_image(path))
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if (path / "session.json").is_file():  # a session folder: acquisition/rois/ holds the ROI set it extracted
        roi_dir = path / "acquisition" / "rois"
        if not roi_dir.is_dir():
            raise RoiFileError(f"{path}: a session folder without acquisition/rois/ (the session never started?)")
        rois = load_suite2p(roi_dir).cells_only()
        ref_path = roi_dir / "reference.npy"
        reference = load_reference_image(ref_path) if ref_path.is_file() else rois.ref_img
        cfg = _session_config(path)
        dec = cfg.get("decoder", {})
        ensembles = {k: [int(i) for i in dec.get(k, [])] for k in ("up", "down") if dec.get(k)}
        pixel = _pixel_size(cfg.get("acquisition", {}))
    else:
        rois = load_suite2p(find_plane_folder(path)).cells_only()
        reference, ensembles, pixel = rois.ref_img, {}, 0.0
    if reference is None:
        reference = rois.mean_img
    if reference is None:
        raise RoiFileError(f"{path}: no reference image (no acquisition/rois/reference.npy, refImg or meanImg)")
    return Field(str(path), np.asarray(reference, np.float32), rois, ensembles, pixel)


@dataclass
class RoiJudgement:
    index: int  # the ROI's index in the previous session's extracted (cell) ROIs
    in_view: float  # fraction of its weight inside today's field
    local_corr: float  # correlation of the two references around it, after the transform
    kept: bool
    today_index: int | None  # its index among today's cells (None: lost)
    iou_today: float | None = None  # best overlap (intersection / union) with one of today's own ROIs, if any
    match_today: int | None = None  # that ROI's index in today's ROI set


@dataclass
class AlignResult:
    alignment: Alignment
    rois: list[RoiJudgement]
    ensembles: dict[str, dict[str, Any]]
    out: Path | None
    stage_um: tuple[float, float] | None

    @property
    def ensembles_ok(self) -> bool:
        return all(not e["lost"] for e in self.ensembles.values())

    def summary(self) -> dict[str, Any]:
        tf = self.alignment.transform
        out: dict[str, Any] = {
            "dy": round(tf.dy, 3), "dx": round(tf.dx, 3), "rotation_deg": round(tf.rotation_deg, 3),
            "scale": round(tf.scale, 4), "corr": round(self.alignment.corr, 3),
            "corr_unaligned": round(self.alignment.corr_unaligned, 3),
            "rois_kept": sum(r.kept for r in self.rois), "rois_lost": sum(not r.kept for r in self.rois),
            "ensembles_ok": self.ensembles_ok,
            "ensembles_today": {k: e["today"] for k, e in self.ensembles.items()},
        }
        if self.stage_um is not None:
            out["stage_move_um"] = [round(self.stage_um[0], 2), round(self.stage_um[1], 2)]
        if self.out is not None:
            out["out"] = str(self.out)
        return out


def _moved_stat(roi: dict, moved: Any, Ly: int, Lx: int) -> dict:
    new = {k: v for k, v in roi.items() if not isinstance(v, np.ndarray) or v.ndim == 0}
    new.update(ypix=moved.ypix, xpix=moved.xpix, lam=moved.lam, npix=int(moved.ypix.size))
    if moved.soma is not None:
        new["soma_crop"] = moved.soma
    new["med"] = [int(np.median(moved.ypix)), int(np.median(moved.xpix))]
    return new


def _label_image(rois: RoiSet | None, shape: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray]:
    """Today's own ROIs as a label image (ROI index + 1 per pixel, 0 elsewhere) and their pixel counts."""
    if rois is None or rois.n_rois == 0:
        return None, np.zeros(0, np.int64)
    labels = np.zeros(shape, np.int64)
    sizes = np.zeros(rois.n_rois, np.int64)
    for j, roi in enumerate(rois.stat):
        ys, xs = np.asarray(roi["ypix"], np.int64), np.asarray(roi["xpix"], np.int64)
        labels[ys, xs] = j + 1
        sizes[j] = ys.size
    return labels, sizes


def _best_overlap(ypix: np.ndarray, xpix: np.ndarray, labels: np.ndarray | None,
                  sizes: np.ndarray) -> tuple[float | None, int | None]:
    if labels is None or ypix.size == 0:
        return None, None
    hits = np.bincount(labels[ypix, xpix], minlength=sizes.size + 1)[1:]
    if not hits.any():
        return 0.0, None
    j = int(np.argmax(hits))
    return float(hits[j] / (ypix.size + sizes[j] - hits[j])), j


def carry_over(previous: Field, today: Field, *, min_corr: float = 0.3, min_in_view: float = 0.8,
               min_local_corr: float = 0.5, max_rotation_deg: float = 5.0, allow_scale: bool = False,
               pixel_size_um: float = 0.0, out: Path | None = None) -> AlignResult:
    """Align, judge every previous ROI, write today's ROI folder (when ``out``); raises AlignmentError on a mismatch."""
    al = estimate_transform(previous.reference, today.reference, max_rotation_deg=max_rotation_deg,
                            allow_scale=allow_scale, min_corr=min_corr)
    tf = al.transform
    Ly, Lx = today.reference.shape
    hp_today = highpass(today.reference)
    hp_moved = warp_image(highpass(previous.reference), tf)
    judged: list[RoiJudgement] = []
    kept_stat: list[dict] = []
    lost_stat: list[dict] = []
    stats = previous.rois.stat if previous.rois is not None else []
    today_labels, today_sizes = _label_image(today.rois, (Ly, Lx))
    for i, roi in enumerate(stats):
        soma = roi.get("soma_crop")
        soma = np.asarray(soma, bool) if soma is not None and np.shape(soma) == np.shape(roi["ypix"]) else None
        moved = warp_roi(roi["ypix"], roi["xpix"], roi["lam"], tf, (Ly, Lx), soma=soma)
        lc = local_correlation(hp_moved, hp_today, moved.ypix, moved.xpix)
        kept = moved.in_view >= min_in_view and math.isfinite(lc) and lc >= min_local_corr
        judged.append(RoiJudgement(i, moved.in_view, lc, kept, len(kept_stat) if kept else None,
                                   *_best_overlap(moved.ypix, moved.xpix, today_labels, today_sizes)))
        if moved.ypix.size:
            (kept_stat if kept else lost_stat).append(_moved_stat(roi, moved, Ly, Lx))
    ensembles: dict[str, dict[str, Any]] = {}
    for name, members in previous.ensembles.items():
        bad = [m for m in members if m >= len(judged)]
        if bad:
            raise RoiFileError(f"{previous.label}: ensemble {name!r} names ROI(s) {bad}, but it has {len(judged)} ROIs")
        ensembles[name] = {"previous": members, "lost": [m for m in members if not judged[m].kept],
                           "today": [judged[m].today_index for m in members if judged[m].kept]}
    pixel = pixel_size_um or today.pixel_size_um or previous.pixel_size_um
    # the field moved by (dy, dx): moving the stage by the same amount brings yesterday's cells back in place
    stage = (tf.dy * pixel, tf.dx * pixel) if pixel > 0 else None
    result = AlignResult(al, judged, ensembles, out, stage)
    if out is not None:
        _write(result, previous, today, kept_stat, lost_stat, hp_moved, pixel)
    return result


def _write(result: AlignResult, previous: Field, today: Field, kept: list[dict], lost: list[dict],
           hp_moved: np.ndarray, pixel: float) -> None:
    out = result.out
    assert out is not None
    Ly, Lx = today.reference.shape
    iscell = np.zeros((len(kept), 2))
    iscell[:] = 1.0
    ops = dict(previous.rois.ops) if previous.rois is not None else {}
    ops.update(Ly=Ly, Lx=Lx, aligned_from=previous.label)
    rois = RoiSet(stat=kept, iscell=iscell, Ly=Ly, Lx=Lx, ref_img=today.reference, ops=ops, excluded_stat=lost)
    rois.save_suite2p(out / "suite2p" / "plane0")
    moved_prev = warp_image(previous.reference, result.alignment.transform)
    np.save(out / "today_ref.npy", today.reference.astype(np.float32))
    np.save(out / "previous_in_today.npy", moved_prev.astype(np.float32))
    doc = result.summary()
    doc.update(previous=previous.label, today=today.label, pixel_size_um=pixel, overlap=result.alignment.overlap,
               ensembles=result.ensembles,
               rois=[{"index": r.index, "in_view": round(r.in_view, 3), "local_corr": round(r.local_corr, 3)
                      if math.isfinite(r.local_corr) else None, "kept": r.kept, "today_index": r.today_index,
                      "iou_today": None if r.iou_today is None else round(r.iou_today, 3), "match_today": r.match_today}
                     for r in result.rois])
    write_json_atomic(out / "align.json", doc)


def _default_out(today: str) -> Path:
    path = Path(today)
    return path / "aligned_rois" if path.is_dir() else path.with_name(path.stem + "_aligned_rois")


def run(args: argparse.Namespace) -> int:
    try:
        previous = load_field(args.to)
        today = load_field(args.today)
        if args.up is not None:
            previous.ensembles["up"] = list(args.up)
        if args.down is not None:
            previous.ensembles["down"] = list(args.down)
        if previous.rois is None:
            print(f"rig align: note: {previous.label} is an image without ROIs: only the transform is estimated",
                  file=sys.stderr)
        out = Path(args.out) if args.out else _default_out(args.today)
        pixel = args.pixel_size_um or config_pixel_size(args.config)
        result = carry_over(previous, today, min_corr=args.min_corr, min_in_view=args.min_in_view,
                            min_local_corr=args.min_local_corr, max_rotation_deg=args.max_rotation_deg,
                            allow_scale=args.scale, pixel_size_um=pixel,
                            out=out if previous.rois is not None or args.out else None)
    except (AlignmentError, RoiFileError, FileNotFoundError, ValueError, OSError, ConfigError) as exc:
        print(f"rig align: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 2
    tf = result.alignment.transform
    print(f"rig align: transform previous -> today: shift dy {tf.dy:+.2f} px, dx {tf.dx:+.2f} px, rotation "
          f"{tf.rotation_deg:+.2f} deg, scale {tf.scale:.4f}; correlation {result.alignment.corr:.2f} "
          f"(unaligned {result.alignment.corr_unaligned:.2f})", file=sys.stderr)
    if result.stage_um is not None:
        print(f"rig align: move the field of view by dy {result.stage_um[0]:+.1f} um, dx {result.stage_um[1]:+.1f} um "
              f"(in image axes) to put yesterday's cells back where they were", file=sys.stderr)
    else:
        print(f"rig align: no pixel size (--pixel-size-um, or acquisition.pixel_size_um in --config or the session's "
              f"config): the stage move is known only in pixels, dy {tf.dy:+.1f} px, dx {tf.dx:+.1f} px",
              file=sys.stderr)
    for r in result.rois:
        if args.verbose or not r.kept:
            match = "" if r.iou_today is None else f", overlap with today's ROI {r.match_today}: {r.iou_today:.2f}"
            print(f"rig align: ROI {r.index}: {'kept as ' + str(r.today_index) if r.kept else 'LOST'} "
                  f"(in view {r.in_view:.0%}, local correlation {r.local_corr:.2f}{match})", file=sys.stderr)
    if not result.ensembles and previous.rois is not None:
        print(f"rig align: note: no ensembles known for {previous.label} (give --up/--down, or align to a session "
              f"folder): ensembles_ok is true only because none was checked", file=sys.stderr)
    for name, e in result.ensembles.items():
        state = f"LOST {e['lost']}" if e["lost"] else "all kept"
        print(f"rig align: ensemble {name} {e['previous']}: {state}; today's indices {e['today']}", file=sys.stderr)
    print(json.dumps(result.summary()), flush=True)
    if args.show and result.out is not None:
        from gui.align_view import open_align_window  # noqa: PLC0415 - Qt only when a window is asked for

        open_align_window(result.out, pixel)
    return 0 if result.ensembles_ok else 1


def config_pixel_size(path: str) -> float:
    """``acquisition.pixel_size_um`` of a rig config (the simulated scope's own when the source is sim); 0 if none."""
    if not path:
        return 0.0
    from rig.app.config import load_config  # noqa: PLC0415 - pulls in every package's config

    acq = load_config(path).acquisition
    return acq.pixel_size_um or (acq.sim.pixel_size_um if acq.source == "sim" else 0.0)


DESCRIPTION = """\
Align today's field of view to a previous session's and carry its ROIs over. Estimates shift and
rotation (--scale: also magnification) between the two references, moves every previous ROI into today's
field, reports per ROI how much stays in view and how well the tissue around it matches, says which
ensemble cells are kept or lost, and writes today's ROI folder in suite2p layout (kept ROIs as cells, lost
ones as non-cells). Fields that do not match (another field of view, zoom or orientation) are refused
with the numbers. Last stdout line: JSON with dy, dx, rotation_deg, rois_kept, ensembles_ok.
Exit 0: aligned, every ensemble cell kept; 1: aligned but an ensemble cell is lost; 2: refused.

  rig align sessions/today_ref.tif --to sessions/20260101-120000 --out rois_today
"""


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align", help="align today's field of view to a previous session and carry its ROIs over",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("today", help="today: a reference image (.npy/.tif), a suite2p folder or a session folder")
    p.add_argument("--to", required=True, metavar="PREVIOUS", help="the previous session, suite2p folder or image")
    p.add_argument("--out", default="", metavar="DIR",
                   help="today's ROI folder (default: TODAY/aligned_rois, or next to a TODAY image)")
    p.add_argument("--up", type=int, nargs="*", default=None, help="up ensemble (default: the previous session's)")
    p.add_argument("--down", type=int, nargs="*", default=None, help="down ensemble (default: the previous session's)")
    p.add_argument("--pixel-size-um", type=float, default=0.0,
                   help="for the stage move (default: the session config's acquisition.pixel_size_um)")
    p.add_argument("--scale", action="store_true", help="also estimate a change of magnification")
    p.add_argument("--max-rotation-deg", type=float, default=5.0, help="rotations searched (+-5 degrees)")
    p.add_argument("--min-corr", type=float, default=0.3, help="refuse below this whole-field correlation (0.3)")
    p.add_argument("--min-in-view", type=float, default=0.8, help="a ROI is lost below this fraction in view (0.8)")
    p.add_argument("--min-local-corr", type=float, default=0.5,
                   help="a ROI is lost when the tissue around it correlates less than this (0.5)")
    p.add_argument("--verbose", action="store_true", help="one line per ROI, not only the lost ones")
    p.add_argument("--config", default="", metavar="TOML", help="rig config giving acquisition.pixel_size_um")
    p.add_argument("--show", action="store_true",
                   help="then open a window: yesterday over today (blend / flicker / colour) and the stage move")
    p.set_defaults(func=run)


__all__ = ["AlignResult", "Field", "Similarity", "carry_over", "load_field", "register_cli"]
