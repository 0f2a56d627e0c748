"""Compiled per-frame kernels of ROI extraction (acquisition.extraction): F and Fneu read straight from the frame.

Why: the sparse product (``csr_matvec``) over a zero-padded float32 copy of the frame moved ~4 MB per frame at
500 ROIs (an index and a weight for each of ~310 k mask pixels, and the 1.5 MB padded copy); in a session,
where other processes evict all of it between frames, that cost 0.9 ms. This machine is memory-bound, and short
loops pay their set-up per run of pixels, so the kernels read as little as possible and in long rows:

* **neuropil**: a suite2p neuropil mask is "the valid (non-cell) pixels of a rectangle, minus the exclusion ring
  around the cell" (:func:`box_decomposition` finds that form for any pixel set, with signed corrections). The
  rectangles' sums come from one top-to-bottom pass over the frame that keeps a single row of column sums in
  cache and, at each rectangle's first and past-last row, subtracts / adds the sum of its columns. Integer
  frames are summed in integers: exact, whatever the order.
* **cells**: runs of consecutive pixels of a row with their weights, read at the four whole-pixel shifts around
  the subpixel one in one pass (two frame rows per run), then combined bilinearly: the four reads need only the
  shift's whole part, so they can be made while the frame is still being registered (acquisition.extract_ahead).
  By default each read is summed pixel by pixel in a fixed order (compiled without ``fastmath``): the same bits in
  either memory order and in a pass that reads two whole shifts at once (:func:`cell_block_sums`). The vectorised
  kernels (:func:`cell_corner_sums`) replay the sessions recorded before that (``cell_sums = "vectorised"``).

Pixels read outside the frame count 0, as the padded buffer's zeros did; the caller renormalises by the in-frame
share of each mask.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def box_decomposition(sets: list[np.ndarray], valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                           np.ndarray, np.ndarray]:
    """Each pixel set (flat frame indices) as its bounding box's valid pixels plus signed corrections.

    Returns ``box`` (n, 4: rows [y0, y1), cols [x0, x1); an empty set has an empty box), ``ptr`` (n + 1) and the
    corrections ``cy``, ``cx`` (int32) and ``sign`` (int32, -1: a valid box pixel not in the set, +1: a set pixel
    that is not valid).
    """
    valid = np.asarray(valid, bool)
    Lx = valid.shape[1]
    n = len(sets)
    box = np.zeros((n, 4), np.int32)
    ptr = np.zeros(n + 1, np.int64)
    cys, cxs, signs = [], [], []
    for i, idx in enumerate(sets):
        count = 0
        if idx.size:
            ys, xs = np.divmod(np.asarray(idx, np.int64), Lx)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            box[i] = y0, y1, x0, x1
            member = np.zeros((y1 - y0, x1 - x0), bool)
            member[ys - y0, xs - x0] = True
            in_box = valid[y0:y1, x0:x1]
            for part, sign in ((in_box & ~member, -1), (member & ~in_box, 1)):
                py, px = np.nonzero(part)
                cys.append(py + y0)
                cxs.append(px + x0)
                signs.append(np.full(py.size, sign))
                count += py.size
        ptr[i + 1] = ptr[i] + count

    def join(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    return box, ptr, join(cys), join(cxs), join(signs)


def box_events(box: np.ndarray, Ly: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows where :func:`neuropil_sums` subtracts (a box's first row) or adds (its past-last row) a box's
    column sums, sorted by row: (row, box index, sign), int32. Empty boxes have none."""
    keep = np.flatnonzero((box[:, 1] > box[:, 0]) & (box[:, 3] > box[:, 2]))
    rows = np.concatenate([box[keep, 0], box[keep, 1]])
    which = np.concatenate([keep, keep])
    sign = np.concatenate([np.full(keep.size, -1), np.full(keep.size, 1)])
    order = np.argsort(rows, kind="stable")
    if rows.size and (rows.min() < 0 or rows.max() > Ly):
        raise ValueError("neuropil boxes must lie within the frame's rows")
    return rows[order].astype(np.int32), which[order].astype(np.int32), sign[order].astype(np.int32)


