"""The restricted ``.npy`` loader: genuine suite2p output loads exactly as ``np.load(allow_pickle=True)`` loads
it; a pickle that would run code is refused with the file and the forbidden global named, and does not run.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acquisition.pipeline import load_reference_image
from acquisition.rois import RoiFileError, RoiSet, load_suite2p
from gui.rois import RoiLoadError, load_roi_outlines
from rig.core.safe_npy import ForbiddenPickleError, NpyFileError, load_npy


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Deep equality, types included (an int64 scalar is not an int), NaN equal to NaN."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if a.dtype.hasobject:
            for i, (x, y) in enumerate(zip(a.ravel(), b.ravel(), strict=True)):
                assert_same(x, y, f"{where}.flat[{i}]")
        else:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, float | np.floating) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


class RunsACommand:
    """What an attacker puts in a stat.npy entry: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


class OpensAFile:
    """The same without a shell: unpickling it calls open(marker, "w"), which creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.marker), "w")


def malicious_stat(path: Path, payload: Any) -> None:
    """A stat.npy that looks like suite2p's (ROI dicts) with the payload inside one ROI."""
    stat = np.empty(2, dtype=object)
    stat[:] = [{"ypix": np.arange(3), "xpix": np.arange(3), "lam": np.ones(3, np.float32)},
               {"ypix": np.arange(3), "xpix": np.arange(3), "lam": np.ones(3, np.float32), "note": payload}]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, stat, allow_pickle=True)


