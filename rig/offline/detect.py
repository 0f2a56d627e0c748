"""``rig detect MOVIE_OR_SESSION``: find the cells of a baseline recording with suite2p, inside the rig.

Day one of a BCI experiment: record a few minutes of baseline (``session.save_frames``), detect the cells,
pick the ensembles, run. This module reads the movie (a session folder, a TIFF, a suite2p ``data.bin``,
``.npy`` or ``.h5``), checks it is usable for detection (frame rate, length), writes it as a suite2p binary
and runs suite2p in a child process (:mod:`rig.offline.detect_worker`; suite2p and torch are never
imported here), showing its progress. The result is an ordinary suite2p folder, ``OUT/suite2p/plane0``,
which ``[acquisition.rois] suite2p_dir`` loads as any other. Settings: ``[detect]`` (docs/DETECT.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.rois import RoiFileError, load_suite2p
from acquisition.sources.movie import MovieError, open_movie
from rig.app.config import ConfigError, load_config
from rig.core.movie_file import GAPS_FILE
from rig.core.safe_npy import NpyFileError, load_npy
from rig.offline.detect_config import DetectConfig
from rig.offline.detect_worker import EXIT_NO_ROIS, TAG

INSTALL_HINT = ('suite2p is not installed: it is the optional "suite2p" extra (about 6 GB with torch). '
                'Install it with: python -m pip install -e ".[suite2p]"  (in the bci-rig folder, in its .venv)')
#: frame rates a two-photon movie can have (Hz); outside this the rate was misread
PLAUSIBLE_RATE_HZ = (0.5, 500.0)
#: suite2p's log lines shown as progress (the rest only with --verbose)
PROGRESS_LOGS = ("Registering", "Reference frame", "Binning", "Detected", "Removing")
_INT16_MAX = np.iinfo(np.int16).max


class DetectError(ValueError):
    """The input cannot be used for detection, or detection found nothing; the message says why, with numbers."""


@dataclass
class Baseline:
    """A movie to detect on, with where its frame rate came from."""

    label: str  # what the operator named (shown in messages)
    frames: Any  # (n, Ly, Lx) array-like with per-frame indexing
    fs: float | None
    rate_source: str
    config: DetectConfig
    config_rate_hz: float | None  # acquisition.frame_rate_hz of the config, when one was given
    default_out: Path
    #: movie frames the rig recorded as kept-as-zeros (a session's ``acquisition/movie_gaps.rec``): exactly these
    #: are left out; None (no record: an older session, a file) leaves out the all-zero frames instead
    gaps: frozenset[int] | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def open_baseline(path: str | Path, config: str | Path | None = None) -> Baseline:
    """A session folder (its ``acquisition/movie.raw`` and its own config), a movie file, or a suite2p folder."""
    path = Path(path)
    cfg = load_config(config) if config else None
    if path.is_dir() and ((path / "session.json").is_file() or (path / "acquisition" / "movie.json").is_file()):
        from rig.offline.session_data import SessionError, load_session  # noqa: PLC0415

        try:
            session = load_session(path)
        except SessionError as exc:
            raise DetectError(str(exc)) from exc
        movie = session.movie()
        if movie is None:
            raise DetectError(f"{path}: the session kept no frames (acquisition/movie.raw): record the baseline "
                              "with session.save_frames = true (rig run CONFIG --set session.save_frames=true)")
        meta = session.movie_meta or {}
        cfg = cfg or session.config
        rate = meta.get("frame_rate_hz")
        return Baseline(str(path), movie, float(rate) if rate else None,
                        f"the session's acquisition/movie.json ({meta.get('frame_rate_source', 'recorded')})",
                        cfg.detect, None if config is None else cfg.acquisition.frame_rate_hz, path / "detect",
                        recorded_gaps(path))
    if path.is_dir():
        for candidate in (path / "data.bin", path / "plane0" / "data.bin", path / "suite2p" / "plane0" / "data.bin"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise DetectError(f"{path}: a folder that is neither a session (session.json) nor a suite2p folder "
                              "(data.bin with its ops.npy)")
    try:
        reader = open_movie(path)
    except MovieError as exc:
        raise DetectError(str(exc)) from exc
    frames = _ReaderFrames(reader)
    out = path.parent / f"{path.stem}_detect" if path.name != "data.bin" else path.parent / "detect"
    return Baseline(str(path), frames, reader.frame_rate_hz, reader.rate_source or "the file",
                    (cfg.detect if cfg else DetectConfig()), cfg.acquisition.frame_rate_hz if cfg else None, out)


class _ReaderFrames:
    """A :class:`~acquisition.sources.movie.MovieReader` seen as a (n, Ly, Lx) sequence of frames."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self.shape = (reader.n_frames, *reader.shape)
        self._buf = np.empty(reader.shape, reader.dtype)

    def __getitem__(self, i: int) -> np.ndarray:
        self._reader.read_into(int(i), self._buf)
        return self._buf


