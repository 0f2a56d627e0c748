"""cloose_tcp against twins of CLOOSE's own senders (tests/cloose_twins.py), and the bad-frame diagnosis.

The reader thread drains what the scope writes before the session runs (a sender with a 2 s write timeout
survives a rig that takes seconds to start), refuses a second connection, dials a listening scope and
redials after a drop, serves CLOOSE's frame-count handshake, inverts in place, and counts every frame it
had to drop. The diagnosis names a frame size, pixel order, sign or byte order set wrong.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from acquisition.config import ClooseTcpConfig
from acquisition.diagnose import BadRunWatch, diagnose
from acquisition.sources.base import Frame
from acquisition.sources.cloose_tcp import RING_SLOTS, ClooseTcpSource
from acquisition.validate import FrameFlag
from rig.app.probe import ProbeResult, probe_preview
from tests.cloose_twins import ConnectingSender, ListeningSender, ask_frame_count, wire_bytes
from tests.conftest import wait_for

LY, LX = 12, 10


def _images(n: int, shape: tuple[int, int] = (LY, LX), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, (n, *shape)).astype(np.uint16)


def _codes(src: ClooseTcpSource) -> list[str]:
    return [code for code, _ in src.pop_warnings()]


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_frames_sent_before_the_session_runs_are_drained_counted_and_not_numbered():
    src = ClooseTcpSource("127.0.0.1", 0, 256, 256)  # 128 KiB frames: 100 of them overfill any socket buffer
    src.open()
    scope = ConnectingSender(src.port, write_timeout_s=2.0)
    try:
        early = wire_bytes(np.zeros((256, 256), np.uint16))
        for _ in range(100):
            scope.send(early)  # would time out (the sender dies) if nobody read
        wait_for(lambda: src.stats()["frames_before_start"] == 100, 10, "100 frames drained before the start")
        assert src.read(0.05) is None  # none was kept
        src.start_keeping()
        [image] = _images(1, (256, 256))
        scope.send(wire_bytes(image))
        frame = wait_for(lambda: src.read(0.1), 5, "the first kept frame")
        assert frame.number == 0 and frame.flags == 0
        np.testing.assert_array_equal(frame.data, image)
        assert src.stats()["frames"] == 1 and src.stats()["bytes"] == 101 * 256 * 256 * 2
        assert _codes(src) == ["link_connected"]
    finally:
        scope.close()
        src.close()


@pytest.mark.parametrize("replace", [False, True])
def test_a_second_connection_is_refused_unless_replacing_is_allowed(replace):
    images = _images(2)
    src = ClooseTcpSource("127.0.0.1", 0, LY, LX, replace_connections=replace)
    src.start_keeping()
    src.open()
    first = ConnectingSender(src.port)
    second = None
    try:
        first.send(wire_bytes(images[0]))
        np.testing.assert_array_equal(wait_for(lambda: src.read(0.1), 5, "the first scope's frame").data,
                                      images[0])
        second = ConnectingSender(src.port)
        second.send(wire_bytes(images[1]))
        if replace:
            frame = wait_for(lambda: src.read(0.1), 5, "the replacing connection's frame")
            np.testing.assert_array_equal(frame.data, images[1])
            assert src.stats()["connections"] == 2 and "connection_refused" not in _codes(src)
        else:
            wait_for(lambda: src.stats()["refused_connections"] == 1, 5, "the refusal")
            first.send(wire_bytes(images[1]))  # the live scope goes on undisturbed
            assert wait_for(lambda: src.read(0.1), 5, "the live scope's next frame").number == 1
            codes = _codes(src)
            assert codes == ["link_connected", "connection_refused"], codes
            assert src.link_state() == "ok"
    finally:
        first.close()
        if second is not None:
            second.close()
        src.close()


def test_a_silent_connection_no_longer_blocks_a_new_one():
    src = ClooseTcpSource("127.0.0.1", 0, LY, LX, stale_after_s=0.2)
    src.start_keeping()
    src.open()
    dead = ConnectingSender(src.port)  # a scope PC that rebooted: its old connection never closes
    fresh: list[ConnectingSender] = []
    try:
        wait_for(lambda: src.link_state() == "ok", 5, "the first connection")

        def replaced() -> bool:
            """Dial once the last attempt was handled (accepted or refused); True once one was accepted."""
            stats = src.stats()
            if stats["connections"] + stats["refused_connections"] == 1 + len(fresh):
                if stats["connections"] == 2:
                    return True
                fresh.append(ConnectingSender(src.port))
            return False
        wait_for(replaced, 5, "a new connection replacing the silent one", poll_s=0.05)
        [image] = _images(1)
        fresh[-1].send(wire_bytes(image))
        np.testing.assert_array_equal(wait_for(lambda: src.read(0.1), 5, "the new scope's frame").data, image)
    finally:
        for sender in (dead, *fresh):
            sender.close()
        src.close()


def test_connect_mode_dials_a_listening_scope_retries_and_redials_after_a_drop():
    port = _free_port()
    src = ClooseTcpSource("127.0.0.1", port, LY, LX, mode="connect", frame_rate_hz=30.0)
    src.start_keeping()
    src.open()
    scope: ListeningSender | None = None
    try:
        wait_for(lambda: src.stats()["connect_failures"] >= 2, 5, "failed dials while the scope is not there")
        assert src.link_state() == "waiting" and _codes(src) == ["connect_failed"]  # warned once, not per dial
        scope = ListeningSender(port)
        assert scope.wait_connected(), "the source never dialled the scope"
        images = _images(4)
        scope.send(wire_bytes(images[0]) + wire_bytes(images[1])[:50])
        first = wait_for(lambda: src.read(0.1), 5, "the first frame")
        assert first.number == 0
        np.testing.assert_array_equal(first.data, images[0])
        scope.drop()  # mid-frame
        wait_for(lambda: src.stats()["reconnects"] == 1, 10, "the redial")
        assert scope.wait_connected(), "the scope never saw the redial"
        scope.send(wire_bytes(images[2]))
        after = wait_for(lambda: src.read(0.1), 5, "the frame after the drop")
        np.testing.assert_array_equal(after.data, images[2])
        assert after.number == 1 and after.flags & FrameFlag.AFTER_GAP
        stats = src.stats()
        assert stats["truncated_frames"] == 1 and stats["bad_frames"] == 1 and stats["connections"] == 2
        codes = _codes(src)
        assert codes.count("link_connected") == 1 and "truncated_frame" in codes and "link_lost" in codes \
            and "link_restored" in codes
    finally:
        src.close()
        if scope is not None:
            scope.close()


def test_the_cloose_handshake_then_inverted_frames_without_allocation():
    scope = ListeningSender()
    src = ClooseTcpSource("127.0.0.1", scope.port, LY, LX, mode="connect", handshake_port=0, handshake_frames=3,
                          invert=True)
    src.start_keeping()
    src.open()
    try:
        assert scope.wait_connected()
        count = ask_frame_count(src.handshake_port)  # as CLOOSE's scope side learns how many frames to send
        assert count == 3
        images = _images(count)
        scope.send(b"".join(wire_bytes(im, inverted=True) for im in images))  # Scanbox data are inverted
        frames = [wait_for(lambda: src.read(0.1), 5, "a frame") for _ in range(count)]
        # no allocation: each frame is one of the ring's preallocated row-order slot frames, inverted in place
        assert all(any(f.data is rows for rows in src._rows) for f in frames)
        np.testing.assert_array_equal(frames[-1].data, images[-1])
        assert src.stats()["handshakes"] == 1 and "handshake_served" in _codes(src)
    finally:
        src.close()
        scope.close()


def test_a_big_endian_inverted_scope_in_pieces_reads_right():
    """byte_order = "big": the reorder swaps bytes too, also for a piece of the stream ending inside a column."""
    image = _images(1)[0]
    src = ClooseTcpSource("127.0.0.1", 0, LY, LX, byte_order="big", invert=True)
    src.start_keeping()
    src.open()
    try:
        with socket.create_connection(("127.0.0.1", src.port)) as scope:
            wire = (65535 - image).astype(">u2").tobytes(order="F")  # MATLAB's img(:), big-endian, inverted
            scope.sendall(wire[:33])
            scope.sendall(wire[33:])
            frame = wait_for(lambda: src.read(0.1), 5, "a big-endian frame")
        np.testing.assert_array_equal(frame.data, image)
    finally:
        src.close()


def test_early_delivery_hands_a_frame_over_at_its_last_byte_in_column_order():
    """deliver_early(): the frame is handed over with its column-major pixels (``wire``) while the reader thread puts
    them in row order (``data``, complete once ``data_ready`` is set). Not for inverted or big-endian streams, whose
    bytes are not yet the pixels, nor for frames below EARLY_MIN_BYTES (a 512x512 frame is early, 64x256 is not)."""
    assert ClooseTcpSource("127.0.0.1", 0, 512, 512).deliver_early()
    assert not ClooseTcpSource("127.0.0.1", 0, 64, 256).deliver_early()
    assert not ClooseTcpSource("127.0.0.1", 0, LY, LX, invert=True, early_min_bytes=0).deliver_early()
    assert not ClooseTcpSource("127.0.0.1", 0, LY, LX, byte_order="big", early_min_bytes=0).deliver_early()
    src = ClooseTcpSource("127.0.0.1", 0, LY, LX, early_min_bytes=0)
    assert src.deliver_early()
    src.start_keeping()
    src.open()
    scope = ConnectingSender(src.port)
    try:
        for image in _images(3):
            scope.send(wire_bytes(image))
            frame = wait_for(lambda: src.read(0.1), 5, "a frame")
            assert frame.wire is not None and frame.wire.flags.f_contiguous and frame.data_ready is not None
            np.testing.assert_array_equal(frame.wire, image)
            np.testing.assert_array_equal(frame.wait_data(), image)
            assert frame.data.flags.c_contiguous and frame.data_ready.is_set()
    finally:
        scope.close()
        src.close()


def test_waiting_for_a_frame_its_source_never_finished_names_the_frame():
    frame = Frame(data=np.zeros((2, 2), np.uint16), number=7, t_ready_ns=0, wire=np.zeros((2, 2), np.uint16),
                  data_ready=threading.Event())
    with pytest.raises(RuntimeError, match="frame 7: the source did not finish putting its pixels in row order"):
        frame.wait_data(0.01)
    assert Frame(data=frame.data, number=8, t_ready_ns=0).wait_data(0.0) is frame.data  # whole: at once


def test_a_flood_overwrites_the_oldest_frames_and_counts_them():
    src = ClooseTcpSource("127.0.0.1", 0, LY, LX)
    src.start_keeping()
    src.open()
    scope = ConnectingSender(src.port)
    try:
        n = 5 * RING_SLOTS
        scope.send(b"".join(wire_bytes(im) for im in _images(n)))
        wait_for(lambda: src.stats()["frames"] == n, 5, "every frame received")
        numbers = []
        while (frame := src.read(0.05)) is not None:
            numbers.append(frame.number)
        stats = src.stats()
        assert stats["frames_overwritten"] == n - len(numbers) > 0
        assert numbers == sorted(numbers) and numbers[-1] == n - 1  # the newest kept; the gap is in the numbers
        assert "falling_behind" in _codes(src)
    finally:
        scope.close()
        src.close()


def test_the_config_knows_modes_handshake_and_invert():
    c = ClooseTcpConfig()
    assert (c.mode, c.invert, c.replace_connections, c.handshake_port) == ("listen", False, False, 0)
    with pytest.raises(ValueError, match="`mode`"):
        ClooseTcpConfig(mode="dial")
    assert ClooseTcpConfig(mode="connect", host="10.0.0.7").host == "10.0.0.7"  # dialling needs no allow-list
    with pytest.raises(ValueError, match=r"`allow`: serving the handshake"):
        ClooseTcpConfig(mode="connect", host="10.0.0.7", handshake_port=50000)
    assert ClooseTcpConfig(mode="connect", host="10.0.0.7", handshake_port=50000, allow=["10.0.0.7"]).allow
    with pytest.raises(ValueError, match="`handshake_frames`"):
        ClooseTcpConfig(handshake_frames=70000)


# ---------------------------------------------------------------- the diagnosis


def _field(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    """A field of view: bright blobs on a dim background, as uint16."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.full(shape, 2000.0)
    for y, x in zip(rng.uniform(0, shape[0], 40), rng.uniform(0, shape[1], 40), strict=True):
        image += 20000 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 18)
    return (image + rng.normal(0, 200, shape)).clip(0, 65535).astype(np.uint16)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_the_diagnosis_names_pixel_order_inversion_and_byte_order(shape):
    reference = _field(shape).astype(np.float32)
    image = _field(shape)
    ly, lx = shape

    def as_read(payload: bytes) -> np.ndarray:  # what the source makes of the bytes: column-major little-endian
        return np.frombuffer(payload, "<u2").reshape(lx, ly).T.copy()

    def cause(frame: np.ndarray) -> str:
        return diagnose(frame, reference, shape=shape, frame_rate_hz=30.0, bytes_per_s=ly * lx * 2 * 30.0).cause

    assert cause(as_read(wire_bytes(image, order="C"))) == "pixel_order"
    assert cause(as_read(wire_bytes(image, inverted=True))) == "inverted"
    assert cause(as_read(wire_bytes(image, byteorder=">"))) == "byte_order"
    noise = _images(1, shape)[0]
    assert cause(noise) == "unknown"


