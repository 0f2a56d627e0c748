"""ROI extraction: masks built as suite2p builds them, F consistent with registration, edge handling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from acquisition.extract_ahead import ExtractAhead
from acquisition.extract_kernels import (
    box_decomposition,
    cell_block_sums,
    cell_corner_sums,
    cell_corner_sums_from_columns,
    cell_sums_ordered,
)
from acquisition.extraction import Extractor, cell_pixel_map
from acquisition.registration import RigidRegistrar, shift_image_integer
from acquisition.rois import RoiSet
from tests.conftest import prewarm_between_frames, wait_for
from tests.test_acq_registration import _peak_bytes_allocated
from tests.test_acq_synth import make_movie


@pytest.fixture(scope="module")
def movie():
    return make_movie(T=80, Ly=128, Lx=128, n_cells=25, max_shift=8.0, seed=21)


def _roi_set(m) -> RoiSet:
    return RoiSet(stat=m.stat, iscell=np.ones((len(m.stat), 2)), Ly=m.frames.shape[1], Lx=m.frames.shape[2],
                  ref_img=m.reference)


def test_extracted_F_follows_ground_truth_for_isolated_cells(movie):
    reg = RigidRegistrar(movie.reference)
    ex = Extractor(_roi_set(movie))
    n, T = len(movie.stat), movie.frames.shape[0]
    F = np.zeros((n, T), np.float32)
    Fneu = np.zeros((n, T), np.float32)
    for t, frame in enumerate(movie.frames):
        dy, dx, _, _ = reg.register(frame)
        ex.extract(frame, dy, dx, F[:, t], Fneu[:, t])
    truth = movie.true_F(ex.cell_masks)
    corr = np.array([np.corrcoef(F[k], truth[k])[0, 1] for k in range(n)])
    assert movie.isolated.sum() >= 10
    assert corr[movie.isolated].min() >= 0.95
    # the neuropil-corrected trace follows the cell's own activity
    corr_cell = np.array([np.corrcoef(F[k] - 0.7 * Fneu[k], movie.traces[k])[0, 1] for k in range(n)])
    assert np.median(corr_cell[movie.isolated]) >= 0.9
    # without motion correction the same masks do much worse: registration is what makes F right
    ex.extract(movie.frames[0], 0.0, 0.0, F[:, 0], Fneu[:, 0])
    F0 = np.zeros((n, T), np.float32)
    for t, frame in enumerate(movie.frames):
        ex.extract(frame, 0.0, 0.0, F0[:, t], Fneu[:, t])
    corr0 = np.array([np.corrcoef(F0[k], truth[k])[0, 1] for k in range(n)])
    assert np.median(corr0) < np.median(corr) - 0.1


def test_shifting_masks_equals_shifting_the_frame(movie):
    ex = Extractor(_roi_set(movie), subpixel=False)
    frame = movie.frames[0].astype(np.float32)
    n = len(movie.stat)
    F_ref, Fn_ref = np.zeros(n, np.float32), np.zeros(n, np.float32)
    F_sh, Fn_sh = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ex.extract(frame, 0.0, 0.0, F_ref, Fn_ref)
    moved = shift_image_integer(frame, 4, -3)  # content displaced by (+4, -3)
    ex.extract(moved, 4.2, -2.9, F_sh, Fn_sh)  # rounded to (4, -3)
    inside = np.ones(n, bool)
    for i, (idx, _) in enumerate(ex.cell_masks):
        ys, xs = np.divmod(np.concatenate([idx, ex.neuropil_masks[i]]), 128)
        inside[i] = ys.max() + 4 < 128 and xs.min() - 3 >= 0
    np.testing.assert_allclose(F_sh[inside], F_ref[inside], rtol=1e-5)
    np.testing.assert_allclose(Fn_sh[inside], Fn_ref[inside], rtol=1e-5)


def test_subpixel_extraction_interpolates_between_pixels(movie):
    ex = Extractor(_roi_set(movie), subpixel=True)
    frame = movie.frames[1]
    n = len(movie.stat)
    a, b, c = (np.zeros(n, np.float32) for _ in range(3))
    junk = np.zeros(n, np.float32)
    ex.extract(frame, 1.0, 2.0, a, junk)
    ex.extract(frame, 2.0, 2.0, b, junk)
    ex.extract(frame, 1.25, 2.0, c, junk)
    np.testing.assert_allclose(c, 0.75 * a + 0.25 * b, rtol=1e-4)


def test_bilinear_default_reads_cells_between_pixels_and_neuropil_at_the_nearest(movie):
    """The default reads cell masks bilinearly, neuropil at the nearest pixel; at whole-pixel shifts both
    paths give the same numbers."""
    rois = _roi_set(movie)
    bilinear, nearest = Extractor(rois), Extractor(rois, subpixel=False)
    assert bilinear.subpixel
    n = len(movie.stat)
    frame = movie.frames[2]
    F_b, Fn_b, F_n, Fn_n = (np.zeros(n, np.float32) for _ in range(4))
    bilinear.extract(frame, 2.0, -1.0, F_b, Fn_b)
    nearest.extract(frame, 2.0, -1.0, F_n, Fn_n)
    np.testing.assert_allclose(F_b, F_n, rtol=1e-5)
    np.testing.assert_allclose(Fn_b, Fn_n, rtol=1e-5)
    bilinear.extract(frame, 2.4, -1.0, F_b, Fn_b)
    nearest.extract(frame, 2.4, -1.0, F_n, Fn_n)
    np.testing.assert_allclose(Fn_b, Fn_n, rtol=1e-5)  # neuropil: nearest pixel (2, -1) in both
    assert not np.allclose(F_b, F_n, rtol=1e-4)  # cells: 40 % of the way to the next row


def test_mask_sigma_spreads_cell_weights_that_still_sum_to_one(movie):
    rois = _roi_set(movie)
    plain, spread = Extractor(rois), Extractor(rois, mask_sigma=0.7)
    for (idx, _), (idx_s, w_s) in zip(plain.cell_masks, spread.cell_masks, strict=True):
        assert w_s.sum() == pytest.approx(1.0, abs=1e-5)
        assert idx_s.size > idx.size and set(idx) <= set(idx_s)
    with pytest.raises(ValueError, match="`mask_sigma`"):
        Extractor(rois, mask_sigma=-1.0)


def test_masks_follow_suite2p_rules():
    Ly = Lx = 80
    yy, xx = np.mgrid[:Ly, :Lx]
    stats = []
    for cy, cx in ((20, 20), (23, 27), (60, 55)):
        keep = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
        ypix, xpix = yy[keep], xx[keep]
        lam = np.exp(-((ypix - cy) ** 2 + (xpix - cx) ** 2) / 8.0)
        stats.append({"ypix": ypix, "xpix": xpix, "lam": lam, "radius": 4.0})
    count = np.zeros((Ly, Lx), int)
    for s in stats:
        count[s["ypix"], s["xpix"]] += 1
    for s in stats:
        s["overlap"] = count[s["ypix"], s["xpix"]] > 1
    ex = Extractor(RoiSet(stat=stats, iscell=np.ones((3, 2)), Ly=Ly, Lx=Lx), min_neuropil_pixels=200)
    cell_pix = cell_pixel_map(stats, Ly, Lx)
    for i, (idx, w) in enumerate(ex.cell_masks):
        s = stats[i]
        expect = np.sort((s["ypix"] * Lx + s["xpix"])[~s["overlap"]])
        np.testing.assert_array_equal(np.sort(idx), expect)  # overlapping pixels left out
        assert w.sum() == pytest.approx(1.0, abs=1e-5)
        neu = ex.neuropil_masks[i]
        assert neu.size > 200
        assert not cell_pix.reshape(-1)[neu].any()  # no cell pixels in a neuropil mask
        ny, nx = np.divmod(neu, Lx)
        # the exclusion ring: nothing within inner_neuropil_radius (4-connected) of the ROI
        d = np.abs(ny[:, None] - s["ypix"][None, :]) + np.abs(nx[:, None] - s["xpix"][None, :])
        assert d.min() > 2


def test_excluded_rois_still_keep_their_pixels_out_of_neuropil(movie):
    full = _roi_set(movie)
    full.iscell[1:, 0] = 0  # only the first ROI is a cell
    cells = full.cells_only()
    assert cells.n_rois == 1 and len(cells.excluded_stat) == len(movie.stat) - 1
    ex = Extractor(cells)
    other = np.concatenate([np.asarray(s["ypix"]) * 128 + np.asarray(s["xpix"]) for s in cells.excluded_stat])
    assert not np.isin(ex.neuropil_masks[0], other).any()


def test_roi_shifted_out_of_the_frame_reads_nan_and_edge_rois_are_renormalised():
    Ly = Lx = 64
    stat = [{"ypix": np.array([1, 1, 2, 2]), "xpix": np.array([1, 2, 1, 2]), "lam": np.ones(4), "radius": 1.0},
            {"ypix": np.array([30, 30]), "xpix": np.array([30, 31]), "lam": np.ones(2), "radius": 1.0}]
    ex = Extractor(RoiSet(stat=stat, iscell=np.ones((2, 2)), Ly=Ly, Lx=Lx), min_neuropil_pixels=50,
                   max_shift_px=20)
    frame = np.full((Ly, Lx), 7.0, np.float32)
    F, Fneu = np.zeros(2, np.float32), np.zeros(2, np.float32)
    ex.extract(frame, -1.0, 0.0, F, Fneu)  # ROI 0 half outside: mean of the in-frame half
    assert F[0] == pytest.approx(7.0) and F[1] == pytest.approx(7.0)
    assert Fneu[0] == pytest.approx(7.0, rel=1e-5)
    ex.extract(frame, -10.0, 0.0, F, Fneu)  # ROI 0 wholly outside
    assert np.isnan(F[0]) and F[1] == pytest.approx(7.0)


def test_the_neuropil_shares_kept_per_shift_give_what_a_fresh_extractor_computes():
    """The neuropil masks' in-frame shares depend on the whole shift only and are kept per shift: a long-lived
    extractor that has seen other shifts gives, at each shift, the bits of a fresh one that computes them then.
    Shifts that round alike but floor differently (and the reverse) tell a cache keyed on the wrong shift."""
    Ly, Lx = 80, 96
    rng = np.random.default_rng(9)
    stat = [{"ypix": (np.arange(6)[:, None] + y0 + 0 * np.arange(8)).ravel(),
             "xpix": (0 * np.arange(6)[:, None] + x0 + np.arange(8)).ravel(), "lam": rng.uniform(0.2, 1.0, 48),
             "radius": 4.0} for y0, x0 in ((0, 0), (2, 86), (72, 40), (35, 0), (36, 50))]
    rois = RoiSet(stat=stat, iscell=np.ones((len(stat), 2)), Ly=Ly, Lx=Lx)
    kept = Extractor(rois, min_neuropil_pixels=40)
    frame = rng.integers(100, 3000, (Ly, Lx)).astype(np.uint16)
    shifts = [(0.4, -0.4), (0.6, -0.6), (-2.4, 3.4), (-2.6, 3.6), (0.4, -0.4), (-2.6, 3.6), (5.5, -5.2), (0.6, -0.6),
              (0.4, 2.6), (-2.4, -0.4), (0.4, -0.4)]  # one axis shared with an earlier shift, the other not
    F, Fneu, F_fresh, Fneu_fresh = (np.empty(len(stat), np.float32) for _ in range(4))
    for dy, dx in shifts:
        kept.extract(frame, dy, dx, F, Fneu)
        Extractor(rois, min_neuropil_pixels=40).extract(frame, dy, dx, F_fresh, Fneu_fresh)
        np.testing.assert_array_equal(Fneu, Fneu_fresh)
        np.testing.assert_array_equal(F, F_fresh)
    assert len(kept._np_share_cache) == 7  # (0, 0), (1, -1), (-2, 3), (-3, 4), (6, -5), (0, 3), (-2, 0)
    assert np.isfinite(Fneu).all()


@pytest.mark.parametrize("cell_sums", ["ordered", "vectorised"])
def test_column_major_integer_frames_extract_to_the_same_bits_at_the_frame_edges(cell_sums):
    """A CLOOSE frame's column-major pixels (Frame.wire) give F and Fneu to the bit of the same frame in row order,
    at any shift, with cells of long rows at each edge. Ordered sums read them in place; vectorised ones (sessions
    recorded before ``cell_sums``): the cell kernel's edge branch sums in an order that depends on the memory order
    (its reduction is vectorised over contiguous pixels only), so those cells are read again from a row-major copy
    of their pixels. The neuropil is summed down columns, exactly. With ordered sums the worker reads its cells as
    one 3x3 block of whole shifts. The same when the cells and
    the neuropil come from the extraction worker (ExtractAhead), as they do for most frames in a session, and when
    it missed a part and is handed the neuropil, or the first half of the cells, at the shift found
    (ExtractAhead.hand). Row-major frames through the worker likewise."""
    Ly, Lx = 96, 128
    yy, xx = np.mgrid[0:9, 0:30]
    stat = [{"ypix": (yy + y0).ravel(), "xpix": (xx + x0).ravel(), "lam": np.linspace(0.2, 1.0, yy.size),
             "radius": 6.0} for y0, x0 in ((0, 98), (87, 0), (40, 98), (40, 0), (0, 40), (87, 60), (40, 50))]
    rois = RoiSet(stat=stat, iscell=np.ones((len(stat), 2)), Ly=Ly, Lx=Lx)
    rows, columns, worked = (Extractor(rois, min_neuropil_pixels=60, cell_sums=cell_sums) for _ in range(3))
    columns.prepare_column_order()
    worked.prepare_column_order()  # its cells read by the extraction worker, its edge cells again by the loop
    ahead = ExtractAhead(worked.cells_ahead, worked.neuropil_ahead, len(stat), first_cells=worked.first_cells_ahead,
                         first_rois=worked.first_half, cell_block=worked.cell_block)
    collect = ahead.collect
    withdrawn = [False]

    def collect_when_computed(part, shift, out):  # as the loop's own reads give the handed part time to
        wait_for(lambda: ahead.idle, what="the handed part")
        return False if withdrawn[0] else collect(part, shift, out)  # or as if it had not started: the loop's

    ahead.collect = collect_when_computed
    rng = np.random.default_rng(4)
    out = [np.empty(len(stat), np.float32) for _ in range(6)]
    try:
        for _ in range(4):
            frame = rng.integers(200, 4000, (Ly, Lx)).astype(np.uint16)
            for dy, dx in ((0.0, 0.0), (0.3, 0.6), (-1.7, 2.2), (2.5, -2.5), (-6.2, 5.9)):
                rows.extract(frame, dy, dx, out[0], out[1])
                columns.extract(np.asfortranarray(frame), dy, dx, out[2], out[3])
                wire = np.asfortranarray(frame)
                # the worker's candidates at the shift found, or 9 px from it for the cells, the neuropil, both
                for pixels, cells_off, neuropil_off, withdrawn[0] in (
                        (wire, 0, 0, False), (wire, 9, 0, False), (wire, 0, 9, False), (wire, 9, 9, False),
                        (frame, 9, 0, False), (frame, 0, 9, False), (wire, 9, 0, True), (frame, 9, 9, True)):
                    cells_at = (math.floor(dy) + cells_off, math.floor(dx))
                    neuropil_at = (round(dy) + neuropil_off, round(dx))
                    assert ahead.submit(pixels, [cells_at], [neuropil_at])
                    wait_for(lambda: ahead.idle, what="the worker's reads")  # as registration gives it time to
                    out[4].fill(np.nan)
                    out[5].fill(np.nan)
                    worked.extract(pixels, dy, dx, out[4], out[5], ahead=ahead)
                    for got in (out[2], out[4]):
                        np.testing.assert_array_equal(got, out[0])
                    for got in (out[3], out[5]):
                        np.testing.assert_array_equal(got, out[1])
    finally:
        ahead.close()
    assert ahead.taken == [60, 80] and ahead.missed == [100, 80]
    # what was missed was shared: the neuropil when both were, the first cells when only they were
    assert ahead.handed == [0, 40, 60] and ahead.handed_taken == [0, 20, 40]
    assert 0 < worked.first_half < len(stat)
    assert np.isfinite(out[0]).all()
    if cell_sums == "vectorised":  # the edge cells were read again
        assert len(columns._edge_tables) == 4 and all(table[0].size for table in columns._edge_tables.values())
    else:
        assert not columns._edge_tables


def test_roi_without_own_pixels_reads_nan():
    stat = [{"ypix": np.array([5, 5]), "xpix": np.array([5, 6]), "lam": np.ones(2), "overlap": np.array([True, True]),
             "radius": 1.0},
            {"ypix": np.array([20]), "xpix": np.array([20]), "lam": np.ones(1), "radius": 1.0}]
    ex = Extractor(RoiSet(stat=stat, iscell=np.ones((2, 2)), Ly=32, Lx=32), min_neuropil_pixels=20)
    assert list(ex.empty_cells) == [0]
    F, Fneu = np.zeros(2, np.float32), np.zeros(2, np.float32)
    ex.extract(np.ones((32, 32), np.uint16), 0.0, 0.0, F, Fneu)
    assert np.isnan(F[0]) and F[1] == pytest.approx(1.0)


def test_bad_extractor_settings_name_the_field(movie):
    with pytest.raises(ValueError, match="`min_neuropil_pixels`"):
        Extractor(_roi_set(movie), min_neuropil_pixels=-1)


def test_extract_allocates_no_per_roi_arrays():
    """F/Fneu go through preallocated buffers: with 1600 ROIs one temporary (2 x n_rois float32) is 12.8 KB."""
    L = 128
    ys, xs = np.meshgrid(np.arange(4, L - 4, 3), np.arange(4, L - 4, 3), indexing="ij")
    stat = [{"ypix": np.array([y]), "xpix": np.array([x]), "lam": np.array([1.0]), "radius": 1.0}
            for y, x in zip(ys.ravel(), xs.ravel(), strict=True)]
    rois = RoiSet(stat=stat, iscell=np.ones((len(stat), 2)), Ly=L, Lx=L)
    frame = np.random.default_rng(3).integers(100, 1000, (L, L)).astype(np.uint16)
    F, Fneu = np.empty(len(stat), np.float32), np.empty(len(stat), np.float32)
    for subpixel in (False, True):
        ex = Extractor(rois, 2, 0, subpixel=subpixel, max_shift_px=10)
        for dy, dx in ((0.3, -0.4), (6.3, -5.6)):  # inside the frame; masks leave it (renormalised)
            ex.extract(frame, dy, dx, F, Fneu)
            expected_F, expected_Fneu = F.copy(), Fneu.copy()
            assert _peak_bytes_allocated(lambda ex=ex, dy=dy, dx=dx: ex.extract(frame, dy, dx, F, Fneu)) < 4_000
            np.testing.assert_array_equal(F, expected_F)
            np.testing.assert_array_equal(Fneu, expected_Fneu)
        # the direct kernel call gives what the sparse product gives
        np.copyto(ex._centre, frame, casting="unsafe")
        start = ex._origin + 2 * ex.Wp - 1
        np.testing.assert_allclose(ex._product(ex._flat, 2, -1), ex._matrix @ ex._flat[start:start + ex._ncols])


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_compiled_kernels_give_what_the_sparse_product_gives(movie, dtype):
    """Two implementations of the same masks: the compiled kernels (rows of valid pixels, runs of cell pixels, read
    straight from the frame) against the sparse product over the padded copy, at shifts inside the frame, at its
    edges (renormalised) and past them, bilinear or not, with spread masks and overlapping ROIs allowed."""
    rois = _roi_set(movie)
    rng = np.random.default_rng(5)
    frame = (movie.frames[3].astype(np.float64) + rng.normal(0, 30, movie.frames[3].shape)).clip(0, 30000)
    frame = frame.astype(dtype)
    shifts = [(0.0, 0.0), (2.3, -1.6), (0.5, 0.5), (-7.9, 6.2), (11.4, 13.7), (-14.5, -15.0), (3.0, -4.0),
              (3.6, -3.4), (14.3, 14.6), (14.8, 14.9)]  # the last of each pair: round() moves, a 0.75 hold does not
    for kwargs in ({}, {"subpixel": False}, {"mask_sigma": 0.7, "allow_overlap": True},
                   {"neuropil_hold_px": 0.75}, {"subpixel": False, "neuropil_hold_px": 0.75}):
        fast = Extractor(rois, max_shift_px=15, **kwargs)
        slow = Extractor(rois, max_shift_px=15, method="sparse", **kwargs)
        n = fast.n_rois
        F, Fneu, F2, Fneu2 = (np.zeros(n, np.float32) for _ in range(4))
        for dy, dx in shifts:
            fast.extract(frame, dy, dx, F, Fneu)
            slow.extract(frame, dy, dx, F2, Fneu2)
            np.testing.assert_array_equal(np.isnan(F), np.isnan(F2))
            np.testing.assert_allclose(F, F2, rtol=2e-5, atol=1e-3, err_msg=f"F at {(dy, dx)} {kwargs}")
            np.testing.assert_allclose(Fneu, Fneu2, rtol=2e-5, atol=1e-3, err_msg=f"Fneu at {(dy, dx)} {kwargs}")


def test_a_held_neuropil_is_read_where_it_is_held_and_the_cells_where_the_shift_is(movie):
    """neuropil_hold_px 0.75: the neuropil stays at its whole shift while the shift is within 0.75 px of it (here
    what round() reads at 0.4), then moves to round(); the cells are read at the shift itself either way."""
    rois = _roi_set(movie)
    frame = movie.frames[4]
    held, nearest = Extractor(rois, neuropil_hold_px=0.75), Extractor(rois)
    n = held.n_rois
    F, Fneu, F_ref, Fneu_ref = (np.zeros(n, np.float32) for _ in range(4))
    for (dy, dx), neuropil_like in (((0.2, -0.1), (0.2, -0.1)), ((0.7, -0.6), (0.4, -0.4)), ((0.74, 0.7), (0.4, 0.4)),
                                    ((0.8, 0.9), (0.8, 0.9))):
        held.extract(frame, dy, dx, F, Fneu)
        nearest.extract(frame, dy, dx, F_ref, Fneu_ref)
        np.testing.assert_array_equal(F, F_ref)
        nearest.extract(frame, *neuropil_like, F_ref, Fneu_ref)
        np.testing.assert_array_equal(Fneu, Fneu_ref, err_msg=f"at {(dy, dx)}")
    assert held.neuropil_shift.held == (1, 1)
    held.forget_shift()
    assert held.neuropil_shift.held is None and held.last_shift is None


def test_neuropil_of_integer_frames_is_the_exact_mean(movie):
    """Integer frames are summed in integers: Fneu is the mean of the mask's pixels to float32 rounding, however
    large the values (the sparse product adds float32 terms of 1/n and drifts)."""
    ex = Extractor(_roi_set(movie))
    frame = np.random.default_rng(9).integers(60000, 65535, movie.frames.shape[1:]).astype(np.uint16)
    F, Fneu = np.zeros(ex.n_rois, np.float32), np.zeros(ex.n_rois, np.float32)
    ex.extract(frame, 1.0, -2.0, F, Fneu)
    flat = frame.reshape(-1).astype(np.float64)
    Lx = frame.shape[1]
    for i, idx in enumerate(ex.neuropil_masks):
        y, x = np.divmod(idx, Lx)
        inside = (y + 1 < frame.shape[0]) & (x - 2 >= 0)
        if inside.all():
            assert Fneu[i] == np.float32(flat[(y + 1) * Lx + x - 2].mean())


def test_box_decomposition_rebuilds_any_pixel_set():
    """Any set = its box's valid pixels - the valid ones it lacks + its invalid ones (not only suite2p's shapes)."""
    rng = np.random.default_rng(2)
    valid = rng.random((40, 50)) > 0.3
    image = rng.integers(0, 1000, valid.shape)
    sets = [rng.choice(valid.size, size=k, replace=False) for k in (1, 17, 300)] + [np.zeros(0, np.int64)]
    box, ptr, cy, cx, sign = box_decomposition(sets, valid)
    for i, idx in enumerate(sets):
        y0, y1, x0, x1 = box[i]
        total = int((image[y0:y1, x0:x1] * valid[y0:y1, x0:x1]).sum())
        total += int((sign[ptr[i]:ptr[i + 1]] * image[cy[ptr[i]:ptr[i + 1]], cx[ptr[i]:ptr[i + 1]]]).sum())
        assert total == int(image.reshape(-1)[idx].sum())
    assert (sign == 1).any() and (sign == -1).any()


def test_extraction_computed_beside_registration_gives_the_same_numbers(movie):
    """The worker's cell reads and neuropil (at the whole shifts the last frame makes likely, taken when this
    frame's are among them) equal those computed after registration, frame by frame; a part whose shift was
    not computed is computed again. With one candidate (the last frame's own shifts) more are missed."""
    from acquisition.config import ExtractionConfig, RegistrationConfig
    from acquisition.pipeline import FramePipeline

    rois = _roi_set(movie)
    without = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(ahead="never"))
    ranked = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(ahead="always"))
    single = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(
        ahead="always", ahead_candidates=1))
    assert without._extract_ahead is None
    frames = list(movie.frames) + list(movie.frames[::-1])  # slow drift, then the same back: hits and misses
    for frame in frames:
        b = without.process(frame)
        for pipeline in (ranked, single):
            a = pipeline.process(frame)
            np.testing.assert_array_equal(a.F, b.F)
            np.testing.assert_array_equal(a.Fneu, b.Fneu)
            assert (a.dy, a.dx) == (b.dy, b.dx)
    for pipeline in (ranked, single):
        ahead = pipeline._extract_ahead
        assert ahead is not None
        for part in (0, 1):  # cells, neuropil; a frame that found the worker busy queued behind it: every frame counts
            assert ahead.taken[part] + ahead.missed[part] == len(frames) - 1
        assert 0 <= ahead.busy < len(frames)
        pipeline.close()
    assert without.ahead_stats() is None
    stats = ranked.ahead_stats()
    assert stats["cells_taken"] == ranked._extract_ahead.taken[0] and stats["gave_up"] >= 0
    one, three = single._extract_ahead, ranked._extract_ahead
    assert one.taken[0] > 0 and one.missed[0] > 0 and one.missed[1] > 0  # whole shifts do change in this movie
    # the worker is stopped when registration ends, so what it reached depends on timing; never fewer hits
    # than frames whose shift was the last one's, which one candidate shows
    assert three.taken[0] >= one.taken[0] - 2 and three.taken[1] >= one.taken[1] - 2


