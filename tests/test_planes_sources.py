"""Every frame source delivers each frame's plane and its volume's number (issue 23, docs/PLANES.md).

The inputs are built as the scope side builds them: the framed TCP header bciRigStream.m writes (version 2,
from docs/FRAME_STREAM.md's table, not from our encoder), the ZeroMQ header, Scanbox's memory-mapped header
words (volscan, planes), a ScanImage fast-z TIFF with its metadata (channels, slices, flyback frames), and a
multi-plane session folder; then `rig replay` and a what-if on a multi-plane session.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from acquisition.config import AcquisitionConfig
from acquisition.recording import frame_record_dtype
from acquisition.sources.base import EndOfStream, Frame, FrameSource
from acquisition.sources.framed_tcp import FrameParser, encode_frame
from acquisition.sources.replay import ReplaySource
from acquisition.sources.scanbox_mmap import ScanboxMmapSource
from acquisition.sources.scanimage_tcp import ScanImageTcpSource
from acquisition.sources.zmq_stream import ZmqStreamSource
from acquisition.validate import FrameFlag
from rig.core.clock import now_ns
from rig.core.store import RecordWriter, read_records
from tests.scanimage_file import write_scanimage_bigtiff
from tests.scope_twins import ScanboxMmapWriter

LY, LX = 12, 10


def _image(seed: int, dtype: str = "<i2") -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, (LY, LX)).astype(dtype)


def _read_until(source: FrameSource, n: int, timeout_s: float = 10.0) -> list[tuple[int, int, np.ndarray, int]]:
    """(number, plane, pixels, flags) of the next ``n`` frames, waiting at most ``timeout_s`` in all."""
    out: list[tuple[int, int, np.ndarray, int]] = []
    deadline = now_ns() + int(timeout_s * 1e9)
    while len(out) < n and now_ns() < deadline:
        frame = source.read(0.05)
        if frame is not None:
            out.append((frame.number, frame.plane, frame.data.copy(), frame.flags))
    assert len(out) == n, f"only {len(out)} of {n} frames arrived"
    return out


def _codes(source: FrameSource) -> dict[str, str]:
    return {code: message for code, message in source.pop_warnings()}


# ---------------------------------------------------------------------------- framed TCP (ScanImage)
def _matlab_frame(image: np.ndarray, number: int, plane: int, planes: int, channel: int = 0) -> bytes:
    """The bytes bciRigStream.m writes, laid out from docs/FRAME_STREAM.md's table (version 2, 36 bytes)."""
    h, w = image.shape
    header = (b"BCIF" + struct.pack("<HHQdHHBBH", 2, 36, number, 0.5 * number, h, w, 1, channel, 0)
              + struct.pack("<HH", plane, planes))
    return header + image.astype("<i2").tobytes()  # row-major, as MATLAB sends img.'


def test_framed_tcp_delivers_every_plane_numbered_by_volume_and_flags_what_is_wrong() -> None:
    images = {(v, p): _image(10 * v + p) for v in range(3) for p in range(2)}
    stream = b"".join(_matlab_frame(images[v, p], v, p, 2) for v in (0, 1) for p in (0, 1))
    stream += _matlab_frame(images[2, 1], 2, 1, 2)  # volume 2 lost its plane 0 (not sent)
    stream += _matlab_frame(_image(99), 4, 0, 2)  # volume 3 lost entirely: a gap
    stream += _matlab_frame(_image(98), 4, 2, 2)  # plane 2 of a 2-plane rig: delivered, counted, warned
    stream += _matlab_frame(_image(97), 5, 0, 0)  # a planes count of 0
    stream += encode_frame(_image(96), 6, 0.0)  # a version-1 sender (no plane fields): plane 0
    source = ScanImageTcpSource("127.0.0.1", 0, n_planes=2)
    source.open()
    try:
        with socket.create_connection(("127.0.0.1", source.port)) as scope:
            scope.sendall(stream)
            got = _read_until(source, 9)
    finally:
        source.close()
    assert source.n_planes == 2
    assert [(n, p) for n, p, _, _ in got] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (4, 0), (4, 2), (5, 0),
                                              (6, 0)]
    for (n, p, data, _) in got[:5]:
        np.testing.assert_array_equal(data, images[n, p])
    flags = [f & FrameFlag.AFTER_GAP for _, _, _, f in got]
    assert flags == [0, 0, 0, 0, 0, FrameFlag.AFTER_GAP, 0, 0, 0]  # the gap: volume 3 missing
    stats = source.stats()
    assert stats["frames_missed"] == 1 and stats["plane_out_of_range"] == 1 and stats["bad_planes_count"] == 1
    warnings = _codes(source)
    assert "plane_out_of_range" not in warnings  # the acquisition warns about it, once
    assert "count is 0" in warnings["bad_planes_count"]


