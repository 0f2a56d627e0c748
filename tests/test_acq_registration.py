"""Rigid registration: accuracy on synthetic movies with known subpixel shifts, convention, flags."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import scipy.fft as sfft

from acquisition.config import RegistrationConfig
from acquisition.pipeline import FramePipeline
from acquisition.reg_refine import refine_reference
from acquisition.registration import (
    RigidRegistrar,
    _Downsampler,
    build_reference,
    shift_image_integer,
    shift_image_subpixel,
    spatial_taper_mask,
)
from acquisition.rois import RoiSet
from acquisition.validate import FrameFlag
from tests.test_acq_synth import _cell_stat, make_movie, make_pmt_movie, render


@pytest.fixture(scope="module")
def movie_256():
    return make_movie(T=80, Ly=256, Lx=256, n_cells=80, max_shift=20.0, seed=11)


@pytest.fixture(scope="module")
def movie_128():
    return make_movie(T=60, Ly=128, Lx=128, n_cells=30, max_shift=10.0, seed=5)


def _rms(est: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(((est - truth) ** 2).mean()))


@pytest.mark.parametrize("bin_factor", [None, 2, 4])
def test_subpixel_accuracy_at_every_resolution(movie_256, bin_factor):
    reg = RigidRegistrar(movie_256.reference, bin_factor=bin_factor)
    assert reg.bin == (bin_factor or 1)  # 256 px defaults to full resolution
    assert reg.fine_size == (0 if reg.bin == 1 else 192)  # binned: refined on a full-resolution crop
    out = np.array([reg.register(f) for f in movie_256.frames])
    assert _rms(out[:, :2], movie_256.shifts) <= 0.2
    assert np.all(out[:, 3] == 0), "no frame within bounds should be flagged"
    assert np.all(out[:, 2] > reg.min_corr)


def test_subpixel_accuracy_full_resolution_path(movie_128):
    reg = RigidRegistrar(movie_128.reference)
    assert reg.bin == 1
    out = np.array([reg.register(f) for f in movie_128.frames])
    assert _rms(out[:, :2], movie_128.shifts) <= 0.2


def test_shift_convention_content_moves_by_plus_dy_dx():
    ref = render(96, 96, np.array([30.0, 60.0, 45.0]), np.array([40.0, 20.0, 70.0]), 3.0, np.array([1.0, 2.0, 1.5]))
    ref = 100 + 1000 * ref
    moved = 100 + 1000 * render(96, 96, np.array([33.0, 63.0, 48.0]), np.array([38.0, 18.0, 68.0]), 3.0,
                                np.array([1.0, 2.0, 1.5]))
    dy, dx, corr, flags = RigidRegistrar(ref).register(moved)
    assert dy == pytest.approx(3.0, abs=0.1)
    assert dx == pytest.approx(-2.0, abs=0.1)
    assert corr > 0.5 and flags == 0


def test_identical_frame_correlates_near_one(movie_128):
    reg = RigidRegistrar(movie_128.reference, norm_frames=False)
    dy, dx, corr, flags = reg.register(movie_128.reference)
    assert abs(dy) < 1e-3 and abs(dx) < 1e-3
    assert corr == pytest.approx(1.0, abs=0.05)


def test_bright_uint16_frames_do_not_overflow_when_binned(movie_256):
    bright = np.clip(movie_256.frames[3].astype(np.int64) * 40, 0, 65535).astype(np.uint16)
    reg = RigidRegistrar(movie_256.reference.astype(np.float32) * 40)
    dy, dx, _, _ = reg.register(bright)
    assert abs(dy - movie_256.shifts[3, 0]) < 0.5 and abs(dx - movie_256.shifts[3, 1]) < 0.5


def test_shift_beyond_maxregshift_is_flagged_and_clamped(movie_128):
    reg = RigidRegistrar(movie_128.reference, maxregshift=0.05)  # bound: 6 px
    frame = shift_image_integer(movie_128.reference, 20, -3, fill=float(movie_128.reference.mean()))
    dy, dx, corr, flags = reg.register(frame)
    assert flags & FrameFlag.SHIFT_OUT_OF_BOUNDS
    assert abs(dy) <= reg.max_shift_px and abs(dx) <= reg.max_shift_px


def test_unrelated_frame_is_flagged_low_correlation(movie_128):
    reg = RigidRegistrar(movie_128.reference, min_corr=0.1)
    noise = np.random.default_rng(0).normal(500, 50, (128, 128)).astype(np.float32)
    _, _, corr, flags = reg.register(noise)
    assert corr < 0.1
    assert flags & FrameFlag.LOW_CORR


def test_wrong_frame_shape_raises(movie_128):
    reg = RigidRegistrar(movie_128.reference)
    with pytest.raises(ValueError, match="frame shape"):
        reg.register(np.zeros((64, 64)))


@pytest.mark.parametrize("kwargs, field", [({"maxregshift": 0.0}, "maxregshift"),
                                           ({"smooth_sigma": 0.0}, "smooth_sigma"),
                                           ({"bin_factor": 3}, "bin_factor"),
                                           ({"whitening": "white"}, "whitening"),
                                           ({"fine_size": 8, "bin_factor": 2}, "fine_size"),
                                           ({"quality_frames": 3}, "n_frames")])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        RigidRegistrar(np.ones((64, 64)), **kwargs)


def test_reference_with_nan_is_refused():
    ref = np.ones((64, 64))
    ref[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RigidRegistrar(ref)


def test_build_reference_registers_frames_up_to_a_constant_offset(movie_128):
    ref = build_reference(movie_128.frames, niter=4)
    reg = RigidRegistrar(ref)
    est = np.array([reg.register(f)[:2] for f in movie_128.frames])
    offset = (est - movie_128.shifts).mean(axis=0)
    assert _rms(est - offset, movie_128.shifts) <= 0.2
    # re-centred as suite2p does: the reference sits near the frames' mean position
    assert np.all(np.abs(est.mean(axis=0)) < 3.0)


def test_taper_mask_is_one_inside_and_falls_at_edges():
    mask = spatial_taper_mask(3.45, 64, 80)
    assert mask.shape == (64, 80)
    assert mask[32, 40] == pytest.approx(1.0, abs=3e-3)
    assert mask[0, 0] < 0.1 and mask[0, 40] < 0.2


def _peak_bytes_allocated(call, repeats: int = 5) -> int:
    """Most memory held at once by temporaries of ``call`` (after warm-up calls fill any caches)."""
    for _ in range(3):
        call()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(repeats):
            call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("bin_factor", [1, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_register_allocates_no_frame_sized_arrays(movie_128, dtype, bin_factor):
    """Per-frame work writes into preallocated buffers: a 128x128 spectrum alone would be 66 KB."""
    reg = RigidRegistrar(movie_128.reference, bin_factor=bin_factor)
    frame = movie_128.frames[5].astype(dtype)
    assert _peak_bytes_allocated(lambda: reg.register(frame)) < 8_000


def test_phase_correlation_matches_public_scipy_fft(movie_128):
    """The correlator calls scipy.fft's pocketfft binding directly (for ``out=``): same numbers as scipy.fft."""
    reg = RigidRegistrar(movie_128.reference, bin_factor=1, whitening="phase")
    corr = reg._corr
    cc = corr.correlate(movie_128.frames[7].astype(np.float32)).copy()
    spec = sfft.rfft2(corr._buf)  # _buf holds the centred, tapered frame
    expected = sfft.irfft2(spec / (np.abs(spec) + 1e-5) * corr._ref_spec, s=cc.shape)
    np.testing.assert_allclose(cc, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(corr._spec, spec / (np.abs(spec) + 1e-5) * corr._ref_spec, rtol=1e-5, atol=1e-7)
    # matched whitening: the frame is not whitened, only scaled so that the reference itself peaks at 1
    reg = RigidRegistrar(movie_128.reference, bin_factor=1)
    corr = reg._corr
    cc = corr.correlate(movie_128.frames[7].astype(np.float32)).copy()
    spec = sfft.rfft2(corr._buf)
    scale = corr._norm / np.sqrt((np.abs(spec) ** 2 * corr._energy_weight).sum())
    expected = sfft.irfft2(spec * scale * corr._ref_spec, s=cc.shape)
    np.testing.assert_allclose(cc, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert corr.correlate(movie_128.reference.astype(np.float32))[0, 0] == pytest.approx(1.0, abs=1e-4)


def _halve_reference(image: np.ndarray) -> np.ndarray:
    """The [1, 3, 3, 1] stride-2 stage in plain numpy float32, in the compiled kernel's order of operations."""
    f32 = np.float32
    x = image.astype(f32)
    h, w = x.shape[0] // 2, x.shape[1] // 2
    rows = np.arange(h)
    prev = np.maximum(2 * rows - 1, 0)
    nxt = np.where(rows < h - 1, 2 * rows + 2, min(2 * h, x.shape[0] - 1))
    t = ((x[2 * rows] + x[2 * rows + 1]) * f32(3) + x[prev]) + x[nxt]
    cols = np.arange(w)
    prev = np.maximum(2 * cols - 1, 0)
    nxt = np.where(cols < w - 1, 2 * cols + 2, min(2 * w, x.shape[1] - 1))
    return ((t[:, 2 * cols] + t[:, 2 * cols + 1]) * f32(3) + t[:, prev]) + t[:, nxt]


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("shape", [(64, 64), (67, 33), (2, 9)])
def test_binomial_downsampler_matches_numpy(dtype, shape):
    rng = np.random.default_rng(shape[0])
    image = (rng.random(shape) * 30000).astype(dtype)
    expected = _halve_reference(image)
    assert np.array_equal(_Downsampler(shape, 2)(image), expected)
    if min(shape) >= 4:
        assert np.array_equal(_Downsampler(shape, 4)(image), _halve_reference(expected))


# ---------------------------------------------------------------- an independent movie: few photons, PMT noise


@pytest.fixture(scope="module")
def pmt_movie():
    """Not our simulator's statistics: 3 photons/px at baseline, PMT gain noise, bright neuropil, bleaching."""
    return make_pmt_movie(T=150, Ly=256, Lx=256, n_cells=60, photons=3.0, neuropil=2.0, seed=3)


def _rms_2d(est: np.ndarray, truth: np.ndarray) -> float:
    err = est - truth
    err -= err.mean(axis=0)  # a reference sits wherever it was built: only the constant offset is free
    return float(np.sqrt((err**2).sum(axis=1).mean()))


def _aligned_mean(frames: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    return np.mean([shift_image_subpixel(f, -dy, -dx) for f, (dy, dx) in zip(frames, shifts, strict=True)], axis=0)


def test_registration_on_few_photons_whatever_made_the_reference(pmt_movie):
    frames, shifts = pmt_movie.frames[:90], pmt_movie.shifts[:90]
    earlier = _aligned_mean(pmt_movie.frames[90:], pmt_movie.shifts[90:])  # independent noise: a past session
    refs = {"noiseless": pmt_movie.clean_reference, "previous session": earlier,
            "previous session, int16 x0.25 - 300": (earlier * 0.25 - 300).astype(np.int16),
            "build_reference": build_reference(frames)}
    for name, ref in refs.items():
        reg = RigidRegistrar(ref)
        out = np.array([reg.register(f) for f in frames])
        assert _rms_2d(out[:, :2], shifts) <= 0.1, f"{name}: {_rms_2d(out[:, :2], shifts):.3f} px"


def test_low_corr_is_judged_against_the_sessions_own_frames(pmt_movie):
    """At few photons/px a good frame's absolute corr depends on the rig; bad frames stand out against the
    session's own frames: another field of view, and frames torn by motion during the scan."""
    reg = RigidRegistrar(pmt_movie.clean_reference, quality_frames=100)
    good = np.array([reg.register(f) for f in pmt_movie.frames[:135]])
    assert reg.baseline.ready
    assert np.mean(good[:, 3].astype(int) & FrameFlag.LOW_CORR != 0) <= 0.01
    other_field = make_pmt_movie(T=3, Ly=256, Lx=256, n_cells=60, photons=3.0, neuropil=2.0, seed=99).frames
    torn = []
    for f in pmt_movie.frames[135:140]:  # the lower half scanned after a 10 px jump
        f = f.copy()
        f[128:] = np.roll(f[128:], 10, axis=1)
        torn.append(f)
    for frame in [*other_field, *torn]:
        _, _, corr, flags = reg.register(frame)
        assert flags & FrameFlag.LOW_CORR, f"corr {corr:.3f}, z {reg.last_z:.1f} not flagged"
    # good frames after the bad ones are still good: bad frames do not enter the baseline
    after = np.array([reg.register(f)[3] for f in pmt_movie.frames[140:]])
    assert np.mean(after & FrameFlag.LOW_CORR != 0) <= 0.1


# ---------------------------------------------------------------- a motion-blurred reference, refined from the frames


def _pmt_roi_set(movie) -> RoiSet:
    stat, _ = _cell_stat(movie.centres, 2.0, *movie.frames.shape[1:])
    return RoiSet(stat=stat, iscell=np.ones((len(stat), 2)), Ly=movie.frames.shape[1], Lx=movie.frames.shape[2])


def test_plain_mean_reference_is_refined_in_its_own_coordinates(pmt_movie):
    """A plain (unaligned) mean of today's frames is motion-blurred: registration against it errs > 0.1 px.
    Refined from 60 good frames it gets <= 0.1 px, and the frames' mean shift against it is the one against
    the given mean (ROIs drawn on the mean stay valid). A sharp reference is judged sharp (auto keeps it)."""
    frames, shifts = pmt_movie.frames[:100], pmt_movie.shifts[:100]
    plain = pmt_movie.frames.astype(np.float32).mean(axis=0)
    reg = RigidRegistrar(plain)
    before = np.array([reg.register(f)[:2] for f in frames])
    assert _rms_2d(before, shifts) > 0.12  # the problem exists on this movie
    refined = refine_reference(plain, list(frames[:60]), RigidRegistrar)
    assert refined.blur_ratio < 0.9
    reg = RigidRegistrar(refined.image)
    after = np.array([reg.register(f)[:2] for f in frames])
    assert _rms_2d(after, shifts) <= 0.1, f"{_rms_2d(after, shifts):.3f} px"
    moved = (before - after).mean(axis=0)  # where the refined reference sits relative to the given one
    assert np.all(np.abs(moved) <= 0.05), moved
    sharp = _aligned_mean(pmt_movie.frames[90:], pmt_movie.shifts[90:])
    kept = refine_reference(sharp, list(frames[:60]), RigidRegistrar, keep_sharp=0.9)
    assert kept.blur_ratio >= 0.9 and np.array_equal(kept.image, sharp.astype(np.float32))


@pytest.mark.parametrize("background", [False, True])
def test_pipeline_switches_to_the_refined_reference_and_records_when(pmt_movie, background):
    frames, shifts = pmt_movie.frames, pmt_movie.shifts
    plain = frames.astype(np.float32).mean(axis=0)
    cfg = RegistrationConfig(refine_reference="auto", refine_frames=40)
    pipe = FramePipeline(_pmt_roi_set(pmt_movie), reference=plain, registration=cfg,
                         background_reference=background)
    out, events = [], []
    i = 0
    deadline = time.monotonic() + 60.0
    while pipe.reference_switch_frame is None or i < pipe.reference_switch_frame + 100:
        assert time.monotonic() < deadline, "the refined reference was never installed"
        res = pipe.process(frames[i % len(frames)])
        out.append((res.dy, res.dx, res.flags))
        events += pipe.pop_reference_events()
        i += 1
    switch = pipe.reference_switch_frame
    assert switch >= 40 if background else switch == 40  # offline: the frame after the 40th good one
    assert [e["event"] for e in events] == ["reference_refined"] and events[0]["frame"] == switch
    assert np.array_equal(pipe.reference_original, plain)
    assert pipe.refinement is not None and pipe.reference is pipe.refinement.image
    est = np.array(out)[switch:switch + 100, :2]
    truth = shifts[np.arange(switch, switch + 100) % len(frames)]
    assert _rms_2d(est, truth) <= 0.1
    # a sharp reference is kept under "auto", and "never" does not even try
    sharp = _aligned_mean(frames[90:], shifts[90:])
    for mode, expected in (("auto", ["reference_kept"]), ("never", [])):
        pipe = FramePipeline(_pmt_roi_set(pmt_movie), reference=sharp,
                             registration=RegistrationConfig(refine_reference=mode, refine_frames=40))
        kinds = []
        for f in frames[:42]:
            pipe.process(f)
            kinds += [e["event"] for e in pipe.pop_reference_events()]
        assert kinds == expected and pipe.reference_switch_frame is None
        assert np.array_equal(pipe.reference, sharp.astype(np.float32))