@njit(cache=True, nogil=True, fastmath=True)
def neuropil_sums(frame: np.ndarray, valid: np.ndarray, ev_row: np.ndarray, ev_box: np.ndarray, ev_sign: np.ndarray,
                  box: np.ndarray, ptr: np.ndarray, cy: np.ndarray, cx: np.ndarray, sign: np.ndarray,
                  scale: np.ndarray, ry: int, rx: int, colsum: np.ndarray, sums: np.ndarray, out: np.ndarray) -> None:
    """out[i] = scale[i] * (valid pixels of box i + signed corrections), the mask read at whole-pixel shift (ry, rx):
    mask pixel (y, x) reads frame pixel (y + ry, x + rx), 0 outside the frame.

    ``colsum`` (Lx, int32 for integer frames, float64 otherwise) and ``sums`` (n, int64 or float64) are scratch.
    """
    Ly, Lx = frame.shape
    colsum[:] = 0
    sums[:] = 0
    x0 = max(0, -rx)  # mask columns whose shifted pixel is inside the frame
    x1 = min(Lx, Lx - rx)
    e = 0
    n_ev = ev_row.size
    for y in range(Ly + 1):
        while e < n_ev and ev_row[e] == y:  # colsum holds the sums of mask rows < y
            b = ev_box[e]
            part = colsum[box[b, 2]:box[b, 3]]
            s = sums[b] * 0
            for j in range(part.size):
                s += part[j]
            sums[b] += ev_sign[e] * s
            e += 1
        fy = y + ry
        if y < Ly and 0 <= fy < Ly:
            src = frame[fy, x0 + rx:x1 + rx]
            ok = valid[y, x0:x1]
            dst = colsum[x0:x1]
            for j in range(src.size):
                dst[j] += src[j] * ok[j]  # a product vectorises, a branch does not
    for i in range(box.shape[0]):
        total = 1.0 * sums[i]
        for k in range(ptr[i], ptr[i + 1]):
            fy = cy[k] + ry
            fx = cx[k] + rx
            if 0 <= fy < Ly and 0 <= fx < Lx:
                total += sign[k] * frame[fy, fx]
        out[i] = total * scale[i]


@njit(cache=True, nogil=True, fastmath=True)
def cell_corner_sums(frame: np.ndarray, ptr: np.ndarray, run_y: np.ndarray, run_x: np.ndarray, run_len: np.ndarray,
                     weight: np.ndarray, iy: int, ix: int, out: np.ndarray) -> None:
    """For ROI i, its weights times the frame read at the four whole-pixel shifts around a subpixel one:
    out[0, i] at (iy, ix), out[1, i] at (iy + 1, ix), out[2, i] at (iy, ix + 1), out[3, i] at (iy + 1, ix + 1).
    :func:`combine_corners` then gives the bilinear read at (iy + fy, ix + fx), so these four can be computed
    before fy and fx are known. ROI i's pixels are runs ptr[i]:ptr[i + 1] of ``run_len`` pixels from
    (run_y, run_x), their weights consecutive in ``weight``; a pixel outside the frame reads 0."""
    Ly, Lx = frame.shape
    k = 0
    for i in range(ptr.size - 1):
        t00 = 0.0
        t10 = 0.0
        t01 = 0.0
        t11 = 0.0
        for r in range(ptr[i], ptr[i + 1]):
            y = run_y[r] + iy
            x0 = run_x[r] + ix
            n = run_len[r]
            a00 = np.float32(0.0)
            a10 = np.float32(0.0)
            a01 = np.float32(0.0)
            a11 = np.float32(0.0)
            if y >= 0 and y + 1 < Ly and x0 >= 0 and x0 + n < Lx:
                a = frame[y, x0:x0 + n + 1]
                b = frame[y + 1, x0:x0 + n + 1]
                w = weight[k:k + n]
                for j in range(n):
                    a00 += w[j] * np.float32(a[j])
                    a01 += w[j] * np.float32(a[j + 1])
                    a10 += w[j] * np.float32(b[j])
                    a11 += w[j] * np.float32(b[j + 1])
            else:  # at the frame's edge: a pixel outside reads 0
                for j in range(n):
                    x = x0 + j
                    wj = weight[k + j]
                    if 0 <= y < Ly:
                        if 0 <= x < Lx:
                            a00 += wj * np.float32(frame[y, x])
                        if 0 <= x + 1 < Lx:
                            a01 += wj * np.float32(frame[y, x + 1])
                    if 0 <= y + 1 < Ly:
                        if 0 <= x < Lx:
                            a10 += wj * np.float32(frame[y + 1, x])
                        if 0 <= x + 1 < Lx:
                            a11 += wj * np.float32(frame[y + 1, x + 1])
            t00 += a00
            t10 += a10
            t01 += a01
            t11 += a11
            k += n
        out[0, i] = t00
        out[1, i] = t10
        out[2, i] = t01
        out[3, i] = t11


