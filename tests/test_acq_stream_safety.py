"""A ZeroMQ frame stream cannot crash the rig: wrong-sized first frames, big-endian pixels and broken frame
numbers (negative, 2**64-1, wild jumps) are counted and warned; the movie keeps the ROI set's shape, and the
numbers the acquisition publishes are ones the decoder accepts. Real publishers on real sockets.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from acquisition.process import AcquisitionProcess
from acquisition.rois import RoiSet
from acquisition.sources.base import Frame
from acquisition.sources.zmq_stream import MAX_FRAME_NUMBER, ZmqStreamSource
from acquisition.validate import FrameFlag
from rig.app.config import CONFIG_LOADER, config_from_dict
from rig.core.bus import free_tcp_port
from rig.core.movie_file import ChunkedMovie
from rig.core.process import ProcessSpec
from rig.core.store import read_events, read_records
from tests.conftest import wait_for

LY, LX = 12, 10
RATE = 30.0


def _header(number: int, shape: tuple[int, int] = (LY, LX), dtype: str = "uint16", order: str = "C",
            byteorder: str = "little") -> bytes:
    return json.dumps({"v": 1, "frame": number, "t": 0.0, "shape": list(shape), "dtype": dtype, "order": order,
                       "byteorder": byteorder}).encode()


def _image(seed: int, shape: tuple[int, int] = (LY, LX)) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 60000, shape).astype(np.uint16)


@pytest.fixture
def publisher():
    """An XPUB bound on a free port (it sees the subscription arrive, so no frame goes into the void)."""
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    yield pub, f"tcp://127.0.0.1:{port}"
    pub.close(0)


def _subscribed(pub: zmq.Socket) -> None:
    assert pub.poll(5000), "the subscriber never joined"
    pub.recv()


def _read(src: ZmqStreamSource, n: int) -> list[Frame]:
    out = []
    for _ in range(n):
        f = wait_for(lambda: src.read(0.05), what="a frame")
        out.append(Frame(f.data.copy(), f.number, f.t_ready_ns, f.scope_time_s, f.flags))
    return out


# ---------------------------------------------------------------------------- the source


def test_big_endian_frames_arrive_in_native_byte_order(publisher):
    pub, endpoint = publisher
    src = ZmqStreamSource(endpoint, expected_shape=(LY, LX))
    src.open()
    try:
        _subscribed(pub)
        images = [_image(i) for i in range(4)]
        pub.send_multipart([b"frame", _header(0, byteorder="big"), images[0].astype(">u2").tobytes()])
        pub.send_multipart([b"frame", _header(1, byteorder="big", order="F"),
                            images[1].astype(">u2").tobytes(order="F")])
        pub.send_multipart([b"frame", _header(2, dtype="float32", byteorder="big"),
                            images[2].astype(">f4").tobytes()])
        pub.send_multipart([b"frame", _header(3), images[3].tobytes()])  # little-endian still as it was
        got = _read(src, 4)
        for frame, image in zip(got, images, strict=True):
            assert frame.data.dtype.isnative
            np.testing.assert_array_equal(frame.data, image)
        assert got[2].data.dtype == np.float32
        assert [f.number for f in got] == [0, 1, 2, 3] and src.stats()["bad_frames"] == 0
    finally:
        src.close()


def test_broken_frame_numbers_are_counted_warned_and_renumbered(publisher):
    """Every delivered number is an int64 the decoder takes: >= 0, increasing, no jump of more than an hour."""
    pub, endpoint = publisher
    src = ZmqStreamSource(endpoint, expected_shape=(LY, LX), frame_rate_hz=RATE, max_jump_s=60.0)
    src.open()
    try:
        _subscribed(pub)
        sent = [-3, 0, 1, -5, 2**64 - 1, 4, 10**15, 6, 7, 2**63, 9, 10**12, 10**12 + 1, 10**12 + 2]
        for i, number in enumerate(sent):
            pub.send_multipart([b"frame", _header(number), _image(i).tobytes()])
        got = _read(src, len(sent))
        numbers = [f.number for f in got]
        # a bad number takes the next one; a wild jump too, until the next frame confirms the new numbering
        assert numbers == list(range(len(sent))), numbers
        assert all(0 <= n <= MAX_FRAME_NUMBER for n in numbers)
        stats = src.stats()
        assert stats["bad_frame_numbers"] == 4  # -3, -5, 2**64-1, 2**63
        assert stats["frame_number_jumps"] == 2  # 10**15 (a one-off: 6 follows 4), 10**12 (then confirmed)
        assert stats["frames_missed"] == 0 and stats["frames"] == len(sent)
        codes = [c for c, _ in src.pop_warnings()]
        assert codes.count("bad_frame_number") == 1  # the first, then every 100th: no flood
        assert codes.count("frame_number_jump") == 2  # the first jump, and the confirmed renumbering
    finally:
        src.close()


def test_restarts_and_gaps_stay_within_what_the_decoder_accepts(publisher):
    pub, endpoint = publisher
    src = ZmqStreamSource(endpoint, expected_shape=(LY, LX), frame_rate_hz=RATE, max_jump_s=1.0)  # 30 frames
    src.open()
    try:
        _subscribed(pub)
        sent = [100, 101, 120, 2, 3, 5000, 5001]  # a gap of 18, a restart at 2, then a jump of ~5000
        for i, number in enumerate(sent):
            pub.send_multipart([b"frame", _header(number), _image(i).tobytes()])
        numbers = [f.number for f in _read(src, len(sent))]
        assert numbers[:3] == [100, 101, 120]
        assert numbers[3] == 123  # restarted at 2: frames 0 and 1 of the new run counted as missed
        assert numbers[4] == 124 and numbers[5:] == [125, 126]  # 5000: a jump > 30 frames, then confirmed
        assert all(b - a - 1 <= 30 for a, b in zip(numbers, numbers[1:], strict=False))
        assert src.stats()["frames_missed"] == 18 + 2
    finally:
        src.close()


def test_a_wrong_sized_frame_is_counted_flagged_and_warned(publisher):
    pub, endpoint = publisher
    src = ZmqStreamSource(endpoint, expected_shape=(LY, LX))
    src.open()
    try:
        _subscribed(pub)
        pub.send_multipart([b"frame", _header(0, shape=(LX, LY)), _image(0, (LX, LY)).tobytes()])
        pub.send_multipart([b"frame", _header(1), _image(1).tobytes()])
        first, second = _read(src, 2)
        assert first.flags & FrameFlag.WRONG_SHAPE and not second.flags & FrameFlag.WRONG_SHAPE
        assert src.shape == (LY, LX)  # the configured size, never the first frame's
        assert src.stats()["wrong_shape_frames"] == 1
        assert [c for c, _ in src.pop_warnings()] == ["wrong_shape"]
    finally:
        src.close()


# ---------------------------------------------------------------------------- the acquisition process


def _acquisition(tmp_path: Path, endpoint: str) -> AcquisitionProcess:
    """The real acquisition process class, configured in this process (no bus loop), on a zmq_stream source
    with no configured frame size: the ROI set's (LY x LX) is the only size it knows."""
    rng = np.random.default_rng(3)
    stat = []
    for cy, cx in ((3, 3), (8, 6)):
        yy, xx = np.mgrid[cy - 1:cy + 2, cx - 1:cx + 2]
        stat.append({"ypix": yy.ravel(), "xpix": xx.ravel(), "lam": rng.random(9) + 0.1})
    RoiSet(stat=stat, iscell=np.ones((2, 2)), Ly=LY, Lx=LX).save_suite2p(tmp_path / "rois_in")
    cfg = {"rig": {"name": "streamtest"}, "decoder": {"up": [0], "down": [1]},
           "acquisition": {"source": "zmq_stream", "frame_rate_hz": RATE,
                           "zmq_stream": {"endpoint": endpoint},
                           "rois": {"suite2p_dir": str(tmp_path / "rois_in"), "only_cells": False},
                           "registration": {"enabled": False}}}
    config = config_from_dict(cfg, "test-config")
    endpoints = {name: f"tcp://127.0.0.1:{free_tcp_port()}" for name in ("acquisition", "supervisor")}
    spec = ProcessSpec(name="acquisition", target="acquisition.process:AcquisitionProcess",
                       config=msgspec.to_builtins(config), config_file="test-config", config_loader=CONFIG_LOADER,
                       endpoints=endpoints, session_dir=str(tmp_path / "session"), critical=True,
                       watch_parent=False)
    return AcquisitionProcess(spec)