def test_framed_tcp_parser_waits_for_the_whole_version_2_header() -> None:
    data = encode_frame(_image(1), 7, 3.5, plane=1, planes=3)
    assert data == _matlab_frame(_image(1), 7, 1, 3)  # our reference writer and the documented layout agree
    parser = FrameParser()
    for i in range(len(data) - 1):  # byte by byte: no frame until the last byte, whatever the split
        parser.feed(data[i:i + 1])
        assert parser.next_frame() is None
    parser.feed(data[-1:])
    header, pixels = parser.next_frame()  # type: ignore[misc]
    assert (header.number, header.plane, header.planes, header.header_bytes) == (7, 1, 3, 36)
    np.testing.assert_array_equal(np.frombuffer(pixels, "<i2").reshape(LY, LX), _image(1))


# ---------------------------------------------------------------------------- ZeroMQ stream
def _zmq_parts(header: dict, image: np.ndarray) -> list[zmq.Frame]:
    return [zmq.Frame(b"frame"), zmq.Frame(json.dumps(header).encode()), zmq.Frame(image.tobytes())]


def _zmq_header(image: np.ndarray, **keys: object) -> dict:
    return {"v": 1, "shape": list(image.shape), "dtype": "uint16", **keys}


def test_zmq_stream_delivers_planes_by_volume_and_keeps_the_single_plane_filter() -> None:
    image = _image(3, "<u2")
    sent = [dict(frame=v, plane=p, planes=3) for v in range(2) for p in range(3)]
    sent += [dict(frame=99, volume=2, plane=0, planes=3), dict(frame=100, volume=2, plane=1, planes=3)]
    sent += [dict(frame=3, plane=5, planes=3), dict(frame=4, plane=0, planes=40)]
    every = ZmqStreamSource("tcp://127.0.0.1:1", plane=-1, n_planes=3)
    got = [every._parse(_zmq_parts(_zmq_header(image, **h), image)) for h in sent]
    assert every.n_planes == 3
    assert [(f.number, f.plane) for f in got if f is not None] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (3, 5), (4, 0)]
    assert all(not f.flags & FrameFlag.AFTER_GAP for f in got if f is not None)
    warnings = _codes(every)
    assert every.stats()["plane_out_of_range"] == 1 and "40" in warnings["bad_planes_count"]
    assert "planes_differ_in_size" not in warnings and "frames_not_volumes" not in warnings
    bigger = np.zeros((LY + 4, LX), "<u2")  # plane 1 of another size: delivered as it is, with a warning
    frame = every._parse(_zmq_parts(_zmq_header(bigger, frame=5, plane=1, planes=3), bigger))
    assert frame is not None and frame.plane == 1 and frame.data.shape == (LY + 4, LX)
    assert f"plane 1's frames are {LY + 4}x{LX}" in _codes(every)["planes_differ_in_size"]
    counter = ZmqStreamSource("tcp://127.0.0.1:1", plane=-1, n_planes=2)  # a publisher numbering frames
    for n in range(4):
        counter._parse(_zmq_parts(_zmq_header(image, frame=n, plane=n % 2, planes=2), image))
    assert "numbers frames, not volumes" in _codes(counter)["frames_not_volumes"]
    one = ZmqStreamSource("tcp://127.0.0.1:1", plane=1, n_planes=3)  # the filter: plane 1 alone, as plane 0
    kept = [one._parse(_zmq_parts(_zmq_header(image, **h), image)) for h in sent[:6]]
    assert one.n_planes == 1
    assert [(f.number, f.plane) for f in kept if f is not None] == [(0, 0), (1, 0)]
    assert one.stats()["skipped_other_plane_or_channel"] == 4 and "planes_mismatch" not in _codes(one)