@njit(cache=True, nogil=True, fastmath=True)
def cell_corner_sums_from_columns(frame: np.ndarray, ptr: np.ndarray, run_y: np.ndarray, run_x: np.ndarray,
                                  run_len: np.ndarray, weight: np.ndarray, iy: int, ix: int, out: np.ndarray) -> None:
    """:func:`cell_corner_sums` of a column-major frame (a CLOOSE frame's ``Frame.wire``), to the bits of the same
    frame in row order. Each interior run's two rows of pixels are first copied into contiguous scratch, so the
    sums below run over contiguous pixels as the row-major kernel's do, and the compiler vectorises them alike:
    read in place down strided columns they were summed in another order (on AVX2, 30 of 200 sums differed in their
    last bits; ``fastmath`` lets it reorder). The loop is the row-major kernel's, letter for letter: that is what
    keeps the bits (tests/test_acq_extraction.py). Runs at the frame's edge are summed in place, to the right values
    but not always the same bits: the extractor reads those cells again from a row-major copy of their pixels
    (``Extractor._edge_cells``)."""
    Ly, Lx = frame.shape
    row_a = np.empty(Lx + 1, frame.dtype)
    row_b = np.empty(Lx + 1, frame.dtype)
    k = 0
    for i in range(ptr.size - 1):
        t00 = 0.0
        t10 = 0.0
        t01 = 0.0
        t11 = 0.0
        for r in range(ptr[i], ptr[i + 1]):
            y = run_y[r] + iy
            x0 = run_x[r] + ix
            n = run_len[r]
            a00 = np.float32(0.0)
            a10 = np.float32(0.0)
            a01 = np.float32(0.0)
            a11 = np.float32(0.0)
            if y >= 0 and y + 1 < Ly and x0 >= 0 and x0 + n < Lx:
                for j in range(n + 1):
                    row_a[j] = frame[y, x0 + j]
                    row_b[j] = frame[y + 1, x0 + j]
                a = row_a[:n + 1]
                b = row_b[:n + 1]
                w = weight[k:k + n]
                for j in range(n):
                    a00 += w[j] * np.float32(a[j])
                    a01 += w[j] * np.float32(a[j + 1])
                    a10 += w[j] * np.float32(b[j])
                    a11 += w[j] * np.float32(b[j + 1])
            else:  # at the frame's edge: a pixel outside reads 0
                for j in range(n):
                    x = x0 + j
                    wj = weight[k + j]
                    if 0 <= y < Ly:
                        if 0 <= x < Lx:
                            a00 += wj * np.float32(frame[y, x])
                        if 0 <= x + 1 < Lx:
                            a01 += wj * np.float32(frame[y, x + 1])
                    if 0 <= y + 1 < Ly:
                        if 0 <= x < Lx:
                            a10 += wj * np.float32(frame[y + 1, x])
                        if 0 <= x + 1 < Lx:
                            a11 += wj * np.float32(frame[y + 1, x + 1])
            t00 += a00
            t10 += a10
            t01 += a01
            t11 += a11
            k += n
        out[0, i] = t00
        out[1, i] = t10
        out[2, i] = t01
        out[3, i] = t11