def test_the_diagnosis_names_the_frame_size_the_byte_rate_fits():
    d = diagnose(np.zeros((512, 512), np.uint16), None, shape=(512, 512), frame_rate_hz=15.5,
                 bytes_per_s=512 * 796 * 2 * 15.5)
    assert d.cause == "frame_size" and "fit about 512x796, not the configured 512x512?" in d.message


def test_a_run_of_bad_frames_is_diagnosed_once_within_a_second():
    watch = BadRunWatch()
    frame = np.zeros((512, 512), np.uint16)
    period_ns = int(1e9 / 15.5 * 512 / 796)  # 512x796 frames at 15.5 Hz, cut as 512x512: more "frames" per second
    found = []
    for i in range(40):
        d = watch.observe(True, i, i * period_ns, frame, None, shape=(512, 512), frame_rate_hz=15.5, byte_stream=True)
        if d is not None:
            found.append((i * period_ns, d))
    [(t_ns, d)] = found
    assert t_ns <= 1e9 and d.cause == "frame_size" and "512x796" in d.message
    assert watch.observe(False, 41, 41 * period_ns, frame, None, shape=(512, 512), frame_rate_hz=15.5,
                         byte_stream=True) is None
    # a run no cause explains (the rate fits the size, no reference) is reported only once it lasted 5 s
    quiet = BadRunWatch()
    said = [(i, d) for i in range(200) if (d := quiet.observe(True, i, int(i * 1e9 / 30), frame, None,
                                                                shape=(512, 512), frame_rate_hz=30.0,
                                                                byte_stream=True)) is not None]
    [(i, d)] = said
    assert i == 150 and d.cause == "unknown" and "524,288 bytes per frame time" in d.message


