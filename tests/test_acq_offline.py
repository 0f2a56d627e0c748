"""``rig process``: the live pipeline run offline on a movie file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from acquisition.offline import main
from acquisition.rois import RoiSet
from tests.test_acq_synth import make_movie


@pytest.fixture(scope="module")
def movie():
    return make_movie(T=40, Ly=96, Lx=96, n_cells=16, max_shift=5.0, seed=31)


def _suite2p_folder(tmp_path, m, with_ref: bool):
    rois = RoiSet(stat=m.stat, iscell=np.ones((len(m.stat), 2)), Ly=96, Lx=96,
                  ref_img=m.reference if with_ref else None)
    rois.iscell[0, 0] = 0  # one non-cell: excluded by default
    return rois.save_suite2p(tmp_path / "suite2p" / "plane0")


def test_process_writes_shifts_and_traces(tmp_path, capsys, movie):
    tifffile.imwrite(tmp_path / "movie.tif", movie.frames)
    folder = _suite2p_folder(tmp_path, movie, with_ref=True)
    out = tmp_path / "out" / "result.npz"
    code = main([str(tmp_path / "movie.tif"), "--rois", str(folder.parent), "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 40 and summary["frames_per_s"] > 0 and summary["rois"] == len(movie.stat) - 1
    res = np.load(out)
    est = np.stack([res["yoff"], res["xoff"]], axis=1)
    assert np.sqrt(((est - movie.shifts) ** 2).mean()) <= 0.25
    assert res["F"].shape == (len(movie.stat) - 1, 40) and res["Fneu"].shape == res["F"].shape
    assert list(res["roi_index"]) == list(range(1, len(movie.stat)))
    assert res["corrXY"].shape == (40,) and res["flags"].shape == (40,)
    assert np.isfinite(res["F"]).all()


def test_process_builds_a_reference_when_none_is_given(tmp_path, capsys, movie):
    np.save(tmp_path / "movie.npy", movie.frames)
    folder = _suite2p_folder(tmp_path, movie, with_ref=False)
    out = tmp_path / "r.npz"
    assert main([str(tmp_path / "movie.npy"), "--rois", str(folder), "--out", str(out), "--no-progress",
                 "--all-rois", "--reference-frames", "30"]) == 0
    res = np.load(out)
    est = np.stack([res["yoff"], res["xoff"]], axis=1)
    offset = (est - movie.shifts).mean(axis=0)  # a built reference sits at the frames' mean position
    assert np.sqrt(((est - offset - movie.shifts) ** 2).mean()) <= 0.35  # 30 noisy frames of 96 px
    assert res["F"].shape[0] == len(movie.stat)
    assert res["refImg"].shape == (96, 96)


def test_process_reports_bad_inputs(tmp_path, capsys, movie):
    np.save(tmp_path / "small.npy", movie.frames[:, :50, :50])
    folder = _suite2p_folder(tmp_path, movie, with_ref=True)
    assert main([str(tmp_path / "small.npy"), "--rois", str(folder), "--out", str(tmp_path / "x.npz")]) == 2
    assert "frames are 50x50" in capsys.readouterr().err
    assert main([str(tmp_path / "small.npy"), "--rois", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "folder not found" in capsys.readouterr().err


def test_process_refines_a_plain_mean_reference_and_says_from_which_frame(tmp_path, capsys, movie):
    np.save(tmp_path / "movie.npy", movie.frames)
    plain = movie.frames.astype(np.float32).mean(axis=0)  # unaligned: motion-blurred
    np.save(tmp_path / "plain.npy", plain)
    folder = _suite2p_folder(tmp_path, movie, with_ref=False)
    out = tmp_path / "r.npz"
    assert main([str(tmp_path / "movie.npy"), "--rois", str(folder), "--out", str(out), "--no-progress",
                 "--ref", str(tmp_path / "plain.npy"), "--refine-reference", "always", "--refine-frames", "15"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    res = np.load(out)
    assert summary["reference_switch_frame"] == int(res["reference_switch_frame"]) == 15
    assert np.array_equal(res["refImg_given"], plain) and not np.array_equal(res["refImg"], plain)
    est = np.stack([res["yoff"], res["xoff"]], axis=1)
    err = est - movie.shifts
    before, after = err[:15], err[15:]
    # the refined reference keeps the given one's coordinates: no jump in the shifts at the switch
    assert np.all(np.abs(before.mean(axis=0) - after.mean(axis=0)) <= 0.3)
    assert np.sqrt(((after - after.mean(axis=0)) ** 2).sum(axis=1).mean()) <= 0.25
