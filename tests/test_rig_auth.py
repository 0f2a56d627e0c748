"""Only listed keys get onto the rig's sockets (docs/SECURITY.md, "Who may talk to the rig").

``rig keys`` makes the rig's and the consoles' key pairs; with ``[bus] keys_dir`` the command socket and every
publisher are CURVE servers: a listed console is answered and its commands are recorded under its key's name,
whatever it claims; an unlisted key or no key gets nothing. A rig bound off loopback without keys refuses to
start. The last test is a real ``rig run`` with keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from gui.config import GuiConfig
from gui.session import ConsoleSession
from rig.app.cli import main
from rig.app.command_server import CommandServer
from rig.app.config import ConfigError, config_from_dict
from rig.app.supervisor import SessionFailed, Supervisor
from rig.core.auth import (
    BUS_DOMAIN,
    CurveKeys,
    KeysProblem,
    ZapHandler,
    ZapPolicy,
    load_client_keys,
    load_rig_keys,
)
from rig.core.bus import Publisher, Subscriber
from rig.core.client import CommandClient, RigUnreachable
from rig.core.operator import CommandRequest, Snapshot, decode_reply, reply_from_json
from rig.core.schema import Heartbeat
from rig.core.store import read_events
from tests.conftest import REPO, wait_for

SIM = str(REPO / "hardware_configs" / "sim.toml")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A keys folder with console "alice" allowed, and "mallory", made with the same tool but revoked."""
    folder = tmp_path_factory.mktemp("k") / "keys"
    assert main(["keys", "init", str(folder)]) == 0
    assert main(["keys", "add-console", str(folder), "alice"]) == 0
    assert main(["keys", "add-console", str(folder), "mallory"]) == 0
    stolen = folder.parent / "mallory"
    (folder / "consoles" / "mallory").rename(stolen)  # the console's folder, moved to "its PC"
    assert main(["keys", "revoke", str(folder), "mallory"]) == 0
    return folder


def test_rig_keys_makes_the_pairs_the_list_and_the_consoles_folders(keys, capsys):
    assert (keys / "rig.key").is_file() and (keys / "rig.key_secret").is_file()
    assert sorted(p.name for p in (keys / "allowed").iterdir()) == ["alice.key"]
    assert sorted(p.name for p in (keys / "consoles" / "alice").iterdir()) == ["alice.key", "alice.key_secret",
                                                                              "rig.key"]
    if os.name == "posix":
        assert (keys / "rig.key_secret").stat().st_mode & 0o077 == 0
        assert (keys / "consoles" / "alice" / "alice.key_secret").stat().st_mode & 0o077 == 0
    rig = load_rig_keys(keys)
    assert sorted(rig.allowed.values()) == ["alice", "rig"]
    alice = load_client_keys(keys / "consoles" / "alice")
    assert alice.name == "alice" and alice.server_public == rig.public and alice.public in rig.allowed
    assert load_client_keys(keys).name == "rig"  # the rig's own folder: a console on the rig PC
    capsys.readouterr()
    assert main(["keys", "list", str(keys)]) == 0 and capsys.readouterr().out.startswith("alice ")
    assert main(["keys", "init", str(keys)]) == 2  # never overwrites the rig's pair
    assert "already holds the rig's keys" in capsys.readouterr().err
    assert main(["keys", "add-console", str(keys), "rig"]) == 2
    with pytest.raises(KeysProblem, match="rig keys init"):
        load_rig_keys(keys.parent / "nothing")


class _Handler:
    def __init__(self) -> None:
        self.relayed: list[CommandRequest] = []
        self.stops: list[str] = []

    def snapshot(self) -> Snapshot:
        return Snapshot(session_dir="/s", endpoints={}, mode="running")

    def request_stop(self, reason: str) -> None:
        self.stops.append(reason)

    def relay(self, request: CommandRequest) -> None:
        self.relayed.append(request)


