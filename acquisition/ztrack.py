"""z-tracking: how far the focal plane has moved, from each registered frame and a z-stack of the field.

Why: x-y registration cannot see the focal plane drift; a drift of a few micrometres changes every ROI's
brightness (somata are 10-15 um, the axial PSF ~5 um), which the decoder would read as a change of F0. With a
z-stack taken around the imaging plane (planes at a known step), the frame's depth is where it correlates best
with the stack: correlation against the planes near the last estimate, sub-plane by a parabola through the
best plane and its neighbours.

Cheap enough for every frame: planes and frames are binned 2x2 and band-passed, and the band-pass is moved
onto the planes once (it is self-adjoint), so an estimate is a binned running mean of the last ``window``
registered frames (single frames hold a few photons per pixel) and ~2 * ``search_planes`` + 1 dot products.
Estimates are relative to the stack's centre plane (``z = 0``: the stack is taken centred on the imaging
plane), in micrometres, positive towards higher plane indices.

Nothing here reads the bus: ``rig process --zstack`` (acquisition/offline.py) runs :class:`ZTracker` on a movie,
the acquisition process (acquisition/process.py) runs :class:`LiveZ` on live frames.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from acquisition.config import ZTrackConfig


class ZStackError(ValueError):
    """The z-stack cannot be used with this session (size, pixel size, orientation, another field); says the numbers."""


@dataclass
class ZStack:
    """Planes (n, Ly, Lx) at depths ``z_um`` (n,), centred on the imaging plane; pixel size when the file says."""

    planes: np.ndarray
    z_um: np.ndarray
    pixel_size_um: float | None = None
    source: str = ""

    @property
    def step_um(self) -> float:
        """Plane step in um (NaN for a single plane, which :func:`load_zstack` never returns)."""
        return float(self.z_um[1] - self.z_um[0]) if self.z_um.size > 1 else float("nan")


def load_zstack(path: str | Path, step_um: float | None = None) -> ZStack:
    """Read a multi-page TIFF z-stack; the plane step comes from ``step_um`` or the ImageJ ``spacing`` tag."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: z-stack not found")
    with tifffile.TiffFile(path) as tif:
        planes = tif.asarray()
        meta = tif.imagej_metadata or {}
        page = tif.pages[0]
        pixel_size = None
        res = page.tags.get("XResolution")
        if res is not None and meta:
            num, den = res.value
            if num > 0 and den > 0 and str(meta.get("unit", "")).lower() in ("um", "micron", "\\u00b5m", "µm"):
                pixel_size = den / num
    if planes.ndim != 3 or planes.shape[0] < 3:
        raise ZStackError(f"{path}: a z-stack needs at least 3 planes of 2-D images (got shape {planes.shape})")
    if step_um is None:
        if "spacing" not in meta:
            raise ZStackError(f"{path}: the plane step is not in the file (no ImageJ 'spacing'); give it in um "
                              f"(acquisition.ztrack.step_um, or rig process --z-step-um)")
        step_um = float(meta["spacing"])
    if not step_um > 0:
        raise ZStackError(f"{path}: the plane step must be > 0 um (got {step_um})")
    n = planes.shape[0]
    z = (np.arange(n) - (n - 1) / 2.0) * step_um
    return ZStack(planes.astype(np.float32), z, pixel_size, str(path))


