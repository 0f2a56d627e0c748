"""Frame checks and the pipeline: bad frames are flagged and counted, never a crash."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from acquisition.config import AcquisitionConfig, ExtractionConfig, RegistrationConfig, ValidationConfig
from acquisition.pipeline import FramePipeline, load_reference_image
from acquisition.rois import RoiSet
from acquisition.sources.base import Frame
from acquisition.validate import UNUSABLE, FrameFlag, FrameValidator, flag_names
from tests.conftest import wait_for
from tests.test_acq_synth import make_movie


@pytest.fixture(scope="module")
def movie():
    return make_movie(T=40, Ly=96, Lx=96, n_cells=16, max_shift=5.0, seed=8)


def _rois(m, with_ref: bool = True) -> RoiSet:
    return RoiSet(stat=m.stat, iscell=np.ones((len(m.stat), 2)), Ly=96, Lx=96,
                  ref_img=m.reference if with_ref else None)


def test_validator_flags():
    v = FrameValidator((8, 8), max_saturated_fraction=0.05)
    good = np.full((8, 8), 100, np.uint16)
    assert v.check(good) == 0
    assert v.check(np.zeros((8, 8), np.uint16)) == FrameFlag.ALL_ZERO
    assert v.check(np.zeros((8, 8), np.float32)) == FrameFlag.ALL_ZERO
    assert v.check(np.zeros((8, 9), np.uint16)) == FrameFlag.WRONG_SHAPE
    assert v.check(np.zeros((8, 8), np.complex64)) == FrameFlag.WRONG_DTYPE
    assert v.check(np.zeros((8, 8), bool)) == FrameFlag.WRONG_DTYPE
    nan = np.ones((8, 8), np.float32)
    nan[2, 3] = np.nan
    assert v.check(nan) == FrameFlag.NAN
    inf = np.ones((8, 8), np.float64)
    inf[0, 0] = -np.inf
    assert v.check(inf) == FrameFlag.NAN
    sat = good.copy()
    sat[:2, :] = 65535  # 25 % of the pixels
    assert v.check(sat) == FrameFlag.SATURATED
    sat1 = good.copy()
    sat1[0, 0] = 65535  # one pixel is fine
    assert v.check(sat1) == 0
    assert FrameValidator((8, 8), saturation_level=1000).check(np.full((8, 8), 1000, np.uint16)) \
        == FrameFlag.SATURATED
    assert v.check(good.astype(">u2")) == 0  # big-endian data is fine
    assert flag_names(FrameFlag.NAN | FrameFlag.LOW_CORR) == ["NAN", "LOW_CORR"]


def test_validator_on_larger_integer_frames_samples_rows_but_confirms_all_zero():
    v = FrameValidator((64, 64))
    almost_zero = np.zeros((64, 64), np.uint16)
    almost_zero[33, 7] = 5  # not on a sampled row
    assert v.check(almost_zero) == 0
    assert v.check(np.zeros((64, 64), np.int16)) == FrameFlag.ALL_ZERO
    band = np.full((64, 64), 300, np.uint16)
    band[10:26] = 65535  # 25 % saturated
    assert v.check(band) == FrameFlag.SATURATED


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32])
def test_saturation_is_flagged_as_the_rule_says_in_either_memory_and_byte_order(dtype):
    """The check counts saturated pixels on every 4th row in one compiled pass; the rule, restated plainly here:
    flagged when that count exceeds the allowed fraction scaled to the rows sampled. The same answer for a
    column-major frame (CLOOSE's) and a byte-swapped one (numpy's path)."""
    level = np.iinfo(dtype).max
    v = FrameValidator((64, 48), max_saturated_fraction=0.02)
    allowed = int(0.02 * 64 * 48) * (64 // 4) / 64
    rng = np.random.default_rng(11)
    seen = set()
    for n_saturated in range(0, 130, 4):
        frame = rng.integers(1, level // 2, (64, 48)).astype(dtype)
        frame.flat[rng.choice(frame.size, n_saturated, replace=False)] = level
        expected = FrameFlag.SATURATED if np.count_nonzero(frame[::4] == level) > allowed else FrameFlag.NONE
        seen.add(expected)
        swapped = frame.astype(frame.dtype.newbyteorder("S"))
        for variant in (frame, np.asfortranarray(frame), swapped):
            assert v.check(variant) == expected, (n_saturated, variant.flags.f_contiguous, variant.dtype)
    assert seen == {FrameFlag.NONE, FrameFlag.SATURATED}


def test_bad_frames_are_counted_not_fatal(movie):
    p = FramePipeline(_rois(movie), blas_threads=None)
    bad = [np.zeros((96, 96), np.uint16), np.zeros((50, 96), np.uint16), np.full((96, 96), np.nan, np.float32),
           np.zeros((96, 96), np.complex64)]
    for frame in bad:
        res = p.process(frame)
        assert res.flags & UNUSABLE
        assert np.isnan(res.F).all() and np.isnan(res.Fneu).all() and np.isnan(res.dy)
    sat = movie.frames[0].copy()
    sat[:30] = 65535
    res = p.process(sat)
    assert res.flags & FrameFlag.SATURATED and np.isfinite(res.F).all()
    res = p.process(Frame(data=movie.frames[1], number=1, t_ready_ns=0))
    assert res.flags == 0 and np.isfinite(res.F).all()
    assert res.t_extracted >= res.t_registered > 0
    s = p.stats()
    assert s["frames"] == 6 and s["flagged_frames"] == 5
    assert s["flag_all_zero"] == 1 and s["flag_wrong_shape"] == 1 and s["flag_nan"] == 1
    assert s["flag_wrong_dtype"] == 1 and s["flag_saturated"] == 1


def test_pipeline_matches_registration_and_reuses_outputs(movie):
    p = FramePipeline(_rois(movie), blas_threads=None)
    F_out = p.result.F
    shifts = []
    for frame in movie.frames:
        res = p.process(frame)
        assert res.F is F_out  # preallocated, reused
        shifts.append((res.dy, res.dx))
    err = np.array(shifts) - movie.shifts
    assert np.sqrt((err**2).mean()) <= 0.25


@pytest.mark.parametrize("ahead", ["never", "always"])
def test_a_frame_handed_over_early_is_extracted_before_its_row_order_is_done(movie, ahead):
    """A CLOOSE frame (``Frame.wire``, column-major) is registered and extracted from those pixels while the source
    still puts them in row order: process() reads nothing of ``data`` (still zeros here, ``data_ready`` unset) and
    gives the numbers of the same frame in row order to the bit, with the extraction worker and without it."""
    rows, columns = (FramePipeline(_rois(movie), extraction=ExtractionConfig(ahead=ahead), blas_threads=None)
                     for _ in range(2))
    columns.expect_column_order(np.uint16)
    try:
        for i, image in enumerate(movie.frames):
            pixels = np.asarray(image, np.uint16)
            early = Frame(data=np.zeros_like(pixels), number=i, t_ready_ns=0, wire=np.asfortranarray(pixels),
                          data_ready=threading.Event())
            got = columns.process(early)
            got = (got.dy, got.dx, got.corr, got.flags, got.F.copy(), got.Fneu.copy())
            want = rows.process(pixels)
            assert got[:4] == (want.dy, want.dx, want.corr, want.flags)
            np.testing.assert_array_equal(got[4], want.F)
            np.testing.assert_array_equal(got[5], want.Fneu)
            assert not early.data_ready.is_set() and not early.data.any()
            for pipeline in (rows, columns):
                pipeline.prewarm()  # as the pacer does: the worker rehearses on the last frame, in its order
    finally:
        rows.close()
        columns.close()
    assert np.isfinite(want.F).all() and want.flags == 0


def test_reference_is_built_from_live_frames_when_none_is_given(movie):
    p = FramePipeline(_rois(movie, with_ref=False), registration=RegistrationConfig(reference_frames=20),
                      blas_threads=None)
    assert p.reference is None
    flags = [p.process(f).flags for f in movie.frames]
    assert all(f & FrameFlag.NOT_REGISTERED for f in flags[:20])
    assert p.reference is not None and p.reference.shape == (96, 96)
    assert not any(f & FrameFlag.NOT_REGISTERED for f in flags[20:])


def test_background_reference_build_keeps_process_returning_then_registers(movie, monkeypatch):
    """Live: the reference build (seconds) runs in a thread, so process() keeps returning meanwhile."""
    import acquisition.pipeline as pipeline_mod

    release = threading.Event()
    real_build = pipeline_mod.build_reference

    def slow_build(frames, **kwargs):  # a build that lasts until the test lets it finish
        assert release.wait(30), "the test never released the reference build"
        return real_build(frames, **kwargs)

    monkeypatch.setattr(pipeline_mod, "build_reference", slow_build)
    cfg = AcquisitionConfig(registration=RegistrationConfig(reference_frames=10))
    p = FramePipeline.from_config(_rois(movie, with_ref=False), cfg, blas_threads=None, background_reference=True)
    try:
        flags = [p.process(f).flags for f in movie.frames[:15]]  # 5 frames after the build started
        assert p.reference_building and p._build.thread.is_alive()  # process() returned, the build is still on
        assert all(f & FrameFlag.NOT_REGISTERED for f in flags)
        assert p.reference is None
        release.set()
        wait_for(lambda: not p._build.thread.is_alive(), what="the reference build to finish")
        res = p.process(movie.frames[15])
        assert not res.flags & FrameFlag.NOT_REGISTERED and math.isfinite(res.dy)
        assert p.reference is not None and not p.reference_building
        flags = [p.process(f).flags for f in movie.frames[16:]]
        assert not any(f & FrameFlag.NOT_REGISTERED for f in flags)
        # the same frames give the reference the blocking (offline) build gives
        q = FramePipeline(_rois(movie, with_ref=False), registration=RegistrationConfig(reference_frames=10),
                          blas_threads=None)
        for f in movie.frames[:10]:
            q.process(f)
        np.testing.assert_array_equal(p.reference, q.reference)
    finally:
        release.set()


def test_background_reference_build_failure_is_raised_on_the_pipeline_thread(movie, monkeypatch):
    import acquisition.pipeline as pipeline_mod

    def broken_build(frames, **kwargs):
        raise ValueError("`frames`: contains NaN or infinite values")

    monkeypatch.setattr(pipeline_mod, "build_reference", broken_build)
    p = FramePipeline(_rois(movie, with_ref=False), registration=RegistrationConfig(reference_frames=3),
                      blas_threads=None, background_reference=True)
    for f in movie.frames[:3]:
        p.process(f)
    wait_for(lambda: not p._build.thread.is_alive(), what="the reference build to fail")
    with pytest.raises(RuntimeError, match="building the registration reference from 3 live frames failed"):
        p.process(movie.frames[3])


def test_registration_disabled_extracts_unshifted(movie):
    p = FramePipeline(_rois(movie), registration=RegistrationConfig(enabled=False), blas_threads=None)
    res = p.process(movie.frames[0])
    assert res.dy == 0 and res.dx == 0 and res.flags == 0 and np.isfinite(res.F).all()


def test_from_config_prefers_ref_path(tmp_path, movie):
    ref = np.roll(movie.reference, 2, axis=0)
    np.save(tmp_path / "ref.npy", ref)
    cfg = AcquisitionConfig(registration=RegistrationConfig(ref_path=str(tmp_path / "ref.npy")),
                            validation=ValidationConfig(max_saturated_fraction=0.5))
    p = FramePipeline.from_config(_rois(movie), cfg, blas_threads=None)
    np.testing.assert_allclose(p.reference, ref)
    np.testing.assert_allclose(load_reference_image(tmp_path / "ref.npy"), ref)
    with pytest.raises(ValueError, match="differs"):
        FramePipeline(_rois(movie), reference=np.zeros((10, 10)), blas_threads=None)


def test_preview_image_is_small_and_aligned(movie):
    p = FramePipeline(_rois(movie), blas_threads=None)
    p.process(movie.frames[5])
    img = p.preview_image(movie.frames[5], max_size=48)
    assert img.shape == (48, 48) and img.dtype == np.float32


def test_blas_threads_limited_for_the_process(movie):
    from threadpoolctl import threadpool_info

    p = FramePipeline(_rois(movie), blas_threads=1)
    try:
        assert all(info["num_threads"] == 1 for info in threadpool_info() if info["user_api"] == "blas")
    finally:
        p.close()
