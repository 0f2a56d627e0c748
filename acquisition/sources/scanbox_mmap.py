"""Scanbox's memory-mapped frame sharing, for a rig that runs on the scope PC itself (docs/SCOPES.md).

Scanbox (``sbconfig.mmap = 1`` and "Memory map" ticked in its real-time panel) copies each frame into a
file it maps, ``scanbox.mmap``. The layout, as Scanbox's "Memory-mapped data sharing" page documents it:

* a header of 16 little-endian int16 words: word 0 is the semaphore and frame number (>= 0: a frame is
  there, with this number; -1: consumed, Scanbox may write the next; -2: Scanbox stopped imaging), word 1
  the lines and word 2 the columns of the frame, word 3 a copy of TTL1, word 4 the volumetric-scanning
  flag (``volscan``), word 5 the period of the volumetric (optotune) wave in frames, i.e. the planes per
  volume; the others are Scanbox's own (plug-in id, experiment numbers...);
* then ``lines * columns`` uint16 pixels in column-major (MATLAB) order, stored inverted (65535 - value).

The handshake: we copy the frame, then set word 0 to -1; Scanbox writes the next frame only then (a frame
that finds the semaphore taken is not shared; its number is then missing here and counted as missed).

``read`` polls word 0 every ``poll_s`` and never waits longer than its timeout. Nothing Scanbox writes
raises: a header whose size does not fit the file is a bad frame (released, counted and warned), a size
other than the configured one is delivered flagged WRONG_SHAPE, a missing file is waited for, a stop (-2)
and a writer that stalls are warned about, and the int16 frame number is unwrapped (it wraps or saturates
at 32767: a repeated number is counted and the frame numbered as the next one).

Several planes (``volscan`` on): Scanbox numbers every frame, and frame ``k`` is plane ``k % planes`` of
volume ``k // planes`` (as Scanbox's own plug-ins and .sbx readers take them); we apply that to the
unwrapped frame number, so each frame carries its plane and the volume number. A planes word of 0 or
absurd is warned (the configured ``acquisition.n_planes`` is used); a count other than the configured one
is warned and used (a plane out of range is then delivered for the acquisition to count).
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from acquisition.sources.base import Frame, FrameSource
from acquisition.sources.plane_index import MAX_PLANES, PlaneCheck
from acquisition.validate import FrameFlag
from rig.core.clock import now_ns

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

HEADER_WORDS = 16
HEADER_BYTES = HEADER_WORDS * 2
CONSUMED = -1  # word 0 after the reader copied the frame: Scanbox may write the next
STOPPED = -2  # word 0 when Scanbox stopped imaging
#: Scanbox's frame number is an int16: frame numbers are unwrapped modulo this
FRAME_NUMBER_MODULUS = 1 << 15
#: a repeated warning goes out the first time, then every this many times
WARN_EVERY = 100
_RETRY_MAP_NS = 500_000_000  # how often a missing file is looked for again


class ScanboxMmapSource(FrameSource):
    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> ScanboxMmapSource:
        """The registry's factory: ``[acquisition.scanbox_mmap]``."""
        c = cfg.scanbox_mmap
        return cls(c.path, c.height_px, c.width_px, frame_rate_hz=cfg.frame_rate_hz, tagname=c.tagname,
                   map_bytes=c.map_bytes, stale_after_s=c.stale_after_s, poll_s=c.poll_s, n_planes=cfg.n_planes)

    def __init__(self, path: str | Path, height: int, width: int, *, frame_rate_hz: float = 15.5,
                 tagname: str = "", map_bytes: int = 0, stale_after_s: float = 2.0, poll_s: float = 0.0005,
                 n_planes: int = 1) -> None:
        """``path``: Scanbox's ``scanbox.mmap``; ``tagname`` (Windows only): a named mapping instead of a file,
        which then needs ``map_bytes``. ``map_bytes`` 0: the whole file. ``n_planes``: planes per volume the rig
        records (Scanbox's volscan); ``frame_rate_hz`` is one plane's (the volume rate)."""
        super().__init__()
        self._n_planes = int(n_planes)
        self._planes = PlaneCheck("scanbox_mmap", self._n_planes, self.warn)
        self._unwrapped = 0  # Scanbox's frame number of the last frame, unwrapped, since its acquisition started
        self._volume_base = 0  # added to unwrapped // planes so volume numbers keep increasing across restarts
        self._last_volume = -1
        if height < 1 or width < 1:
            raise ValueError(f"`height_px`/`width_px`: must be > 0 (got {height}x{width})")
        if tagname and sys.platform != "win32":
            raise ValueError("`tagname`: a named mapping exists on Windows only; give `path` (Scanbox's scanbox.mmap)")
        if tagname and map_bytes < HEADER_BYTES + 2 * height * width:
            raise ValueError("`map_bytes`: a named mapping needs its size, at least 32 + 2 x height x width bytes")
        self.path = Path(path)
        self._tagname = tagname
        self._map_bytes = int(map_bytes)
        self._shape = (int(height), int(width))
        self._dtype = np.dtype(np.uint16)
        self._rate = float(frame_rate_hz)
        self._stale_ns = int(stale_after_s * 1e9)
        self._poll_s = max(float(poll_s), 0.0)
        self._mm: mmap.mmap | None = None
        self._opened = False
        self._next_map_ns = 0
        self._buffers: dict[tuple[int, int], np.ndarray] = {}  # delivered frames, one reused buffer per shape
        self._last_scope = -1  # Scanbox's number of the last frame taken (-1: none since open or a stop)
        self._stopped = False
        self._stalled = False
        self._last_frame_ns = 0
        self._missing_warned = False
        self._c = dict.fromkeys(("frames", "bad_frames", "frames_missed", "wrong_shape_frames", "wrong_size_frames",
                                 "repeated_frame_numbers", "bad_semaphore", "stops", "restarts", "stalls",
                                 "ttl_high_frames", "volscan_off_frames"), 0)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        if not self._tagname and not self.path.parent.is_dir():
            raise OSError(f"scanbox_mmap: folder {self.path.parent} does not exist (scanbox_mmap.path: Scanbox's "
                          "scanbox.mmap, in its mmap folder)")
        self._opened = True
        self._map(at_open=True)

    def close(self) -> None:
        self._opened = False
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def link_state(self) -> str:
        if self._mm is None or self._stopped or self._stalled or not self._last_frame_ns:
            return "waiting"
        return "ok" if now_ns() - self._last_frame_ns < self._stale_ns else "waiting"

    def stats(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in self._c.items()}, **self._planes.stats()}

    def _map(self, at_open: bool = False) -> None:
        """Map the file (or the named mapping); a file not there yet (Scanbox not started) is waited for. Other
        errors (no permission...) raise at open, as configuration errors, and are warnings later."""
        self._next_map_ns = now_ns() + _RETRY_MAP_NS
        if self._tagname:
            self._mm = mmap.mmap(-1, self._map_bytes, tagname=self._tagname)  # type: ignore[call-arg]
            return
        try:
            with open(self.path, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER_BYTES:
                    raise FileNotFoundError(f"{self.path} has {size} bytes, less than the 32-byte header")
                self._mm = mmap.mmap(f.fileno(), min(self._map_bytes, size) if self._map_bytes else 0)
        except OSError as exc:
            if at_open and not isinstance(exc, FileNotFoundError):
                raise OSError(f"scanbox_mmap: cannot map {self.path}: {exc}") from exc
            if not self._missing_warned:
                self._missing_warned = True
                self.warn("mmap_missing", f"scanbox_mmap: cannot map {self.path} yet ({exc}); is Scanbox running "
                                          "with mmap = 1 and 'Memory map' ticked? Waiting for it")
            return
        if self._missing_warned:
            self.warn("link_restored", f"scanbox_mmap: {self.path} mapped")

    # ------------------------------------------------------------------ reading
    def read(self, timeout_s: float) -> Frame | None:
        if not self._opened:
            raise RuntimeError("ScanboxMmapSource.read() called before open() or after close()")
        deadline = now_ns() + int(max(timeout_s, 0.0) * 1e9)
        while True:
            now = now_ns()
            if self._mm is None and now >= self._next_map_ns:
                self._map()
            if self._mm is not None:
                word = struct.unpack_from("<h", self._mm, 0)[0]
                if word >= 0:
                    frame = self._take(word, now_ns())  # ready: when the semaphore said so
                    if frame is not None:
                        return frame
                elif word == STOPPED:
                    self._on_stopped()
                elif word != CONSUMED:
                    self._bad_semaphore(word)
                self._check_stall(now_ns())
            remaining = (deadline - now_ns()) / 1e9
            if remaining <= 0:
                return None
            time.sleep(min(self._poll_s, remaining))

    def _release(self) -> None:
        """Word 0 = -1: the frame is consumed and Scanbox may write the next one."""
        assert self._mm is not None
        struct.pack_into("<h", self._mm, 0, CONSUMED)

    def _take(self, scope_number: int, t_ready: int) -> Frame | None:
        """Copy the frame Scanbox left (inverting it back), release the semaphore, number the frame. ``t_ready``:
        when the semaphore said the frame was there (so the copy counts in the frame's latency)."""
        mm = self._mm
        assert mm is not None
        lines, columns, ttl, volscan, planes_word = struct.unpack_from("<5h", mm, 2)
        n_bytes = HEADER_BYTES + 2 * lines * columns
        if lines < 1 or columns < 1 or n_bytes > len(mm):
            self._release()
            self._c["bad_frames"] += 1
            self._c["wrong_size_frames"] += 1
            self._warn_every("wrong_size", self._c["wrong_size_frames"],
                             f"frame {scope_number}: the header says {lines}x{columns} pixels, which do not fit the "
                             f"{len(mm)}-byte mapping; frame discarded")
            return None
        shape = (int(lines), int(columns))
        out = self._buffers.get(shape)
        if out is None:
            out = self._buffers[shape] = np.empty(shape, np.uint16)
        raw = np.frombuffer(mm, dtype="<u2", count=lines * columns, offset=HEADER_BYTES)
        np.invert(raw.reshape(columns, lines).T, out=out)  # 65535 - v, and column-major to C order
        del raw  # the mapping cannot be closed while a view of it exists
        self._release()
        flags = 0
        if shape != self._shape:
            flags |= FrameFlag.WRONG_SHAPE
            self._c["wrong_shape_frames"] += 1
            self._warn_every("wrong_shape", self._c["wrong_shape_frames"],
                             f"frame {scope_number}: {lines}x{columns} pixels, the configured frame size is "
                             f"{self._shape[0]}x{self._shape[1]} (flagged WRONG_SHAPE)")
        planes = self._planes_of(scope_number, volscan, planes_word)
        number, plane, number_flags = self._number(scope_number, planes)
        if ttl:
            self._c["ttl_high_frames"] += 1
        self._c["frames"] += 1
        if self._stalled:
            self.warn("link_restored", f"scanbox_mmap: frames again after a stall of "
                                       f"{(t_ready - self._last_frame_ns) / 1e9:.2f} s")
        self._stalled = False
        self._stopped = False
        self._last_frame_ns = t_ready
        return Frame(data=out, number=number, t_ready_ns=t_ready, flags=int(flags | number_flags), plane=plane)

    def _planes_of(self, scope_number: int, volscan: int, planes_word: int) -> int:
        """Planes per volume for this frame: 1 with volscan off; else the header's count if it is sane."""
        if not volscan:
            if self._n_planes > 1:
                self._c["volscan_off_frames"] += 1
                self._warn_every("volscan_off", self._c["volscan_off_frames"],
                                 f"frame {scope_number}: Scanbox's volscan is off but {self._n_planes} planes are "
                                 "configured ([acquisition] n_planes); the frame is delivered as plane 0")
            return 1
        planes = planes_word if 1 <= planes_word <= MAX_PLANES else self._n_planes
        self._planes.check(f"frame {scope_number}", 0, planes_word)  # the count; the plane is checked later
        return planes

    def _number(self, scope_number: int, planes: int) -> tuple[int, int, int]:
        """(volume number, plane, AFTER_GAP or 0) for Scanbox's int16 ``scope_number``: its frame number is
        unwrapped, then frame k is plane k % planes of volume k // planes; volume numbers keep increasing."""
        last = self._last_scope
        self._last_scope = scope_number
        step = (scope_number - last) % FRAME_NUMBER_MODULUS
        flags = 0
        if last < 0 or step > FRAME_NUMBER_MODULUS // 2:  # a wrap is a small step; a big one went back
            self._unwrapped = scope_number
            if self._last_volume >= 0:  # imaging started again (a stop we may not have seen): numbers go on
                self._c["restarts"] += 1
                self._volume_base = self._last_volume + 1 - scope_number // planes
                self.warn("acquisition_restarted", f"scanbox_mmap: Scanbox imaging again (its frame {scope_number}); "
                                                   f"frames continue from {self._last_volume + 1}")
                flags = int(FrameFlag.AFTER_GAP)
            # else the first frame: Scanbox's own number, so it matches the .sbx file
        else:
            if step == 0:
                self._c["repeated_frame_numbers"] += 1
                self._warn_every("repeated_frame_number", self._c["repeated_frame_numbers"],
                                 f"frame number {scope_number} again (Scanbox's int16 counter saturated?); the "
                                 "frame is taken as the next one")
                step = 1
            self._unwrapped += step
            if step > 1:
                self._c["frames_missed"] += step - 1
                flags = int(FrameFlag.AFTER_GAP)
        volume, plane = divmod(self._unwrapped, planes)
        volume += self._volume_base
        if volume < self._last_volume:  # the planes count changed mid-run: numbers still never go back
            self._volume_base += self._last_volume - volume
            volume = self._last_volume
        self._last_volume = volume
        if planes > 1 or self._n_planes > 1:
            self._planes.check(f"frame {scope_number}", plane, None)
        return volume, plane, flags

    def _on_stopped(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._c["stops"] += 1
        if self._last_volume >= 0:
            self._last_scope = -1  # the next frame starts a new acquisition
        self.warn("acquisition_stopped", "scanbox_mmap: Scanbox stopped imaging (semaphore -2); waiting for it to "
                                         "start again")

    def _bad_semaphore(self, word: int) -> None:
        self._c["bad_semaphore"] += 1
        self._warn_every("bad_semaphore", self._c["bad_semaphore"],
                         f"header word 0 is {word}, neither a frame number nor -1/-2 (is {self.path} Scanbox's "
                         "scanbox.mmap?)")

    def _check_stall(self, now: int) -> None:
        """A writer that stops mid-acquisition (Scanbox hung, mmap unticked) is warned about once per stall."""
        if self._stalled or self._stopped or not self._last_frame_ns or now - self._last_frame_ns < self._stale_ns:
            return
        self._stalled = True
        self._c["stalls"] += 1
        self.warn("scope_stalled", f"scanbox_mmap: no frame for {(now - self._last_frame_ns) / 1e9:.1f} s and "
                                   "Scanbox has not said it stopped; is 'Memory map' still ticked?")

    def _warn_every(self, code: str, count: int, message: str) -> None:
        """The first occurrence, then every :data:`WARN_EVERY`-th: a broken writer must not flood the operator."""
        if count == 1 or count % WARN_EVERY == 0:
            self.warn(code, f"scanbox_mmap: {message} ({count} so far)")
