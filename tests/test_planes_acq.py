"""Multi-plane acquisition (issue 23, docs/PLANES.md): every plane registered against its own reference,
extracted with its own ROIs and recorded in its own folder; the BCI plane's path unchanged; bad input (planes
of another size, a dendrite linked to a missing soma, a plane index out of range, a source with another
number of planes) a clear message with nothing lost.

The real ``AcquisitionProcess`` is configured and stepped in this process on a small fake source that yields
interleaved planes (frames: each plane's own reference image, shifted by a known amount per plane).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

import msgspec
import numpy as np
import pytest

from acquisition.process import AcquisitionProcess
from acquisition.rois import RoiFileError, RoiSet, load_suite2p
from acquisition.sources.base import EndOfStream, Frame, FrameSource
from acquisition.validate import FrameFlag
from rig.app.checks import plane_findings
from rig.app.config import CONFIG_LOADER, config_from_dict
from rig.core.bus import free_tcp_port
from rig.core.movie_file import ChunkedMovie
from rig.core.process import ProcessSpec
from rig.core.schema import FluorFrame, Message, PlaneFluor, Preview
from rig.core.store import read_events, read_records
from rig.offline.problems import session_problems
from rig.offline.summary import summarize_session
from tests.conftest import REPO

SIZE = 48
#: each plane's frames are its reference rolled by this (dy, dx): plane 0 still, plane 1 moved
SHIFTS = {0: (0, 0), 1: (3, -2)}
N_ROIS = {0: 4, 1: 3}


def _reference(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.gamma(2.0, 40.0, (SIZE, SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for _ in range(12):  # blobs: something registration can lock onto
        cy, cx = rng.uniform(6, SIZE - 6, 2)
        img += 400 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
    return img.astype(np.float32)


def _write_plane(folder: Path, n_rois: int, reference: np.ndarray, size: int = SIZE, iscell: np.ndarray | None = None,
                 offset: int = 0) -> None:
    stat = []
    for i in range(n_rois):
        cy, cx = 8 + 10 * i % (size - 12), 10 + offset + 7 * i % (size - 16)
        yy, xx = np.mgrid[cy - 2:cy + 3, cx - 2:cx + 3]
        stat.append({"ypix": yy.ravel(), "xpix": xx.ravel(), "lam": np.ones(25, np.float32)})
    cells = np.ones((n_rois, 2)) if iscell is None else iscell
    ref = reference if reference.shape == (size, size) else np.ones((size, size), np.float32)
    RoiSet(stat=stat, iscell=cells, Ly=size, Lx=size, ref_img=ref).save_suite2p(folder)


@pytest.fixture
def suite2p(tmp_path: Path) -> dict[int, np.ndarray]:
    """suite2p/plane0 (the BCI plane, 4 somata) and suite2p/plane1 (3 dendrites), each with its refImg."""
    refs = {0: _reference(0), 1: _reference(1)}
    for plane, ref in refs.items():
        _write_plane(tmp_path / "suite2p" / f"plane{plane}", N_ROIS[plane], ref)
    return refs


class InterleavedSource(FrameSource):
    """Frames given in advance (plane 0, plane 1, plane 0, ...), then the end of the stream."""

    def __init__(self, frames: list[Frame], n_planes: int = 2) -> None:
        super().__init__()
        self._shape, self._rate, self._n_planes = (SIZE, SIZE), 30.0, n_planes
        self._frames = deque(frames)

    def open(self) -> None: ...

    def close(self) -> None: ...

    def link_state(self) -> str:
        return "ok"

    def stats(self) -> dict[str, float]:
        return {}

    def read(self, timeout_s: float) -> Frame | None:
        if not self._frames:
            raise EndOfStream
        return self._frames.popleft()


def _frames(refs: dict[int, np.ndarray], volumes: int, skip: set[tuple[int, int]] = frozenset()) -> list[Frame]:
    """``volumes`` volumes of both planes (minus the (volume, plane) in ``skip``), uint16 like a scope's."""
    out = []
    for v in range(volumes):
        for plane, ref in refs.items():
            if (v, plane) not in skip:
                data = np.roll(ref, SHIFTS[plane], axis=(0, 1)).astype(np.uint16)
                out.append(Frame(data, v, 1_000 + v, plane=plane))
    return out


