"""Crash-safe session files: fixed-size binary records and JSON-lines event logs.

Each process appends to files it alone owns, as data arrives (no central collector to fall behind).

* :class:`RecordWriter` — per-frame rows of a numpy structured dtype, in ``NAME.rec`` with the dtype
  in ``NAME.rec.json``. Rows are filled in place in a preallocated buffer (no per-frame allocation)
  and written with one ``os.write`` at most every ``flush_interval_s``: a kill -9 loses at most that
  much, and a torn last row is ignored by :func:`read_records`.
* :class:`EventLog` — one JSON object per line, written with a single ``os.write`` per event, so a
  crash can at worst tear the final line, which :func:`read_events` reports and skips.

Data written with ``os.write`` is in the kernel's page cache and survives the death of the process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rig.clock import now_ns


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (a write may be partial, e.g. on a full pipe or disk)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


class RecordWriter:
    """Append rows of ``dtype`` to ``path``; call :meth:`next_row`, fill it, then :meth:`commit`."""

    def __init__(self, path: str | Path, dtype: np.dtype, flush_interval_s: float = 0.05, capacity: int = 256):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"dtype": self.dtype.descr, "itemsize": self.dtype.itemsize, "format": "bci-rig records v1"}
        Path(str(self.path) + ".json").write_text(json.dumps(meta), encoding="utf-8")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        self._fd = os.open(self.path, flags, 0o644)
        self._buf = np.zeros(capacity, dtype=self.dtype)
        self._bytes = memoryview(self._buf.view(np.uint8))
        self._n = 0
        self._interval_ns = int(flush_interval_s * 1e9)
        self._last_flush = now_ns()
        self.rows_written = 0

    def next_row(self) -> np.void:
        """The buffer row to fill for the next record (valid until :meth:`commit`)."""
        return self._buf[self._n]

    def commit(self) -> None:
        self._n += 1
        if self._n == len(self._buf) or now_ns() - self._last_flush >= self._interval_ns:
            self.flush()

    def append(self, **fields: Any) -> None:
        """Convenience for rare records; hot paths use :meth:`next_row` + :meth:`commit`."""
        row = self.next_row()
        for key, value in fields.items():
            row[key] = value
        self.commit()

    def flush_if_due(self) -> None:
        """Call when idle: rows must not wait in memory longer than the flush interval for the next commit."""
        if self._n and now_ns() - self._last_flush >= self._interval_ns:
            self.flush()

    def flush(self) -> None:
        if self._n:
            write_all(self._fd, self._bytes[: self._n * self.dtype.itemsize])
            self.rows_written += self._n
            self._n = 0
        self._last_flush = now_ns()

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


def read_records(path: str | Path) -> np.ndarray:
    """All complete rows of a ``.rec`` file (a torn final row from a crash is dropped)."""
    path = Path(path)
    meta_path = Path(str(path) + ".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{meta_path}: cannot read the record layout: {exc}") from exc
    dtype = np.dtype([tuple(field) if len(field) == 2 else (field[0], field[1], tuple(field[2]))
                      for field in meta["dtype"]])
    raw = path.read_bytes() if path.exists() else b""
    whole = len(raw) // dtype.itemsize
    return np.frombuffer(raw[: whole * dtype.itemsize], dtype=dtype).copy()


class EventLog:
    """Append-only JSON-lines log; each event is one ``os.write`` (atomic for our line sizes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        self._fd = os.open(self.path, flags, 0o644)

    def write(self, kind: str, **fields: Any) -> None:
        record = {"kind": kind, "t_ns": fields.pop("t_ns", None) or now_ns(), **fields}
        line = json.dumps(record, default=json_default, separators=(",", ":")) + "\n"
        write_all(self._fd, line.encode("utf-8"))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_events(path: str | Path, kinds: set[str] | None = None) -> list[dict[str, Any]]:
    """Events from a log; a torn final line (crash mid-write) is skipped, a corrupt earlier one raises."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    out: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if lineno == len(lines):  # unterminated last line: torn by a crash
                continue
            raise ValueError(f"{path}:{lineno}: corrupt event line: {exc}") from exc
        if kinds is None or record.get("kind") in kinds:
            out.append(record)
    return out


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write a small JSON document so readers see the old or the new file, never half of one."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=json_default), encoding="utf-8")
    os.replace(tmp, path)
