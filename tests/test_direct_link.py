"""The direct acquisition -> decoder link: real loopback sockets, the bus's encoding, a sender that never blocks."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

from rig.core.direct_link import DirectLinkReceiver, DirectLinkSender
from rig.core.schema import FluorFrame
from tests.conftest import wait_for


def _frame(number: int, n_rois: int = 500) -> FluorFrame:
    rng = np.random.default_rng(number)
    msg = FluorFrame(frame=number, t_ready=10 * number, t_registered=10 * number + 1, t_extracted=10 * number + 2,
                     dy=0.25 * number, dx=-0.5, corr=0.9, flags=number % 3,
                     F=rng.random(n_rois, dtype=np.float32), Fneu=rng.random(n_rois, dtype=np.float32))
    msg.seq, msg.sender = number, "acquisition"
    return msg


@pytest.fixture()
def link():
    sender = DirectLinkSender()
    receiver = DirectLinkReceiver(sender.port)
    wait_for(lambda: sender.send(_frame(0)), what="the sender to accept the receiver")
    assert receiver.recv(2000).frame == 0
    yield sender, receiver
    receiver.close()
    sender.close()


def test_frames_arrive_whole_and_in_order(link):
    sender, receiver = link
    sent = [_frame(i) for i in range(1, 40)]
    for msg in sent:
        assert sender.send(msg)
    for msg in sent:
        got = receiver.recv(2000)
        assert isinstance(got, FluorFrame)
        assert (got.frame, got.t_ready, got.flags, got.dy, got.seq, got.sender) == (
            msg.frame, msg.t_ready, msg.flags, msg.dy, msg.seq, "acquisition")
        np.testing.assert_array_equal(got.F, msg.F)
        np.testing.assert_array_equal(got.Fneu, msg.Fneu)
    assert receiver.gaps.gaps == 0 and receiver.bad_messages == 0
    assert receiver.recv(0) is None  # nothing more


def test_a_receiver_that_stops_reading_never_blocks_the_sender(link):
    """The acquisition loop must not stall behind a hung decoder: what the socket cannot take is dropped and
    counted, the stream stays framed, and the receiver sees the gap."""
    sender, receiver = link
    big = 20_000  # 160 KB per message: the socket buffers fill within a few hundred
    n = 400
    for i in range(1, n + 1):
        sender.send(_frame(i, big))  # returns at once whatever the receiver does
    assert sender.dropped > 0
    frames = []
    while (msg := receiver.recv(500)) is not None:
        frames.append(msg.frame)
    # the message the socket took only in part is completed before the next one: the stream stays framed
    sender.send(_frame(n + 1, big))
    while (msg := receiver.recv(2000)) is not None:
        frames.append(msg.frame)
        if msg.frame == n + 1:
            break
    assert frames[-1] == n + 1 and frames == sorted(frames) and len(frames) < n
    assert frames[:-1] == list(range(1, len(frames)))  # what got through is every frame up to the first drop
    assert receiver.gaps.gaps == n - len(frames) + 1 and receiver.bad_messages == 0


def test_garbage_on_the_link_is_named_and_closes_it():
    listener = socket.create_server(("127.0.0.1", 0))
    receiver = DirectLinkReceiver(listener.getsockname()[1])
    conn, _ = listener.accept()
    conn.sendall(struct.pack("<II", 1000, 7))  # 1000 parts: not a message of ours
    assert receiver.recv(2000) is None
    assert receiver.closed and receiver.bad_messages == 1 and "bad frame prefix" in receiver.last_error
    assert receiver.recv(0) is None  # closed: no reads, no exception
    conn.close()
    listener.close()


def test_a_receiver_that_goes_away_is_an_error_not_an_exception(link):
    sender, receiver = link
    receiver.close()
    wait_for(lambda: not sender.send(_frame(1, 20_000)) and sender.error, what="the sender to see the link lost")
    assert "direct link to the decoder lost" in sender.error
    assert not sender.send(_frame(2))  # stays down; the supervisor handles the decoder's death
