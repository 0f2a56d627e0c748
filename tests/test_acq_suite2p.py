"""Cross-checks against suite2p itself (needs the suite2p extra: see docs/REGISTRATION.md for the install).

Skipped when suite2p is not importable. ``import suite2p`` pulls in torch, so these run on the CPU only.
"""

from __future__ import annotations

import numpy as np
import pytest

from acquisition.extraction import Extractor
from acquisition.registration import RigidRegistrar
from acquisition.rois import RoiSet
from tests.conftest import prewarm_between_frames
from tests.test_acq_synth import make_movie, make_pmt_movie

pytestmark = pytest.mark.suite2p


def suite2p_rigid_shifts(frames: np.ndarray, ref: np.ndarray, maxregshift: float = 0.1,
                         smooth_sigma: float = 1.15, spatial_taper: float = 3.45) -> tuple[np.ndarray, ...]:
    """suite2p 1.x rigid registration, called directly: (yoff, xoff, corr) per frame, integer shifts."""
    torch = pytest.importorskip("torch")
    register = pytest.importorskip("suite2p.registration.register")
    rigid = pytest.importorskip("suite2p.registration.rigid")
    device = torch.device("cpu")
    (mask_mul, mask_offset, cf_ref, _, _, _, _, rmin, rmax) = register.compute_filters_and_norm(
        ref.astype(np.int16), norm_frames=True, spatial_smooth=smooth_sigma, spatial_taper=spatial_taper,
        block_size=None, device=device)
    batch = torch.from_numpy(frames.astype(np.int16))
    batch = torch.clip(batch, int(rmin), int(rmax))
    ymax, xmax, cmax, _ = rigid.phasecorr(batch, cf_ref, mask_mul, mask_offset, maxregshift=maxregshift,
                                          smooth_sigma_time=0)
    return ymax.numpy(), xmax.numpy(), cmax.numpy()


@pytest.fixture(scope="module")
def suite2p():
    return pytest.importorskip("suite2p")


@pytest.fixture(scope="module")
def movie_and_suite2p_shifts(suite2p):
    movie = make_movie(T=150, Ly=256, Lx=256, n_cells=80, max_shift=20.0, seed=17)
    return movie, suite2p_rigid_shifts(movie.frames, movie.reference)


@pytest.mark.parametrize("bin_factor", [None, 4])
def test_rigid_shifts_agree_with_suite2p(movie_and_suite2p_shifts, bin_factor):
    movie, (ys2p, xs2p, _) = movie_and_suite2p_shifts
    reg = RigidRegistrar(movie.reference, bin_factor=bin_factor)
    ours = np.array([reg.register(f)[:2] for f in movie.frames])
    within = (np.abs(ours[:, 0] - ys2p) <= 1.0) & (np.abs(ours[:, 1] - xs2p) <= 1.0)
    assert within.mean() >= 0.99, f"{(~within).sum()} of {within.size} frames differ by more than 1 px"
    # both are right; ours is subpixel, suite2p's rigid path is integer
    rms_ours = np.sqrt(((ours - movie.shifts) ** 2).mean())
    rms_s2p = np.sqrt(((np.stack([ys2p, xs2p], 1) - movie.shifts) ** 2).mean())
    assert rms_ours < rms_s2p


def test_masks_equal_suite2p_masks(suite2p):
    from suite2p.extraction.masks import create_masks

    movie = make_movie(T=2, Ly=128, Lx=128, n_cells=30, max_shift=2.0, seed=3)
    stat = movie.stat
    # crowd some cells so that overlaps and the lam percentile rule matter
    for s in stat[:5]:
        s["overlap"] = s["overlap"].copy()
        s["overlap"][:4] = True
    ex = Extractor(RoiSet(stat=stat, iscell=np.ones((len(stat), 2)), Ly=128, Lx=128))
    cell_masks, neuropil_masks = create_masks(stat, 128, 128, lam_percentile=50.0, allow_overlap=False,
                                              neuropil_extract=True, inner_neuropil_radius=2,
                                              min_neuropil_pixels=350, circular_neuropil=False)
    for i, ((idx, w), (s2p_idx, s2p_w)) in enumerate(zip(ex.cell_masks, cell_masks, strict=True)):
        order, s2p_order = np.argsort(idx), np.argsort(s2p_idx)
        np.testing.assert_array_equal(idx[order], s2p_idx[s2p_order], err_msg=f"cell mask {i}")
        np.testing.assert_allclose(w[order], s2p_w[s2p_order], rtol=1e-5, err_msg=f"cell weights {i}")
    for i, (ours, theirs) in enumerate(zip(ex.neuropil_masks, neuropil_masks, strict=True)):
        np.testing.assert_array_equal(np.sort(ours), np.sort(theirs), err_msg=f"neuropil mask {i}")