class _FirstFrames:
    """The first ``n`` frames of a movie (``--max-frames``): a long baseline need not be detected whole."""

    def __init__(self, frames: Any, n: int) -> None:
        self._frames = frames
        self.shape = (min(n, int(frames.shape[0])), *frames.shape[1:])

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self._frames[int(i)])


class _Kept:
    """The frames of a movie that ``data.bin`` holds (``frame_index.npy``): all-zero frames left out."""

    def __init__(self, frames: Any, index: np.ndarray) -> None:
        self._frames, self.index = frames, index
        self.shape = (int(index.size), *frames.shape[1:])

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self._frames[int(self.index[i])])


def recorded_gaps(session: Path) -> frozenset[int] | None:
    """The movie frames a session recorded as kept-as-zeros (lost by the writer, or of the wrong size), None
    when it has no such record (sessions from before ``movie_gaps.rec``)."""
    from rig.offline.session_checks import read_checked_records  # noqa: PLC0415
    from rig.offline.session_data import SessionError  # noqa: PLC0415

    try:
        rows = read_checked_records(session / "acquisition" / GAPS_FILE)
    except SessionError as exc:
        raise DetectError(str(exc)) from exc
    return None if rows is None else frozenset(int(i) for i in rows["index"])


def frame_rate(base: Baseline, fs_arg: float | None) -> float:
    """The rate detection uses; a movie whose own rate disagrees with the one given is refused, with both."""
    given = [(fs_arg, "--fs")] if fs_arg else []
    if base.config_rate_hz:
        given.append((base.config_rate_hz, "the config's acquisition.frame_rate_hz"))
    if base.fs is not None:
        for value, where in given:
            gap = abs(value - base.fs) / base.fs
            if gap > base.config.max_rate_mismatch:
                raise DetectError(
                    f"{base.label}: wrong frame rate: the movie was recorded at {base.fs:g} Hz ({base.rate_source}) "
                    f"but {where} is {value:g} Hz, {100 * gap:.0f} % apart (more than "
                    f"{100 * base.config.max_rate_mismatch:.0f} %): suite2p's activity bins would be "
                    f"{round(base.config.tau * value)} frames instead of {round(base.config.tau * base.fs)}. "
                    "Fix the rate you gave, or check the scope's frame rate")
    fs = base.fs if base.fs is not None else (given[0][0] if given else None)
    if fs is None:
        raise DetectError(f"{base.label}: the file does not say its frame rate: give it with --fs HZ "
                          "(or --config CONFIG for acquisition.frame_rate_hz)")
    lo, hi = PLAUSIBLE_RATE_HZ
    if not lo <= fs <= hi:
        raise DetectError(f"{base.label}: wrong frame rate: {fs:g} Hz is outside the {lo:g}-{hi:g} Hz a two-photon "
                          "movie can have; give the real rate with --fs HZ")
    return float(fs)


def check_length(base: Baseline, fs: float) -> None:
    """Too few frames for detection is refused with the numbers and the length needed."""
    need = base.config.min_frames_at(fs)
    if base.n_frames < need:
        raise DetectError(
            f"{base.label}: too few frames for detection: {base.n_frames} frames ({base.n_frames / fs:.1f} s at "
            f"{fs:g} Hz); detection needs at least {need} frames ({need / fs:.1f} s: {base.config.min_bins} activity "
            f"bins of tau = {base.config.tau:g} s, and never fewer than {base.config.min_frames} frames). Record a "
            "longer baseline (a few minutes is usual)")