def _handshake_failed(sock: zmq.Socket, endpoint: str) -> bool:
    """Connect ``sock`` and wait until its handshake with the server failed (the server refused it)."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(endpoint)
    try:
        wait_for(lambda: monitor.poll(10), 10, "the handshake's outcome")
        return recv_monitor_message(monitor)["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED
    finally:
        sock.disable_monitor()
        monitor.close()


def _client(ctx: zmq.Context, keys: CurveKeys | None) -> zmq.Socket:
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.make_client(sock)
    return sock


def test_the_command_socket_answers_listed_keys_only_and_names_commands_after_the_key(keys):
    rig_keys = load_rig_keys(keys)
    server_ctx, ctx = zmq.Context(), zmq.Context()
    zap = ZapHandler(server_ctx, {BUS_DOMAIN: ZapPolicy(keys=rig_keys.allowed)})
    handler = _Handler()
    srv = CommandServer(server_ctx, "tcp://127.0.0.1:*", handler, keys=rig_keys)
    endpoint = srv.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    socks = []
    try:
        alice = _client(ctx, load_client_keys(keys / "consoles" / "alice"))
        socks.append(alice)
        assert not _handshake_failed(alice, endpoint)
        alice.send(json.dumps({"command": "manual_reward", "args": {"volume_ul": 2.0}, "issued_by": "supervisor"})
                   .encode())
        wait_for(lambda: (srv.serve(), alice.poll(0))[1], 10, "alice's reply")
        assert decode_reply(alice.recv()).ok
        assert [(r.command, r.issued_by) for r in handler.relayed] == [("manual_reward", "alice")]  # not its claim
        alice.send(b'{"command":"stop","issued_by":"the supervisor"}')
        wait_for(lambda: (srv.serve(), alice.poll(0))[1], 10, "alice's reply")
        assert decode_reply(alice.recv()).ok and handler.stops == ["stop from alice"]

        for who in (load_client_keys(keys.parent / "mallory"), None):  # revoked key; no key at all
            sock = _client(ctx, who)
            socks.append(sock)
            assert _handshake_failed(sock, endpoint)
            with contextlib.suppress(zmq.Again):  # no peer let it in: usually not even queued
                sock.send(b'{"command":"close_valve"}', zmq.NOBLOCK)
            srv.serve()
            assert not sock.poll(0)  # refused at the handshake: the request never reaches the server
        assert zap.refusals(BUS_DOMAIN)[0] >= 1  # mallory's key (a keyless client fails before ZAP)
        assert "key not allowed" in zap.refusals(BUS_DOMAIN)[1]
        assert len(handler.relayed) == 1 and handler.stops == ["stop from alice"]
    finally:
        for sock in socks:
            sock.close()
        srv.close()
        zap.stop()
        server_ctx.term()
        ctx.term()


def test_publishers_send_to_listed_keys_only(keys):
    rig_keys = load_rig_keys(keys)
    server_ctx, ctx = zmq.Context(), zmq.Context()
    zap = ZapHandler(server_ctx, {BUS_DOMAIN: ZapPolicy(keys=rig_keys.allowed)})
    pub = Publisher(server_ctx, "tcp://127.0.0.1:0", sender="test", keys=rig_keys)
    endpoint = pub._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    alice = Subscriber(ctx, [endpoint], [b""], keys=load_client_keys(keys / "consoles" / "alice"))
    mallory = Subscriber(ctx, [endpoint], [b""], keys=load_client_keys(keys.parent / "mallory"))
    keyless = ctx.socket(zmq.SUB)
    keyless.setsockopt(zmq.LINGER, 0)
    keyless.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        assert _handshake_failed(keyless, endpoint)
        wait_for(lambda: zap.refusals(BUS_DOMAIN)[0] >= 1, 10, "mallory's handshake to be refused")
        received = []

        def publish_until_alice_hears() -> bool:
            pub.send(Heartbeat(process="test", state="running", t_ns=1, pid=1))
            msg = alice.recv(10)
            received.extend([msg] if msg is not None else [])
            return len(received) >= 3

        wait_for(publish_until_alice_hears, 10, "alice to receive")
        assert mallory.recv(0) is None and not keyless.poll(0)
    finally:
        keyless.close()
        alice.close()
        mallory.close()
        pub.close()
        zap.stop()
        server_ctx.term()
        ctx.term()


def test_a_bus_off_loopback_without_keys_refuses_to_start(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"\[bus.host\]: '0.0.0.0' opens the command socket.*rig keys init"):
        config_from_dict({"bus": {"host": "0.0.0.0"}}, "rig.toml")
    assert config_from_dict({"bus": {"host": "0.0.0.0", "keys_dir": "/keys"}}).bus.keys_dir == "/keys"
    assert config_from_dict({"bus": {"host": "::1"}}).bus.host == "::1"
    code = main(["run", SIM, "--headless", "--sessions-dir", str(tmp_path), "--set", "bus.host=0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "rig keys init KEYS_DIR" in err, err
    assert list(tmp_path.iterdir()) == []  # nothing started, no session folder
    with pytest.raises(SessionFailed, match=r"keys_dir\]?: .*rig keys init"):
        Supervisor(SIM, sessions_root=str(tmp_path), quiet=True, overrides=[f"bus.keys_dir={tmp_path / 'none'}"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_real_rig_with_keys_serves_its_console_and_nobody_else(keys, tmp_path):
    """`rig run` with keys on loopback: alice's console snapshots, hears the bus and stops the session (recorded
    under "alice"); a revoked key gets no answer; the supervisor survives alice's malformed requests."""
    cmd = [sys.executable, "-m", "rig.app.cli", "run", SIM, "--headless", "--duration", "60", "--sessions-dir",
           str(tmp_path), "--set", f"bus.keys_dir={keys}", "--set", "acquisition.sim.height_px=128",
           "--set", "acquisition.sim.width_px=128", "--set", "acquisition.sim.n_cells=40"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    alice_keys = load_client_keys(keys / "consoles" / "alice")
    console = None
    try:
        session_json = wait_for(lambda: next(iter(tmp_path.glob("*/session.json")), None), 30, "session.json")
        wait_for(lambda: json.loads(session_json.read_text(encoding="utf-8")).get("status") == "running", 60,
                 "the session to run")
        endpoint = json.loads(session_json.read_text(encoding="utf-8"))["endpoints"]["command"]
        with pytest.raises(RigUnreachable):
            CommandClient(endpoint, timeout_s=0.5, retries=1, keys=load_client_keys(keys.parent / "mallory")) \
                .request("snapshot")
        alice = CommandClient(endpoint, timeout_s=2.0, keys=alice_keys)
        snap = reply_from_json(alice.request("snapshot")).snapshot
        assert snap is not None and snap.mode == "running"
        refused = alice.request("set_ensembles", up=[99999999999999999999], down=[1])
        assert refused["ok"] is False and "up must be a list" in refused["error"]
        console = ConsoleSession(GuiConfig(), endpoint, keys=alice_keys)
        wait_for(lambda: (console.tick(), console.reader is not None and console.reader.received > 10)[1], 20,
                 "the console to hear the rig's streams")
        assert alice.request("stop", issued_by="supervisor")["ok"]
        alice.close()
        out, err = proc.communicate(timeout=60)
    finally:
        if console is not None:
            console.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    summary = json.loads(out.strip().splitlines()[-1])  # (its "ok" also judges the data: no trial ran yet)
    assert summary["stop_reason"] == "stop from alice" and "failed_process" not in summary, err[-3000:]
    session = session_json.parent
    assert json.loads(session_json.read_text(encoding="utf-8"))["status"] == "ok"
    assert (session / "summary.json").is_file()
    refusals = read_events(session / "supervisor.events.jsonl", {"connection_refused"})
    assert refusals and "key not allowed" in refusals[0]["last"]


def test_the_console_refuses_a_keys_folder_it_cannot_use_in_one_line(tmp_path, capsys):
    assert main(["console", "--connect", "tcp://127.0.0.1:5600", "--keys", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "rig.key not found" in err and "add-console" in err, err
