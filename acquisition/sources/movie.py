"""Random access to the frames of a recorded movie without loading it: TIFF, suite2p data.bin, .npy, .h5.

Each reader exposes ``n_frames``, ``shape``, ``dtype``, ``frame_rate_hz`` (None when the file does not say),
``rate_source`` (where in the file the rate was found) and ``read_into(index, out)``. TIFF pages are read
one at a time (ScanImage and BigTIFF included);
``data.bin`` and ``.npy`` are memory-mapped; HDF5 datasets are read frame by frame.

A ScanImage TIFF also says how its pages are interleaved (``layout``): fast-z volumes of ``numSlices``
planes plus ``numDiscardFlybackFrames`` flyback frames, each page repeated for every saved channel
(``channelSave``), channel fastest, then slice (docs/SCOPES.md).
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MOVIE_SUFFIXES = (".tif", ".tiff", ".bin", ".npy", ".h5", ".hdf5", ".zchunks")


class MovieError(ValueError):
    """A movie file cannot be read as a stack of 2-D frames; the message names the file."""


@dataclass(frozen=True)
class PageLayout:
    """How a file interleaves its pages: per volume, ``planes + flyback`` slices, each ``channels`` pages."""

    channels: int = 1
    planes: int = 1
    flyback: int = 0  # frames per volume that image no plane (fast-z flyback), after the planes
    source: str = ""  # where it was read, for messages

    @property
    def pages_per_volume(self) -> int:
        return self.channels * (self.planes + self.flyback)


class MovieReader(abc.ABC):
    path: Path
    n_frames: int
    shape: tuple[int, int]
    dtype: np.dtype
    frame_rate_hz: float | None = None
    #: for interleaved volumes (ScanImage fast-z): the rate of one plane's frames, when the file says
    volume_rate_hz: float | None = None
    rate_source: str = ""
    #: the page interleaving the file declares (ScanImage metadata), None when it says nothing
    layout: PageLayout | None = None

    @abc.abstractmethod
    def read_into(self, index: int, out: np.ndarray) -> None:
        """Copy frame ``index`` into ``out`` (shape ``self.shape``, dtype ``self.dtype``)."""

    def close(self) -> None:  # noqa: B027 - readers without handles need nothing
        pass

    def __enter__(self) -> MovieReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TiffMovie(MovieReader):
    """Multi-page TIFF, one 2-D frame per page (ScanImage interleaves channels/planes page by page)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            self._pages = self._tif.pages
            self.n_frames = len(self._pages)
            first = self._pages[0]
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, OSError... for bad files
            raise MovieError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})") from exc
        if self.n_frames == 0:
            raise MovieError(f"{path}: TIFF has no pages")
        shape = tuple(int(s) for s in first.shape)
        if len(shape) != 2:
            raise MovieError(f"{path}: pages have shape {shape}; expected 2-D grey frames")
        self.shape = (shape[0], shape[1])
        self.dtype = np.dtype(first.dtype)
        text, where = self._scanimage_text()
        found = _scanimage_rates(text, where) if text else None
        if found:
            self.frame_rate_hz, self.volume_rate_hz, where = found
            self.rate_source = f"{where} (scanFrameRate)"
        if text:
            self.layout = scanimage_layout(text, f"{path} ({where})")

    def _scanimage_text(self) -> tuple[str, str]:
        """ScanImage's non-varying metadata as "SI.x = value" lines, and where they were found: the BigTIFF
        header ScanImage 2016+ writes, else the first page's Software tag (the same lines, also in files whose
        header was lost), else an older (SI 3/4/5) ImageDescription. ("", "") if there is none."""
        meta: Any = getattr(self._tif, "scanimage_metadata", None)
        frame_data = meta.get("FrameData", {}) if isinstance(meta, dict) else {}
        if frame_data:
            text = "\n".join(f"{key} = {value}" for key, value in frame_data.items())
            if _SI_RATE.search(text):
                return text, "ScanImage header"
        first = self._pages[0]
        for tag, where in (("software", "Software tag"), ("description", "ImageDescription")):
            text = str(getattr(first, tag, "") or "")
            if _SI_RATE.search(text):
                return text, f"ScanImage {where}"
        return "", ""

    def read_into(self, index: int, out: np.ndarray) -> None:
        page = self._pages[index]
        if tuple(page.shape) != self.shape:
            raise MovieError(f"{self.path}: page {index} has shape {page.shape}, the first page {self.shape}")
        if out.dtype == page.dtype and out.flags.c_contiguous:
            page.asarray(out=out)
        else:
            np.copyto(out, page.asarray(), casting="unsafe")

    def close(self) -> None:
        self._tif.close()


