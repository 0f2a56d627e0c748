"""The frame-source interface every acquisition input implements (sim, replay, CLOOSE TCP, ZeroMQ stream).

What a source can do beyond this interface (ground truth, hearing the rig) is declared where it is
registered, :mod:`acquisition.sources.registry`, not here.
"""

from __future__ import annotations

import abc
import collections
import math
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

#: link states reported by :meth:`FrameSource.link_state`
LINK_STATES = ("ok", "waiting", "reconnecting", "ended")
#: how long :meth:`Frame.wait_data` waits for a source's thread to finish a frame's row order (it takes < 1 ms)
DATA_WAIT_S = 1.0


@dataclass
class Frame:
    """One frame as it left the source.

    ``data`` may be a buffer the source reuses: it is valid until the next :meth:`FrameSource.read`.
    ``number`` is the scope's frame number (0-based) or, for sources without a counter, a local count.
    ``t_ready_ns`` is ``rig.core.clock.now_ns()`` when the whole frame was in memory.
    ``flags`` carries :class:`acquisition.validate.FrameFlag` bits the source already knows (AFTER_GAP...).
    ``plane`` is the frame's plane (0-based) in a multi-plane (fast-z) volume; with several planes ``number``
    is the *volume* number, the same for every plane of one volume, so each plane counts 0, 1, 2... on its own
    (docs/PLANES.md).

    ``wire`` and ``data_ready``: only from a source that was asked to :meth:`FrameSource.deliver_early`. ``wire``
    holds the same pixels in the scope's own memory order (a column-major view for CLOOSE), complete at
    ``t_ready_ns``; the source's thread is still putting them in row order into ``data``, which is complete once
    ``data_ready`` is set: read it through :meth:`wait_data`. Why: that reordering costs ~0.4 ms of a 512x512
    frame after its last byte, and the pipeline registers and extracts from ``wire`` meanwhile (the same numbers);
    only what follows the decision (movie, previews, z-tracking) reads ``data``.
    """

    data: np.ndarray
    number: int
    t_ready_ns: int
    scope_time_s: float = math.nan
    flags: int = 0
    plane: int = 0
    wire: np.ndarray | None = None
    data_ready: threading.Event | None = None

    def wait_data(self, timeout_s: float = DATA_WAIT_S) -> np.ndarray:
        """``data``, complete (at once for a frame handed over whole). Raises if the source's thread has not
        finished it within ``timeout_s``: it stopped, and the source's next read says why."""
        if self.data_ready is not None and not self.data_ready.wait(timeout_s):
            raise RuntimeError(f"frame {self.number}: the source did not finish putting its pixels in row order "
                               f"within {timeout_s:g} s")
        return self.data


class EndOfStream(Exception):
    """A finite source (a replayed movie) has delivered its last frame."""


class FrameSource(abc.ABC):
    """A source of 2-D frames. ``read`` never blocks longer than its timeout and never raises for bad input:
    bad frames and link trouble are counted in :meth:`stats` and described by :meth:`pop_warnings`."""

    #: at most this many warnings wait to be popped; older ones are dropped and counted
    max_pending_warnings: ClassVar[int] = 100

    def __init__(self) -> None:
        self._warnings: collections.deque[tuple[str, str]] = collections.deque(maxlen=self.max_pending_warnings)
        self._warnings_dropped = 0

    # Subclasses set ``_shape``, ``_dtype`` and ``_rate`` in their constructor (after ``super().__init__()``).
    _shape: tuple[int, int] = (0, 0)
    _dtype: np.dtype = np.dtype(np.uint16)
    _rate: float = 0.0
    #: planes per volume the source delivers (each frame's ``Frame.plane`` is below it); 1 for a single plane
    _n_planes: int = 1
    #: frames are cut from a header-less byte stream by the configured size (raw TCP): the rate at which they
    #: arrive tells the stream's real frame size (:mod:`acquisition.diagnose`)
    byte_stream: ClassVar[bool] = False
    #: where ``frame_rate_hz`` comes from, for the session record (a replay may take it from the file)
    rate_source: str = "acquisition.frame_rate_hz"

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the frames, as configured or as read from the file ((0, 0) until known)."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def frame_rate_hz(self) -> float:
        """Frames per second *of one plane* (the volume rate with several planes): the decoder's frame rate."""
        return self._rate

    @property
    def n_planes(self) -> int:
        """Planes per volume (1 unless the scope images several planes, ScanImage fast-z or Scanbox volscan)."""
        return self._n_planes

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the resource (file, listening socket...). Errors here are configuration errors: raise."""

    @abc.abstractmethod
    def read(self, timeout_s: float) -> Frame | None:
        """The next frame, or None if none arrived within ``timeout_s``; EndOfStream when a finite source is done."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def link_state(self) -> str:
        """One of :data:`LINK_STATES`."""

    @abc.abstractmethod
    def stats(self) -> dict[str, float]:
        """Counters: at least ``frames`` and ``bad_frames``; sources with links add ``reconnects`` etc."""

    def deliver_early(self) -> bool:
        """Hand frames over as soon as their last byte is in, before their row-order copy is done, with the pixels
        in the scope's order in ``Frame.wire`` (see :class:`Frame`). True when the source does so from now on;
        False (the default) when it cannot: its frames come whole, as before."""
        return False

    def start_keeping(self) -> None:  # noqa: B027 - deliberately a no-op by default
        """The session runs: frames from now on are the session's. A source whose scope may stream before that
        (a TCP link accepted at start-up) drains and counts the earlier ones instead of leaving them queued.
        May be called before :meth:`open` (a probe keeps every frame)."""

    def on_bus_message(self, msg: Any) -> None:  # noqa: B027 - deliberately a no-op by default
        """A reward outcome or decision the process relays, only to sources registered with ``hears_outcomes``
        (:mod:`acquisition.sources.registry`)."""

    def warn(self, code: str, message: str) -> None:
        """Queue a warning for the process to publish (``code`` is a short snake_case tag)."""
        if len(self._warnings) == self._warnings.maxlen:
            self._warnings_dropped += 1
        self._warnings.append((code, message))

    def pop_warnings(self) -> list[tuple[str, str]]:
        """Warnings since the last call, as (code, message); a summary replaces any that overflowed."""
        out = list(self._warnings)
        self._warnings.clear()
        if self._warnings_dropped:
            out.append(("warnings_dropped", f"{self._warnings_dropped} more warnings were dropped"))
            self._warnings_dropped = 0
        return out

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