def _write_suite2p_folder(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    stat = []
    for cy, cx in ((5, 5), (12, 14)):
        yy, xx = np.mgrid[cy - 2:cy + 3, cx - 2:cx + 3]
        stat.append({"ypix": yy.ravel(), "xpix": xx.ravel(), "lam": rng.random(25).astype(np.float32)})
    RoiSet(stat=stat, iscell=np.ones((2, 2)), Ly=20, Lx=24, ref_img=rng.random((20, 24)).astype(np.float32)) \
        .save_suite2p(folder)
    return folder


# ---------------------------------------------------------------------------- refusing


@pytest.mark.parametrize("payload", [RunsACommand, OpensAFile])
def test_a_malicious_stat_npy_is_refused_and_nothing_runs(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "pwned"
    folder = _write_suite2p_folder(tmp_path / "plane0")
    malicious_stat(folder / "stat.npy", payload(marker))
    forbidden = f"{os.system.__module__}.system" if payload is RunsACommand else "io.open"
    with pytest.raises(RoiFileError) as err:
        load_suite2p(folder)
    assert str(folder / "stat.npy") in str(err.value) and f"forbidden global {forbidden}" in str(err.value)
    with pytest.raises(RoiLoadError, match=f"stat.npy: refused to load: .*forbidden global {forbidden}"):
        load_roi_outlines(folder)  # the console's loader
    with pytest.raises(ForbiddenPickleError) as direct:
        load_npy(folder / "stat.npy")
    assert (direct.value.module, direct.value.name) == tuple(forbidden.split("."))
    assert not marker.exists()
    # the same payload in ops.npy, and in a reference image given as a suite2p ops dict
    folder = _write_suite2p_folder(tmp_path / "plane1")
    np.save(folder / "ops.npy", np.array({"Ly": 20, "Lx": 24, "x": payload(marker)}, dtype=object),
            allow_pickle=True)
    with pytest.raises(RoiFileError, match=f"ops.npy: refused to load: .*forbidden global {forbidden}"):
        load_suite2p(folder)
    with pytest.raises(NpyFileError, match="forbidden global"):
        load_reference_image(folder / "ops.npy")
    assert not marker.exists()


def _npy_with_pickle(path: Path, pickled: bytes) -> None:
    """A .npy whose object-array payload is these pickle bytes (what a hand-made exploit looks like)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        f.write(pickled)


def _stack_global(module: str, name: str) -> bytes:
    """A protocol-4 pickle that looks ``module.name`` up (STACK_GLOBAL, where dotted names reach any attribute)."""
    return (b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + name.encode()
            + b"\x93.")


@pytest.mark.parametrize(("pickled", "named"), [
    (b"cos\nsystem\n(S'touch MARKER'\ntR.", "os.system"),  # protocol 0, GLOBAL + REDUCE
    (b"\x80\x02cbuiltins\neval\nX\x06\x00\x00\x00print()\x85R.", "builtins.eval"),
    (_stack_global("numpy", "load"), "numpy.load"),  # numpy is allowed by exact names, not as a whole
    (_stack_global("numpy", "_core.multiarray.os.system"), "numpy._core.multiarray.os.system"),
    (b"\x80\x02csubprocess\nPopen\n.", "subprocess.Popen"),
    (b"\x80\x02ccopyreg\n_reconstructor\n.", "copyreg._reconstructor"),
])
def test_hand_made_exploits_are_refused(tmp_path: Path, pickled: bytes, named: str) -> None:
    path = tmp_path / "stat.npy"
    marker = tmp_path / "m"
    _npy_with_pickle(path, pickled.replace(b"MARKER", str(marker).encode()))
    with pytest.raises(ForbiddenPickleError, match=f"{path}: refused to load: .*forbidden global {named}"):
        load_npy(path)
    assert not marker.exists()


def test_files_that_are_not_npy_or_break_the_rules_are_errors(tmp_path: Path) -> None:
    raw = tmp_path / "raw.npy"  # a bare pickle: np.load(allow_pickle=True) would unpickle it
    raw.write_bytes(pickle.dumps(OpensAFile(tmp_path / "m")))
    with pytest.raises(NpyFileError, match="raw.npy: cannot read: not a .npy file"):
        load_npy(raw)
    codec = tmp_path / "codec.npy"
    _npy_with_pickle(codec, b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x03\x00\x00\x00hex\x86R.")
    with pytest.raises(NpyFileError, match="only latin1"):
        load_npy(codec)
    plain = tmp_path / "iscell.npy"
    np.save(plain, np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
    with pytest.raises(NpyFileError, match="holds Python objects"):
        load_npy(plain, allow_objects=False)
    truncated = tmp_path / "t.npy"
    np.save(truncated, np.array([{"a": np.arange(100)}], dtype=object), allow_pickle=True)
    truncated.write_bytes(truncated.read_bytes()[:-50])
    with pytest.raises(NpyFileError, match="t.npy: cannot read: corrupt pickled data"):
        load_npy(truncated)
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------- genuine files load identically


def test_suite2p_0x_style_pickles_load_identically(tmp_path: Path) -> None:
    """A flat 0.x ops dict written by numpy 1.x (``numpy.core`` names, protocol 2) with the value types it holds."""
    ops = {"Ly": 20, "Lx": 24, "fs": 30.0, "nframes": np.int64(500), "rmin": np.int16(-3), "snr": np.float32(1.5),
           "date_proc": datetime.datetime(2023, 5, 1, 12, 30, tzinfo=datetime.UTC),
           "timing": OrderedDict(registration=12.5), "refImg": np.arange(480, dtype=np.int16).reshape(20, 24),
           "filelist": ["a.tif"], "save_path0": "/data/m1", "nonrigid": True, "block_size": (128, 128),
           "xrange": np.array([0, 24]), "badframes": np.zeros(3, bool), "chans": {1, 2}, "z": 1 + 2j,
           "folder": pathlib.PurePosixPath("/data"), "raw": b"\x00\x01", "span": datetime.timedelta(seconds=3),
           "nan": float("nan")}
    expected = np.array(ops, dtype=object)
    for protocol in (2, 3, 4, 5):
        data = pickle.dumps(expected, protocol=protocol)
        if protocol == 2:
            data = data.replace(b"numpy._core.", b"numpy.core.")  # what numpy 1.x wrote
            assert b"numpy.core.multiarray" in data
        path = tmp_path / f"ops{protocol}.npy"
        _npy_with_pickle(path, data)
        loaded = load_npy(path)
        assert_same(loaded.item(), ops, f"protocol {protocol}")


def test_the_simulators_suite2p_export_loads_identically(tmp_path: Path) -> None:
    from tests.test_sim_export import run_sim

    out = tmp_path / "movie"
    assert run_sim(["--export", str(out), "--frames", "4", "--seed", "1", "--no-progress", "--set",
                    "acquisition.sim.height_px=64", "--set", "acquisition.sim.width_px=80",
                    "--set", "acquisition.sim.n_cells=5"]) == 0
    plane = out / "suite2p" / "plane0"
    for name in ("stat.npy", "ops.npy", "iscell.npy"):
        assert_same(load_npy(plane / name), np.load(plane / name, allow_pickle=True), name)
    rois = load_suite2p(plane)
    assert rois.n_rois == 5 and (rois.Ly, rois.Lx) == (64, 80)


@pytest.fixture(scope="module")
def suite2p_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real suite2p 1.x run (registration, detection, extraction, classification) on a small synthetic movie."""
    suite2p = pytest.importorskip("suite2p")
    tifffile = pytest.importorskip("tifffile")
    from tests.test_acq_synth import make_movie

    root = tmp_path_factory.mktemp("suite2p")
    movie = make_movie(T=200, Ly=64, Lx=64, n_cells=12, max_shift=2.0, seed=5)
    (root / "data").mkdir()
    tifffile.imwrite(root / "data" / "movie.tif", movie.frames.astype(np.int16))
    settings = suite2p.default_settings()
    settings.update({"torch_device": "cpu", "fs": 30.0, "diameter": [6.0, 6.0]})
    settings["run"]["do_deconvolution"] = False
    settings["registration"]["nonrigid"] = False
    suite2p.run_s2p(db={"data_path": [str(root / "data")], "save_path0": str(root / "out"), "nplanes": 1,
                        "nchannels": 1}, settings=settings)
    return root / "out" / "suite2p" / "plane0"


@pytest.mark.suite2p
def test_real_suite2p_1x_output_loads_identically(suite2p_output: Path) -> None:
    files = sorted(suite2p_output.glob("*.npy")) + sorted(suite2p_output.parent.glob("*.npy"))
    names = {p.name for p in files}
    assert {"stat.npy", "ops.npy", "iscell.npy", "reg_outputs.npy", "db.npy", "settings.npy"} <= names
    for path in files:
        assert_same(load_npy(path), np.load(path, allow_pickle=True), str(path))
    ops = load_npy(suite2p_output / "ops.npy").item()
    assert isinstance(ops["date_proc"], datetime.datetime)  # suite2p stamps its ops with the processing time
    rois = load_suite2p(suite2p_output)
    stat = np.load(suite2p_output / "stat.npy", allow_pickle=True)
    assert rois.n_rois == len(stat) > 0 and (rois.Ly, rois.Lx) == (64, 64)
    assert_same(rois.stat, [dict(s) for s in stat])
    assert load_roi_outlines(suite2p_output).n == len(stat)


def test_load_npy_reads_plain_arrays_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "ref.npy"
    image = np.arange(12, dtype=">f4").reshape(3, 4)
    np.save(path, image)
    assert_same(load_npy(path, allow_objects=False), np.load(path))
    with pytest.raises(NpyFileError, match="cannot read"):
        load_npy(tmp_path / "missing.npy")