def _process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: FrameSource, session: dict | None = None,
             **acq: object) -> AcquisitionProcess:
    rois = {"suite2p_dir": str(tmp_path / "suite2p" / "plane0"), "only_cells": True, **acq.pop("rois", {})}
    cfg = config_from_dict({"rig": {"name": "planes"}, "decoder": {"up": [0], "down": [1]}, "session": session or {},
                            "acquisition": {"source": "zmq_stream", "frame_rate_hz": 30.0, "n_planes": 2,
                                            "zmq_stream": {"endpoint": "tcp://127.0.0.1:1"}, "rois": rois, **acq}},
                           "test-config")
    (tmp_path / "session").mkdir(exist_ok=True)
    (tmp_path / "session" / "config.resolved.json").write_text(json.dumps(msgspec.to_builtins(cfg)))
    endpoints = {name: f"tcp://127.0.0.1:{free_tcp_port()}" for name in ("acquisition", "supervisor")}
    spec = ProcessSpec(name="acquisition", target="acquisition.process:AcquisitionProcess",
                       config=msgspec.to_builtins(cfg), config_file="test-config", config_loader=CONFIG_LOADER,
                       endpoints=endpoints, session_dir=str(tmp_path / "session"), critical=True, watch_parent=False)
    monkeypatch.setattr("acquisition.process.make_source", lambda *a, **k: source)
    return AcquisitionProcess(spec)


def _configure_fails(proc: AcquisitionProcess, error: type[Exception]) -> str:
    """The message configure() fails with (the process's sockets closed after, as the real process does)."""
    try:
        with pytest.raises(error) as info:
            proc.configure()
    finally:
        proc._close()
    return str(info.value)


def _run(proc: AcquisitionProcess) -> list[Message]:
    """Configure, step to the end of the fake stream, stop; what the process published."""
    published: list[Message] = []
    proc.configure()
    proc.publish = published.append  # type: ignore[method-assign]
    try:
        proc.on_start()
        for _ in range(10_000):
            proc.step()
            if proc._ended:
                break
    finally:
        proc.on_stop()
        proc._close()
    return published


