"""The reward board's serial line protocol: encoders and incremental parsers for both directions.

The firmware (``reward/firmware/bci_reward/bci_reward.ino``), the Python emulator and the host link
all speak exactly what is specified in ``reward/firmware/PROTOCOL.md``; this module is the Python
half of that specification. In short::

    line   = body "*" HH "\\n"        HH = two hex digits, XOR of every byte of body
    body   = tokens of printable ASCII separated by single spaces

Host -> board (at most ``MAX_COMMAND_LINE`` bytes before the newline)::

    HELLO <seq> <protocol> <watchdog_ms> <link_id>    OPEN <seq> <duration_us>    TEST <seq> <duration_us>
    HB <seq>    CLOSE <seq>    STATUS <seq>    LOG <seq> <pulse_seq>

Board -> host (at most ``MAX_BOARD_LINE`` bytes)::

    ACK <seq> <us> <command> [fields]      NAK <seq> <us> <code> <detail>
    DONE <seq> <us> <open_us> <cause>      LICK <count> <us> <0|1>
    BOOT <us> <protocol> <firmware>        WDOG <us>        ERR <us> <code>

The parsers never raise on bad input: every malformed line becomes a :class:`LineError` and parsing
resumes after the next newline, so one corrupted byte costs at most one line.
"""

from __future__ import annotations

import msgspec

PROTOCOL_VERSION = 2
FIRMWARE_VERSION = "2.0.0"

MAX_COMMAND_LINE = 64
"""Longest host -> board line the board accepts, in bytes before the newline (checksum included)."""
MAX_BOARD_LINE = 128
"""Longest board -> host line the host accepts, in bytes before the newline."""
MAX_TOKENS = 8
"""Most tokens the board accepts in one command line."""
MAX_BOARD_TOKENS = 16
MAX_U32 = 0xFFFFFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF

WATCHDOG_MIN_MS = 50
WATCHDOG_MAX_MS = 10000
FIRMWARE_MAX_OPEN_MS = 2000
"""The firmware's hard limit on any one valve opening (``MAX_OPEN_US`` in the sketch)."""
LICK_DEBOUNCE_US = 1000
DEDUPE_SLOTS = 8
LOG_SLOTS = 16
"""Pulses the board's log holds (the sketch's ``LOG_SLOTS``): what ``LOG`` can still answer about."""
DUTY_WINDOW_MS = 10000
DUTY_MAX_OPEN_MS = 2000
"""The firmware's duty-cycle limit: at most this much open time in any ``DUTY_WINDOW_MS`` (20 %)."""
DUTY_BUCKETS = 11
"""The board counts open time in 1/10-window buckets: the current one and the 10 before it."""
AVR_WATCHDOG_MS = 500
"""The AVR hardware watchdog (``wdt_enable(WDTO_500MS)``): a loop() stalled this long resets the chip."""

# Line-level error codes (board sends them in ERR lines; the host parser uses them too).
ERR_LONG = "LONG"
ERR_CHAR = "CHAR"
ERR_CSUM = "CSUM"
ERR_SYNTAX = "SYNTAX"
# Host-parser-only codes for well-framed lines it cannot interpret.
ERR_UNKNOWN = "UNKNOWN"
ERR_ARGS = "ARGS"

# NAK codes.
NAK_UNKNOWN = "UNKNOWN"
NAK_ARGS = "ARGS"
NAK_RANGE = "RANGE"
NAK_NOLINK = "NOLINK"
NAK_BUSY = "BUSY"
NAK_SEQ = "SEQ"
NAK_VERSION = "VERSION"
NAK_DUTY = "DUTY"
NAK_CODES = frozenset({NAK_UNKNOWN, NAK_ARGS, NAK_RANGE, NAK_NOLINK, NAK_BUSY, NAK_SEQ, NAK_VERSION, NAK_DUTY})