def test_the_movie_keeps_the_roi_sets_shape_and_the_decoder_takes_every_number(tmp_path, publisher):
    from decoder.engine import DecoderEngine

    pub, endpoint = publisher
    proc = _acquisition(tmp_path, endpoint)
    proc.configure()
    try:
        _subscribed(pub)
        images = {i: _image(i) for i in range(8)}
        sends = [  # (number, shape, byteorder): the first frame is of another size
            (0, (LX + 3, LY), "little"), (1, (LY, LX), "big"), (2, (LY, LX), "little"), (-1, (LY, LX), "little"),
            (2**64 - 1, (LY, LX), "big"), (5, (LY, LX), "little"), (6, (2, 2), "little"), (7, (LY, LX), "big"),
        ]
        for i, (number, shape, order) in enumerate(sends):
            image = images[i] if shape == (LY, LX) else _image(99, shape)
            pub.send_multipart([b"frame", _header(number, shape=shape, byteorder=order),
                                image.astype(">u2" if order == "big" else "<u2").tobytes()])
        wait_for(lambda: (proc.step(), proc.frames)[1] >= len(sends), what="the acquisition to take every frame")
    finally:
        proc.on_stop()
        proc._close()
    folder = tmp_path / "session" / "acquisition"
    meta = json.loads((folder / "movie.json").read_text())
    assert meta["shape"] == [-1, LY, LX] and np.dtype(meta["dtype"]) == np.dtype("<u2")
    movie = ChunkedMovie(folder / meta["file"], np.dtype(meta["dtype"]), LY, LX)  # compressed by default
    rows = read_records(folder / "frames.rec")
    assert len(movie) == len(rows) == len(sends)  # movie frame i is frames.rec row i
    for i, (_, shape, _) in enumerate(sends):
        if shape == (LY, LX):
            np.testing.assert_array_equal(movie[i], images[i])  # big-endian frames saved as the numbers sent
        else:
            assert not movie[i].any() and rows["flags"][i] & FrameFlag.WRONG_SHAPE
    assert list(rows["frame"]) == list(range(len(sends)))
    assert np.isfinite(rows["F"][1]).all() and rows["F"][1, 0] > 0  # a big-endian frame extracted like any other
    warnings = [e["code"] for e in read_events(folder / "events.jsonl", {"warning"})]
    assert {"wrong_shape", "bad_frame_number"} <= set(warnings)
    # the decoder takes the published numbers in order: no FrameOrderError, no overflow of its int64 records
    engine = DecoderEngine(proc.config.decoder, proc.config.task, 2, RATE)
    for row in rows:
        engine.step(int(row["frame"]), row["F"], row["Fneu"])
