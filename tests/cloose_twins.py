"""Twins of CLOOSE's senders (Harnett lab, ``TCP_IP/``), written from how they behave, for the cloose_tcp tests.

* :class:`ListeningSender`: its Python sender template: a TCP server that accepts one connection and writes
  every frame as column-major little-endian uint16, no header. Optionally it first asks CLOOSE's GUI for the
  frame count (the GUI serves one uint16 on its handshake port).
* :class:`ConnectingSender`: its README's MATLAB sender: ``tcpip(..., 'client')`` then ``fwrite`` per frame.

Both write with a timeout (default 2 s): a receiver that does not read makes ``sendall`` fail, as a scope-side
script with a write timeout dies.
"""

from __future__ import annotations

import socket
import struct
import threading

import numpy as np


def wire_bytes(image: np.ndarray, *, order: str = "F", byteorder: str = "<", inverted: bool = False) -> bytes:
    """One frame as CLOOSE's senders write it (``order="C"``/``byteorder=">"``: a sender set up wrong)."""
    data = (65535 - image.astype(np.int64)) if inverted else image
    return np.asarray(data).astype(f"{byteorder}u2").tobytes(order=order)


class ConnectingSender:
    """The MATLAB sender: connects to the rig and writes frames."""

    def __init__(self, port: int, host: str = "127.0.0.1", write_timeout_s: float = 2.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.settimeout(write_timeout_s)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(payload)

    def close(self) -> None:
        self.sock.close()


class ListeningSender:
    """The Python sender template: listens, accepts one connection at a time, writes what it is given."""

    def __init__(self, port: int = 0, write_timeout_s: float = 2.0) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = int(self.server.getsockname()[1])
        self.write_timeout_s = write_timeout_s
        self.conn: socket.socket | None = None
        self._accepted = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:  # closed before anyone connected
            return
        conn.settimeout(self.write_timeout_s)
        self.conn = conn
        self._accepted.set()

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self._accepted.wait(timeout_s)

    def send(self, payload: bytes) -> None:
        assert self.conn is not None, "nobody connected"
        self.conn.sendall(payload)

    def drop(self) -> None:
        """Close the connection (the scope stopped) and accept the next one."""
        assert self.conn is not None
        self.conn.close()
        self.conn = None
        self._accepted.clear()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def ask_frame_count(port: int, host: str = "127.0.0.1") -> int:
    """The scope side of CLOOSE's handshake: connect to the GUI's port and read the frame count (one uint16)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        data = b""
        while len(data) < 2:
            chunk = sock.recv(2 - len(data))
            if not chunk:
                raise ConnectionError("handshake closed before the frame count")
            data += chunk
    return int(struct.unpack("<H", data)[0])
