"""rig bench: --set acquisition.sim.* reaches the scope twin's renderer; --repeat shares one rendering; output paths."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from rig.offline import bench
from tests.test_bench_summary import fake_result

SMALL = ["--size", "64", "--rois", "6", "--twin-frames", "3", "--no-progress"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    args.rate = args.rate or (1000.0 if args.mode == "fast" else 30.0)  # as cmd_bench does
    return args


def test_set_sim_overrides_reach_the_twins_renderer(tmp_path):
    args = parse([*SMALL, "--scope", "zmq", "--set", "acquisition.sim.n_planes=2",
                  "--set", "acquisition.sim.height_px=72", "--set", "acquisition.frame_rate_hz=20"])
    plan = bench.plan_bench(args, tmp_path)
    frames = np.load(plan.twin.frames)
    assert plan.twin.planes == 2 and frames.shape == (6, 72, 64)  # 3 volumes of 2 planes, the --set height
    assert (plan.twin.rois.parent / "plane1" / "stat.npy").is_file() and plan.twin_rate_hz == 20.0
    overrides, sender = plan.overrides(args)
    assert "acquisition.zmq_stream.height_px=72" in overrides and "acquisition.n_planes=2" in overrides
    assert overrides[-3:] == args.set and sender.proc.pid is None  # --set last; the sender starts with the rig
    plan.cleanup()
    assert not plan.twin.frames.exists() and not (plan.twin.rois / "data.bin").exists()
    assert (plan.twin.rois / "stat.npy").is_file()  # the ROIs stay: the sessions' configs name them


def test_a_generated_replay_movie_does_not_outlive_the_runs(tmp_path):
    args = parse(["--mode", "throughput", "--frames", "4", "--size", "64", "--rois", "6", "--no-progress"])
    plan = bench.plan_bench(args, tmp_path)
    movie = tmp_path / "movie"
    assert (movie / "movie.tif").is_file() and (movie / "suite2p" / "plane0" / "data.bin").is_file()
    plan.cleanup()
    assert not (movie / "movie.tif").exists() and not (movie / "suite2p" / "plane0" / "data.bin").exists()


def test_the_base_configs_sim_settings_reach_the_twin(tmp_path):
    """The twin renders what the rig's config says (sim.toml's seed), not the simulator's defaults."""
    base = parse(SMALL)
    other = parse([*SMALL, "--set", "acquisition.sim.seed=7"])
    movies = [np.load(bench.plan_bench(a, tmp_path / name).twin.frames) for a, name in ((base, "a"), (other, "b"))]
    assert bench.resolved_sim(base.config, [], []).sim.seed == 1  # hardware_configs/sim.toml
    assert not np.array_equal(*movies)


def test_a_cloose_twin_of_two_planes_is_refused_before_rendering(tmp_path):
    with pytest.raises(SystemExit, match="use --scope zmq"):
        bench.plan_bench(parse([*SMALL, "--set", "acquisition.sim.n_planes=2"]), tmp_path)
    assert not (tmp_path / "twin").exists()


def test_output_paths(tmp_path):
    runs, summary = bench.output_paths(parse(["--json", str(tmp_path / "x.json")]))
    assert runs == [tmp_path / "x.json"] and summary == tmp_path / "x-summary.json"
    runs, summary = bench.output_paths(parse(["--repeat", "2", "--json", str(tmp_path / "x.json")]))
    assert runs == [tmp_path / "x-run1.json", tmp_path / "x-run2.json"] and summary == tmp_path / "x-summary.json"
    runs, summary = bench.output_paths(parse(["--mode", "fast", "--repeat", "3"]))
    assert len(runs) == 3 and runs[2].name.endswith("-run3.json") and runs[0].parent == Path("bench_results")
    assert summary.name.startswith("bench-fast-") and summary.name.endswith("-summary.json")


def test_repeat_runs_a_fresh_rig_each_time_on_the_same_frames(tmp_path, monkeypatch, capsys):
    """The rig itself is replaced by a stand-in here (a real run is minutes); what --repeat does around it is real."""
    seen = []

    def fake_run(args, plan, run):
        overrides, sender = plan.overrides(args)
        seen.append((run, plan.twin.frames, plan.twin.frames.is_file(), sender))
        return fake_result(p50=[1.5, 2.5, 1.8][run], console=False, size=64, rois=6)

    monkeypatch.setattr(bench, "run_bench", fake_run)
    args = parse([*SMALL, "--repeat", "3", "--target", "--json", str(tmp_path / "out" / "b.json")])
    assert bench.cmd_bench(args) == 3  # run 2 misses the p50 target
    assert [run for run, *_ in seen] == [0, 1, 2]
    assert len({frames for _, frames, _, _ in seen}) == 1 and all(exists for _, _, exists, _ in seen)
    assert len({id(sender) for *_, sender in seen}) == 3  # a sender per run
    assert not seen[0][1].exists()  # removed once every run is done
    out = capsys.readouterr().out.splitlines()
    summary_path = Path(out[-1])
    assert summary_path == tmp_path / "out" / "b-summary.json"
    summary = json.loads(summary_path.read_text())
    assert [r["targets_met"] for r in summary["runs"]] == [True, False, True]
    assert summary["median"]["decision_p50_ms"] == 1.8
    assert "console not attached" in summary["target_conditions_differ"]
    for k in (1, 2, 3):
        run = json.loads((tmp_path / "out" / f"b-run{k}.json").read_text())
        assert run["headline"]["decision_p50_ms"] == [1.5, 2.5, 1.8][k - 1] and len(run["targets"]) == 4
    assert any(line.startswith("[bench] run 2: dec p50 2.50") for line in out)
    args.target = False
    assert bench.cmd_bench(args) == 0  # without --target, missed targets do not fail the command
