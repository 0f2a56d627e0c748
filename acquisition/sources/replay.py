"""Replay a recorded movie as if a scope were producing it, at its frame rate or as fast as possible.

Several planes (docs/PLANES.md): a file whose pages interleave planes (ScanImage fast-z: channel fastest, then
plane, then the flyback frames) is replayed plane by plane within each volume, every frame with its plane
index and its volume's number (``plane = -1``), or one plane alone (``plane = K``, delivered as plane 0). A
bci-rig session folder replays every plane's saved movie merged by the volume numbers the session recorded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from acquisition.sources.base import EndOfStream, Frame, FrameSource
from acquisition.sources.movie import MovieError, MovieReader, PageLayout, open_movie
from acquisition.sources.session_movies import is_session_folder, open_plane_movie, session_planes
from rig.core.clock import now_ns

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

#: ``plane`` meaning every plane of the volume
ALL_PLANES = -1


class ReplaySource(FrameSource):
    """Frames of a movie file (or a session folder) in order. ``speed="recorded"`` hands volume k out at
    t0 + k / rate (its planes spread over the volume time); ``"fast"`` returns the next frame on every read.
    With ``n_channels``/``n_planes`` > 1 the file's pages are interleaved (ScanImage order: channel fastest,
    then plane); a ScanImage file's own metadata gives the layout (and its flyback frames) when the config
    leaves both at 1. Only ``channel`` is replayed; ``plane`` -1 replays every plane, K one.
    ``Frame.number`` is the volume's index in the file (the recorded number for a session folder)."""

    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> ReplaySource:
        """The registry's factory: ``[acquisition.replay]``; ``acquisition.frame_rate_hz`` if the file has none.
        The planes it delivers must be the planes the rig records (``acquisition.n_planes``)."""
        r = cfg.replay
        source = cls(r.path, speed=r.speed, frame_rate_hz=r.frame_rate_hz, default_frame_rate_hz=cfg.frame_rate_hz,
                     loop=r.loop, h5_key=r.h5_key, n_channels=r.n_channels, channel=r.channel,
                     n_planes=r.n_planes, plane=r.plane, flyback_frames=r.flyback_frames)
        if source.n_planes != cfg.n_planes:
            raise ValueError(f"`replay`: {source.path} replays {source.n_planes} plane(s) "
                             f"({source.layout_source}), but [acquisition] n_planes = {cfg.n_planes}")
        return source

    def __init__(self, path: str | Path, *, speed: str = "recorded", frame_rate_hz: float = 0.0,
                 default_frame_rate_hz: float = 30.0, loop: bool = False, h5_key: str = "",
                 n_channels: int = 1, channel: int = 0, n_planes: int = 1, plane: int = 0,
                 flyback_frames: int = -1) -> None:
        """``flyback_frames``: pages per volume after the planes that image none (-1: what a ScanImage file says,
        else 0)."""
        super().__init__()
        if speed not in ("recorded", "fast"):
            raise ValueError(f"`speed`: must be 'recorded' or 'fast' (got {speed!r})")
        if not path:
            raise ValueError("`path`: no movie file given for the replay source")
        if plane < ALL_PLANES:
            raise ValueError(f"`plane`: must be -1 (every plane) or a plane index (got {plane})")
        self.path = Path(path)
        self._speed = speed
        self._loop = loop
        self._h5_key = h5_key
        self._config_layout = PageLayout(channels=n_channels, planes=n_planes, source="acquisition.replay")
        self._channel = channel
        self._plane = plane
        self._flyback = flyback_frames
        self._rate_override = frame_rate_hz
        self._default_rate = default_frame_rate_hz
        self._readers: list[MovieReader] = []
        self._bufs: list[np.ndarray] = []  # one per reader: a session's planes may differ in size
        self._next = 0
        self._t0_ns = 0
        self._frames = 0
        self._loops = 0
        self._state = "waiting"
        self._rate = frame_rate_hz or default_frame_rate_hz
        self.rate_source = ""
        self.layout_source = ""
        self._session = is_session_folder(self.path)
        self._plane_folders: list[Path] = []
        # the replay plan, one entry per delivered frame: which reader, which page, volume number, plane,
        # and the frame's position within its volume (0..1) for pacing
        self._reader_of = np.zeros(0, np.int32)
        self._page = np.zeros(0, np.int64)
        self._number = np.zeros(0, np.int64)
        self._plane_of = np.zeros(0, np.int32)
        self._phase = np.zeros(0, np.float64)
        if self._session:
            self._plan_session()
        else:
            self._plan_file()
        self._span = int(self._number[-1] - self._number[0] + 1)  # volumes per loop

    # ------------------------------------------------------------------ planning
    def _plan_file(self) -> None:
        """Open the file once now so shape, dtype, rate and layout are known before open() (bad paths fail early)."""
        with open_movie(self.path, h5_key=self._h5_key) as reader:
            self._shape, self._dtype = reader.shape, reader.dtype
            file_rate, volume_rate, file_source = reader.frame_rate_hz, reader.volume_rate_hz, reader.rate_source
            n_pages, file_layout = reader.n_frames, reader.layout
        layout = self._config_layout
        if file_layout is not None and layout.channels == 1 and layout.planes == 1:
            layout = file_layout  # the config says nothing: the file's own layout
        elif file_layout is not None and (file_layout.channels, file_layout.planes) != (layout.channels, layout.planes):
            self.warn("layout_mismatch", f"replay: {file_layout.source} says {file_layout.channels} channel(s) and "
                                         f"{file_layout.planes} plane(s); [acquisition.replay] says {layout.channels} "
                                         f"and {layout.planes}: the config's are used")
            layout = PageLayout(layout.channels, layout.planes, 0, layout.source)
        elif file_layout is not None:
            layout = PageLayout(layout.channels, layout.planes, file_layout.flyback, file_layout.source)
        if self._flyback >= 0 and self._flyback != layout.flyback:
            layout = PageLayout(layout.channels, layout.planes, self._flyback,
                                f"{layout.source}, flyback_frames from acquisition.replay")
        self.layout_source = layout.source
        if not 0 <= self._channel < layout.channels:
            raise MovieError(f"{self.path}: channel {self._channel} is out of range: the file has {layout.channels} "
                             f"channel(s) ({layout.source})")
        if self._plane >= layout.planes:
            raise MovieError(f"{self.path}: plane {self._plane} is out of range: the file has {layout.planes} "
                             f"plane(s) ({layout.source})")
        planes = layout.planes
        self._n_planes = planes if self._plane == ALL_PLANES else 1
        selected = np.arange(planes) if self._plane == ALL_PLANES else np.array([self._plane])
        if self._rate_override:
            self._rate, self.rate_source = self._rate_override, "acquisition.replay.frame_rate_hz"
        elif file_rate and planes > 1 and file_source.startswith("ScanImage"):
            # the planes of an interleaved ScanImage volume: each plane's frames come at the volume rate
            if volume_rate:
                self._rate, self.rate_source = volume_rate, file_source.replace("scanFrameRate", "scanVolumeRate")
            else:
                slices = planes + layout.flyback
                self._rate, self.rate_source = file_rate / slices, f"{file_source} / {slices} slices"
                if not layout.flyback:
                    self.rate_source = f"{file_source} / {planes} planes"
        elif file_rate:
            self._rate, self.rate_source = file_rate, file_source
        else:
            self._rate = self._default_rate
            self.rate_source = "acquisition.frame_rate_hz (the file does not say)"
        per_volume = layout.pages_per_volume
        volumes = np.arange(-(-n_pages // per_volume))
        pages = volumes[:, None] * per_volume + selected[None, :] * layout.channels + self._channel
        keep = pages < n_pages
        self._page = pages[keep]
        self._number = np.broadcast_to(volumes[:, None], pages.shape)[keep].astype(np.int64)
        delivered = selected if self._plane == ALL_PLANES else np.zeros(1, np.int64)
        self._plane_of = np.broadcast_to(delivered[None, :], pages.shape)[keep].astype(np.int32)
        self._phase = np.broadcast_to(np.arange(len(selected))[None, :] / len(selected), pages.shape)[keep]
        self._reader_of = np.zeros(len(self._page), np.int32)
        if len(self._page) == 0:
            raise MovieError(f"{self.path}: no frames for channel {self._channel}, plane {self._plane} (the file has "
                             f"{n_pages} pages)")

    def _plan_session(self) -> None:
        """A session folder: every plane's movie, merged by recorded volume number, planes in order."""
        n_planes, planes = session_planes(self.path)
        if self._plane >= n_planes:
            raise MovieError(f"{self.path}: plane {self._plane} is out of range: the session recorded {n_planes}")
        if self._plane != ALL_PLANES:
            planes = [p for p in planes if p.plane == self._plane]
            if not planes:
                raise MovieError(f"{self.path}: the session saved no frames of plane {self._plane}")
        self._n_planes = n_planes if self._plane == ALL_PLANES else 1
        self.layout_source = f"the session's {n_planes} plane(s)"
        self._plane_folders = [p.folder for p in planes]
        with open_plane_movie(planes[0].folder) as first:  # the BCI plane's when it is replayed (it is first)
            self._shape, self._dtype = first.shape, first.dtype
        for p in planes[1:]:
            with open_plane_movie(p.folder) as movie:
                if movie.shape != self._shape:
                    self.warn("planes_differ_in_size", f"replay: plane {p.plane}'s frames are "
                                                       f"{movie.shape[0]}x{movie.shape[1]}, plane {planes[0].plane}'s "
                                                       f"{self._shape[0]}x{self._shape[1]}; each is delivered as saved")
        rate = next((p.rate_hz for p in planes if p.rate_hz), None)
        if self._rate_override:
            self._rate, self.rate_source = self._rate_override, "acquisition.replay.frame_rate_hz"
        elif rate:
            self._rate, self.rate_source = rate, "the session's movie.json 'frame_rate_hz'"
        else:
            self._rate, self.rate_source = self._default_rate, "acquisition.frame_rate_hz (the session does not say)"
        number = np.concatenate([p.numbers for p in planes])
        plane = np.concatenate([np.full(len(p.numbers), p.plane if self._plane == ALL_PLANES else 0, np.int32)
                                for p in planes])
        page = np.concatenate([np.arange(len(p.numbers)) for p in planes])
        reader = np.concatenate([np.full(len(p.numbers), i, np.int32) for i, p in enumerate(planes)])
        order = np.lexsort((plane, number))
        self._number, self._plane_of, self._page, self._reader_of = (number[order], plane[order], page[order],
                                                                     reader[order])
        self._phase = self._plane_of / max(self._n_planes, 1)

    # ------------------------------------------------------------------ the source
    @property
    def n_frames(self) -> int:
        """Frames delivered per pass (every plane's, with ``plane = -1``)."""
        return len(self._page)

    def _open_readers(self) -> list[MovieReader]:
        if self._session:
            return [open_plane_movie(folder) for folder in self._plane_folders]
        return [open_movie(self.path, h5_key=self._h5_key)]

    def sample_frames(self, indices: np.ndarray) -> np.ndarray:
        """Frames at the given stream indices (e.g. to build a reference), read without moving the stream."""
        out = np.empty((len(indices), *self._shape), self._dtype)
        readers = self._open_readers()
        try:
            for j, i in enumerate(indices):
                if not 0 <= int(i) < self.n_frames:
                    raise IndexError(f"{self.path}: frame {i} outside 0..{self.n_frames - 1}")
                reader = readers[self._reader_of[i]]
                if reader.shape != self._shape:
                    raise MovieError(f"{reader.path}: frames of {reader.shape}, not {self._shape}: sample one "
                                     "plane at a time")
                reader.read_into(int(self._page[i]), out[j])
        finally:
            for reader in readers:
                reader.close()
        return out

    def open(self) -> None:
        self._readers = self._open_readers()
        self._bufs = [np.empty(r.shape, r.dtype) for r in self._readers]
        self._next = 0
        self._t0_ns = now_ns()
        self._state = "ok"

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers = []
        if self._state != "ended":
            self._state = "waiting"

    def link_state(self) -> str:
        return self._state

    def stats(self) -> dict[str, float]:
        return {"frames": float(self._frames), "bad_frames": 0.0, "loops": float(self._loops),
                "position": float(self._next), "length": float(self.n_frames)}

    def read(self, timeout_s: float) -> Frame | None:
        if not self._readers:
            raise RuntimeError("ReplaySource.read() called before open() or after close()")
        if self._next >= self.n_frames:
            if not self._loop:
                self._state = "ended"
                raise EndOfStream(f"{self.path}: all {self.n_frames} frames replayed")
            self._loops += 1
            self._next = 0
            self._t0_ns = now_ns()
        k = self._next
        volume = float(self._number[k] - self._number[0]) + float(self._phase[k])
        if self._speed == "recorded":
            due_ns = self._t0_ns + int(volume * 1e9 / self._rate)
            wait_s = (due_ns - now_ns()) / 1e9
            if wait_s > timeout_s:
                time.sleep(max(timeout_s, 0.0))
                return None
            if wait_s > 0:
                time.sleep(wait_s)
        buf = self._bufs[self._reader_of[k]]
        self._readers[self._reader_of[k]].read_into(int(self._page[k]), buf)
        self._next += 1
        self._frames += 1
        return Frame(data=buf, number=int(self._number[k]) + self._loops * self._span, t_ready_ns=now_ns(),
                     scope_time_s=volume / self._rate, plane=int(self._plane_of[k]))