# DONE causes: why the valve closed.
CAUSE_TIMER = "T"
CAUSE_CLOSE = "C"
CAUSE_HELLO = "H"
CAUSE_WATCHDOG = "W"
CAUSE_MAX_OPEN = "M"
CAUSE_DUTY = "D"
DONE_CAUSES = {
    CAUSE_TIMER: "requested duration elapsed",
    CAUSE_CLOSE: "closed by a CLOSE command",
    CAUSE_HELLO: "closed by a new handshake",
    CAUSE_WATCHDOG: "closed by the heartbeat watchdog",
    CAUSE_MAX_OPEN: "closed by the firmware's hard maximum open time",
    CAUSE_DUTY: "closed by the firmware's duty-cycle limit",
}
# States of a pulse in the board's log (``ACK LOG``): the DONE cause once it closed, or
LOG_UNKNOWN = "-"  # the log holds no pulse with that seq: it never opened the valve (or the log was wiped)
LOG_OPEN = "O"  # it holds the valve open now (open_us = so far)
LOG_RESET = "R"  # the board was reset while it held the valve open (open time unknown, at most its duration)
LOG_STATES = frozenset({LOG_UNKNOWN, LOG_OPEN, LOG_RESET, *DONE_CAUSES})

COMMANDS = ("HELLO", "HB", "OPEN", "TEST", "CLOSE", "STATUS", "LOG")
PULSE_COMMANDS = ("OPEN", "TEST")


# ---------------------------------------------------------------- parsed items


class LineError(msgspec.Struct, frozen=True):
    """A line that could not be used. ``raw`` holds (at most the first 200 bytes of) what arrived."""

    code: str
    detail: str
    raw: bytes = b""


class Command(msgspec.Struct, frozen=True):
    """A host command as the board sees it: framing and seq are valid, arguments are still raw."""

    name: str
    seq: int
    args: tuple[str, ...]


class Ack(msgspec.Struct, frozen=True):
    """``ACK``: the board executed (or re-acknowledged) command ``seq`` at board time ``board_us``."""

    seq: int
    board_us: int
    command: str
    fields: tuple[str, ...]


class Nak(msgspec.Struct, frozen=True):
    """``NAK``: the board refused command ``seq``; nothing was executed."""

    seq: int
    board_us: int
    code: str
    detail: int


class Done(msgspec.Struct, frozen=True):
    """``DONE``: the valve opened by pulse ``seq`` closed at ``board_us`` after ``open_us``."""

    seq: int
    board_us: int
    open_us: int
    cause: str


class LickEdge(msgspec.Struct, frozen=True):
    """``LICK``: debounced lick sensor edge number ``count`` (onset or offset) at ``board_us``."""

    count: int
    board_us: int
    onset: bool


class Boot(msgspec.Struct, frozen=True):
    """``BOOT``: the board (re)started; any link it had is gone."""

    board_us: int
    protocol: int
    firmware: str


class WatchdogTrip(msgspec.Struct, frozen=True):
    """``WDOG``: the board stopped hearing the host, closed the valve and now refuses pulses."""

    board_us: int


class BoardError(msgspec.Struct, frozen=True):
    """``ERR``: the board rejected a line it could not frame or parse."""

    board_us: int
    code: str


class HelloInfo(msgspec.Struct, frozen=True):
    """The fields of ``ACK <seq> <us> HELLO <protocol> <firmware> <max_open_ms> <watchdog_ms> <resumed>
    <duty_max_ms> <duty_window_ms>``. ``resumed``: the board still holds the pulse log of this link id."""

    protocol: int
    firmware: str
    max_open_ms: int
    watchdog_ms: int
    resumed: bool = False
    duty_max_ms: int = DUTY_MAX_OPEN_MS
    duty_window_ms: int = DUTY_WINDOW_MS


class LogInfo(msgspec.Struct, frozen=True):
    """The fields of ``ACK <seq> <us> LOG <pulse_seq> <duration_us> <open_us> <state>`` (see LOG_STATES)."""

    pulse_seq: int
    duration_us: int
    open_us: int
    state: str


BoardMessage = Ack | Nak | Done | LickEdge | Boot | WatchdogTrip | BoardError


# ---------------------------------------------------------------- framing helpers