# ---------------------------------------------------------------- a genuine suite2p run on an independent movie


@pytest.fixture(scope="session")
def pmt_suite2p(tmp_path_factory: pytest.TempPathFactory):
    """suite2p 1.x run end to end (registration, detection, extraction) on a movie from the independent
    generator (4 photons/px, PMT gain noise, bleaching): (movie, suite2p plane folder). One run per session."""
    suite2p = pytest.importorskip("suite2p")
    tifffile = pytest.importorskip("tifffile")
    movie = make_pmt_movie(T=300, Ly=256, Lx=256, n_cells=60, photons=4.0, seed=1)
    root = tmp_path_factory.mktemp("suite2p_pmt")
    (root / "data").mkdir()
    tifffile.imwrite(root / "data" / "movie.tif", movie.frames)
    settings = suite2p.default_settings()
    settings.update({"torch_device": "cpu", "fs": 30.0, "diameter": [8.0, 8.0]})
    settings["run"]["do_deconvolution"] = False
    settings["registration"]["nonrigid"] = False
    settings["detection"]["threshold_scaling"] = 0.6
    suite2p.run_s2p(db={"data_path": [str(root / "data")], "save_path0": str(root / "out"), "nplanes": 1,
                        "nchannels": 1}, settings=settings)
    return movie, root / "out" / "suite2p" / "plane0"


def _rms_2d(est: np.ndarray, truth: np.ndarray) -> float:
    """sqrt(mean(ey^2 + ex^2)) with the constant offset removed (a reference sits wherever it was built)."""
    err = est - truth
    err -= err.mean(axis=0)
    return float(np.sqrt((err**2).sum(axis=1).mean()))


def _suite2p_references(plane) -> dict[str, np.ndarray]:
    """suite2p's refImg as written (int16) and as other rigs hand it over: rescaled, offset, zero-bordered."""
    from rig.core.safe_npy import load_npy

    ops = load_npy(plane / "ops.npy").item()
    ref = np.asarray(ops["refImg"])
    assert ref.dtype == np.int16
    (y0, y1), (x0, x1) = ops["yrange"], ops["xrange"]
    bordered = np.zeros_like(ref)  # a registered mean's valid region only, zero outside (suite2p 0.x meanImg)
    bordered[y0:y1, x0:x1] = ref[y0:y1, x0:x1]
    if (y0, y1, x0, x1) == (0, ref.shape[0], 0, ref.shape[1]):  # suite2p saw no motion: crop anyway
        bordered[:8], bordered[-8:], bordered[:, :8], bordered[:, -8:] = 0, 0, 0, 0
    return {"refImg int16": ref, "scaled x0.3 + 1000": ref * 0.3 + 1000.0, "offset -5000": ref - 5000.0,
            "zero border outside yrange/xrange": bordered}


def test_registration_on_genuine_suite2p_references(pmt_suite2p):
    movie, plane = pmt_suite2p
    for name, ref in _suite2p_references(plane).items():
        reg = RigidRegistrar(ref)
        out = np.array([reg.register(f) for f in movie.frames])
        rms = _rms_2d(out[:, :2], movie.shifts)
        assert rms <= 0.1, f"{name}: {rms:.3f} px RMS"
        assert np.mean(out[:, 3] != 0) <= 0.02, f"{name}: {np.mean(out[:, 3] != 0):.1%} of good frames flagged"


