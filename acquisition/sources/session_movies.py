"""A bci-rig session folder as replay input: every plane's saved movie, in the order the session recorded them.

Why its own module: a session is not one movie file. The BCI plane's frames are ``acquisition/movie.*`` (with
``frames.rec`` beside it), every other plane K's are ``acquisition/planes/planeK/movie.*`` (docs/PLANES.md).
Row i of a plane's movie is row i of its ``frames.rec``, whose ``frame`` column is the volume number the
session gave it; replaying the planes merged by that number, plane by plane within a volume, hands the rig
the stream the session received.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.sources.movie import ArrayMovie, MovieError
from rig.core.movie_file import MOVIE_FILES, ChunkedMovie
from rig.core.store import CorruptFileError, read_records


def is_session_folder(path: Path) -> bool:
    """A folder holding ``acquisition/movie.json`` (a session that saved its frames)."""
    return path.is_dir() and (path / "acquisition" / "movie.json").is_file()


@dataclass
class PlaneMovie:
    plane: int
    folder: Path  # the folder holding movie.json, movie.*, frames.rec
    numbers: np.ndarray  # the volume number of each movie row
    rate_hz: float | None


def session_layout(session: Path) -> tuple[int, int]:
    """(n_planes, bci_plane) of a session, from its ``config.resolved.json`` (1, 0 when it does not say)."""
    path = session / "config.resolved.json"
    if not path.is_file():
        return 1, 0
    try:
        acq: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")).get("acquisition", {})
        return int(acq.get("n_planes", 1)), int(acq.get("bci_plane", 0))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise MovieError(f"{path}: cannot read the session's planes ({type(exc).__name__}: {exc})") from exc


def plane_folder(session: Path, plane: int, bci_plane: int) -> Path:
    acq = session / "acquisition"
    return acq if plane == bci_plane else acq / "planes" / f"plane{plane}"


def open_plane_movie(folder: Path) -> ArrayMovie:
    """The movie a session saved in ``folder`` (``movie.json`` says codec, pixel type and size)."""
    meta_path = folder / "movie.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        _, height, width = meta["shape"]
        dtype = np.dtype(meta["dtype"])
        codec = meta.get("codec", "raw")
        path = folder / MOVIE_FILES[codec]
        if codec == "zstd":
            array: Any = ChunkedMovie(path, dtype, int(height), int(width))
        else:
            n = path.stat().st_size // (int(height) * int(width) * dtype.itemsize)
            if n == 0:
                raise MovieError(f"{path}: no whole frame")
            array = np.memmap(path, dtype=dtype, mode="r", shape=(n, int(height), int(width)))
    except (OSError, ValueError, KeyError, TypeError, CorruptFileError) as exc:
        raise MovieError(f"{folder}: cannot read the session movie ({type(exc).__name__}: {exc}; its layout is "
                         f"in {meta_path})") from exc
    rate = meta.get("frame_rate_hz")
    return ArrayMovie(folder / MOVIE_FILES[codec], array, float(rate) if rate else None,
                      rate_source="the session's movie.json 'frame_rate_hz'")


def session_planes(session: Path) -> tuple[int, list[PlaneMovie]]:
    """(n_planes, the planes that saved a movie) of a session folder. The BCI plane's movie is required."""
    n_planes, bci_plane = session_layout(session)
    out: list[PlaneMovie] = []
    for plane in range(n_planes):
        folder = plane_folder(session, plane, bci_plane)
        if not (folder / "movie.json").is_file():
            if plane == bci_plane:
                raise MovieError(f"{folder}: no movie.json: the session saved no frames to replay")
            continue  # a plane recorded without its frames: nothing to replay of it
        try:
            numbers = np.asarray(read_records(folder / "frames.rec")["frame"], dtype=np.int64)
        except (OSError, ValueError, KeyError, CorruptFileError) as exc:
            raise MovieError(f"{folder / 'frames.rec'}: needed to number the movie's frames ({exc})") from exc
        with open_plane_movie(folder) as movie:
            rows, rate = movie.n_frames, movie.frame_rate_hz
        n = min(rows, len(numbers))
        if n == 0:
            raise MovieError(f"{folder}: the movie and frames.rec have no frame in common")
        out.append(PlaneMovie(plane, folder, numbers[:n].copy(), rate))
    return n_planes, out
