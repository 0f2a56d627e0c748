"""Movie frames the writer could not keep are never silent: warned at once, listed in ``movie_gaps.rec``,
counted in the summary (``movie_frames_lost``), a problem above 1 %, and skipped by ``rig detect`` exactly.

The acquisition's own saver runs in-process with a disk that stalls until the test opens it (a gated sink,
no sleeps); the session around it is the few files tests/test_session_problems.py builds.
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from acquisition.movie_saver import MovieSaver, MovieSettings
from rig.core.movie_file import GAP_LOST, GAP_WRONG_SHAPE, GAPS_FILE, MOVIE_GAP_DTYPE
from rig.core.store import EventLog, RecordWriter, read_records
from rig.offline.detect import open_baseline, prepare
from rig.offline.problems import MOVIE_LOST_FRACTION, session_problems, with_outcome
from rig.offline.summary import summarize_session
from tests.conftest import wait_for
from tests.test_movie_file import GatedSink
from tests.test_session_offline import DROPPED, HEIGHT, N_FRAMES, WIDTH, build_session, last_json, run_cli
from tests.test_session_problems import TRIALS, make_session

SHAPE = (32, 32)
LOST = 6


def _frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(100, 3000, SHAPE).astype(np.uint16)


def test_frames_a_stalled_writer_loses_are_warned_listed_counted_judged_and_skipped(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    warnings: list[tuple[str, str]] = []
    sink = GatedSink()
    events = EventLog(run / "events.jsonl")
    saver = MovieSaver(run, SHAPE, MovieSettings("zstd", chunk_s=0.067, flush_interval_s=0.01), 30.0, "test",
                       lambda code, message: warnings.append((code, message)), events, sink=sink)
    saver.save(0, np.ones((16, 16), np.uint16))  # a frame of the wrong size before the first good one
    saver.save(1, _frame(1))
    assert sink.entered.wait(10.0), "the first chunk never reached the (stalled) disk"
    number = 2
    while saver.frames_lost < LOST:  # the ring fills, then frames are lost
        saver.save(number, np.zeros(SHAPE, np.uint16) if number == 5 else _frame(number))  # 5: a dark frame
        number += 1
    assert [code for code, _ in warnings] == ["movie_frames_lost"]  # said at once, and once (rate-limited)
    assert "1 of" in warnings[0][1] and "LOST" in warnings[0][1]
    sink.gate.set()
    wait_for(lambda: saver.writer is not None and saver.writer.pending() == 0, 10.0, "the backlog written")
    saver.save(number, _frame(number))  # the next frame after the backlog: the switch to raw chunks is said
    number += 1
    assert [code for code, _ in warnings] == ["movie_frames_lost", "movie_uncompressed"]
    saver.close()
    events.close()
    n_movie = saver.index

    gaps = read_records(run / GAPS_FILE)
    assert gaps["index"][0] == 0 and gaps["reason"][0] == GAP_WRONG_SHAPE and gaps["frame"][0] == 0
    lost = gaps[gaps["reason"] == GAP_LOST]
    assert len(lost) == LOST and lost["index"].tolist() == list(range(n_movie - 1 - LOST, n_movie - 1))

    folder = make_session(tmp_path / "s", flags=[0] * n_movie, trial_events=TRIALS)
    acq = folder / "acquisition"
    for name in ("movie.json", "movie.zchunks", GAPS_FILE, GAPS_FILE + ".json"):
        shutil.copy(run / name, acq / name)
    with open(acq / "events.jsonl", "a", encoding="utf-8") as log:
        log.write((run / "events.jsonl").read_text(encoding="utf-8"))

    summary = summarize_session(folder)
    assert summary["movie_frames_lost"] == LOST and summary["movie_raw_chunks"] >= 1
    problems = session_problems(folder, summary, "duration of 60 s reached")
    assert len(problems) == 1 and problems[0].startswith(f"{LOST} of {n_movie} movie frames")
    assert with_outcome(summary, {"stop_reason": "duration"}, problems)["ok"] is False
    few = int(MOVIE_LOST_FRACTION * n_movie)  # at the threshold: not a problem
    assert session_problems(folder, {**summary, "movie_frames_lost": few}, "duration of 60 s reached") == []

    base = open_baseline(folder)
    job = json.loads(prepare(base, tmp_path / "det", 30.0).read_text(encoding="utf-8"))
    index = np.load(tmp_path / "det" / "frame_index.npy").tolist()
    skipped = {0, *lost["index"].tolist()}
    assert index == [i for i in range(n_movie) if i not in skipped]  # exactly the listed ones ...
    assert 5 in index  # ... so the dark frame (frame 5, movie index 5) is kept: no guessing from zeros
    assert job["blank_frames"] == 1 + LOST


def test_replay_takes_the_live_rows_of_the_frames_the_movie_lost(tmp_path, capsys):
    """Zeros where the writer lost frames would re-register as garbage; listed in movie_gaps.rec, the replay
    takes those frames' live rows and matches the session again."""
    folder = build_session(tmp_path / "20250601-100000_m42_testrig")
    acq = folder / "acquisition"
    movie = np.memmap(acq / "movie.raw", np.uint16, mode="r+").reshape(-1, HEIGHT, WIDTH)
    lost = list(range(300, 306))
    movie[lost] = 0
    movie.flush()
    del movie
    code, out, _ = run_cli(["replay", str(folder), "--no-progress"], capsys)
    assert code != 0 and last_json(out)["mismatches"] > 0  # without the record the zeros are taken for frames
    frames = read_records(acq / "frames.rec")
    gaps = RecordWriter(acq / GAPS_FILE, MOVIE_GAP_DTYPE)
    for i in lost:
        gaps.append(index=i, frame=int(frames["frame"][i]), reason=GAP_LOST)
    gaps.close()
    code, out, err = run_cli(["replay", str(folder), "--no-progress"], capsys)
    result = last_json(out)
    assert result["mismatches"] == 0 and code == 0, err
    assert result["traces_checked"] == N_FRAMES - len(DROPPED)


