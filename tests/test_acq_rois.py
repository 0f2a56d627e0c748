"""Loading suite2p output in both ops layouts, without suite2p; clear errors for bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acquisition.rois import RoiFileError, RoiSet, load_suite2p, normalise_ops


def _stat(n: int = 4, Ly: int = 40, Lx: int = 50) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        cy, cx = rng.integers(5, Ly - 5), rng.integers(5, Lx - 5)
        yy, xx = np.mgrid[cy - 2:cy + 3, cx - 2:cx + 3]
        out.append({"ypix": yy.ravel(), "xpix": xx.ravel(), "lam": rng.random(25).astype(np.float32),
                    "med": [int(cy), int(cx)], "npix": 25, "radius": 2.5, "overlap": np.zeros(25, bool)})
    return out


def _write(folder: Path, stat: list[dict], iscell: np.ndarray, ops: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.empty(len(stat), dtype=object)
    arr[:] = stat
    np.save(folder / "stat.npy", arr, allow_pickle=True)
    np.save(folder / "iscell.npy", iscell)
    np.save(folder / "ops.npy", ops, allow_pickle=True)
    return folder


REF = np.arange(40 * 50, dtype=np.int16).reshape(40, 50)


def test_flat_0x_ops_layout(tmp_path):
    ops = {"Ly": 40, "Lx": 50, "refImg": REF, "meanImg": REF.astype(np.float32), "maxregshift": 0.2,
           "smooth_sigma": 2.0, "spatial_taper": 5.0, "inner_neuropil_radius": 3, "fs": 15.0}
    iscell = np.array([[1, 0.9], [0, 0.2], [1, 0.7], [0, 0.1]])
    rois = load_suite2p(_write(tmp_path / "suite2p" / "plane0", _stat(), iscell, ops))
    assert (rois.Ly, rois.Lx) == (40, 50)
    assert rois.ops["maxregshift"] == 0.2 and rois.ops["smooth_sigma"] == 2.0
    assert rois.ops["inner_neuropil_radius"] == 3
    np.testing.assert_array_equal(rois.ref_img, REF)
    assert rois.n_rois == 4


def test_nested_1x_ops_layout_and_parent_folder(tmp_path):
    ops = {"Ly": 40, "Lx": 50, "refImg": REF, "meanImg": REF, "fs": 30.0, "batch_size": 500,
           "registration": {"maxregshift": 0.15, "smooth_sigma": 1.5, "spatial_taper": 3.0, "batch_size": 100,
                            "block_size": [128, 128]},
           "detection": {"block_size": [64, 64]},
           "extraction": {"min_neuropil_pixels": 300, "inner_neuropil_radius": 2}}
    _write(tmp_path / "suite2p" / "plane0", _stat(), np.ones((4, 2)), ops)
    rois = load_suite2p(tmp_path / "suite2p")  # the parent of plane0
    assert rois.ops["maxregshift"] == 0.15 and rois.ops["spatial_taper"] == 3.0
    assert rois.ops["min_neuropil_pixels"] == 300
    assert rois.ops["block_size"] == [128, 128]  # registration wins a clash with detection
    assert "registration" not in rois.ops
    assert load_suite2p(tmp_path).n_rois == 4  # the folder above suite2p/ works too


def test_1x_refimg_from_reg_outputs_when_ops_lacks_it(tmp_path):
    folder = _write(tmp_path / "plane0", _stat(), np.ones((4, 2)), {"Ly": 40, "Lx": 50})
    np.save(folder / "reg_outputs.npy", {"refImg": REF, "yoff": np.zeros(3)}, allow_pickle=True)
    rois = load_suite2p(folder)
    np.testing.assert_array_equal(rois.ref_img, REF)


def test_missing_defaults_filled_with_suite2p_values():
    ops = normalise_ops({"Ly": 10, "Lx": 10})
    assert ops["maxregshift"] == 0.1 and ops["smooth_sigma"] == 1.15 and ops["spatial_taper"] == 3.45
    assert ops["min_neuropil_pixels"] == 350


def test_save_and_load_round_trip_in_nested_layout(tmp_path):
    stat = _stat()
    rois = RoiSet(stat=stat, iscell=np.array([[1, 0.9], [0, 0.2], [1, 0.7], [1, 0.6]]), Ly=40, Lx=50,
                  ref_img=REF.astype(np.float32), ops={"maxregshift": 0.12, "min_neuropil_pixels": 200})
    cells = rois.cells_only()
    assert cells.n_rois == 3 and list(cells.source_index) == [0, 2, 3]
    cells.save_suite2p(tmp_path / "out")
    raw = np.load(tmp_path / "out" / "ops.npy", allow_pickle=True).item()
    assert raw["registration"]["maxregshift"] == 0.12 and raw["extraction"]["min_neuropil_pixels"] == 200
    back = load_suite2p(tmp_path / "out")
    assert back.n_rois == 4  # the excluded ROI is written as a non-cell
    again = back.cells_only()
    assert again.n_rois == 3 and len(again.excluded_stat) == 1
    np.testing.assert_array_equal(again.stat[1]["ypix"], stat[2]["ypix"])
    np.testing.assert_array_equal(back.ref_img, REF.astype(np.float32))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(RoiFileError, match="folder not found"):
        load_suite2p(tmp_path / "nope")
    with pytest.raises(RoiFileError, match="no stat.npy"):
        load_suite2p(tmp_path)
    folder = _write(tmp_path / "plane0", _stat(), np.ones((4, 2)), {"Ly": 40, "Lx": 50})
    (folder / "iscell.npy").unlink()
    with pytest.raises(RoiFileError, match="iscell.npy: file not found"):
        load_suite2p(folder)


def test_corrupt_files_are_named(tmp_path):
    folder = _write(tmp_path / "plane0", _stat(), np.ones((4, 2)), {"Ly": 40, "Lx": 50})
    (folder / "ops.npy").write_bytes(b"not a numpy file")
    with pytest.raises(RoiFileError, match="ops.npy: cannot read"):
        load_suite2p(folder)


def test_inconsistent_files_are_named(tmp_path):
    folder = _write(tmp_path / "a", _stat(), np.ones((3, 2)), {"Ly": 40, "Lx": 50})
    with pytest.raises(RoiFileError, match=r"iscell.npy: shape \(3, 2\)"):
        load_suite2p(folder)
    bad = _stat()
    bad[2]["ypix"] = bad[2]["ypix"] + 100
    folder = _write(tmp_path / "b", bad, np.ones((4, 2)), {"Ly": 40, "Lx": 50})
    with pytest.raises(RoiFileError, match=r"stat.npy: stat\[2\]: pixels outside"):
        load_suite2p(folder)
    folder = _write(tmp_path / "c", _stat(), np.ones((4, 2)), {"fs": 30.0})
    with pytest.raises(RoiFileError, match="frame size is unknown"):
        load_suite2p(folder)