def test_each_plane_is_registered_extracted_and_recorded_on_its_own(tmp_path, monkeypatch, suite2p):
    volumes = 30
    frames = _frames(suite2p, volumes, skip={(10, 1), (11, 1)})  # plane 1 loses two frames
    frames.insert(7, Frame(frames[0].data, 3, 5, plane=2))  # a plane the rig was not configured for
    proc = _process(tmp_path, monkeypatch, InterleavedSource(frames),
                    rois={"links": [{"plane": 1, "roi": 2, "soma": 3}]})
    published = _run(proc)
    acq = tmp_path / "session" / "acquisition"
    bci, other = read_records(acq / "frames.rec"), read_records(acq / "planes" / "plane1" / "frames.rec")
    # the BCI plane as ever: every volume, its 4 somata, registered against its own reference (no shift)
    assert list(bci["frame"]) == list(range(volumes)) and bci["F"].shape == (volumes, N_ROIS[0])
    assert np.allclose(bci["dy"], 0, atol=0.3) and np.allclose(bci["dx"], 0, atol=0.3)
    # plane 1 against ITS reference: its shift found, its 3 ROIs extracted, its missing volumes are holes
    assert list(other["frame"]) == [v for v in range(volumes) if v not in (10, 11)]
    assert other["F"].shape == (volumes - 2, N_ROIS[1]) and np.isfinite(other["F"]).all()
    assert np.allclose(np.abs(other["dy"]), 3, atol=0.3) and np.allclose(np.abs(other["dx"]), 2, atol=0.3)
    assert (other["corr"] > 0.5).all() and (other["flags"][1:] & int(FrameFlag.NOT_REGISTERED) == 0).all()
    # the bus: the decoder's FluorFrames are the BCI plane's only; plane 1 on acq.plane; previews of both planes
    fluor = [m for m in published if isinstance(m, FluorFrame)]
    plane_fluor = [m for m in published if isinstance(m, PlaneFluor)]
    assert [m.frame for m in fluor] == list(range(volumes)) and all(m.F.shape == (4,) for m in fluor)
    assert [m.frame for m in plane_fluor] == list(other["frame"]) and {m.plane for m in plane_fluor} == {1}
    assert {m.plane for m in published if isinstance(m, Preview)} == {0, 1}
    # each plane's ROIs, kinds and parents in the session: the link makes plane 1's ROI 2 a dendrite of soma 3
    for folder, n in ((acq / "rois", 4), (acq / "planes" / "plane1" / "rois", 3)):
        assert load_suite2p(folder).n_rois == n and (folder / "reference.npy").is_file()
    assert np.load(acq / "rois" / "roi_kind.npy").tolist() == [0, 0, 0, 0]
    assert np.load(acq / "rois" / "roi_parent.npy").tolist() == [-1, -1, -1, -1]
    assert np.load(acq / "planes" / "plane1" / "rois" / "roi_kind.npy").tolist() == [0, 0, 1]
    assert np.load(acq / "planes" / "plane1" / "rois" / "roi_parent.npy").tolist() == [-1, -1, 3]
    # each plane's movie: movie frame i is that plane's frames.rec row i
    meta = json.loads((acq / "planes" / "plane1" / "movie.json").read_text())
    movie = ChunkedMovie(acq / "planes" / "plane1" / meta["file"], np.dtype(meta["dtype"]), SIZE, SIZE)
    assert len(movie) == len(other)
    np.testing.assert_array_equal(movie[5], np.roll(suite2p[1], SHIFTS[1], axis=(0, 1)).astype(np.uint16))
    # the stray plane: counted, warned, an event, in final_stats; nothing else lost
    events = read_events(acq / "events.jsonl")
    final = [e for e in events if e["kind"] == "final_stats"][-1]
    assert final["plane_out_of_range"] == 1 and final["planes"]["1"]["frames"] == volumes - 2
    assert final["planes"]["1"]["frames_dropped"] == 2
    assert any(e["kind"] == "plane_out_of_range" and e["plane"] == 2 for e in events)
    warning = next(e for e in events if e.get("code") == "plane_out_of_range")
    assert "plane 2" in warning["message"] and "n_planes = 2" in warning["message"]
    # the summary lists each plane
    summary = summarize_session(tmp_path / "session")
    assert summary["planes"]["0"] == {"bci": True, "frames": volumes, "bad_frames": 0, "frames_dropped": 0}
    assert summary["planes"]["1"]["frames"] == volumes - 2 and summary["planes"]["1"]["frames_dropped"] == 2
    assert summary["plane_out_of_range"] == 1


def test_one_plane_session_counts_a_stray_plane_and_is_otherwise_as_before(tmp_path, monkeypatch, suite2p):
    frames = [f for f in _frames(suite2p, 6) if f.plane == 0]
    frames.insert(2, Frame(frames[0].data, 1, 5, plane=1))  # a scope imaging a plane the rig was not told of
    _run(_process(tmp_path, monkeypatch, InterleavedSource(frames, n_planes=1), n_planes=1))
    acq = tmp_path / "session" / "acquisition"
    assert list(read_records(acq / "frames.rec")["frame"]) == list(range(6))  # the stray frame is not a row
    assert not (acq / "planes").exists() and not (acq / "rois" / "roi_kind.npy").exists()
    final = [e for e in read_events(acq / "events.jsonl") if e["kind"] == "final_stats"][-1]
    assert final["plane_out_of_range"] == 1 and "planes" not in final
    summary = summarize_session(tmp_path / "session")
    assert summary["plane_out_of_range"] == 1 and "planes" not in summary


