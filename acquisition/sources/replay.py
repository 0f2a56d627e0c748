"""Replay a recorded movie as if a scope were producing it, at its frame rate or as fast as possible."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from acquisition.sources.base import EndOfStream, Frame, FrameSource
from acquisition.sources.movie import MovieError, MovieReader, open_movie
from rig.core.clock import now_ns

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext


class ReplaySource(FrameSource):
    """Frames of a movie file in order. ``speed="recorded"`` hands frame k out at t0 + k / rate; ``"fast"``
    returns the next frame on every read. With ``n_channels``/``n_planes`` > 1 the file's pages are
    interleaved (ScanImage order: channel fastest, then plane) and only ``channel``/``plane`` is replayed.
    The frame number is the frame's index in the replayed stream (0-based)."""

    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> ReplaySource:
        """The registry's factory: ``[acquisition.replay]``; ``acquisition.frame_rate_hz`` if the file has none."""
        r = cfg.replay
        return cls(r.path, speed=r.speed, frame_rate_hz=r.frame_rate_hz, default_frame_rate_hz=cfg.frame_rate_hz,
                   loop=r.loop, h5_key=r.h5_key, n_channels=r.n_channels, channel=r.channel,
                   n_planes=r.n_planes, plane=r.plane)

    def __init__(self, path: str | Path, *, speed: str = "recorded", frame_rate_hz: float = 0.0,
                 default_frame_rate_hz: float = 30.0, loop: bool = False, h5_key: str = "",
                 n_channels: int = 1, channel: int = 0, n_planes: int = 1, plane: int = 0) -> None:
        super().__init__()
        if speed not in ("recorded", "fast"):
            raise ValueError(f"`speed`: must be 'recorded' or 'fast' (got {speed!r})")
        if not path:
            raise ValueError("`path`: no movie file given for the replay source")
        self.path = Path(path)
        self._speed = speed
        self._loop = loop
        self._h5_key = h5_key
        self._stride = n_channels * n_planes
        self._channels = n_channels
        self._offset = plane * n_channels + channel
        self._rate_override = frame_rate_hz
        self._default_rate = default_frame_rate_hz
        self._reader: MovieReader | None = None
        self._buf = np.empty((0, 0))
        self._next = 0
        self._n = 0
        self._t0_ns = 0
        self._frames = 0
        self._loops = 0
        self._state = "waiting"
        self._rate = frame_rate_hz or default_frame_rate_hz
        self.rate_source = ""
        self._probe()

    def _probe(self) -> None:
        """Open the file once now so shape, dtype and rate are known before open() (and bad paths fail early)."""
        with open_movie(self.path, h5_key=self._h5_key) as reader:
            self._shape = reader.shape
            self._dtype = reader.dtype
            file_rate, volume_rate, file_source = reader.frame_rate_hz, reader.volume_rate_hz, reader.rate_source
            n_pages = reader.n_frames
        planes = self._stride // self._channels
        if self._rate_override:
            self._rate, self.rate_source = self._rate_override, "acquisition.replay.frame_rate_hz"
        elif file_rate and planes > 1 and file_source.startswith("ScanImage"):
            # one plane of an interleaved ScanImage volume: its frames come at the volume rate
            if volume_rate:
                self._rate, self.rate_source = volume_rate, file_source.replace("scanFrameRate", "scanVolumeRate")
            else:
                self._rate, self.rate_source = file_rate / planes, f"{file_source} / {planes} planes"
        elif file_rate:
            self._rate, self.rate_source = file_rate, file_source
        else:
            self._rate = self._default_rate
            self.rate_source = "acquisition.frame_rate_hz (the file does not say)"
        self._n = max(0, (n_pages - self._offset + self._stride - 1) // self._stride)
        if self._n == 0:
            raise MovieError(f"{self.path}: no frames for plane/channel offset {self._offset} "
                             f"(the file has {n_pages} pages)")

    @property
    def n_frames(self) -> int:
        return self._n

    def sample_frames(self, indices: np.ndarray) -> np.ndarray:
        """Frames at the given stream indices (e.g. to build a reference), read without moving the stream."""
        out = np.empty((len(indices), *self._shape), self._dtype)
        with open_movie(self.path, h5_key=self._h5_key) as reader:
            for j, i in enumerate(indices):
                if not 0 <= int(i) < self._n:
                    raise IndexError(f"{self.path}: frame {i} outside 0..{self._n - 1}")
                reader.read_into(self._offset + int(i) * self._stride, out[j])
        return out

    def open(self) -> None:
        self._reader = open_movie(self.path, h5_key=self._h5_key)
        self._buf = np.empty(self._shape, self._dtype)
        self._next = 0
        self._t0_ns = now_ns()
        self._state = "ok"

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._state != "ended":
            self._state = "waiting"

    def link_state(self) -> str:
        return self._state

    def stats(self) -> dict[str, float]:
        return {"frames": float(self._frames), "bad_frames": 0.0, "loops": float(self._loops),
                "position": float(self._next), "length": float(self._n)}

    def read(self, timeout_s: float) -> Frame | None:
        if self._reader is None:
            raise RuntimeError("ReplaySource.read() called before open() or after close()")
        if self._next >= self._n:
            if not self._loop:
                self._state = "ended"
                raise EndOfStream(f"{self.path}: all {self._n} frames replayed")
            self._loops += 1
            self._next = 0
            self._t0_ns = now_ns()
        if self._speed == "recorded":
            due_ns = self._t0_ns + int(self._next * 1e9 / self._rate)
            wait_s = (due_ns - now_ns()) / 1e9
            if wait_s > timeout_s:
                time.sleep(max(timeout_s, 0.0))
                return None
            if wait_s > 0:
                time.sleep(wait_s)
        index = self._next
        self._reader.read_into(self._offset + index * self._stride, self._buf)
        self._next += 1
        self._frames += 1
        return Frame(data=self._buf, number=index + self._loops * self._n, t_ready_ns=now_ns(),
                     scope_time_s=index / self._rate)
