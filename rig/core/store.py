"""Crash-safe session files: fixed-size binary records and JSON-lines event logs.

Each process appends to files it alone owns, as data arrives (no central collector to fall behind).

* :class:`RecordWriter` — per-frame rows of a numpy structured dtype, in ``NAME.rec`` with the dtype
  in ``NAME.rec.json``. Rows are filled in place in a preallocated buffer (no per-frame allocation)
  and written with one ``os.write`` at most every ``flush_interval_s``: a kill -9 loses at most that
  much, and a torn last row is ignored by :func:`read_records` (which maps the file, checked against
  its sidecar, rather than reading it).
* :class:`EventLog` — one JSON object per line, written with a single ``os.write`` per event, so a
  crash can at worst tear the final line, which :func:`read_events` reports and skips.
* :class:`FrameFileWriter` — raw frames (the movie) appended by a background thread from a preallocated
  ring, so a disk that stalls (writeback, a busy network share) never stalls the real-time loop. Its ring,
  thread and lost-frame accounting are :class:`SlotRingWriter`'s, which the compressed movie writer
  (``rig.core.movie_file``) shares.

Data written with ``os.write`` is in the kernel's page cache and survives the death of the process.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rig.core.clock import now_ns


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


class SlotRingWriter:
    """Append fixed-size frames to ``path`` from a background thread, in batches; subclasses encode a batch.

    :meth:`put` copies the frame into a free slot of a preallocated ring of ``buffer_frames`` and returns at
    once; the writer thread gathers queued frames into a batch of at most ``batch_frames`` (closed early when
    its first frame is ``batch_s`` old, or at :meth:`close`), frees their slots (a ``_write_from_slot``
    subclass frees its one frame's slot only once written), and writes the bytes
    :meth:`_encode` makes of it with one ``sink(fd, data)`` call (default :func:`write_all`; ``os.write``
    releases the GIL). If the writer falls so far behind that the ring is full, the frame is written as zeros
    instead (the file keeps one frame per call, in order), counted in :attr:`frames_lost` and passed to
    ``on_lost`` — reported, never silent. A write error (disk full...) is raised by the next :meth:`put` or by
    :meth:`close`. ``on_thread_start`` runs first in the writer thread (the acquisition lowers the thread's
    priority there). Frames handed over before a kill -9 are in the page cache once their batch is written.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: np.dtype | type, buffer_frames: int,
                 batch_frames: int = 1, batch_s: float = 0.0, on_lost: Callable[[int], None] | None = None,
                 on_thread_start: Callable[[], None] | None = None,
                 sink: Callable[[int, bytes | memoryview], None] | None = None) -> None:
        if buffer_frames < 1:
            raise ValueError(f"`buffer_frames`: must be >= 1, got {buffer_frames}")
        if batch_frames < 1 or (self._write_from_slot and batch_frames != 1):
            raise ValueError(f"`batch_frames`: must be >= 1 (1 when written from the slot), got {batch_frames}")
        self.path = Path(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.frames_lost = 0
        self.frames_written = 0
        self.bytes_written = 0  # bytes in the file
        self.raw_bytes = 0  # bytes of the frames written, as they are in memory
        self._sink = sink or write_all
        self._on_lost = on_lost
        self._on_thread_start = on_thread_start
        self._batch_ns = int(batch_s * 1e9)
        self._slots = np.zeros((buffer_frames, *self.shape), self.dtype)
        self._batch = np.zeros((batch_frames, *self.shape), self.dtype)
        self._queue: collections.deque[tuple[int, int]] = collections.deque()  # (slot or -1 for zeros, put time)
        self._next_slot = 0
        self._in_flight = 0  # slots queued, being copied into the batch, or (from the slot) being written
        self._put = 0
        self._done = 0
        self._closing = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        # when put() wakes the thread: at once while it waits for a first frame (the batch's clock starts then) or
        # writes from the slot; otherwise once an eighth of a batch is queued (or at the batch's deadline, when
        # it wakes by itself). Waking it for each frame cost the loop a thread switch per frame at 1 kHz.
        self._idle = False  # the thread waits for a batch's first frame, with no deadline
        self._wake_at = 1 if self._write_from_slot else max(1, min(batch_frames // 8, buffer_frames // 4))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        self._fd = os.open(self.path, flags, 0o644)
        self._thread = threading.Thread(target=self._run, name=f"write-{self.path.name}", daemon=True)
        self._thread.start()

    #: write a frame straight from its slot and free the slot once written (no copy; batches of one frame)
    _write_from_slot = False

    def _encode(self, block: np.ndarray) -> bytes | memoryview:
        """The bytes written for a batch of frames (``block``, valid only during the call): here, as they are."""
        return block.data

    def put(self, frame: np.ndarray | None) -> None:
        """Queue one frame (``None``: a frame of zeros, e.g. for a frame of the wrong size). One producer thread."""
        if self._error is not None:
            raise OSError(f"{self.path}: writing the frames failed: {self._error}") from self._error
        if self._closing:
            raise RuntimeError(f"{self.path}: the frame writer is closed")
        if frame is not None and frame.shape != self.shape:
            raise ValueError(f"{self.path}: frame of shape {frame.shape}, the movie's frames are {self.shape}")
        slot = -1
        lost = False
        with self._cond:
            if frame is not None:
                if self._in_flight < len(self._slots):
                    slot = self._next_slot
                    self._next_slot = (slot + 1) % len(self._slots)
                    self._in_flight += 1
                else:
                    lost = True
        if slot >= 0:
            # the slot is ours until queued: the writer only touches queued slots
            try:
                np.copyto(self._slots[slot], frame, casting="unsafe")
            except BaseException:
                with self._cond:  # give the slot back (one producer: it is still the newest one)
                    self._next_slot = slot
                    self._in_flight -= 1
                raise
        with self._cond:
            self._queue.append((slot, time.monotonic_ns()))
            self._put += 1
            if self._idle or len(self._queue) >= self._wake_at:
                self._cond.notify()
        if lost:
            self.frames_lost += 1
            if self._on_lost is not None:
                self._on_lost(self.frames_lost)

    def pending(self) -> int:
        """Frames handed to :meth:`put` but not yet on disk."""
        with self._cond:
            return self._put - self._done

    def close(self) -> None:
        """Write what is queued (the last batch may be short), close the file; raise a write error the thread met."""
        if self._fd < 0:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        os.close(self._fd)
        self._fd = -1
        if self._error is not None:
            raise OSError(f"{self.path}: writing the frames failed: {self._error}") from self._error

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        if self._on_thread_start is not None:
            try:
                self._on_thread_start()
            except Exception as exc:  # noqa: BLE001 - reported through put()/close(), the movie is not written
                self._error = exc
        n = 0  # frames in the batch being filled
        first_ns = 0  # when its first frame was put
        held = -1  # the slot written in place (``_write_from_slot``): freed once written
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    if not n:
                        self._idle = True
                        self._cond.wait()
                        self._idle = False
                        continue
                    remaining_s = (first_ns + self._batch_ns - time.monotonic_ns()) / 1e9
                    if remaining_s <= 0:
                        break  # the batch's time is up: write it even though no frame came
                    self._cond.wait(remaining_s)
                item = self._queue.popleft() if self._queue else None
                closing = self._closing
            if item is not None:
                slot, t_put = item
                if slot >= 0 and self._write_from_slot:
                    held = slot
                elif slot >= 0:
                    np.copyto(self._batch[n], self._slots[slot])
                    with self._cond:
                        self._in_flight -= 1  # the slot is free again: its frame is in the batch
                else:
                    self._batch[n] = 0
                if n == 0:
                    first_ns = t_put
                n += 1
            if n and (n == len(self._batch) or time.monotonic_ns() - first_ns >= self._batch_ns
                      or (item is None and closing)):
                self._write_batch(n, held)
                n = 0
                held = -1
            if item is None and closing:
                return

    def _write_batch(self, n: int, held: int) -> None:
        try:
            if self._error is None:
                block = self._slots[held:held + 1] if held >= 0 else self._batch[:n]
                data = self._encode(block)
                self._sink(self._fd, data)
                self.frames_written += n
                self.bytes_written += memoryview(data).nbytes
                self.raw_bytes += block.nbytes
        except Exception as exc:  # noqa: BLE001 - disk full, I/O error...: keep draining, report via put()/close()
            self._error = exc
        finally:
            with self._cond:
                self._done += n
                if held >= 0:
                    self._in_flight -= 1


class FrameFileWriter(SlotRingWriter):
    """Raw frames, each written straight from its slot with one ``os.write`` as soon as the thread takes it.

    The slot stays taken until its frame is written, so ``buffer_frames`` bounds the frames not yet on disk.
    """

    _write_from_slot = True

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: np.dtype | type, buffer_frames: int,
                 on_lost: Callable[[int], None] | None = None, on_thread_start: Callable[[], None] | None = None,
                 sink: Callable[[int, bytes | memoryview], None] | None = None) -> None:
        super().__init__(path, shape, dtype, buffer_frames, on_lost=on_lost, on_thread_start=on_thread_start,
                         sink=sink)


#: the ``format`` a ``.rec.json`` sidecar declares (written by :class:`RecordWriter`)
RECORD_FORMAT = "bci-rig records v1"
#: numpy kinds a record field may have: booleans and numbers, never Python objects or raw bytes
RECORD_KINDS = "biufc"
#: the largest row a sidecar may declare (a 50,000-ROI row is ~400 kB): past this it is not ours
MAX_RECORD_ITEMSIZE = 64 * 2**20


class CorruptFileError(ValueError):
    """A session file that is not what its writer writes; the message names the file and what is wrong."""


def read_record_layout(path: str | Path) -> np.dtype:
    """The row dtype of a ``.rec`` file, from its ``.rec.json`` sidecar, checked before any row is read.

    The sidecar must be the JSON object :class:`RecordWriter` writes: the ``format`` tag, plain numeric fields
    (``[name, type]`` or ``[name, type, shape]``) and an ``itemsize`` equal to the dtype's, so a sidecar from
    another file or a hand-edited one is refused instead of reinterpreting the bytes.
    """
    meta_path = Path(str(path) + ".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CorruptFileError(f"{meta_path}: cannot read the record layout: {exc.strerror or exc}") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptFileError(f"{meta_path}: the record layout is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{meta_path}: the record layout is a JSON {type(meta).__name__}, expected an object")
    if meta.get("format") != RECORD_FORMAT:
        fmt = meta.get("format")
        raise CorruptFileError(f"{meta_path}: format {_brief(fmt if isinstance(fmt, str) else json.dumps(fmt))}, "
                               f"expected {RECORD_FORMAT!r}")
    fields = meta.get("dtype")
    if not isinstance(fields, list) or not fields:
        raise CorruptFileError(f"{meta_path}: 'dtype' must be a non-empty list of [name, type(, shape)] fields")
    spec: list[tuple[Any, ...]] = []
    for field in fields:
        if not (isinstance(field, list) and len(field) in (2, 3) and isinstance(field[0], str) and field[0]
                and isinstance(field[1], str)
                and (len(field) == 2 or (isinstance(field[2], list)
                                         and all(type(n) is int and 0 <= n < 2**31 for n in field[2])))):
            raise CorruptFileError(f"{meta_path}: field {_brief(json.dumps(field))} is not [name, type] or "
                                   "[name, type, shape]")
        spec.append(tuple(field[:2]) if len(field) == 2 else (field[0], field[1], tuple(field[2])))
    try:
        with warnings.catch_warnings():  # a deprecated alias ("a") is refused below anyway: no warning line
            warnings.simplefilter("ignore", DeprecationWarning)
            dtype = np.dtype(spec)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{meta_path}: not a valid record layout: {_brief(str(exc), 200)}") from exc
    for name in dtype.names or ():
        kind = dtype.fields[name][0].base.kind  # type: ignore[index]
        if kind not in RECORD_KINDS:
            raise CorruptFileError(f"{meta_path}: field {name!r} has type {dtype.fields[name][0]}; "  # type: ignore[index]
                                   "records hold numbers only")
    itemsize = meta.get("itemsize")
    if type(itemsize) is not int or itemsize != dtype.itemsize:
        raise CorruptFileError(f"{meta_path}: declares itemsize {itemsize!r} but its fields make rows of "
                               f"{dtype.itemsize} bytes")
    if not 0 < dtype.itemsize <= MAX_RECORD_ITEMSIZE:
        raise CorruptFileError(f"{meta_path}: rows of {dtype.itemsize} bytes; expected 1 to {MAX_RECORD_ITEMSIZE}")
    return dtype


def read_records(path: str | Path) -> np.ndarray:
    """All complete rows of a ``.rec`` file, memory-mapped read-only (a torn final row from a crash is dropped).

    Mapped, not read: an 8 GB ``decisions.rec`` costs address space, and pages are read as the rows are used.
    The layout is checked first (:func:`read_record_layout`); bytes past the last whole row are
    :func:`torn_record_bytes`, which a reader reports.
    """
    path = Path(path)
    dtype = read_record_layout(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return np.zeros(0, dtype=dtype)  # the writer created the sidecar and died before its first row
    n_rows = size // dtype.itemsize
    if n_rows == 0:
        return np.zeros(0, dtype=dtype)  # an empty file cannot be mapped
    try:
        return np.memmap(path, dtype=dtype, mode="r", shape=(n_rows,)).view(np.ndarray)
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: cannot map the records: {exc}") from exc


def torn_record_bytes(path: str | Path, dtype: np.dtype) -> int:
    """Bytes past the last whole row of a ``.rec`` file: non-zero after a crash mid-write (or a wrong layout)."""
    path = Path(path)
    return path.stat().st_size % dtype.itemsize if path.exists() else 0


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


def read_events(path: str | Path, kinds: set[str] | None = None,
                check: Callable[[dict[str, Any]], str | None] | None = None) -> list[dict[str, Any]]:
    """Events from a log; a torn final line (crash mid-write) is skipped, a corrupt earlier one raises.

    ``check(event)`` returns what is wrong with an event the caller relies on (None: nothing); a problem is
    raised as :class:`CorruptFileError` naming the file and line, so a bad value never surfaces deep inside
    a tool as a bare TypeError.
    """
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
            raise CorruptFileError(f"{path}:{lineno}: corrupt event line: {exc}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
            raise CorruptFileError(f"{path}:{lineno}: an event line must be a JSON object with a string 'kind', "
                                   f"got {_brief(line)}")
        if kinds is None or record.get("kind") in kinds:
            problem = check(record) if check is not None else None
            if problem:
                raise CorruptFileError(f"{path}:{lineno}: {problem}")
            out.append(record)
    return out


def _brief(text: str, limit: int = 60) -> str:
    """``text`` cut for an error message (a corrupt line may be megabytes long)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


#: Waits (s) between attempts of an ``os.replace`` refused with PermissionError, about 1 s in all. On Windows
#: replacing a file that another program has open (a console polling session.json, an antivirus scanner, the
#: search indexer, a sync client) fails until that program lets go, usually within milliseconds.
REPLACE_BACKOFF_S: tuple[float, ...] = (0.01, 0.03, 0.06, 0.1, 0.2, 0.3, 0.3)


def replace_with_retry(src: str | Path, dst: str | Path, backoff_s: Sequence[float] = REPLACE_BACKOFF_S) -> None:
    """``os.replace`` that waits out a PermissionError from a program briefly holding ``dst`` open (Windows).

    Tries ``len(backoff_s) + 1`` times; still refused after that, raises PermissionError naming the attempts.
    Other errors (disk full, a missing folder) are raised at once: waiting does not fix them.
    """
    for attempt, delay in enumerate((*backoff_s, None), 1):
        try:
            os.replace(src, dst)
            return
        except PermissionError as exc:
            if delay is None:
                raise PermissionError(
                    exc.errno, f"cannot replace {dst}: still refused after {attempt} attempts over "
                    f"{sum(backoff_s):.2g} s ({exc.strerror or exc}); another program (a viewer, an antivirus "
                    f"scanner, the search indexer, a sync client) holds it open. The new content is in {src}",
                    str(dst)) from exc
            time.sleep(delay)


def write_json_atomic(path: str | Path, data: Any, backoff_s: Sequence[float] = REPLACE_BACKOFF_S) -> None:
    """Write a small JSON document so readers see the old or the new file, never half of one.

    The replace is retried over ~1 s when another program holds the file open (see :func:`replace_with_retry`);
    after that it raises PermissionError, and callers for which the file is not essential warn instead.
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=json_default), encoding="utf-8")
    replace_with_retry(tmp, path, backoff_s)
