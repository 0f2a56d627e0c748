"""Reward board protocol: framing, both parsers, and randomized byte streams against both sides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reward import protocol as p
from reward.board_model import FirmwareEmulator

PROTOCOL_MD = Path(__file__).resolve().parents[1] / "reward" / "firmware" / "PROTOCOL.md"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- framing and typed parsing


def test_frame_appends_xor_checksum_and_rejects_unprintable():
    assert p.frame("HB 3") == b"HB 3*19\n"
    assert p.checksum(b"HB 3") == 0x19
    with pytest.raises(ValueError, match="non-printable"):
        p.frame("HB\t3")


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"HB 3*18", p.ERR_CSUM),  # wrong checksum
        (b"HB 3", p.ERR_CSUM),  # no checksum
        (b"HB 3*1", p.ERR_CSUM),
        (b"HB\x003*19", p.ERR_CHAR),
        (b"HB \xff*19", p.ERR_CHAR),
    ],
)
def test_unframe_rejects_bad_lines(line, code):
    result = p.unframe(line)
    assert isinstance(result, p.LineError) and result.code == code


def test_unframe_accepts_lower_case_checksum_and_crlf_and_ignores_empty_lines():
    assert p.unframe(b"HB 3*19\r") == "HB 3"
    assert p.unframe(b"STATUS 9*0d") == "STATUS 9"
    assert p.unframe(b"") is None and p.unframe(b"\r") is None


@pytest.mark.parametrize(
    "body", ["", "HB", "HB  3", " HB 3", "HB 3 ", "HB x", "HB 4294967296", "HB 12345678901", "A 1 2 3 4 5 6 7 8"]
)
def test_command_syntax_errors(body):
    raw = body.encode() + b"*%02X" % p.checksum(body.encode())
    result = p.parse_command_line(raw)
    assert isinstance(result, p.LineError) and result.code == p.ERR_SYNTAX


def test_command_parse_keeps_name_seq_and_raw_args():
    assert p.parse_command_line(p.encode_open(7, 40000)[:-1]) == p.Command("OPEN", 7, ("40000",))
    assert p.parse_command_line(p.encode_hello(4294967295, 500, 77)[:-1]) == p.Command(
        "HELLO", 4294967295, (str(p.PROTOCOL_VERSION), "500", "77"))
    assert p.parse_command_line(p.encode_log(8, 7)[:-1]) == p.Command("LOG", 8, ("7",))


def test_board_messages_round_trip():
    lines = [
        p.encode_ack(1, 2**40, "HELLO", 2, "2.0.0", 2000, 500, 1, 2000, 10000),
        p.encode_ack(2, 5, "OPEN", 1000),
        p.encode_ack(3, 6, "STATUS", 1, 0, 0, 4, 2, 0),
        p.encode_nak(4, 7, p.NAK_BUSY, 2),
        p.encode_done(2, 1005, 1000, p.CAUSE_TIMER),
        p.encode_lick(9, 123, True),
        p.encode_boot(0),
        p.encode_watchdog(99),
        p.encode_error(100, p.ERR_LONG),
        p.encode_ack(7, 101, "LOG", 2, 1000, 1000, p.CAUSE_TIMER),
        p.encode_ack(8, 102, "LOG", 9, 0, 0, p.LOG_UNKNOWN),
        p.encode_nak(10, 103, p.NAK_DUTY, 250000),
        p.encode_done(11, 104, 3, p.CAUSE_DUTY),
    ]
    parsed = p.BoardParser().feed(b"".join(lines))
    assert parsed == [
        p.Ack(1, 2**40, "HELLO", ("2", "2.0.0", "2000", "500", "1", "2000", "10000")),
        p.Ack(2, 5, "OPEN", ("1000",)),
        p.Ack(3, 6, "STATUS", ("1", "0", "0", "4", "2", "0")),
        p.Nak(4, 7, p.NAK_BUSY, 2),
        p.Done(2, 1005, 1000, p.CAUSE_TIMER),
        p.LickEdge(9, 123, True),
        p.Boot(0, p.PROTOCOL_VERSION, p.FIRMWARE_VERSION),
        p.WatchdogTrip(99),
        p.BoardError(100, p.ERR_LONG),
        p.Ack(7, 101, "LOG", ("2", "1000", "1000", "T")),
        p.Ack(8, 102, "LOG", ("9", "0", "0", "-")),
        p.Nak(10, 103, p.NAK_DUTY, 250000),
        p.Done(11, 104, 3, p.CAUSE_DUTY),
    ]
    assert p.hello_info(parsed[0]) == p.HelloInfo(2, "2.0.0", 2000, 500, True, 2000, 10000)
    assert p.log_info(parsed[9]) == p.LogInfo(2, 1000, 1000, p.CAUSE_TIMER)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("ACK 1 2 OPEN", p.ERR_ARGS),  # missing duration
        ("ACK 1 2 HELLO 1 1.0.0 2000 500", p.ERR_ARGS),  # a protocol 1 board's HELLO
        ("ACK 1 2 HELLO 2 2.0.0 2000 500 2 2000 10000", p.ERR_ARGS),  # resumed is 0 or 1
        ("ACK 1 2 LOG 5 10 10 Q", p.ERR_ARGS),  # unknown log state
        ("ACK 1 2 LOG 5 x 10 T", p.ERR_ARGS),
        ("ACK 1 2 FLY 3", p.ERR_ARGS),  # unknown command
        ("NAK 1 2 NOPE 0", p.ERR_ARGS),
        ("DONE 1 2 3 Q", p.ERR_ARGS),
        ("LICK 1 2 2", p.ERR_ARGS),
        ("WDOG", p.ERR_ARGS),
        ("HELLO 1 2", p.ERR_UNKNOWN),  # a host command echoed back is not a board message
    ],
)
def test_board_parser_rejects_malformed_messages(body, code):
    [item] = p.BoardParser().feed(p.frame(body))
    assert isinstance(item, p.LineError) and item.code == code


def test_splitter_overflows_once_then_resynchronises_on_newline():
    splitter = p.LineSplitter(8)
    assert splitter.feed(b"12345678") == []
    assert splitter.feed(b"9abc") == [p.OVERFLOW]
    assert splitter.feed(b"def\nok\n") == [b"ok"]
    assert splitter.feed(b"12345678\n") == [b"12345678"]  # exactly the limit is fine


def test_protocol_md_examples_have_valid_checksums():
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    examples = re.findall(r"^(?:host|board) +(\S.*\*[0-9A-F]{2})$", text, re.M)
    assert len(examples) >= 8
    host = [line for line in examples if line.split(" ")[0] in p.COMMANDS]
    for line in examples:
        assert isinstance(p.unframe(line.encode()), str), line
    for line in host:
        assert isinstance(p.parse_command_line(line.encode()), p.Command), line
    for line in set(examples) - set(host):
        assert not isinstance(p.parse_board_line(line.encode()), p.LineError), line


def test_protocol_md_example_session_is_what_the_board_says():
    """Each host line is fed at the board time of its reply; other board lines (BOOT, DONE) at their own time."""
    block = PROTOCOL_MD.read_text(encoding="utf-8").split("## Example session", 1)[1]
    lines = re.findall(r"^(host|board) +(\S.*\*[0-9A-F]{2})$", block, re.M)
    emu = FirmwareEmulator()
    said: list[str] = []
    host_line: bytes | None = None
    for who, line in lines:
        if who == "host":
            host_line = line.encode() + b"\n"
            continue
        msg = p.parse_board_line(line.encode())
        assert not isinstance(msg, p.LineError) and msg is not None, line
        if isinstance(msg, p.Boot):
            emu.boot(msg.board_us)
        elif host_line is not None:
            emu.step(msg.board_us, host_line)
            host_line = None
        elif emu.now_us < msg.board_us:
            emu.step(msg.board_us)
        said += [out.decode("ascii").rstrip("\n") for out in emu.take_output()]
    assert said == [line for who, line in lines if who == "board"]


# ---------------------------------------------------------------- randomized streams: host parser

VALID_BOARD_LINES = [
    p.encode_ack(5, 1000, "OPEN", 40000),
    p.encode_done(5, 41000, 40000, p.CAUSE_TIMER),
    p.encode_lick(3, 2000, False),
    p.encode_ack(6, 2**33, "HB"),
]


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=8))
def test_host_parser_survives_random_bytes_and_resyncs(chunks):
    parser = p.BoardParser()
    for chunk in chunks:
        for item in parser.feed(chunk):
            assert isinstance(item, (p.LineError, *p.BoardMessage.__args__))
    good = p.encode_done(77, 123456, 5000, p.CAUSE_TIMER)
    assert parser.feed(b"\n" + good)[-1] == p.Done(77, 123456, 5000, p.CAUSE_TIMER)


@st.composite
def mutated(draw, source: bytes):
    data = bytearray(source)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=20))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 10))]
        else:
            j = draw(st.integers(i, min(len(data), i + 40)))
            data[j:j] = data[i:j]
    return bytes(data)


@FUZZ
@given(stream=mutated(b"".join(VALID_BOARD_LINES) * 2), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_host_parser_on_mutated_board_output(stream, cuts):
    parser = p.BoardParser()
    items = []
    start = 0
    for cut in sorted(cuts) + [len(stream)]:
        items += parser.feed(stream[start:cut])
        start = max(start, cut)
    # Every message that comes out is either an error or exactly one of the lines that went in.
    valid = {p.parse_board_line(line[:-1]) for line in VALID_BOARD_LINES}
    for item in items:
        assert isinstance(item, p.LineError) or item in valid or _survives_as_valid(item, stream)
    assert parser.feed(b"\n" + VALID_BOARD_LINES[0])[-1] == p.parse_board_line(VALID_BOARD_LINES[0][:-1])


def _survives_as_valid(item, stream: bytes) -> bool:
    """A mutation may produce another well-formed line (checksum and all): then its bytes are in the stream."""
    return any(
        p.parse_board_line(line.rstrip(b"\r")) == item for line in stream.split(b"\n") if len(line) <= p.MAX_BOARD_LINE
    )


# ---------------------------------------------------------------- randomized streams: the board


def _advance(emu: FirmwareEmulator, to_us: int, data: bytes = b"") -> None:
    """Run the firmware loop at each of its deadlines up to ``to_us``, then once at ``to_us`` with data."""
    while (deadline := emu.next_deadline_us()) is not None and deadline <= to_us:
        emu.step(max(deadline, emu.now_us))
    emu.step(to_us, data)


def _check_valve_invariants(emu: FirmwareEmulator, stream: bytes) -> None:
    opens = [e for e in emu.events if e.kind == "open"]
    closes = [e for e in emu.events if e.kind == "close"]
    for event in opens:
        # The valve opens only for an intact, checksummed OPEN/TEST line that really was in the stream.
        encode = p.encode_open if event.command == "OPEN" else p.encode_test
        assert encode(event.seq, event.duration_us)[:-1] in stream
    for event in closes:
        assert event.open_us <= min(event.duration_us, emu.max_open_us)
    # Nothing can leave it open: after the longest possible pulse it is closed, whatever came in.
    _advance(emu, emu.now_us + emu.max_open_us + 1)
    assert not emu.valve_open
    assert len([e for e in emu.events if e.kind == "open"]) == len([e for e in emu.events if e.kind == "close"])
    for line in emu.take_output():
        assert not isinstance(p.parse_board_line(line[:-1]), p.LineError), line


@FUZZ
@given(
    chunks=st.lists(st.tuples(st.binary(max_size=120), st.integers(0, 300_000)), max_size=10),
    hello_first=st.booleans(),
)
def test_board_never_opens_on_random_bytes(chunks, hello_first):
    emu = FirmwareEmulator(max_open_ms=300)
    emu.boot(0)
    stream = b""
    if hello_first:
        emu.step(10, p.encode_hello(1, 10000))
    for data, gap in chunks:
        _advance(emu, emu.now_us + gap, data)
        stream += data
    assert not [e for e in emu.events if e.kind == "open"]
    _check_valve_invariants(emu, stream)


SESSION_LINES = [
    b"\n",
    p.encode_hello(1, 200),
    p.encode_open(2, 40_000),
    p.encode_heartbeat(3),
    p.encode_open(2, 40_000),
    p.encode_test(4, 250_000),
    p.encode_status(5),
    p.encode_close(6),
    p.encode_open(7, 299_000),
    p.encode_open(8, 10),
]
SESSION = b"".join(SESSION_LINES)


@FUZZ
@given(
    stream=mutated(SESSION),
    cuts=st.lists(st.tuples(st.integers(0, len(SESSION) + 100), st.integers(0, 120_000)), max_size=12),
)
def test_board_on_mutated_sessions_keeps_the_valve_safe(stream, cuts):
    emu = FirmwareEmulator(max_open_ms=300)
    emu.boot(0)
    start = 0
    for cut, gap in sorted(cuts):
        _advance(emu, emu.now_us + gap, stream[start:cut])
        start = max(start, cut)
    _advance(emu, emu.now_us + 1000, stream[start:])
    _check_valve_invariants(emu, stream)


def test_unmutated_session_opens_exactly_the_commanded_pulses():
    emu = FirmwareEmulator(max_open_ms=300)
    emu.boot(0)
    for line in SESSION_LINES:
        for i in range(0, len(line), 7):  # dribbled in 7-byte pieces, 1 ms apart
            _advance(emu, emu.now_us + 1000, line[i : i + 7])
        _advance(emu, emu.now_us + 60_000)
    _advance(emu, emu.now_us + 400_000)
    assert [(e.seq, e.command, e.cause) for e in emu.events if e.kind == "close"] == [
        (2, "OPEN", p.CAUSE_TIMER),
        (4, "TEST", p.CAUSE_CLOSE),
        (7, "OPEN", p.CAUSE_WATCHDOG),
    ]