def _bin2(img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """2x2 mean as float32, into ``out`` when given (four strided adds, no temporary: the live path reuses
    one buffer per frame; the pixels are read as they come, uint16 or float, without a float copy first)."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    if out is None:
        out = np.empty((h // 2, w // 2), np.float32)
    np.add(img[0:h:2, 0:w:2], img[1:h:2, 0:w:2], out=out, dtype=np.float32)
    out += img[0:h:2, 1:w:2]
    out += img[1:h:2, 1:w:2]
    out *= np.float32(0.25)
    return out


def _roll_into(src: np.ndarray, iy: int, ix: int, out: np.ndarray) -> None:
    """``out[...] = np.roll(src, (iy, ix), axis=(0, 1))`` by at most four block copies (no temporary)."""
    h, w = src.shape
    iy, ix = iy % h, ix % w
    for oy, sy, ny in ((iy, 0, h - iy), (0, h - iy, iy)):
        for ox, sx, nx in ((ix, 0, w - ix), (0, w - ix, ix)):
            if ny and nx:
                out[oy : oy + ny, ox : ox + nx] = src[sy : sy + ny, sx : sx + nx]


def _bandpass(b: np.ndarray) -> np.ndarray:
    """Difference of Gaussians with zero padding: a self-adjoint operator, so it can move onto the planes."""
    return ndimage.gaussian_filter(b, 1.0, mode="constant") - ndimage.gaussian_filter(b, 6.0, mode="constant")


def _inside(shape: tuple[int, int], border: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[border : shape[0] - border, border : shape[1] - border] = True
    return mask


def _prepare(img: np.ndarray, mask: np.ndarray, binned: bool = False) -> np.ndarray:
    """Binned, band-passed, masked, zero-mean, unit-norm image (flattened): how planes and frames are compared."""
    b = np.asarray(img, np.float32) if binned else _bin2(np.asarray(img, np.float32))
    hp = _bandpass(b)
    hp -= hp[mask].mean()
    hp[~mask] = 0.0
    v = hp.ravel()
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _peak(c: np.ndarray, k: int) -> float:
    """Sub-index position of the maximum at ``k`` by a parabola through its neighbours."""
    if 0 < k < c.size - 1:
        den = c[k - 1] - 2 * c[k] + c[k + 1]
        if den < 0:
            return k + 0.5 * (c[k - 1] - c[k + 1]) / den
    return float(k)


_VARIANTS = {
    "flipped up-down": lambda a: a[::-1],
    "flipped left-right": lambda a: a[:, ::-1],
    "rotated 180 degrees": lambda a: a[::-1, ::-1],
    "transposed (x and y swapped)": lambda a: a.T,
}


def _zoomed(img: np.ndarray, factor: float) -> np.ndarray:
    """``img`` magnified by ``factor`` about its centre, same shape (what a stack of another pixel size looks like)."""
    cy, cx = (img.shape[0] - 1) / 2.0, (img.shape[1] - 1) / 2.0
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float64)
    return ndimage.map_coordinates(img, [cy + (yy - cy) / factor, cx + (xx - cx) / factor], order=1, mode="nearest")


#: the match quality (correlation with the best plane) is computed every this many estimates
QUALITY_EVERY = 30


class ZTracker:
    """Per-frame focal depth from registered frames against a z-stack.

    ``reference``: the session's registration reference; the stack is checked against it (shape, pixel size,
    orientation, same field) and must match it to ``min_corr``. ``every``: estimate every Nth frame (NaN on
    the others). ``warn_um``: :attr:`warnings` counts estimates beyond it.
    """

    def __init__(self, stack: ZStack, reference: np.ndarray, *, pixel_size_um: float | None = None,
                 every: int = 1, window: int = 10, search_planes: int = 6, max_shift_px: int = 16,
                 warn_um: float = 3.0, min_corr: float = 0.5) -> None:
        if every < 1 or window < 1:
            raise ValueError(f"z-tracking: every and window must be >= 1 (got {every}, {window})")
        self.stack = stack
        ref = np.asarray(reference, np.float32)
        Ly, Lx = stack.planes.shape[1:]
        if (Ly, Lx) != ref.shape:
            raise ZStackError(f"{stack.source}: planes are {Ly}x{Lx} px but the frames are {ref.shape[0]}x"
                              f"{ref.shape[1]} px; resample the stack to the session's pixel size and frame")
        if pixel_size_um is not None and stack.pixel_size_um is not None:
            ratio = stack.pixel_size_um / pixel_size_um
            if abs(ratio - 1.0) > 0.03:
                raise ZStackError(f"{stack.source}: its pixels are {stack.pixel_size_um:.3g} um but the session's are "
                                  f"{pixel_size_um:.3g} um (ratio {ratio:.2f}); record the stack at the session's zoom")
        self.border = max(1, (max_shift_px + 1) // 2 + 1)
        self._mask = _inside(_bin2(ref).shape, self.border)
        self._planes = np.stack([_prepare(p, self._mask) for p in stack.planes])
        # per frame, <bandpass(frame), plane> = <frame, bandpass(plane)>: the band-pass is applied to the planes
        # once here, so a frame costs a 2x2 binning and a few dot products; zero-mean kernels ignore its offset
        kernels = np.stack([_bandpass(p.reshape(self._mask.shape)).ravel() for p in self._planes])
        self._kernels = (kernels - kernels.mean(axis=1, keepdims=True)).astype(np.float32)
        self._estimates = 0
        self.every, self.window, self.search = every, window, search_planes
        self.warn_um = warn_um
        self.ref_corr, self.ref_z_um = self._check_reference(ref, min_corr)
        # every buffer the per-frame path writes, allocated once (update() allocates nothing per frame)
        binned = self._mask.shape
        self._ring = np.zeros((window, *binned), np.float32)
        self._sum = np.zeros(binned, np.float64)
        self._bin = np.empty(binned, np.float32)
        self._mean = np.empty(binned, np.float32)
        self._prof = np.empty(self._kernels.shape[0], np.float32)
        self._hp = np.empty(binned, np.float32)  # the occasional match quality's band-passed mean
        self._hp_bg = np.empty(binned, np.float32)
        b = self.border
        self._inner = (slice(b, binned[0] - b), slice(b, binned[1] - b))  # == self._mask, as slices (views)
        self._filled = 0
        self._frame = 0
        self._last_k: int | None = None
        self.warnings = 0
        self.last_corr = float("nan")

    def _profile(self, img: np.ndarray) -> np.ndarray:
        return self._planes @ _prepare(img, self._mask)

    def _check_reference(self, ref: np.ndarray, min_corr: float) -> tuple[float, float]:
        """The stack must show the session's field as it is: best plane correlation >= ``min_corr``, and no flip,
        transpose or other magnification of the reference matching clearly better (else say which does)."""
        prof = self._profile(ref)
        k = int(np.argmax(prof))
        best = float(prof[k])
        alternatives = {name: float(np.max(self._profile(f(ref)))) for name, f in _VARIANTS.items()
                        if f(ref).shape == ref.shape}
        for factor in (0.67, 0.8, 0.9, 1.11, 1.25, 1.5):
            alternatives[f"at {factor:.2f}x the session's magnification (another pixel size)"] = float(
                np.max(self._profile(_zoomed(ref, factor))))
        name, value = max(alternatives.items(), key=lambda kv: kv[1])
        if value > best + 0.1 and value >= min_corr:
            raise ZStackError(f"{self.stack.source}: the stack matches the session reference far better {name} "
                              f"(best plane correlation {value:.2f}) than as it is ({best:.2f}); fix the stack's "
                              f"orientation or pixel size")
        if best < min_corr:
            raise ZStackError(f"{self.stack.source}: the stack does not show this field of view: best plane "
                              f"correlation with the session reference {best:.2f} (needs >= {min_corr:.2f}; "
                              f"flips, transposes and other zooms give at most {value:.2f})")
        return best, float(np.interp(_peak(prof, k), np.arange(prof.size), self.stack.z_um))

    def update(self, frame: np.ndarray, dy: float, dx: float) -> float:
        """Add one frame (shifted by the registration's ``(dy, dx)``); its depth in um, or NaN when not estimated.

        With ``every = N`` a frame is binned only when it belongs to the ``window`` frames before an estimate,
        so when N > ``window`` the other frames cost nothing but this call."""
        n = self._frame
        self._frame += 1
        if (-n) % self.every >= self.window:  # not among the frames the next estimate averages
            return float("nan")
        if not (math.isfinite(dy) and math.isfinite(dx)):
            return float("nan")
        _bin2(frame, self._bin)
        slot = self._filled % self.window
        if self._filled >= self.window:
            self._sum -= self._ring[slot]
        # shifted back by the registration's shift; wrapped edges are cropped by the border
        _roll_into(self._bin, int(round(-dy / 2.0)), int(round(-dx / 2.0)), self._ring[slot])
        self._sum += self._ring[slot]
        self._filled += 1
        if n % self.every:
            return float("nan")
        np.multiply(self._sum, 1.0 / min(self._filled, self.window), out=self._mean)
        return self._estimate(self._mean)

    def _quality(self, img: np.ndarray, k: int) -> float:
        """Normalised correlation of the band-passed ``img`` with plane ``k`` (as :func:`_prepare`, in the
        preallocated buffers: the filters write into them, the mask is a pair of slices)."""
        ndimage.gaussian_filter(img, 1.0, mode="constant", output=self._hp)
        ndimage.gaussian_filter(img, 6.0, mode="constant", output=self._hp_bg)
        self._hp -= self._hp_bg
        inner = self._hp[self._inner]
        inner -= inner.mean()
        norm = math.sqrt(float(np.einsum("ij,ij->", inner, inner)))
        if not norm > 0:
            return float("nan")  # a flat frame: no structure to match
        plane = self._planes[k].reshape(self._mask.shape)[self._inner]  # zero outside the mask already
        return float(np.einsum("ij,ij->", plane, inner)) / norm

    def _estimate(self, img: np.ndarray) -> float:
        v = img.ravel()
        n = self._planes.shape[0]
        if self._last_k is None:
            lo, hi = 0, n
        else:
            lo, hi = max(self._last_k - self.search, 0), min(self._last_k + self.search + 1, n)
        prof = np.dot(self._kernels[lo:hi], v, out=self._prof[: hi - lo])
        k = int(np.argmax(prof))
        if (k == 0 and lo > 0) or (k == prof.size - 1 and hi < n):  # at the edge of the window: search all
            lo, hi = 0, n
            prof = np.dot(self._kernels, v, out=self._prof)
            k = int(np.argmax(prof))
        self._last_k = lo + k
        # the normalised correlation (a filtered frame) only every QUALITY_EVERY estimates: it is for the record
        self.last_corr = self._quality(img, lo + k) if self._estimates % QUALITY_EVERY == 0 else float("nan")
        self._estimates += 1
        z = float(np.interp(lo + _peak(prof, k), np.arange(n), self.stack.z_um))
        if abs(z) > self.warn_um:
            self.warnings += 1
        return z


#: one row of the session's ``acquisition/z.rec`` (only when z-tracking is on)
Z_RECORD_DTYPE = np.dtype([("frame", "i8"), ("z_um", "f4"), ("corr", "f4")])


class LiveZ:
    """z-tracking in the acquisition process: the stack is read at start (a missing or unreadable file fails
    the start), the tracker is built as soon as a registration reference exists (given: at start, where a stack
    that does not fit fails the start; built live from the first frames: in a background thread, ~1 s at
    512x512, where a stack that does not fit turns z-tracking off with the numbers, see :meth:`poll_build`),
    and a warning is raised once each time ``|z|`` goes beyond ``warn_um`` (again only after it came back
    within 70 % of it)."""

    def __init__(self, cfg: ZTrackConfig, pixel_size_um: float | None = None) -> None:
        self.cfg = cfg
        self.stack = load_zstack(cfg.stack_path, cfg.step_um or None)
        self.pixel_size_um = pixel_size_um
        self.tracker: ZTracker | None = None
        self.last_z = float("nan")
        self._beyond = False
        self._build: threading.Thread | None = None
        self._built: ZTracker | None = None
        self._build_error: BaseException | None = None

    def _make(self, reference: np.ndarray, max_shift_px: int) -> ZTracker:
        c = self.cfg
        return ZTracker(self.stack, reference, pixel_size_um=self.pixel_size_um, every=c.every, window=c.window,
                        warn_um=c.warn_um, min_corr=c.min_corr, max_shift_px=max_shift_px)

    def start(self, reference: np.ndarray | None, max_shift_px: int = 16) -> bool:
        """Build the tracker against ``reference`` now if it exists (raises ZStackError for a stack that does not
        fit): at start, before any frame."""
        if self.tracker is None and reference is not None:
            self.tracker = self._make(reference, max_shift_px)
        return self.tracker is not None

    def start_in_background(self, reference: np.ndarray, max_shift_px: int = 16) -> None:
        """Build the tracker off the frame loop (a reference built live, mid-session); :meth:`poll_build` installs
        it. Does nothing while a build runs or once a tracker exists."""
        if self.tracker is None and self._build is None:
            ref = np.array(reference, np.float32)  # a copy: the pipeline owns its reference
            self._build = threading.Thread(target=self._run_build, args=(ref, max_shift_px), name="ztrack-build",
                                           daemon=True)  # daemon: a shutdown mid-build must not wait for it
            self._build.start()

    def _run_build(self, reference: np.ndarray, max_shift_px: int) -> None:
        try:
            self._built = self._make(reference, max_shift_px)
        except Exception as exc:  # noqa: BLE001 - handed to the loop's thread by poll_build, which reports it
            self._build_error = exc

    def poll_build(self) -> str | None:
        """Install a finished background build. Returns the ZStackError message when the stack does not fit the
        live-built reference (the caller warns and stops z-tracking), else None; any other error is raised."""
        build = self._build
        if build is None or build.is_alive():
            return None
        build.join()
        self._build = None
        error, self._build_error = self._build_error, None
        if isinstance(error, ZStackError):
            return str(error)
        if error is not None:
            raise RuntimeError(f"building the z-tracker against the live reference failed: {error}") from error
        self.tracker = self._built
        return None

    def update(self, data: np.ndarray, dy: float, dx: float) -> float:
        """This frame's depth (NaN before a reference exists, on frames not estimated and on unusable frames)."""
        if self.tracker is None:
            return float("nan")
        z = self.tracker.update(data, dy, dx)
        if math.isfinite(z):
            self.last_z = z
        return z

    def warning(self, frame: int) -> str | None:
        """A one-line warning when the plane has just moved beyond ``warn_um`` (None otherwise)."""
        z = self.last_z
        if not math.isfinite(z):
            return None
        if not self._beyond and abs(z) > self.cfg.warn_um:
            self._beyond = True
            return (f"the focal plane is {z:+.1f} um from the z-stack's centre at frame {frame} (warning above "
                    f"{self.cfg.warn_um:g} um): F0 changes now may be z drift, not activity; refocus or use the "
                    f"scope's z-correction")
        if self._beyond and abs(z) < 0.7 * self.cfg.warn_um:
            self._beyond = False
        return None
