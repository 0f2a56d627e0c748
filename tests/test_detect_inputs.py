"""`rig detect`'s inputs and refusals, and the pure parts of picking ensembles (no suite2p run here: the one
real run is tests/test_detect_day_one.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from acquisition.rois import load_suite2p
from gui.ensemble_file import ConfigWriteError, read_choice, set_toml_values, write_choice
from gui.ranking import EnsembleChoiceError, RankSettings, cell_stats, check_choice, problems, suggest
from gui.roi_folder import disk_roi, load_roi_folder, moved_roi, save_rois, traces
from rig.offline import detect as detect_mod
from rig.offline.detect import DetectError, detect, open_baseline, prepare


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rig.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _tiff(path: Path, n: int, shape: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(100, 40_000, (n, *shape)).astype(np.uint16)
    tifffile.imwrite(path, frames)
    return frames


def _suite2p_bin(folder: Path, n: int, fs: float, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    folder.mkdir(parents=True)
    frames = np.random.default_rng(1).integers(0, 3000, (n, *shape)).astype(np.int16)
    frames.tofile(folder / "data.bin")
    ops = {"Ly": shape[0], "Lx": shape[1], "fs": fs, "meanImg": frames.mean(0).astype(np.float32)}
    np.save(folder / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    return frames


def test_a_missing_extra_names_the_install_command(monkeypatch, tmp_path):
    _tiff(tmp_path / "m.tif", 10)
    monkeypatch.setattr(detect_mod, "suite2p_available", lambda: False)
    with pytest.raises(DetectError, match=r'pip install -e "\.\[suite2p\]"'):
        detect(tmp_path / "m.tif", fs=30.0)


def test_too_few_frames_is_refused_with_the_numbers(tmp_path):
    _tiff(tmp_path / "short.tif", 120)
    with pytest.raises(DetectError) as err:
        detect(tmp_path / "short.tif", fs=30.0, progress=False)
    msg = str(err.value)
    # 15 bins of round(0.683 s x 30 Hz) = 20 frames -> 300 frames = 10 s
    assert "too few frames" in msg and "120 frames (4.0 s at 30 Hz)" in msg and "at least 300 frames (10.0 s" in msg


def test_a_frame_rate_that_disagrees_with_the_movie_is_refused(tmp_path):
    _suite2p_bin(tmp_path / "plane0", 400, fs=30.0)
    with pytest.raises(DetectError) as err:
        detect(tmp_path / "plane0", fs=15.0, progress=False)
    msg = str(err.value)
    assert "wrong frame rate" in msg and "30 Hz" in msg and "--fs is 15 Hz" in msg and "50 %" in msg


def test_an_unknown_or_impossible_frame_rate_is_refused(tmp_path):
    _tiff(tmp_path / "m.tif", 400)
    with pytest.raises(DetectError, match="does not say its frame rate: give it with --fs"):
        detect(tmp_path / "m.tif", progress=False)
    with pytest.raises(DetectError, match="3000 Hz is outside the 0.5-500 Hz"):
        detect(tmp_path / "m.tif", fs=3000.0, progress=False)


def test_a_tiff_and_a_suite2p_binary_become_suite2p_s_int16_binary(tmp_path):
    frames = _tiff(tmp_path / "m.tif", 12)
    base = open_baseline(tmp_path / "m.tif")
    job = json.loads(prepare(base, tmp_path / "out", 30.0).read_text())
    written = np.fromfile(Path(job["plane"]) / "data.bin", np.int16).reshape(12, 32, 32)
    np.testing.assert_array_equal(written, np.minimum(frames, 32767).astype(np.int16))
    assert job["clipped_pixels"] == int((frames > 32767).sum()) > 0
    assert (job["fs"], job["tau"], job["diameter"], job["algorithm"]) == (30.0, 0.683, 12.0, "sourcery")
    raw = _suite2p_bin(tmp_path / "s2p" / "suite2p" / "plane0", 20, fs=10.0)
    base = open_baseline(tmp_path / "s2p")
    assert base.fs == 10.0 and base.default_out == tmp_path / "s2p" / "suite2p" / "plane0" / "detect"
    job = json.loads(prepare(base, tmp_path / "out2", 10.0).read_text())
    np.testing.assert_array_equal(np.fromfile(Path(job["plane"]) / "data.bin", np.int16).reshape(20, 32, 32), raw)


def test_frames_the_rig_lost_are_left_out_and_too_many_of_them_refused(tmp_path):
    """The rig writes a frame it lost (a disk that fell behind) as zeros; suite2p would build its reference
    from them (blank frames correlate perfectly), so they never reach its binary."""
    frames = np.random.default_rng(2).integers(100, 3000, (330, 32, 32)).astype(np.uint16)
    lost = [0, 5, 6, 7, 100, 329]
    frames[lost] = 0
    tifffile.imwrite(tmp_path / "m.tif", frames)
    base = open_baseline(tmp_path / "m.tif")
    job = json.loads(prepare(base, tmp_path / "out", 30.0, max_frames=50).read_text())
    index = np.load(tmp_path / "out" / "frame_index.npy")
    assert job["nframes"] == 50 and job["blank_frames"] == 4 and index.tolist() == [1, 2, 3, 4, *range(8, 54)]
    written = np.fromfile(Path(job["plane"]) / "data.bin", np.int16).reshape(50, 32, 32)
    np.testing.assert_array_equal(written, frames[index].astype(np.int16))
    with pytest.raises(DetectError) as err:  # 330 frames, 324 usable: fewer than the 300 + 30 = 330 asked for
        detect(tmp_path / "m.tif", tmp_path / "out2", fs=30.0, progress=False,
               config=_config(tmp_path, "[detect]\nmin_frames = 330\n"))
    assert "too few usable frames for detection: 324 after leaving out 6 all-zero frames" in str(err.value)
    assert "at least 330" in str(err.value)


def test_a_detection_that_finds_nothing_says_so_with_the_settings(monkeypatch, tmp_path):
    """suite2p's own "no ROIs" ends the worker with its exit code; the parent turns it into one clear line."""
    _suite2p_bin(tmp_path / "plane0", 400, fs=30.0)
    stub = tmp_path / "stub.py"
    stub.write_text("import sys\nfrom rig.offline.detect_worker import emit, EXIT_NO_ROIS\n"
                    "emit(stage='detection')\nemit(error='no_rois', message='no ROIs were found')\n"
                    "sys.exit(EXIT_NO_ROIS)\n")
    real_popen = detect_mod.subprocess.Popen
    monkeypatch.setattr(detect_mod.subprocess, "Popen",
                        lambda args, **kw: real_popen([sys.executable, str(stub)], **kw))
    monkeypatch.setattr(detect_mod, "suite2p_available", lambda: True)
    with pytest.raises(DetectError) as err:
        detect(tmp_path / "plane0", progress=False)
    msg = str(err.value)
    assert "found no cells in 400 frames (13.3 s at 30 Hz)" in msg and "diameter 12 px" in msg
    assert "threshold_scaling 1.5" in msg