def prepare(base: Baseline, out: Path, fs: float, max_frames: int = 0) -> Path:
    """Write the frames as suite2p's int16 ``data.bin`` and the job for the worker; return the job file.

    The frames the rig kept as zeros are left out: it writes a frame it lost (the disk fell behind, a frame of
    the wrong size) as zeros to keep the movie's numbering, and suite2p would take them for the field (its
    reference is built from the frames that correlate best, and blank frames correlate perfectly). A session
    lists them (``base.gaps``); without that list, every all-zero frame is left out. ``max_frames`` > 0 keeps
    the first that many usable frames. ``OUT/frame_index.npy`` says which movie frame each ``data.bin`` frame is.
    """
    plane = out / "suite2p" / "plane0"
    plane.mkdir(parents=True, exist_ok=True)
    for stale in ("stat.npy", "iscell.npy", "ops.npy", "reg_outputs.npy", "F.npy", "Fneu.npy", "spks.npy"):
        (plane / stale).unlink(missing_ok=True)  # a re-run must not mix in an older run's files
    total, Ly, Lx = base.frames.shape
    clipped = 0
    kept: list[int] = []
    blank = 0
    buf = np.empty((Ly, Lx), np.int16)
    with open(plane / "data.bin", "wb") as binary:
        for i in range(total):
            if 0 < max_frames <= len(kept):
                break
            if base.gaps is not None and i in base.gaps:
                blank += 1
                continue
            frame = np.asarray(base.frames[i])
            if base.gaps is None and not frame.any():
                blank += 1
                continue
            kept.append(i)
            if frame.dtype.kind == "f" or frame.dtype.itemsize > 2 or frame.dtype == np.uint16:
                over = frame > _INT16_MAX
                clipped += int(np.count_nonzero(over))
                np.copyto(buf, np.clip(frame, -_INT16_MAX - 1, _INT16_MAX), casting="unsafe")
            else:
                np.copyto(buf, frame, casting="unsafe")
            binary.write(buf.tobytes())
    cfg = base.config
    np.save(out / "frame_index.npy", np.asarray(kept, np.int64))
    job = {"plane": str(plane.resolve()), "nframes": len(kept), "Ly": Ly, "Lx": Lx, "fs": fs, "tau": cfg.tau,
           "diameter": cfg.diameter_px, "algorithm": cfg.algorithm, "threshold_scaling": cfg.threshold_scaling,
           "threads": cfg.threads or os.cpu_count() or 1, "input": base.label, "clipped_pixels": clipped,
           "blank_frames": blank}
    job_path = out / "detect_job.json"
    job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
    return job_path


def suite2p_available() -> bool:
    """Whether the extra is installed, without importing it (that would pull torch into this process)."""
    return importlib.util.find_spec("suite2p") is not None


