"""Nothing sent to the command socket ends the supervisor (docs/SECURITY.md, "The command socket").

A real :class:`~rig.app.supervisor.Supervisor` (its processes not started: the command socket, the relay to
the bus, the session files and the event log are the real ones) answers on a real ROUTER socket on loopback.
The payloads that used to kill it (an integer too big for the bus codec, deeply nested JSON, megabytes of
metadata) and hypothesis's random and adversarial requests each get a reply, and none of them reaches the
handler unchecked: no ``command_error`` is ever recorded, so every refusal came from the schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.app.command_server import CommandServer
from rig.app.supervisor import Supervisor
from rig.core.operator import (
    KNOWN_COMMANDS,
    MAX_METADATA_TOTAL_KEYS,
    MAX_METADATA_VALUE,
    MAX_REQUEST_BYTES,
    CommandReply,
    CommandRequest,
    Snapshot,
    decode_reply,
)
from rig.core.store import read_events
from tests.conftest import REPO, wait_for

N_ROIS = 150  # what sim.toml's acquisition reports when ready


class Rig:
    """A supervisor's command socket and a DEALER client on it (DEALER: any frames, no REQ lock-step)."""

    def __init__(self, root: Path) -> None:
        self.sup = Supervisor(REPO / "hardware_configs" / "sim.toml", sessions_root=str(root), quiet=True)
        acquisition = self.sup._child("acquisition")
        assert acquisition is not None
        acquisition.info["n_rois"] = str(N_ROIS)  # as its ready info says in a running session
        self.ctx = zmq.Context()
        self.client = self.dealer()

    def dealer(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.sup.endpoints["command"])
        return sock

    def send(self, *parts: bytes, sock: zmq.Socket | None = None) -> zmq.Socket:
        sock = sock or self.client
        sock.send_multipart([b"", *parts])
        return sock

    def reply(self, sock: zmq.Socket | None = None) -> CommandReply:
        sock = sock or self.client
        wait_for(lambda: (self.sup._pump(5), sock.poll(0))[1], 10, "the supervisor's reply")
        return decode_reply(sock.recv_multipart()[-1])

    def ask(self, body: bytes | dict[str, Any], *more: bytes) -> CommandReply:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send(raw, *more)
        return self.reply()

    def command_errors(self) -> list[dict]:
        return read_events(self.sup.session_dir / "supervisor.events.jsonl", {"command_error"})

    def close(self) -> None:
        self.client.close()
        self.ctx.term()
        self.sup._close()
        self.sup.events.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    rig = Rig(tmp_path_factory.mktemp("sessions"))
    yield rig
    rig.close()


NESTED = b'{"command":"ping","args":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}"  # 10 KB: RecursionError before


@pytest.mark.parametrize(("body", "why"), [
    (b'{"command":"set_ensembles","args":{"up":[99999999999999999999],"down":[1]}}', "up must be a list"),
    (b'{"command":"set_ensembles","args":{"up":[150],"down":[1]}}', "ROI 150 does not exist"),
    (b'{"command":"set_ensembles","args":{"up":[1],"down":[-1]}}', "down must be a list"),
    (NESTED, "bad request"),
    (b"[" * 10_000 + b"]" * 10_000, "bad request"),
    (b'{"command":"manual_reward","args":{"volume_ul":1e999}}', "bad request"),  # JSON's way to say inf
    (b'{"command":"manual_reward","args":{"volume_ul":NaN}}', "bad request"),
    (b'{"command":"calibrate","args":{"target_hit_rate":-0.0}}', "target_hit_rate"),
    (b'{"command":"pause","args":{"volume_ul":5}}', "unknown argument 'volume_ul'"),
    (b'{"command":"ping","issued_by":"' + b"x" * 200 + b'"}', "bad request"),
    (b'{"command":"' + b"c" * 100 + b'"}', "bad request"),
    (b"\xff\xfe\x00garbage", "bad request"),
    (b"", "bad request"),
    (b"null", "bad request"),
    (json.dumps({"command": "set_metadata", "args": {"notes": "x" * (MAX_METADATA_VALUE + 1)}}).encode(),
     "at most 4096 characters"),
    (json.dumps({"command": "set_metadata", "args": {"notes": 5}}).encode(), "metadata is at most"),
    (json.dumps({"command": "set_metadata", "args": {f"k{i}": "v" for i in range(9)}}).encode(), "8 keys"),
    (json.dumps({"command": "set_metadata", "args": {"notes": "x" * 200_000}}).encode(), "the most is 65536"),
])
def test_payloads_that_killed_the_supervisor_get_an_error_reply(rig, body, why):
    reply = rig.ask(body)
    assert not reply.ok and why in reply.error, reply.error
    assert rig.ask({"command": "ping"}).ok  # still answering
    assert rig.command_errors() == []  # refused by the schema, not by an exception caught late