# ---------------------------------------------------------------- ranking


def _traces(seed: int = 0, T: int = 1800, fs: float = 30.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """6 ROIs: 0-3 active at different rates, 4 silent, 5 active but with F0 below the noise floor."""
    rng = np.random.default_rng(seed)
    F = 200.0 + rng.normal(0, 5.0, (6, T))
    rates_hz = [0.5, 0.3, 0.2, 0.1, 0.0, 0.5]
    kernel = np.exp(-np.arange(int(2 * fs)) / (0.7 * fs))
    for i, r in enumerate(rates_hz):
        spikes = rng.random(T) < r / fs
        F[i] += 150.0 * np.convolve(spikes, kernel)[:T]
    F[5] -= 198.0  # F0 ~ 2, noise sd 5: below 3 sd
    centers = np.array([[10, 10], [10, 60], [60, 10], [60, 60], [100, 100], [10, 100]], float)
    return F, np.zeros_like(F), centers


def test_cells_are_ranked_by_snr_and_activity_and_a_dim_one_is_refused_with_its_numbers():
    F, Fneu, centers = _traces()
    stats = cell_stats(F, Fneu, centers, 30.0)
    assert list(stats.ranked()[:4]) == [0, 1, 2, 3]
    assert stats.event_rate_per_min[4] < 1 and stats.score[4] < stats.score[3]
    assert 20 < stats.event_rate_per_min[0] < 40  # ~0.5 Hz of events = 30 / min
    assert stats.score[5] == 0 and not stats.above_floor(5)
    with pytest.raises(EnsembleChoiceError) as err:
        check_choice(stats, [0, 5], [1])
    msg = str(err.value)
    assert "up ROI 5: F0 = " in msg and "below the noise floor" in msg and "3 x noise sd" in msg
    assert f"{stats.noise_floor[5]:.3g}" in msg and "decoder.f0_floor = 1" in msg
    check_choice(stats, [0], [1])


def test_suggest_keeps_members_apart_and_uncorrelated_across_ensembles():
    F, Fneu, centers = _traces()
    F[1] = F[0] + np.random.default_rng(3).normal(0, 1.0, F.shape[1])  # 1 copies 0
    centers[2] = centers[0] + [3.0, 0.0]  # 2 sits on 0
    stats = cell_stats(F, Fneu, centers, 30.0)
    up, down = suggest(stats, 2, 2, RankSettings())
    assert 5 not in up + down and 2 not in up + down
    assert not ({0, 1} <= set(up) | set(down) and (0 in up) != (1 in up))  # never split across ensembles
    lines = problems(stats, [0, 2], [1])
    assert any("ROIs 0 and 2 are 3.0 px apart" in line for line in lines)
    assert any("up ROI 0 and down ROI 1 correlate at r = " in line for line in lines)


def test_the_reference_record_says_where_the_reference_sits_and_flags_failed_registration(tmp_path):
    from rig.offline.detect import reference_record  # noqa: PLC0415

    plane = tmp_path / "plane0"
    plane.mkdir()
    yoff = np.array([-17.0, -16.0, -17.0, -18.0, -17.0])
    xoff = np.array([2.0, 1.0, 2.0, 26.0, 2.0])  # one frame at the 26-px bound of a 256-px field
    np.save(plane / "ops.npy", np.array({"Ly": 256, "Lx": 300, "registration": {"maxregshift": 0.1}}, dtype=object),
            allow_pickle=True)
    np.save(plane / "reg_outputs.npy", np.array({"yoff": yoff, "xoff": xoff}, dtype=object), allow_pickle=True)
    record = reference_record(plane)
    assert record["offset_px"] == [-17.0, 2.0] and record["search_limit_px"] == 26
    assert record["shifts_at_limit"] == 1 and record["shift_range_px"] == [[-18.0, -16.0], [1.0, 26.0]]
    (plane / "reg_outputs.npy").unlink()  # nor in ops.npy: said, not guessed
    with pytest.raises(DetectError, match="yoff/xoff"):
        reference_record(plane)


def test_the_suggest_limits_are_config_keys_checked_at_load(tmp_path):
    from rig.app.config import ConfigError, load_config  # noqa: PLC0415
    from rig.offline.rank_cli import _settings  # noqa: PLC0415

    good = tmp_path / "good.toml"
    good.write_text("[detect]\nsuggest_min_distance_px = 35.5\nsuggest_max_corr = 0.1\n", encoding="utf-8")
    settings = _settings(load_config(good))
    assert (settings.min_distance_px, settings.max_corr) == (35.5, 0.1)
    F, Fneu, centers = _traces()
    centers[2] = centers[0] + [30.0, 0.0]  # 30 px: far enough at the default 20 px, too close at 35.5
    stats = cell_stats(F, Fneu, centers, 30.0)
    assert {0, 2} <= set(sum(suggest(stats, 3, 3, RankSettings()), []))
    assert not {0, 2} <= set(sum(suggest(stats, 3, 3, settings), []))
    for text, key in (("suggest_max_corr = 1.5", "suggest_max_corr"), ("suggest_min_distance_px = -1",
                                                                        "suggest_min_distance_px"),
                      ('suggest_max_corr = "low"', "suggest_max_corr")):
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[detect]\n{text}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=rf"bad\.toml: \[detect\.{key}\]"):
            load_config(bad)


