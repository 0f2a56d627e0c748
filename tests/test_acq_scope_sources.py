"""The real-scope frame sources against twins of the scopes' sending side (tests/scope_twins.py): Scanbox's
memory-mapped file, ScanImage's framed TCP stream, PrairieView's raw sample stream."""

from __future__ import annotations

import math
import socket
import struct
import threading

import numpy as np
import pytest

from acquisition.config import AcquisitionConfig, PrairieViewConfig, ScanboxMmapConfig, ScanImageTcpConfig
from acquisition.sources.framed_tcp import FrameParser, encode_frame
from acquisition.sources.prairieview import PrairieViewSource, RawFrameAssembler, TcpSampleTransport
from acquisition.sources.registry import make_source
from acquisition.sources.scanbox_mmap import ScanboxMmapSource
from acquisition.sources.scanimage_tcp import ScanImageTcpSource
from acquisition.validate import FrameFlag
from tests.conftest import REPO, wait_for
from tests.scope_twins import ScanboxMmapWriter, prairie_samples, scanimage_frame_bytes

T, LY, LX = 5, 12, 10


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 60000, (T, LY, LX)).astype(np.uint16)


def _codes(src) -> list[str]:
    return [c for c, _ in src.pop_warnings()]


# ---------------------------------------------------------------- Scanbox memory-mapped


@pytest.fixture
def scanbox(tmp_path):
    writer = ScanboxMmapWriter(tmp_path / "scanbox.mmap")
    src = ScanboxMmapSource(writer.path, LY, LX, stale_after_s=5.0)
    src.open()
    yield writer, src
    src.close()
    writer.close()


def test_scanbox_frames_are_inverted_back_and_released(scanbox, stack):
    writer, src = scanbox
    assert src.read(0.01) is None and src.link_state() == "waiting"
    assert writer.write_frame(7, stack[0], ttl=1)
    assert not writer.write_frame(8, stack[1])  # not consumed yet: Scanbox skips this one
    f = src.read(1.0)
    np.testing.assert_array_equal(f.data, stack[0])
    assert (f.number, f.flags) == (7, 0) and f.data.flags.c_contiguous
    assert writer.consumed() and src.link_state() == "ok"
    assert writer.write_frame(9, stack[2])
    f = src.read(1.0)
    np.testing.assert_array_equal(f.data, stack[2])
    assert f.number == 9 and f.flags & FrameFlag.AFTER_GAP  # frame 8 was skipped by the writer
    stats = src.stats()
    assert stats["frames"] == 2 and stats["frames_missed"] == 1 and stats["ttl_high_frames"] == 1


def test_scanbox_handshake_with_a_writer_thread(scanbox, stack):
    writer, src = scanbox
    n = 40

    def scope() -> None:
        for i in range(n):
            wait_for(writer.consumed, timeout_s=5, what="the reader to release the frame", poll_s=0.0005)
            writer.write_frame(i, stack[i % T])

    thread = threading.Thread(target=scope, daemon=True)
    thread.start()
    frames = [wait_for(lambda: src.read(0.1), what="a Scanbox frame") for _ in range(n)]
    thread.join(5)
    assert [f.number for f in frames] == list(range(n)) and writer.skipped == 0
    assert src.stats()["frames_missed"] == 0


def test_scanbox_stop_restart_and_int16_wrap(scanbox, stack):
    writer, src = scanbox
    writer.write_frame(32766, stack[0])
    assert src.read(1.0).number == 32766
    writer.write_frame(32767, stack[1])
    assert src.read(1.0).number == 32767
    writer.write_frame(0, stack[2])  # the int16 counter wrapped
    f = src.read(1.0)
    assert f.number == 32768 and f.flags == 0
    writer.write_frame(0, stack[3])  # ... or saturated: a repeat, numbered as the next
    assert src.read(1.0).number == 32769
    writer.stop()
    assert src.read(0.02) is None and src.link_state() == "waiting"
    codes = _codes(src)
    assert "acquisition_stopped" in codes and "repeated_frame_number" in codes
    writer.set_word(0, -1)
    writer.write_frame(0, stack[4])  # imaging again: numbers continue, after a gap
    f = src.read(1.0)
    assert f.number == 32770 and f.flags & FrameFlag.AFTER_GAP
    writer.write_frame(1, stack[0])
    assert src.read(1.0).number == 32771
    writer.write_frame(0, stack[1])  # restarted without a -2 seen: back, not 32767 frames ahead
    f = src.read(1.0)
    assert f.number == 32772 and f.flags & FrameFlag.AFTER_GAP
    assert src.stats()["stops"] == 1 and src.stats()["restarts"] == 2 and src.stats()["frames_missed"] == 0


