"""The offline tools on damaged sessions: each damaged copy of a small real session gives a non-zero exit and one
line on stderr naming the file and what is wrong, never a traceback or a silently wrong result; a stat.npy made
to run code is refused and runs nothing; a partial replay says it is partial.

The session is the one tests/test_session_offline.py builds with the real pipeline and decoder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rig.core.store import CorruptFileError, read_record_layout, read_records
from tests.conftest import REPO
from tests.test_session_offline import build_session, last_json, run_cli

ALL = ("replay", "export", "report", "summary")
LOADED = ("replay", "export", "report")  # the commands that open the session with the loader (not summary)


@pytest.fixture(scope="module")
def built_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_session(tmp_path_factory.mktemp("corrupt") / "20250601-100000_m42_testrig")


@pytest.fixture
def damaged(built_session: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(built_session, tmp_path / built_session.name))


def _argv(command: str, session: Path, tmp_path: Path) -> list[str]:
    return {"replay": ["replay", str(session), "--no-progress"],
            "export": ["export", str(session), "--nwb", str(tmp_path / "out.nwb"), "--no-progress",
                       "--subject-age", "P90D"],  # else a note on the unknown age comes first
            "report": ["report", str(session), "--out", str(tmp_path / "r.html"), "--no-progress"],
            "summary": ["summary", str(session)]}[command]


# ---------------------------------------------------------------------------- the damage


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _edit_event(path: Path, kind: str, edit: Callable[[dict], None]) -> None:
    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if f'"kind":"{kind}"' in line)
    record = json.loads(lines[k])
    edit(record)
    lines[k] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


def _flip_frame_bit(path: Path, row: int, bit: int) -> None:
    dtype = read_record_layout(path)
    data = bytearray(path.read_bytes())
    offset = row * dtype.itemsize + dtype.fields["frame"][1]
    number = int.from_bytes(data[offset:offset + 8], "little") ^ (1 << bit)
    data[offset:offset + 8] = number.to_bytes(8, "little")
    path.write_bytes(bytes(data))


def _other_roi_count(path: Path) -> None:
    """The layout of a session with one ROI fewer: consistent in itself, wrong for these bytes."""
    def edit(doc: dict) -> None:
        for field in doc["dtype"]:
            if len(field) == 3:  # F, Fneu or dff: one float32 per ROI
                field[2] = [field[2][0] - 1]
                doc["itemsize"] -= 4
    _edit_json(path, edit)
    assert read_record_layout(Path(str(path)[:-5])).itemsize == json.loads(path.read_text())["itemsize"]


def _drop_field(path: Path, name: str, size: int) -> None:
    def edit(doc: dict) -> None:
        doc["dtype"] = [f for f in doc["dtype"] if f[0] != name]
        doc["itemsize"] -= size
    _edit_json(path, edit)


def _field_type(path: Path, name: str, descr: str) -> None:
    _edit_json(path, lambda doc: [f.__setitem__(1, descr) for f in doc["dtype"] if f[0] == name])


A, D, R = "acquisition", "decoder", "reward"
#: (name, damage, the file the message must name, what it must say, the commands that must refuse it)
CORPUS: list[tuple[str, Callable[[Path], None], str, str, tuple[str, ...]]] = [
    ("garbage frames sidecar", lambda s: (s / A / "frames.rec.json").write_bytes(b"\x89PNG\x00garbage{"),
     "acquisition/frames.rec.json", "not JSON", ALL),
    ("frames sidecar not an object", lambda s: (s / A / "frames.rec.json").write_text("[1, 2, 3]"),
     "acquisition/frames.rec.json", "expected an object", ALL),
    ("frames sidecar of another format", lambda s: _edit_json(s / A / "frames.rec.json",
                                                               lambda d: d.update(format="pickle v9")),
     "acquisition/frames.rec.json", "format 'pickle v9'", ALL),
    ("decisions sidecar with an object field", lambda s: _field_type(s / D / "decisions.rec.json", "cursor", "|O"),
     "decoder/decisions.rec.json", "cursor", ALL),
    ("decisions sidecar with an unknown type", lambda s: _field_type(s / D / "decisions.rec.json", "up", "<q9"),
     "decoder/decisions.rec.json", "not a valid record layout", ALL),
    ("frame numbers declared as floats", lambda s: _field_type(s / A / "frames.rec.json", "frame", "<f8"),
     "acquisition/frames.rec.json", "field 'frame': type float64", ALL),
    ("decisions sidecar without a field", lambda s: _drop_field(s / D / "decisions.rec.json", "t_decided", 8),
     "decoder/decisions.rec.json", "field 't_decided': no such field", ALL),
    ("decisions itemsize differs from its dtype", lambda s: _edit_json(s / D / "decisions.rec.json",
                                                                        lambda d: d.update(itemsize=d["itemsize"] + 8)),
     "decoder/decisions.rec.json", "declares itemsize", ALL),
    ("frames sidecar of a session with fewer ROIs", lambda s: _other_roi_count(s / A / "frames.rec.json"),
     "acquisition/frames.rec", "does not describe it", ALL),
    ("decisions sidecar of a session with fewer ROIs", lambda s: _other_roi_count(s / D / "decisions.rec.json"),
     "decoder/decisions.rec", "does not describe it", ALL),
    ("bit-flipped frame number in decisions.rec", lambda s: _flip_frame_bit(s / D / "decisions.rec", 50, 40),
     "decoder/decisions.rec", "row 51 has frame", ALL),
    ("bit-flipped frame number in frames.rec", lambda s: _flip_frame_bit(s / A / "frames.rec", 100, 3),
     "acquisition/frames.rec", "row 101 has frame", ALL),
    ("negative frame number", lambda s: _flip_frame_bit(s / D / "decisions.rec", 0, 63),
     "decoder/decisions.rec", "frame numbers are >= 0", ALL),
    ("zero-shape movie.json", lambda s: _edit_json(s / A / "movie.json", lambda d: d.update(shape=[-1, 0, 0])),
     "acquisition/movie.json", "frames of 0 x 0 pixels", LOADED),
    ("movie.json with an object dtype", lambda s: _edit_json(s / A / "movie.json", lambda d: d.update(dtype="O")),
     "acquisition/movie.json", "not a numeric type", LOADED),
    ("movie.json of another frame size", lambda s: _edit_json(s / A / "movie.json",
                                                               lambda d: d.update(shape=[-1, 40, 48])),
     "acquisition/movie.json", "frames of (40, 48), but the ROI set", ("replay",)),
    ("movie.json not an object", lambda s: (s / A / "movie.json").write_text('"<u2"'),
     "acquisition/movie.json", "expected an object", LOADED),
    ("garbage movie.json", lambda s: (s / A / "movie.json").write_bytes(b"\xff\xfe{{"),
     "acquisition/movie.json", "not valid JSON", LOADED),
    ("non-numeric reward volume", lambda s: _edit_event(s / R / "events.jsonl", "reward_outcome",
                                                         lambda e: e.update(volume_ul="lots")),
     "reward/events.jsonl:1", 'volume_ul is "lots", expected a number', ALL),
    ("non-numeric trial frame", lambda s: _edit_event(s / D / "events.jsonl", "trial",
                                                       lambda e: e.update(frame="17")),
     "decoder/events.jsonl", 'frame is "17", expected an integer', ALL),
    ("an event line that is not an object", lambda s: (s / R / "events.jsonl").write_text(
        "[1, 2]\n" + (s / R / "events.jsonl").read_text()),
     "reward/events.jsonl:1", "must be a JSON object", ALL),
    ("an applied action without its frame", lambda s: _edit_event(s / D / "events.jsonl", "applied",
                                                                   lambda e: e.pop("after_frame")),
     "decoder/events.jsonl", "applied event without 'after_frame'", LOADED),
    ("a frame rate that is not a number", lambda s: _edit_event(s / A / "events.jsonl", "state",
                                                                 lambda e: e.update(frame_rate_hz="fast")),
     "acquisition/events.jsonl", "frame_rate_hz is 'fast'", LOADED),
    ("session.json not an object", lambda s: (s / "session.json").write_text("[]"),
     "session.json", "expected an object", LOADED),
    ("garbage calibration.json", lambda s: (s / D / "calibration.json").write_bytes(b"{\"threshold\": "),
     "decoder/calibration.json", "not valid JSON", LOADED),
    ("reference image holding a pickle", lambda s: np.save(s / A / "rois" / "reference.npy",
                                                           np.array([{"a": 1}], dtype=object), allow_pickle=True),
     "acquisition/rois/reference.npy", "holds Python objects", ("replay", "export")),
    ("reference image of the wrong size", lambda s: np.save(s / A / "rois" / "reference.npy", np.zeros((5, 5))),
     "acquisition/rois/reference.npy", "a (5, 5) image", ("replay",)),
]


@pytest.mark.parametrize(("damage", "named", "says", "commands"), [c[1:] for c in CORPUS],
                         ids=[c[0] for c in CORPUS])
def test_each_damaged_file_is_one_line_naming_it(damaged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 damage: Callable[[Path], None], named: str, says: str,
                                                 commands: tuple[str, ...]) -> None:
    damage(damaged)
    for command in commands:
        code, out, err = run_cli(_argv(command, damaged, tmp_path), capsys)  # an exception would fail the test
        lines = err.strip().splitlines()
        assert code != 0, f"rig {command} accepted it: {out}{err}"
        assert len(lines) == 1, f"rig {command}: {err}"
        assert lines[0].startswith(f"rig {command}: ") and str(damaged / named) in lines[0], lines[0]
        assert says in lines[0], lines[0]
        assert "Traceback" not in err


@pytest.mark.parametrize("where", ["stat.npy", "ops.npy"])
def test_a_malicious_suite2p_file_in_the_session_is_refused_and_runs_nothing(damaged: Path, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str],
                                                                             where: str) -> None:
    from tests.test_safe_npy import OpensAFile, RunsACommand, malicious_stat

    marker = tmp_path / "payload_ran"
    rois = damaged / A / "rois"
    if where == "stat.npy":
        malicious_stat(rois / "stat.npy", RunsACommand(marker))
        forbidden = f"{os.system.__module__}.system"
    else:
        np.save(rois / "ops.npy", np.array({"Ly": 48, "Lx": 48, "x": OpensAFile(marker)}, dtype=object),
                allow_pickle=True)
        forbidden = "io.open"
    for command in ("replay", "export"):
        code, _, err = run_cli(_argv(command, damaged, tmp_path), capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert str(rois / where) in lines[0] and f"forbidden global {forbidden}" in lines[0], lines[0]
    assert not marker.exists()


def test_the_console_refuses_a_malicious_stat_npy_in_the_session(qtbot, tmp_path: Path) -> None:
    """The console reads ``<session>/acquisition/rois`` itself: it shows the refusal as a warning, runs nothing."""
    from gui.main_window import MainWindow
    from gui.session import ConsoleSession
    from tests.gui_fakes import FakeRig
    from tests.test_gui_window import open_console
    from tests.test_safe_npy import RunsACommand, malicious_stat

    marker = tmp_path / "payload_ran"
    with FakeRig(tmp_path / "session", n_rois=4) as rig:
        malicious_stat(rig.session_dir / "acquisition" / "rois" / "stat.npy", RunsACommand(marker))
        rig.start_stream()
        window: MainWindow = open_console(qtbot, rig.endpoints["command"])
        try:
            qtbot.waitUntil(lambda: any("forbidden global" in w.message for w in window.model.warnings),
                            timeout=10_000)
            assert window.fov.rois is None
            assert "stat.npy: refused to load" in window.fov.roi_label.text()
        finally:
            window.close()
            session: ConsoleSession = window.session
            session.close()
    assert not marker.exists()


# ---------------------------------------------------------------------------- partial replays


def test_a_replay_that_cannot_check_every_decision_exits_3_with_the_reason(damaged: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    frames = damaged / A / "frames.rec"
    _flip_frame_bit(frames, len(read_records(frames)) - 1, 40)  # the last frame number: still increasing
    code, out, err = run_cli(["replay", str(damaged), "--no-progress", "--from-traces"], capsys)
    result = last_json(out)
    assert code == 3, err
    assert result["mismatches"] == 0 and result["decisions_unchecked"] == 1 and result["complete"] is False
    assert "the files disagree" in result["unchecked_reason"]
    assert "rig replay: incomplete check: the last 1 decision(s) were not replayed" in err


def test_a_replay_of_a_crashed_session_is_partial_too(damaged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = damaged / A / "frames.rec"
    itemsize = read_record_layout(frames).itemsize
    frames.write_bytes(frames.read_bytes()[: 212 * itemsize + 5])  # the acquisition died: a torn row
    code, out, err = run_cli(["replay", str(damaged), "--no-progress", "--from-traces"], capsys)
    result = last_json(out)
    assert code == 3, err
    assert result["decisions_checked"] == 212 and result["decisions_unchecked"] == 1498 - 212
    assert "stopped before writing them" in result["unchecked_reason"]
    assert "torn final record" in err  # the torn row is noted, not silently dropped
    code, out, err = run_cli(["summary", str(damaged)], capsys)
    assert code == 0 and "rig summary: note: frames.rec: ignored a torn final record" in err


def test_an_untouched_session_replays_complete(built_session: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["replay", str(built_session), "--no-progress", "--from-traces"], capsys)
    result = last_json(out)
    assert code == 0 and result["complete"] is True and result["decisions_unchecked"] == 0, err


# ---------------------------------------------------------------------------- the real command line


@pytest.mark.parametrize("command", ["replay", "summary"])
def test_the_rig_command_prints_one_line_and_no_traceback(damaged: Path, command: str) -> None:
    (damaged / D / "decisions.rec.json").write_text('{"format": "bci-rig records v1", "dtype": 7}')
    proc = subprocess.run([sys.executable, "-m", "rig.app.cli", command, str(damaged), "--no-progress"]
                          if command == "replay" else [sys.executable, "-m", "rig.app.cli", command, str(damaged)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"rig {command}: {damaged / D / 'decisions.rec.json'}: 'dtype' must be a non-empty list of "
        "[name, type(, shape)] fields"]


# ---------------------------------------------------------------------------- records are mapped, not read


@pytest.mark.posix_only(reason="a sparse file and ru_maxrss")
def test_records_are_memory_mapped_not_read(tmp_path: Path) -> None:
    import resource

    from rig.core.store import RecordWriter

    path = tmp_path / "decisions.rec"
    writer = RecordWriter(path, np.dtype([("frame", "<i8"), ("dff", "<f4", (254,))]))  # 1 kB rows
    writer.close()
    with open(path, "wb") as f:
        f.truncate(2 * 2**30)  # 2 GB of rows, sparse: costs no disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = read_records(path)
    assert len(rows) == 2 * 2**30 // 1024 and isinstance(rows.base, np.memmap)
    assert rows[-1]["frame"] == 0
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200 * 1024, f"reading the records grew the process by {grown_kb} kB"
    del rows


def test_a_torn_row_is_dropped_and_counted(tmp_path: Path) -> None:
    from rig.core.store import RecordWriter, torn_record_bytes

    path = tmp_path / "x.rec"
    writer = RecordWriter(path, np.dtype([("frame", "<i8"), ("v", "<f4")]))
    for i in range(3):
        writer.append(frame=i, v=i / 2)
    writer.close()
    with open(path, "ab") as f:
        f.write(b"\x01\x02\x03")
    rows = read_records(path)
    assert list(rows["frame"]) == [0, 1, 2] and torn_record_bytes(path, rows.dtype) == 3
    with pytest.raises(CorruptFileError, match="y.rec.json: cannot read the record layout"):
        read_records(tmp_path / "y.rec")
