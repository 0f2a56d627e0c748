"""The acquisition process: frame source -> rigid registration -> ROI fluorescence -> bus + disk.

Files it owns in the session folder (``acquisition/``):
  ``frames.rec``      one row per frame: frame number, stage stamps, shift, correlation, flags, F, Fneu
  ``movie.raw``       the raw frames as the source gave them (C order) when ``session.save_frames``;
                      ``movie.json`` has their dtype and shape
  ``rois/``           the ROI set used (suite2p layout) and ``reference.npy``
  ``sim_truth/``      a source with ground truth (the sim): its ROIs and the truth of every frame
  ``events.jsonl``    lifecycle, warnings (bad frames, link drops), ``final_stats``

The process never asks which source it runs, only what the source can do (its registration's
capabilities, :mod:`acquisition.sources.registry`): whether it has ground truth, hears the rig's rewards
and decisions, or follows the decoder's ensembles.
"""

from __future__ import annotations

import json
import math
from typing import cast

import numpy as np

from acquisition.diagnose import BadRunWatch
from acquisition.pipeline import FramePipeline
from acquisition.rois import RoiSet, load_suite2p
from acquisition.sources.base import EndOfStream, FrameSource
from acquisition.sources.registry import FollowsEnsembles, HasGroundTruth, SourceRegistration, make_source, registration
from acquisition.validate import FrameFlag
from rig.core.bus import Subscriber
from rig.core.clock import now_ns
from rig.core.process import RigProcess
from rig.core.schema import (
    AcqStatus,
    Decision,
    FeedbackUpdate,
    FluorFrame,
    Message,
    Preview,
    RewardOutcome,
    TrialEvent,
)
from rig.core.store import FrameFileWriter, RecordWriter

PREVIEW_INTERVAL_NS = 250_000_000  # 4 Hz is plenty for the eye
STATUS_INTERVAL_NS = 1_000_000_000
MOVIE_BUFFER_S = 2.0  # seconds of frames the movie writer holds while the disk is slow
MOVIE_BUFFER_BYTES = 256 * 2**20
#: a run of frames with these flags is diagnosed (acquisition.diagnose): a size, order or sign set wrong
DIAGNOSED_FLAGS = int(FrameFlag.WRONG_SHAPE | FrameFlag.LOW_CORR)


#: the ``TrialEvent.kind`` the decoder publishes when it applied new ensembles (``detail``: ``up``, ``down``)
ENSEMBLES_EVENT = "ensembles"


def source_subscriptions(caps: SourceRegistration) -> tuple[list[str], list[bytes]]:
    """(processes, topics) a source's capabilities ask to hear; none for a real scope."""
    processes: list[str] = []
    topics: list[bytes] = []
    if caps.hears_outcomes:  # rewards, decisions and, when a feedback process runs, what it presented
        processes += ["reward", "decoder", "feedback"]
        topics += [RewardOutcome.topic, Decision.topic, FeedbackUpdate.topic]
    if caps.follows_ensembles:
        if "decoder" not in processes:
            processes.append("decoder")
        topics.append(TrialEvent.topic)
    return processes, topics


def feed_source(source: FrameSource, caps: SourceRegistration, msg: Message) -> None:
    """Hand one bus message to the source as its capabilities ask: new ensembles the decoder applied to a
    source that follows them, rewards and decisions to one that hears them. Other trial events are dropped.
    A malformed ensembles event is reported through the source's warnings, never raised."""
    if isinstance(msg, TrialEvent):
        if msg.kind != ENSEMBLES_EVENT or not caps.follows_ensembles:
            return
        up, down = msg.detail.get("up"), msg.detail.get("down")
        if not (isinstance(up, list) and isinstance(down, list)
                and all(isinstance(i, int) for i in up) and all(isinstance(i, int) for i in down)):
            source.warn("ensembles_event", f"an '{ENSEMBLES_EVENT}' trial event without integer 'up' and 'down' "
                                           f"lists was ignored: {msg.detail}")
            return
        cast(FollowsEnsembles, source).set_ensembles(up, down)
    elif caps.hears_outcomes:
        source.on_bus_message(msg)


def frame_record_dtype(n_rois: int) -> np.dtype:
    return np.dtype([
        ("frame", "i8"), ("t_ready", "i8"), ("t_registered", "i8"), ("t_extracted", "i8"), ("t_sent", "i8"),
        ("dy", "f4"), ("dx", "f4"), ("corr", "f4"), ("flags", "i4"),
        ("F", "f4", (n_rois,)), ("Fneu", "f4", (n_rois,)),
    ])


