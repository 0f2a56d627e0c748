"""Known synthetic traces for the decoder tests (imported by the other test_decoder_* modules).

``synthetic_recording`` makes F/Fneu like an extraction would: a per-ROI baseline, calcium transients
(Poisson events, exponential decay), shot-like noise, and a neuropil trace mixed into F with the
suite2p coefficient, so F - 0.7·Fneu recovers the cell. Everything is seeded.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter


def synthetic_recording(n_frames: int, n_rois: int, seed: int, *, fps: float = 30.0, tau_s: float = 0.5,
                        event_rate_hz: float = 0.5, amplitude: float = 0.5, noise: float = 0.05,
                        neuropil_coef: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """(F, Fneu), float32 (frames × ROIs), stationary."""
    rng = np.random.default_rng(seed)
    events = rng.random((n_frames, n_rois)) < event_rate_hz / fps
    sizes = rng.exponential(amplitude, (n_frames, n_rois)) * events
    calcium = lfilter([1.0], [1.0, -np.exp(-1.0 / (tau_s * fps))], sizes, axis=0)
    level = 300.0 + 400.0 * rng.random(n_rois)
    neuropil = 150.0 + 15.0 * rng.standard_normal((n_frames, n_rois))
    cell = level * (1.0 + calcium) + level * noise * rng.standard_normal((n_frames, n_rois))
    F = cell + neuropil_coef * neuropil
    return F.astype(np.float32), neuropil.astype(np.float32)


def ar1_cursor(n_frames: int, seed: int, tau_frames: float = 5.0) -> np.ndarray:
    """A stationary smooth cursor (AR(1), unit variance) for calibration tests."""
    rng = np.random.default_rng(seed)
    a = np.exp(-1.0 / tau_frames)
    return lfilter([np.sqrt(1 - a * a)], [1.0, -a], rng.standard_normal(n_frames))


def test_recording_is_seeded_and_neuropil_corrects_to_the_cell():
    F1, N1 = synthetic_recording(500, 4, seed=3)
    F2, N2 = synthetic_recording(500, 4, seed=3)
    assert np.array_equal(F1, F2) and np.array_equal(N1, N2)
    corrected = F1.astype(np.float64) - 0.7 * N1
    assert (corrected > 100).all()  # dim enough to be realistic, far above the default f0_floor
    assert not np.array_equal(F1, synthetic_recording(500, 4, seed=4)[0])


def test_ar1_cursor_is_unit_variance():
    c = ar1_cursor(200_000, seed=1)
    assert abs(c.std() - 1.0) < 0.02 and abs(c.mean()) < 0.05