@njit(cache=True, nogil=True)
def _edge_run_sums(frame: np.ndarray, y: int, x0: int, n: int, weight: np.ndarray, k: int,
                   width: int) -> tuple[float, float, float, float, float, float]:
    """One run's ordered sums where it reaches the frame's edge, a pixel outside left out: weights ``weight[k:k +
    n]`` times frame rows y and y + 1 from column x0 + b, for b below ``width`` (2 or 3; the third pair 0 for 2), each
    summed pixel by pixel from zero, as the kernels' interior loops sum them."""
    Ly, Lx = frame.shape
    s00 = s01 = s02 = s10 = s11 = s12 = np.float32(0.0)
    for j in range(n):
        x = x0 + j
        w = weight[k + j]
        if 0 <= y < Ly:
            if 0 <= x < Lx:
                s00 += w * np.float32(frame[y, x])
            if 0 <= x + 1 < Lx:
                s01 += w * np.float32(frame[y, x + 1])
            if width == 3 and 0 <= x + 2 < Lx:
                s02 += w * np.float32(frame[y, x + 2])
        if 0 <= y + 1 < Ly:
            if 0 <= x < Lx:
                s10 += w * np.float32(frame[y + 1, x])
            if 0 <= x + 1 < Lx:
                s11 += w * np.float32(frame[y + 1, x + 1])
            if width == 3 and 0 <= x + 2 < Lx:
                s12 += w * np.float32(frame[y + 1, x + 2])
    return s00, s01, s02, s10, s11, s12


@njit(cache=True, nogil=True)
def cell_sums_ordered(frame: np.ndarray, ptr: np.ndarray, run_y: np.ndarray, run_x: np.ndarray, run_len: np.ndarray,
                      weight: np.ndarray, iy: int, ix: int, out: np.ndarray) -> None:
    """:func:`cell_corner_sums`' four reads, each summed pixel by pixel in the runs' order (no ``fastmath``: the
    compiler may not reorder a sum). Why: the bits then depend neither on the frame's memory order nor on how many
    reads one pass makes, so :func:`cell_block_sums` gives these same bits for two whole shifts at once, and a
    column-major frame is read in place. ``[acquisition.extraction] cell_sums = "ordered"``."""
    if out.shape[0] != 4 or out.shape[1] < ptr.size - 1:
        raise ValueError("cell_sums_ordered: out must be (4, n_rois)")
    Ly, Lx = frame.shape
    k = 0
    for i in range(ptr.size - 1):
        t00 = 0.0
        t10 = 0.0
        t01 = 0.0
        t11 = 0.0
        for r in range(ptr[i], ptr[i + 1]):
            y = run_y[r] + iy
            x0 = run_x[r] + ix
            n = run_len[r]
            a00 = np.float32(0.0)
            a10 = np.float32(0.0)
            a01 = np.float32(0.0)
            a11 = np.float32(0.0)
            if y >= 0 and y + 1 < Ly and x0 >= 0 and x0 + n < Lx:
                pa, pb = np.float32(frame[y, x0]), np.float32(frame[y + 1, x0])
                for j in range(n):
                    w = weight[k + j]
                    qa, qb = np.float32(frame[y, x0 + j + 1]), np.float32(frame[y + 1, x0 + j + 1])
                    a00 += w * pa
                    a01 += w * qa
                    a10 += w * pb
                    a11 += w * qb
                    pa, pb = qa, qb
            else:  # at the frame's edge: a pixel outside is left out (as if it read 0)
                a00, a01, _, a10, a11, _ = _edge_run_sums(frame, y, x0, n, weight, k, 2)
            t00 += a00
            t10 += a10
            t01 += a01
            t11 += a11
            k += n
        out[0, i] = t00
        out[1, i] = t10
        out[2, i] = t01
        out[3, i] = t11