def test_scanbox_wrong_sizes_are_counted_never_raised(scanbox, stack):
    writer, src = scanbox
    writer.write_frame(0, stack[0], lines=100, columns=100)  # does not fit the file
    assert src.read(0.02) is None and writer.consumed()  # released, so Scanbox goes on
    writer.write_frame(1, stack[0], lines=-3)
    assert src.read(0.02) is None
    small = stack[1][:6, :4]
    writer.write_frame(2, small)
    f = src.read(1.0)
    assert f.flags & FrameFlag.WRONG_SHAPE and f.data.shape == (6, 4)
    np.testing.assert_array_equal(f.data, small)
    writer.set_word(0, -7)
    assert src.read(0.02) is None
    stats = src.stats()
    assert stats["wrong_size_frames"] == 2 and stats["bad_frames"] == 2 and stats["wrong_shape_frames"] == 1
    assert stats["bad_semaphore"] >= 1
    assert {"wrong_size", "wrong_shape", "bad_semaphore"} <= set(_codes(src))


def test_scanbox_stalled_writer_and_missing_file(tmp_path, stack):
    src = ScanboxMmapSource(tmp_path / "scanbox.mmap", LY, LX, stale_after_s=0.05)
    src.open()  # Scanbox not started: waited for, not an error
    try:
        assert src.read(0.01) is None and src.link_state() == "waiting"
        assert _codes(src) == ["mmap_missing"]
        writer = ScanboxMmapWriter(tmp_path / "scanbox.mmap")
        writer.write_frame(0, stack[0])
        assert wait_for(lambda: src.read(0.1), what="the file to be mapped").number == 0
        assert "link_restored" in _codes(src)
        wait_for(lambda: src.read(0.02) is None and src.stats()["stalls"] == 1, timeout_s=5, what="a stall")
        assert "scope_stalled" in _codes(src)
        writer.write_frame(1, stack[1])
        assert src.read(1.0).number == 1 and "link_restored" in _codes(src)
    finally:
        src.close()
    writer.close()
    with pytest.raises(OSError, match="does not exist"):
        ScanboxMmapSource(tmp_path / "nowhere" / "scanbox.mmap", LY, LX).open()


def test_scanbox_read_never_blocks_past_its_timeout(scanbox):
    _, src = scanbox
    from rig.core.clock import now_ns

    t0 = now_ns()
    assert src.read(0.03) is None
    assert (now_ns() - t0) / 1e9 < 0.5


# ---------------------------------------------------------------- ScanImage framed TCP


def test_framed_format_is_the_documented_bytes(stack):
    img = stack[0].astype(np.int16)
    assert encode_frame(img, 12, 3.5, channel=1) == scanimage_frame_bytes(img, 12, 3.5, channel=1)
    parser = FrameParser()
    data = b"junk" + scanimage_frame_bytes(img, 1, 0.1) + b"\x00BCI" + scanimage_frame_bytes(img, 2, 0.2, header_len=40)
    for i in range(0, len(data), 7):  # any chunking
        parser.feed(data[i:i + 7])
    frames = []
    while (got := parser.next_frame()) is not None:
        frames.append(got)
    assert [h.number for h, _ in frames] == [1, 2] and parser.resyncs == 2 and parser.garbage_bytes == 8
    np.testing.assert_array_equal(np.frombuffer(frames[1][1], "<i2").reshape(LY, LX), img)


def _scanimage(src: ScanImageTcpSource) -> socket.socket:
    return socket.create_connection(("127.0.0.1", src.port), timeout=5)


def _read(src, what="a frame"):
    return wait_for(lambda: src.read(0.1), timeout_s=20, what=what)


