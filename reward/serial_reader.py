"""Reading a serial port that has no file descriptor (Windows COM ports) on a thread.

Why it exists apart from :mod:`reward.link`: a port with a descriptor is select()ed by the link's loop,
but a Windows COM port has none, and the only way left to wait for it without a thread would be timed
reads, which Windows ends on its ~15.6 ms timer tick (leaving replies unread for up to a tick; and
pyserial's win32 backend reconfigures the port on every ``timeout`` change). So a :class:`PortReader`
thread does blocking reads, queues what it reads and wakes the loop through a socketpair, and the loop
(or the reward process's zmq poller, via :meth:`reward.link.ValveLink.fileno`) waits on that socket.
:class:`ThreadedReads` is the loop's side: the socketpair (one for the link's life, so its descriptor
stays the same across reconnects) and the reader of the port open now.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable

import serial

# The reader thread's read timeout, set once per open: it only bounds how long stopping the thread
# takes where pyserial cannot cancel a blocked read (socket://); data ends a read at once.
READER_TIMEOUT_S = 0.05
READER_JOIN_S = 2.0  # how long closing the port waits for the reader before giving up on it (a daemon)

#: What a reader queues: (host time right after the read, bytes), or the exception that ended it.
ReadItem = tuple[int, bytes] | BaseException


class PortReader:
    """Blocking reads of a port that has no file descriptor, on a daemon thread.

    Why a thread: without a descriptor the loop could only wait with timed reads, which Windows ends on
    its timer tick. A blocked ``read`` returns as soon as a byte arrives. Each chunk is stamped with the
    host clock right after the read, queued, and announced by one byte on ``wake`` (a socketpair the
    loop selects on). A read error ends the thread and is queued after the data read before it, so the
    loop reports the loss in order; any other exception is queued too and re-raised by the loop.
    The thread is a daemon (it never keeps the process alive) and :meth:`stop` joins it.
    """

    def __init__(self, ser: serial.SerialBase, wake: socket.socket, clock: Callable[[], int], name: str) -> None:
        self._ser = ser
        self._wake = wake
        self._clock = clock
        self._queue: queue.SimpleQueue[ReadItem] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ser = self._ser
        try:
            while not self._stopping.is_set():
                data = ser.read(ser.in_waiting or 1)  # timeout set once at open: returns at the first byte
                if data:
                    waiting = ser.in_waiting  # the rest of the line, if it is already here
                    if waiting:
                        data += ser.read(waiting)
                    self._queue.put((self._clock(), data))
                    self._signal()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which reports or re-raises it
            self._queue.put(exc)
            self._signal()

    def _signal(self) -> None:
        try:
            self._wake.send(b"\0")
        except BlockingIOError:
            pass  # the pair is full of wake-ups already: the loop will wake
        except OSError:
            if not self._stopping.is_set():
                raise

    def empty(self) -> bool:
        return self._queue.empty()

    def take(self) -> list[ReadItem]:
        """Everything queued so far, oldest first."""
        items: list[ReadItem] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def stop(self, timeout_s: float) -> str:
        """Stop and join the thread before the port is closed under it; "" or what went wrong."""
        self._stopping.set()
        problem = ""
        cancel = getattr(self._ser, "cancel_read", None)  # win32 and POSIX ports: the read returns now
        if cancel is not None:
            try:
                cancel()
            except (serial.SerialException, OSError) as exc:
                problem = f"cancel_read failed: {exc}; "
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            problem += f"the reader thread did not stop within {timeout_s:g} s (it is a daemon)"
        return problem


class ThreadedReads:
    """The loop's side of a :class:`PortReader`: the wake-up socketpair it waits on, and the current reader.

    The socketpair is made at the first :meth:`start` and kept until :meth:`close` (the link's close), so
    the descriptor the loop waits on does not change when the port is reopened; a reader lives as long as
    its port (:meth:`stop` before the port is closed).
    """

    def __init__(self, clock: Callable[[], int], select_fn: Callable[..., tuple[list, list, list]]) -> None:
        self._clock = clock
        self._select = select_fn
        self._pair: tuple[socket.socket, socket.socket] | None = None  # (loop end, reader end)
        self.reader: PortReader | None = None

    def start(self, ser: serial.SerialBase, name: str) -> int:
        """Start a reader thread on the open port ``ser``; return the descriptor the loop waits on."""
        if self._pair is None:
            loop_end, reader_end = socket.socketpair()
            loop_end.setblocking(False)
            reader_end.setblocking(False)
            self._pair = (loop_end, reader_end)
        self.reader = PortReader(ser, self._pair[1], self._clock, name)
        return self._pair[0].fileno()

    def wait(self, reader: PortReader, wait_s: float) -> list[ReadItem]:
        """Wait up to ``wait_s`` for ``reader`` to queue something; return what it queued, oldest first."""
        assert self._pair is not None
        loop_end = self._pair[0]
        if wait_s > 0 and reader.empty():
            self._select([loop_end], [], [], wait_s)
        # Drain the wake-ups before the queue: a chunk queued after this drain leaves a wake-up behind.
        with contextlib.suppress(BlockingIOError):
            while loop_end.recv(4096):
                pass
        return reader.take()

    def stop(self) -> tuple[str, BaseException | None]:
        """Stop and join the reader (if any) before its port is closed.

        Returns what went wrong stopping it ("" if nothing) and the first exception it hit that is not a serial
        error (a bug, for the caller to re-raise). Unread bytes go with the port; a serial error now is the port
        going away.
        """
        reader, self.reader = self.reader, None
        if reader is None:
            return "", None
        problem = reader.stop(READER_JOIN_S)
        bug = next((x for x in reader.take() if isinstance(x, BaseException)
                    and not isinstance(x, serial.SerialException | OSError)), None)
        return problem, bug

    def close(self) -> None:
        """Close the wake-up socketpair (the link is closed; a later :meth:`start` makes a new one)."""
        if self._pair is not None:
            for end in self._pair:
                end.close()
            self._pair = None