# ---------------------------------------------------------------------------- Scanbox
def test_scanbox_volscan_gives_plane_frame_mod_planes_and_volume_frame_div_planes(tmp_path: Path) -> None:
    writer = ScanboxMmapWriter(tmp_path / "scanbox.mmap")
    writer.set_word(4, 1)  # volscan on
    writer.set_word(5, 3)  # 3 planes per volume (the period of the optotune wave)
    source = ScanboxMmapSource(writer.path, LY, LX, n_planes=3, poll_s=0.0)
    source.open()
    try:
        got = []
        for number in (4, 5, 6, 7, 9):  # the reader joins mid-volume (frame 4 = plane 1 of volume 1); 8 is lost
            assert writer.write_frame(number, _image(number, "<u2"))
            got += _read_until(source, 1)
        writer.set_word(5, 0)  # a broken planes word: warned, the configured count is used
        assert writer.write_frame(10, _image(10, "<u2"))
        got += _read_until(source, 1)
        writer.stop()
        assert source.read(0.01) is None
        writer.set_word(5, 3)
        writer.set_word(0, -1)  # Scanbox starting again: "not started" before its first frame
        assert writer.write_frame(0, _image(0, "<u2"))  # Scanbox imaging again from its frame 0
        got += _read_until(source, 1)
    finally:
        source.close()
        writer.close()
    assert [(n, p) for n, p, _, _ in got] == [(1, 1), (1, 2), (2, 0), (2, 1), (3, 0), (3, 1), (4, 0)]
    np.testing.assert_array_equal(got[0][2], _image(4, "<u2"))
    assert got[4][3] & FrameFlag.AFTER_GAP and got[6][3] & FrameFlag.AFTER_GAP
    assert source.stats()["frames_missed"] == 1
    assert "count is 0" in _codes(source)["bad_planes_count"]


# ---------------------------------------------------------------------------- ScanImage fast-z TIFF
def _fastz_tiff(path: Path, volumes: int) -> np.ndarray:
    """A ScanImage fast-z TIFF: 2 saved channels, 3 slices, 1 flyback frame; pages channel-fastest."""
    pages = np.random.default_rng(5).integers(0, 30000, (volumes * 4 * 2, LY, LX)).astype(np.int16)
    text = ("SI.VERSION_MAJOR = 2021\nSI.hChannels.channelSave = [1;2]\nSI.hRoiManager.scanFrameRate = 60\n"
            "SI.hRoiManager.scanVolumeRate = 15\nSI.hStackManager.numSlices = 3\nSI.hFastZ.enable = true\n"
            "SI.hFastZ.numDiscardFlybackFrames = 1\n")
    write_scanimage_bigtiff(path, pages, text)
    return pages


def _all(source: ReplaySource) -> list[Frame]:
    source.open()
    out = []
    try:
        while True:
            frame = source.read(1.0)
            assert frame is not None
            out.append(Frame(frame.data.copy(), frame.number, frame.t_ready_ns, frame.scope_time_s, frame.flags,
                             frame.plane))
    except EndOfStream:
        return out
    finally:
        source.close()


def test_replay_of_a_scanimage_fastz_tiff_reads_its_layout_and_skips_flyback(tmp_path: Path) -> None:
    path = tmp_path / "fastz.tif"
    pages = _fastz_tiff(path, volumes=3)
    every = ReplaySource(path, speed="fast", channel=1, plane=-1)
    assert every.n_planes == 3 and every.frame_rate_hz == 15.0
    frames = _all(every)
    assert [(f.number, f.plane) for f in frames] == [(v, p) for v in range(3) for p in range(3)]
    for f in frames:  # page of (volume v, slice p, channel 1): v * (3 + 1) * 2 + p * 2 + 1; flyback never
        np.testing.assert_array_equal(f.data, pages[f.number * 8 + f.plane * 2 + 1])
    looped = ReplaySource(path, speed="fast", plane=-1, loop=True)  # a loop goes on numbering volumes
    looped.open()
    assert [(f.number, f.plane) for f in (looped.read(1.0) for _ in range(12)) if f is not None][8:] == [
        (2, 2), (3, 0), (3, 1), (3, 2)]
    looped.close()
    none = ReplaySource(path, speed="fast", channel=1, plane=-1, flyback_frames=0)  # the config overrides
    assert [(f.number, f.plane) for f in _all(none)][:5] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    np.testing.assert_array_equal(_all(none)[3].data, pages[6 + 1])  # page 6: what the file calls flyback
    one = ReplaySource(path, speed="fast", plane=2)  # one plane (channel 0): delivered as plane 0
    assert one.n_planes == 1
    frames = _all(one)
    assert [(f.number, f.plane) for f in frames] == [(0, 0), (1, 0), (2, 0)]
    np.testing.assert_array_equal(frames[1].data, pages[8 + 4])
    cfg = msgspec.convert({"source": "replay", "n_planes": 2, "replay": {"path": str(path), "plane": -1}},
                          AcquisitionConfig)
    with pytest.raises(ValueError, match=r"replays 3 plane\(s\).*n_planes = 2"):
        ReplaySource.from_config(cfg, None)  # type: ignore[arg-type]