def test_scanimage_frames_garbage_and_bad_headers(stack):
    imgs = stack.astype(np.int16)
    src = ScanImageTcpSource("127.0.0.1", 0, expected_shape=(LY, LX), channel=0)
    src.open()
    try:
        scope = _scanimage(src)
        payload = (scanimage_frame_bytes(imgs[0], 100, 1.5) + b"garbage!" + scanimage_frame_bytes(imgs[1], 101, 1.6)
                   + scanimage_frame_bytes(imgs[2], 102, 1.7, version=9)
                   + scanimage_frame_bytes(imgs[2], 103, 1.7, channel=1)
                   + scanimage_frame_bytes(imgs[3][:5], 104, 1.8) + scanimage_frame_bytes(imgs[4], 106, 1.9))
        for i in range(0, len(payload), 1000):
            scope.sendall(payload[i:i + 1000])
        f = _read(src)
        np.testing.assert_array_equal(f.data, imgs[0])
        assert (f.number, f.scope_time_s, f.flags, f.data.dtype) == (100, 1.5, 0, np.int16)
        assert _read(src).number == 101
        f = _read(src)  # version 9 skipped, channel 1 skipped
        assert f.number == 104 and f.flags & FrameFlag.WRONG_SHAPE and f.data.shape == (5, LX)
        f = _read(src)
        assert f.number == 106 and f.flags & FrameFlag.AFTER_GAP
        stats = src.stats()
        assert stats["resyncs"] >= 1 and stats["bad_headers"] >= 1 and stats["skipped_other_channel"] == 1
        assert stats["frames_missed"] == 3 and stats["wrong_shape_frames"] == 1  # 102, 103 (not read), 105
        assert {"resynchronised", "bad_header", "wrong_shape"} <= set(_codes(src))
        scope.close()
    finally:
        src.close()


def test_scanimage_disconnect_truncation_restart_and_burst(stack):
    imgs = stack.astype(np.int16)
    src = ScanImageTcpSource("127.0.0.1", 0)
    src.open()
    try:
        scope = _scanimage(src)
        scope.sendall(scanimage_frame_bytes(imgs[0], 5, 0.0) + scanimage_frame_bytes(imgs[1], 6, 0.1)[:50])
        assert _read(src).number == 5
        scope.close()
        wait_for(lambda: src.read(0.02) is None and src.stats()["truncated_frames"] == 1, what="truncation")
        assert src.link_state() == "reconnecting"
        assert {"truncated_frame", "link_lost"} <= set(_codes(src))
        scope = _scanimage(src)  # MATLAB restarted: numbers from 0 again
        burst = b"".join(scanimage_frame_bytes(imgs[i % T], i, i / 30) for i in range(8))
        scope.sendall(burst)
        f = _read(src)
        assert f.number == 6 and f.flags & FrameFlag.AFTER_GAP
        numbers = [_read(src).number for _ in range(7)]
        assert numbers == list(range(7, 14))
        stats = src.stats()
        assert stats["reconnects"] == 1 and stats["stream_restarts"] == 1 and stats["backlog_events"] >= 1
        assert math.isfinite(f.scope_time_s)
        scope.close()
    finally:
        src.close()


def test_scanimage_connect_mode_dials_matlabs_server(stack):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    src = ScanImageTcpSource("127.0.0.1", port, connect=True)
    src.open()
    try:
        assert src.read(0.05) is None
        conn, _ = server.accept()
        conn.sendall(scanimage_frame_bytes(stack[0], 0, 0.0))
        f = _read(src)
        np.testing.assert_array_equal(f.data, stack[0])
        assert f.data.dtype == np.uint16 and src.link_state() == "ok"
        conn.close()
    finally:
        src.close()
        server.close()


def test_scanimage_refuses_strangers_and_port_in_use():
    src = ScanImageTcpSource("127.0.0.1", 0, allow=["10.9.9.9"])
    src.open()
    try:
        _scanimage(src).close()
        wait_for(lambda: src.read(0.02) is None and src.stats()["refused_connections"] == 1, what="refusal")
        with pytest.raises(OSError, match="cannot listen"):
            ScanImageTcpSource("127.0.0.1", src.port).open()
    finally:
        src.close()


# ---------------------------------------------------------------- Bruker PrairieView