class AcquisitionProcess(RigProcess):
    def configure(self) -> None:
        cfg = self.config.acquisition
        self.caps = registration(cfg.source)
        self.source: FrameSource = make_source(cfg, up=self.config.decoder.up, down=self.config.decoder.down)
        self.source.open()
        self.roi_set = self._load_rois()
        self.roi_set.save_suite2p(self.dir / "rois")
        # the reference, when it must be built from the first frames, is built without stalling the loop
        self.pipeline = FramePipeline.from_config(self.roi_set, cfg, background_reference=True)
        self._reference_saved = False
        self._save_reference()
        self.n_rois = self.pipeline.n_rois
        self.records = RecordWriter(self.dir / "frames.rec", frame_record_dtype(self.n_rois),
                                    self.config.session.flush_interval_s)
        # The movie's frame size is the ROI set's (suite2p Ly x Lx, what the pipeline extracts from), never the
        # first frame's: a stream's first frame may be any size. It opens at the first frame of that size, which
        # gives its pixel type; frames of another size are written as zeros, so movie frame i is frames.rec row i.
        self._movie: FrameFileWriter | None = None
        self._movie_blanks = 0  # frames of another size that came before the movie opened
        self.wrong_shape_frames = 0
        processes, topics = source_subscriptions(self.caps)
        self.feedback: Subscriber | None = self.subscribe(processes, topics) if topics else None
        self.frames = 0
        self.frames_dropped = 0
        self.bad_frames = 0
        self._last_number = -1
        self._next_preview = 0
        self._next_status = 0
        self._t_first = 0
        self._ended = False
        self._bad_run = BadRunWatch()

    def on_start(self) -> None:
        """Frames are the session's from now on: a source that streamed before drained and counted them."""
        self.source.start_keeping()

    def _save_reference(self) -> None:
        """Save the registration reference once it exists (given at start, or built from the first frames)."""
        if not self._reference_saved and self.pipeline.reference is not None:
            np.save(self.dir / "rois" / "reference.npy", self.pipeline.reference)
            self._reference_saved = True

    def _load_rois(self) -> RoiSet:
        cfg = self.config.acquisition
        if self.caps.has_ground_truth and not cfg.rois.suite2p_dir:
            roi_set = load_suite2p(cast(HasGroundTruth, self.source).write_ground_truth(self.dir / "sim_truth"))
        else:
            roi_set = load_suite2p(cfg.rois.suite2p_dir)
        return roi_set.cells_only() if cfg.rois.only_cells else roi_set

    def _save_frame(self, data: np.ndarray) -> None:
        """Append one frame to the movie (zeros for a frame that is not of the ROI set's size)."""
        shape = self.pipeline.shape
        if self._movie is None:
            if data.shape != shape:
                self._movie_blanks += 1
                return
            self._open_movie(shape, data.dtype)
            for _ in range(self._movie_blanks):
                self._movie.put(None)  # type: ignore[union-attr]
        self._movie.put(data if data.shape == shape else None)  # type: ignore[union-attr]

    def _open_movie(self, shape: tuple[int, int], dtype: np.dtype) -> None:
        dtype = np.dtype(dtype).newbyteorder("=")  # sources deliver native pixels; the file says which order
        (self.dir / "movie.json").write_text(json.dumps(
            {"dtype": dtype.str, "shape": [-1, shape[0], shape[1]], "order": "C",
             "frame_rate_hz": self.source.frame_rate_hz, "frame_rate_source": self.source.rate_source}
        ))
        # the disk gets MOVIE_BUFFER_S of slack (at most MOVIE_BUFFER_BYTES) before frames are written as zeros
        rate = self.source.frame_rate_hz or 30.0  # a stream may not know its rate yet: size for 30 Hz
        frame_bytes = shape[0] * shape[1] * dtype.itemsize
        frames = max(8, min(math.ceil(MOVIE_BUFFER_S * rate), MOVIE_BUFFER_BYTES // max(1, frame_bytes)))
        self._movie = FrameFileWriter(self.dir / "movie.raw", shape, dtype, frames, on_lost=self._movie_frames_lost)

    def _wrong_shape(self, number: int, shape: tuple[int, ...]) -> None:
        """Count and warn (the first, then every 100th) a frame not of the ROI set's size; the pipeline flags it."""
        self.wrong_shape_frames += 1
        n = self.wrong_shape_frames
        if n == 1 or n % 100 == 0:
            Ly, Lx = self.pipeline.shape
            self.warn("wrong_shape", f"frame {number} is {'x'.join(map(str, shape))} pixels, the ROI set's frames "
                                     f"are {Ly}x{Lx}: flagged WRONG_SHAPE, not extracted, kept as zeros in the movie "
                                     f"({n} such frame(s) so far)")

    def _movie_frames_lost(self, total: int) -> None:
        if total == 1 or total % 100 == 0:  # the first, then every 100th: a stalled disk must not flood the bus
            self.warn("movie_frames_lost", f"the disk is more than {MOVIE_BUFFER_S:g} s behind: {total} movie "
                                           f"frame(s) written as zeros so far ({self.dir / 'movie.raw'})")

    def ready_info(self) -> dict[str, str]:
        return {"n_rois": str(self.n_rois), "frame_rate_hz": repr(self.source.frame_rate_hz),
                "frame_rate_source": self.source.rate_source,
                "height": str(self.source.shape[0]), "width": str(self.source.shape[1])}

    def step(self) -> None:
        if self.feedback is not None:
            for msg in self.feedback.drain(100):
                feed_source(self.source, self.caps, msg)
        if self._ended:
            self.records.flush_if_due()
            (self.feedback.socket if self.feedback is not None else self._control.socket).poll(20)
            return
        try:
            frame = self.source.read(0.02)
        except EndOfStream:
            self._ended = True
            self.events.write("source_ended", frames=self.frames)
            self.warn("source_ended", f"the frame source ended after {self.frames} frames")
            return
        for code, message in self.source.pop_warnings():
            self.warn(code, message)
        if frame is None:
            self.records.flush_if_due()
            self._maybe_status()
            return
        if self._last_number >= 0 and frame.number > self._last_number + 1:
            missed = frame.number - self._last_number - 1
            self.frames_dropped += missed
            self.events.write("frames_dropped", after=self._last_number, missed=missed)
        self._last_number = frame.number
        result = self.pipeline.process(frame.data)
        if not self._reference_saved:
            self._save_reference()
        flags = int(result.flags) | int(frame.flags)
        if flags:
            self.bad_frames += 1
        t_sent = now_ns()
        self.publish(FluorFrame(
            frame=frame.number, t_ready=frame.t_ready_ns, t_registered=result.t_registered,
            t_extracted=result.t_extracted, dy=result.dy, dx=result.dx, corr=result.corr, flags=flags,
            F=result.F, Fneu=result.Fneu, t_sent=t_sent,
        ))
        row = self.records.next_row()
        row["frame"] = frame.number
        row["t_ready"] = frame.t_ready_ns
        row["t_registered"] = result.t_registered
        row["t_extracted"] = result.t_extracted
        row["t_sent"] = t_sent
        row["dy"] = result.dy
        row["dx"] = result.dx
        row["corr"] = result.corr
        row["flags"] = flags
        row["F"] = result.F
        row["Fneu"] = result.Fneu
        self.records.commit()
        if frame.data.shape != self.pipeline.shape:
            self._wrong_shape(frame.number, frame.data.shape)
        diagnosis = self._bad_run.observe(bool(flags & DIAGNOSED_FLAGS), frame.number, frame.t_ready_ns, frame.data,
                                          self.pipeline.reference, shape=self.source.shape,
                                          frame_rate_hz=self.source.frame_rate_hz, byte_stream=self.source.byte_stream)
        if diagnosis is not None:
            self.warn(f"bad_frames_{diagnosis.cause}", diagnosis.message)
        if self.config.session.save_frames:
            self._save_frame(frame.data)
        self.frames += 1
        if not self._t_first:
            self._t_first = t_sent
        if t_sent >= self._next_preview:
            self._next_preview = t_sent + PREVIEW_INTERVAL_NS
            self.publish(Preview(frame=frame.number, dy=result.dy, dx=result.dx, corr=result.corr,
                                 image=self.pipeline.preview_image(frame.data), t_ns=t_sent))
        self._maybe_status()

    def _maybe_status(self) -> None:
        now = now_ns()
        if now < self._next_status:
            return
        self._next_status = now + STATUS_INTERVAL_NS
        elapsed = (now - self._t_first) / 1e9 if self._t_first else 0.0
        self.publish(AcqStatus(frames=self.frames, frames_dropped=self.frames_dropped, bad_frames=self.bad_frames,
                               link=self.source.link_state(), fps=self.frames / elapsed if elapsed > 0 else 0.0,
                               t_ns=now))

    def heartbeat_stats(self) -> dict[str, float]:
        return {"frames": float(self.frames), "frames_dropped": float(self.frames_dropped),
                "bad_frames": float(self.bad_frames)}

    def on_stop(self) -> None:
        if hasattr(self, "records"):
            self.records.close()
        movie = getattr(self, "_movie", None)
        self._movie = None
        try:
            self._stop_source()
        finally:
            if movie is not None:
                try:
                    movie.close()  # raises a disk error the writer met: after the rest is saved
                finally:
                    if movie.frames_lost:
                        self.events.write("movie_frames_lost", frames=movie.frames_lost)

    def _stop_source(self) -> None:
        if hasattr(self, "source"):
            stats = self.source.stats()
            if self.caps.has_ground_truth:
                # Now with the true shifts and traces of every frame generated, not only the ROIs.
                cast(HasGroundTruth, self.source).write_ground_truth(self.dir / "sim_truth")
            self.source.close()
            self.events.write("final_stats", frames=getattr(self, "frames", 0),
                              frames_dropped=getattr(self, "frames_dropped", 0),
                              bad_frames=getattr(self, "bad_frames", 0), source_stats=stats)