def test_a_frame_that_fails_the_checks_is_withdrawn_from_the_worker(movie):
    """The worker is given a frame before the validator reads it (pixel types the kernels are compiled for only):
    an all-zero frame is then withdrawn (never extracted: F and Fneu NaN), one of another pixel type is never
    given to it, and every frame gives what a pipeline without the worker gives."""
    from acquisition.config import ExtractionConfig, RegistrationConfig
    from acquisition.pipeline import FramePipeline
    from acquisition.validate import FrameFlag

    rois = _roi_set(movie)
    without = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(ahead="never"))
    worked = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(ahead="always"))
    good = list(movie.frames[:6])
    zero, wrong = np.zeros_like(good[0]), good[0] > good[0].mean()  # all zero; bool pixels
    results, calls = [], []
    ahead = worked._extract_ahead
    for name in ("submit", "withdraw"):
        real = getattr(ahead, name)
        setattr(ahead, name, lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    for frame in good[:3] + [zero, wrong] + good[3:]:
        a, b = worked.process(frame), without.process(frame)
        np.testing.assert_array_equal(a.F, b.F)
        np.testing.assert_array_equal(a.Fneu, b.Fneu)
        assert (a.dy, a.dx, a.flags) == (b.dy, b.dx, b.flags) or math.isnan(a.dy)
        results.append(a.flags)
    assert results[3] & FrameFlag.ALL_ZERO and results[4] & FrameFlag.WRONG_DTYPE
    # each frame after the first given to it, but the bool one; the all-zero one withdrawn, and never taken
    assert calls == ["submit"] * 3 + ["withdraw"] + ["submit"] * 3
    assert ahead.taken[0] + ahead.missed[0] == len(good) - 1
    for pipeline in (worked, without):
        pipeline.close()


def test_the_worker_pre_warm_changes_no_number(movie):
    """FramePipeline.prewarm between frames (as the pacer calls it) runs the worker on the last frame too; every
    shift, F and Fneu stays what a pipeline without it gives."""
    from acquisition.config import ExtractionConfig, RegistrationConfig
    from acquisition.pipeline import FramePipeline

    rois = _roi_set(movie)
    plain = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(ahead="always"))
    warmed = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(ahead="always"))
    for i, frame in enumerate(movie.frames):
        if i:
            prewarm_between_frames(warmed)
        a, b = warmed.process(frame), plain.process(frame)
        np.testing.assert_array_equal(a.F, b.F)
        np.testing.assert_array_equal(a.Fneu, b.Fneu)
        assert (a.dy, a.dx, a.corr, a.flags) == (b.dy, b.dx, b.corr, b.flags)
    stats = warmed.ahead_stats()
    assert stats["rehearsals"] == len(movie.frames) - 1 and stats["busy"] == 0  # before each frame after the first
    assert plain.ahead_stats()["rehearsals"] == 0
    for pipeline in (plain, warmed):
        pipeline.close()


