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


def test_the_fine_crop_is_tapered_by_the_stored_mask(pmt_movie):
    """The crop's taper is computed from its two factors as the crop is loaded: each weight the stored mask's
    float32 value, so the loaded crop is (crop - m) * mask as numpy computes it from the 2-D mask."""
    reg = RigidRegistrar(pmt_movie.clean_reference, bin_factor=4)
    fine = reg._fine
    frame = pmt_movie.frames[2]
    y0, x0 = reg._cy + 3, reg._cx - 1
    fine.spectrum_crop(frame, y0, x0)
    mask = spatial_taper_mask(3.45, fine.Ly, fine.Lx)
    crop = frame[y0:y0 + fine.Ly, x0:x0 + fine.Lx].astype(np.float32) * mask
    mean = np.float32(crop.sum(dtype=np.float64) / mask.sum(dtype=np.float64))
    # the mean's float32 sums may be added in another order than numpy's: within float rounding of it
    np.testing.assert_allclose(fine._buf, crop - mean * mask, rtol=0, atol=1e-5 * float(np.abs(crop).max()))
    with pytest.raises(ValueError, match="band"):
        fine.correlate(frame[:fine.Ly, :fine.Lx])


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


@pytest.mark.parametrize("backend", ["ducc0", "pocketfft"])
def test_phase_correlation_matches_public_scipy_fft(movie_128, backend):
    """The correlator calls ducc0 or scipy.fft's pocketfft binding directly (for ``out=``): scipy.fft's numbers."""
    reg = RigidRegistrar(movie_128.reference, bin_factor=1, whitening="phase", fft_backend=backend)
    corr = reg._corr
    cc = corr.correlate(movie_128.frames[7].astype(np.float32)).copy()
    spec = sfft.rfft2(corr._buf)  # _buf holds the centred, tapered frame
    expected = sfft.irfft2(spec / (np.abs(spec) + 1e-5) * corr._ref_spec, s=cc.shape)
    np.testing.assert_allclose(cc, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    whitened = spec / (np.abs(spec) + 1e-5) * corr._ref_spec  # float32 rounding of another FFT: ~1e-6 of the max
    np.testing.assert_allclose(corr._spec, whitened, rtol=1e-5, atol=1e-6 * np.abs(whitened).max())
    # matched whitening: the frame is not whitened, only scaled so that the reference itself peaks at 1
    reg = RigidRegistrar(movie_128.reference, bin_factor=1, fft_backend=backend)
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


# ---------------------------------------------------------------- tracking: the coarse stage skipped when predictable


def _jump_movie(pmt_movie, jump_at: int, jump: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The PMT movie's first 120 frames, the content moved by a further ``jump`` px from frame ``jump_at`` on."""
    frames = pmt_movie.frames[:120].copy()
    shifts = pmt_movie.shifts[:120].copy()
    frames[jump_at:] = np.roll(frames[jump_at:], jump, axis=(1, 2))
    shifts[jump_at:] += jump
    return frames, shifts


@pytest.mark.parametrize("jump", [(0, 10), (-10, 7), (3, -2)])
def test_tracking_skips_the_coarse_stage_and_still_finds_a_jump(pmt_movie, jump):
    """With ``track`` the fine crop is placed at the last good frame's shift and the coarse stage skipped; a
    sudden jump puts the best peak on the search window's edge (or drops corr) and the full path runs: the
    jump is registered as without tracking, and so is every other frame."""
    frames, shifts = _jump_movie(pmt_movie, 60, jump)
    tracked = RigidRegistrar(pmt_movie.clean_reference, bin_factor=4)
    assert tracked.track and tracked.fine_size == 192
    out = np.array([tracked.register(f) for f in frames])
    full = RigidRegistrar(pmt_movie.clean_reference, bin_factor=4, track=False)
    ref = np.array([full.register(f) for f in frames])
    assert full.tracked_frames == 0 and full.track_fallbacks == 0
    assert not out[:, 3].any() and not ref[:, 3].any()
    err, err_full = _rms_2d(out[:, :2], shifts), _rms_2d(ref[:, :2], shifts)  # 192 px crop at 3 photons/px
    assert err <= min(0.11, err_full + 0.005), f"{err:.3f} px tracking, {err_full:.3f} px without"
    np.testing.assert_allclose(out[58:63, :2], shifts[58:63] - shifts[0] + out[0, :2], atol=0.3)
    assert np.sqrt(((out[:, :2] - ref[:, :2]) ** 2).sum(axis=1).mean()) <= 0.05  # same answers, other crop place
    assert tracked.tracked_frames >= 110  # the first frame has no prediction; a big jump falls back once
    if max(map(abs, jump)) > tracked.bin + 1:
        assert tracked.track_fallbacks >= 1
    # replay determinism: the same sequence gives the same shifts, bit for bit
    again = RigidRegistrar(pmt_movie.clean_reference, bin_factor=4)
    assert np.array_equal(np.array([again.register(f) for f in frames]), out)


def test_tracking_is_not_tried_after_a_flagged_frame(pmt_movie):
    reg = RigidRegistrar(pmt_movie.clean_reference, bin_factor=4)
    for f in pmt_movie.frames[:5]:
        reg.register(f)
    assert reg.tracked_frames == 4
    other_field = make_pmt_movie(T=1, Ly=256, Lx=256, n_cells=60, photons=3.0, neuropil=2.0, seed=99).frames[0]
    _, _, _, flags = reg.register(other_field)
    assert flags & FrameFlag.LOW_CORR  # tried from the prediction, fell back, flagged by the full path
    assert reg.track_fallbacks == 1
    reg.register(pmt_movie.frames[5])  # after a flagged frame: the full path, no attempt
    assert (reg.tracked_frames, reg.track_fallbacks) == (4, 1)
    reg.register(pmt_movie.frames[6])
    assert reg.tracked_frames == 5


def test_registrar_from_config_carries_every_switch(pmt_movie):
    cfg = RegistrationConfig(track=False, track_corr_ratio=0.5, fft_workers=2, fine_size=128, bin_factor=2,
                             fft_backend="pocketfft", dft_band=0.3)
    reg = RigidRegistrar.from_config(pmt_movie.clean_reference, cfg)
    assert (reg.track, reg.track_corr_ratio, reg.fine_size, reg.bin, reg._fine.band) == (False, 0.5, 128, 2, 0.3)
    assert (reg._fine._fft.workers, reg._fine._fft.backend) == (2, "pocketfft")
    assert reg._corr._fft.workers == 1  # the small coarse FFT stays on one worker
    reg = RigidRegistrar.from_config(pmt_movie.clean_reference, RegistrationConfig())
    assert (reg.track, reg.track_corr_ratio, reg._fine, reg.bin) == (True, 0.85, None, 1)  # 256 px: full resolution
    assert reg._corr._fft.backend == "ducc0"
    for bad in ({"fft_workers": 0}, {"fft_backend": "fftw"}, {"track_corr_ratio": 1.5}, {"dft_band": 0.6}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RegistrationConfig(**bad)


@pytest.mark.parametrize("band", [0.0, 0.3])
def test_fine_stage_dfts_equal_the_inverse_fft_of_the_spectrum_they_use(pmt_movie, band):
    """With ``dft_band`` the cross-power spectrum outside the band is zeroed and the matrix DFTs run on the band
    alone: their values are still the inverse FFT's map of that spectrum, at whole and quarter pixels."""
    reg = RigidRegistrar(pmt_movie.clean_reference, bin_factor=4, dft_band=band)
    fine = reg._fine
    size, w = reg.fine_size, fine.search
    fine.spectrum_crop(pmt_movie.frames[3], reg._cy + 1, reg._cx - 2)
    spec = fine.cross_power_spectrum()
    kept = np.abs(spec) > 0
    fy, fx = np.abs(np.fft.fftfreq(size))[:, None], np.fft.rfftfreq(size)[None, :]
    inside = (fy <= band) & (fx <= band) if band else np.ones(kept.shape, bool)
    assert not kept[~inside].any() and kept[inside].mean() > 0.99
    cc = sfft.irfft2(spec.astype(np.complex128), s=(size, size))
    ys = np.arange(1 - w, 1 + w + 1)
    xs = np.arange(-2 - w, -2 + w + 1)
    window = cc[np.ix_(ys % size, xs % size)]
    a, b = np.unravel_index(int(np.argmax(window)), window.shape)
    assert fine.integer_peak(1, -2) == (ys[a], xs[b])
    np.testing.assert_allclose(fine._int_values.real, window, rtol=0, atol=1e-4 * np.abs(window).max())
    sy, sx, peak = fine.refine(int(ys[a]), int(xs[b]))
    spec = spec.astype(np.complex128)  # the correlation at the subpixel peak, by a direct Fourier sum
    herm = np.full(spec.shape[1], 2.0)
    herm[0] = herm[-1] = 1.0
    phase = np.exp(2j * np.pi * (np.fft.fftfreq(size)[:, None] * sy + np.fft.rfftfreq(size)[None, :] * sx))
    direct = float((spec * phase * herm[None, :]).real.sum() / size**2)
    assert abs(direct - peak) <= 0.02 * abs(peak)  # the Gaussian fit's value is the best grid point's


def test_a_lost_frame_observed_from_its_record_keeps_the_sequence_bit_exact(pmt_movie):
    """A replay whose movie lost a frame feeds the live result of that frame to ``observe``: the frames after it
    get the live shifts bit for bit (tracking and the corr baseline depend on the frames before)."""
    frames = pmt_movie.frames[:40]
    live = RigidRegistrar(pmt_movie.clean_reference, bin_factor=4, quality_frames=10)
    recorded = [live.register(f) for f in frames]
    replay = RigidRegistrar(pmt_movie.clean_reference, bin_factor=4, quality_frames=10)
    skipping = RigidRegistrar(pmt_movie.clean_reference, bin_factor=4, quality_frames=10)
    out, skipped = [], []
    for i, f in enumerate(frames):
        if i in (12, 13, 25):  # lost by the movie writer
            replay.observe(*recorded[i])
            continue
        out.append(replay.register(f))
        skipped.append(skipping.register(f))
    kept = [r for i, r in enumerate(recorded) if i not in (12, 13, 25)]
    assert out == kept
    assert skipped != kept  # without observe() the frames after a gap differ (here: where the crop sat)


def test_the_fourier_shift_is_the_phase_ramp_and_moves_whole_pixels_as_a_roll():
    """shift_image_subpixel's separable ramp against the per-frequency one written out, and whole shifts."""
    image = np.random.default_rng(4).random((48, 61)).astype(np.float32)
    dy, dx = 1.37, -2.81
    ky, kx = np.fft.fftfreq(48)[:, None], np.fft.rfftfreq(61)[None, :]
    direct = np.fft.irfft2(np.fft.rfft2(image.astype(np.float64)) * np.exp(-2j * np.pi * (ky * dy + kx * dx)),
                           s=(48, 61))
    np.testing.assert_allclose(shift_image_subpixel(image, dy, dx), direct, rtol=0, atol=1e-12)
    np.testing.assert_allclose(shift_image_subpixel(image, 3, -5), np.roll(image, (3, -5), axis=(0, 1)), atol=1e-6)


def test_warm_up_leaves_no_trace_in_what_the_next_frames_get():
    """The warm-up before frame 0 must not change a single shift of the session: same frames, same results, with
    and without it (baseline, tracking prediction and counters restored)."""
    movie = make_movie(T=30, Ly=128, Lx=128, n_cells=20, max_shift=4.0, seed=8)
    plain, warmed = (RigidRegistrar(movie.reference, bin_factor=2) for _ in range(2))  # a fine stage: tracking
    warmed.warm_up(movie.reference.astype(np.uint16))
    assert warmed._last_good is None and warmed.tracked_frames == 0
    for frame in movie.frames:
        assert plain.register(frame) == warmed.register(frame)
    assert (plain.tracked_frames, plain.track_fallbacks) == (warmed.tracked_frames, warmed.track_fallbacks)


def test_prewarm_between_frames_changes_no_result():
    """Registering the last frame again before the next is due (acquisition.pacer) is thrown away: with a pre-warm
    before every frame the shifts, correlations, flags, tracking and counters are those without."""
    movie = make_movie(T=30, Ly=128, Lx=128, n_cells=20, max_shift=4.0, seed=9)
    plain, warmed = (RigidRegistrar(movie.reference, bin_factor=2) for _ in range(2))
    warmed.prewarm(movie.frames[0])  # before any frame: the full path, nothing kept
    for i, frame in enumerate(movie.frames):
        if i:
            warmed.prewarm(movie.frames[i - 1])
        assert plain.register(frame) == warmed.register(frame)
    assert plain.tracked_frames > 0
    assert (plain.tracked_frames, plain.track_fallbacks, plain._last_good) == (
        warmed.tracked_frames, warmed.track_fallbacks, warmed._last_good)
