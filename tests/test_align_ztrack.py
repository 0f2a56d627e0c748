"""Same cells every day: the simulator's depth and day-to-day transform, z-tracking, ``rig align``.

One small simulated field (128x128, 30 cells) is exported once per module: day 0 with z drift and a z-stack,
day 1 the same tissue moved and rotated; every test reads those files.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from acquisition.align import AlignmentError, Similarity, estimate_transform
from acquisition.rois import load_suite2p
from acquisition.sim.config import SimConfig
from acquisition.sim.depth import axial_profile
from acquisition.sim.export import export_movie
from acquisition.ztrack import ZStackError, ZTracker, load_zstack

SIZE = {"height_px": 128, "width_px": 128, "n_cells": 30}
DAY1 = {"day": 1, "day_dy_px": 3.4, "day_dx_px": -5.7, "day_rotation_deg": 2.2}


def _rig(argv: list[str]) -> int:
    from acquisition.offline import register_cli as process_cli
    from rig.app.sim_cli import register_cli as sim_cli
    from rig.offline.align import register_cli as align_cli

    parser = argparse.ArgumentParser(prog="rig")
    sub = parser.add_subparsers(dest="command")
    for register in (process_cli, sim_cli, align_cli):
        register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _last_json(capsys: pytest.CaptureFixture) -> tuple[dict, str]:
    cap = capsys.readouterr()
    return json.loads(cap.out.strip().splitlines()[-1]), cap.err


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("days")
    # day 0 through the command line: z drift of 16 um peak-to-peak over the movie and a z-stack
    assert _rig(["sim", "--export", str(root / "day0"), "--frames", "240", "--z-drift-um", "16", "--zstack",
                 "--no-progress", "--seed", "5"] + [a for k, v in SIZE.items()
                                                     for a in ("--set", f"acquisition.sim.{k}={v}")]) == 0
    export_movie(SimConfig(seed=5, **SIZE, **DAY1), root / "day1", 20, progress=False)
    export_movie(SimConfig(seed=9, **SIZE), root / "other", 20, progress=False, zstack=True)
    return {"day0": root / "day0", "day1": root / "day1", "other": root / "other", "root": root}


# ------------------------------------------------------------------ the simulator in depth


def test_axial_psf_is_realistic() -> None:
    """A point-like object shows the PSF itself (FWHM as configured, >= 4 um); a 12 um soma is wider still."""
    dz = np.arange(-20, 20.01, 0.05)
    for radius, lo, hi in ((0.3, 4.8, 5.2), (6.0, 8.0, 14.0)):
        prof = axial_profile(dz, radius, 5.0)
        above = dz[prof >= 0.5]
        assert lo <= above.max() - above.min() <= hi
    with pytest.raises(ValueError, match="axial_fwhm_um"):
        SimConfig(axial_fwhm_um=0.0)


def test_sim_writes_z_truth_stack_and_day_transform(days: dict[str, Path]) -> None:
    truth = np.load(days["day0"] / "ground_truth.npz")
    z = truth["z_um"]
    assert z.shape == (240,) and abs(np.ptp(z) - 16.0) < 0.1 and abs(z.mean()) < 1.0
    assert np.all(np.abs(np.diff(z)) < 0.2)  # slow drift, no jumps asked for
    with tifffile.TiffFile(days["day0"] / "zstack.tif") as tif:
        assert tif.asarray().shape == (61, 128, 128) and tif.imagej_metadata["spacing"] == 1.0
    stack = load_zstack(days["day0"] / "zstack.tif")
    assert stack.z_um[0] == -30.0 and stack.z_um[-1] == 30.0 and stack.pixel_size_um == pytest.approx(1.0)
    # day 1: the same cells, where the recorded transform puts them
    t1 = np.load(days["day1"] / "ground_truth.npz")
    dy, dx, rot, scale = t1["day_transform"]
    assert (dy, dx, rot, scale) == pytest.approx((3.4, -5.7, 2.2, 1.0))
    tf = Similarity.about_center((128, 128), dy, dx, rot)
    c0 = np.load(days["day0"] / "ground_truth.npz")["centers"]
    y, x = tf.forward(c0[:, 0], c0[:, 1])
    np.testing.assert_allclose(np.column_stack([y, x]), t1["centers"], atol=1e-3)
    assert np.all(t1["z_um"] == 0.0)  # no z motion asked for on day 1


def test_z_jumps_show_in_truth() -> None:
    from acquisition.sim.scope import SimScope

    scope = SimScope(SimConfig(seed=2, **SIZE, z_jump_rate_hz=2.0, z_jump_sd_um=3.0), 30.0)
    frame = np.empty(scope.shape, np.uint16)
    for _ in range(90):
        scope.render(frame)
    z = scope.truth()["z_um"]
    assert np.max(np.abs(np.diff(z))) > 0.5  # at least one jump in 3 s at 2 jumps/s


# ------------------------------------------------------------------ z-tracking


def test_rig_process_tracks_z_within_1um(days: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "traces.npz"
    code = _rig(["process", str(days["day0"] / "movie.tif"), "--rois", str(days["day0"]), "--zstack",
                 str(days["day0"] / "zstack.tif"), "--out", str(out), "--no-progress", "--z-every", "2"])
    assert code == 0
    summary, err = _last_json(capsys)
    z = np.load(out)["z_um"]
    truth = np.load(days["day0"] / "ground_truth.npz")["z_um"]
    assert z.shape == truth.shape and np.all(np.isnan(z[1::2])) and np.all(np.isfinite(z[::2]))
    rms = float(np.sqrt(np.nanmean((z - truth) ** 2)))
    assert rms <= 1.0, rms
    assert summary["z_estimated"] == 120 and summary["z_warnings"] > 0 and "focal plane moved more than 3" in err


def test_every_nth_frame_skips_the_other_frames_and_estimates_the_same(days: dict[str, Path]) -> None:
    """every = 30 > window = 10: only the 10 frames before each estimate are binned, and the estimate is the one
    an every-frame tracker makes at that frame (the same running mean)."""
    movie = tifffile.imread(days["day0"] / "movie.tif")
    stack = load_zstack(days["day0"] / "zstack.tif")
    every_frame = ZTracker(stack, _reference(days), window=10)
    sparse = ZTracker(stack, _reference(days), window=10, every=30)
    z1 = np.array([every_frame.update(f, 0.0, 0.0) for f in movie])
    z30 = np.array([sparse.update(f, 0.0, 0.0) for f in movie])
    assert np.all(np.isfinite(z30[::30])) and np.all(np.isnan(np.delete(z30, np.arange(0, len(z30), 30))))
    np.testing.assert_allclose(z30[30::30], z1[30::30], atol=1e-3)
    # binned: frame 0, the 10 frames up to each of the estimates at 30, 60, ..., 210, and 231-239 (for 240)
    assert len(movie) == 240 and sparse._filled == 1 + 7 * 10 + 9 and every_frame._filled == 240


def _stack_file(days: dict[str, Path], name: str, transform) -> Path:  # noqa: ANN001
    planes = tifffile.imread(days["day0"] / "zstack.tif")
    path = days["root"] / f"{name}.tif"
    tifffile.imwrite(path, np.stack([transform(p) for p in planes]).astype(np.uint16), imagej=True,
                     metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    return path


def _reference(days: dict[str, Path]) -> np.ndarray:
    return load_suite2p(days["day0"]).ref_img


def test_zstack_in_wrong_orientation_is_refused(days: dict[str, Path]) -> None:
    flipped = _stack_file(days, "flipped", lambda p: p[:, ::-1])
    with pytest.raises(ZStackError, match=r"better flipped left-right \(best plane correlation (0\.9\d|1\.00)\) "
                                          r"than as it is \(0\.\d\d\)"):
        ZTracker(load_zstack(flipped), _reference(days))


def test_zstack_with_wrong_pixel_size_is_refused(days: dict[str, Path]) -> None:
    from scipy import ndimage

    zoomed = _stack_file(days, "zoomed", lambda p: ndimage.zoom(p.astype(float), 1.25, order=1)[16:144, 16:144])
    with pytest.raises(ZStackError, match=r"better at 1\.25x the session's magnification"):
        ZTracker(load_zstack(zoomed), _reference(days))
    # the file says its pixel size: checked against the session's before any correlation
    with pytest.raises(ZStackError, match=r"pixels are 1 um but the session's are 0\.8 um \(ratio 1\.25\)"):
        ZTracker(load_zstack(days["day0"] / "zstack.tif"), _reference(days), pixel_size_um=0.8)
    with pytest.raises(ZStackError, match=r"planes are 128x128 px but the frames are 64x64 px"):
        ZTracker(load_zstack(days["day0"] / "zstack.tif"), _reference(days)[:64, :64])


def test_zstack_of_another_field_is_refused(days: dict[str, Path], tmp_path: Path, capsys) -> None:
    code = _rig(["process", str(days["day0"] / "movie.tif"), "--rois", str(days["day0"]), "--zstack",
                 str(days["other"] / "zstack.tif"), "--out", str(tmp_path / "x.npz"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "does not show this field of view: best plane correlation" in err
    assert not (tmp_path / "x.npz").exists()


# ------------------------------------------------------------------ rig align


def _session_folder(days: dict[str, Path], up: list[int], down: list[int]) -> Path:
    """Day 0 as a session folder (docs/SESSION_FORMAT.md): acquisition/rois/ (suite2p layout) + reference.npy, and
    the config naming the ensembles."""
    session = days["root"] / f"session_{'_'.join(map(str, up + down))}"
    if not session.exists():
        rois = session / "acquisition" / "rois"
        shutil.copytree(days["day0"] / "suite2p" / "plane0", rois, ignore=shutil.ignore_patterns("data.bin"))
        np.save(rois / "reference.npy", _reference(days))
        (session / "session.json").write_text("{}")
        (session / "config.toml").write_text(f"[acquisition]\npixel_size_um = 1.5\n[decoder]\nup = {up}\n"
                                             f"down = {down}\n")
    return session


def test_rig_align_recovers_transform_and_carries_rois(days: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "today"
    code = _rig(["align", str(days["day1"]), "--to", str(_session_folder(days, [0, 1, 2], [3, 4])),
                 "--out", str(out)])
    summary, err = _last_json(capsys)
    assert code == 0, err
    assert summary["dy"] == pytest.approx(3.4, abs=0.5) and summary["dx"] == pytest.approx(-5.7, abs=0.5)
    assert summary["rotation_deg"] == pytest.approx(2.2, abs=0.2)
    assert summary["ensembles_ok"] is True and summary["ensembles_today"] == {"up": [0, 1, 2], "down": [3, 4]}
    # stage move from the session config's pixel size
    assert summary["stage_move_um"] == pytest.approx([3.4 * 1.5, -5.7 * 1.5], abs=0.75)
    moved = load_suite2p(out).cells_only()
    truth = load_suite2p(days["day1"])
    assert moved.n_rois == summary["rois_kept"] >= 25
    doc = json.loads((out / "align.json").read_text())
    ious = []
    for r in doc["rois"]:
        if r["kept"]:
            a = moved.stat[r["today_index"]]
            b = truth.stat[r["index"]]
            pa, pb = set(zip(a["ypix"], a["xpix"], strict=True)), set(zip(b["ypix"], b["xpix"], strict=True))
            ious.append(len(pa & pb) / len(pa | pb))
    assert np.median(ious) > 0.9 and min(ious) > 0.6
    # the per-ROI overlap with today's own ROIs (day 1's true ones) finds the same cell
    kept = [r for r in doc["rois"] if r["kept"]]
    assert all(r["match_today"] == r["index"] for r in kept)
    assert np.median([r["iou_today"] for r in kept]) > 0.9
    assert np.load(out / "previous_in_today.npy").shape == np.load(out / "today_ref.npy").shape == (128, 128)


def test_rig_align_names_a_lost_ensemble_cell(days: dict[str, Path], tmp_path: Path, capsys) -> None:
    far = tmp_path / "far"
    export_movie(SimConfig(seed=5, **SIZE, day_dx_px=30.0), far, 10, progress=False)
    centers = np.load(days["day0"] / "ground_truth.npz")["centers"]
    gone = int(np.argmax(centers[:, 1]))  # the right-most cell leaves the field when it moves 30 px right
    stay = int(np.argmin(np.abs(centers[:, 1] - 50)))
    code = _rig(["align", str(far), "--to", str(days["day0"]), "--up", str(stay), "--down", str(gone),
                 "--out", str(tmp_path / "o")])
    summary, err = _last_json(capsys)
    assert code == 1 and summary["ensembles_ok"] is False and summary["dx"] == pytest.approx(30.0, abs=0.5)
    assert f"ROI {gone}: LOST (in view" in err and f"ensemble down [{gone}]: LOST [{gone}]" in err


def test_rig_align_refuses_another_field(days: dict[str, Path], tmp_path: Path, capsys) -> None:
    code = _rig(["align", str(days["other"]), "--to", str(days["day0"]), "--out", str(tmp_path / "o")])
    summary, err = _last_json(capsys)
    assert code == 2 and summary["ok"] is False
    assert "do not match: correlation" in err and "Nothing was carried over" in err
    assert not (tmp_path / "o").exists()


def test_estimate_transform_with_scale(days: dict[str, Path]) -> None:
    """Another zoom: --scale recovers the magnification with the shift and rotation."""
    from acquisition.align import warp_image

    ref = _reference(days)
    true = Similarity.about_center(ref.shape, 2.0, -1.5, 1.0, 1.04)
    today = warp_image(ref, true, mode="nearest")
    al = estimate_transform(ref, today, allow_scale=True)
    tf = al.transform
    assert tf.scale == pytest.approx(1.04, abs=0.005) and tf.rotation_deg == pytest.approx(1.0, abs=0.1)
    assert (tf.dy, tf.dx) == pytest.approx((2.0, -1.5), abs=0.3)


def test_estimate_transform_refuses_different_sizes() -> None:
    with pytest.raises(AlignmentError, match="128x128 px but today's is 64x64"):
        estimate_transform(np.zeros((128, 128)), np.zeros((64, 64)))


# ------------------------------------------------------------------ the console's view of yesterday over today


def test_align_view_blends_flickers_and_says_the_stage_move(days: dict[str, Path], tmp_path: Path, qtbot,
                                                            capsys) -> None:
    from gui.align_view import AlignFolderError, AlignView

    out = tmp_path / "today"
    assert _rig(["align", str(days["day1"]), "--to", str(days["day0"]), "--out", str(out)]) == 0
    summary, err = _last_json(capsys)
    assert "stage_move_um" not in summary  # suite2p folders do not say their pixel size: stderr says so
    assert summary["ensembles_ok"] is True and "ensembles_ok is true only because none was checked" in err
    assert f"the stage move is known only in pixels, dy {summary['dy']:+.1f} px, dx {summary['dx']:+.1f} px" in err
    view = AlignView.from_folder(out, pixel_size_um=2.0)
    qtbot.addWidget(view)
    assert f"dy {summary['dy'] * 2.0:+.1f} um, dx {summary['dx'] * 2.0:+.1f} um" in view.stage_label.text()
    view.slider.setValue(0)
    np.testing.assert_allclose(view.image_item.image, view.today)
    view.slider.setValue(100)
    np.testing.assert_allclose(view.image_item.image, view.previous)
    view.mode_combo.setCurrentText("flicker")
    assert view.timer.isActive() and not view.slider.isEnabled()
    first = np.array(view.image_item.image)
    view.flicker_step()
    assert not np.allclose(view.image_item.image, first)
    view.mode_combo.setCurrentText("colour")
    assert view.image_item.image.shape == (128, 128, 3) and not view.timer.isActive()
    # aligned: yesterday moved into today's field matches today (where it covers today's field)
    today, prev = view.today, view.previous
    ok = prev > 0
    assert np.corrcoef(today[ok], prev[ok])[0, 1] > 0.9
    no_pixel = AlignView.from_folder(out)
    qtbot.addWidget(no_pixel)
    assert "set acquisition.pixel_size_um" in no_pixel.stage_label.text()
    with pytest.raises(AlignFolderError, match="align.json: cannot read it"):
        AlignView.from_folder(tmp_path)


# ------------------------------------------------------------------ live: the acquisition process and the console


def test_acquisition_process_tracks_z_live_and_warns(days: dict[str, Path], tmp_path: Path) -> None:
    """The real acquisition process class, configured in this process (no bus loop), on the simulated scope
    of day 0's tissue drifting in z: z.rec gets a row per estimate, the preview carries z, a drift is warned."""
    import msgspec

    from acquisition.process import AcquisitionProcess
    from rig.app.config import CONFIG_LOADER, config_from_dict
    from rig.core.bus import free_tcp_port
    from rig.core.process import ProcessSpec
    from rig.core.store import read_events, read_records
    from tests.conftest import wait_for

    sim = {"seed": 5, **SIZE, "realtime": False, "z_drift_um": 16.0, "z_drift_period_s": 3.0}
    cfg = config_from_dict({"rig": {"name": "ztest"}, "decoder": {"up": [0], "down": [1]},
                            "acquisition": {"source": "sim", "sim": sim, "pixel_size_um": 1.0,
                                            "ztrack": {"stack_path": str(days["day0"] / "zstack.tif")}}}, "test")
    endpoints = {name: f"tcp://127.0.0.1:{free_tcp_port()}" for name in ("acquisition", "supervisor")}
    spec = ProcessSpec(name="acquisition", target="acquisition.process:AcquisitionProcess",
                       config=msgspec.to_builtins(cfg), config_file="test", config_loader=CONFIG_LOADER,
                       endpoints=endpoints, session_dir=str(tmp_path / "session"), critical=True, watch_parent=False)
    proc = AcquisitionProcess(spec)
    proc.configure()
    try:
        assert proc.z is not None and proc.z.tracker is not None  # checked against the sim's reference at start
        proc.on_start()
        wait_for(lambda: (proc.step(), proc.frames)[1] >= 60, what="60 frames through the acquisition")
        live_z = proc.z.last_z
    finally:
        proc.on_stop()
        proc._close()
    folder = tmp_path / "session" / "acquisition"
    rows = read_records(folder / "z.rec")
    truth = np.load(tmp_path / "session" / "acquisition" / "sim_truth" / "ground_truth.npz")["z_um"]
    assert len(rows) >= 55 and np.isfinite(live_z)
    err = rows["z_um"] - truth[rows["frame"]]
    assert float(np.sqrt(np.mean(err[10:] ** 2))) < 1.5  # after the 10-frame window has filled
    events = [e for e in read_events(folder / "events.jsonl") if "z_drift" in json.dumps(e)]
    assert events and "from the z-stack's centre" in json.dumps(events[0])
    # rig report shows z over time from z.rec (the folder made a session by the config snapshot beside it)
    from rig.offline.report import build_report
    from rig.offline.session_data import load_session

    (tmp_path / "session" / "config.resolved.json").write_text(json.dumps(msgspec.to_builtins(cfg)))
    (tmp_path / "session" / "config.toml").write_text("# built in the test: config.resolved.json is the config\n")
    page = build_report(load_session(tmp_path / "session"), tmp_path / "r.html", progress=False).read_text()
    worst = float(np.max(np.abs(rows["z_um"])))
    assert '<figure id="z">' in page and f"{len(rows)} depth estimates" in page
    assert f"|z| up to {worst:.1f} µm" in page and f"{len(events)} z-drift warning(s) beyond ±3 µm" in page
    # and rig export's NWB file carries it next to the registration shifts
    from pynwb import NWBHDF5IO

    from rig.offline.nwb_export import export_nwb

    nwb_path = export_nwb(load_session(tmp_path / "session"), tmp_path / "s.nwb", progress=False)
    with NWBHDF5IO(str(nwb_path), "r") as io:
        series = io.read().processing["ophys"]["Registration"]["z"]
        np.testing.assert_array_equal(series.data[:], rows["z_um"])
        assert series.timestamps.shape == (len(rows),) and np.all(np.diff(series.timestamps[:]) > 0)