def test_replay_config_asks_for_every_plane_with_minus_one() -> None:
    with pytest.raises(msgspec.ValidationError, match="replay.plane.*n_planes = 2"):
        msgspec.convert({"source": "replay", "n_planes": 2, "replay": {"path": "m.tif", "n_planes": 2, "plane": 0}},
                        AcquisitionConfig)
    with pytest.raises(msgspec.ValidationError, match="zmq_stream.plane"):
        msgspec.convert({"source": "zmq_stream", "n_planes": 2, "zmq_stream": {"plane": 1}}, AcquisitionConfig)
    cfg = msgspec.convert({"source": "replay", "n_planes": 2, "replay": {"path": "m.tif", "n_planes": 2,
                                                                          "plane": -1}}, AcquisitionConfig)
    assert cfg.replay.plane == -1


# ---------------------------------------------------------------------------- a multi-plane session folder
def _write_plane(folder: Path, numbers: list[int], seed: int) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    movie = np.random.default_rng(seed).integers(0, 4000, (len(numbers), LY, LX)).astype(np.uint16)
    (folder / "movie.json").write_text(json.dumps({"dtype": "<u2", "shape": [-1, LY, LX], "order": "C",
                                                   "frame_rate_hz": 7.5, "codec": "raw", "file": "movie.raw"}))
    (folder / "movie.raw").write_bytes(movie.tobytes())
    rows = RecordWriter(folder / "frames.rec", frame_record_dtype(2))
    for n in numbers:
        row = rows.next_row()
        row["frame"] = n
        rows.commit()
    rows.close()
    return movie


def test_a_session_folder_replays_its_planes_interleaved_as_recorded(tmp_path: Path) -> None:
    session = tmp_path / "session"
    (session / "acquisition").mkdir(parents=True)
    (session / "config.resolved.json").write_text(json.dumps({"acquisition": {"n_planes": 2, "bci_plane": 0}}))
    bci = _write_plane(session / "acquisition", [3, 4, 5, 7], seed=1)  # volume 6 lost on the BCI plane
    other = _write_plane(session / "acquisition" / "planes" / "plane1", [3, 4, 6, 7], seed=2)  # 5 lost here
    source = ReplaySource(session, speed="fast", plane=-1)
    assert source.n_planes == 2 and source.frame_rate_hz == 7.5
    frames = _all(source)
    assert [(f.number, f.plane) for f in frames] == [(3, 0), (3, 1), (4, 0), (4, 1), (5, 0), (6, 1), (7, 0), (7, 1)]
    np.testing.assert_array_equal(frames[5].data, other[2])
    np.testing.assert_array_equal(frames[6].data, bci[3])
    only = _all(ReplaySource(session, speed="fast", plane=1))
    assert [(f.number, f.plane) for f in only] == [(3, 0), (4, 0), (6, 0), (7, 0)]
    np.testing.assert_array_equal(only[0].data, other[0])


# ---------------------------------------------------------------------------- rig replay and what-if
def test_decoder_replay_and_what_if_work_on_a_multi_plane_session(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_session_offline import build_session, last_json, run_cli

    session = build_session(tmp_path / "s")
    resolved = json.loads((session / "config.resolved.json").read_text())
    resolved["acquisition"]["n_planes"] = 2
    resolved["acquisition"].setdefault("sim", {})["n_planes"] = 2
    (session / "config.resolved.json").write_text(json.dumps(resolved))
    plane1 = session / "acquisition" / "planes" / "plane1"
    plane1.mkdir(parents=True)
    shutil.copytree(session / "acquisition" / "rois", plane1 / "rois")
    bci_rows = read_records(session / "acquisition" / "frames.rec")
    shutil.copyfile(session / "acquisition" / "frames.rec", plane1 / "frames.rec")
    shutil.copyfile(session / "acquisition" / "frames.rec.json", plane1 / "frames.rec.json")
    (plane1 / "movie.json").write_text("{}")  # its movie stays behind in a what-if
    code, out, err = run_cli(["replay", str(session), "--no-progress", "--from-traces"], capsys)
    assert code == 0 and last_json(out)["mismatches"] == 0, err
    out_dir = tmp_path / "whatif"
    code, out, err = run_cli(["replay", str(session), "--no-progress", "--from-traces", "--set",
                              "decoder.calibration.target_hit_rate=0.15", "--out", str(out_dir)], capsys)
    assert code == 0, err
    copied = out_dir / "acquisition" / "planes" / "plane1"
    assert np.array_equal(read_records(copied / "frames.rec")["frame"], bci_rows["frame"])
    assert (copied / "rois" / "stat.npy").is_file() and not (copied / "movie.json").exists()
    assert "planes" in json.loads((out_dir / "session.json").read_text())["replay"]
