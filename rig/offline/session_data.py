"""Read a session folder back: the one loader `rig replay`, `rig export` and `rig report` share.

A session is read from the files each process appended while it ran (see docs/SESSION_FORMAT.md).
A session that ended in a crash opens too: a torn final record or event line is dropped, and what
was dropped is listed in :attr:`SessionData.notes` so tools can say so instead of hiding it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from rig.app.config import RigConfig, config_from_dict, load_config
from rig.core.movie_file import MOVIE_FILES, ChunkedMovie
from rig.core.store import CorruptFileError
from rig.offline.legacy import fill_legacy
from rig.offline.session_checks import (
    SessionError,
    check_same_rois,
    load_reference,
    movie_layout,
    read_checked_events,
    read_checked_records,
    read_json_object,
)
from rig.offline.session_planes import PlaneData, load_planes

__all__ = ["PlaneData", "SessionData", "SessionError", "Trial", "load_session"]


@dataclass
class SessionData:
    """Everything on disk for one session, loaded (the movie stays on disk as a memory map)."""

    path: Path
    info: dict[str, Any]  # session.json ({} if the supervisor never wrote it)
    config: RigConfig
    config_text: str
    frames: np.ndarray | None  # acquisition/frames.rec rows
    decisions: np.ndarray | None  # decoder/decisions.rec rows
    acq_events: list[dict[str, Any]]
    dec_events: list[dict[str, Any]]
    reward_events: list[dict[str, Any]]
    supervisor_events: list[dict[str, Any]]
    calibration: dict[str, Any] | None  # decoder/calibration.json (the calibration in force at the end)
    valve_calibration: dict[str, Any] | None  # reward/valve_calibration.json
    movie_meta: dict[str, Any] | None  # acquisition/movie.json
    notes: list[str] = field(default_factory=list)  # what was torn or missing, for the operator

    # ------------------------------------------------------------------ planes (docs/PLANES.md)
    @property
    def n_planes(self) -> int:
        """Planes per volume: ``[acquisition] n_planes``, or the simulator's when only that was set."""
        acq = self.config.acquisition
        sim_planes = int(acq.sim.n_planes) if acq.source == "sim" else 1
        return max(int(acq.n_planes), sim_planes)

    @property
    def bci_plane(self) -> int:
        return int(self.config.acquisition.bci_plane)

    @cached_property
    def planes(self) -> list[PlaneData]:
        """Every plane (index = plane): records, ROI set with kinds and links, movie (rig/offline/session_planes)."""
        return load_planes(self)

    # ------------------------------------------------------------------ derived facts
    @property
    def n_rois(self) -> int:
        for rows, name in ((self.frames, "F"), (self.decisions, "dff")):
            if rows is not None:
                shape = rows.dtype[name].shape
                return int(shape[0]) if shape else 1
        raise SessionError(f"{self.path}: neither acquisition/frames.rec nor decoder/decisions.rec exists")

    @property
    def frame_rate_hz(self) -> float:
        """The rate the decoder was told: the acquisition's ready info, else the config (as the wrapper does)."""
        ready = self.ready_info("acquisition")
        if "frame_rate_hz" in ready:
            try:
                rate = float(ready["frame_rate_hz"])
            except (TypeError, ValueError):
                rate = float("nan")
            if not 0 < rate < float("inf"):
                raise SessionError(f"{self.path / 'acquisition' / 'events.jsonl'}: the ready event's frame_rate_hz "
                                   f"is {ready['frame_rate_hz']!r}, not a positive number")
            return rate
        return float(self.config.acquisition.frame_rate_hz)

    def ready_info(self, process: str) -> dict[str, Any]:
        """The facts a process reported when it became ready (its ``state: ready`` event)."""
        events = {"acquisition": self.acq_events, "decoder": self.dec_events, "reward": self.reward_events}[process]
        for event in events:
            if event.get("kind") == "state" and event.get("state") == "ready":
                return {k: v for k, v in event.items() if k not in ("kind", "t_ns", "state", "reason")}
        return {}

    @property
    def is_replay_of(self) -> str:
        return str(self.info.get("replay_of", ""))

    @property
    def movie_codec(self) -> str:
        """How the movie is stored: ``movie.json``'s ``codec`` ("raw" for sessions from before it was written)."""
        codec = (self.movie_meta or {}).get("codec", "raw")
        if codec not in MOVIE_FILES:
            raise SessionError(f"{self.path / 'acquisition' / 'movie.json'}: codec {codec!r} is not one of "
                               f"{', '.join(MOVIE_FILES)}")
        return str(codec)

    @property
    def movie_path(self) -> Path:
        return self.path / "acquisition" / MOVIE_FILES[self.movie_codec]

    def movie(self) -> Any:
        """The raw frames as a read-only (frames, height, width) array, whole frames only: a memory map of
        ``movie.raw``, or a :class:`~rig.core.movie_file.ChunkedMovie` decoding ``movie.zchunks`` on demand."""
        if self.movie_meta is None or not self.movie_path.exists():
            return None
        dtype, height, width = movie_layout(self.path / "acquisition" / "movie.json", self.movie_meta)
        if self.movie_codec == "zstd":
            try:
                chunked = ChunkedMovie(self.movie_path, dtype, height, width)
            except CorruptFileError as exc:
                raise SessionError(str(exc)) from exc
            return chunked if len(chunked) else None
        n_frames = self.movie_path.stat().st_size // (height * width * dtype.itemsize)
        if n_frames == 0:
            return None
        return np.memmap(self.movie_path, dtype=dtype, mode="r", shape=(n_frames, height, width))

    def reference(self) -> np.ndarray | None:
        """``acquisition/rois/reference.npy``, the registration reference the acquisition used (None: not saved)."""
        return load_reference(self.path / "acquisition" / "rois" / "reference.npy")

    def z_estimates(self) -> np.ndarray | None:
        """``acquisition/z.rec``: z-tracking's depth estimates (``frame``, ``z_um`` relative to the z-stack's
        centre plane, ``corr``; docs/ZTRACKING.md), checked like frames.rec; None: the session ran without it."""
        return read_checked_records(self.path / "acquisition" / "z.rec", self.notes)

    def registration_inputs(self) -> tuple[Any, np.ndarray | None]:
        """The ROI set and reference (if saved) that registered the movie, checked against each other and it."""
        roi_set, reference, movie = self.rois(), self.reference(), self.movie()
        shape = (roi_set.Ly, roi_set.Lx)
        rois_dir = self.path / "acquisition" / "rois"
        if reference is not None and reference.shape != shape:
            raise SessionError(f"{rois_dir / 'reference.npy'}: a {reference.shape} image, but the ROI set is for "
                               f"{shape} frames")
        if movie is not None and movie.shape[1:] != shape:
            raise SessionError(f"{self.path / 'acquisition' / 'movie.json'}: frames of {movie.shape[1:]}, but the "
                               f"ROI set in {rois_dir} is for {shape} frames (--from-traces does not need the movie)")
        return roi_set, reference

    def rois(self) -> Any:
        """The ROI set the acquisition extracted (``acquisition/rois``, cells only if the config said so)."""
        from acquisition.rois import RoiFileError, load_suite2p  # noqa: PLC0415 - only replay and export need it

        rois_dir = self.path / "acquisition" / "rois"
        if not rois_dir.is_dir():
            raise SessionError(f"{rois_dir}: the session kept no ROI set")
        try:
            roi_set = load_suite2p(rois_dir)
        except RoiFileError as exc:
            raise SessionError(f"the session's ROI set is unreadable: {exc}") from exc
        if self.config.acquisition.rois.only_cells:
            roi_set = roi_set.cells_only()
        if roi_set.n_rois != self.n_rois:
            raise SessionError(f"{rois_dir}: holds {roi_set.n_rois} ROIs to extract but the records have "
                               f"{self.n_rois} columns")
        return roi_set

    def time_zero_ns(self) -> int:
        """The stamp taken as t = 0 s in exports: the earliest stamp the session holds."""
        candidates: list[int] = []
        for rows in (self.frames, self.decisions):
            if rows is not None and len(rows):
                stamps = rows["t_ready"]
                stamps = stamps[stamps > 0]
                if stamps.size:
                    candidates.append(int(stamps.min()))
        for events in (self.supervisor_events, self.acq_events, self.dec_events, self.reward_events):
            candidates += [int(e["t_ns"]) for e in events if isinstance(e.get("t_ns"), int) and e["t_ns"] > 0]
        if not candidates:
            raise SessionError(f"{self.path}: the session holds no time stamps at all")
        return min(candidates)

    def events_of(self, events: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in events if e.get("kind") == kind and all(e.get(k) == v for k, v in match.items())]

    def frame_time_ns(self, frames: np.ndarray | list[int]) -> np.ndarray:
        """Source stamp (``t_ready``) of each frame number, from the decisions, else the acquisition rows.

        A frame the decoder never saw gets the stamp interpolated from its neighbours' frame numbers.
        """
        rows = self.decisions if self.decisions is not None and len(self.decisions) else self.frames
        if rows is None or not len(rows):
            raise SessionError(f"{self.path}: no per-frame records to give frames a time")
        numbers = rows["frame"].astype(np.float64)
        stamps = rows["t_ready"].astype(np.float64)
        wanted = np.asarray(frames, dtype=np.float64)
        if len(rows) == 1:
            return np.full(wanted.shape, int(stamps[0]), dtype=np.int64)
        period = (stamps[-1] - stamps[0]) / max(numbers[-1] - numbers[0], 1)
        out = np.interp(wanted, numbers, stamps)
        out = np.where(wanted > numbers[-1], stamps[-1] + (wanted - numbers[-1]) * period, out)
        out = np.where(wanted < numbers[0], stamps[0] - (numbers[0] - wanted) * period, out)
        return np.rint(out).astype(np.int64)

    def calibrations(self) -> list[dict[str, Any]]:
        """Every calibration that came into force, in order: the summary its "calibrated" event recorded (older
        sessions: without fields), with the ``frame`` it applied at. One per block when each block recalibrated."""
        return [{**(e.get("calibration") or {}), "frame": int(e.get("frame", -1))} for e in self.dec_events
                if e.get("kind") == "trial" and e.get("event") == "calibrated"]

    def blocks(self) -> list[dict[str, Any]]:
        """The BCI blocks: ``block``, ``start_frame`` (its "bci_start"), ``end_frame`` (its "block_end", -1:
        the session's end), ``trials``, ``hits``, ``misses``, and the ``up``/``down`` ensembles and
        ``threshold`` of the calibration it ran on (when recorded)."""
        out: dict[int, dict[str, Any]] = {}
        cal: dict[str, Any] = {}
        for e in self.dec_events:
            if e.get("kind") != "trial":
                continue
            if e.get("event") == "calibrated":
                cal = e.get("calibration") or {}
            elif e.get("event") == "bci_start":
                number = int(e.get("block", len(out) + 1))
                out[number] = {"block": number, "start_frame": int(e.get("frame", -1)), "end_frame": -1, "trials": 0,
                               "hits": 0, "misses": 0, "up": cal.get("up"), "down": cal.get("down"),
                               "threshold": cal.get("threshold")}
            elif e.get("event") == "block_end" and int(e.get("block", 0)) in out:
                out[int(e["block"])]["end_frame"] = int(e.get("frame", -1))
        for trial in self.trials():
            block = out.setdefault(trial.block, {"block": trial.block, "start_frame": -1, "end_frame": -1,
                                                 "trials": 0, "hits": 0, "misses": 0})
            block["trials"] += 1
            block["hits"] += trial.outcome == "hit"
            block["misses"] += trial.outcome == "miss"
        return [out[k] for k in sorted(out)]

    def trials(self) -> list[Trial]:
        """Trials from the decoder's trial events: start, outcome and end (the outcome's frame).

        A trial that never got an outcome ends at the next trial start, the end of the task, or the last
        decided frame (outcome "open").
        """
        events = [e for e in self.dec_events if e.get("kind") == "trial"]
        block = 1
        last_frame = int(self.decisions["frame"][-1]) if self.decisions is not None and len(self.decisions) else -1
        trials: list[Trial] = []
        current: Trial | None = None
        for event in events:
            kind = str(event.get("event", ""))
            frame = int(event.get("frame", -1))
            if kind == "bci_start":
                block = int(event.get("block", block))
            if kind == "trial_start":
                if current is not None:
                    current.end_frame = frame
                    trials.append(current)
                current = Trial(number=int(event.get("trial", len(trials) + 1)), start_frame=frame, end_frame=-1,
                                block=block)
            elif current is not None and kind in OUTCOME_EVENTS and current.outcome == "open":
                current.outcome = OUTCOME_EVENTS[kind]
                current.outcome_frame = frame
                current.end_frame = frame
            elif current is not None and kind in END_EVENTS:
                current.end_frame = frame
                trials.append(current)
                current = None
        if current is not None:
            trials.append(current)
        for trial in trials:
            if trial.end_frame < 0:
                trial.end_frame = max(last_frame, trial.outcome_frame, trial.start_frame)
        return trials