def test_console_plots_z_from_previews(qtbot) -> None:
    from gui.config import GuiConfig
    from gui.model import ConsoleModel
    from gui.widgets.zplot import ZPlotWidget
    from rig.core.schema import Preview

    model = ConsoleModel(GuiConfig())
    image = np.zeros((8, 8), np.float32)
    model.ingest(Preview(frame=1, dy=0.0, dx=0.0, corr=0.9, image=image))
    assert np.isnan(model.preview.z_um)  # a rig without z-tracking
    model.ingest(Preview(frame=2, dy=0.0, dx=0.0, corr=0.9, image=image, z_um=1.5))
    assert model.preview.z_um == 1.5
    plot = ZPlotWidget(warn_um=3.0)
    qtbot.addWidget(plot)
    plot.add(1, float("nan"))
    assert plot.isHidden()
    plot.add(2, 1.5)
    assert not plot.isHidden() and "beyond" not in plot.label.text()
    plot.add(3, -4.0)
    assert "z: -4.0 µm  (beyond ±3 µm" in plot.label.text()
    np.testing.assert_array_equal(plot.curve.getData()[1], [1.5, -4.0])
    plot.set_warn_um(5.0)  # the rig's acquisition.ztrack.warn_um, from the session snapshot
    plot.add(4, -4.0)
    assert "beyond" not in plot.label.text() and [b.value() for b in plot.bands] == [5.0, -5.0]