# "SI.hRoiManager.scanFrameRate = 30.02" (2016+), "scanimage.SI.hRoiManager..." (SI 5), "scanimage.SI4.scanFrameRate"
_SI_RATE = re.compile(r"(?:^|\n)\s*(?:scanimage\.)?SI\d?\.(?:hRoiManager\.)?scan(Frame|Volume)Rate\s*=\s*"
                      r"'?([-+0-9.eE]+)'?")


_SI_VALUE = r"(?:^|\n)\s*(?:scanimage\.)?SI\d?\.{}\s*=\s*([^\n]*)"


def _si_value(text: str, key: str) -> str | None:
    """The value of ``SI.<key>`` in ScanImage metadata text (quotes stripped), None if absent."""
    found = re.search(_SI_VALUE.format(re.escape(key)), text)
    return found.group(1).strip().strip("'\"") if found else None


def scanimage_layout(text: str, where: str) -> PageLayout | None:
    """The page layout ScanImage metadata declares: saved channels (``hChannels.channelSave``), and for a
    fast-z acquisition the slices (``hStackManager.actualNumSlices``, else ``numSlices``) and the discarded
    flyback frames (``hFastZ.numDiscardFlybackFrames``). Fast-z is on when ``hFastZ.enable`` is true or
    ``hStackManager.stackMode`` is fast; when neither key is there, several slices are taken as fast-z
    volumes. None when the text names no channels and no slices."""
    channels_text = _si_value(text, "hChannels.channelSave")
    slices_text = _si_value(text, "hStackManager.actualNumSlices") or _si_value(text, "hStackManager.numSlices")
    if channels_text is None and slices_text is None:
        return None
    channels = len(re.findall(r"\d+", channels_text)) if channels_text else 1
    try:
        slices = int(float(slices_text)) if slices_text else 1
        flyback_text = _si_value(text, "hFastZ.numDiscardFlybackFrames")
        flyback = int(float(flyback_text)) if flyback_text else 0
    except ValueError as exc:
        raise MovieError(f"{where}: ScanImage slice or flyback count is not a number ({exc})") from None
    enable, mode = _si_value(text, "hFastZ.enable"), _si_value(text, "hStackManager.stackMode")
    if enable is None and mode is None:
        fast_z = slices > 1
    else:
        fast_z = (enable or "").lower() in ("true", "1") or "fast" in (mode or "").lower()
    if not fast_z:
        slices, flyback = 1, 0
    if channels < 1 or slices < 1 or flyback < 0:
        raise MovieError(f"{where}: ScanImage says {channels} channels, {slices} slices and {flyback} flyback "
                         "frames; cannot lay the pages out")
    return PageLayout(channels=channels, planes=slices, flyback=flyback, source=where)


def _scanimage_rates(text: str, where: str) -> tuple[float, float | None, str] | None:
    """(frame rate, volume rate or None, source) from ScanImage metadata text, or None if it has no frame rate."""
    rates: dict[str, float] = {}
    for kind, value in _SI_RATE.findall(text):
        try:
            rate = float(value)
        except ValueError:
            continue
        if rate > 0 and kind not in rates:
            rates[kind] = rate
    if "Frame" not in rates:
        return None
    return rates["Frame"], rates.get("Volume"), where


class ArrayMovie(MovieReader):
    """A (T, Ly, Lx) array: memory-mapped .npy or suite2p data.bin."""

    def __init__(self, path: Path, array: np.ndarray, frame_rate_hz: float | None = None,
                 rate_source: str = "") -> None:
        self.path = path
        if array.ndim != 3 or array.shape[0] == 0:
            raise MovieError(f"{path}: expected a (frames, height, width) array, got shape {array.shape}")
        self._array = array
        self.n_frames = int(array.shape[0])
        self.shape = (int(array.shape[1]), int(array.shape[2]))
        self.dtype = np.dtype(array.dtype)
        self.frame_rate_hz = frame_rate_hz
        self.rate_source = rate_source if frame_rate_hz else ""

    def read_into(self, index: int, out: np.ndarray) -> None:
        np.copyto(out, self._array[index], casting="unsafe")

    def close(self) -> None:
        mm = getattr(self._array, "_mmap", None)
        self._array = np.empty((0, *self.shape), self.dtype)
        if mm is not None:
            mm.close()


