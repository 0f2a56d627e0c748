"""Offline session tools on a small realistic session: replay (bit-exact and what-if), NWB export, report,
summary, and reading a session that ended in a crash.

The session is built the way the rig builds one: synthetic two-photon frames go through the real
``FramePipeline`` (acquisition rows written with ``frame_record_dtype``), and the real ``DecoderProcess``
(in this process, without its bus loop) decides every frame and applies operator actions, writing
``decisions.rec`` and ``events.jsonl`` itself. So a replay that matches is a real check of the tools.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest

from acquisition.pipeline import FramePipeline
from acquisition.process import frame_record_dtype
from acquisition.rois import RoiSet
from rig.app.config import CONFIG_LOADER, config_from_dict
from rig.app.session_files import cpu_target
from rig.core.bus import free_tcp_port
from rig.core.process import ProcessSpec
from rig.core.schema import Control, FluorFrame
from rig.core.store import EventLog, RecordWriter, read_events, read_records, write_json_atomic
from rig.offline import session_cli
from rig.offline.session_data import load_session

FRAME_RATE = 30.0
HEIGHT = WIDTH = 48
N_ROIS = 8
N_FRAMES = 1500
DROPPED = (1200, 1201)  # lost at the source: never acquired, never decided
BAD = (700, 701, 702, 1100)  # frames of noise during BCI: flagged by registration, held by the bad-frame rule
#: (command, args, after_frame): what the operator did, applied by the decoder after that frame
OPERATOR = [
    ("start_baseline", {}, -1),
    ("calibrate", {"target_hit_rate": 0.4}, 470),
    ("start_bci", {}, 480),
    ("pause", {}, 900),
    ("resume", {}, 960),
    ("manual_reward", {"volume_ul": 3.0}, 1000),
    # a second BCI block: new ensembles, calibrated again on the session's baseline
    ("end_block", {}, 1050),
    ("set_ensembles", {"up": [0, 1, 4], "down": [2, 3]}, 1052),
    ("calibrate", {}, 1055),
    ("start_bci", {}, 1060),
]

CONFIG = {
    "rig": {"name": "testrig"},
    "session": {"mouse_id": "m42", "experimenter": "Tester, T"},
    "acquisition": {"source": "sim", "frame_rate_hz": FRAME_RATE,
                    "registration": {"reference_frames": 30}},
    "decoder": {"up": [0, 1], "down": [2, 3], "f0_window_s": 10.0},
    "task": {"baseline_s": 15.0, "auto_protocol": False, "trial_s": 1.0, "iti_s": 0.3, "hold_s": 0.2,
             "timeout_s": 0.3},
    "reward": {"volume_ul": 2.5},
}
CONFIG_TOML = """# test session config
[rig]
name = "testrig"
[decoder]
up = [0, 1]
down = [2, 3]
"""


def _roi_set() -> RoiSet:
    stat = []
    for i in range(N_ROIS):
        cy, cx = 8 + (i // 4) * 28, 6 + (i % 4) * 12
        yy, xx = np.mgrid[cy - 2:cy + 3, cx - 2:cx + 3]
        stat.append({"ypix": yy.ravel(), "xpix": xx.ravel(), "lam": np.full(25, 1 / 25), "med": [cy, cx],
                     "npix": 25})
    return RoiSet(stat=stat, iscell=np.ones((N_ROIS, 2)), Ly=HEIGHT, Lx=WIDTH)


def _traces(rng: np.random.Generator) -> np.ndarray:
    """Calcium-like activity (frames x ROIs); the up ensemble fires more once BCI starts (a learning mouse)."""
    rate = np.full((N_FRAMES, N_ROIS), 0.08)
    rate[480:, :2] = 0.14
    spikes = rng.poisson(rate)
    kernel = np.exp(-np.arange(40) / 12.0)
    calcium = np.stack([np.convolve(spikes[:, i], kernel)[:N_FRAMES] for i in range(N_ROIS)], axis=1)
    return 30.0 * calcium


def _movie(rng: np.random.Generator, traces: np.ndarray, roi_set: RoiSet) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    background = 300 + 60 * np.sin(yy / 5.0) * np.cos(xx / 7.0)  # texture for the registration to lock on
    frames = np.empty((N_FRAMES, HEIGHT, WIDTH), dtype=np.uint16)
    for t in range(N_FRAMES):
        img = background + rng.normal(0, 6, (HEIGHT, WIDTH))
        for i, roi in enumerate(roi_set.stat):
            img[roi["ypix"], roi["xpix"]] += 150 + traces[t, i]
        shift = (t // 200) % 3 - 1  # slow motion of up to one pixel
        frames[t] = np.clip(np.roll(img, shift, axis=1), 0, 65535).astype(np.uint16)
    for t in BAD:
        frames[t] = rng.integers(0, 600, (HEIGHT, WIDTH)).astype(np.uint16)
    return frames


def _deliver(reward: EventLog, request: int, number: int, t_ready: int, source: str) -> None:
    """What the reward process writes for a delivered reward, and the licks that follow it."""
    t_written = t_ready + 2_500_000
    reward.write("reward_outcome", request_id=f"req-{request}", status="delivered", reason="", volume_ul=2.5,
                 open_ms=17.9, source=source, frame=number if source == "decoder" else -1, t_ready=t_ready,
                 t_requested=t_ready + 2_000_000, t_written=t_written, t_ack=t_written + 1_200_000,
                 t_done=t_written + 19_000_000, board_us_ack=number * 33_333, board_us_done=number * 33_333 + 17_900,
                 t_ns=t_written + 19_100_000)
    for k in range(1, 4):
        reward.write("lick", onset=True, board_us=number * 33_333 + 150_000 * k, t_ns=t_written + 150_000_000 * k)
        reward.write("lick", onset=False, board_us=number * 33_333 + 150_000 * k + 40_000,
                     t_ns=t_written + 150_000_000 * k + 40_000_000)


def build_session(folder: Path) -> Path:
    """Write a complete session folder as the rig's processes would."""
    from decoder.process import DecoderProcess

    rng = np.random.default_rng(7)
    cfg = config_from_dict(CONFIG, "test-config")
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(CONFIG_TOML, encoding="utf-8")
    write_json_atomic(folder / "config.resolved.json", msgspec.to_builtins(cfg))
    write_json_atomic(folder / "session.json", {
        "format": "bci-rig session v1", "status": "ok", "rig": "testrig", "created": "2025-06-01T10:00:00",
        "software": {"name": "bci-rig", "version": "0.1.0", "git": "0123456789abcdef"},
        "metadata": {"mouse_id": "m42", "experimenter": "Tester, T", "notes": "test session"},
    })
    supervisor = EventLog(folder / "supervisor.events.jsonl")

    # acquisition: the ROI set, frames through the real pipeline, rows and movie as the process writes them
    roi_set = _roi_set()
    acq_dir = folder / "acquisition"
    roi_set.save_suite2p(acq_dir / "rois")
    pipeline = FramePipeline.from_config(roi_set, cfg.acquisition)
    assert pipeline.reference is None  # built from the first frames, as live
    traces = _traces(rng)
    movie = _movie(rng, traces, roi_set)
    acq_events = EventLog(acq_dir / "events.jsonl")
    acq_events.write("state", state="ready", reason="", n_rois=str(N_ROIS), frame_rate_hz=repr(FRAME_RATE),
                     height=str(HEIGHT), width=str(WIDTH))
    write_json_atomic(acq_dir / "movie.json", {"dtype": "uint16", "shape": [-1, HEIGHT, WIDTH], "order": "C",
                                               "frame_rate_hz": FRAME_RATE})
    frames_rec = RecordWriter(acq_dir / "frames.rec", frame_record_dtype(N_ROIS))

    # the decoder: the real process class, run in this process without its bus loop
    endpoints = {name: f"tcp://127.0.0.1:{free_tcp_port()}" for name in ("decoder", "supervisor", "acquisition")}
    spec = ProcessSpec(name="decoder", target="decoder.process:DecoderProcess", config=msgspec.to_builtins(cfg),
                       config_file="test-config", config_loader=CONFIG_LOADER,
                       endpoints=endpoints, session_dir=str(folder), critical=True,
                       extra={"upstream": {"acquisition": {"n_rois": str(N_ROIS), "frame_rate_hz": repr(FRAME_RATE)}}},
                       watch_parent=False)
    decoder = DecoderProcess(spec)
    decoder.configure()
    decoder.events.write("state", state="ready", reason="", **decoder.ready_info())
    reward = EventLog(folder / "reward" / "events.jsonl")
    write_json_atomic(folder / "reward" / "valve_calibration.json", {"valve": "valve0", "intercept_ms": 2.8,
                                                                     "slope_ms_per_ul": 6.0})
    t0 = 1_000_000_000_000
    period = int(1e9 / FRAME_RATE)
    controls = list(OPERATOR)
    requests_seen = 0
    with open(acq_dir / "movie.raw", "wb") as movie_file:
        for number in range(N_FRAMES):
            while controls and controls[0][2] < number:
                command, args, _ = controls.pop(0)
                supervisor.write("operator", command=command, args=args, issued_by="test")
                decoder.events.write("control", command=command, args=args, issued_by="test")
                decoder.on_control(Control(command=command, args=args, issued_by="test"))
                job = decoder.core.engine.calibration_job  # the operator's, computed beside the loop: let it
                assert job is None or job.wait(30.0)  # apply before the next frame, whatever this machine's speed
            if number in DROPPED:
                continue
            t_ready = t0 + number * period
            result = pipeline.process(movie[number])
            row = frames_rec.next_row()
            row["frame"], row["t_ready"] = number, t_ready
            row["t_registered"], row["t_extracted"], row["t_sent"] = t_ready + 900_000, t_ready + 1_000_000, \
                t_ready + 1_050_000
            row["dy"], row["dx"], row["corr"], row["flags"] = result.dy, result.dx, result.corr, result.flags
            row["F"], row["Fneu"] = result.F, result.Fneu
            frames_rec.commit()
            movie_file.write(movie[number].tobytes())
            decoder._decide(FluorFrame(frame=number, t_ready=t_ready, t_registered=t_ready + 900_000,
                                       t_extracted=t_ready + 1_000_000, dy=result.dy, dx=result.dx,
                                       corr=result.corr, flags=result.flags, F=result.F.copy(),
                                       Fneu=result.Fneu.copy(), t_sent=t_ready + 1_050_000))
            if decoder.core.requests > requests_seen:  # the reward process answers every request
                requests_seen = decoder.core.requests
                _deliver(reward, requests_seen, number, t_ready, "manual" if number == 1001 else "decoder")
    decoder.on_stop()
    decoder._close()
    frames_rec.close()
    acq_events.write("final_stats", frames=N_FRAMES - len(DROPPED), frames_dropped=len(DROPPED), bad_frames=0,
                     source_stats={})
    acq_events.close()
    reward.close()
    supervisor.write("session_start")
    supervisor.close()
    return folder


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_session(tmp_path_factory.mktemp("sessions") / "20250601-100000_m42_testrig")


