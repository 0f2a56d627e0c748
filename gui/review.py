"""A finished session read back for the review window: records, trial events, rewards, the ROI set.

No Qt and no rig: ``rig console SESSION_FOLDER`` opens the folder the rig wrote (docs/SESSION_FORMAT.md)
through :func:`rig.core.store.read_records` / :func:`~rig.core.store.read_events`, the same readers the
offline tools use (the console may not import ``rig.offline``). A session that ended in a crash opens
too: a torn final record or event line is dropped and listed in :attr:`ReviewSession.notes`.

Times are seconds from the session's first frame stamp (``t_ready`` of the first row), so F, dF/F and
the events share one axis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gui.model import REWARD_SOURCES
from gui.rois import RoiLoadError, RoiOutlines, load_roi_outlines
from rig.core.store import read_events, read_records

#: Decoder trial events drawn as a labelled line across the traces (the protocol's steps and stops).
PROTOCOL_EVENTS = ("baseline_start", "baseline_done", "baseline_loaded", "calibrated", "calibration_failed",
                   "bci_start", "pause", "resume", "block_end", "stopped", "session_done")


class ReviewError(ValueError):
    """A folder that cannot be reviewed; the message names the file and the problem."""


@dataclass
class RoiTraces:
    """One ROI over the session: F and neuropil per acquired frame, dF/F per decided frame."""

    t_frames: np.ndarray  # seconds, one per acquisition row (empty without frames.rec)
    F: np.ndarray
    Fneu: np.ndarray
    t_decisions: np.ndarray  # seconds, one per decoder row (empty without decisions.rec)
    dff: np.ndarray


@dataclass
class ReviewSession:
    """Everything the review window shows, loaded once."""

    folder: Path
    info: dict[str, Any]  # session.json ({} if missing)
    summary: dict[str, Any]  # summary.json ({} if missing: the supervisor did not finish)
    config: dict[str, Any]  # config.resolved.json ({} if missing)
    frames: np.ndarray | None  # acquisition/frames.rec rows
    decisions: np.ndarray | None  # decoder/decisions.rec rows
    trial_events: list[dict[str, Any]]  # decoder/events.jsonl "trial" events
    rewards: list[dict[str, Any]]  # reward/events.jsonl "reward_outcome" events
    t0_ns: int
    notes: list[str] = field(default_factory=list)

    @property
    def n_rois(self) -> int:
        for rows, name in ((self.frames, "F"), (self.decisions, "dff")):
            if rows is not None:
                shape = rows.dtype[name].shape
                return int(shape[0]) if shape else 1
        return 0

    @property
    def duration_s(self) -> float:
        ends = [self.seconds(rows["t_ready"][-1:]) for rows in (self.frames, self.decisions)
                if rows is not None and len(rows)]
        return float(max(float(e[0]) for e in ends)) if ends else 0.0

    def seconds(self, stamps_ns: np.ndarray) -> np.ndarray:
        return (np.asarray(stamps_ns, dtype=np.int64) - self.t0_ns) * 1e-9

    def traces(self, roi: int) -> RoiTraces:
        """F, Fneu and dF/F of ROI ``roi`` (raises IndexError outside 0..n_rois-1)."""
        if not 0 <= roi < self.n_rois:
            raise IndexError(f"ROI {roi}: the session has ROIs 0..{self.n_rois - 1}")
        empty = np.empty(0, dtype=np.float32)
        frames, decisions = self.frames, self.decisions
        return RoiTraces(
            t_frames=self.seconds(frames["t_ready"]) if frames is not None else empty,
            F=frames["F"][:, roi].copy() if frames is not None else empty,
            Fneu=frames["Fneu"][:, roi].copy() if frames is not None else empty,
            t_decisions=self.seconds(decisions["t_ready"]) if decisions is not None else empty,
            dff=decisions["dff"][:, roi].copy() if decisions is not None else empty,
        )

    def event_time(self, event: dict[str, Any]) -> float:
        """When a decoder event happened: its frame's stamp (on the traces' axis), else its own ``t_ns``."""
        frame = int(event.get("frame", -1))
        rows = self.decisions if self.decisions is not None and len(self.decisions) else self.frames
        if frame >= 0 and rows is not None and len(rows):
            return float(np.interp(frame, rows["frame"], self.seconds(rows["t_ready"])))
        return float(self.seconds(np.array([int(event.get("t_ns", self.t0_ns))]))[0])

    def events_of(self, *kinds: str) -> list[tuple[float, dict[str, Any]]]:
        """(seconds, event) of the trial events of these kinds (``event`` field), in order."""
        return [(self.event_time(e), e) for e in self.trial_events if e.get("event") in kinds]

    def reward_times(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seconds, delivered, is a reward for the mouse) of every reward outcome."""
        t = [int(r.get("t_done") or r.get("t_written") or r.get("t_ns") or self.t0_ns) for r in self.rewards]
        delivered = np.array([r.get("status") == "delivered" for r in self.rewards], dtype=bool)
        reward = np.array([r.get("source") in REWARD_SOURCES for r in self.rewards], dtype=bool)
        return self.seconds(np.array(t, dtype=np.int64)), delivered, reward

    def ensembles(self) -> tuple[list[int], list[int]]:
        """The up/down ensembles in force at the end: the last accepted ``ensembles`` event, else the config's."""
        accepted = [e for e in self.trial_events if e.get("event") == "ensembles"]
        if accepted:
            return [int(i) for i in accepted[-1].get("up", [])], [int(i) for i in accepted[-1].get("down", [])]
        decoder = self.config.get("decoder") or {}
        return [int(i) for i in decoder.get("up", [])], [int(i) for i in decoder.get("down", [])]

    def rois(self) -> RoiOutlines:
        """The ROI set the rig extracted (``acquisition/rois``: its ROIs first, excluded ones after them)."""
        return load_roi_outlines(self.folder / "acquisition" / "rois", first_n=self.n_rois or None)

    def title(self) -> str:
        meta = self.info.get("metadata") or {}
        return (f"{self.folder.name} · mouse {meta.get('mouse_id') or '?'} · "
                f"status {self.info.get('status', 'unknown')}")

    def summary_line(self) -> str:
        s = self.summary
        if not s:
            return "no summary.json (the supervisor did not finish the session; `rig summary` recomputes it)"
        return (f"{s.get('trials', 0)} trials · {s.get('hits', 0)} hits · {s.get('rewards_delivered', 0)} rewards "
                f"({s.get('volume_ul', 0)} µL) · {s.get('frames', 0)} frames decided, "
                f"{s.get('frames_dropped', 0)} dropped · stop: {s.get('stop_reason') or '–'}")


