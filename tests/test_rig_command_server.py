"""The supervisor's command socket: typed requests and replies, argument checks, retries answered once."""

from __future__ import annotations

import json
import threading

import msgspec
import pytest
import zmq

from rig.app.command_server import CommandServer
from rig.app.supervisor import Supervisor
from rig.core.client import CommandClient
from rig.core.operator import (
    KNOWN_COMMANDS,
    OPERATOR_COMMANDS,
    CommandReply,
    CommandRequest,
    Snapshot,
    decode_reply,
    reply_from_json,
)
from rig.core.store import read_events
from tests.conftest import REPO, wait_for


class StubHandler:
    """Records what the command server asks of the supervisor."""

    def __init__(self) -> None:
        self.relayed: list[CommandRequest] = []
        self.stops: list[str] = []

    def snapshot(self) -> Snapshot:
        return Snapshot(session_dir="/s", endpoints={"command": "tcp://127.0.0.1:1"}, mode="running")

    def request_stop(self, reason: str) -> None:
        self.stops.append(reason)

    def relay(self, request: CommandRequest) -> None:
        self.relayed.append(request)


@pytest.fixture
def server():
    ctx = zmq.Context()
    handler = StubHandler()
    srv = CommandServer(ctx, "tcp://127.0.0.1:*", handler)
    yield srv, handler
    srv.close()
    ctx.term()


def ask(srv: CommandServer, body: bytes | dict) -> CommandReply:
    return decode_reply(srv.answer(body if isinstance(body, bytes) else json.dumps(body).encode()))


@pytest.mark.parametrize(("body", "why"), [
    (b"{not json", "malformed"),
    (b"[1, 2]", "Expected `object`"),
    ({"args": {}}, "missing required field `command`"),
    ({"command": 7}, "$.command"),
    ({"command": "pause", "args": [1]}, "$.args"),
    ({"command": "manual_reward", "arg": {"volume_ul": 2}}, "unknown field `arg`"),
])
def test_a_malformed_request_gets_an_error_reply_naming_the_problem(server, body, why):
    srv, handler = server
    reply = ask(srv, body)
    assert not reply.ok and reply.error.startswith("bad request:") and why in reply.error
    assert handler.relayed == []


@pytest.mark.parametrize(("command", "args", "why"), [
    ("set_ensembles", {"up": [1, -2]}, "up must be a list of ROI indices"),
    ("set_ensembles", {"down": [True]}, "down must be a list of ROI indices"),
    ("set_ensembles", {"up": "1,2"}, "up must be a list"),
    ("manual_reward", {"volume_ul": 0}, "volume_ul"),
    ("manual_reward", {"volume_ul": 101.0}, "volume_ul"),
    ("manual_reward", {"volume_ul": "5"}, "volume_ul"),
    ("calibrate", {"target_hit_rate": 1.0}, "target_hit_rate"),
    ("launch_rocket", {}, "unknown command 'launch_rocket'"),
])
def test_bad_commands_are_refused_before_anything_is_relayed(server, command, args, why):
    srv, handler = server
    reply = ask(srv, {"command": command, "args": args})
    assert not reply.ok and why in reply.error
    assert handler.relayed == []


def test_operator_commands_are_relayed_and_supervisor_commands_answered(server):
    srv, handler = server
    assert ask(srv, {"command": "ping"}) == CommandReply(ok=True)
    assert ask(srv, {"command": "manual_reward", "args": {"volume_ul": 2.5}, "issued_by": "bench"}).ok
    assert handler.relayed == [CommandRequest(command="manual_reward", args={"volume_ul": 2.5}, issued_by="bench")]
    snap = ask(srv, {"command": "snapshot"}).snapshot
    assert snap is not None and snap.session_dir == "/s"
    assert ask(srv, {"command": "stop", "issued_by": "console@bench2"}).ok
    assert handler.stops == ["stop from console@bench2"]
    assert srv.answer(json.dumps({"command": "ping"}).encode()) == b'{"ok":true}'  # the wire as before


def test_a_retry_is_answered_from_the_cache_not_acted_on_twice(server):
    srv, handler = server
    body = {"command": "manual_reward", "args": {"volume_ul": 2.0}, "request_id": "abc"}
    first = srv.answer(json.dumps(body).encode())
    assert srv.answer(json.dumps(body).encode()) == first
    assert len(handler.relayed) == 1
    ask(srv, {**body, "request_id": "def"})
    assert len(handler.relayed) == 2


def test_the_lazy_pirate_client_talks_to_it(server):
    srv, handler = server
    endpoint = srv.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    answers: list[dict] = []

    def client_thread() -> None:
        ctx = zmq.Context()
        client = CommandClient(endpoint, timeout_s=2.0, retries=2, ctx=ctx)
        try:
            answers.append(client.request("pause", issued_by="test"))
            answers.append(client.request("snapshot"))
        finally:
            client.close()
            ctx.term()

    thread = threading.Thread(target=client_thread)
    thread.start()
    wait_for(lambda: (srv.socket.poll(10) and srv.serve(), not thread.is_alive())[1], 10, "the client's replies")
    thread.join()
    assert answers[0] == {"ok": True}
    assert reply_from_json(answers[1]).snapshot == StubHandler().snapshot()
    [relayed] = handler.relayed
    assert (relayed.command, relayed.issued_by, len(relayed.request_id)) == ("pause", "test", 32)


def test_the_command_list_is_the_contract():
    assert OPERATOR_COMMANDS <= KNOWN_COMMANDS and {"ping", "snapshot", "stop"} <= KNOWN_COMMANDS
    assert "set_metadata" in OPERATOR_COMMANDS


def test_the_supervisor_relays_commands_and_builds_a_typed_snapshot(tmp_path):
    sup = Supervisor(REPO / "hardware_configs" / "sim.toml", sessions_root=str(tmp_path), quiet=True,
                     overrides=["session.mouse_id=M1"])
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(sup.endpoints["command"])

    def request(**body: object) -> dict:
        req.send(json.dumps(body).encode())
        wait_for(lambda: (sup._pump(20), req.poll(0))[1], 10, f"the reply to {body}")
        return json.loads(req.recv())

    try:
        assert request(command="set_metadata", args={"experimenter": "ada"}, issued_by="test") == {"ok": True}
        reply = reply_from_json(request(command="snapshot"))
        snap = reply.snapshot
        assert reply.ok and snap is not None
        assert snap.metadata == {"mouse_id": "M1", "experimenter": "ada", "notes": ""}
        assert set(snap.processes) == {"valve_emulator", "acquisition", "reward", "decoder"}
        assert snap.processes["decoder"].state == "not started" and snap.processes["decoder"].critical
        assert snap.endpoints == sup.endpoints and snap.mode == "starting" and snap.calibration is None
        assert snap.config == msgspec.to_builtins(sup.cfg)
        assert request(command="stop") == {"ok": True}
        assert sup._stop_reason == "stop from console"
    finally:
        req.close()
        ctx.term()
        sup._close()
    operator = read_events(sup.session_dir / "supervisor.events.jsonl", {"operator"})
    assert [(e["command"], e["args"], e["issued_by"]) for e in operator] == [
        ("set_metadata", {"experimenter": "ada"}, "test")]