@njit(cache=True, nogil=True)
def cell_block_sums(frame: np.ndarray, ptr: np.ndarray, run_y: np.ndarray, run_x: np.ndarray, run_len: np.ndarray,
                    weight: np.ndarray, oy: int, ox: int, out: np.ndarray) -> None:
    """ROI i's weights times the frame read at the six whole shifts (oy + a, ox + b), a in 0..1, b in 0..2, into
    out[2 * b + a, i]: the reads of :func:`cell_sums_ordered` at whole shifts (oy, ox) and (oy, ox + 1) in one pass
    of two frame rows per run, to the same bits (each sum in the same order; tests/test_acq_extraction.py).
    ``out.reshape(3, 2, n)[b:b + 2]`` is then the four reads at (oy, ox + b) as ``(2, 2, n)`` of the (4, n)
    corners. The extraction worker computes it for the next frame's likeliest whole shift and its neighbour along
    x (acquisition.extract_ahead): after a frame period's pause it costs what one shift's reads cost (the same
    rows of the frame); a block three rows high cost 1.25 times as much."""
    if out.shape[0] != 6 or out.shape[1] < ptr.size - 1:  # no bounds checks below: a smaller out is memory trodden on
        raise ValueError("cell_block_sums: out must be (6, n_rois)")
    Ly, Lx = frame.shape
    k = 0
    for i in range(ptr.size - 1):
        t00 = t10 = t01 = t11 = t02 = t12 = 0.0
        for r in range(ptr[i], ptr[i + 1]):
            y = run_y[r] + oy
            x0 = run_x[r] + ox
            n = run_len[r]
            a00 = a10 = a01 = a11 = a02 = a12 = np.float32(0.0)
            if y >= 0 and y + 1 < Ly and x0 >= 0 and x0 + n + 1 < Lx:
                pa, pb = np.float32(frame[y, x0]), np.float32(frame[y + 1, x0])
                qa, qb = np.float32(frame[y, x0 + 1]), np.float32(frame[y + 1, x0 + 1])
                for j in range(n):
                    w = weight[k + j]
                    ra, rb = np.float32(frame[y, x0 + j + 2]), np.float32(frame[y + 1, x0 + j + 2])
                    a00 += w * pa
                    a01 += w * qa
                    a02 += w * ra
                    a10 += w * pb
                    a11 += w * qb
                    a12 += w * rb
                    pa, qa, pb, qb = qa, ra, qb, rb
            else:  # at the frame's edge: a pixel outside is left out, as cell_sums_ordered leaves it
                a00, a01, a02, a10, a11, a12 = _edge_run_sums(frame, y, x0, n, weight, k, 3)
            t00 += a00
            t10 += a10
            t01 += a01
            t11 += a11
            t02 += a02
            t12 += a12
            k += n
        out[0, i], out[1, i] = t00, t10
        out[2, i], out[3, i] = t01, t11
        out[4, i], out[5, i] = t02, t12


def cell_reads(frame: np.ndarray, ptr: np.ndarray, run_y: np.ndarray, run_x: np.ndarray, run_len: np.ndarray,
               weight: np.ndarray, iy: int, ix: int, out: np.ndarray, ordered: bool = True) -> None:
    """The cells' four corner reads: ``ordered`` (:func:`cell_sums_ordered`, any memory order in place), else by the
    vectorised kernel for the frame's memory order (the same bits either way, apart from the edge runs of a
    column-major frame: see :func:`cell_corner_sums_from_columns`)."""
    if ordered:
        cell_sums_ordered(frame, ptr, run_y, run_x, run_len, weight, iy, ix, out)
        return
    by_columns = frame.flags.f_contiguous and not frame.flags.c_contiguous
    kernel = cell_corner_sums_from_columns if by_columns else cell_corner_sums
    kernel(frame, ptr, run_y, run_x, run_len, weight, iy, ix, out)


@njit(cache=True, nogil=True)
def combine_corners(corners: np.ndarray, fy: float, fx: float, out: np.ndarray) -> None:
    """The bilinear read at (iy + fy, ix + fx) from :func:`cell_corner_sums`' four whole-pixel reads."""
    w00 = (1.0 - fy) * (1.0 - fx)
    w10 = fy * (1.0 - fx)
    w01 = (1.0 - fy) * fx
    w11 = fy * fx
    for i in range(out.size):
        out[i] = w00 * corners[0, i] + w10 * corners[1, i] + w01 * corners[2, i] + w11 * corners[3, i]


