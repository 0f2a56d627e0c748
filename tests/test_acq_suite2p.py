"""Cross-checks against suite2p itself (needs the suite2p extra: see docs/REGISTRATION.md for the install).

Skipped when suite2p is not importable. ``import suite2p`` pulls in torch, so these run on the CPU only.
"""

from __future__ import annotations

import numpy as np
import pytest

from acquisition.extraction import Extractor
from acquisition.registration import RigidRegistrar
from acquisition.rois import RoiSet
from tests.test_acq_synth import make_movie

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