def test_whole_shift_candidates_rank_the_last_shift_then_its_nearest_neighbours():
    from acquisition.extract_ahead import whole_shift_candidates

    cells, neuropil = whole_shift_candidates(2.9, -1.2, subpixel=True, k=4)
    # cells are read from floor: (2, -2); y sits 0.1 below 3, nearer its boundary than x, 0.2 below -1
    assert cells == [(2, -2), (3, -2), (2, -1), (3, -1)]
    # neuropil from round: (3, -1); y is 0.1 below 3 -> 2 next (0.4 from the half), x 0.2 below -1 -> -2
    assert neuropil == [(3, -1), (3, -2), (2, -1), (2, -2)]
    assert whole_shift_candidates(0.0, 0.0, subpixel=False, k=1) == ([(0, 0)], [(0, 0)])
    cells, neuropil = whole_shift_candidates(0.4, 5.0, subpixel=False, k=2)
    assert cells == neuropil == [(0, 5), (1, 5)]  # not subpixel: cells at the nearest pixel too


def test_extraction_ahead_is_used_only_where_it_was_measured_to_pay(movie):
    """choose_extract_ahead (after warm_up timed the extraction): with ahead = "auto" the worker is used only when
    the loop got real-time priority or frames come back to back, and the extraction costs at least ahead_min_ms,
    each refusal said with its reason; "always" and "never" do as they say. warm_up leaves no last shift behind."""
    from acquisition.config import ExtractionConfig, RegistrationConfig
    from acquisition.pipeline import FramePipeline

    rois = _roi_set(movie)

    def decide(realtime: bool, paced: bool = True, **extraction: object) -> dict:
        pipeline = FramePipeline(rois, registration=RegistrationConfig(), extraction=ExtractionConfig(**extraction))
        pipeline.warm_up(np.uint16)
        assert pipeline.extractor.last_shift is None
        decision = pipeline.choose_extract_ahead(realtime, paced)
        assert (pipeline._extract_ahead is not None) == decision["used"]
        pipeline.process(movie.frames[0])
        pipeline.close()
        return decision

    used = decide(True, ahead_min_ms=0.0)
    assert used["used"] and used["extraction_ms"] > 0 and "why_not" not in used
    assert decide(False, ahead_min_ms=0.0)["why_not"] == ("frames paced by the scope and the loop not at real-time "
                                                          "priority")
    assert decide(False, paced=False, ahead_min_ms=0.0)["used"]  # a fast replay: both cores busy, it pays
    assert decide(True, ahead_min_ms=1e6)["why_not"] == "the extraction costs less than ahead_min_ms"
    assert decide(False, ahead="always", ahead_min_ms=1e6)["used"]
    assert not decide(True, ahead="never", ahead_min_ms=0.0)["used"]
    sparse = decide(True, method="sparse", ahead_min_ms=0.0)
    assert not sparse["used"] and sparse["why_not"] == "needs the compiled extraction and registration"


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_the_column_kernel_reads_interior_cells_to_the_row_kernels_bits(dtype):
    """A column-major frame's cells, summed in place down strided columns, came out in other last bits than the same
    frame's in row order on an AVX2 machine (30 of 200 sums): the compiler vectorises the two loops differently, and
    fastmath lets it reorder. Copied run by run into contiguous scratch, they match to the bit."""
    rng = np.random.default_rng(1)
    Ly, Lx, n = 96, 128, 50
    frame = rng.integers(0, 4000, (Ly, Lx)).astype(dtype)
    ptr = np.arange(0, 9 * n + 1, 9).astype(np.int64)
    run_y = (np.tile(np.arange(9), n) + np.repeat(rng.integers(10, 80, n), 9)).astype(np.int32)
    run_x = np.repeat(rng.integers(10, 90, n), 9).astype(np.int32)
    run_len = np.repeat(rng.integers(5, 31, n), 9).astype(np.int32)
    weight = rng.random(int(run_len.sum())).astype(np.float32)
    rows, columns = np.zeros((4, n), np.float32), np.zeros((4, n), np.float32)
    for iy, ix in ((0, 0), (2, -3), (-5, 4)):
        cell_corner_sums(frame, ptr, run_y, run_x, run_len, weight, iy, ix, rows)
        cell_corner_sums_from_columns(np.asfortranarray(frame), ptr, run_y, run_x, run_len, weight, iy, ix, columns)
        np.testing.assert_array_equal(columns, rows)
        assert rows.min() > 0


