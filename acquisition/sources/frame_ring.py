"""Whole frames handed from a socket-reading thread to ``FrameSource.read()``, in preallocated buffers.

Why: a scope that writes into TCP blocks (or, with a write timeout, dies) when nobody reads, and frames read
late are seconds old. A reader thread takes every byte as it arrives into one slot of this ring; ``read()``
takes completed slots in order. When the consumer falls more than ``slots - 2`` frames behind, the oldest
waiting frame is overwritten (counted in :attr:`FrameRing.overwritten`): its number is then missing, so the
process records the loss as dropped frames. Nothing here allocates per frame.
"""

from __future__ import annotations

import collections
import threading

#: (slot, frame number, t_ready_ns, flags) of one completed frame
Ready = tuple[int, int, int, int]


class FrameRing:
    """``slots`` buffers of ``frame_bytes``: one filled by the writer, the others waiting or free."""

    def __init__(self, slots: int, frame_bytes: int) -> None:
        if slots < 3:
            raise ValueError("a frame ring needs at least 3 slots (one filling, one being read, one waiting)")
        self.buffers = [bytearray(frame_bytes) for _ in range(slots)]
        self.views = [memoryview(b) for b in self.buffers]
        self._free: collections.deque[int] = collections.deque(range(1, slots))
        self._ready: collections.deque[Ready] = collections.deque()
        self._cond = threading.Condition()
        self.filling = 0  # the slot the writer fills; only the writer changes it
        self.overwritten = 0

    def commit(self, number: int, t_ready_ns: int, flags: int) -> bool:
        """The writer finished slot :attr:`filling`: queue it and move on to a free slot, overwriting the
        oldest waiting frame if there is none. Returns False when a waiting frame was overwritten."""
        with self._cond:
            self._ready.append((self.filling, number, t_ready_ns, flags))
            kept = True
            if self._free:
                self.filling = self._free.popleft()
            else:
                self.filling = self._ready.popleft()[0]
                self.overwritten += 1
                kept = False
            self._cond.notify()
        return kept

    def take(self, timeout_s: float) -> Ready | None:
        """The oldest completed frame (its slot stays the reader's until :meth:`release`), or None on timeout."""
        with self._cond:
            if not self._ready and not self._cond.wait_for(lambda: bool(self._ready), max(timeout_s, 0.0)):
                return None
            return self._ready.popleft()

    def release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._ready)
