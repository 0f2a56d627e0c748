"""The real FFTs of the per-frame registration (acquisition.registration), written into preallocated buffers.

Two backends, ``[acquisition.registration] fft_backend``: "ducc0" (the default) and "pocketfft" (scipy.fft's
own binding). ducc0 is pocketfft's successor by the same author, with vectorised float32 kernels: a 384x384
float32 r2c takes ~0.29 ms instead of ~0.44 ms of thread CPU here (docs/REGISTRATION.md), the same numbers to
float rounding (~1e-9 of the peak). Both release the GIL and write into our buffers (scipy.fft's public
rfft2/irfft2 have no ``out=`` and allocate a result per call; numpy>=2's ``np.fft.rfft2(out=)`` is slower).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# scipy.fft's own pocketfft binding: writes into our buffers and skips ~10 us of wrapper per transform;
# tests/test_acq_registration.py checks it against scipy.fft
from scipy.fft._pocketfft import pypocketfft as _pocketfft

FFT_BACKENDS = ("ducc0", "pocketfft")


class RealFft2:
    """2-D real FFT forward (``r2c``) and inverse (``c2r``, divided by the size) with ``workers`` threads."""

    def __init__(self, backend: str = "ducc0", workers: int = 1) -> None:
        if backend not in FFT_BACKENDS:
            raise ValueError(f"`fft_backend`: must be one of {', '.join(FFT_BACKENDS)}, not {backend!r}")
        if workers < 1:
            raise ValueError(f"`fft_workers`: must be >= 1, not {workers}")
        self.backend = backend
        self.workers = int(workers)
        self._r2c: Callable[[np.ndarray, np.ndarray], object]
        self._c2r: Callable[[np.ndarray, int, np.ndarray], np.ndarray]
        if backend == "ducc0":
            try:
                import ducc0
            except ImportError as exc:
                raise ImportError('[acquisition.registration] fft_backend = "ducc0": the ducc0 package is not '
                                  'installed (pip install ducc0, a dependency of bci-rig), or set "pocketfft"') from exc
            fft = ducc0.fft
            self._r2c = lambda a, out: fft.r2c(a, axes=(0, 1), forward=True, inorm=0, out=out, nthreads=self.workers)
            self._c2r = lambda a, n, out: fft.c2r(a, axes=(0, 1), lastsize=n, forward=False, inorm=2, out=out,
                                                  nthreads=self.workers)
        else:
            self._r2c = lambda a, out: _pocketfft.r2c(a, (0, 1), True, 0, out, self.workers)
            self._c2r = lambda a, n, out: _pocketfft.c2r(a, (0, 1), n, False, 2, out, self.workers)

    def r2c(self, image: np.ndarray, out: np.ndarray) -> None:
        """``out`` = scipy.fft.rfft2(image) (float32 in, complex64 out)."""
        self._r2c(image, out)

    def c2r(self, spec: np.ndarray, lastsize: int, out: np.ndarray) -> np.ndarray:
        """``out`` = scipy.fft.irfft2(spec, s=(rows, lastsize)); ``spec`` is left intact."""
        return self._c2r(spec, lastsize, out)
