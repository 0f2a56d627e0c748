"""Day one with the rig's own tools: record a baseline (a real simulated session with save_frames), `rig detect`
it with real suite2p, `rig rank --write` the ensembles into the config, and run the next session with them.

One suite2p run (session-scoped, one thread) on the first 300 frames of a 256x256 baseline is shared by every
test here; detection is checked against the simulator's ground truth (the true soma pixels, ``soma_crop`` of
its ``stat.npy``).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gui.ensemble_file import set_toml_values
from rig.core.safe_npy import load_npy

pytestmark = pytest.mark.suite2p

REPO = Path(__file__).resolve().parent.parent
SIM_CONFIG = REPO / "hardware_configs" / "sim.toml"
#: the same field of view both days: the simulator's scene is fixed by its seed
FIELD = {("acquisition.sim", "height_px"): 256, ("acquisition.sim", "width_px"): 256,
         ("acquisition.sim", "n_cells"): 40, ("acquisition.sim", "seed"): 1,
         ("acquisition.sim", "realtime"): False, ("session", "save_frames"): True, ("detect", "threads"): 1,
         ("reward", "calibration_file"): str(REPO / "hardware_configs" / "calibrations" / "valve_calibration_sim.toml"),
         # a 10-s baseline holds ten 1-s bins: a correlation over so few (and over the field's shared bleaching and
         # neuropil) says nothing, so suggest's correlation limit is off here (test_detect_inputs tests it)
         ("detect", "suggest_max_corr"): 1.0}
DETECT_FRAMES = 300  # the fewest rig detect accepts at 30 Hz with GCaMP6f (15 bins of tau)


def _rig(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rig.app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _rig_here(*args: str) -> tuple[int, str, str]:
    from rig.app.cli import main  # noqa: PLC0415

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _last_json(run: subprocess.CompletedProcess[str]) -> dict:
    assert run.stdout.strip(), run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def day_one(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("suite2p")
    root = tmp_path_factory.mktemp("day_one")
    config = root / "rig.toml"
    config.write_text(set_toml_values(SIM_CONFIG.read_text(encoding="utf-8"), FIELD), encoding="utf-8")
    run = _rig("run", str(config), "--headless", "--duration", "2", "--sessions-dir", str(root / "sessions"))
    baseline = _last_json(run)
    # a 2-s session may end before its first trial ("ok": false for that alone): only its frames matter here
    assert "failure" not in baseline and baseline["frames"] >= DETECT_FRAMES, run.stderr[-3000:]
    session = Path(baseline["session"])
    # the simulator runs unthrottled here: on a loaded machine the movie writer may fall behind and write frames as
    # zeros (as on a rig whose disk stalls); rig detect leaves those out (frame_index.npy)
    detect = _rig("detect", str(session), "--max-frames", str(DETECT_FRAMES), "--no-progress")
    assert detect.returncode == 0, detect.stderr[-3000:]
    return {"root": root, "config": config, "session": session, "detect": _last_json(detect), "stderr": detect.stderr}


def _pixels(roi: dict, crop: bool, shift: tuple[int, int] = (0, 0)) -> set[tuple[int, int]]:
    ypix, xpix = np.asarray(roi["ypix"]), np.asarray(roi["xpix"])
    if crop:
        ypix, xpix = ypix[np.asarray(roi["soma_crop"], bool)], xpix[np.asarray(roi["soma_crop"], bool)]
    return set(zip((ypix + shift[0]).tolist(), (xpix + shift[1]).tolist(), strict=True))


def displacement(image: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """Whole-pixel (dy, dx) with ``image[y, x] ~= reference[y - dy, x - dx]``: whitened phase correlation."""
    a, b = image - image.mean(), reference - reference.mean()
    cross = np.fft.fft2(a) * np.conj(np.fft.fft2(b))
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    dy, dx = np.unravel_index(int(np.argmax(corr)), corr.shape)
    Ly, Lx = corr.shape
    return (int(dy) - Ly if dy > Ly // 2 else int(dy), int(dx) - Lx if dx > Lx // 2 else int(dx))


def test_displacement_finds_a_known_shift():
    rng = np.random.default_rng(0)
    ref = rng.random((64, 80))
    assert displacement(np.roll(ref, (17, -5), axis=(0, 1)), ref) == (17, -5)


def test_detection_finds_most_simulated_cells(day_one):
    """suite2p draws its ROIs in its own reference's coordinates; the truth is the unmoved anatomy's. The
    reference's offset is measured (its refImg against the simulator's noise-free zero-motion image) and
    cross-checked against suite2p's per-frame shifts and the true motion, then undone before matching."""
    summary = day_one["detect"]
    assert summary["frames"] == DETECT_FRAMES and summary["frame_rate_hz"] == 30.0
    assert summary["tau_s"] == pytest.approx(0.683)  # GCaMP6f, the [detect] default
    plane = Path(summary["suite2p_dir"])
    assert plane == day_one["session"] / "detect" / "suite2p" / "plane0"
    truth_dir = day_one["session"] / "acquisition" / "sim_truth"
    truth = load_npy(truth_dir / "suite2p" / "plane0" / "stat.npy")
    truth_ref = load_npy(truth_dir / "suite2p" / "plane0" / "ops.npy").item()["refImg"]
    reg = load_npy(plane / "reg_outputs.npy").item()
    offset = displacement(np.asarray(reg["refImg"], np.float64), np.asarray(truth_ref, np.float64))
    # the reference averages real frames, which the simulator moved at most motion_max_px: beyond that the movie
    # rig detect read is not the one the simulator rendered (a reader or writer bug, not registration)
    resolved = json.loads((day_one["session"] / "config.resolved.json").read_text(encoding="utf-8"))
    bound = resolved["acquisition"]["sim"]["motion_max_px"] + 1
    assert max(abs(offset[0]), abs(offset[1])) <= bound, f"suite2p's reference sits {offset} px from the truth"
    # suite2p's frame shifts are the true motion minus the reference's offset: registration followed the motion
    used = np.load(day_one["session"] / "detect" / "frame_index.npy")  # the movie frames suite2p got, in order
    true_shifts = np.load(truth_dir / "ground_truth.npz")["shifts"][used]
    residual = true_shifts - np.column_stack([reg["yoff"], reg["xoff"]]) - np.array(offset)
    assert np.all(np.median(np.abs(residual), axis=0) < 1.0), (
        f"suite2p's shifts do not follow the simulated motion: reference offset {offset}, median |residual| "
        f"{np.median(np.abs(residual), axis=0)} px")
    record = summary["reference"]  # what rig detect says about the reference the rig will register against
    assert record["shifts_at_limit"] == 0 and record["image"] == "refImg in ops.npy"
    assert np.allclose(record["offset_px"], np.median(np.column_stack([reg["yoff"], reg["xoff"]]), axis=0))
    somas = [_pixels(t, crop=True) for t in truth]
    detected = [_pixels(d, crop=False, shift=(-offset[0], -offset[1])) for d in load_npy(plane / "stat.npy")]
    best = np.array([max(len(s & d) / len(s | d) for d in detected) for s in somas])
    matched = float(np.mean(best >= 0.5))
    assert matched >= 0.6, (f"{matched:.0%} of {len(somas)} true cells matched at IoU >= 0.5 (reference offset "
                            f"{offset} px; IoUs {np.round(best, 2)})")


