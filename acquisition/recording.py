"""A recording (``rig run --record-only``): the acquisition keeps frames without ROIs, for a first baseline.

On day one on a real scope there is no ROI set yet: the first baseline is recorded by the rig itself, then
``rig detect SESSION`` finds the cells in it. In this mode the acquisition loads no ROIs and builds no
registration pipeline; it takes the frame size from the source, and per frame it only counts (dropped frames
too), writes a ``frames.rec`` row (number, time stamps, the source's flags; no F: zero ROIs), saves the frame
into the movie and, a few times a second, publishes a decimated preview for the console. No decoder, reward
or feedback process runs (rig.app.processes), so nothing is published for them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from acquisition.sources.base import Frame
from acquisition.validate import FrameFlag
from rig.core.clock import now_ns
from rig.core.schema import Preview

if TYPE_CHECKING:
    from acquisition.process import AcquisitionProcess

PREVIEW_MAX_PX = 256  # the preview's longer side at most


def frame_record_dtype(n_rois: int) -> np.dtype:
    """One ``frames.rec`` row (every plane's, with that plane's ``n_rois``; 0 in a recording)."""
    return np.dtype([
        ("frame", "i8"), ("t_ready", "i8"), ("t_registered", "i8"), ("t_extracted", "i8"), ("t_sent", "i8"),
        ("dy", "f4"), ("dx", "f4"), ("corr", "f4"), ("flags", "i4"),
        ("F", "f4", (n_rois,)), ("Fneu", "f4", (n_rois,)),
    ])


def preview_image(data: np.ndarray, max_size: int = PREVIEW_MAX_PX) -> np.ndarray:
    """A decimated copy of ``data`` (not registered: a recording has no reference)."""
    step = max(1, math.ceil(max(data.shape) / max_size))
    return np.asarray(data[::step, ::step], dtype=np.float32)


def record_frame(proc: AcquisitionProcess, frame: Frame, preview_interval_ns: int) -> None:
    """One frame of a recording: its row, the movie, a preview when due (the caller counted drops)."""
    t_sent = now_ns()
    row = proc.records.next_row()
    row["frame"] = frame.number
    row["t_ready"] = frame.t_ready_ns
    row["t_registered"] = 0
    row["t_extracted"] = 0
    row["t_sent"] = t_sent
    row["dy"] = row["dx"] = row["corr"] = math.nan
    flags = int(frame.flags)
    if frame.data.shape != tuple(proc.source.shape):
        flags |= int(FrameFlag.WRONG_SHAPE)
        proc._wrong_shape(frame.number, frame.data.shape)
    row["flags"] = flags
    proc.records.commit()
    if flags:
        proc.bad_frames += 1
    if keep_frame(proc, frame, t_sent, preview_interval_ns):
        proc.publish(Preview(frame=frame.number, dy=math.nan, dx=math.nan, corr=math.nan,
                             image=preview_image(frame.data), t_ns=t_sent, plane=proc.bci_plane))


def keep_frame(proc: AcquisitionProcess, frame: Frame, t_sent: int, preview_interval_ns: int) -> bool:
    """After a frame's row, in a recording and in the closed loop alike: the movie, the count; True when a
    preview is due (a few times a second), which the caller then builds and publishes (no per-frame closure).
    """
    if proc.movie is not None:
        proc.movie.save(frame.number, frame.data)
    proc.frames += 1
    if not proc._t_first:
        proc._t_first = t_sent
    if t_sent >= proc._next_preview:
        proc._next_preview = t_sent + preview_interval_ns
        return True
    return False