def test_rig_check_names_a_missing_zstack(tmp_path: Path) -> None:
    from rig.app.checks import missing_files
    from rig.app.config import ConfigError, config_from_dict

    cfg = config_from_dict({"acquisition": {"ztrack": {"stack_path": str(tmp_path / "nope.tif")}}}, "test")
    assert ("acquisition.ztrack.stack_path", f"{tmp_path / 'nope.tif'} does not exist") in missing_files(cfg)
    with pytest.raises(ConfigError, match="`every` and `window` must be >= 1"):
        config_from_dict({"acquisition": {"ztrack": {"every": 0}}}, "test")


def test_rig_console_align_names_a_folder_without_alignment(tmp_path: Path, capsys) -> None:
    from rig.app.console_cli import register_cli

    parser = argparse.ArgumentParser(prog="rig")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["console", "--align", str(tmp_path)])
    assert args.func(args) == 2
    assert f"{tmp_path / 'align.json'}: cannot read it" in capsys.readouterr().err



def test_live_z_built_off_the_loop_installs_or_refuses_with_the_numbers(days: dict[str, Path]) -> None:
    """A reference built live mid-session: the tracker is built in a thread; a stack of another field turns
    z-tracking off with the correlation, any other failure is raised, never swallowed."""
    from acquisition.config import ZTrackConfig
    from acquisition.ztrack import LiveZ
    from tests.conftest import wait_for

    def finish(live: LiveZ) -> list[str]:
        said: list[str | None] = []
        wait_for(lambda: (said.append(live.poll_build()), live._build is None)[1], what="the z-tracker build")
        return [m for m in said if m is not None]

    reference = _reference(days)
    same = LiveZ(ZTrackConfig(stack_path=str(days["day0"] / "zstack.tif")))
    same.start_in_background(reference)
    assert finish(same) == [] and same.tracker is not None
    other = LiveZ(ZTrackConfig(stack_path=str(days["other"] / "zstack.tif")))
    other.start_in_background(reference)
    said = finish(other)
    assert other.tracker is None and len(said) == 1
    assert "does not show this field of view: best plane correlation" in said[0]
    broken = LiveZ(ZTrackConfig(stack_path=str(days["day0"] / "zstack.tif")))
    broken.start_in_background(reference, max_shift_px=None)  # type: ignore[arg-type]  # fails in the thread
    with pytest.raises(RuntimeError, match="building the z-tracker against the live reference failed"):
        finish(broken)