def run_worker(job_path: Path, *, progress: bool = True, verbose: bool = False) -> dict[str, Any]:
    """Run suite2p in its own process; print each stage with the time spent; return the last error, if any."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "rig.offline.detect_worker", str(job_path)],
                            stdout=subprocess.PIPE, stderr=None if verbose else subprocess.PIPE, text=True)
    error: dict[str, Any] = {}
    stderr_tail = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.startswith(TAG):
            continue
        msg = json.loads(line[len(TAG):])
        if "stage" in msg and progress:
            print(f"[rig detect] {time.monotonic() - t0:5.1f} s  {msg['stage']}", file=sys.stderr, flush=True)
        elif "log" in msg and (verbose or (progress and msg["log"].startswith(PROGRESS_LOGS))):
            print(f"[rig detect] {time.monotonic() - t0:5.1f} s    {msg['log']}", file=sys.stderr, flush=True)
        elif "error" in msg:
            error = msg
    if proc.stderr is not None:
        stderr_tail = proc.stderr.read()[-2000:]
    code = proc.wait()
    if code == EXIT_NO_ROIS:
        return error or {"error": "no_rois", "message": ""}
    if code != 0:
        raise DetectError(f"suite2p failed (exit code {code}) on {job_path.parent}; its last words:\n{stderr_tail}")
    return {}


def detect(path: str | Path, out: str | Path | None = None, *, config: str | Path | None = None,
           fs: float | None = None, max_frames: int = 0, progress: bool = True,
           verbose: bool = False) -> dict[str, Any]:
    """The whole of ``rig detect``: check, convert, run suite2p, check what it found; the summary dict."""
    if not suite2p_available():
        raise DetectError(INSTALL_HINT)
    base = open_baseline(path, config)
    movie = base.frames
    if max_frames > 0:
        base.frames = _FirstFrames(movie, max_frames)
    rate = frame_rate(base, fs)
    check_length(base, rate)  # at most this many usable frames: refused before anything is written
    out_dir = Path(out) if out else base.default_out
    t0 = time.monotonic()
    if progress:
        cfg = base.config
        print(f"[rig detect] {base.label}: {base.n_frames} frames of {base.frames.shape[1]}x{base.frames.shape[2]} "
              f"at {rate:g} Hz; tau {cfg.tau:g} s ({cfg.indicator}), diameter {cfg.diameter_px:g} px, "
              f"{cfg.algorithm}, threshold_scaling {cfg.threshold_scaling:g} -> {out_dir}", file=sys.stderr, flush=True)
    job_path = prepare(Baseline(base.label, movie, base.fs, base.rate_source, base.config, base.config_rate_hz,
                                base.default_out, base.gaps), out_dir, rate, max_frames)
    job = json.loads(job_path.read_text(encoding="utf-8"))
    clipped, blank = int(job["clipped_pixels"]), int(job["blank_frames"])
    base.frames = _Kept(movie, np.load(out_dir / "frame_index.npy"))
    if blank:
        need = base.config.min_frames_at(rate)
        what = ("all-zero frames (lost while recording)" if base.gaps is None else
                "frames kept as zeros (listed lost or of the wrong size in acquisition/movie_gaps.rec)")
        print(f"[rig detect] note: {blank} {what} left out; {base.n_frames} usable frames", file=sys.stderr,
              flush=True)
        if base.n_frames < need:
            raise DetectError(f"{base.label}: too few usable frames for detection: {base.n_frames} after leaving out "
                              f"{blank} {what}; detection needs at least {need}. "
                              "Record again (check the disk keeps up: the session's movie_frames_lost warnings)")
    if clipped and progress:
        print(f"[rig detect] note: {clipped} pixel values above 32767 were clipped to fit suite2p's int16 binary",
              file=sys.stderr, flush=True)
    error = run_worker(job_path, progress=progress, verbose=verbose)
    cfg = base.config
    if error:
        raise DetectError(
            f"{base.label}: suite2p found no cells in {base.n_frames} frames ({base.n_frames / rate:.1f} s at "
            f"{rate:g} Hz) with diameter {cfg.diameter_px:g} px, tau {cfg.tau:g} s, {cfg.algorithm} and "
            f"threshold_scaling {cfg.threshold_scaling:g}. Check the diameter against a cell in the mean image, "
            "lower [detect] threshold_scaling, record longer, or draw the ROIs by hand in the console")
    plane = out_dir / "suite2p" / "plane0"
    try:
        rois = load_suite2p(plane)
    except RoiFileError as exc:
        raise DetectError(f"suite2p's output cannot be loaded by the rig: {exc}") from exc
    n_cells = int((rois.iscell[:, 0] > 0.5).sum())
    reference = reference_record(plane)
    if progress and reference["shifts_at_limit"]:
        print(f"[rig detect] warning: {reference['shifts_at_limit']} of {base.n_frames} frames were registered at "
              f"suite2p's search limit ({reference['search_limit_px']} px): registration probably failed there; "
              "check the mean image for blur", file=sys.stderr, flush=True)
    summary = {"ok": True, "input": base.label, "suite2p_dir": str(plane), "frames": base.n_frames,
               "frame_rate_hz": rate, "frame_rate_source": base.rate_source, "tau_s": cfg.tau,
               "diameter_px": cfg.diameter_px, "algorithm": cfg.algorithm, "threshold_scaling": cfg.threshold_scaling,
               "blank_frames_skipped": blank, "rois": rois.n_rois, "cells": n_cells, "reference": reference,
               "seconds": round(time.monotonic() - t0, 1)}
    (out_dir / "detect.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def reference_record(plane: Path) -> dict[str, Any]:
    """Which reference the ROIs are drawn in, and where it sits: the record that keeps the rig consistent.

    suite2p draws its ROIs in the coordinates of its own reference image (``refImg`` in ``ops.npy``), which it
    builds from the best-correlated frames: not necessarily the baseline's average position. The rig loads that
    same ``refImg`` as its registration reference (unless ``registration.ref_path`` names another), so its
    frames are moved onto the ROIs. ``offset_px`` is the median (dy, dx) suite2p measured between the baseline's
    frames and that reference (a frame's content sits there relative to it): a large value says the reference
    sits away from where the field usually was; ``shifts_at_limit`` counts frames at the search bound
    (``maxregshift``), where registration has most likely failed.
    """
    reg_path = plane / "reg_outputs.npy"
    try:
        reg = load_npy(reg_path if reg_path.is_file() else plane / "ops.npy").item()
        yoff, xoff = np.asarray(reg["yoff"], np.float64), np.asarray(reg["xoff"], np.float64)
        ops = load_npy(plane / "ops.npy").item()
    except (NpyFileError, KeyError, ValueError) as exc:
        raise DetectError(f"{plane}: suite2p's registration output (yoff/xoff) cannot be read: {exc}") from exc
    if yoff.size == 0:
        raise DetectError(f"{plane}: suite2p registered no frame (empty yoff)")
    shape = (int(ops["Ly"]), int(ops["Lx"]))
    max_reg = float((ops.get("registration") or {}).get("maxregshift", ops.get("maxregshift", 0.1)))
    limit = int(min(round(max_reg * min(shape)), min(shape) // 2))
    return {"image": "refImg in ops.npy", "offset_px": [float(np.median(yoff)), float(np.median(xoff))],
            "shift_range_px": [[float(yoff.min()), float(yoff.max())], [float(xoff.min()), float(xoff.max())]],
            "search_limit_px": limit,
            "shifts_at_limit": int(np.count_nonzero(np.maximum(np.abs(yoff), np.abs(xoff)) >= limit))}


def _cmd_detect(args: argparse.Namespace) -> int:
    try:
        summary = detect(args.movie, args.out, config=args.config, fs=args.fs, max_frames=args.max_frames,
                         progress=not args.no_progress,
                         verbose=args.verbose)
    except (DetectError, ConfigError, OSError) as exc:
        print(f"rig detect: {exc}", file=sys.stderr)
        return 2
    if summary["cells"] == 0:
        print(f"rig detect: note: suite2p found {summary['rois']} ROIs but its classifier called none a cell; "
              "the rig extracts only cells (acquisition.rois.only_cells): curate them in the console",
              file=sys.stderr)
    print(f"rig detect: {summary['rois']} ROIs ({summary['cells']} cells) in {summary['suite2p_dir']}; use them "
          f"with [acquisition.rois] suite2p_dir = \"{summary['suite2p_dir']}\"; rank the cells and pick the "
          f"ensembles with: rig console --pick {summary['suite2p_dir']} --config CONFIG (or rig rank)",
          file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0


_HELP = "\n\n".join([
    textwrap.fill("Run suite2p's registration and cell detection on a recorded baseline and write a suite2p folder "
                  "the rig loads as its ROIs ([acquisition.rois] suite2p_dir).", 88),
    textwrap.fill("MOVIE_OR_SESSION: a session folder recorded with session.save_frames = true (its movie, frame "
                  "rate and config are used), a TIFF, a suite2p data.bin (with its ops.npy) or its folder, a .npy "
                  "or .h5 movie.", 88),
    "Settings come from the [detect] section of the config (the session's own, or --config):\n"
    "  indicator = \"6f\"        sets suite2p's tau: 6f 0.683 s, 6s 1.702 s, 7f 0.265 s, 8m 0.14 s\n"
    "  diameter_px = 12        a soma's diameter in pixels at your zoom (measure one)\n"
    "  algorithm = \"sourcery\"  soma-shaped ROIs of that diameter (\"sparsery\": any shape)\n"
    "  threshold_scaling = 1.5 higher: fewer, surer ROIs",
    textwrap.fill("The frame rate is the movie's own (session, ScanImage header, ops.npy 'fs') or --fs; a movie "
                  "shorter than 15 bins of tau (and 200 frames) is refused. suite2p runs in its own process (torch "
                  "is never loaded into the rig). Next: rig console --pick OUT --config CONFIG (or rig rank) to "
                  "rank the cells and save the ensembles. Last stdout line: JSON summary (rois, cells, "
                  "suite2p_dir). See docs/DETECT.md.", 88),
])


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect", help="find the cells of a baseline recording with suite2p (needs the suite2p extra)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_HELP)
    p.add_argument("movie", metavar="MOVIE_OR_SESSION", help="session folder, TIFF, data.bin or suite2p folder")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: SESSION/detect, or MOVIE_detect beside the movie); "
                        "the ROIs go to DIR/suite2p/plane0")
    p.add_argument("--config", default=None, metavar="CONFIG.toml",
                   help="rig config for [detect] and acquisition.frame_rate_hz (default: the session's own)")
    p.add_argument("--fs", type=float, default=None, metavar="HZ",
                   help="frame rate, when the file does not say it (checked against the file when it does)")
    p.add_argument("--max-frames", type=int, default=0, metavar="N",
                   help="detect on the first N frames only (default: all)")
    p.add_argument("--verbose", action="store_true", help="show all of suite2p's messages")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_detect)
