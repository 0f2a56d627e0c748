"""The emulated board's serial port: a pseudo-terminal (POSIX) or a localhost TCP socket.

Separate from the serving loop so each way of looking like a serial port to pyserial sits in one
class: :class:`PtyTransport` (a stable symlink to a raw pty, opened like a USB CDC device) and
:class:`SocketTransport` (``socket://127.0.0.1:PORT``, any OS). :class:`reward.emulator.EmulatorServer`
selects on their readers, feeds what they read to the firmware and writes the firmware's lines back.

Also here, because rigs run Windows and CI runs Linux: an approximation of a Windows COM port and of
Windows' coarse timer on Linux (:class:`WindowsLikeSocketSerial`, :func:`windows_tick_select`,
:func:`windows_tick_sleep`), injected into :class:`reward.link.ValveLink` and the emulator by tests and
``benchmarks/bench_reward.py --windows-approx``; and :func:`windows_timer_period`, which asks a real
Windows for a 1 ms tick.
"""

from __future__ import annotations

import array
import contextlib
import errno
import io
import math
import os
import select
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Protocol

import serial
from serial.urlhandler import protocol_socket

TRANSPORTS = ("pty", "socket")


def resolve_transport(transport: str) -> str:
    """"auto" → "pty" on POSIX, "socket" elsewhere; raises ValueError for a name this OS cannot serve."""
    if transport == "auto":
        transport = "pty" if os.name == "posix" else "socket"
    if transport not in TRANSPORTS:
        raise ValueError(f"emulator transport must be 'auto', 'pty' or 'socket', got {transport!r}")
    if transport == "pty" and os.name != "posix":
        raise ValueError("emulator transport 'pty' needs a POSIX system; use 'socket' on Windows")
    return transport


class Transport(Protocol):
    """One served port. Not thread-safe: only the serving thread (or :meth:`close` after it) calls it."""

    url: str  # what the host passes to pyserial

    def readers(self) -> list[object]:
        """Objects to select() on for input and new connections."""
        ...

    def accept(self, ready: Collection[object]) -> bool:
        """Take a waiting connection if select() reported one; True if a new host is now connected."""
        ...

    def read(self, ready: Collection[object]) -> bytes:
        """Bytes from the host if select() reported any; b"" otherwise."""
        ...

    def write(self, data: bytes) -> bool:
        """Send bytes to the host; False if they went nowhere (no reader, short write)."""
        ...

    def hang_up(self) -> None:
        """Drop the host's connection, as if the cable were pulled (a pty comes back behind the same URL)."""
        ...

    def close(self) -> None:
        """Release the port for good."""
        ...


class PtyTransport:
    """A raw pseudo-terminal behind a stable symlink; a hang-up swaps the pty behind it, like a USB re-plug."""

    def __init__(self) -> None:
        self._master: int | None = None
        self._slave: int | None = None
        self._dir = tempfile.mkdtemp(prefix="bci-reward-")
        self._link_path = os.path.join(self._dir, "reward-board")
        self._open()
        self.url = self._link_path

    def readers(self) -> list[object]:
        return [self._master] if self._master is not None else []

    def accept(self, ready: Collection[object]) -> bool:
        return False  # a pty has no connections: whoever opens the slave is the host

    def read(self, ready: Collection[object]) -> bytes:
        if self._master is None or self._master not in ready:
            return b""
        try:
            return os.read(self._master, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def write(self, data: bytes) -> bool:
        if self._master is None:
            return False
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0  # nobody is reading the port: like a board talking to no host
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            written = 0
        return written >= len(data)

    def hang_up(self) -> None:
        self._close_pty()
        self._open()

    def close(self) -> None:
        self._close_pty()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _open(self) -> None:
        import tty  # POSIX only; imported here so the module loads on Windows

        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no newline translation: a byte pipe like a USB CDC port
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        # Keep our own slave fd open so the master never sees EIO between host sessions.
        tmp_link = self._link_path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_link)
        os.symlink(os.ttyname(slave), tmp_link)
        os.replace(tmp_link, self._link_path)

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None


class SocketTransport:
    """A localhost TCP port serving one client at a time.

    A second client is turned away, like an exclusively opened COM port.
    """

    def __init__(self, port: int = 0) -> None:
        self._client: socket.socket | None = None
        self._listener: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(2)
        self._listener.setblocking(False)
        self.url = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"

    def readers(self) -> list[object]:
        readers: list[object] = []
        if self._listener is not None:
            readers.append(self._listener)
        if self._client is not None:
            readers.append(self._client)
        return readers

    def accept(self, ready: Collection[object]) -> bool:
        if self._listener is None or self._listener not in ready:
            return False
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return False
        if self._client is not None:
            conn.close()  # the port is taken
            return False
        conn.setblocking(True)
        conn.settimeout(0.5)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        return True

    def read(self, ready: Collection[object]) -> bytes:
        if self._client is None or self._client not in ready:
            return b""
        try:
            data = self._client.recv(4096)
        except (TimeoutError, BlockingIOError):
            return b""
        except OSError:
            data = b""
        if not data:
            self._drop_client()
        return data

    def write(self, data: bytes) -> bool:
        if self._client is None:
            return False
        try:
            self._client.sendall(data)
        except (TimeoutError, OSError):
            self._drop_client()  # the host is gone: hang up, as a board would lose its USB host
        return True

    def hang_up(self) -> None:
        self._drop_client()

    def close(self) -> None:
        self._drop_client()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.shutdown(socket.SHUT_RDWR)
            self._client.close()
            self._client = None