def _json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ReviewError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ReviewError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _records(path: Path, notes: list[str]) -> np.ndarray | None:
    if not path.exists() and not Path(str(path) + ".json").exists():
        return None
    try:
        rows = read_records(path)
    except ValueError as exc:  # the layout sidecar is missing or unreadable: the message names it
        raise ReviewError(str(exc)) from exc
    torn = path.stat().st_size % rows.dtype.itemsize if path.exists() else 0
    if torn:
        notes.append(f"{path.parent.name}/{path.name}: ignored a torn final record (the process stopped mid-write)")
    return rows


def _events(path: Path, kinds: set[str], notes: list[str]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        notes.append(f"{path.parent.name}/{path.name}: ignored a torn final line (the process stopped mid-write)")
    try:
        return read_events(path, kinds)
    except ValueError as exc:  # a corrupt line before the last one: the message names the file and line
        raise ReviewError(str(exc)) from exc


def load_review(folder: str | Path) -> ReviewSession:
    """Open a session folder for review; raises :class:`ReviewError` naming what is missing or unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReviewError(f"{folder}: not a session folder (no such directory)")
    notes: list[str] = []
    frames = _records(folder / "acquisition" / "frames.rec", notes)
    decisions = _records(folder / "decoder" / "decisions.rec", notes)
    if frames is None and decisions is None:
        raise ReviewError(f"{folder}: no acquisition/frames.rec or decoder/decisions.rec: not a session folder, "
                          "or the session never got a frame")
    stamps = [int(rows["t_ready"][rows["t_ready"] > 0].min()) for rows in (frames, decisions)
              if rows is not None and np.any(rows["t_ready"] > 0)]
    info = _json(folder / "session.json")
    if not info:
        notes.append("session.json is missing: the supervisor did not start the session normally")
    elif info.get("status") not in ("ok", "failed"):
        notes.append(f"session.json status is {info.get('status')!r}: the session is running, or its supervisor "
                     "was killed; this shows what was written so far")
    trials = _events(folder / "decoder" / "events.jsonl", {"trial"}, notes)
    rewards = _events(folder / "reward" / "events.jsonl", {"reward_outcome"}, notes)
    return ReviewSession(folder=folder, info=info, summary=_json(folder / "summary.json"),
                         config=_json(folder / "config.resolved.json"), frames=frames, decisions=decisions,
                         trial_events=trials, rewards=rewards, t0_ns=min(stamps) if stamps else 0, notes=notes)


def load_rois_for_review(review: ReviewSession) -> tuple[RoiOutlines | None, str]:
    """The session's ROI outlines, or None and why not (the traces stay reachable by ROI number)."""
    try:
        return review.rois(), ""
    except RoiLoadError as exc:
        return None, str(exc)