def test_a_recording_keeps_every_planes_frames(tmp_path, monkeypatch, suite2p):
    """rig run --record-only with two planes: no ROIs, but each plane's rows and movie in its own folder."""
    proc = _process(tmp_path, monkeypatch, InterleavedSource(_frames(suite2p, 12)), session={"record_only": True})
    published = _run(proc)
    acq = tmp_path / "session" / "acquisition"
    for folder, plane in ((acq, 0), (acq / "planes" / "plane1", 1)):
        rows = read_records(folder / "frames.rec")
        assert list(rows["frame"]) == list(range(12)) and rows["F"].shape == (12, 0)
        meta = json.loads((folder / "movie.json").read_text())
        movie = ChunkedMovie(folder / meta["file"], np.dtype(meta["dtype"]), SIZE, SIZE)
        np.testing.assert_array_equal(movie[3], np.roll(suite2p[plane], SHIFTS[plane], axis=(0, 1)).astype(np.uint16))
    assert not (acq / "rois").exists() and not (acq / "planes" / "plane1" / "rois").exists()
    assert {m.plane for m in published if isinstance(m, Preview)} == {0, 1}
    assert not [m for m in published if isinstance(m, PlaneFluor)]  # nothing extracted in a recording


def test_a_plane_without_frames_is_said_at_once_and_is_a_problem(tmp_path, monkeypatch, suite2p):
    frames = [f for f in _frames(suite2p, 120) if f.plane == 0]
    proc = _process(tmp_path, monkeypatch, InterleavedSource(frames))
    proc.configure()
    said: list[tuple[str, int]] = []  # (warning code, BCI frames when it was said)
    warn = proc.warn
    proc.warn = lambda code, message: (said.append((code, proc.frames)), warn(code, message))  # type: ignore
    proc.on_start()
    try:
        for _ in range(1000):
            proc._next_status = 0  # a status (and the silent-plane check) at every step, not once a second
            proc.step()
            if proc._ended:
                break
    finally:
        proc.on_stop()
        proc._close()
    assert [n for code, n in said if code == "plane_no_frames"] == [100]  # said once, as soon as it was plain
    events = read_events(tmp_path / "session" / "acquisition" / "events.jsonl")
    silent = [e for e in events if e.get("code") == "plane_no_frames"]
    assert len(silent) == 1 and "plane 1 has delivered no frame" in silent[0]["message"]
    summary = summarize_session(tmp_path / "session")
    problems = session_problems(tmp_path / "session", summary, "Ctrl-C")
    assert any(p.startswith("plane 1 recorded no frame while the BCI plane recorded 120") for p in problems)


def test_planes_of_another_frame_size_fail_at_configure_naming_both(tmp_path, monkeypatch, suite2p):
    _write_plane(tmp_path / "small", 3, np.ones((40, 40), np.float32), size=40)
    dirs = [str(tmp_path / "suite2p" / "plane0"), str(tmp_path / "small")]
    proc = _process(tmp_path, monkeypatch, InterleavedSource([]), rois={"plane_dirs": dirs})
    text = _configure_fails(proc, RoiFileError)
    assert "plane 1's are for 40x40" in text and "small" in text and f"{SIZE}x{SIZE}" in text and "plane0" in text
    assert not (tmp_path / "session" / "acquisition" / "planes").exists()  # failed before any plane was set up


def test_a_dendrite_linked_to_a_missing_soma_fails_at_configure(tmp_path, monkeypatch, suite2p):
    proc = _process(tmp_path, monkeypatch, InterleavedSource([]), rois={"links": [{"plane": 1, "roi": 0, "soma": 9}]})
    assert re.search(r"links\[0\] \(plane=1, roi=0, soma=9\): soma 9 does not exist: the BCI plane \(0\) has 4 "
                     r"ROIs", _configure_fails(proc, ValueError))


