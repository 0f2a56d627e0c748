"""``rig sim --export DIR --frames N``: a synthetic movie with its ground truth, for offline use."""

from __future__ import annotations

import argparse
import json

import numpy as np
import tifffile

from rig.app.sim_cli import register_cli


def run_sim(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rig")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim", *argv])
    return args.func(args)


def test_export_writes_tiff_binary_and_truth(tmp_path, capsys):
    out = tmp_path / "movie"
    code = run_sim([
        "--export", str(out), "--frames", "12", "--seed", "3", "--no-progress",
        "--set", "acquisition.sim.height_px=64", "--set", "acquisition.sim.width_px=80",
        "--set", "acquisition.sim.n_cells=8", "--set", "acquisition.frame_rate_hz=20.0",
    ])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] and summary["frames"] == 12 and summary["shape"] == [64, 80]
    assert summary["frame_rate_hz"] == 20.0 and summary["seed"] == 3

    movie = tifffile.imread(out / "movie.tif")
    assert movie.shape == (12, 64, 80) and movie.dtype == np.uint16
    plane = out / "suite2p" / "plane0"
    binary = np.fromfile(plane / "data.bin", dtype=np.int16).reshape(12, 64, 80)
    np.testing.assert_array_equal(binary, np.minimum(movie, 32767).astype(np.int16))

    ops = np.load(plane / "ops.npy", allow_pickle=True).item()
    assert ops["nframes"] == 12 and ops["fs"] == 20.0 and ops["reg_file"].endswith("data.bin")
    np.testing.assert_allclose(ops["meanImg"], movie.mean(0), rtol=1e-5)
    stat = np.load(plane / "stat.npy", allow_pickle=True)
    assert len(stat) == 8 and np.load(plane / "iscell.npy").shape == (8, 2)
    truth = np.load(out / "ground_truth.npz")
    assert truth["shifts"].shape == (12, 2) and truth["spikes"].shape == (12, 8)


def test_export_is_reproducible_with_a_seed(tmp_path, capsys):
    common = ["--frames", "4", "--no-progress", "--set", "acquisition.sim.height_px=64",
              "--set", "acquisition.sim.width_px=64", "--set", "acquisition.sim.n_cells=4"]
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert run_sim(["--export", str(tmp_path / name), "--seed", seed, *common]) == 0
    a, b, c = (tifffile.imread(tmp_path / n / "movie.tif") for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_export_reports_bad_config_in_json(tmp_path, capsys):
    code = run_sim(["--export", str(tmp_path / "x"), "--frames", "3", "--no-progress",
                    "--set", "acquisition.sim.n_cells=0"])
    assert code == 2
    captured = capsys.readouterr()
    assert "n_cells" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["ok"] is False
    assert run_sim(["--export", str(tmp_path / "y"), "--frames", "0"]) == 2


def test_export_reads_a_rig_config_file(tmp_path, capsys):
    toml = tmp_path / "rig.toml"
    toml.write_text("[acquisition]\nframe_rate_hz = 12.5\n[acquisition.sim]\nheight_px = 64\nwidth_px = 64\n"
                    "n_cells = 3\nindicator = \"8m\"\n")
    assert run_sim(["--export", str(tmp_path / "m"), "--frames", "2", "--config", str(toml), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["shape"] == [64, 64] and summary["frame_rate_hz"] == 12.5 and summary["indicator"] == "8m"
