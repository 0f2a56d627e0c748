"""Frame sources with real files and real sockets: replay formats, CLOOSE raw TCP, our ZeroMQ stream."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import types

import h5py
import numpy as np
import pytest
import tifffile
import zmq

from acquisition.config import AcquisitionConfig, ClooseTcpConfig, ReplayConfig, ZmqStreamConfig
from acquisition.sources.base import EndOfStream, Frame
from acquisition.sources.cloose_tcp import ClooseTcpSource
from acquisition.sources.movie import MovieError
from acquisition.sources.registry import SOURCE_NAMES, SOURCES, SourceRegistration, make_source, registration
from acquisition.sources.replay import ReplaySource
from acquisition.sources.zmq_stream import ZmqStreamSource
from acquisition.validate import FrameFlag
from tests.conftest import REPO, wait_for
from tests.scanimage_file import scanimage_lines, write_scanimage_bigtiff, write_si4_tiff

T, LY, LX = 6, 12, 10


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 60000, (T, LY, LX)).astype(np.uint16)


def _read_all(src, timeout_s: float = 5.0) -> list[Frame]:
    frames = []
    with src:
        while True:
            try:
                f = src.read(timeout_s)
            except EndOfStream:
                return frames
            assert f is not None
            frames.append(Frame(f.data.copy(), f.number, f.t_ready_ns, f.scope_time_s, f.flags))


# ---------------------------------------------------------------- replay


@pytest.mark.parametrize("kind", ["tif", "bigtiff", "npy", "h5", "bin"])
def test_replay_formats_deliver_every_frame(tmp_path, stack, kind):
    if kind == "tif":
        path = tmp_path / "movie.tif"
        tifffile.imwrite(path, stack)
    elif kind == "bigtiff":
        path = tmp_path / "movie.tif"
        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            for frame in stack:
                tw.write(frame, contiguous=False)
    elif kind == "npy":
        path = tmp_path / "movie.npy"
        np.save(path, stack)
    elif kind == "h5":
        path = tmp_path / "movie.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=stack, chunks=(1, LY, LX))
            f["data"].attrs["fs"] = 7.5
    else:
        plane = tmp_path / "suite2p" / "plane0"
        plane.mkdir(parents=True)
        path = plane / "data.bin"
        stack.astype(np.int16).tofile(path)
        np.save(plane / "ops.npy", {"Ly": LY, "Lx": LX, "fs": 7.5, "registration": {"maxregshift": 0.1}})
    src = ReplaySource(path, speed="fast")
    assert src.shape == (LY, LX) and src.n_frames == T
    frames = _read_all(src)
    assert [f.number for f in frames] == list(range(T))
    expected = stack.astype(np.int16) if kind == "bin" else stack
    np.testing.assert_array_equal(np.stack([f.data for f in frames]), expected)
    assert src.link_state() == "ended"
    if kind in ("h5", "bin"):
        assert src.frame_rate_hz == 7.5  # from the file


def test_replay_interleaved_channels_and_planes(tmp_path, stack):
    path = tmp_path / "si.tif"
    tifffile.imwrite(path, stack)  # 6 pages = 3 timepoints x 2 channels (channel fastest)
    src = ReplaySource(path, speed="fast", n_channels=2, channel=1)
    frames = _read_all(src)
    np.testing.assert_array_equal(np.stack([f.data for f in frames]), stack[1::2])


@pytest.mark.parametrize("layout", ["header", "software_tag", "si4"])
def test_replay_takes_the_frame_rate_from_scanimage_metadata(tmp_path, stack, layout):
    path = tmp_path / "si.tif"
    frames = stack.astype(np.int16)
    if layout == "si4":
        write_si4_tiff(path, frames, 15.63)
    else:
        # ScanImage 2016+ writes both; a file re-saved by another program may keep only the Software tag
        write_scanimage_bigtiff(path, frames, scanimage_lines(29.98), header=layout == "header")
    src = ReplaySource(path, speed="fast", default_frame_rate_hz=30.0)
    expected = {"header": (29.98, "ScanImage header"), "software_tag": (29.98, "ScanImage Software tag"),
                "si4": (15.63, "ScanImage ImageDescription")}[layout]
    assert src.frame_rate_hz == expected[0]
    assert src.rate_source.startswith(expected[1])
    np.testing.assert_array_equal(np.stack([f.data for f in _read_all(src)]), frames)


def test_replay_of_one_plane_of_a_scanimage_volume_runs_at_the_volume_rate(tmp_path):
    rng = np.random.default_rng(4)
    pages = rng.integers(0, 30000, (3 * 2 * 2, LY, LX)).astype(np.int16)  # 3 volumes x 2 planes x 2 channels
    path = tmp_path / "volume.tif"
    write_scanimage_bigtiff(path, pages, scanimage_lines(60.0, volume_rate_hz=29.5, n_slices=2))
    src = ReplaySource(path, speed="fast", n_channels=2, channel=1, n_planes=2, plane=1)
    assert src.frame_rate_hz == 29.5 and "scanVolumeRate" in src.rate_source
    np.testing.assert_array_equal(np.stack([f.data for f in _read_all(src)]), pages[3::4])
    # the Software tag without a volume rate: the frame rate over the planes
    write_scanimage_bigtiff(path, pages, "SI.hRoiManager.scanFrameRate = 60\n", header=False)
    src = ReplaySource(path, speed="fast", n_channels=2, n_planes=2)
    assert src.frame_rate_hz == 30.0 and src.rate_source.endswith("/ 2 planes")


def test_replay_rate_source_says_when_the_file_has_no_rate_or_the_config_overrides(tmp_path, stack):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, stack)
    src = ReplaySource(path, default_frame_rate_hz=12.5)
    assert src.frame_rate_hz == 12.5 and "does not say" in src.rate_source
    si = tmp_path / "si.tif"
    write_scanimage_bigtiff(si, stack.astype(np.int16), scanimage_lines(29.98))
    src = ReplaySource(si, frame_rate_hz=10.0)
    assert src.frame_rate_hz == 10.0 and src.rate_source == "acquisition.replay.frame_rate_hz"


def test_replay_loops_and_paces_at_the_recorded_rate(tmp_path, stack):
    path = tmp_path / "m.npy"
    np.save(path, stack[:2])
    src = ReplaySource(path, speed="recorded", frame_rate_hz=1.0, loop=True)
    with src:
        first = src.read(0.0)
        assert first is not None and first.number == 0
        assert src.read(0.0) is None  # the next frame is due one second later
        second = wait_for(lambda: src.read(0.2), timeout_s=5, what="second frame")
        assert second.number == 1
    fast = ReplaySource(path, speed="fast", loop=True)
    with fast:
        numbers = [fast.read(0.0).number for _ in range(5)]
    assert numbers == [0, 1, 2, 3, 4] and fast.stats()["loops"] == 2


def test_replay_errors_name_the_file(tmp_path):
    with pytest.raises(MovieError, match="file not found"):
        ReplaySource(tmp_path / "none.tif")
    (tmp_path / "x.avi").write_bytes(b"00")
    with pytest.raises(MovieError, match="unknown movie type"):
        ReplaySource(tmp_path / "x.avi")
    (tmp_path / "bad.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(MovieError, match="bad.tif: cannot read as TIFF"):
        ReplaySource(tmp_path / "bad.tif")
    (tmp_path / "data.bin").write_bytes(b"\0" * 100)
    with pytest.raises(MovieError, match="ops.npy"):
        ReplaySource(tmp_path / "data.bin")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 3, 3))
        f["b"] = np.zeros((2, 3, 3))
    with pytest.raises(MovieError, match="h5_key"):
        ReplaySource(tmp_path / "two.h5")
    assert ReplaySource(tmp_path / "two.h5", h5_key="b").n_frames == 2


# ---------------------------------------------------------------- CLOOSE raw TCP


def _column_major_bytes(image: np.ndarray) -> bytes:
    return image.astype("<u2").tobytes(order="F")  # MATLAB reshape(img, [], 1)


def _read_frame(src, timeout_s: float = 5.0) -> Frame:
    return wait_for(lambda: src.read(0.1), timeout_s=timeout_s, what="a TCP frame")


def test_cloose_tcp_frames_reconnect_and_truncation(stack):
    src = ClooseTcpSource("127.0.0.1", 0, LY, LX, frame_rate_hz=30.0, replace_connections=True)
    src.start_keeping()  # as the acquisition process does when the session runs (earlier frames are drained)
    src.open()
    try:
        assert src.link_state() == "waiting"
        scope = socket.create_connection(("127.0.0.1", src.port))
        payload = _column_major_bytes(stack[0]) + _column_major_bytes(stack[1])
        scope.sendall(payload[:37])  # frames arrive in arbitrary pieces
        scope.sendall(payload[37:])
        f0 = _read_frame(src)
        np.testing.assert_array_equal(f0.data, stack[0])
        f1 = _read_frame(src)
        np.testing.assert_array_equal(f1.data, stack[1])
        assert (f0.number, f1.number) == (0, 1) and f1.flags == 0
        assert src.link_state() == "ok"
        # the scope dies halfway through a frame
        scope.sendall(_column_major_bytes(stack[2])[:50])
        scope.close()
        wait_for(lambda: src.read(0.05) is None and src.stats()["truncated_frames"] == 1, timeout_s=5,
                 what="truncated frame counted")
        assert src.link_state() == "reconnecting"
        codes = [c for c, _ in src.pop_warnings()]
        assert "truncated_frame" in codes and "link_lost" in codes
        # ... and comes back: the session goes on, the gap is recorded
        scope = socket.create_connection(("127.0.0.1", src.port))
        scope.sendall(_column_major_bytes(stack[3]))
        f3 = _read_frame(src)
        np.testing.assert_array_equal(f3.data, stack[3])
        assert f3.number == 2 and f3.flags & FrameFlag.AFTER_GAP
        stats = src.stats()
        assert stats["reconnects"] == 1 and stats["bad_frames"] == 1 and stats["gap_s_total"] > 0
        assert "link_restored" in [c for c, _ in src.pop_warnings()]
        # a second connection (restarted scope script) replaces the first (with replace_connections)
        scope2 = socket.create_connection(("127.0.0.1", src.port))
        scope2.sendall(_column_major_bytes(stack[4]))
        f4 = _read_frame(src)
        np.testing.assert_array_equal(f4.data, stack[4])
        scope.close()
        scope2.close()
    finally:
        src.close()


def test_cloose_tcp_port_in_use_is_a_clear_error():
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        port = holder.getsockname()[1]
        src = ClooseTcpSource("127.0.0.1", port, 4, 4)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            src.open()
    finally:
        holder.close()


# ---------------------------------------------------------------- ZeroMQ framed stream


def _header(number: int, shape=(LY, LX), dtype="uint16", order="C", plane=0, **extra) -> bytes:
    h = {"v": 1, "frame": number, "t": number / 30, "shape": list(shape), "dtype": dtype, "order": order,
         "plane": plane, "channel": 0}
    h.update(extra)
    return json.dumps(h).encode()


def test_zmq_stream_frames_gaps_and_bad_messages(stack):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    src = ZmqStreamSource(f"tcp://127.0.0.1:{port}", plane=0, expected_shape=(LY, LX))
    src.open()
    try:
        assert pub.poll(5000), "subscriber never joined"
        pub.recv()
        assert src.link_state() == "waiting"
        pub.send_multipart([b"frame", _header(0), stack[0].tobytes()])
        pub.send_multipart([b"frame", _header(1, order="F"), stack[1].tobytes(order="F")])
        pub.send_multipart([b"frame", b"{not json", stack[2].tobytes()])
        pub.send_multipart([b"frame", _header(2)])  # no pixel part
        pub.send_multipart([b"frame", _header(3), stack[3].tobytes()[:-2]])  # short
        pub.send_multipart([b"frame", _header(4, dtype="complex64"), stack[4].tobytes()])
        pub.send_multipart([b"frame", _header(5, plane=1), stack[5].tobytes()])  # other plane: skipped
        pub.send_multipart([b"frame", _header(9, extra_key="ok"), stack[4].tobytes()])  # gap 2..8
        pub.send_multipart([b"frame", _header(10, shape=(LX, LY)), stack[4].tobytes()])  # unexpected shape
        got = [_read_frame(src) for _ in range(4)]
        np.testing.assert_array_equal(got[0].data, stack[0])
        np.testing.assert_array_equal(got[1].data, stack[1])
        assert got[1].scope_time_s == pytest.approx(1 / 30)
        assert got[2].number == 9 and got[2].flags & FrameFlag.AFTER_GAP
        assert got[3].flags & FrameFlag.WRONG_SHAPE
        assert src.link_state() == "ok"
        stats = src.stats()
        assert stats["bad_frames"] == 4 and stats["frames_missed"] == 7 and stats["frames"] == 4
        assert stats["skipped_other_plane_or_channel"] == 1
        codes = {c for c, _ in src.pop_warnings()}
        assert {"malformed_header", "malformed_message", "truncated_frame", "wrong_dtype"} <= codes
    finally:
        src.close()
        pub.close(0)


def test_zmq_stream_numbers_keep_increasing_across_publisher_restarts(stack):
    """A restarted publisher counts from 0 again; the decoder needs increasing numbers, so we continue ours."""
    ctx = zmq.Context.instance()
    src = ZmqStreamSource("tcp://127.0.0.1:0", bind=True, expected_shape=(LY, LX))
    src.open()
    got: list[Frame] = []

    def run_publisher(numbers: list[int]) -> None:  # a fresh socket each run, as a restarted scope script
        pub = ctx.socket(zmq.XPUB)  # XPUB: it sees the subscription arrive, so no frame is sent into the void
        pub.setsockopt(zmq.LINGER, 1000)
        pub.connect(src.bound_endpoint)
        try:
            # the bound SUB attaches the new peer (and sends its subscription) only while it is being read
            wait_for(lambda: src.read(0.01) is None and pub.poll(0), what="the subscription to reach the publisher")
            pub.recv()
            for number in numbers:
                pub.send_multipart([b"frame", _header(number), stack[number % T].tobytes()])
            got.extend(_copy(_read_frame(src)) for _ in numbers)
        finally:
            pub.close()

    try:
        run_publisher([0, 1, 2, 3])
        run_publisher([0, 1, 2])  # restarted: its counter went back to 0
        run_publisher([2, 3])  # restarted again, its first two frames lost
        numbers = [f.number for f in got]
        assert numbers == [0, 1, 2, 3, 4, 5, 6, 9, 10], numbers
        assert all(b > a for a, b in zip(numbers, numbers[1:], strict=False))
        after_gap = [bool(f.flags & FrameFlag.AFTER_GAP) for f in got]
        assert after_gap == [False, False, False, False, True, False, False, True, False]
        stats = src.stats()
        assert stats["publisher_restarts"] == 2 and stats["frames_missed"] == 2
        assert [c for c, _ in src.pop_warnings() if c == "stream_restarted"] == ["stream_restarted"] * 2
    finally:
        src.close()


def _copy(frame: Frame) -> Frame:
    return Frame(frame.data.copy(), frame.number, frame.t_ready_ns, frame.scope_time_s, frame.flags)


def test_reference_publisher_script_streams_a_movie(tmp_path, stack):
    path = tmp_path / "movie.npy"
    np.save(path, stack)
    src = ZmqStreamSource("tcp://127.0.0.1:0", bind=True)
    src.open()
    try:
        proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "publish_frames.py"), str(path),
                                 "--endpoint", src.bound_endpoint, "--connect", "--fast", "--order", "F"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        frames = [_read_frame(src, timeout_s=30) for _ in range(T)]
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["frames"] == T
        np.testing.assert_array_equal(np.stack([f.data for f in frames]), stack)
        assert [f.number for f in frames] == list(range(T))
    finally:
        src.close()


# ---------------------------------------------------------------- make_source


def test_make_source_builds_each_kind(tmp_path, stack):
    np.save(tmp_path / "m.npy", stack)
    cfg = AcquisitionConfig(source="replay", replay=ReplayConfig(path=str(tmp_path / "m.npy"), speed="fast"))
    assert isinstance(make_source(cfg, up=[], down=[]), ReplaySource)
    cfg = AcquisitionConfig(source="cloose_tcp", cloose_tcp=ClooseTcpConfig(port=30001, height_px=4, width_px=8))
    src = make_source(cfg, up=[], down=[])
    assert isinstance(src, ClooseTcpSource) and src.shape == (4, 8)
    cfg = AcquisitionConfig(source="zmq_stream", zmq_stream=ZmqStreamConfig(endpoint="tcp://127.0.0.1:5999",
                                                                             height_px=6, width_px=5))
    src = make_source(cfg, up=[], down=[])
    assert isinstance(src, ZmqStreamSource) and src.shape == (6, 5)


def test_the_registry_is_the_configs_list_of_sources():
    assert SOURCE_NAMES == tuple(SOURCES) == ("sim", "replay", "cloose_tcp", "zmq_stream", "scanbox_mmap",
                                              "scanimage_tcp", "prairieview")
    for name in SOURCE_NAMES:
        assert AcquisitionConfig(source=name).source == name
        assert registration(name).name == name
    with pytest.raises(ValueError, match=r"^`source`: must be one of sim, replay, cloose_tcp, zmq_stream, scanbox"):
        AcquisitionConfig(source="scanimage")
    with pytest.raises(ValueError, match="`source`"):
        registration("scanimage")


def test_only_the_simulated_scope_has_truth_and_hears_the_rig():
    for name, reg in SOURCES.items():
        caps = (reg.has_ground_truth, reg.hears_outcomes, reg.follows_ensembles)
        assert caps == ((True, True, True) if name == "sim" else (False, False, False)), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        SOURCES["sim"].hears_outcomes = False  # type: ignore[misc]


def test_a_source_that_lacks_a_promised_capability_is_refused_when_built(monkeypatch, tmp_path, stack):
    import acquisition.sources.registry as registry

    np.save(tmp_path / "m.npy", stack)
    fake = SourceRegistration("fake", lambda cfg, ctx: ReplaySource(str(tmp_path / "m.npy")), has_ground_truth=True)
    monkeypatch.setattr(registry, "SOURCES", types.MappingProxyType({**registry.SOURCES, "fake": fake}))
    with pytest.raises(TypeError, match="'fake' is registered as HasGroundTruth"):
        make_source(types.SimpleNamespace(source="fake"))  # type: ignore[arg-type]


def test_loading_the_config_imports_no_source():
    """The registry names every source without importing any: a config loads without numpy, zmq or scipy."""
    code = ("import sys, acquisition.config\n"
            "print(','.join(m for m in ('numpy', 'zmq', 'scipy', 'tifffile') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("section, kwargs, field", [
    (ReplayConfig, {"speed": "slow"}, "speed"),
    (ReplayConfig, {"n_channels": 2, "channel": 2}, "channel"),
    (ClooseTcpConfig, {"port": 70000}, "port"),
    (ZmqStreamConfig, {"endpoint": "localhost"}, "endpoint"),
    (ZmqStreamConfig, {"height_px": 10}, "height_px"),
])
def test_config_errors_name_the_field(section, kwargs, field):
    with pytest.raises(ValueError, match=f"^`{field}`"):
        section(**kwargs)


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="^`source`"):
        AcquisitionConfig(source="webcam")


def test_read_before_open_is_an_error(tmp_path, stack):
    np.save(tmp_path / "m.npy", stack)
    with pytest.raises(RuntimeError, match="before open"):
        ReplaySource(tmp_path / "m.npy").read(0.0)