def test_pipeline_fluorescence_matches_truth_and_suite2p(pmt_suite2p):
    """The live pipeline with suite2p's ROIs and refImg: F vs the true (noiseless) fluorescence and suite2p's F."""
    from acquisition.config import ExtractionConfig
    from acquisition.pipeline import FramePipeline
    from acquisition.registration import shift_image_subpixel
    from acquisition.rois import load_suite2p

    movie, plane = pmt_suite2p
    rois = load_suite2p(plane)
    assert rois.n_rois >= 10
    pipe = FramePipeline(rois)
    # the same with the extraction computed beside registration (acquisition.extract_ahead), pre-warmed between
    # frames as the pacer does (registration and the worker run on the last frame): the same numbers
    ahead = FramePipeline(rois, extraction=ExtractionConfig(ahead="always"))
    T, n = movie.frames.shape[0], rois.n_rois
    F, Fneu, est = np.empty((T, n)), np.empty((T, n)), np.empty((T, 2))
    for t, frame in enumerate(movie.frames):
        res = pipe.process(frame)
        F[t], Fneu[t], est[t] = res.F, res.Fneu, (res.dy, res.dx)
        if t:
            prewarm_between_frames(ahead)
        beside = ahead.process(frame)
        np.testing.assert_array_equal(beside.F, res.F)
        np.testing.assert_array_equal(beside.Fneu, res.Fneu)
    worker = ahead.ahead_stats()
    assert worker is not None and worker["cells_taken"] > 0 and worker["neuropil_taken"] > 0
    assert worker["rehearsals"] == T - 1
    ahead.close()
    # the truth: the same masks on the noiseless frames moved into the reference's coordinates
    offset = (est - movie.shifts).mean(axis=0)
    truth_ex = Extractor(rois, subpixel=False)
    truth, truth_neu = np.empty((T, n), np.float32), np.empty((T, n), np.float32)
    for t in range(T):
        truth_ex.extract(shift_image_subpixel(movie.clean[t], -offset[0], -offset[1]), 0.0, 0.0, truth[t],
                         truth_neu[t])
    F_s2p, Fneu_s2p = np.load(plane / "F.npy").T, np.load(plane / "Fneu.npy").T

    def median_r(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.median([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(n)]))

    assert median_r(F, truth) >= 0.78
    assert median_r(F, F_s2p) >= 0.93
    # the neuropil, read at a whole shift held within 0.75 px (the default): as close to the truth as at the nearest
    # pixel (median r 0.919 against 0.918), a little further from suite2p's, which reads at the nearest (0.992 / 0.999)
    assert median_r(Fneu, truth_neu) >= 0.90
    assert median_r(Fneu, Fneu_s2p) >= 0.98


def test_frames_handed_over_in_column_order_give_the_same_numbers(pmt_suite2p):
    """CLOOSE frames are checked and registered from their column-major bytes while the reader thread puts them in
    row order (Frame.wire): with suite2p's ROIs and refImg, sent over CLOOSE's TCP by its sender's twin, every number
    equals that of the same frames processed in row order, as a replay reads them; with the extraction worker
    (which waits for the row order) and without."""
    from acquisition.config import ExtractionConfig, RegistrationConfig
    from acquisition.pipeline import FramePipeline
    from acquisition.rois import load_suite2p
    from acquisition.sources.cloose_tcp import ClooseTcpSource
    from tests.cloose_twins import ConnectingSender, wire_bytes
    from tests.conftest import wait_for

    movie, plane = pmt_suite2p
    rois = load_suite2p(plane)
    frames = np.clip(movie.frames[:80], 0, None).astype(np.uint16)  # a scope's unsigned pixels
    src = ClooseTcpSource("127.0.0.1", 0, *frames.shape[1:], early_min_bytes=0)  # 256x256: below the default
    assert src.deliver_early()
    src.start_keeping()
    src.open()
    scope = ConnectingSender(src.port)
    modes = ("always", "never")
    fine = RegistrationConfig(bin_factor=2)  # a 256-px frame has no fine stage by default: its crop is read too

    def pipelines() -> dict[str, FramePipeline]:
        return {mode: FramePipeline(rois, registration=fine, extraction=ExtractionConfig(ahead=mode)) for mode in modes}
    early, rows = pipelines(), pipelines()
    try:
        assert early["always"].registrar is not None and early["always"].registrar._fine is not None
        for t, image in enumerate(frames):
            scope.send(wire_bytes(image))
            frame = wait_for(lambda: src.read(0.1), 5, "a frame")
            assert frame.wire is not None and frame.wire.flags.f_contiguous
            for mode in modes:
                for pipe in (early[mode], rows[mode]) if t else ():  # as the pacer does between frames
                    if mode == "always":
                        prewarm_between_frames(pipe)
                    else:
                        pipe.prewarm()
                got = early[mode].process(frame)
                got = (got.F.copy(), got.Fneu.copy(), got.dy, got.dx, got.corr, got.flags)
                want = rows[mode].process(image)
                np.testing.assert_array_equal(got[0], want.F)
                np.testing.assert_array_equal(got[1], want.Fneu)
                assert got[2:] == (want.dy, want.dx, want.corr, want.flags), (t, mode)
            np.testing.assert_array_equal(frame.data, image)
        worker = early["always"].ahead_stats()
        assert worker is not None and worker["cells_taken"] > 0 and worker["neuropil_taken"] > 0
    finally:
        scope.close()
        src.close()
        for pipe in (*early.values(), *rows.values()):
            pipe.close()