@pytest.fixture
def session_copy(session_dir: Path, tmp_path: Path) -> Path:
    """A private copy a test may damage."""
    return Path(shutil.copytree(session_dir, tmp_path / session_dir.name))


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run one of the session subcommands as `rig` would (its own parser: other plugins are not needed)."""
    parser = argparse.ArgumentParser(prog="rig")
    session_cli.register_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the built session is realistic


def test_the_session_has_trials_hits_and_operator_actions(session_dir: Path) -> None:
    events = read_events(session_dir / "decoder" / "events.jsonl")
    kinds = [e.get("event") for e in events if e["kind"] == "trial"]
    assert kinds.count("trial_start") >= 5 and kinds.count("hit") >= 2 and "miss" in kinds
    assert {"pause", "resume", "manual_reward", "gap", "calibrated"} <= set(kinds)
    assert [e["command"] for e in events if e["kind"] == "applied"] == [c[0] for c in OPERATOR]
    decisions = read_records(session_dir / "decoder" / "decisions.rec")
    assert len(decisions) == N_FRAMES - len(DROPPED)
    assert np.isfinite(decisions["cursor"]).sum() > 1000
    # the bad-frame rule: a flagged frame holds the cursor, has no dF/F, opens one event per run, never hits
    from decoder.config import DecoderConfig

    bad = (decisions["flags"] & DecoderConfig().bad_frame_mask) != 0
    assert bad[np.isin(decisions["frame"], BAD)].all() and bad.sum() < 20  # the noise frames (and few others)
    for i in np.flatnonzero(bad):
        assert decisions["cursor"][i] == decisions["cursor"][i - 1] and np.isnan(decisions["dff"][i]).all()
        assert not decisions["reward_requested"][i]
    runs = decisions["frame"][bad & ~np.concatenate([[False], bad[:-1]])]
    assert [e["frame"] for e in events if e.get("event") == "bad_frame"] == runs.tolist()
    assert {700, 1100} <= set(runs.tolist())
    # two blocks, each recorded with its calibration; trial numbers go on across them
    session = load_session(session_dir)
    blocks = session.blocks()
    assert [(b["block"], b["up"]) for b in blocks] == [(1, [0, 1]), (2, [0, 1, 4])]
    assert blocks[0]["end_frame"] == 1051 and blocks[1]["start_frame"] == 1061 and blocks[1]["trials"] >= 3
    assert blocks[0]["threshold"] != blocks[1]["threshold"]
    numbers = [t.number for t in session.trials()]
    assert numbers == list(range(1, len(numbers) + 1))
    assert [c["up"] for c in session.calibrations()] == [[0, 1], [0, 1, 4]]


# ---------------------------------------------------------------------------- replay


@pytest.mark.parametrize("source_args", [[], ["--from-traces"]], ids=["movie", "traces"])
def test_replay_of_an_untouched_session_matches_byte_for_byte(session_dir: Path, source_args: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["replay", str(session_dir), "--no-progress", *source_args], capsys)
    result = last_json(out)
    assert result["mismatches"] == 0, err
    assert code == 0
    assert result["frames"] == result["decisions_checked"] == N_FRAMES - len(DROPPED)
    assert result["events_checked"] > 20
    assert result["source"] == ("traces" if source_args else "movie")
    if not source_args:
        assert result["traces_checked"] == N_FRAMES - len(DROPPED)


def test_replay_reads_the_compressed_movie(session_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The session's movie as the acquisition now saves it (movie.zchunks): the replay re-registers the same frames."""
    from rig.core.movie_file import ChunkedMovieWriter

    acq = session_copy / "acquisition"
    raw = np.fromfile(acq / "movie.raw", np.uint16).reshape(-1, HEIGHT, WIDTH)
    writer = ChunkedMovieWriter(acq / "movie.zchunks", (HEIGHT, WIDTH), np.uint16, buffer_frames=len(raw),
                                chunk_frames=7)
    for frame in raw:
        writer.put(frame)
    writer.close()
    (acq / "movie.raw").unlink()
    meta = json.loads((acq / "movie.json").read_text())
    write_json_atomic(acq / "movie.json", {**meta, "codec": "zstd", "file": "movie.zchunks"})
    code, out, err = run_cli(["replay", str(session_copy), "--no-progress"], capsys)
    result = last_json(out)
    assert result["mismatches"] == 0 and code == 0, err
    assert result["source"] == "movie" and result["traces_checked"] == N_FRAMES - len(DROPPED)


