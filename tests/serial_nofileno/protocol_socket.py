"""``socket://`` for :mod:`tests.serial_nofileno`: pyserial's socket port without a file descriptor."""

from __future__ import annotations

import io
import sys

from serial.urlhandler import protocol_socket

from tests.serial_nofileno import REFUSED


class Serial(protocol_socket.Serial):
    """pyserial's ``socket://`` port, but ``fileno()`` raises as on ``serialwin32.Serial`` (io.RawIOBase's)."""

    def fileno(self) -> int:
        print(f"[tests.serial_nofileno] {self.portstr}: {REFUSED}", file=sys.stderr, flush=True)
        raise io.UnsupportedOperation("fileno")