#: Trial events (rig.core.codes.EVENT_KINDS) that decide a trial's outcome, and the outcome each stands for.
OUTCOME_EVENTS = {"hit": "hit", "miss": "miss", "trial_aborted": "aborted"}
#: Trial events that end the task, closing a trial that is still open.
END_EVENTS = {"session_done", "stopped", "block_end"}


@dataclass
class Trial:
    number: int
    start_frame: int
    end_frame: int
    outcome: str = "open"  # hit | miss | aborted | open (the session ended first)
    outcome_frame: int = -1
    block: int = 1  # the BCI block (decoder "bci_start" events number them from 1)

    @property
    def hit(self) -> bool:
        return self.outcome == "hit"


def _read_log(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, "rb") as f:  # only the last byte: a log can be large
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(size - 1, 0))
        last = f.read(1)
    if size and last != b"\n":
        notes.append(f"{path.parent.name}/{path.name}: ignored a torn final line: the writing process stopped "
                     "mid-write")
    return read_checked_events(path)


def load_session(path: str | Path) -> SessionData:
    """Open a session folder, with the config its processes ran with.

    That config is ``config.resolved.json`` (the validated config with defaults and ``--set`` overrides);
    sessions without it fall back to the ``config.toml`` snapshot, which is then all there is.
    """
    path = Path(path)
    if not path.is_dir():
        raise SessionError(f"{path}: not a session folder (no such directory)")
    notes: list[str] = []
    toml_file = path / "config.toml"
    resolved_file = path / "config.resolved.json"
    if resolved_file.exists():
        resolved = read_json_object(resolved_file)
        assert resolved is not None
        filled = fill_legacy(resolved)  # a session recorded before these keys: the rules it ran under
        if filled:
            notes.append(f"config.resolved.json lacks {', '.join(filled)}: recorded before them, so read with the "
                         "older rules it ran under (docs/SESSION_FORMAT.md)")
        config = config_from_dict(resolved, str(resolved_file))
    elif toml_file.exists():
        config = load_config(toml_file)
        notes.append("config.resolved.json is missing: using the config.toml snapshot (without --set overrides)")
    else:
        raise SessionError(f"{path}: the session has no config snapshot (config.resolved.json or config.toml)")
    info = read_json_object(path / "session.json") or {}
    if not info:
        notes.append("session.json is missing: the supervisor did not start the session normally")
    elif info.get("status") not in ("ok", "failed"):
        notes.append(f"session.json status is {info.get('status')!r}: the supervisor did not end the session "
                     "(it crashed or was killed); summary.json may be missing — `rig summary` recomputes it")
    frames_path, decisions_path = path / "acquisition" / "frames.rec", path / "decoder" / "decisions.rec"
    frames = read_checked_records(frames_path, notes)
    decisions = read_checked_records(decisions_path, notes)
    check_same_rois(frames_path, frames, decisions_path, decisions)
    movie_meta_path = path / "acquisition" / "movie.json"
    movie_meta = read_json_object(movie_meta_path)
    if movie_meta is not None:
        movie_layout(movie_meta_path, movie_meta)  # checked now: every tool reports a damaged movie.json
    return SessionData(
        path=path,
        info=info,
        config=config,
        config_text=toml_file.read_text(encoding="utf-8", errors="replace") if toml_file.exists() else "",
        frames=frames,
        decisions=decisions,
        acq_events=_read_log(path / "acquisition" / "events.jsonl", notes),
        dec_events=_read_log(path / "decoder" / "events.jsonl", notes),
        reward_events=_read_log(path / "reward" / "events.jsonl", notes),
        supervisor_events=_read_log(path / "supervisor.events.jsonl", notes),
        calibration=read_json_object(path / "decoder" / "calibration.json"),
        valve_calibration=read_json_object(path / "reward" / "valve_calibration.json"),
        movie_meta=movie_meta,
        notes=notes,
    )