# ---------------------------------------------------------------- config and ROI files


def test_the_choice_is_written_into_the_config_keeping_its_comments(tmp_path):
    text = "# my rig\n[decoder]\ndecoder = \"two_population\"\nup = [0, 1]  # old\n\n[task]\nbaseline_s = 30.0\n"
    out = set_toml_values(text, {("decoder", "up"): [4, 7], ("decoder", "down"): [2],
                                 ("acquisition.rois", "suite2p_dir"): "C:\\rig\\plane0"})
    assert "# my rig" in out and "up = [4, 7]  # old" in out and "down = [2]" in out
    assert 'suite2p_dir = "C:\\\\rig\\\\plane0"' in out
    with pytest.raises(ConfigWriteError, match="line 3: \\[decoder\\] up spans several lines"):
        set_toml_values("[decoder]\n\nup = [\n 1,\n]\n", {("decoder", "up"): [2]}, "rig.toml")
    config = tmp_path / "rig.toml"
    config.write_text(text)
    (tmp_path / "plane0").mkdir()
    write_choice(config, tmp_path / "plane0", [3], [5], {"note": "x"})
    assert read_choice(tmp_path / "plane0") == ([3], [5])
    assert "up = [3]" in config.read_text()


def test_hand_drawn_rois_travel_the_suite2p_path(tmp_path):
    plane = tmp_path / "suite2p" / "plane0"
    movie = _suite2p_bin(plane, 50, fs=30.0, shape=(40, 48))
    rf = load_roi_folder(tmp_path)
    assert rf.n == 0 and rf.fs == 30.0
    rf.stat.append(disk_roi(10, 12, 4, rf.Ly, rf.Lx))
    rf.stat.append(moved_roi(disk_roi(30, 30, 3, rf.Ly, rf.Lx), 2, -20, rf.Ly, rf.Lx))
    rf.iscell = np.ones((2, 2))
    save_rois(rf)
    rois = load_suite2p(tmp_path)  # the acquisition process's own loader
    assert rois.n_rois == 2 and (rois.Ly, rois.Lx) == (40, 48)
    assert rois.stat[1]["med"] == [32, 10] and rois.stat[0]["npix"] == len(rois.stat[0]["ypix"])
    F, _ = traces(load_roi_folder(tmp_path))
    s = rois.stat[0]
    np.testing.assert_allclose(F[0], movie[:, s["ypix"], s["xpix"]].mean(axis=1), rtol=1e-5)