def open_transport(transport: str, port: int = 0) -> Transport:
    """Open a resolved transport ("pty" or "socket"; ``port`` is the TCP port, 0 for any free one)."""
    return PtyTransport() if transport == "pty" else SocketTransport(port)


# ---------------------------------------------------------------- Windows timing, real and approximated

WINDOWS_TICK_S = 0.015625  # Windows' default timer interrupt period (64 Hz)


@contextlib.contextmanager
def windows_timer_period(ms: int = 1) -> Iterator[None]:
    """On Windows, ask for a ``ms`` timer tick while inside; a no-op elsewhere.

    Why: by default every timed wait on Windows (sleep, select, zmq poll, serial read timeouts) ends on
    the next ~15.6 ms tick. ``timeBeginPeriod`` is process-wide and undone by ``timeEndPeriod`` (and by
    Windows itself when the process exits), so a crash never leaves it set.
    """
    if sys.platform != "win32":
        yield
        return
    import ctypes  # noqa: PLC0415 - Windows only

    winmm = ctypes.WinDLL("winmm")
    granted = winmm.timeBeginPeriod(ms) == 0  # TIMERR_NOERROR
    try:
        yield
    finally:
        if granted:
            winmm.timeEndPeriod(ms)


def windows_tick_timeout(timeout: float | None, tick_s: float = WINDOWS_TICK_S) -> float | None:
    """``timeout`` lengthened to end on the next timer tick, as a Windows timed wait does by default.

    The ticks are on a system-wide grid (``time.monotonic``), like Windows' timer interrupt; zero and
    None (poll, wait forever) are returned unchanged.
    """
    if timeout is None or timeout <= 0:
        return timeout
    now = time.monotonic()
    return math.ceil((now + timeout) / tick_s) * tick_s - now


def windows_tick_select(rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any],
                        timeout: float | None = None) -> tuple[list[Any], list[Any], list[Any]]:
    """``select.select`` whose timeouts end on the next 15.625 ms tick; readiness still wakes it at once."""
    return select.select(rlist, wlist, xlist, windows_tick_timeout(timeout))


def windows_tick_sleep(seconds: float) -> None:
    """``time.sleep`` that ends on the next 15.625 ms tick (Windows' default)."""
    time.sleep(windows_tick_timeout(max(0.0, seconds)) or 0.0)


class WindowsLikeSocketSerial(protocol_socket.Serial):
    """pyserial's ``socket://`` port made to behave like pyserial's Windows COM port, to run the Windows code
    paths on Linux.

    ``fileno()`` raises (a COM port has no descriptor), a timed read that times out returns on the next
    15.625 ms tick, ``in_waiting`` is the byte count (``cbInQue``), and every reconfiguration of the
    open port is counted in ``reconfigurations`` (pyserial's win32 backend calls SetCommTimeouts on each
    ``timeout =`` assignment).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.reconfigurations = 0
        super().__init__(*args, **kwargs)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a Windows COM port has no file descriptor")

    def _reconfigure_port(self) -> None:
        super()._reconfigure_port()
        if self.is_open:
            self.reconfigurations += 1

    @property
    def in_waiting(self) -> int:
        if not self.is_open or self._socket is None:
            raise serial.PortNotOpenError()
        import fcntl  # noqa: PLC0415 - POSIX only: this class exists to run on Linux
        import termios  # noqa: PLC0415

        count = array.array("i", [0])
        fcntl.ioctl(self._socket.fileno(), termios.FIONREAD, count)
        if count[0] == 0 and select.select([self._socket], [], [], 0)[0]:
            return 1  # readable with nothing buffered: end of stream, which read() reports
        return count[0]

    def read(self, size: int = 1) -> bytes:
        if not self.is_open or self._socket is None:
            raise serial.PortNotOpenError()
        end = None if self._timeout is None else time.monotonic() + (windows_tick_timeout(self._timeout) or 0.0)
        out = bytearray()
        while len(out) < size:
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                ready, _, _ = select.select([self._socket], [], [], left)
                if not ready:
                    break
                chunk = self._socket.recv(size - len(out))
            except BlockingIOError:
                continue
            except OSError as exc:
                raise serial.SerialException(f"read failed: {exc}") from exc
            if not chunk:
                raise serial.SerialException("socket disconnected")
            out += chunk
        return bytes(out)


def windows_like_serial_for_url(url: str, *args: Any, do_not_open: bool = False,
                                **kwargs: Any) -> WindowsLikeSocketSerial:
    """``serial.serial_for_url`` for ``socket://`` URLs, returning a :class:`WindowsLikeSocketSerial`."""
    ser = WindowsLikeSocketSerial(None, *args, **kwargs)
    ser.port = url
    if not do_not_open:
        ser.open()
    return ser
