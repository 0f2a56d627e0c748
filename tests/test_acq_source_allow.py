"""Frame sources on a network take frames from listed scope addresses only (docs/SECURITY.md, "Frames").

The CLOOSE listener binds loopback by default; elsewhere it needs ``allow``, and a connection from any other
address is closed before it can replace the scope's, counted and warned about. A bound ZeroMQ stream with an
allow-list refuses other publishers at the handshake (ZAP on the peer's address). On loopback the refused
address is 127.0.0.1 itself, by listing only another one.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import zmq

from acquisition.config import ClooseTcpConfig, ZmqStreamConfig
from acquisition.sources.cloose_tcp import ClooseTcpSource
from acquisition.sources.zmq_stream import ZmqStreamSource
from tests.conftest import wait_for

LY, LX = 6, 5
FRAME = np.arange(LY * LX, dtype=np.uint16).reshape(LY, LX)


def test_the_configs_refuse_a_network_listener_without_an_allow_list():
    assert ClooseTcpConfig().host == "127.0.0.1" and ClooseTcpConfig().allow == []
    with pytest.raises(ValueError, match=r"`allow`: listening on '0.0.0.0' lets any machine .* allow = \["):
        ClooseTcpConfig(host="0.0.0.0")
    assert ClooseTcpConfig(host="0.0.0.0", allow=["10.0.0.5", "::ffff:10.0.0.6"]).allow == ["10.0.0.5", "10.0.0.6"]
    with pytest.raises(ValueError, match=r"`allow`: 'scope-pc' is not an IP address"):
        ClooseTcpConfig(host="0.0.0.0", allow=["scope-pc"])
    with pytest.raises(ValueError, match=r"`allow`: binding 'tcp://\*:5570' lets any machine"):
        ZmqStreamConfig(endpoint="tcp://*:5570", bind=True)
    with pytest.raises(ValueError, match=r"`allow`: binding 'tcp://192.168.1.2:5570'"):
        ZmqStreamConfig(endpoint="tcp://192.168.1.2:5570", bind=True)
    assert ZmqStreamConfig(endpoint="tcp://0.0.0.0:5570", bind=True, allow=["10.0.0.5"]).allow == ["10.0.0.5"]
    assert ZmqStreamConfig(endpoint="tcp://127.0.0.1:5570", bind=True).allow == []
    assert ZmqStreamConfig(endpoint="tcp://scope-pc:5570").allow == []  # connecting: the rig chooses its peer
    with pytest.raises(ValueError, match="only for bind = true"):
        ZmqStreamConfig(endpoint="tcp://scope-pc:5570", allow=["10.0.0.5"])


def _column_major(frame: np.ndarray) -> bytes:
    return frame.T.astype("<u2").tobytes()


def _closed_by_peer(sock: socket.socket) -> bool:
    """The rig closed the connection: end of stream, or a reset since the frame we sent was never read."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("allow", [["10.9.9.9"], ["127.0.0.1"]])
def test_cloose_tcp_closes_connections_from_addresses_not_listed(allow):
    src = ClooseTcpSource("127.0.0.1", 0, LY, LX, allow=allow)
    src.start_keeping()
    src.open()
    scope = socket.create_connection(("127.0.0.1", src.port))
    try:
        scope.sendall(_column_major(FRAME))
        if allow == ["127.0.0.1"]:
            frame = wait_for(lambda: src.read(0.05), 5, "the listed scope's frame")
            np.testing.assert_array_equal(frame.data, FRAME)
            assert src.stats()["refused_connections"] == 0
            return
        wait_for(lambda: src.read(0.05) is None and src.stats()["refused_connections"] == 1, 5, "the refusal")
        assert src.stats()["frames"] == 0 and src.link_state() == "waiting"
        [(code, message)] = src.pop_warnings()
        assert code == "connection_refused" and "from 127.0.0.1 refused: only 10.9.9.9 may send" in message
        scope.settimeout(5)
        assert _closed_by_peer(scope)
    finally:
        scope.close()
        src.close()


@pytest.mark.parametrize("allow", [["10.9.9.9"], ["127.0.0.1"]])
def test_a_bound_zmq_stream_lets_in_listed_publishers_only(allow):
    ctx = zmq.Context()
    src = ZmqStreamSource("tcp://127.0.0.1:0", bind=True, expected_shape=(LY, LX), context=ctx, allow=allow)
    src.open()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(src.bound_endpoint)
    header = json.dumps({"v": 1, "frame": 0, "shape": [LY, LX], "dtype": "uint16"}).encode()
    try:
        if allow == ["127.0.0.1"]:
            frame = wait_for(lambda: (pub.send_multipart([b"frame", header, FRAME.tobytes()]), src.read(0.02))[1],
                             10, "the listed publisher's frame")
            np.testing.assert_array_equal(frame.data, FRAME)
            assert src.stats()["refused_connections"] == 0 and src.stats()["connects"] == 1
            return
        wait_for(lambda: (src.read(0.02), src.stats()["refused_connections"] >= 1)[1], 10, "the refusal")
        pub.send_multipart([b"frame", header, FRAME.tobytes()])
        assert src.read(0.05) is None and src.stats()["frames"] == 0
        stats = src.stats()
        assert stats["connects"] == 0 and stats["disconnects"] == 0  # a refused publisher is not a lost link
        warnings = src.pop_warnings()
        assert [c for c, _ in warnings] == ["connection_refused"]
        assert "address not allowed (from 127.0.0.1)" in warnings[0][1] and "only 10.9.9.9" in warnings[0][1]
    finally:
        pub.close()
        src.close()
        ctx.term()