@pytest.mark.parametrize(("spp", "bidirectional"), [(1, False), (3, True), (4, True)])
def test_prairie_assembler_recovers_known_frames_whatever_the_chunks(stack, spp, bidirectional):
    frames = (stack // 8).astype(np.uint16)
    samples = prairie_samples(frames, spp, bidirectional=bidirectional)
    rng = np.random.default_rng(2)
    cuts = np.sort(rng.choice(np.arange(1, samples.size), 40, replace=False))  # cuts pixels and lines anywhere
    asm = RawFrameAssembler(LY, LX, spp, bidirectional=bidirectional)
    out = [f for chunk in np.split(samples, cuts) for f in asm.feed(chunk)]
    assert len(out) == T and asm.pending_samples == 0
    np.testing.assert_array_equal(np.stack(out), frames)


def test_prairie_assembler_offset_and_clipping():
    asm = RawFrameAssembler(1, 2, 2, bidirectional=False)
    [frame] = asm.feed(np.array([8192 + 10, 8192 + 11, 8000, 8100], np.int16))
    assert frame.tolist() == [[10, 0]] and frame.dtype == np.uint16  # mean 10.5 rounds to even; below 0: 0


class _FakeTransport:
    """Chunks from a list; a ConnectionError in the list is raised (a broken link)."""

    def __init__(self, chunks: list) -> None:
        self.chunks = list(chunks)

    def open(self) -> None: ...

    def close(self) -> None: ...

    def read_chunk(self, timeout_s: float) -> np.ndarray:
        if not self.chunks:
            return np.empty(0, np.int16)
        item = self.chunks.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_prairie_source_link_loss_backlog_and_bad_chunks(stack):
    samples = prairie_samples(stack // 8, 2, bidirectional=True)
    per = LY * LX * 2
    chunks = [samples[:per + 7], ConnectionError("relay gone"), np.array([1.5, 2.5]), samples[2 * per:]]
    src = PrairieViewSource(RawFrameAssembler(LY, LX, 2), _FakeTransport(chunks), max_queued_frames=2)
    src.open()
    f0 = src.read(0.5)
    np.testing.assert_array_equal(f0.data, stack[0] // 8)
    frames = [src.read(0.5) for _ in range(2)]  # after the break 3 frames came at once, 2 may wait: one dropped
    np.testing.assert_array_equal(frames[0].data, stack[3] // 8)
    assert frames[0].flags & FrameFlag.AFTER_GAP and [f.number for f in frames] == [1, 2]
    stats = src.stats()
    assert stats["truncated_frames"] == 1 and stats["frames_dropped_backlog"] == 1 and stats["bad_chunks"] == 1
    assert {"truncated_frame", "link_lost", "bad_chunk", "link_restored", "falling_behind"} <= set(_codes(src))
    src.close()


def test_prairie_tcp_transport_from_a_relay(stack):
    frames = (stack // 8).astype(np.uint16)
    data = prairie_samples(frames, 2, bidirectional=True).astype("<i2").tobytes()
    relay = socket.create_server(("127.0.0.1", 0))
    cfg = AcquisitionConfig(source="prairieview", prairieview=PrairieViewConfig(
        port=relay.getsockname()[1], height_px=LY, width_px=LX, samples_per_pixel=2))
    src = make_source(cfg)
    assert isinstance(src, PrairieViewSource) and isinstance(src.transport, TcpSampleTransport)
    src.open()
    try:
        assert src.read(0.05) is None
        conn, _ = relay.accept()
        conn.sendall(data[:1001])  # half a sample
        conn.sendall(data[1001:])
        got = [_read(src, "an assembled frame") for _ in range(T)]
        np.testing.assert_array_equal(np.stack([f.data for f in got]), frames)
        conn.close()
        wait_for(lambda: src.read(0.02) is None and src.link_state() == "reconnecting", what="link lost")
    finally:
        src.close()
        relay.close()


# ---------------------------------------------------------------- config, registry, probe


def test_scope_sources_build_from_config_and_check_their_fields(tmp_path):
    src = make_source(AcquisitionConfig(source="scanbox_mmap", scanbox_mmap=ScanboxMmapConfig(
        path=str(tmp_path / "scanbox.mmap"), height_px=4, width_px=6)))
    assert isinstance(src, ScanboxMmapSource) and src.shape == (4, 6)
    src = make_source(AcquisitionConfig(source="scanimage_tcp", scanimage_tcp=ScanImageTcpConfig(
        height_px=4, width_px=6)))
    assert isinstance(src, ScanImageTcpSource) and src.shape == (4, 6)
    for section, kwargs, field in [(ScanboxMmapConfig, {"poll_s": 1.0}, "poll_s"),
                                   (ScanImageTcpConfig, {"host": "0.0.0.0"}, "allow"),
                                   (ScanImageTcpConfig, {"height_px": 3}, "height_px"),
                                   (PrairieViewConfig, {"transport": "usb"}, "transport"),
                                   (PrairieViewConfig, {"samples_per_pixel": 0}, "samples_per_pixel")]:
        with pytest.raises(ValueError, match=f"^`{field}`"):
            section(**kwargs)


@pytest.mark.parametrize("name", ["scanbox_mmap.toml", "scanimage_tcp.toml", "bruker_prairieview.toml"])
def test_config_patterns_load_and_mark_their_edits(name):
    from rig.app.config import load_config

    path = REPO / "hardware_configs" / name
    load_config(path)
    for line in path.read_text(encoding="utf-8").splitlines():
        key = line.split("=")[0].strip()
        if key in ("path", "port", "host", "height_px", "width_px", "samples_per_pixel", "suite2p_dir",
                   "endpoint", "allow"):
            assert "# EDIT" in line, f"{name}: {line!r} is not marked # EDIT"


def test_the_probe_opens_the_scanbox_file_and_reports_frames(tmp_path, stack):
    from rig.app.config import load_config
    from rig.app.probe import probe_line, probe_source

    writer = ScanboxMmapWriter(tmp_path / "scanbox.mmap")
    cfg = load_config(REPO / "hardware_configs" / "sim.toml", [
        "acquisition.source=scanbox_mmap", f'acquisition.scanbox_mmap.path="{writer.path.as_posix()}"',
        f"acquisition.scanbox_mmap.height_px={LY}", f"acquisition.scanbox_mmap.width_px={LX}"])
    stop = threading.Event()

    def scope() -> None:
        i = 0
        while not stop.is_set():
            if writer.consumed():
                writer.write_frame(i, stack[i % T])
                i += 1
            stop.wait(0.01)

    thread = threading.Thread(target=scope, daemon=True)
    thread.start()
    try:
        result = probe_source(cfg, wait_s=5, measure_s=0.2)
    finally:
        stop.set()
        thread.join(5)
        writer.close()
    assert result.frames >= 2 and result.shape == (LY, LX)
    assert f"{LY}x{LX} pixels" in probe_line(cfg, result)


def test_header_words_match_the_documented_layout(tmp_path, stack):
    """Word 0 frame/semaphore, 1 lines, 2 columns, 3 TTL; pixels from byte 32 (docs/SCOPES.md)."""
    writer = ScanboxMmapWriter(tmp_path / "scanbox.mmap")
    writer.write_frame(3, stack[0], ttl=1)
    assert struct.unpack_from("<4h", writer.mm, 0) == (3, LY, LX, 1)
    assert struct.unpack_from("<H", writer.mm, 32)[0] == 65535 - int(stack[0][0, 0])
    assert struct.unpack_from("<H", writer.mm, 34)[0] == 65535 - int(stack[0][1, 0])  # column-major
    writer.close()


def test_the_probe_reports_scanimage_frames(stack):
    from rig.app.config import load_config
    from rig.app.probe import probe_source
    from rig.core.bus import free_tcp_port

    port = free_tcp_port()
    cfg = load_config(REPO / "hardware_configs" / "sim.toml", [
        "acquisition.source=scanimage_tcp", f"acquisition.scanimage_tcp.port={port}",
        f"acquisition.scanimage_tcp.height_px={LY}", f"acquisition.scanimage_tcp.width_px={LX}"])
    done = threading.Event()

    def matlab() -> None:
        conn = wait_for(lambda: _try_connect(port), what="the probe to listen")
        with conn:
            for i in range(4):
                conn.sendall(scanimage_frame_bytes(stack[i].astype(np.int16), i, i / 30))
            done.wait(5)

    thread = threading.Thread(target=matlab, daemon=True)
    thread.start()
    try:
        result = probe_source(cfg, wait_s=5, measure_s=0.2)
    finally:
        done.set()
        thread.join(5)
    assert result.frames == 4 and result.shape == (LY, LX)


def _try_connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None


def test_a_flood_of_garbage_is_skipped_with_few_warnings(stack):
    src = ScanImageTcpSource("127.0.0.1", 0)
    src.open()
    try:
        scope = _scanimage(src)
        junk = np.random.default_rng(3).integers(0, 256, 300_000, dtype=np.uint8).tobytes().replace(b"BCIF", b"xxxx")
        scope.sendall(junk + scanimage_frame_bytes(stack[0], 0, 0.0) + junk[:999]
                      + scanimage_frame_bytes(stack[1], 1, 0.0))
        assert _read(src).number == 0 and _read(src).number == 1
        assert src.stats()["garbage_bytes"] >= 300_000 + 999
        assert len(src.pop_warnings()) <= 3
        scope.close()
    finally:
        src.close()


@pytest.mark.parametrize("kind", ["scanimage_listen", "scanimage_connect", "prairie_tcp"])
def test_read_returns_within_its_timeout_when_nothing_comes(kind):
    from rig.core.clock import now_ns

    port = socket.create_server(("127.0.0.1", 0))  # held, never accepting: a scope side that is silent
    if kind == "scanimage_listen":
        src = ScanImageTcpSource("127.0.0.1", 0)
    elif kind == "scanimage_connect":
        src = ScanImageTcpSource("127.0.0.1", port.getsockname()[1], connect=True)
    else:
        src = PrairieViewSource(RawFrameAssembler(4, 4), TcpSampleTransport("127.0.0.1", port.getsockname()[1]))
    src.open()
    try:
        for _ in range(3):
            t0 = now_ns()
            assert src.read(0.05) is None
            assert (now_ns() - t0) / 1e9 < 0.5
    finally:
        src.close()
        port.close()
