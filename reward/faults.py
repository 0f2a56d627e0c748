"""Fault injection for the emulated board: lost, late and noisy lines, hang-ups and resets.

Tests use these faults to prove the host link survives a bad cable or a rebooting board. They are
kept out of the firmware model (a real board has no such knobs) and out of the transports (a fault
is the same on a pty as on a socket). :class:`FaultInjector` holds what test threads asked for and
filters the traffic; :class:`reward.emulator.EmulatorServer` calls it under its lock. A hung firmware
loop is not traffic: :meth:`reward.emulator.EmulatorServer.stall` stops running the firmware instead.
"""

from __future__ import annotations

from collections import deque

from reward import protocol as p


class FaultInjector:
    """Pending faults plus the input/output filters that apply them. Not thread-safe: callers hold a lock.

    Requests (:meth:`drop_output`, :meth:`drop_input`, :meth:`delay_output`, :meth:`add_garbage`,
    :meth:`request_disconnect`, :meth:`request_reset`) are consumed by the serving loop through
    :meth:`filter_input`, :meth:`route_output` and the ``take_*`` methods.
    """

    def __init__(self) -> None:
        self._drop: list[tuple[str, str | None, int]] = []  # (message type, ACK command or None, count)
        self._drop_input: list[tuple[str, int]] = []  # (host command name, count): lost before the board
        self._delay_s = 0.0
        self._delay_lines = 0
        self._garbage: deque[bytes] = deque()
        self._disconnect = False
        self._reset = False
        self._held: deque[tuple[float, bytes]] = deque()  # delayed output: (release perf time, line)
        self._input_partial = b""  # an unfinished host line, held only while input faults are pending

    # ------------------------------------------------------------ requests

    def drop_output(self, message: str, command: str | None, count: int) -> None:
        """Silently drop the next ``count`` board lines of type ``message`` (ACK only for ``command``)."""
        self._drop.append((message, command, count))

    def drop_input(self, command: str, count: int) -> None:
        """The next ``count`` host lines of ``command`` never reach the firmware."""
        self._drop_input.append((command, count))

    def delay_output(self, lines: int, seconds: float) -> None:
        """Hold the next ``lines`` board lines (and everything behind them) for ``seconds``."""
        self._delay_s = seconds
        self._delay_lines = lines

    def add_garbage(self, data: bytes) -> None:
        """Raw bytes to write to the host as if the line were noisy."""
        self._garbage.append(bytes(data))

    def request_disconnect(self) -> None:
        self._disconnect = True

    def request_reset(self) -> None:
        self._reset = True

    # ------------------------------------------------------------ consumed by the serving loop

    def take_reset(self) -> bool:
        """Whether a board reset was requested since the last call."""
        reset, self._reset = self._reset, False
        return reset

    def take_disconnect(self) -> bool:
        """Whether a hang-up was requested since the last call."""
        disconnect, self._disconnect = self._disconnect, False
        return disconnect

    def take_garbage(self) -> list[bytes]:
        """Pending garbage chunks, oldest first."""
        chunks = list(self._garbage)
        self._garbage.clear()
        return chunks

    def forget_partial_input(self) -> None:
        """A new host (or a hang-up): the next input starts at a fresh line."""
        self._input_partial = b""

    def next_release(self) -> float | None:
        """``time.perf_counter()`` at which the first delayed line is due, or None if none is held."""
        return self._held[0][0] if self._held else None

    def filter_input(self, data: bytes) -> tuple[bytes, int]:
        """Apply drop-input faults: remove whole host lines naming the command. Returns (kept bytes, lines dropped)."""
        if not self._drop_input and not self._input_partial:
            return data, 0
        data = self._input_partial + data
        *lines, self._input_partial = data.split(b"\n")
        kept: list[bytes] = []
        dropped = 0
        for line in lines:
            name = line.split(b" ", 1)[0].decode("ascii", "replace")
            for i, (command, count) in enumerate(self._drop_input):
                if command == name:
                    if count <= 1:
                        del self._drop_input[i]
                    else:
                        self._drop_input[i] = (command, count - 1)
                    dropped += 1
                    break
            else:
                kept.append(line + b"\n")
        return b"".join(kept), dropped

    def route_output(self, lines: list[bytes], now: float) -> tuple[list[bytes], int]:
        """Apply drop/delay faults to the board's output at perf time ``now``.

        Returns (lines to write now, in order; lines dropped). Delayed lines come out of a later call.
        """
        due: list[bytes] = []
        dropped = 0
        for line in lines:
            if self._should_drop(line):
                dropped += 1
                continue
            if self._delay_lines > 0:
                self._delay_lines -= 1
                self._held.append((now + self._delay_s, line))
            elif self._held:
                self._held.append((self._held[-1][0], line))  # keep order behind held lines
            else:
                due.append(line)
        while self._held and self._held[0][0] <= now:
            due.append(self._held.popleft()[1])
        return due, dropped

    def _should_drop(self, line: bytes) -> bool:
        if not self._drop:
            return False
        parsed = p.parse_board_line(line.rstrip(b"\n"))
        kind = line.split(b" ", 1)[0].decode("ascii", "replace")
        for i, (message, command, count) in enumerate(self._drop):
            if kind != message:
                continue
            if command is not None and not (isinstance(parsed, p.Ack) and parsed.command == command):
                continue
            if count <= 1:
                del self._drop[i]
            else:
                self._drop[i] = (message, command, count - 1)
            return True
        return False
