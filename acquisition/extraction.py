"""Per-ROI fluorescence (F) and neuropil (Fneu) from one frame, with masks built as suite2p builds them
(:mod:`acquisition.masks`):

* cell mask: the ROI's pixels minus those it shares with other ROIs (``overlap``) unless ``allow_overlap``;
  weights ``lam`` normalised to sum to 1, so F is a weighted mean;
* neuropil mask: grow the ROI by ``inner_neuropil_radius`` pixels (4-connected) as an exclusion ring, then
  take the rectangle around it grown in 5-pixel steps until it holds more than ``min_neuropil_pixels``
  pixels that are not cell pixels; Fneu is their plain mean. Cell pixels are those of any ROI whose
  ``lam`` is at least the local ``lam_percentile`` percentile (window 5 median radii).

Motion: we shift the masks, not the frame. With the shift convention of :mod:`acquisition.registration`
(content of the frame displaced by +(dy, dx)), mask pixel (y, x) is read at (y + dy, x + dx). By default the
compiled kernels of :mod:`acquisition.extract_kernels` read the frame in place at that offset (cells as runs of
pixels along rows, neuropil masks as rectangles of valid pixels with a few corrections; nothing copied, no index
per pixel; each cell's sums added pixel by pixel in a fixed order unless ``cell_sums="vectorised"``, the way of
sessions recorded before that setting); ``method="sparse"`` is the earlier way, a sparse product over a slice of a
zero-padded float32 copy of the frame, kept to measure against and to check the kernels (same numbers to float
rounding). By default
(``subpixel=True``) cell masks are read bilinearly at the subpixel shift (a cell is a few pixels across, and
rounding the shift to the nearest pixel loses correlation with the true fluorescence at real noise levels) while
neuropil masks, plain means over hundreds of pixels, are read at a whole pixel held within ``neuropil_hold_px`` of
the shift (:class:`~acquisition.extract_ahead.NeuropilShift`; 0.5: the nearest); ``subpixel=False`` reads the cells
at the nearest pixel too (suite2p's rigid way). ``mask_sigma`` > 0 spreads each cell's weights with a Gaussian of
that many pixels (built once, then renormalised to sum 1). Pixels shifted outside the frame are left out of the
mean (the weights are renormalised); an ROI wholly outside reads NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

# the C++ kernel behind ``csr_matrix @ vector``, called directly: it adds A @ x into a preallocated output
# instead of allocating a result per frame (tests/test_acq_extraction.py checks it against ``@``)
from scipy.sparse._sparsetools import csr_matvec as _csr_matvec

from acquisition.extract_ahead import FIRST_CELLS, NEUROPIL, ExtractAhead, NeuropilShift
from acquisition.extract_kernels import (
    box_decomposition,
    box_events,
    cell_block_sums,
    cell_corner_sums,
    cell_inside_shares,
    cell_reads,
    combine_corners,
    compile_extract_kernels,
    copy_regions,
    divide_by_shares,
    neuropil_inside_shares,
    neuropil_sums,
    pixel_runs,
    scratch_for,
)
from acquisition.masks import cell_mask, cell_pixel_map, neuropil_mask, smooth_cell_mask
from acquisition.rois import RoiSet

_WEIGHT_CACHE_SIZE = 1024


def _per_shift(cache: dict[tuple[int, int], Any], shift: tuple[int, int], make: Callable[[int, int], Any]) -> Any:
    """``cache[shift]``, made by ``make(*shift)`` on first use; the oldest entry goes past _WEIGHT_CACHE_SIZE."""
    value = cache.get(shift)
    if value is None:
        if len(cache) >= _WEIGHT_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        value = cache[shift] = make(*shift)
    return value  # in-frame weights per integer shift (2 * n_rois floats each)


class Extractor:
    """F and Fneu for every ROI of ``roi_set`` from one frame and its registration shift.

    ``max_shift_px`` bounds the shifts it can apply (larger ones are clamped); by default half the frame.
    ``method``: ``"compiled"`` (default) reads the frame directly with the kernels of
    :mod:`acquisition.extract_kernels`; ``"sparse"`` is the earlier sparse product over a padded copy of the frame,
    the same numbers to float rounding, kept to measure against and to check the kernels.
    """

    def __init__(self, roi_set: RoiSet, inner_neuropil_radius: int = 2, min_neuropil_pixels: int = 350,
                 allow_overlap: bool = False, *, lam_percentile: float = 50.0, subpixel: bool = True,
                 mask_sigma: float = 0.0, max_shift_px: int | None = None, method: str = "compiled",
                 neuropil_hold_px: float = 0.5, cell_sums: str = "ordered") -> None:
        if inner_neuropil_radius < 0:
            raise ValueError("`inner_neuropil_radius`: must be >= 0")
        if min_neuropil_pixels < 0:
            raise ValueError("`min_neuropil_pixels`: must be >= 0")
        if not mask_sigma >= 0:
            raise ValueError("`mask_sigma`: must be >= 0")
        if method not in ("compiled", "sparse"):
            raise ValueError(f"`method`: must be 'compiled' or 'sparse', not {method!r}")
        if cell_sums not in ("ordered", "vectorised"):
            raise ValueError(f"`cell_sums`: must be 'ordered' or 'vectorised', not {cell_sums!r}")
        self.method = method
        # "ordered": each cell's reads summed pixel by pixel (extract_kernels.cell_sums_ordered), so the worker reads
        # two neighbouring whole shifts in one pass (a block of 2 x 3) to the same bits; "vectorised": the kernel
        # the compiler reorders (sessions recorded before the setting), one whole shift per pass
        self.ordered_sums = cell_sums == "ordered"
        self.cell_block = (2, 3) if self.ordered_sums else (2, 2)
        self.neuropil_shift = NeuropilShift(neuropil_hold_px)  # where the neuropil masks are read, frame to frame
        Ly, Lx = roi_set.Ly, roi_set.Lx
        self.Ly, self.Lx = Ly, Lx
        self.n_rois = n = roi_set.n_rois
        self.subpixel = subpixel
        pad = min(Ly, Lx) // 2 if max_shift_px is None else int(max_shift_px)
        self.pad = pad = max(pad, 0) + 1  # +1 for the bilinear neighbour
        self.Wp = Wp = Lx + 2 * pad
        self._padded = np.zeros((Ly + 2 * pad, Wp), np.float32)
        self._flat = self._padded.reshape(-1)
        self._inside = np.zeros_like(self._padded)
        self._inside[pad:pad + Ly, pad:pad + Lx] = 1.0
        self._inside_flat = self._inside.reshape(-1)
        self._centre = self._padded[pad:pad + Ly, pad:pad + Lx]
        self._origin = pad * Wp + pad  # flat index of frame pixel (0, 0)
        self._ncols = (Ly - 1) * Wp + Lx

        # ---- masks, built once
        all_stats = list(roi_set.stat) + list(roi_set.excluded_stat)
        cell_pix = cell_pixel_map(all_stats, Ly, Lx, lam_percentile)
        valid = ~cell_pix
        valid_sat = np.zeros((Ly + 1, Lx + 1), np.int64)
        valid_sat[1:, 1:] = valid.cumsum(0).cumsum(1)
        rows, cols, vals = [], [], []
        self.npix_cell = np.zeros(n, np.int64)
        self.npix_neuropil = np.zeros(n, np.int64)
        bbox = np.zeros((n, 4), np.int64)  # ymin, ymax, xmin, xmax over cell + neuropil pixels
        for i, stat in enumerate(roi_set.stat):
            idx, w = smooth_cell_mask(*cell_mask(stat, Ly, Lx, allow_overlap), Ly, Lx, mask_sigma)
            nidx = neuropil_mask(stat, valid, valid_sat, inner_neuropil_radius, min_neuropil_pixels)
            self.npix_cell[i], self.npix_neuropil[i] = idx.size, nidx.size
            rows += [np.full(idx.size, i), np.full(nidx.size, n + i)]
            cols += [idx, nidx]
            vals += [w, np.full(nidx.size, 1.0 / max(nidx.size, 1))]
            both = np.concatenate([idx, nidx])
            if both.size:
                ys, xs = np.divmod(both, Lx)
                bbox[i] = ys.min(), ys.max(), xs.min(), xs.max()
        row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        val = np.concatenate(vals) if vals else np.zeros(0)
        ys, xs = np.divmod(col, Lx)
        padded_col = ys * Wp + xs  # flat index in the padded buffer, relative to frame pixel (0, 0)
        self._matrix = sp.csr_matrix((val.astype(np.float32), (row, padded_col)), shape=(2 * n, self._ncols))
        self._matrix.sum_duplicates()
        self._cells = self._matrix[:n]  # row slices: the bilinear path reads cell rows at four offsets
        self._neuropil = self._matrix[n:]
        self._bbox = bbox
        # extent of all masks: a shift that keeps it inside the frame needs no renormalisation
        used = bbox[(self.npix_cell + self.npix_neuropil) > 0]
        self._extent = ((int(used[:, 0].min()), int(used[:, 1].max()), int(used[:, 2].min()), int(used[:, 3].max()))
                        if used.size else (0, 0, 0, 0))
        self._weight_cache: dict[tuple[int, int], np.ndarray] = {}
        self._np_share_cache: dict[tuple[int, int], np.ndarray] = {}  # compiled method: per whole shift
        #: ROIs whose cell mask is empty (all pixels overlap another ROI): their F is NaN
        self.empty_cells = np.flatnonzero(self.npix_cell == 0)
        self.empty_neuropil = np.flatnonzero(self.npix_neuropil == 0)
        self._nan_rows = np.concatenate([self.empty_cells, n + self.empty_neuropil])
        self._out = np.empty(2 * n, np.float32)
        self._weight = np.empty(2 * n, np.float32)
        self._term = np.empty(2 * n, np.float32)  # one bilinear corner's contribution
        self._out_cells, self._out_neuropil = self._out[:n], self._out[n:]  # views made once, not per frame
        self.last_shift: tuple[float, float] | None = None  # the last frame's (dy, dx), as read
        self._corner_reads = np.zeros((4, n), np.float32)  # the cells read at the four whole shifts around the subpixel
        self._build_kernel_tables(valid)

    def _build_kernel_tables(self, valid: np.ndarray) -> None:
        """The masks in the compiled kernels' layout (acquisition.extract_kernels): cell pixels as runs along rows
        with their weights, neuropil masks as a rectangle's valid pixels plus signed corrections."""
        n, Wp = self.n_rois, self.Wp
        cells, neuropil = self._cells, self._neuropil
        ys, xs = np.divmod(cells.indices.astype(np.int64), Wp)  # row-major within each ROI (sum_duplicates sorts)
        rows = [(ys[cells.indptr[i]:cells.indptr[i + 1]], xs[cells.indptr[i]:cells.indptr[i + 1]]) for i in range(n)]
        self._cell_ptr, self._run_y, self._run_x, self._run_len = pixel_runs(rows)
        self._cell_w = cells.data.astype(np.float32)
        self._pix_ptr = cells.indptr.astype(np.int64)  # each ROI's first weight
        # ROIs [0, first_half) hold half the cells' pixels: the worker's share when only the cells are left to read
        self.first_half = int(np.searchsorted(self._pix_ptr, self._pix_ptr[-1] / 2))
        self._first_reads = np.zeros((4, self.first_half), np.float32)
        self._second_reads = np.zeros((4, n - self.first_half), np.float32)
        sums = np.concatenate([[0.0], np.cumsum(self._cell_w, dtype=np.float64)])
        self._cell_total = sums[self._pix_ptr[1:]] - sums[self._pix_ptr[:-1]]
        self._cell_bbox = np.zeros((n, 4), np.int32)
        for i in range(n):
            lo, hi = self._pix_ptr[i], self._pix_ptr[i + 1]
            if hi > lo:
                self._cell_bbox[i] = ys[lo:hi].min(), ys[lo:hi].max(), xs[lo:hi].min(), xs[lo:hi].max()
        sets = []
        for i in range(n):
            py, px = np.divmod(neuropil.indices[neuropil.indptr[i]:neuropil.indptr[i + 1]].astype(np.int64), Wp)
            sets.append(py * self.Lx + px)
        self._valid = np.ascontiguousarray(valid, dtype=np.uint8)
        self._np_sets = sets  # kept for prepare_column_order()
        self._np_columns: tuple[np.ndarray, ...] | None = None
        self._edge_tables: dict[tuple[int, int], tuple] = {}  # per whole shift: the cells read at the edge
        self._edge_frames: dict[np.dtype, np.ndarray] = {}  # row-major copies of their pixels, per pixel type
        self._np_box, self._np_ptr, self._np_y, self._np_x, self._np_sign = box_decomposition(sets, self._valid)
        self._np_events = box_events(self._np_box, self.Ly)
        self._valid_sat = np.zeros((self.Ly + 1, self.Lx + 1), np.int64)
        self._valid_sat[1:, 1:] = self._valid.astype(np.int64).cumsum(0).cumsum(1)
        # each neuropil mask's valid pixels when its box is wholly inside the frame: the box's, plus its corrections
        running = np.concatenate(([0], np.cumsum(self._np_sign, dtype=np.int64)))
        sat, (y0, y1, x0, x1) = self._valid_sat, self._np_box.T.astype(np.int64)
        self._np_full_count = (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
                               + running[self._np_ptr[1:]] - running[self._np_ptr[:-1]])
        self._np_scale = np.where(self.npix_neuropil > 0, 1.0 / np.maximum(self.npix_neuropil, 1), 0.0)
        self._scratch: dict[tuple[np.dtype, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._worker_scratch: dict[tuple[np.dtype, bool], tuple[np.ndarray, np.ndarray]] = {}  # the worker's
        if self.method == "compiled":
            compile_extract_kernels()

    @property
    def cell_masks(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(flat frame indices, weights) per ROI, for inspection and tests."""
        return [self._row(i) for i in range(self.n_rois)]

    @property
    def neuropil_masks(self) -> list[np.ndarray]:
        return [self._row(self.n_rois + i)[0] for i in range(self.n_rois)]

    def _row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        m = self._matrix
        lo, hi = m.indptr[r], m.indptr[r + 1]
        ys, xs = np.divmod(m.indices[lo:hi], self.Wp)
        return ys * self.Lx + xs, m.data[lo:hi].copy()

    def _product(self, vector: np.ndarray, iy: int, ix: int, out: np.ndarray | None = None,
                 matrix: sp.csr_matrix | None = None) -> np.ndarray:
        """Mask weights times ``vector`` read at integer shift (iy, ix), written into ``out`` (new if None)."""
        start = self._origin + iy * self.Wp + ix
        m = self._matrix if matrix is None else matrix
        if out is None:
            out = np.zeros(m.shape[0], np.float32)
        else:
            out.fill(0.0)
        _csr_matvec(m.shape[0], m.shape[1], m.indptr, m.indices, m.data, vector[start:start + self._ncols], out)
        return out

    @staticmethod
    def _corners(dy: float, dx: float) -> tuple[int, int, tuple[tuple[int, int, float], ...]]:
        iy, ix = math.floor(dy), math.floor(dx)
        fy, fx = dy - iy, dx - ix
        return iy, ix, ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 1, fy * fx))

    def _bilinear_cells(self, vector: np.ndarray, dy: float, dx: float, out: np.ndarray) -> None:
        """Cell rows of ``vector`` read bilinearly at (dy, dx), into ``out`` (n_rois)."""
        iy, ix, corners = self._corners(dy, dx)
        out.fill(0.0)
        term = self._term[: self.n_rois]
        for oy, ox, w in corners:
            if w > 1e-6:
                self._product(vector, iy + oy, ix + ox, term, self._cells)
                term *= np.float32(w)
                out += term

    def extract(self, frame: np.ndarray, dy: float, dx: float, out_F: np.ndarray, out_Fneu: np.ndarray, *,
                ahead: ExtractAhead | None = None) -> None:
        """Write F and Fneu (float32, n_rois each) of ``frame`` whose content is displaced by (dy, dx).

        ``ahead``: an :class:`~acquisition.extract_ahead.ExtractAhead` given this frame before registration; each
        part it computed at this frame's whole-pixel shifts is taken (compiled method only)."""
        if frame.shape != (self.Ly, self.Lx):
            raise ValueError(f"frame shape {frame.shape} differs from the ROI set's {(self.Ly, self.Lx)}")
        lim = self.pad - 1
        if not (math.isfinite(dy) and math.isfinite(dx)):
            dy = dx = 0.0
        dy = min(max(dy, -lim), lim)
        dx = min(max(dx, -lim), lim)
        n = self.n_rois
        out = self._out
        ry, rx = self.neuropil_shift.update(dy, dx)  # the neuropil at a whole pixel: round(), or held
        self.last_shift = (dy, dx)  # where the next frame's extraction is computed ahead (acquisition.extract_ahead)
        if self.subpixel:  # cells bilinear at (dy, dx)
            iy, ix = math.floor(dy), math.floor(dx)
            fy, fx, reach = dy - iy, dx - ix, 1
        else:  # cells at the nearest pixel
            iy, ix, fy, fx, reach = round(dy), round(dx), 0.0, 0.0, 0
        if self.method == "compiled":
            self._compiled(frame, iy, ix, fy, fx, ry, rx, ahead)
        else:
            self._sparse(frame, dy, dx, iy, ix, ry, rx)
        if self._leaves_frame(min(iy, ry), min(ix, rx), max(iy + reach, ry), max(ix + reach, rx)):
            self._renormalise(out, iy, ix, fy, fx, ry, rx)
        if self._nan_rows.size:
            out[self._nan_rows] = np.nan
        out_F[:] = out[:n]
        out_Fneu[:] = out[n:]

    def forget_shift(self) -> None:
        """Before a session's first frame (after a warm-up): no last shift, no neuropil shift held."""
        self.last_shift = self.neuropil_shift.held = None

    def _compiled(self, frame: np.ndarray, iy: int, ix: int, fy: float, fx: float, ry: int, rx: int,
                  ahead: ExtractAhead | None = None) -> None:
        """Cells at (iy + fy, ix + fx), bilinear from their four whole-pixel reads, neuropil at whole pixels
        (ry, rx), straight from ``frame``; each part from ``ahead`` when it computed it at these shifts."""
        cells_done, neuropil_done = False, False  # neuropil None: the worker is finishing it
        handed = -1  # the part the worker was handed after registration, if any
        if ahead is not None:
            cells_done, neuropil_done = ahead.take((iy, ix), (ry, rx), self._corner_reads, self._out_neuropil)
            if cells_done is None:  # the worker is finishing the cells: the loop reads the neuropil meanwhile
                self._neuropil_at(frame, ry, rx, self._out_neuropil, self._scratch)
                cells_done, neuropil_done = ahead.finish_cells((iy, ix), self._corner_reads), True
            if not cells_done and neuropil_done is False:  # the worker reads the neuropil, the loop the cells
                handed = NEUROPIL if ahead.hand(NEUROPIL, (ry, rx)) else -1
            elif not cells_done:  # only the cells are left: half each (the neuropil alone: no gain, it waits)
                handed = FIRST_CELLS if ahead.hand(FIRST_CELLS, (iy, ix)) else -1
        if handed == FIRST_CELLS:
            assert ahead is not None
            h = self.first_half
            cell_reads(frame, self._cell_ptr[h:], self._run_y, self._run_x, self._run_len,
                       self._cell_w[self._pix_ptr[h]:], iy, ix, self._second_reads, self.ordered_sums)
            self._corner_reads[:, h:] = self._second_reads
            if not ahead.collect(FIRST_CELLS, (iy, ix), self._corner_reads[:, :h]):  # not started: the loop's too
                self.first_cells_ahead(frame, (iy, ix), self._first_reads)
                self._corner_reads[:, :h] = self._first_reads
        elif not cells_done:
            cell_reads(frame, self._cell_ptr, self._run_y, self._run_x, self._run_len, self._cell_w, iy, ix,
                       self._corner_reads, self.ordered_sums)
        if (not self.ordered_sums and self._np_columns is not None and frame.flags.f_contiguous
                and not frame.flags.c_contiguous):
            self._edge_cells(frame, iy, ix, self._corner_reads)
        combine_corners(self._corner_reads, fy, fx, self._out_cells)
        if neuropil_done is None or handed == NEUROPIL:
            assert ahead is not None
            neuropil_done = (ahead.finish_neuropil((ry, rx), self._out_neuropil) if neuropil_done is None
                             else ahead.collect(NEUROPIL, (ry, rx), self._out_neuropil))
        if not neuropil_done:
            self._neuropil_at(frame, ry, rx, self._out_neuropil, self._scratch)

    def cells_ahead(self, frame: np.ndarray, origin: tuple[int, int], block: np.ndarray) -> None:
        """For the :class:`~acquisition.extract_ahead.ExtractAhead` worker: the cells read at the ``cell_block``
        (rows, columns) of whole shifts from ``origin``, laid out as extract_kernels.cell_block_sums lays them out;
        with ``cell_block`` (2, 2), the four corner reads at whole shift ``origin``."""
        if self.cell_block == (2, 3):
            cell_block_sums(frame, self._cell_ptr, self._run_y, self._run_x, self._run_len, self._cell_w, *origin,
                            block)
        else:
            cell_reads(frame, self._cell_ptr, self._run_y, self._run_x, self._run_len, self._cell_w, *origin, block,
                       self.ordered_sums)

    def first_cells_ahead(self, frame: np.ndarray, shift: tuple[int, int], corners: np.ndarray) -> None:
        """The four corner reads of cells [0, first_half) only, at whole shift ``shift`` (the worker's half when
        registration left only the cells to read; ``corners`` is (4, first_half)). Each ROI's sums are its own: the
        same bits as in a read of all of them."""
        cell_reads(frame, self._cell_ptr[:self.first_half + 1], self._run_y, self._run_x, self._run_len,
                   self._cell_w, *shift, corners, self.ordered_sums)

    def neuropil_ahead(self, frame: np.ndarray, shift: tuple[int, int], neuropil: np.ndarray) -> None:
        """The neuropil at whole shift ``shift`` (for the ExtractAhead worker; its own scratch)."""
        self._neuropil_at(frame, *shift, neuropil, self._worker_scratch)

    def prepare_column_order(self) -> None:
        """Build the neuropil tables of the transposed frame, for integer frames whose pixels are column-major (a
        CLOOSE frame's ``Frame.wire``, extracted before it is put in row order). Their neuropil pass then runs
        down each column, as the row-major one runs along rows (337 against 554 µs at 512x512 with 500 ROIs after
        a frame period's pause), and gives the same bits: integer sums are exact in any order. Cells are read in
        place: with ordered sums to the same bits in either order; with vectorised ones each run's pixels are copied
        into contiguous scratch first (``cell_corner_sums_from_columns``: summed down strided columns they came out
        in other bits on AVX2), those at the frame's edge again from a row-major copy of their pixels
        (:meth:`_edge_cells`)."""
        if self._np_columns is not None:
            return
        sets = [(idx % self.Lx) * self.Ly + idx // self.Lx for idx in self._np_sets]  # flat indices of the transpose
        valid = np.ascontiguousarray(self._valid.T)
        box, ptr, cy, cx, sign = box_decomposition(sets, valid)
        self._np_columns = (valid, *box_events(box, self.Lx), box, ptr, cy, cx, sign)
        self._edge_frames[np.dtype(np.uint16)] = np.zeros((self.Ly, self.Lx), np.uint16)

    def _edge_cells(self, frame: np.ndarray, iy: int, ix: int, corners: np.ndarray) -> None:
        """A column-major frame's cells whose reads at whole shift (iy, ix) reach the frame's edge, read again from
        a row-major copy of just their pixels: the row-major kernel's edge branch sums in an order that depends on
        the memory order (a vectorised reduction over contiguous pixels only); the column kernel copies only the
        interior runs into contiguous scratch (test_acq_extraction.py)."""
        table = _per_shift(self._edge_tables, (iy, ix), self._edge_table)
        rois, ptr, run_y, run_x, run_len, weight, regions, out = table
        if not rois.size:
            return
        rows = self._edge_frames.get(frame.dtype)
        if rows is None:
            rows = self._edge_frames[frame.dtype] = np.zeros((self.Ly, self.Lx), frame.dtype)
        copy_regions(frame, rows, regions)
        cell_corner_sums(rows, ptr, run_y, run_x, run_len, weight, iy, ix, out)
        corners[:, rois] = out

    def _edge_table(self, iy: int, ix: int) -> tuple:
        """The cells whose reads at (iy, ix), with the bilinear neighbour, leave the frame's interior: their runs
        and weights as a table of their own, and the frame regions they read."""
        bbox, Ly, Lx = self._cell_bbox.astype(np.int64), self.Ly, self.Lx
        edge = (self._pix_ptr[1:] > self._pix_ptr[:-1]) & ((bbox[:, 0] + iy < 0) | (bbox[:, 1] + iy + 1 >= Ly)
                                                           | (bbox[:, 2] + ix < 0) | (bbox[:, 3] + ix + 1 >= Lx))
        rois = np.flatnonzero(edge)
        runs = [np.arange(self._cell_ptr[i], self._cell_ptr[i + 1]) for i in rois]
        which = np.concatenate(runs) if runs else np.zeros(0, np.int64)
        ptr = np.concatenate([[0], np.cumsum([r.size for r in runs], dtype=np.int64)]).astype(self._cell_ptr.dtype)
        weight = (np.concatenate([self._cell_w[self._pix_ptr[i]:self._pix_ptr[i + 1]] for i in rois]) if runs
                  else np.zeros(0, np.float32))
        regions = np.array([(max(int(bbox[i, 0]) + iy, 0), min(int(bbox[i, 1]) + iy + 2, Ly),
                             max(int(bbox[i, 2]) + ix, 0), min(int(bbox[i, 3]) + ix + 2, Lx)) for i in rois],
                           np.int64).reshape(-1, 4)
        return (rois, ptr, self._run_y[which], self._run_x[which], self._run_len[which], weight, regions,
                np.empty((4, rois.size), np.float32))

    def _neuropil_at(self, frame: np.ndarray, ry: int, rx: int, out: np.ndarray,
                     scratches: dict[tuple[np.dtype, bool], tuple[np.ndarray, np.ndarray]]) -> None:
        by_columns = (self._np_columns is not None and frame.dtype.kind in "ui" and frame.flags.f_contiguous
                      and not frame.flags.c_contiguous)
        scratch = scratches.get((frame.dtype, by_columns))
        if scratch is None:
            scratch = scratches[frame.dtype, by_columns] = scratch_for(frame.dtype, self.Ly if by_columns else self.Lx,
                                                                       self.n_rois)
        if by_columns:  # the transposed frame is row-major: the mask of pixel (y, x) at (x, y), shifted by (rx, ry)
            assert self._np_columns is not None
            neuropil_sums(frame.T, *self._np_columns, self._np_scale, rx, ry, scratch[0], scratch[1], out)
            return
        ev_row, ev_box, ev_sign = self._np_events
        neuropil_sums(frame, self._valid, ev_row, ev_box, ev_sign, self._np_box, self._np_ptr, self._np_y,
                      self._np_x, self._np_sign, self._np_scale, ry, rx, scratch[0], scratch[1], out)

    def _sparse(self, frame: np.ndarray, dy: float, dx: float, iy: int, ix: int, ry: int, rx: int) -> None:
        """The earlier way: one copy into the zero-padded buffer, then sparse products at offsets into it."""
        np.copyto(self._centre, frame, casting="unsafe")
        n, out = self.n_rois, self._out
        if not self.subpixel and (iy, ix) == (ry, rx):  # both parts at one whole shift: one product
            self._product(self._flat, ry, rx, out)
            return
        if self.subpixel:
            self._bilinear_cells(self._flat, dy, dx, out[:n])
        else:  # the cells at the nearest pixel, the neuropil held apart from it
            self._product(self._flat, iy, ix, out[:n], self._cells)
        self._product(self._flat, ry, rx, out[n:], self._neuropil)

    def _leaves_frame(self, iy0: int, ix0: int, iy1: int, ix1: int) -> bool:
        lo_y, hi_y, lo_x, hi_x = self._extent
        return (lo_y + min(iy0, iy1) < 0 or hi_y + max(iy0, iy1) >= self.Ly
                or lo_x + min(ix0, ix1) < 0 or hi_x + max(ix0, ix1) >= self.Lx)

    def _inside_weight(self, iy: int, ix: int) -> np.ndarray:
        """In-frame share of each mask's weight at integer shift (iy, ix); cached (it depends on the shift only)."""
        return _per_shift(self._weight_cache, (iy, ix), lambda y, x: self._product(self._inside_flat, y, x))

    def _neuropil_shares(self, ry: int, rx: int) -> np.ndarray:
        """The neuropil masks' in-frame shares at whole shift (ry, rx); cached per shift (the sparse way's
        _inside_weight likewise): ~50 µs of a frame at the edge after a pause, for 500 ROIs, made once a shift."""
        return _per_shift(self._np_share_cache, (ry, rx), self._make_neuropil_shares)

    def _make_neuropil_shares(self, ry: int, rx: int) -> np.ndarray:
        shares = np.empty(self.n_rois, np.float32)
        neuropil_inside_shares(self.Ly, self.Lx, self._np_box, self._valid_sat, self._np_ptr, self._np_y,
                               self._np_x, self._np_sign, self._np_full_count, self._np_scale, ry, rx, shares)
        return shares

    def _renormalise(self, out: np.ndarray, iy: int, ix: int, fy: float, fx: float, ry: int, rx: int) -> None:
        """Divide by the in-frame share of each mask's weight; NaN where nothing is left in the frame."""
        n = self.n_rois
        weight = self._weight
        if self.method == "compiled":  # from the geometry: the cells' every frame, the neuropil's once per shift
            cell_inside_shares(self.Ly, self.Lx, self._cell_ptr, self._run_y, self._run_x, self._run_len,
                               self._pix_ptr, self._cell_w, self._cell_bbox, self._cell_total, iy, ix, fy, fx,
                               weight[:n])
            weight[n:] = self._neuropil_shares(ry, rx)
        else:
            np.copyto(weight[:n], self._inside_weight(iy, ix)[:n])
            np.copyto(weight[n:], self._inside_weight(ry, rx)[n:])
        if self.subpixel and self.method == "sparse":  # cells were read bilinearly: their in-frame share too
            corners = self._corners(iy + fy, ix + fx)[2]
            weight[:n] = 0.0
            term = self._term[:n]
            for oy, ox, w in corners:
                if w > 1e-6:
                    np.multiply(self._inside_weight(iy + oy, ix + ox)[:n], np.float32(w), out=term)
                    weight[:n] += term
        divide_by_shares(out, weight)