class H5Movie(MovieReader):
    def __init__(self, path: Path, key: str = "") -> None:
        import h5py

        self.path = path
        try:
            self._file = h5py.File(path, "r")
        except Exception as exc:  # h5py raises OSError for bad files, sometimes others
            raise MovieError(f"{path}: cannot open as HDF5 ({type(exc).__name__}: {exc})") from exc
        if key:
            if key not in self._file:
                self._file.close()
                raise MovieError(f"{path}: no dataset {key!r}")
            ds = self._file[key]
        else:
            found: list[str] = []
            self._file.visititems(lambda name, obj: found.append(name)
                                  if isinstance(obj, h5py.Dataset) and obj.ndim == 3 else None)
            if len(found) != 1:
                self._file.close()
                raise MovieError(f"{path}: {len(found)} 3-D datasets ({', '.join(found) or 'none'}); "
                                 "set acquisition.replay.h5_key")
            ds = self._file[found[0]]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
            self._file.close()
            raise MovieError(f"{path}: dataset {key!r} is not a (frames, height, width) array")
        self._ds = ds
        self.n_frames = int(ds.shape[0])
        self.shape = (int(ds.shape[1]), int(ds.shape[2]))
        self.dtype = np.dtype(ds.dtype)
        rate = ds.attrs.get("frame_rate_hz", ds.attrs.get("fs", self._file.attrs.get("fs")))
        self.frame_rate_hz = float(rate) if rate is not None and float(rate) > 0 else None
        self.rate_source = "HDF5 attribute" if self.frame_rate_hz else ""

    def read_into(self, index: int, out: np.ndarray) -> None:
        self._ds.read_direct(out, np.s_[index])

    def close(self) -> None:
        self._file.close()


def _suite2p_bin(path: Path) -> ArrayMovie:
    from acquisition.rois import RoiFileError, _load_npy, normalise_ops

    ops_path = path.parent / "ops.npy"
    try:
        raw = _load_npy(ops_path, pickled=True)
    except RoiFileError as exc:
        raise MovieError(f"{path}: a suite2p binary needs its ops.npy beside it: {exc}") from exc
    ops = normalise_ops(raw.item() if isinstance(raw, np.ndarray) and raw.shape == () else raw)
    if "Ly" not in ops or "Lx" not in ops:
        raise MovieError(f"{ops_path}: no Ly/Lx, so {path.name} cannot be shaped into frames")
    Ly, Lx = int(ops["Ly"]), int(ops["Lx"])
    frame_bytes = Ly * Lx * 2
    size = path.stat().st_size
    n = size // frame_bytes
    if n == 0:
        raise MovieError(f"{path}: {size} bytes, less than one {Ly}x{Lx} int16 frame")
    mm = np.memmap(path, dtype=np.int16, mode="r", shape=(n, Ly, Lx))
    rate = ops.get("fs")
    return ArrayMovie(path, mm, float(rate) if rate else None, rate_source="suite2p ops.npy 'fs'")


def _session_movie(path: Path) -> ArrayMovie:
    """A session's compressed ``movie.zchunks`` (layout and rate in the ``movie.json`` beside it)."""
    import json  # noqa: PLC0415

    from rig.core.movie_file import ChunkedMovie  # noqa: PLC0415
    from rig.core.store import CorruptFileError  # noqa: PLC0415

    meta_path = path.with_name("movie.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        _, height, width = meta["shape"]
        movie = ChunkedMovie(path, np.dtype(meta["dtype"]), int(height), int(width))
    except (OSError, ValueError, KeyError, TypeError, CorruptFileError) as exc:
        raise MovieError(f"{path}: cannot read the session movie ({type(exc).__name__}: {exc}; its layout is in "
                         f"{meta_path})") from exc
    rate = meta.get("frame_rate_hz")
    return ArrayMovie(path, movie, float(rate) if rate else None, rate_source="movie.json 'frame_rate_hz'")  # type: ignore[arg-type]


def open_movie(path: str | Path, *, h5_key: str = "") -> MovieReader:
    """Open ``path`` with the reader its suffix calls for."""
    path = Path(path)
    if not path.is_file():
        raise MovieError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return TiffMovie(path)
    if suffix == ".bin":
        return _suite2p_bin(path)
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as exc:  # ValueError / OSError for corrupt headers
            raise MovieError(f"{path}: cannot read as .npy ({type(exc).__name__}: {exc})") from exc
        return ArrayMovie(path, arr)
    if suffix in (".h5", ".hdf5"):
        return H5Movie(path, h5_key)
    if suffix == ".zchunks":
        return _session_movie(path)
    raise MovieError(f"{path}: unknown movie type {suffix!r}; expected one of {', '.join(MOVIE_SUFFIXES)}")