def test_five_megabytes_are_not_received_at_all_and_the_socket_keeps_answering(rig):
    big = rig.dealer()
    rig.send(json.dumps({"command": "set_metadata", "args": {"notes": "x" * 5_000_000}}).encode(), sock=big)
    other = rig.dealer()
    rig.send(b'{"command":"ping"}', sock=other)
    assert rig.reply(other).ok
    rig.sup._pump(5)
    assert not big.poll(0)  # ZeroMQ dropped that connection: nothing was decoded, written or relayed
    big.close()
    other.close()
    assert len(rig.sup.tally.metadata.get("notes", "")) < MAX_REQUEST_BYTES


def test_metadata_is_bounded_per_value_and_per_session(rig):
    assert rig.ask({"command": "set_metadata", "args": {"notes": "n" * MAX_METADATA_VALUE}}).ok
    assert rig.sup.tally.metadata["notes"] == "n" * MAX_METADATA_VALUE
    accepted = 0
    for i in range(MAX_METADATA_TOTAL_KEYS + 8):
        reply = rig.ask({"command": "set_metadata", "args": {f"extra_{i}": "v"}})
        accepted += reply.ok
        if not reply.ok:
            assert "at most 32 metadata keys" in reply.error
    assert accepted <= MAX_METADATA_TOTAL_KEYS and len(rig.sup.tally.metadata) <= MAX_METADATA_TOTAL_KEYS + 3


def test_a_multipart_or_empty_envelope_is_answered(rig):
    assert not rig.ask(b"junk", b"more junk", b'{"command":"ping"}' + b"x").ok
    assert rig.ask(b"junk", b'{"command":"ping"}').ok  # the last frame is the request


_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats()
            | st.text(max_size=30))
_json = st.recursive(_scalars, lambda children: st.lists(children, max_size=4)
                     | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)
_arg_names = st.sampled_from(["up", "down", "volume_ul", "target_hit_rate", "notes", "mouse_id", "experimenter",
                              "reason"]) | st.text(max_size=10)
_commands = st.sampled_from(sorted(KNOWN_COMMANDS)) | st.text(max_size=12)
_requests = st.fixed_dictionaries(
    {"command": _commands},
    optional={"args": st.dictionaries(_arg_names, _json | st.lists(st.integers(-5, 2**70), max_size=6), max_size=4),
              "issued_by": _json, "request_id": st.text(max_size=40) | _json})


def _body(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


_bodies = (_requests.map(_body) | _json.map(_body) | st.binary(max_size=300)
           | _requests.map(lambda r: _body(r)[: max(1, len(_body(r)) // 2)]))  # cut short


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies)
def test_random_and_adversarial_requests_always_get_a_well_formed_reply(rig, body):
    reply = rig.ask(body)
    assert reply.ok or reply.error
    if reply.ok:  # then it fit the schema: a command the rig knows, with arguments in range
        request = msgspec.json.decode(body)
        assert request["command"] in KNOWN_COMMANDS
    assert rig.command_errors() == []


class _Broken:
    """A handler that fails: what an exception anywhere in handling looks like to the command server."""

    def __init__(self) -> None:
        self.relayed: list[CommandRequest] = []

    def snapshot(self) -> Snapshot:
        raise RuntimeError("snapshot exploded")

    def request_stop(self, reason: str) -> None:
        raise OSError("disk full")

    def relay(self, request: CommandRequest) -> None:
        raise OverflowError("can't serialize")


def test_an_exception_while_handling_is_an_error_reply_and_a_report_never_a_crash():
    reported: list[tuple[str, str]] = []
    ctx = zmq.Context()
    srv = CommandServer(ctx, "tcp://127.0.0.1:*", _Broken(),
                        on_error=lambda req, exc: reported.append((req.command if req else "", type(exc).__name__)))
    try:
        for command, error in (("snapshot", "RuntimeError"), ("stop", "OSError"), ("pause", "OverflowError")):
            reply = decode_reply(srv.answer(json.dumps({"command": command, "request_id": command}).encode()))
            assert not reply.ok and f"{command} failed in the rig: {error}" in reply.error
        assert reported == [("snapshot", "RuntimeError"), ("stop", "OSError"), ("pause", "OverflowError")]
        again = decode_reply(srv.answer(b'{"command":"pause","request_id":"pause"}'))  # a retry is not re-run
        assert not again.ok and len(reported) == 3
    finally:
        srv.close()
        ctx.term()


def test_the_supervisor_records_a_failed_command_and_tells_the_consoles(tmp_path, monkeypatch):
    rig = Rig(tmp_path)
    try:
        monkeypatch.setattr(rig.sup, "snapshot", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
        reply = rig.ask({"command": "snapshot", "issued_by": "test"})
        assert not reply.ok and "RuntimeError: boom" in reply.error
        [event] = rig.command_errors()
        assert (event["command"], event["error_type"], event["message"]) == ("snapshot", "RuntimeError", "boom")
        assert any("command snapshot failed" in w.message for w in rig.sup.tally.warnings)
        assert rig.ask({"command": "ping"}).ok
    finally:
        rig.close()