def test_a_source_with_another_number_of_planes_fails_at_start(tmp_path, monkeypatch, suite2p):
    proc = _process(tmp_path, monkeypatch, InterleavedSource([], n_planes=3))
    assert re.search(r"delivers 3 plane\(s\) per volume, but \[acquisition\] n_planes = 2",
                     _configure_fails(proc, ValueError))


def test_rig_check_finds_missing_and_mismatched_plane_folders(tmp_path, suite2p):
    def cfg(**rois: object):
        return config_from_dict({"acquisition": {"source": "zmq_stream", "n_planes": 2, "rois": {
            "suite2p_dir": str(tmp_path / "suite2p" / "plane0"), **rois}}}, "t")
    assert plane_findings(cfg()) == []  # plane1 beside plane0
    _write_plane(tmp_path / "small", 3, np.ones((40, 40), np.float32), size=40)
    found = plane_findings(cfg(plane_dirs=["", str(tmp_path / "small")]))
    assert len(found) == 1 and "disagree in frame size" in found[0].message
    found = plane_findings(cfg(plane_dirs=["", str(tmp_path / "nowhere")]))
    assert len(found) == 1 and "nowhere" in found[0].message
    found = plane_findings(cfg(links=[{"plane": 1, "roi": 5, "soma": 0}]))
    assert found[0].key == "acquisition.rois.links" and "plane 1 has 3 ROIs" in found[0].message
    np.save(tmp_path / "suite2p" / "plane1" / "roi_kind.npy", np.array([1, 1, 0], np.int8))
    np.save(tmp_path / "suite2p" / "plane1" / "roi_parent.npy", np.array([0, 7, -1], np.int32))
    found = plane_findings(cfg())  # a folder's dendrite linked to a soma the BCI plane (4 ROIs) does not have
    assert len(found) == 1 and "linked to soma 7" in found[0].message and "has 4 ROIs" in found[0].message
    assert "suite2p/plane1" in found[0].message


def test_a_folders_links_follow_the_extracted_rois_into_the_session(tmp_path, monkeypatch, suite2p):
    """A plane folder's roi_kind/roi_parent are per its own stat.npy rows (parents: the BCI folder's rows); with
    only_cells the session's copy renumbers both to the extracted ROIs, and a config link adds its dendrite."""
    ref = suite2p[0]
    _write_plane(tmp_path / "suite2p" / "plane0", 4, ref, iscell=np.array([[1, 1], [0, 0], [1, 1], [1, 1]]))
    _write_plane(tmp_path / "suite2p" / "plane1", 3, suite2p[1], iscell=np.array([[0, 0], [1, 1], [1, 1]]))
    np.save(tmp_path / "suite2p" / "plane1" / "roi_kind.npy", np.array([1, 1, 0], np.int8))
    np.save(tmp_path / "suite2p" / "plane1" / "roi_parent.npy", np.array([1, 3, -1], np.int32))
    proc = _process(tmp_path, monkeypatch, InterleavedSource(_frames(suite2p, 3)),
                    rois={"links": [{"plane": 1, "roi": 1, "soma": 0}]})
    _run(proc)
    rois = tmp_path / "session" / "acquisition" / "planes" / "plane1" / "rois"
    # extracted: source rows 1, 2 (row 0 not a cell, saved last); row 1's soma 3 is the BCI plane's extracted 2
    assert np.load(rois / "roi_kind.npy").tolist() == [1, 1, 0]
    assert np.load(rois / "roi_parent.npy").tolist() == [2, 0, -1]
    assert read_records(rois.parent / "frames.rec")["F"].shape == (3, 2)


