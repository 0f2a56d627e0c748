"""The acquisition process: frame source -> rigid registration -> ROI fluorescence -> bus + disk.

Files it owns in the session folder (``acquisition/``):
  ``frames.rec``      one row per frame: frame number, stage stamps, shift, correlation, flags, F, Fneu
  ``movie.zchunks``   the raw frames as the source gave them, compressed losslessly in chunks
                      (``movie.raw`` uncompressed with ``session.movie_codec = "raw"``) when
                      ``session.save_frames``; ``movie.json`` has their dtype, shape and codec
  ``movie_gaps.rec``  one row per movie frame kept as zeros: its index in the movie, its frame number and why
                      (:data:`GAP_LOST`: the writer was a full buffer behind; :data:`GAP_WRONG_SHAPE`)
  ``rois/``           the ROI set used (suite2p layout) and ``reference.npy``
  ``sim_truth/``      a source with ground truth (the sim): its ROIs and the truth of every frame
  ``events.jsonl``    lifecycle, warnings (bad frames, link drops), ``final_stats``
  ``planes/planeK/``  with several planes (``[acquisition] n_planes``), every plane but the BCI plane: the same
                      files for that plane (:mod:`acquisition.planes`); the files above are the BCI plane's

The process never asks which source it runs, only what the source can do (its registration's
capabilities, :mod:`acquisition.sources.registry`): whether it has ground truth, hears the rig's rewards
and decisions, or follows the decoder's ensembles.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np

from acquisition.diagnose import BadRunWatch
from acquisition.movie_saver import MovieSaver, MovieSettings
from acquisition.pacer import FramePacer
from acquisition.pipeline import FramePipeline
from acquisition.plane_rois import PlaneRois, load_planes
from acquisition.planes import OtherPlanes, build_planes, check_source_planes, plane_folder
from acquisition.recording import frame_record_dtype, keep_frame, record_frame
from acquisition.sources.base import EndOfStream, FrameSource
from acquisition.sources.registry import FollowsEnsembles, HasGroundTruth, SourceRegistration, make_source, registration
from acquisition.validate import FrameFlag
from acquisition.ztrack import Z_RECORD_DTYPE, LiveZ
from rig.core.bus import Subscriber
from rig.core.clock import now_ns
from rig.core.direct_link import DirectLinkSender
from rig.core.process import RigProcess
from rig.core.realtime import lower_this_thread
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
from rig.core.store import RecordWriter

PREVIEW_INTERVAL_NS = 250_000_000  # 4 Hz is plenty for the eye
STATUS_INTERVAL_NS = 1_000_000_000
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


class AcquisitionProcess(RigProcess):
    def configure(self) -> None:
        cfg = self.config.acquisition
        self.caps = registration(cfg.source)
        self.source: FrameSource = make_source(cfg, up=self.config.decoder.up, down=self.config.decoder.down)
        self.source.open()
        check_source_planes(self.source, cfg.n_planes, cfg.source)
        # the decoder's frames over a loopback socket of their own (rig/core/direct_link.py), when chosen
        self.direct = DirectLinkSender() if self.config.bus.fluor_link == "direct" else None
        self._direct_lost_said = False
        self.bci_plane = cfg.bci_plane  # frames of any other plane go to self.planes (acquisition.planes)
        self._plane_rois: list[PlaneRois] | None = None
        self.z: LiveZ | None = None
        self.z_records: RecordWriter | None = None
        # a recording (session.record_only, acquisition.recording) has no ROIs: no pipeline, frames of the source's size
        self.pipeline: FramePipeline | None = None if self.config.session.record_only else self._configure_pipeline()
        # a source that can hand each frame over at its last byte, still being put in row order (Frame.wire): the
        # pipeline registers and extracts it meanwhile; a recording has nothing to start on early
        self.early_frames = self.pipeline is not None and self.source.deliver_early()
        if self.early_frames:
            self.pipeline.expect_column_order(self.source.dtype)
        lead = self.config.acquisition.registration.prewarm_ms
        self._pacer = FramePacer(lead) if lead > 0 and self.pipeline is not None else None
        self.n_rois = self.pipeline.n_rois if self.pipeline is not None else 0
        self.records = RecordWriter(self.dir / "frames.rec", frame_record_dtype(self.n_rois),
                                    self.config.session.flush_interval_s)
        # The movie's frame size is the ROI set's (suite2p Ly x Lx, what the pipeline extracts from), never the
        # first frame's: a stream's first frame may be any size. It opens at the first frame of that size, which
        # gives its pixel type; frames of another size are written as zeros, so movie frame i is frames.rec row i.
        shape = self.pipeline.shape if self.pipeline is not None else tuple(self.source.shape)
        self.movie = MovieSaver(self.dir, shape, self._movie_settings(), self.source.frame_rate_hz,
                                self.source.rate_source, self.warn, self.events) \
            if self.config.session.save_frames else None
        self.wrong_shape_frames = 0
        self.planes: OtherPlanes = build_planes(self, self._plane_rois, PREVIEW_INTERVAL_NS)
        processes, topics = source_subscriptions(self.caps)
        if self.pipeline is None:  # nothing it could hear from runs in a recording
            topics = []
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
        self._in_bad_run = False  # the last frame was diagnosable-bad: the next good one ends the watch's run

    def _configure_pipeline(self) -> FramePipeline:
        """The ROI set (saved with the session), the registration + extraction pipeline, z-tracking."""
        cfg = self.config.acquisition
        # every plane's ROIs, checked (same frame size, valid kinds and parents) before anything else is built
        self._plane_rois = load_planes(cfg, self._ground_truth_rois if self.caps.has_ground_truth else None)
        self.roi_set = self._plane_rois[cfg.bci_plane].roi_set
        # with several planes every plane's rois/ gets roi_kind.npy and roi_parent.npy (the BCI plane: somata)
        self.roi_set.save_suite2p(self.dir / "rois", links=True if cfg.n_planes > 1 else None)
        # the reference, when it must be built from the first frames, is built without stalling the loop
        low = self.config.rig.background_priority == "low"  # a given reference's refinement thread runs below the loop
        self.pipeline = pipeline = FramePipeline.from_config(self.roi_set, cfg, background_reference=True,
                                                             on_thread_start=self._lower_thread if low else None)
        self._reference_saved = False
        self._save_reference()
        pipeline.warm_up(self.source.dtype)
        # z-tracking (acquisition.ztrack): a stack that does not fit the reference fails the start, with the numbers
        self.z = LiveZ(cfg.ztrack, cfg.pixel_size_um or None) if cfg.ztrack.stack_path else None
        if self.z is not None:
            self.z.start(pipeline.reference, self._max_shift_px())
            self.z_records = RecordWriter(self.dir / "z.rec", Z_RECORD_DTYPE, self.config.session.flush_interval_s)
        return pipeline

    def on_start(self) -> None:
        """Frames are the session's from now on: a source that streamed before drained and counted them. The
        extraction worker is chosen now that the scheduling the loop got is known."""
        if self.pipeline is not None:
            acq = self.config.acquisition
            paced = not (acq.source == "replay" and acq.replay.speed == "fast")
            self.events.write("extract_ahead", **self.pipeline.choose_extract_ahead(self.realtime_scheduling, paced))
        self.source.start_keeping()

    def _save_reference(self) -> None:
        """Save the registration reference once it exists (given at start, or built from the first frames)."""
        if not self._reference_saved and self.pipeline.reference is not None:
            np.save(self.dir / "rois" / "reference.npy", self.pipeline.reference)
            self._reference_saved = True

    def _lower_thread(self) -> str:
        """Runs in the refinement thread (acquisition.reg_refine): a lower priority and off the decoder's CPUs,
        so that on a busy machine the frame loop gets the CPU first (docs/REGISTRATION.md, the cost)."""
        return lower_this_thread(list(self.config.rig.cpu_affinity.get("decoder", [])))

    def _record_reference_event(self, number: int, event: dict[str, Any]) -> None:
        """A refinement of the given reference finished (acquisition.reg_refine): an event naming the first
        frame registered against the new one (this frame); when it switched, ``rois/reference.npy`` becomes
        the refined reference and the given one is kept as ``rois/reference_given.npy``."""
        kind = event.pop("event")
        event["pipeline_frame"] = event.pop("frame")
        if kind == "reference_refined":
            assert self.pipeline.reference_original is not None and self.pipeline.reference is not None
            np.save(self.dir / "rois" / "reference_given.npy", self.pipeline.reference_original)
            np.save(self.dir / "rois" / "reference.npy", self.pipeline.reference)
        self.events.write(kind, frame=number, **event)

    def _ground_truth_rois(self, plane: int) -> Path:
        """Write the source's truth of ``plane`` (the sim's) into the session; its ROI folder. At configure for a
        plane without a suite2p folder; at stop again, with the truth of every frame generated."""
        source = cast(HasGroundTruth, self.source)
        if self.config.acquisition.n_planes == 1:
            return source.write_ground_truth(self.dir / "sim_truth")
        bci = self.config.acquisition.bci_plane
        folder = self.dir / "sim_truth" if plane == bci else plane_folder(self.dir, plane) / "sim_truth"
        return source.write_ground_truth(folder, plane=plane)  # type: ignore[call-arg]

    def _movie_settings(self) -> MovieSettings:
        session, rig = self.config.session, self.config.rig
        return MovieSettings(session.movie_codec, session.movie_chunk_s, session.flush_interval_s,
                             lower_thread=rig.background_priority == "low",
                             keep_off_cpus=tuple(rig.cpu_affinity.get("decoder", [])))

    def _wrong_shape(self, number: int, shape: tuple[int, ...]) -> None:
        """Count and warn (the first, then every 100th) a frame not of the ROI set's size; the pipeline flags it."""
        self.wrong_shape_frames += 1
        n = self.wrong_shape_frames
        if n == 1 or n % 100 == 0:
            Ly, Lx = self.pipeline.shape if self.pipeline is not None else self.source.shape
            whose = "the ROI set's frames" if self.pipeline is not None else "the source's frames (as configured)"
            self.warn("wrong_shape", f"frame {number} is {'x'.join(map(str, shape))} pixels, {whose} "
                                     f"are {Ly}x{Lx}: flagged WRONG_SHAPE, not extracted, kept as zeros in the movie "
                                     f"({n} such frame(s) so far)")

    def ready_info(self) -> dict[str, str]:
        info = {"n_rois": str(self.n_rois), "frame_rate_hz": repr(self.source.frame_rate_hz),
                "frame_rate_source": self.source.rate_source,
                "height": str(self.source.shape[0]), "width": str(self.source.shape[1])}
        if self.direct is not None:
            info["fluor_link_port"] = str(self.direct.port)
        return info

    def _send_direct(self, fluor: FluorFrame) -> None:
        """The same frame to the decoder over the direct link ([bus] fluor_link = "direct"); a lost link is said."""
        direct = self.direct
        assert direct is not None
        if not direct.send(fluor) and direct.error and not self._direct_lost_said:
            self._direct_lost_said = True
            self.warn("fluor_link_lost", direct.error)

    def step(self) -> None:
        if self.feedback is not None:
            for msg in self.feedback.drain(100):
                feed_source(self.source, self.caps, msg)
        if self._ended:
            self.records.flush_if_due()
            if self.feedback is not None:
                self.feedback.socket.poll(20)
            else:
                self.wait_for_control(20)
            return
        pacer = self._pacer
        try:
            frame = self.source.read(pacer.wait_s(now_ns(), 0.02) if pacer is not None else 0.02)
        except EndOfStream:
            self._ended = True
            self.events.write("source_ended", frames=self.frames)
            self.warn("source_ended", f"the frame source ended after {self.frames} frames")
            return
        for code, message in self.source.pop_warnings():
            self.warn(code, message)
        if frame is None:
            if pacer is not None and pacer.due(now_ns()):
                self.pipeline.prewarm()
                pacer.done()
                return
            self.records.flush_if_due()
            self._maybe_status()
            return
        if frame.plane != self.bci_plane:  # another plane's, or of no configured plane: off the BCI path
            frame.wait_data()
            self.planes.take(frame)
            self._maybe_status()
            return
        if self._last_number >= 0 and frame.number > self._last_number + 1:
            missed = frame.number - self._last_number - 1
            self.frames_dropped += missed
            self.events.write("frames_dropped", after=self._last_number, missed=missed)
        self._last_number = frame.number
        if self._pacer is not None:
            self._pacer.arrived(frame.t_ready_ns)
        if self.pipeline is None:
            frame.wait_data()
            record_frame(self, frame, PREVIEW_INTERVAL_NS)
            self._maybe_status()
            return
        result = self.pipeline.process(frame)  # frame.data may still be being put in row order (Frame.wire)
        if not self._reference_saved:
            self._save_reference()
        for event in self.pipeline.pop_reference_events():
            self._record_reference_event(frame.number, event)
        flags = int(result.flags) | int(frame.flags)
        if flags:
            self.bad_frames += 1
        t_sent = now_ns()
        fluor = FluorFrame(
            frame=frame.number, t_ready=frame.t_ready_ns, t_registered=result.t_registered,
            t_extracted=result.t_extracted, dy=result.dy, dx=result.dx, corr=result.corr, flags=flags,
            F=result.F, Fneu=result.Fneu, t_sent=t_sent,
        )
        self.publish(fluor)
        if self.direct is not None:
            self._send_direct(fluor)
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
        frame.wait_data()  # the rest reads the row order, which the source's thread finishes meanwhile
        if self.z is not None:
            self._track_z(frame.number, frame.data, result.dy, result.dx)
        if frame.data.shape != self.pipeline.shape:
            self._wrong_shape(frame.number, frame.data.shape)
        if flags & DIAGNOSED_FLAGS or self._in_bad_run:  # a good frame after good ones changes nothing in the watch
            self._watch_bad_run(bool(flags & DIAGNOSED_FLAGS), frame.number, frame.t_ready_ns, frame.data)
        if keep_frame(self, frame, t_sent, PREVIEW_INTERVAL_NS):
            z = self.z
            self.publish(Preview(frame=frame.number, dy=result.dy, dx=result.dx, corr=result.corr,
                                 image=self.pipeline.preview_image(frame.data), t_ns=t_sent,
                                 z_um=z.last_z if z is not None else math.nan, plane=self.bci_plane))
        self._maybe_status()

    def _watch_bad_run(self, bad: bool, number: int, t_ready_ns: int, data: np.ndarray) -> None:
        """A run of wrong-size or uncorrelated frames: diagnosed once long enough (acquisition.diagnose)."""
        self._in_bad_run = bad
        diagnosis = self._bad_run.observe(bad, number, t_ready_ns, data, self.pipeline.reference,
                                          shape=self.source.shape, frame_rate_hz=self.source.frame_rate_hz,
                                          byte_stream=self.source.byte_stream)
        if diagnosis is not None:
            self.warn(f"bad_frames_{diagnosis.cause}", diagnosis.message)

    def _max_shift_px(self) -> int:
        return int(self.config.acquisition.registration.maxregshift * min(self.pipeline.shape))

    def _track_z(self, number: int, data: np.ndarray, dy: float, dx: float) -> None:
        """Estimate the frame's depth once a reference exists; one z.rec row per estimate; warn on a drift."""
        assert self.z is not None and self.z_records is not None
        if self.z.tracker is None:  # the reference is being built live: the tracker is built off the loop too
            if self.pipeline.reference is not None:
                self.z.start_in_background(self.pipeline.reference, self._max_shift_px())
            refused = self.z.poll_build()
            if refused is not None:
                self.warn("ztrack_refused", f"z-tracking is OFF for the rest of this session: {refused}")
                self.z = None
                return
            if self.z.tracker is None:
                return
        z = self.z.update(data, dy, dx) if data.shape == self.pipeline.shape else math.nan
        if math.isfinite(z):
            self.z_records.append(frame=number, z_um=z, corr=self.z.tracker.last_corr)  # type: ignore[union-attr]
            message = self.z.warning(number)
            if message is not None:
                self.warn("z_drift", message)

    def _maybe_status(self) -> None:
        now = now_ns()
        if now < self._next_status:
            return
        self._next_status = now + STATUS_INTERVAL_NS
        if self.planes.recorders:
            self.planes.check_silent(self.frames)
        elapsed = (now - self._t_first) / 1e9 if self._t_first else 0.0
        self.publish(AcqStatus(frames=self.frames, frames_dropped=self.frames_dropped, bad_frames=self.bad_frames,
                               link=self.source.link_state(), fps=self.frames / elapsed if elapsed > 0 else 0.0,
                               t_ns=now))

    def heartbeat_stats(self) -> dict[str, float]:
        return {"frames": float(self.frames), "frames_dropped": float(self.frames_dropped),
                "bad_frames": float(self.bad_frames)}

    def on_stop(self) -> None:
        if getattr(self, "direct", None) is not None:
            self.direct.close()  # type: ignore[union-attr]
        if hasattr(self, "records"):
            self.records.close()
        if getattr(self, "z_records", None) is not None:
            self.z_records.close()  # type: ignore[union-attr]
        try:
            self._stop_source()
        finally:
            try:
                if getattr(self, "planes", None) is not None:
                    self.planes.close()
            finally:
                if getattr(self, "movie", None) is not None:
                    self.movie.close()  # type: ignore[union-attr]  # a disk error the writer met: after the rest

    def _stop_source(self) -> None:
        if hasattr(self, "source"):
            stats = self.source.stats()
            if self.caps.has_ground_truth:
                # Now with the true shifts and traces of every frame generated, not only the ROIs.
                self._ground_truth_rois(self.config.acquisition.bci_plane)
                if getattr(self, "planes", None) is not None:
                    self.planes.write_ground_truth()
            self.source.close()
            planes = self.planes.final_stats() if getattr(self, "planes", None) is not None else {}
            pipeline, pacer = getattr(self, "pipeline", None), getattr(self, "_pacer", None)
            self.events.write("final_stats", frames=getattr(self, "frames", 0),
                              frames_dropped=getattr(self, "frames_dropped", 0),
                              bad_frames=getattr(self, "bad_frames", 0), source_stats=stats, **planes,
                              extract_ahead=pipeline.ahead_stats() if pipeline is not None else None,
                              registration_prewarms=pacer.prewarms if pacer is not None else 0)