def test_the_probe_preview_shows_the_frame():
    image = np.zeros((32, 48), np.uint16)
    image[:, 24:] = 1000
    lines = probe_preview(ProbeResult(frames=1, last_frame=image), columns=24)
    assert len(lines) == 8 and all(len(line) == 24 for line in lines)
    assert lines[0].startswith(" " * 11) and lines[0].endswith("@" * 11)
    assert probe_preview(ProbeResult()) == []


# ---------------------------------------------------------------- the acquisition process, in this process


def test_the_acquisition_drains_before_the_start_and_names_a_pixel_order_set_wrong(tmp_path):
    """The real process class, configured here (no bus loop): a scope that connects at start-up and streams
    C-order frames at 30 Hz. Frames before the start are drained and reported; within a second of running, one
    warning names the pixel order."""
    import threading

    import msgspec

    from acquisition.process import AcquisitionProcess
    from acquisition.rois import RoiSet
    from rig.app.config import CONFIG_LOADER, config_from_dict
    from rig.core.bus import free_tcp_port
    from rig.core.process import ProcessSpec
    from rig.core.store import read_events
    from rig.offline.summary import summarize_session

    size = 64
    image = _field((size, size))
    np.save(tmp_path / "ref.npy", image.astype(np.float32))
    stat = [{"ypix": np.full(9, y), "xpix": np.arange(20, 29), "lam": np.ones(9)} for y in (10, 40)]
    RoiSet(stat=stat, iscell=np.ones((2, 2)), Ly=size, Lx=size).save_suite2p(tmp_path / "rois_in")
    port = free_tcp_port()
    cfg = {"rig": {"name": "cloosetest"}, "decoder": {"up": [0], "down": [1]},
           "acquisition": {"source": "cloose_tcp", "frame_rate_hz": 30.0,
                           "cloose_tcp": {"port": port, "height_px": size, "width_px": size},
                           "rois": {"suite2p_dir": str(tmp_path / "rois_in"), "only_cells": False},
                           "registration": {"ref_path": str(tmp_path / "ref.npy"), "min_corr": 0.3}}}
    config = config_from_dict(cfg, "test-config")
    endpoints = {name: f"tcp://127.0.0.1:{free_tcp_port()}" for name in ("acquisition", "supervisor")}
    spec = ProcessSpec(name="acquisition", target="acquisition.process:AcquisitionProcess",
                       config=msgspec.to_builtins(config), config_file="test-config", config_loader=CONFIG_LOADER,
                       endpoints=endpoints, session_dir=str(tmp_path / "session"), critical=True, watch_parent=False)
    proc = AcquisitionProcess(spec)
    proc.configure()
    assert not proc.early_frames  # 64x64 frames come whole: too small to hand over early
    scope = ConnectingSender(port)
    frame_clock = threading.Event()  # never set: waits on it are the scope's 30 Hz frame clock
    try:
        for _ in range(20):  # while the rig is still starting
            scope.send(wire_bytes(image))
        wait_for(lambda: proc.source.stats()["frames_before_start"] == 20, 5, "the early frames drained")
        proc.on_start()
        bad = wire_bytes(image, order="C")  # a sender set up wrong: row-major pixels
        t0 = time.monotonic()
        for i in range(45):  # at 30 Hz on average even when a step is slow (a busy machine): the byte rate is
            scope.send(bad)  # what tells the frame size (acquisition.diagnose)
            frame_clock.wait(max(0.0, t0 + (i + 1) / 30 - time.monotonic()))
            proc.step()
        wait_for(lambda: (proc.step(), proc.frames)[1] >= 45, 5, "every frame processed")
    finally:
        scope.close()
        proc.on_stop()
        proc._close()
    folder = tmp_path / "session" / "acquisition"
    warnings = [e for e in read_events(folder / "events.jsonl", {"warning"}) if e["code"].startswith("bad_frames_")]
    assert [w["code"] for w in warnings] == ["bad_frames_pixel_order"], warnings
    [final] = read_events(folder / "events.jsonl", {"final_stats"})
    assert final["source_stats"]["frames_before_start"] == 20 and final["frames"] == 45
    assert summarize_session(tmp_path / "session")["frames_before_start"] == 20


def test_ring_holds_a_tenth_of_a_second_at_high_rates():
    """8 slots are 8 ms at 1 kHz: one scheduling hiccup filled them and frames were dropped; sized by time, a
    hiccup makes a few decisions late instead."""
    from acquisition.sources.cloose_tcp import ring_slots

    assert ring_slots(30.0) == RING_SLOTS
    assert ring_slots(1000.0) == 100
    source = ClooseTcpSource("127.0.0.1", 0, 64, 256, frame_rate_hz=1000.0)
    assert len(source._ring.buffers) == 100