def test_the_replay_moves_the_registrar_over_a_lost_frame_as_the_live_pipeline_moved():
    """``rig replay``'s step for a frame the movie lost (``_observe_lost_frame``) on the real pipeline, fed the
    rows ``frames.rec`` holds (float32 shifts): the frames after the gap get the live F and Fneu bit for bit.
    Without it they differ (the tracked crop sat where the frame before the gap left it); a lost frame the live
    pipeline did not register (unusable, or no shift) moves nothing."""
    from acquisition.config import RegistrationConfig
    from acquisition.pipeline import FramePipeline
    from acquisition.recording import frame_record_dtype
    from acquisition.rois import RoiSet
    from acquisition.validate import FrameFlag
    from rig.offline.replay import _observe_lost_frame
    from tests.test_acq_synth import make_movie

    movie = make_movie(T=40, Ly=256, Lx=256, n_cells=20, max_shift=6.0, seed=5)
    rois = RoiSet(stat=movie.stat, iscell=np.ones((len(movie.stat), 2)), Ly=256, Lx=256)

    def pipeline() -> FramePipeline:  # 4x binning at 256 px: the fine crop, so tracking, is on
        return FramePipeline(rois, reference=movie.reference,
                             registration=RegistrationConfig(bin_factor=4, quality_frames=10))

    live = pipeline()
    rows = np.zeros(len(movie.frames), frame_record_dtype(rois.n_rois))
    for i, frame in enumerate(movie.frames):
        r = live.process(frame)
        rows[i]["dy"], rows[i]["dx"], rows[i]["corr"], rows[i]["flags"] = r.dy, r.dx, r.corr, int(r.flags)
        rows[i]["F"], rows[i]["Fneu"] = r.F, r.Fneu
    whole = np.rint(np.stack([rows["dy"], rows["dx"]], axis=1)).astype(int)
    # two frames lost where the whole-pixel shift changed across them, so where the tracked crop sits matters
    gap = next(i for i in range(12, len(rows) - 3) if (whole[i - 1] != whole[i + 1]).any())
    lost = (gap, gap + 1)

    def replay(observe: bool) -> np.ndarray:
        pipe = pipeline()
        out = rows.copy()
        for i, frame in enumerate(movie.frames):
            if i in lost:
                if observe:
                    _observe_lost_frame(pipe, rows[i])
                continue
            r = pipe.process(frame)
            out[i]["F"], out[i]["Fneu"] = r.F, r.Fneu
        return out

    kept = [i for i in range(len(rows)) if i not in lost]
    replayed = replay(observe=True)
    assert (replayed["F"][kept] == rows["F"][kept]).all() and (replayed["Fneu"][kept] == rows["Fneu"][kept]).all()
    unobserved = replay(observe=False)
    assert not (unobserved["F"][gap + 2:] == rows["F"][gap + 2:]).all()

    # a lost frame the live pipeline could not use moves nothing: the next frame is as if it never was
    for bad in ({"flags": int(FrameFlag.ALL_ZERO)}, {"flags": int(FrameFlag.NOT_REGISTERED)}, {"dy": np.nan}):
        moved, untouched = pipeline(), pipeline()
        for pipe in (moved, untouched):
            for frame in movie.frames[:gap]:
                pipe.process(frame)
        row = rows[gap].copy()
        for name, value in bad.items():
            row[name] = value
        _observe_lost_frame(moved, row)
        assert (moved.process(movie.frames[gap + 1]).F == untouched.process(movie.frames[gap + 1]).F).all(), bad