@njit(cache=True, nogil=True)
def cell_inside_shares(Ly: int, Lx: int, ptr: np.ndarray, run_y: np.ndarray, run_x: np.ndarray, run_len: np.ndarray,
                       pix_ptr: np.ndarray, weight: np.ndarray, cell_bbox: np.ndarray, cell_total: np.ndarray,
                       iy: int, ix: int, fy: float, fx: float, out: np.ndarray) -> None:
    """The share of each cell mask's weight that its reads (combined bilinearly) take from inside the frame at
    these shifts (what they return for a frame of ones), from the geometry alone. A mask wholly inside costs O(1):
    ``cell_bbox`` (n, 4: ymin, ymax, xmin, xmax) and ``cell_total`` (its weight sum); so renormalising at the
    frame's edge needs no table per shift. ``out``: n shares."""
    n = ptr.size - 1
    w00 = (1.0 - fy) * (1.0 - fx)
    w10 = fy * (1.0 - fx)
    w01 = (1.0 - fy) * fx
    w11 = fy * fx
    for i in range(n):
        if (cell_bbox[i, 0] + iy >= 0 and cell_bbox[i, 1] + iy + 1 < Ly
                and cell_bbox[i, 2] + ix >= 0 and cell_bbox[i, 3] + ix + 1 < Lx):
            out[i] = cell_total[i]
            continue
        total = 0.0
        k = pix_ptr[i]
        for r in range(ptr[i], ptr[i + 1]):
            y = run_y[r] + iy
            x0 = run_x[r] + ix
            for j in range(run_len[r]):
                x = x0 + j
                v = 0.0
                if 0 <= y < Ly:
                    if 0 <= x < Lx:
                        v += w00
                    if 0 <= x + 1 < Lx:
                        v += w01
                if 0 <= y + 1 < Ly:
                    if 0 <= x < Lx:
                        v += w10
                    if 0 <= x + 1 < Lx:
                        v += w11
                total += weight[k + j] * v
            k += run_len[r]
        out[i] = total


@njit(cache=True, nogil=True)
def neuropil_inside_shares(Ly: int, Lx: int, box: np.ndarray, valid_sat: np.ndarray, np_ptr: np.ndarray,
                           cy: np.ndarray, cx: np.ndarray, sign: np.ndarray, full_count: np.ndarray,
                           scale: np.ndarray, ry: int, rx: int, out: np.ndarray) -> None:
    """What :func:`neuropil_sums` takes from inside the frame at whole shift (ry, rx) for a frame of ones, scaled:
    a box wholly inside takes its ``full_count`` (its mask's pixel count, valid pixels only), the others count
    from ``valid_sat`` (the valid map's summed-area table) and their corrections. Depends on the whole shift only,
    so the caller keeps it per shift. ``out``: n shares."""
    for i in range(box.shape[0]):
        y0 = max(box[i, 0], -ry)
        y1 = min(box[i, 1], Ly - ry)
        x0 = max(box[i, 2], -rx)
        x1 = min(box[i, 3], Lx - rx)
        if y0 == box[i, 0] and y1 == box[i, 1] and x0 == box[i, 2] and x1 == box[i, 3]:
            out[i] = full_count[i] * scale[i]  # wholly inside: no table read (cold memory costs most here)
            continue
        count = 0
        if y1 > y0 and x1 > x0:
            count = valid_sat[y1, x1] - valid_sat[y0, x1] - valid_sat[y1, x0] + valid_sat[y0, x0]
        for k2 in range(np_ptr[i], np_ptr[i + 1]):
            y = cy[k2] + ry
            x = cx[k2] + rx
            if 0 <= y < Ly and 0 <= x < Lx:
                count += sign[k2]
        out[i] = count * scale[i]