def _random_runs(rng: np.random.Generator, n: int, x_range: tuple[int, int], y_range: tuple[int, int]):
    """n cells of 9 rows each, runs of 5-30 pixels: (ptr, run_y, run_x, run_len, weight)."""
    ptr = np.arange(0, 9 * n + 1, 9).astype(np.int64)
    run_y = (np.tile(np.arange(9), n) + np.repeat(rng.integers(*y_range, n), 9)).astype(np.int32)
    run_x = np.repeat(rng.integers(*x_range, n), 9).astype(np.int32)
    run_len = np.repeat(rng.integers(5, 31, n), 9).astype(np.int32)
    return ptr, run_y, run_x, run_len, rng.random(int(run_len.sum())).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_ordered_sums_give_one_bits_in_a_block_of_two_shifts_in_either_memory_order_and_near_the_vectorised_ones(dtype):
    """cell_block_sums reads six whole shifts in one pass; each 2x2 of them is, to the bit, what cell_sums_ordered
    reads at that whole shift: the extraction worker's block is taken for either of its two, and must equal the
    loop's own read. Also at the frame's edges (cells placed across every edge at these shifts), from column-major
    frames read in place, and within float rounding of the vectorised kernel that sessions before ``cell_sums``
    used."""
    rng = np.random.default_rng(2)
    Ly, Lx, n = 96, 128, 60
    frame = (rng.integers(0, 4000, (Ly, Lx)) - (300 if dtype == np.float32 else 0)).astype(dtype)
    ptr, run_y, run_x, run_len, _ = _random_runs(rng, n, (-10, 110), (-8, 92))
    run_y, run_x = np.clip(run_y, 0, Ly - 1), np.clip(run_x, 0, Lx - 1)
    run_len = np.minimum(run_len, Lx - run_x)
    runs = (ptr, run_y, run_x, run_len, rng.random(int(run_len.sum())).astype(np.float32))
    block = np.zeros((6, n), np.float32)
    corners, vectorised = np.zeros((4, n), np.float32), np.zeros((4, n), np.float32)
    edge_reads = 0
    for pixels in (frame, np.asfortranarray(frame)):
        for oy, ox in ((0, 0), (2, -3), (-5, 4), (-2, 6), (7, -8)):
            cell_block_sums(pixels, *runs, oy, ox, block)
            for b in (0, 1):
                cell_sums_ordered(pixels, *runs, oy, ox + b, corners)
                np.testing.assert_array_equal(block.reshape(3, 2, n)[b:b + 2], corners.reshape(2, 2, n))
                cell_corner_sums(frame, *runs, oy, ox + b, vectorised)
                np.testing.assert_allclose(corners, vectorised, rtol=1e-5, atol=1e-2)
            edge_reads += int(((run_y + oy < 0) | (run_y + oy + 1 >= Ly) | (run_x + ox < 0)
                               | (run_x + ox + run_len + 1 >= Lx)).sum())
    assert edge_reads > 50  # the edge branch was exercised
    with pytest.raises(ValueError, match="out must be"):  # a (4, n) buffer is never written six rows into
        cell_block_sums(frame, *runs, 0, 0, corners)