def test_the_detected_folder_is_what_the_rig_loads(day_one):
    from acquisition.rois import load_suite2p  # noqa: PLC0415

    rois = load_suite2p(day_one["detect"]["suite2p_dir"])
    assert (rois.Ly, rois.Lx) == (256, 256)
    assert rois.n_rois == day_one["detect"]["rois"] and rois.cells_only().n_rois == day_one["detect"]["cells"]
    assert rois.mean_img is not None and rois.ops["fs"] == 30.0
    # the rig registers against suite2p's own reference: the one its ROIs are drawn in
    ref = load_npy(Path(day_one["detect"]["suite2p_dir"]) / "ops.npy").item()["refImg"]
    assert rois.ref_img is not None and np.array_equal(rois.ref_img, ref)


def test_the_next_session_runs_with_the_chosen_ensembles(day_one):
    config = day_one["config"]
    # rank and check in this process (the same CLI entry point, without two more interpreters starting)
    code, out, err = _rig_here("rank", day_one["detect"]["suite2p_dir"], "--n-up", "2", "--n-down", "2",
                               "--write", str(config))
    assert code == 0, err
    chosen = json.loads(out.strip().splitlines()[-1])
    assert len(chosen["up"]) == 2 and len(chosen["down"]) == 2 and chosen["written"], err
    code, out, err = _rig_here("check", str(config))
    assert code == 0, err + out
    run = _rig("run", str(config), "--headless", "--duration", "1", "--sessions-dir", str(day_one["root"] / "next"))
    summary = _last_json(run)
    assert "failure" not in summary and summary["frames"] > 0 and summary["bad_frames"] == 0, run.stderr[-3000:]
    session = Path(summary["session"])
    used = json.loads((session / "config.resolved.json").read_text(encoding="utf-8"))
    assert used["decoder"]["up"] == chosen["up"] and used["decoder"]["down"] == chosen["down"]
    assert Path(used["acquisition"]["rois"]["suite2p_dir"]) == Path(day_one["detect"]["suite2p_dir"]).resolve()
    extracted = load_npy(session / "acquisition" / "rois" / "iscell.npy")
    assert int((extracted[:, 0] > 0.5).sum()) == chosen["rois"]  # the detected cells, in the rig's order