def pixel_runs(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per ROI, its (y, x) pixels sorted row-major as runs of consecutive pixels: (ptr, run_y, run_x, run_len);
    the pixels' weights stay in the same order, so run r of ROI i covers the next run_len[r] of them."""
    ptr = np.zeros(len(rows) + 1, np.int64)
    ys_all, xs_all, lens = [], [], []
    for i, (ys, xs) in enumerate(rows):
        if ys.size:
            key = ys.astype(np.int64) * (int(xs.max()) + 2) + xs
            if np.any(np.diff(key) <= 0):
                raise ValueError("ROI pixels must be sorted row-major and unique")
            brk = np.flatnonzero((np.diff(ys) != 0) | (np.diff(xs) != 1)) + 1
            starts = np.r_[0, brk]
            ends = np.r_[brk, ys.size]
            ys_all.append(ys[starts])
            xs_all.append(xs[starts])
            lens.append(ends - starts)
            ptr[i + 1] = ptr[i] + starts.size
        else:
            ptr[i + 1] = ptr[i]

    def join(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    return ptr, join(ys_all), join(xs_all), join(lens)


@njit(cache=True, nogil=True)
def divide_by_shares(out: np.ndarray, share: np.ndarray) -> None:
    """out /= share, NaN where the share is below 1e-6 (nothing of the mask left in the frame): numpy's divide
    and masked fill in one pass, the same float32 values (a division is exact to the IEEE rounding either way)."""
    tiny = np.float32(1e-6)
    for i in range(out.size):
        out[i] = np.float32(np.nan) if share[i] < tiny else out[i] / share[i]


@njit(cache=True, nogil=True)
def copy_regions(src: np.ndarray, dst: np.ndarray, regions: np.ndarray) -> None:
    """dst[y0:y1, x0:x1] = src[y0:y1, x0:x1] for each row (y0, y1, x0, x1) of ``regions``: one call, not one per
    region (a column-major ``src`` is read column by column)."""
    for r in range(regions.shape[0]):
        y0, y1, x0, x1 = regions[r, 0], regions[r, 1], regions[r, 2], regions[r, 3]
        for x in range(x0, x1):
            for y in range(y0, y1):
                dst[y, x] = src[y, x]


def compile_extract_kernels(dtypes: tuple[type, ...] = (np.uint16, np.int16, np.float32)) -> None:
    """Compile (or load from numba's cache) the kernels for the frame dtypes scopes deliver, before frame one."""
    ptr = np.array([0, 1], np.int64)
    one = np.zeros(1, np.int32)
    box = np.array([[0, 1, 0, 1]], np.int32)
    ev_row, ev_box, ev_sign = box_events(box, 4)
    valid = np.ones((4, 4), np.uint8)
    out = np.zeros(1, np.float32)
    for dtype in dtypes:
        frame = np.zeros((4, 4), dtype)
        corners = np.zeros((4, 1), np.float32)
        cell_corner_sums(frame, ptr, one, one, np.ones(1, np.int32), np.ones(1, np.float32), 0, 0, corners)
        combine_corners(corners, 0.5, 0.5, out)
        colsum, sums = scratch_for(frame.dtype, 4, 1)
        neuropil_sums(frame, valid, ev_row, ev_box, ev_sign, box, ptr, one, one, np.ones(1, np.int32), np.ones(1),
                      0, 0, colsum, sums, out)
        copy_regions(np.asfortranarray(frame), frame.copy(), np.array([[0, 2, 0, 2]], np.int64))
        cell_corner_sums_from_columns(np.asfortranarray(frame), ptr, one, one, np.ones(1, np.int32),
                                      np.ones(1, np.float32), 0, 0, corners)
        for pixels in (frame, np.asfortranarray(frame)):  # the ordered kernels read either order in place
            cell_sums_ordered(pixels, ptr, one, one, np.ones(1, np.int32), np.ones(1, np.float32), 0, 0, corners)
            cell_block_sums(pixels, ptr, one, one, np.ones(1, np.int32), np.ones(1, np.float32), 0, 0,
                            np.zeros((6, 1), np.float32))
    divide_by_shares(out, np.ones(1, np.float32))
    sat = np.zeros((5, 5), np.int64)
    cell_inside_shares(4, 4, ptr, one, one, np.ones(1, np.int32), ptr, np.ones(1, np.float32), box, np.ones(1), 0, 0,
                       0.5, 0.5, np.zeros(2, np.float32)[:1])
    neuropil_inside_shares(4, 4, box, sat, ptr, one, one, np.ones(1, np.int32), np.ones(1, np.int64), np.ones(1), 0,
                           0, np.zeros(1, np.float32))


def scratch_for(dtype: np.dtype, Lx: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """neuropil_sums' scratch: integer column sums for integer frames (exact), float64 otherwise."""
    if np.dtype(dtype).kind in "ui":
        return np.zeros(Lx, np.int32 if np.dtype(dtype).itemsize <= 2 else np.int64), np.zeros(n, np.int64)
    return np.zeros(Lx, np.float64), np.zeros(n, np.float64)