def checksum(body: bytes) -> int:
    """XOR of every byte of ``body``."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def frame(body: str) -> bytes:
    """``body`` + ``*HH`` + newline. Raises ValueError for bodies no receiver would accept."""
    raw = body.encode("ascii")
    if any(b < 0x20 or b > 0x7E for b in raw):
        raise ValueError(f"protocol line body {body!r} holds a non-printable character")
    return raw + b"*%02X\n" % checksum(raw)


def parse_u32(token: str) -> int | None:
    """Unsigned decimal of 1..10 digits that fits 32 bits, else None (the firmware's ``parseU32``)."""
    if not 1 <= len(token) <= 10 or not token.isascii() or not token.isdigit():
        return None
    value = int(token)
    return value if value <= MAX_U32 else None


def parse_u64(token: str) -> int | None:
    """Unsigned decimal of 1..20 digits that fits 64 bits, else None."""
    if not 1 <= len(token) <= 20 or not token.isascii() or not token.isdigit():
        return None
    value = int(token)
    return value if value <= MAX_U64 else None


_HEX = b"0123456789abcdefABCDEF"


class Overflow(msgspec.Struct, frozen=True):
    """Marker from :class:`LineSplitter`: a line grew past the limit and is being discarded."""


OVERFLOW = Overflow()


class LineSplitter:
    """Cuts a byte stream into lines of at most ``max_len`` bytes, resynchronising on newline.

    Equivalent to the firmware's byte-at-a-time reader: a line that would exceed ``max_len``
    yields one :data:`OVERFLOW` at the moment it overflows, and everything up to the next newline
    is dropped.
    """

    def __init__(self, max_len: int) -> None:
        if max_len < 4:
            raise ValueError(f"max_len must be >= 4, got {max_len}")
        self.max_len = max_len
        self._buf = bytearray()
        self._overflow = False

    def reset(self) -> None:
        self._buf.clear()
        self._overflow = False

    def feed(self, data: bytes) -> list[bytes | Overflow]:
        """Return the complete lines (newline stripped) and overflow markers found in ``data``."""
        out: list[bytes | Overflow] = []
        start = 0
        size = len(data)
        while start <= size:
            newline = data.find(b"\n", start)
            end = size if newline < 0 else newline
            if not self._overflow:
                if len(self._buf) + (end - start) > self.max_len:
                    self._buf.clear()
                    self._overflow = True
                    out.append(OVERFLOW)
                else:
                    self._buf += data[start:end]
            if newline < 0:
                break
            if self._overflow:
                self._overflow = False
            else:
                out.append(bytes(self._buf))
                self._buf.clear()
            start = newline + 1
        return out


def unframe(line: bytes) -> str | LineError | None:
    """Check one line (newline already removed): the body, a LineError, or None for an empty line.

    Order of checks is the firmware's: one trailing CR is dropped, an empty line is ignored, then
    non-printable bytes (CHAR), then the ``*HH`` checksum (CSUM).
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        return None
    for byte in line:
        if byte < 0x20 or byte > 0x7E:
            return LineError(ERR_CHAR, f"non-printable byte 0x{byte:02X}", line[:200])
    if len(line) < 3 or line[-3] != 0x2A or line[-2] not in _HEX or line[-1] not in _HEX:
        return LineError(ERR_CSUM, "missing *HH checksum", line[:200])
    body = line[:-3]
    expected = int(line[-2:], 16)
    if checksum(body) != expected:
        return LineError(ERR_CSUM, f"checksum {expected:02X} != computed {checksum(body):02X}", line[:200])
    return body.decode("ascii")


def tokenize(body: str, max_tokens: int = MAX_TOKENS) -> list[str] | None:
    """Split on single spaces; None if any token is empty or there are more than ``max_tokens``."""
    tokens = body.split(" ")
    if len(tokens) > max_tokens or any(not t for t in tokens):
        return None
    return tokens


# ---------------------------------------------------------------- host -> board


def encode_hello(seq: int, watchdog_ms: int, link_id: int = 0, protocol: int = PROTOCOL_VERSION) -> bytes:
    """``link_id``: the host's 32-bit id, the same across its reconnects; 0 never resumes a pulse log."""
    return frame(f"HELLO {seq} {protocol} {watchdog_ms} {link_id}")


def encode_heartbeat(seq: int) -> bytes:
    return frame(f"HB {seq}")


def encode_open(seq: int, duration_us: int) -> bytes:
    return frame(f"OPEN {seq} {duration_us}")


def encode_test(seq: int, duration_us: int) -> bytes:
    return frame(f"TEST {seq} {duration_us}")


def encode_close(seq: int) -> bytes:
    return frame(f"CLOSE {seq}")


def encode_status(seq: int) -> bytes:
    return frame(f"STATUS {seq}")


def encode_log(seq: int, pulse_seq: int) -> bytes:
    """Ask the board's pulse log what became of pulse ``pulse_seq`` (never opens anything)."""
    return frame(f"LOG {seq} {pulse_seq}")


class CommandParser:
    """Board side: bytes from the host -> :class:`Command` or :class:`LineError`, in order."""

    def __init__(self, max_len: int = MAX_COMMAND_LINE) -> None:
        self._splitter = LineSplitter(max_len)

    def reset(self) -> None:
        self._splitter.reset()

    def feed(self, data: bytes) -> list[Command | LineError]:
        out: list[Command | LineError] = []
        for line in self._splitter.feed(data):
            if isinstance(line, Overflow):
                out.append(LineError(ERR_LONG, f"line longer than {self._splitter.max_len} bytes"))
                continue
            item = parse_command_line(line)
            if item is not None:
                out.append(item)
        return out


def parse_command_line(line: bytes) -> Command | LineError | None:
    """One host line -> Command (name and seq valid), LineError, or None (empty line)."""
    body = unframe(line)
    if body is None or isinstance(body, LineError):
        return body
    tokens = tokenize(body)
    if tokens is None or len(tokens) < 2:
        return LineError(ERR_SYNTAX, "expected '<COMMAND> <seq> [args]' with single spaces", line[:200])
    seq = parse_u32(tokens[1])
    if seq is None:
        return LineError(ERR_SYNTAX, f"sequence number {tokens[1]!r} is not a 32-bit unsigned integer", line[:200])
    return Command(tokens[0], seq, tuple(tokens[2:]))


# ---------------------------------------------------------------- board -> host


def encode_ack(seq: int, board_us: int, command: str, *fields: int | str) -> bytes:
    tail = "".join(f" {f}" for f in fields)
    return frame(f"ACK {seq} {board_us} {command}{tail}")


def encode_nak(seq: int, board_us: int, code: str, detail: int = 0) -> bytes:
    return frame(f"NAK {seq} {board_us} {code} {detail}")


def encode_done(seq: int, board_us: int, open_us: int, cause: str) -> bytes:
    return frame(f"DONE {seq} {board_us} {open_us} {cause}")


def encode_lick(count: int, board_us: int, onset: bool) -> bytes:
    return frame(f"LICK {count} {board_us} {int(onset)}")


def encode_boot(board_us: int, protocol: int = PROTOCOL_VERSION, firmware: str = FIRMWARE_VERSION) -> bytes:
    return frame(f"BOOT {board_us} {protocol} {firmware}")


def encode_watchdog(board_us: int) -> bytes:
    return frame(f"WDOG {board_us}")


def encode_error(board_us: int, code: str) -> bytes:
    return frame(f"ERR {board_us} {code}")


_ACK_FIELDS = {"HELLO": 7, "HB": 0, "OPEN": 1, "TEST": 1, "CLOSE": 1, "STATUS": 6, "LOG": 4}


def _bad(line: bytes, detail: str) -> LineError:
    return LineError(ERR_ARGS, detail, line[:200])


def parse_board_line(line: bytes) -> BoardMessage | LineError | None:
    """One board line -> typed message, LineError, or None (empty line). Never raises."""
    body = unframe(line)
    if body is None or isinstance(body, LineError):
        return body
    tokens = tokenize(body, MAX_BOARD_TOKENS)
    if tokens is None:
        return LineError(ERR_SYNTAX, "empty token or too many tokens", line[:200])
    kind, args = tokens[0], tokens[1:]
    if kind == "ACK":
        if len(args) < 3:
            return _bad(line, "ACK needs seq, board time and command")
        seq, board_us, command, fields = parse_u32(args[0]), parse_u64(args[1]), args[2], tuple(args[3:])
        if seq is None or board_us is None:
            return _bad(line, "ACK seq or board time is not a number")
        wanted = _ACK_FIELDS.get(command)
        if wanted is None:
            return _bad(line, f"ACK for unknown command {command!r}")
        if len(fields) != wanted:
            return _bad(line, f"ACK {command} carries {len(fields)} fields, expected {wanted}")
        if command == "HELLO":
            numeric = (fields[0], *fields[2:])
        elif command == "LOG":
            numeric = fields[:3]
        else:
            numeric = fields
        if any(parse_u32(f) is None for f in numeric):
            return _bad(line, f"ACK {command} field is not a number")
        if command == "HELLO" and fields[4] not in ("0", "1"):
            return _bad(line, "ACK HELLO resumed flag is not 0 or 1")
        if command == "LOG" and fields[3] not in LOG_STATES:
            return _bad(line, f"ACK LOG state {fields[3]!r} is not known")
        return Ack(seq, board_us, command, fields)
    if kind == "NAK":
        if len(args) != 4:
            return _bad(line, "NAK needs seq, board time, code and detail")
        seq, board_us, detail = parse_u32(args[0]), parse_u64(args[1]), parse_u32(args[3])
        if seq is None or board_us is None or detail is None or args[2] not in NAK_CODES:
            return _bad(line, "NAK fields invalid")
        return Nak(seq, board_us, args[2], detail)
    if kind == "DONE":
        if len(args) != 4:
            return _bad(line, "DONE needs seq, board time, open time and cause")
        seq, board_us, open_us = parse_u32(args[0]), parse_u64(args[1]), parse_u32(args[2])
        if seq is None or board_us is None or open_us is None or args[3] not in DONE_CAUSES:
            return _bad(line, "DONE fields invalid")
        return Done(seq, board_us, open_us, args[3])
    if kind == "LICK":
        if len(args) != 3:
            return _bad(line, "LICK needs count, board time and state")
        count, board_us = parse_u32(args[0]), parse_u64(args[1])
        if count is None or board_us is None or args[2] not in ("0", "1"):
            return _bad(line, "LICK fields invalid")
        return LickEdge(count, board_us, args[2] == "1")
    if kind == "BOOT":
        if len(args) != 3:
            return _bad(line, "BOOT needs board time, protocol and firmware version")
        board_us, protocol = parse_u64(args[0]), parse_u32(args[1])
        if board_us is None or protocol is None:
            return _bad(line, "BOOT fields invalid")
        return Boot(board_us, protocol, args[2])
    if kind == "WDOG":
        board_us = parse_u64(args[0]) if len(args) == 1 else None
        if board_us is None:
            return _bad(line, "WDOG needs exactly a board time")
        return WatchdogTrip(board_us)
    if kind == "ERR":
        board_us = parse_u64(args[0]) if len(args) == 2 else None
        if board_us is None:
            return _bad(line, "ERR needs board time and code")
        return BoardError(board_us, args[1])
    return LineError(ERR_UNKNOWN, f"unknown board message {kind!r}", line[:200])


def hello_info(ack: Ack) -> HelloInfo:
    """Typed view of a HELLO acknowledgement (the parser already checked the field count/types)."""
    if ack.command != "HELLO":
        raise ValueError(f"not a HELLO acknowledgement: {ack}")
    protocol, firmware, max_open_ms, watchdog_ms, resumed, duty_max_ms, duty_window_ms = ack.fields
    return HelloInfo(int(protocol), firmware, int(max_open_ms), int(watchdog_ms), resumed == "1", int(duty_max_ms),
                     int(duty_window_ms))


def log_info(ack: Ack) -> LogInfo:
    """Typed view of a LOG acknowledgement (the parser already checked the field count/types)."""
    if ack.command != "LOG":
        raise ValueError(f"not a LOG acknowledgement: {ack}")
    pulse_seq, duration_us, open_us, state = ack.fields
    return LogInfo(int(pulse_seq), int(duration_us), int(open_us), state)


class BoardParser:
    """Host side: bytes from the board -> typed messages or :class:`LineError`, in order."""

    def __init__(self, max_len: int = MAX_BOARD_LINE) -> None:
        self._splitter = LineSplitter(max_len)

    def reset(self) -> None:
        self._splitter.reset()

    def feed(self, data: bytes) -> list[BoardMessage | LineError]:
        out: list[BoardMessage | LineError] = []
        for line in self._splitter.feed(data):
            if isinstance(line, Overflow):
                out.append(LineError(ERR_LONG, f"board line longer than {self._splitter.max_len} bytes"))
                continue
            item = parse_board_line(line)
            if item is not None:
                out.append(item)
        return out
