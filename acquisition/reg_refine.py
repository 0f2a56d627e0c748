"""Refinement of a given reference from the session's own first frames (see docs/REGISTRATION.md).

A reference that is a plain mean of frames taken while the field moved (what averaging the first seconds
on the scope gives) is motion-blurred: registering sharp frames against it errs 0.14-1.5 px RMS, and the
error depends on where each frame sits inside the blur. The cure is suite2p's: register the first good
frames against the given reference, average them aligned with subpixel (Fourier) shifts, and register
against that average from then on. The average is re-centred so that the frames' mean shift against it
equals their mean shift against the given reference: ROIs drawn on the given reference stay valid, and
shifts before and after the switch are on one scale.

Whether a reference is blurred is judged by :func:`blur_ratio`: the reference's power at cell-sized
spatial frequencies relative to its power at coarse ones, divided by the same ratio of the refined image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from acquisition.reg_quality import fill_constant_border
from acquisition.registration import RigidRegistrar, shift_image_subpixel, spatial_taper_mask

#: the modes of ``registration.refine_reference``
REFINE_MODES = ("auto", "always", "never")

# spatial-frequency bands of blur_ratio, cycles per pixel: cell-sized detail (a 5-12 px ring or soma edge)
# against coarse structure (1/60-1/30: above the slow neuropil glow, below what a few pixels of motion
# blur removes). Motion of 2-3 px RMS passes ~90 % of the second and ~30 % of the first.
_DETAIL_BAND = (1 / 12, 1 / 5)
_COARSE_BAND = (1 / 60, 1 / 30)


def _prepared_spectrum(image: np.ndarray) -> np.ndarray:
    img, _ = fill_constant_border(np.asarray(image, np.float32))
    Ly, Lx = img.shape
    mask = spatial_taper_mask(min(Ly, Lx) / 32, Ly, Lx)
    img = (img - float((img * mask).sum() / mask.sum())) * mask
    return np.fft.rfft2(img.astype(np.float64))


def blur_ratio(original: np.ndarray, half_a: np.ndarray, half_b: np.ndarray) -> float:
    """How much of the cell-sized detail of an aligned average of the frames ``original`` keeps, relative to
    the coarse structure: ~1 for a sharp reference, well below 1 for a motion-blurred one.

    The transfer from the average to ``original`` per band is Re<O R*> / <|R|^2>, with the average's own
    power estimated without its noise as the cross-power Re<A B*> of two averages of disjoint frames
    (``half_a``, ``half_b``): their noise is independent. The ratio of the detail band's transfer to the
    coarse band's removes any intensity scale or offset of ``original``.
    """
    so, sa, sb = (_prepared_spectrum(x) for x in (original, half_a, half_b))
    Ly, Lx = np.shape(original)
    k = np.hypot(np.fft.fftfreq(Ly)[:, None], np.fft.rfftfreq(Lx)[None, :])
    transfer = []
    for lo, hi in (_DETAIL_BAND, _COARSE_BAND):
        band = (k >= lo) & (k < hi)
        cross = float(np.real(so[band] * np.conj(sa[band] + sb[band]) / 2).sum())
        signal = float(np.real(sa[band] * np.conj(sb[band])).sum())
        transfer.append(cross / signal if signal > 0 else float("nan"))
    return transfer[0] / transfer[1]


@dataclass
class RefinedReference:
    """The outcome of :func:`refine_reference`."""

    image: np.ndarray  # float32, in the original reference's coordinates
    frames_used: int  # good frames averaged
    blur_ratio: float  # the original's detail relative to the frames' aligned average's (see blur_ratio)
    disagreement_px: float  # RMS difference of the frames' shifts against the original and that average
    rounds: int  # averaging rounds run
    recentre: tuple[float, float]  # (dy, dx) the average was moved by to keep the original's coordinates
    mean_shift_original: tuple[float, float]  # frames' mean shift against the original reference
    mean_shift_refined: tuple[float, float]  # ... and against the refined one: equal up to noise


def _register_all(registrar: RigidRegistrar, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    out = np.array([registrar.register(f) for f in frames], dtype=np.float64).reshape(-1, 4)
    return out[:, :2], out[:, 3].astype(np.int64) == 0


def _aligned_halves(frames: Sequence[np.ndarray], shifts: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, ...]:
    """Subpixel-aligned means of the kept frames: all of them, the even-numbered and the odd-numbered ones."""
    halves = [np.zeros(np.shape(frames[0]), np.float64) for _ in range(2)]
    counts = [0, 0]
    for i in np.flatnonzero(keep):
        halves[i % 2] += shift_image_subpixel(frames[i], -shifts[i, 0], -shifts[i, 1])
        counts[i % 2] += 1
    total = (halves[0] + halves[1]) / (counts[0] + counts[1])
    return total, halves[0] / max(counts[0], 1), halves[1] / max(counts[1], 1)


def _rms_change(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float:
    """2-D RMS difference of two shift series over ``keep``, their mean difference removed."""
    d = a[keep] - b[keep]
    d -= d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean()))


def refine_reference(original: np.ndarray, frames: Sequence[np.ndarray],
                     make_registrar: Callable[[np.ndarray], RigidRegistrar], *, max_iter: int = 5,
                     tol_px: float = 0.02, min_frames: int = 10, keep_sharp: float | None = None,
                     keep_agree_px: float = 0.1) -> RefinedReference:
    """A sharper reference in ``original``'s coordinates from ``frames`` (see the module docstring).

    ``make_registrar`` builds a registrar with the session's settings for a reference image. Each round
    averages the unflagged frames aligned with subpixel shifts and registers the frames against that
    average; rounds stop when the shifts change by less than ``tol_px`` RMS (at most ``max_iter``). The
    result is moved so that the frames' mean shift against it equals their mean shift against ``original``
    (over the frames unflagged against both). With ``keep_sharp``: an original whose :func:`blur_ratio` is
    at least that and against which the frames' shifts agree with those against the first average within
    ``keep_agree_px`` RMS is returned as it is (``image`` is ``original``), after one round.
    """
    if len(frames) < min_frames:
        raise ValueError(f"`frames`: need at least {min_frames} frames to refine a reference, got {len(frames)}")
    if max_iter < 1:
        raise ValueError("`max_iter`: must be >= 1")
    original = np.asarray(original, np.float32)
    first, keep0 = _register_all(make_registrar(original), frames)
    shifts, keep = first, keep0
    ratio = disagreement = float("nan")
    for it in range(max_iter):
        if keep.sum() < min_frames:
            raise ValueError(f"only {int(keep.sum())} of {len(frames)} frames registered without flags against "
                             f"the reference: too few (< {min_frames}) to refine it")
        image, half_a, half_b = _aligned_halves(frames, shifts, keep)
        new, keep_new = _register_all(make_registrar(image.astype(np.float32)), frames)
        change = _rms_change(new, shifts, keep & keep_new)
        if it == 0:
            ratio, disagreement = blur_ratio(original, half_a, half_b), change
            if keep_sharp is not None and ratio >= keep_sharp and disagreement <= keep_agree_px:
                mean = tuple(float(v) for v in first[keep0].mean(axis=0))
                return RefinedReference(image=original, frames_used=int(keep0.sum()), blur_ratio=ratio,
                                        disagreement_px=disagreement, rounds=1, recentre=(0.0, 0.0),
                                        mean_shift_original=mean, mean_shift_refined=mean)
        shifts, keep = new, keep_new
        if change < tol_px:
            break
    both = keep & keep0
    if both.sum() < min_frames:
        raise ValueError(f"only {int(both.sum())} frames registered without flags against both references: "
                         f"too few (< {min_frames}) to re-centre the refined one")
    offset = shifts[both].mean(axis=0) - first[both].mean(axis=0)  # where the average sits relative to the original
    image = shift_image_subpixel(image, float(offset[0]), float(offset[1])).astype(np.float32)
    final, keep_final = _register_all(make_registrar(image), frames)  # measured, not assumed
    both &= keep_final
    mean_refined = final[both].mean(axis=0)
    mean_original = first[both].mean(axis=0)
    return RefinedReference(image=image, frames_used=int(keep.sum()), blur_ratio=ratio,
                            disagreement_px=disagreement, rounds=it + 1, recentre=(float(offset[0]), float(offset[1])),
                            mean_shift_original=(float(mean_original[0]), float(mean_original[1])),
                            mean_shift_refined=(float(mean_refined[0]), float(mean_refined[1])))