def test_a_two_plane_sim_session_records_both_planes(tmp_path):
    """The one real session: ``rig run`` of the simulator with somata on plane 0 and their dendrites on plane 1."""
    cmd = [sys.executable, "-m", "rig.app.cli", "run", str(REPO / "hardware_configs" / "sim.toml"), "--headless",
           "--duration", "3", "--sessions-dir", str(tmp_path / "sessions")]
    for item in ("acquisition.sim.height_px=96", "acquisition.sim.width_px=80", "acquisition.sim.n_cells=20",
                 "acquisition.sim.n_planes=2", "acquisition.n_planes=2"):
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # not ok: 3 s is no trial; the frames are what count
    assert "failed_process" not in summary, proc.stderr[-3000:]
    assert summary["n_planes"] == 2 and summary["plane_out_of_range"] == 0, proc.stderr[-3000:]
    planes = summary["planes"]
    assert planes["0"]["frames"] > 30 and abs(planes["1"]["frames"] - planes["0"]["frames"]) <= 1
    acq = Path(summary["session"]) / "acquisition"
    for folder in (acq, acq / "planes" / "plane1"):
        rows = read_records(folder / "frames.rec")
        meta = json.loads((folder / "movie.json").read_text())
        movie = ChunkedMovie(folder / meta["file"], np.dtype(meta["dtype"]), 96, 80)
        assert len(movie) == len(rows) and np.isfinite(rows["F"][5:]).all()
        assert (folder / "rois" / "reference.npy").is_file() and (folder / "sim_truth" / "ground_truth.npz").is_file()
        assert rows["F"].shape[1] == load_suite2p(folder / "rois").n_rois
    # plane 1's ROIs are dendrites, each linked to the soma the simulator grew it from
    kind = np.load(acq / "planes" / "plane1" / "rois" / "roi_kind.npy")
    parent = np.load(acq / "planes" / "plane1" / "rois" / "roi_parent.npy")
    truth = np.load(acq / "planes" / "plane1" / "sim_truth" / "ground_truth.npz")
    assert (kind == 1).all() and parent.tolist() == truth["parent"].tolist()
    assert (np.load(acq / "rois" / "roi_kind.npy") == 0).all()


def test_the_zmq_scope_twin_sends_each_volumes_planes(tmp_path):
    """rig bench's scope twin with the simulator's two planes: interleaved frames, each with its plane and volume."""
    import threading

    from acquisition.sources.zmq_stream import ZmqStreamSource
    from rig.offline.scope_twin import render_twin_movie, send_frames

    movie = render_twin_movie(["acquisition.sim.height_px=96", "acquisition.sim.width_px=80",
                               "acquisition.sim.n_cells=8", "acquisition.sim.n_planes=2"], 3, 30.0, tmp_path,
                              progress=False)
    assert movie.planes == 2 and (movie.rois.parent / "plane1" / "stat.npy").is_file()  # where the rig looks
    rendered = np.load(movie.frames)
    port = free_tcp_port()
    stop = threading.Event()
    sender = threading.Thread(target=send_frames, args=("zmq", port, str(movie.frames), 30.0, stop,
                                                        str(tmp_path / "sent.json"), 2), daemon=True)
    source = ZmqStreamSource(f"tcp://127.0.0.1:{port}", expected_shape=(96, 80), n_planes=2)
    source.open()
    sender.start()
    try:
        got = []
        for _ in range(400):
            frame = source.read(0.05)
            if frame is not None:
                got.append((frame.plane, frame.number, frame.data.copy()))
            if len(got) >= 8:
                break
    finally:
        stop.set()
        sender.join(5)
        source.close()
    assert len(got) >= 8 and source.n_planes == 2
    for plane, number, data in got:  # volume v's plane p is rendered frame 2 v + p (the movie loops)
        np.testing.assert_array_equal(data, rendered[(2 * number + plane) % len(rendered)])
    assert {p for p, _, _ in got} == {0, 1}