def _alter_record(path: Path, row: int, field: str, value: float) -> None:
    rows = read_records(path)
    offset = row * rows.dtype.itemsize + rows.dtype.fields[field][1]
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = np.float32(value).tobytes()
    path.write_bytes(bytes(data))


def test_replay_finds_an_altered_cursor_value(session_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """And, since the session says it was recorded on another CPU, says that the kernels may round differently."""
    decisions = read_records(session_copy / "decoder" / "decisions.rec")
    row = 700
    _alter_record(session_copy / "decoder" / "decisions.rec", row, "cursor",
                  float(decisions["cursor"][row]) + 1e-3)
    info = json.loads((session_copy / "session.json").read_text())
    info["software"]["cpu"] = "another-cpu avx512f"
    (session_copy / "session.json").write_text(json.dumps(info))
    code, out, err = run_cli(["replay", str(session_copy), "--no-progress", "--from-traces"], capsys)
    result = last_json(out)
    assert code == 1
    assert result["mismatches"] == 1
    first = result["first_mismatches"][0]
    assert (first["what"], first["frame"], first["field"]) == ("decision", int(decisions["frame"][row]), "cursor")
    assert f"frame {int(decisions['frame'][row])}, cursor" in err
    assert f'recorded on CPU "another-cpu avx512f" and is replayed on "{cpu_target()}"' in err


def test_replay_finds_an_altered_trial_event_and_input(session_copy: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    log = session_copy / "decoder" / "events.jsonl"
    lines = log.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if '"event":"hit"' in line)
    record = json.loads(lines[k])
    record["frame"] += 1
    lines[k] = json.dumps(record, separators=(",", ":"))
    log.write_text("\n".join(lines) + "\n")
    _alter_record(session_copy / "acquisition" / "frames.rec", 100, "dy", 0.5)  # registration result differs
    code, out, err = run_cli(["replay", str(session_copy), "--no-progress"], capsys)
    result = last_json(out)
    assert result["mismatches"] == 2, err
    assert {m["what"] for m in result["first_mismatches"]} == {"event", "trace"}


def test_what_if_replay_writes_a_new_session_marked_as_a_replay(session_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "whatif"
    code, out, err = run_cli(["replay", str(session_dir), "--no-progress", "--set",
                              "decoder.calibration.target_hit_rate=0.15", "--out", str(out_dir)], capsys)
    assert code == 0, err
    result = last_json(out)
    assert result["replay_session"] == str(out_dir)
    info = json.loads((out_dir / "session.json").read_text())
    assert info["replay_of"] == str(session_dir.resolve())
    assert info["replay"]["overrides"] == ["decoder.calibration.target_hit_rate=0.15"]
    assert json.loads((out_dir / "config.resolved.json").read_text())["decoder"]["calibration"][
        "target_hit_rate"] == 0.15
    original_cal = json.loads((session_dir / "decoder" / "calibration.json").read_text())
    new_cal = json.loads((out_dir / "decoder" / "calibration.json").read_text())
    assert new_cal["threshold"] > original_cal["threshold"]  # a rarer hit needs a higher threshold
    new = read_records(out_dir / "decoder" / "decisions.rec")
    old = read_records(session_dir / "decoder" / "decisions.rec")
    assert len(new) == len(old)
    assert np.array_equal(new["frame"], old["frame"])
    assert not np.array_equal(new["trial_state"], old["trial_state"])
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["replay_of"] == str(session_dir.resolve())
    assert summary["hits"] == result["hits"]
    original_hits = sum(1 for e in read_events(session_dir / "decoder" / "events.jsonl", {"trial"})
                        if e["event"] == "hit")
    assert result["hits"] < original_hits
    # the what-if session is a session like any other: it replays with no mismatch (from its traces)
    code, out, err = run_cli(["replay", str(out_dir), "--no-progress"], capsys)
    assert last_json(out)["mismatches"] == 0, err
    assert last_json(out)["source"] == "traces"


def test_a_what_if_replay_with_frozen_f0_is_itself_replayed_bit_exactly(session_dir: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "frozen"
    code, out, err = run_cli(["replay", str(session_dir), "--no-progress", "--set", "decoder.f0_mode=frozen",
                              "--out", str(out_dir)], capsys)
    assert code == 0, err
    from rig.core.codes import Mode

    original = read_records(session_dir / "decoder" / "decisions.rec")
    frozen = read_records(out_dir / "decoder" / "decisions.rec")
    start = int(np.argmax(original["mode"] == int(Mode.BCI)))
    assert np.array_equal(original["dff"][:start], frozen["dff"][:start], equal_nan=True)  # the same until BCI
    assert not np.array_equal(original["dff"][start:], frozen["dff"][start:], equal_nan=True)
    code, out, err = run_cli(["replay", str(out_dir), "--no-progress"], capsys)
    assert code == 0 and last_json(out)["mismatches"] == 0, err


def test_what_if_replay_with_another_config_file(session_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.toml"
    doc = json.loads((session_dir / "config.resolved.json").read_text())
    other.write_text(f"""
[rig]
name = "testrig"
[acquisition]
frame_rate_hz = {FRAME_RATE}
[acquisition.registration]
reference_frames = 30
[decoder]
decoder = "one_population"
up = [0, 1]
f0_window_s = 10.0
[task]
baseline_s = 15.0
auto_protocol = false
trial_s = {doc["task"]["trial_s"]}
""")
    code, out, err = run_cli(["replay", str(session_dir), "--no-progress", "--config", str(other), "--out",
                              str(tmp_path / "w2")], capsys)
    assert code == 0, err
    assert (tmp_path / "w2" / "config.toml").read_text() == other.read_text()
    cal = json.loads((tmp_path / "w2" / "decoder" / "calibration.json").read_text())
    assert cal["decoder"] == "one_population"


def test_replay_refuses_a_folder_that_is_not_a_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["replay", str(tmp_path / "nope")], capsys)
    assert code == 2
    assert "not a session folder" in err


# ---------------------------------------------------------------------------- crash


def test_a_session_that_ended_in_a_crash_opens_replays_and_reports(session_copy: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 of every process at once: torn last rows and lines, no summary, session.json still 'starting'."""
    for rec, keep_rows in (("acquisition/frames.rec", 1300), ("decoder/decisions.rec", 1350)):
        path = session_copy / rec
        itemsize = read_records(path).dtype.itemsize
        path.write_bytes(path.read_bytes()[: keep_rows * itemsize + itemsize // 3])  # a torn row at the end
    for log in ("decoder/events.jsonl", "reward/events.jsonl", "acquisition/events.jsonl"):
        with open(session_copy / log, "ab") as f:
            f.write(b'{"kind":"trial","event":"hi')  # torn mid-write
    movie = session_copy / "acquisition" / "movie.raw"
    movie.write_bytes(movie.read_bytes()[: 1320 * HEIGHT * WIDTH * 2 + 100])
    info = json.loads((session_copy / "session.json").read_text())
    write_json_atomic(session_copy / "session.json", {**info, "status": "starting"})

    session = load_session(session_copy)
    assert len(session.frames) == 1300 and len(session.decisions) == 1350
    assert len(session.movie()) == 1320
    assert any("torn final record" in n for n in session.notes)
    assert any("torn final line" in n for n in session.notes)
    assert any("did not end the session" in n for n in session.notes)

    code, out, err = run_cli(["summary", str(session_copy), "--write"], capsys)
    summary = last_json(out)
    assert code == 0 and summary["frames"] == 1350 and summary["frames_acquired"] == 1300
    assert json.loads((session_copy / "summary.json").read_text())["frames"] == 1350

    for source in ([], ["--from-traces"]):
        code, out, err = run_cli(["replay", str(session_copy), "--no-progress", *source], capsys)
        result = last_json(out)
        assert result["mismatches"] == 0, err
        assert result["decisions_checked"] == 1300  # decisions whose input frames survived
        assert result["decisions_unchecked"] == 50
        assert "not replayed" in err

    code, out, err = run_cli(["report", str(session_copy), "--no-progress", "--out", str(tmp_path / "r.html")],
                             capsys)
    assert code == 0, err
    assert "torn final record" in (tmp_path / "r.html").read_text()


# ---------------------------------------------------------------------------- NWB


def test_nwb_export_holds_the_session_and_passes_nwbinspector(session_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    pynwb = pytest.importorskip("pynwb")
    nwbinspector = pytest.importorskip("nwbinspector")
    out = tmp_path / "session.nwb"
    code, stdout, err = run_cli(["export", str(session_dir), "--nwb", str(out), "--no-progress", "--movie",
                                 "--subject-age", "P90D", "--subject-sex", "F", "--brain-area", "MOp"], capsys)
    assert code == 0, err
    assert last_json(stdout)["nwb"] == str(out)

    messages = list(nwbinspector.inspect_nwbfile(nwbfile_path=str(out)))
    critical = [m for m in messages if m.importance == nwbinspector.Importance.CRITICAL]
    assert critical == [], [m.message for m in critical]
    violations = [m for m in messages if m.importance == nwbinspector.Importance.BEST_PRACTICE_VIOLATION]
    assert violations == [], [m.message for m in violations]

    decisions = read_records(session_dir / "decoder" / "decisions.rec")
    frames = read_records(session_dir / "acquisition" / "frames.rec")
    events = read_events(session_dir / "decoder" / "events.jsonl", {"trial"})
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        ophys = nwb.processing["ophys"]
        assert len(ophys["ImageSegmentation"]["PlaneSegmentation"]) == N_ROIS
        assert list(ophys["ImageSegmentation"]["PlaneSegmentation"]["ensemble"][:4]) == ["up", "up", "down", "down"]
        np.testing.assert_array_equal(ophys["Fluorescence"]["F"].data[:], frames["F"])
        np.testing.assert_array_equal(ophys["Fluorescence"]["Fneu"].data[:], frames["Fneu"])
        np.testing.assert_array_equal(ophys["DfOverF"]["dFF"].data[:], decisions["dff"])
        np.testing.assert_array_equal(nwb.processing["behavior"]["BCI"]["cursor"].data[:], decisions["cursor"])
        trials = nwb.trials.to_dataframe()
        assert len(trials) == sum(1 for e in events if e["event"] == "trial_start")
        assert sorted(set(trials["block"])) == [1, 2] and trials["block"].is_monotonic_increasing
        assert '"bci_blocks"' in nwb.notes and '"decoder_calibrations_in_order"' in nwb.notes
        assert int(trials["hit"].sum()) == sum(1 for e in events if e["event"] == "hit")
        rewards = nwb.get_events_table("reward_outcomes").to_dataframe()
        assert len(rewards) == len(read_events(session_dir / "reward" / "events.jsonl", {"reward_outcome"}))
        assert len(nwb.get_events_table("licks")) == len(read_events(session_dir / "reward" / "events.jsonl",
                                                                      {"lick"}))
        assert nwb.acquisition["TwoPhotonSeries"].data.shape == (len(frames), HEIGHT, WIDTH)
        assert "target_hit_rate" in nwb.data_collection
        assert nwb.subject.subject_id == "m42"


# ---------------------------------------------------------------------------- report and summary


def test_report_is_one_html_page_with_every_plot(session_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    code, stdout, err = run_cli(["report", str(session_dir), "--out", str(out), "--no-progress",
                                 "--images", str(tmp_path / "png")], capsys)
    assert code == 0, err
    page = out.read_text()
    figures = re.findall(r'<figure id="([a-z_]+)"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert [f[0] for f in figures] == ["hit_rate", "time_to_hit", "cursor", "ensembles", "rewards", "latency",
                                       "dropped"]
    for key, data in figures:
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert (tmp_path / "png" / f"{key}.png").read_bytes() == png
    assert "No hits" not in page and "no completed trials" not in page
    assert "m42" in page and "2 dropped at the source" in page
    # the calibration's 95 % interval and its warning (a 15-s baseline of 1-s trials is too short to trust)
    cal = json.loads((session_dir / "decoder" / "calibration.json").read_text())
    lo, hi = cal["predicted_hit_rate_ci95"]
    assert lo <= cal["predicted_hit_rate"] <= hi and hi - lo > 0.4 and cal["needed_baseline_s"] > 15.0
    assert f"(95 %: {lo * 100:.0f} %–{hi * 100:.0f} %)" in page
    assert "calibration: the predicted chance hit rate" in page and "record a baseline of about" in page
    warned = [e for e in read_events(session_dir / "decoder" / "events.jsonl") if e.get("kind") == "warning"
              and e.get("code") == "calibration_uncertain"]
    # every calibration's warnings, in order: each block's calibration (its "calibrated" event) has its own
    calibrations = load_session(session_dir).calibrations()
    assert len(calibrations) == 2 and calibrations[-1]["warnings"] == cal["warnings"]
    assert [w["message"] for w in warned] == [w for c in calibrations for w in c["warnings"]]
    assert len(warned) >= 2


def test_report_header_and_caption_agree_on_the_hit_rate_and_round_the_threshold(
        session_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rig.offline.numbers import hit_rate_text

    out = tmp_path / "report.html"
    code, stdout, err = run_cli(["report", str(session_dir), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    page = out.read_text()
    rows = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", page))
    caption = re.search(r'<figure id="hit_rate">.*?<figcaption>([^<]*)</figcaption>', page).group(1)
    events = read_events(session_dir / "decoder" / "events.jsonl", {"trial"})
    hits = sum(1 for e in events if e["event"] == "hit")
    misses = sum(1 for e in events if e["event"] == "miss")
    assert rows["hit rate"] == hit_rate_text(hits, misses) and caption.startswith(rows["hit rate"] + ";")
    assert rows["trials"].endswith(f"{hits + misses} completed")
    threshold = re.search(r"threshold (\S+),", rows["calibration"]).group(1)
    assert len(threshold.lstrip("-0.").replace(".", "")) <= 4, threshold  # 4 significant digits, not 17


def test_summary_is_recomputed_from_the_files(session_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["summary", str(session_dir)], capsys)
    summary = last_json(out)
    assert code == 0
    assert summary["frames"] == N_FRAMES - len(DROPPED)
    assert summary["frames_dropped"] == len(DROPPED)
    events = read_events(session_dir / "decoder" / "events.jsonl", {"trial"})
    assert summary["hits"] == sum(1 for e in events if e["event"] == "hit") > 0
    assert summary["rewards_delivered"] == len(read_events(session_dir / "reward" / "events.jsonl",
                                                           {"reward_outcome"}))
    assert not (session_dir / "summary.json").exists()  # without --write nothing is written


def test_realtime_replay_gives_the_same_decisions(session_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--realtime only paces the frames (here the first second of the session)."""
    path = session_copy / "decoder" / "decisions.rec"
    path.write_bytes(path.read_bytes()[: 30 * read_records(path).dtype.itemsize])
    code, out, err = run_cli(["replay", str(session_copy), "--no-progress", "--realtime", "--from-traces"], capsys)
    result = last_json(out)
    assert (code, result["mismatches"], result["decisions_checked"]) == (0, 0, 30), err


# ---------------------------------------------------------------------------- sessions recorded before the rules


def _strip_to_the_old_layout(folder: Path) -> None:
    """Rewrite a session as the decoder before rules_version wrote it: no new config keys, no new fields."""
    from rig.offline.legacy import ADDED_CALIBRATION_FIELDS, LEGACY_VALUES, without_added_fields

    resolved = json.loads((folder / "config.resolved.json").read_text(encoding="utf-8"))
    for path in LEGACY_VALUES:
        section = resolved
        for name in path[:-1]:
            section = section[name]
        del section[path[-1]]
    write_json_atomic(folder / "config.resolved.json", resolved)
    events = folder / "decoder" / "events.jsonl"
    lines = [without_added_fields(json.loads(line)) for line in events.read_text(encoding="utf-8").splitlines()]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines), encoding="utf-8")
    cal = json.loads((folder / "decoder" / "calibration.json").read_text(encoding="utf-8"))
    write_json_atomic(folder / "decoder" / "calibration.json",
                      {k: v for k, v in cal.items() if k not in ADDED_CALIBRATION_FIELDS})


@pytest.fixture(scope="module")
def old_session(session_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test session as the older decoder would have decided and written it: re-decided with the older rules
    (a what-if replay), then stripped of every key and field that decoder did not write."""
    out_dir = tmp_path_factory.mktemp("old") / "old_layout"
    parser = argparse.ArgumentParser(prog="rig")
    session_cli.register_cli(parser.add_subparsers())
    args = parser.parse_args(["replay", str(session_dir), "--no-progress", "--out", str(out_dir),
                              "--set", "decoder.rules_version=1", "--set", 'decoder.calibration.predict="windows"',
                              "--set", "decoder.bad_frame_flags=[]", "--set", "task.rtb_holds_trials=false",
                              "--set", "decoder.operator_calibrate_off_loop=false"])
    assert args.func(args) == 0
    _strip_to_the_old_layout(out_dir)
    return out_dir


def test_a_session_in_the_old_layout_replays_with_the_rules_it_was_recorded_with(
        old_session: Path, session_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resolved = json.loads((old_session / "config.resolved.json").read_text(encoding="utf-8"))
    assert "bad_frame_flags" not in resolved["decoder"] and "rules_version" not in resolved["decoder"]
    assert "rtb_holds_trials" not in resolved["task"]
    # the older rules decided it: the flagged noise frames moved the cursor (the newer rule holds them)
    old = read_records(old_session / "decoder" / "decisions.rec")
    new = read_records(session_dir / "decoder" / "decisions.rec")
    bad_rows = np.isin(old["frame"], BAD)
    assert np.isfinite(old["dff"][bad_rows]).any() and np.isnan(new["dff"][np.isin(new["frame"], BAD)]).all()
    session = load_session(old_session)
    assert any("rules_version" in note and "older rules" in note for note in session.notes)
    assert session.config.decoder.rules_version == 1 and session.config.decoder.bad_frame_flags == []
    # its neuropil was read at the nearest pixel every frame (a session of today holds it, 0.75 px by default)
    assert session.config.acquisition.extraction.neuropil_hold_px == 0.5
    assert load_session(session_dir).config.acquisition.extraction.neuropil_hold_px == 0.75
    code, out, err = run_cli(["replay", str(old_session), "--no-progress"], capsys)
    result = last_json(out)
    assert code == 0 and result["mismatches"] == 0, err
    assert result["decisions_checked"] == len(old) and result["events_checked"] > 10


def test_without_the_compatibility_path_the_old_session_would_not_replay(old_session: Path) -> None:
    """What replay would do if it read an old session's config with today's defaults: flagged frames are held,
    so the decisions differ from the record there (the test above passes only through rig.offline.legacy)."""
    from rig.offline.replay import check, replay

    session = load_session(old_session)
    raw = json.loads((old_session / "config.resolved.json").read_text(encoding="utf-8"))
    today = config_from_dict(raw, "config.resolved.json without the legacy keys")
    assert today.decoder.rules_version == 2
    report = check(session, replay(session, today, from_traces=True, progress=False))
    assert report.mismatches > 0
    # the first difference is a flagged frame: today's bad-frame rule holds it, the older decoder did not
    first = min(m.frame for m in report.first_mismatches if m.what == "decision")
    recorded = session.decisions
    assert recorded is not None
    flags = int(recorded["flags"][np.flatnonzero(recorded["frame"] == first)[0]])
    assert flags & today.decoder.bad_frame_mask, report.first_mismatches[:3]


def test_the_older_rules_are_for_replay_only(tmp_path: Path) -> None:
    from rig.app.checks import check_config
    from rig.core.settings import ConfigError

    doc = json.loads(json.dumps(CONFIG))
    doc["decoder"].update(rules_version=1, calibration={"predict": "windows"})
    findings = check_config(config_from_dict(doc, "test"), tmp_path).findings
    assert any(f.key == "decoder.rules_version" and f.error for f in findings)
    doc["decoder"]["calibration"] = {}  # rules_version 1 predicted on windows: the task prediction is refused
    with pytest.raises(ConfigError, match="rules_version"):
        config_from_dict(doc, "test")
