"""What the offline tools check in a session's files before using them (rules: docs/SESSION_FORMAT.md).

A session folder is data from disk, possibly damaged (a flipped bit, a half-copied folder, a hand edit). Each
check here turns a damaged file into one :class:`SessionError` naming the file (and line or row) and what is
wrong, raised before the tool works with it, instead of a traceback from deep inside numpy or a silently
wrong result. A crash leaves a torn last row or line, which is not damage: it is dropped and noted.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rig.core.safe_npy import NpyFileError, load_npy
from rig.core.store import CorruptFileError, read_events, read_records, torn_record_bytes


class SessionError(ValueError):
    """A session folder that cannot be used for what was asked; the message names the file."""


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


_INT: tuple[Callable[[Any], bool], str] = (_is_int, "an integer")
_NUMBER: tuple[Callable[[Any], bool], str] = (_is_number, "a number")

#: Event fields the offline tools compute with, by event kind (checked when present; missing ones take defaults).
EVENT_FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "reward_outcome": {"volume_ul": _NUMBER, "open_ms": _NUMBER, "frame": _INT, "t_ready": _INT,
                       "t_requested": _INT, "t_written": _INT, "t_ack": _INT, "t_done": _INT,
                       "board_us_ack": _INT, "board_us_done": _INT},
    "lick": {"board_us": _INT, "t_board_ns": _INT, "t_received": _INT},
    "trial": {"frame": _INT, "trial": _INT, "hits": _INT, "trials": _INT},
    "reward_request": {"frame": _INT, "volume_ul": _NUMBER},
    "applied": {"after_frame": _INT},
    "final_stats": {"frames": _INT, "frames_dropped": _INT, "bad_frames": _INT},
}
#: Event fields without which an event cannot be used at all.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {"applied": ("command", "after_frame")}


def event_problem(event: dict[str, Any]) -> str | None:
    """What is wrong with one event for the offline tools, or None."""
    kind = event["kind"]
    for name in REQUIRED_FIELDS.get(kind, ()):
        if name not in event:
            return f"{kind} event without {name!r}"
    if "t_ns" in event and not _is_int(event["t_ns"]):
        return f"{kind} event: t_ns is {_show(event['t_ns'])}, expected an integer"
    for name, (ok, what) in EVENT_FIELDS.get(kind, {}).items():
        if name in event and not ok(event[name]):
            return f"{kind} event: {name} is {_show(event[name])}, expected {what}"
    if kind == "applied" and not (isinstance(event["command"], str) and isinstance(event.get("args", {}), dict)):
        return "applied event: 'command' must be a string and 'args' an object"
    return None


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + "..."


def read_checked_events(path: Path, kinds: set[str] | None = None) -> list[dict[str, Any]]:
    """:func:`rig.core.store.read_events` with :func:`event_problem` applied; problems as :class:`SessionError`."""
    try:
        return read_events(path, kinds, check=event_problem)
    except CorruptFileError as exc:
        raise SessionError(str(exc)) from exc


#: Fields the offline tools read from each ``.rec`` file, with their numpy kind ("i" integer, "f" float).
RECORD_FIELDS: dict[str, dict[str, str]] = {
    "frames.rec": {"frame": "i", "t_ready": "i", "t_registered": "i", "t_extracted": "i", "t_sent": "i",
                   "dy": "f", "dx": "f", "corr": "f", "flags": "i", "F": "f", "Fneu": "f"},
    "decisions.rec": {"frame": "i", "t_ready": "i", "t_decided": "i", "mode": "i", "trial": "i",
                      "trial_state": "i", "cursor": "f", "dff": "f"},
    "z.rec": {"frame": "i", "z_um": "f", "corr": "f"},
}


def read_checked_records(path: Path, notes: list[str] | None = None) -> np.ndarray | None:
    """The rows of a ``.rec`` file (None: neither it nor its sidecar exists), layout and frame order checked.

    A torn final row is noted in ``notes``. A sidecar that does not describe the data shows as frame numbers
    that do not increase (rows read at the wrong size are garbage), so the order check catches it as well as
    a flipped bit in a frame number.
    """
    if not path.exists() and not Path(str(path) + ".json").exists():
        return None
    try:
        rows = read_records(path)
    except CorruptFileError as exc:
        raise SessionError(str(exc)) from exc
    for name, kind in RECORD_FIELDS.get(path.name, {}).items():
        if name not in (rows.dtype.names or ()) or rows.dtype[name].base.kind != kind:
            what = "no such field" if name not in (rows.dtype.names or ()) else f"type {rows.dtype[name]}"
            raise SessionError(f"{path}.json: field {name!r}: {what}; {path.name} rows have {name!r} as "
                               f"{'an integer' if kind == 'i' else 'a float'}")
    torn = torn_record_bytes(path, rows.dtype)
    if torn and notes is not None:
        notes.append(f"{path.name}: ignored a torn final record ({torn} of {rows.dtype.itemsize} bytes): "
                     "the writing process stopped mid-write")
    check_frame_numbers(path, rows)
    return rows


def check_frame_numbers(path: Path, rows: np.ndarray) -> None:
    """Frame numbers in a ``.rec`` file start at 0 or later and only increase (the rig never writes others)."""
    if "frame" not in (rows.dtype.names or ()) or not len(rows):
        return
    frames = np.asarray(rows["frame"])
    negative = np.flatnonzero(frames < 0)
    if negative.size:
        i = int(negative[0])
        raise SessionError(f"{path}: row {i} has frame number {int(frames[i])}; frame numbers are >= 0, so the "
                           f"file is damaged or {path.name}.json does not describe it")
    back = np.flatnonzero(np.diff(frames) <= 0)
    if back.size:
        i = int(back[0]) + 1
        raise SessionError(f"{path}: row {i} has frame {int(frames[i])} after frame {int(frames[i - 1])}; frame "
                           f"numbers only increase, so the file is damaged (a flipped bit?) or {path.name}.json "
                           "does not describe it")


def check_same_rois(frames_path: Path, frames: np.ndarray | None, decisions_path: Path,
                    decisions: np.ndarray | None) -> None:
    """``frames.rec`` and ``decisions.rec`` of one session hold the same number of ROIs."""
    if frames is None or decisions is None or "F" not in (frames.dtype.names or ()) \
            or "dff" not in (decisions.dtype.names or ()):
        return
    n_f, n_d = frames.dtype["F"].shape, decisions.dtype["dff"].shape
    if n_f != n_d:
        raise SessionError(f"{decisions_path}.json: rows hold dF/F of shape {n_d} but {frames_path.name} holds F "
                           f"of shape {n_f}: the layouts do not belong to one session")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON document that must be an object (None: the file does not exist)."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SessionError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise SessionError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SessionError(f"{path}: a JSON {type(doc).__name__}, expected an object")
    return doc


def movie_layout(meta_path: Path, meta: dict[str, Any]) -> tuple[np.dtype, int, int]:
    """(dtype, height, width) of ``movie.raw`` from ``movie.json``: a numeric pixel type, a frame of >= 1 pixel."""
    if meta.get("order", "C") != "C":
        raise SessionError(f"{meta_path}: unsupported pixel order {_show(meta.get('order'))} (expected C)")
    try:
        with warnings.catch_warnings():  # a deprecated alias is refused below anyway: no warning line
            warnings.simplefilter("ignore", DeprecationWarning)
            dtype = np.dtype(meta["dtype"]) if isinstance(meta.get("dtype"), str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf" or dtype.shape or dtype.names:
        raise SessionError(f"{meta_path}: pixel dtype {_show(meta.get('dtype'))} is not a numeric type such as "
                           "'<u2'")
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(n) for n in shape)):
        raise SessionError(f"{meta_path}: shape {_show(shape)} is not [-1, height, width]")
    height, width = shape[1], shape[2]
    if height < 1 or width < 1:
        raise SessionError(f"{meta_path}: frames of {height} x {width} pixels; a frame has at least one pixel")
    return dtype, height, width


def load_reference(path: Path) -> np.ndarray | None:
    """A plane's saved registration reference (``rois/reference.npy``) as a checked 2-D image; None: not saved."""
    if not path.exists():
        return None
    try:
        reference = load_npy(path, allow_objects=False)
    except NpyFileError as exc:
        raise SessionError(str(exc)) from exc
    if reference.ndim != 2 or reference.dtype.kind not in "biuf" or reference.dtype.names:
        raise SessionError(f"{path}: expected a 2-D image, got {reference.dtype} of shape {reference.shape}")
    return reference
