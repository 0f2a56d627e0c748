"""The planes of a multi-plane (fast-z) session other than the BCI plane, and frames of no configured plane.

Why apart from :mod:`acquisition.process`: the BCI plane's path (frame -> registration -> FluorFrame) is what
the decoder waits on and stays exactly as it was; the process hands every other frame here with one integer
comparison. Each other plane K gets what the BCI plane has, in ``acquisition/planes/planeK/``: its own
:class:`FramePipeline` (its reference, its ROIs), ``frames.rec`` (the BCI plane's row layout with plane K's
ROI count), the movie and ``movie_gaps.rec`` when frames are saved, ``rois/`` and, for the sim, ``sim_truth/``.
Its fluorescence goes out as :class:`PlaneFluor` on ``acq.plane`` (the decoder does not subscribe to it) and
its image as a :class:`Preview` with ``plane = K``, each plane at the preview rate.

Nothing is lost silently (docs/PLANES.md, bad input): a frame whose plane index is not below
``[acquisition] n_planes`` is counted, warned about (the first, then every 100th, each time also a
``plane_out_of_range`` event) and reported in ``final_stats``; a plane that sends nothing while the BCI plane
runs is warned about once, the moment it is plain.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from acquisition.movie_saver import MovieSaver
from acquisition.pipeline import FramePipeline
from acquisition.plane_rois import PlaneRois
from acquisition.recording import frame_record_dtype, preview_image
from acquisition.sources.base import Frame, FrameSource
from acquisition.sources.registry import HasGroundTruth
from acquisition.validate import FrameFlag
from rig.core.clock import now_ns
from rig.core.schema import PlaneFluor, Preview
from rig.core.store import RecordWriter

if TYPE_CHECKING:
    from acquisition.process import AcquisitionProcess

#: a repeated warning goes out the first time, then every this many times
WARN_EVERY = 100
#: a plane without a single frame after the BCI plane delivered this many is warned about (about 3 s at 30 Hz)
SILENT_AFTER_VOLUMES = 100


def plane_folder(acq_dir: Path, plane: int) -> Path:
    """Where a plane other than the BCI plane keeps its files in the session (``acquisition/planes/planeK``)."""
    return acq_dir / "planes" / f"plane{plane}"


def check_source_planes(source: FrameSource, n_planes: int, source_name: str) -> None:
    """A source delivering another number of planes than configured would file frames under the wrong plane."""
    if source.n_planes != n_planes:
        raise ValueError(f"the {source_name} source delivers {source.n_planes} plane(s) per volume, but "
                         f"[acquisition] n_planes = {n_planes}: set n_planes to what the scope images (and "
                         "the source's own planes setting to match)")


class PlaneRecorder:
    """One plane other than the BCI plane: registered against its own reference, extracted with its own ROIs
    (no pipeline in a recording), recorded and previewed on its own."""

    def __init__(self, proc: AcquisitionProcess, plane: int, folder: Path, pipeline: FramePipeline | None,
                 shape: tuple[int, int], preview_interval_ns: int) -> None:
        self.proc = proc
        self.preview_interval_ns = preview_interval_ns
        self.plane = plane
        self.folder = folder
        self.pipeline = pipeline
        self.shape = shape
        session = proc.config.session
        n_rois = pipeline.n_rois if pipeline is not None else 0
        self.records = RecordWriter(folder / "frames.rec", frame_record_dtype(n_rois), session.flush_interval_s)
        self.movie = MovieSaver(folder, shape, proc._movie_settings(), proc.source.frame_rate_hz,
                                proc.source.rate_source, self._warn, proc.events) if session.save_frames else None
        self.frames = self.bad_frames = self.frames_dropped = self.wrong_shape_frames = 0
        self._last_number = -1
        self._next_preview = 0
        self._reference_saved = False
        self.said_silent = False

    def _warn(self, code: str, message: str) -> None:
        self.proc.warn(code, f"plane {self.plane}: {message}")

    def take(self, frame: Frame) -> None:
        """Register, extract, record and (when due) preview one frame of this plane."""
        number, data = frame.number, frame.data
        if self._last_number >= 0 and number > self._last_number + 1:
            missed = number - self._last_number - 1
            self.frames_dropped += missed
            self.proc.events.write("frames_dropped", plane=self.plane, after=self._last_number, missed=missed)
        self._last_number = number
        pipeline = self.pipeline
        row = self.records.next_row()
        if pipeline is None:  # a recording: no ROIs, frames of the source's size
            flags = int(frame.flags) | (int(FrameFlag.WRONG_SHAPE) if data.shape != self.shape else 0)
            t_sent = now_ns()
            row["t_registered"] = row["t_extracted"] = 0
            row["dy"] = row["dx"] = row["corr"] = math.nan
        else:
            result = pipeline.process(data)
            if not self._reference_saved:
                self._save_reference()
            for event in pipeline.pop_reference_events():
                self._reference_event(number, event)
            flags = int(result.flags) | int(frame.flags)
            t_sent = now_ns()
            self.proc.publish(PlaneFluor(plane=self.plane, frame=number, t_ready=frame.t_ready_ns, dy=result.dy,
                                         dx=result.dx, corr=result.corr, flags=flags, F=result.F, Fneu=result.Fneu))
            row["t_registered"] = result.t_registered
            row["t_extracted"] = result.t_extracted
            row["dy"], row["dx"], row["corr"] = result.dy, result.dx, result.corr
            row["F"] = result.F
            row["Fneu"] = result.Fneu
        row["frame"] = number
        row["t_ready"] = frame.t_ready_ns
        row["t_sent"] = t_sent
        row["flags"] = flags
        self.records.commit()
        if flags:
            self.bad_frames += 1
        if data.shape != self.shape:
            self._wrong_shape(number, data.shape)
        if self.movie is not None:
            self.movie.save(number, data)
        self.frames += 1
        if t_sent >= self._next_preview:
            self._next_preview = t_sent + self.preview_interval_ns
            if pipeline is None:
                image, dy, dx, corr = preview_image(data), math.nan, math.nan, math.nan
            else:
                image, dy, dx, corr = pipeline.preview_image(data), pipeline.result.dy, pipeline.result.dx, \
                    pipeline.result.corr
            self.proc.publish(Preview(frame=number, dy=dy, dx=dx, corr=corr, image=image, t_ns=t_sent,
                                      plane=self.plane))

    def _wrong_shape(self, number: int, shape: tuple[int, ...]) -> None:
        self.wrong_shape_frames += 1
        n = self.wrong_shape_frames
        if n == 1 or n % WARN_EVERY == 0:
            Ly, Lx = self.shape
            self._warn("wrong_shape", f"frame {number} is {'x'.join(map(str, shape))} pixels, this plane's frames "
                                      f"are {Ly}x{Lx}: flagged WRONG_SHAPE, not extracted, kept as zeros in the "
                                      f"movie ({n} such frame(s) of this plane so far)")

    def _save_reference(self) -> None:
        assert self.pipeline is not None
        if self.pipeline.reference is not None:
            np.save(self.folder / "rois" / "reference.npy", self.pipeline.reference)
            self._reference_saved = True

    def _reference_event(self, number: int, event: dict[str, Any]) -> None:
        """As the BCI plane's (AcquisitionProcess._record_reference_event), in this plane's ``rois/``."""
        assert self.pipeline is not None
        kind = event.pop("event")
        event["pipeline_frame"] = event.pop("frame")
        if kind == "reference_refined":
            assert self.pipeline.reference_original is not None and self.pipeline.reference is not None
            np.save(self.folder / "rois" / "reference_given.npy", self.pipeline.reference_original)
            np.save(self.folder / "rois" / "reference.npy", self.pipeline.reference)
        self.proc.events.write(kind, frame=number, plane=self.plane, **event)

    def stats(self) -> dict[str, int]:
        return {"frames": self.frames, "frames_dropped": self.frames_dropped, "bad_frames": self.bad_frames,
                "wrong_shape_frames": self.wrong_shape_frames}


class OtherPlanes:
    """Every plane but the BCI plane (none with one plane), and the count of frames of no configured plane."""

    def __init__(self, proc: AcquisitionProcess, recorders: dict[int, PlaneRecorder]) -> None:
        self.proc = proc
        self.n_planes = proc.config.acquisition.n_planes
        self.bci_plane = proc.config.acquisition.bci_plane
        self.recorders = recorders
        self._by_plane: list[PlaneRecorder | None] = [recorders.get(k) for k in range(self.n_planes)]
        self.out_of_range = 0

    def take(self, frame: Frame) -> None:
        """A frame that is not the BCI plane's: its plane's recorder, or counted when its plane is out of range."""
        plane = frame.plane
        recorder = self._by_plane[plane] if 0 <= plane < self.n_planes else None
        if recorder is None:
            self._out_of_range(frame)
        else:
            recorder.take(frame)

    def _out_of_range(self, frame: Frame) -> None:
        self.out_of_range += 1
        n = self.out_of_range
        if n == 1 or n % WARN_EVERY == 0:
            self.proc.events.write("plane_out_of_range", frame=frame.number, plane=frame.plane, count=n)
            self.proc.warn("plane_out_of_range",
                           f"frame {frame.number} is of plane {frame.plane}, but [acquisition] n_planes = "
                           f"{self.n_planes} (planes 0..{self.n_planes - 1}): not processed, not recorded; {n} such "
                           f"frame(s) so far (is the scope imaging more planes than configured?)")

    def check_silent(self, bci_frames: int) -> None:
        """Once the BCI plane delivered :data:`SILENT_AFTER_VOLUMES` frames, a plane with none is said (once)."""
        if bci_frames < SILENT_AFTER_VOLUMES:
            return
        for recorder in self.recorders.values():
            if recorder.frames == 0 and not recorder.said_silent:
                recorder.said_silent = True
                self.proc.warn("plane_no_frames",
                               f"plane {recorder.plane} has delivered no frame while the BCI plane "
                               f"({self.bci_plane}) delivered {bci_frames}: is the scope imaging "
                               f"{self.n_planes} planes ([acquisition] n_planes), and sending each plane's index?")

    def final_stats(self) -> dict[str, Any]:
        """For the ``final_stats`` event: with one plane only a count of stray frames, if any (a session as before)."""
        if self.n_planes == 1:
            return {"plane_out_of_range": self.out_of_range} if self.out_of_range else {}
        return {"planes": {str(k): r.stats() for k, r in sorted(self.recorders.items())},
                "plane_out_of_range": self.out_of_range}

    def write_ground_truth(self) -> None:
        """Each plane's ground truth, now with every frame generated (the sim)."""
        source = cast(HasGroundTruth, self.proc.source)
        for plane, recorder in self.recorders.items():
            source.write_ground_truth(recorder.folder / "sim_truth", plane=plane)  # type: ignore[call-arg]

    def close(self) -> None:
        """Close every plane's records and movie; a disk error a movie writer met is raised after the rest."""
        errors: list[BaseException] = []
        for recorder in self.recorders.values():
            recorder.records.close()
            if recorder.pipeline is not None:
                recorder.pipeline.close()
            if recorder.movie is not None:
                try:
                    recorder.movie.close()
                except OSError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]


def build_planes(proc: AcquisitionProcess, rois: list[PlaneRois] | None, preview_interval_ns: int) -> OtherPlanes:
    """The recorders of every plane but the BCI plane, their folders and ROIs (with kinds and parents)
    (``rois``: every plane's ROIs, None in a recording)."""
    cfg = proc.config.acquisition
    recorders: dict[int, PlaneRecorder] = {}
    for plane in range(cfg.n_planes):
        if plane == cfg.bci_plane:
            continue
        folder = plane_folder(proc.dir, plane)
        folder.mkdir(parents=True, exist_ok=True)
        pipeline = None
        if rois is not None:
            roi_set = rois[plane].roi_set
            roi_set.save_suite2p(folder / "rois", links=True)  # roi_kind.npy, roi_parent.npy (acquisition.rois)
            low = proc.config.rig.background_priority == "low"
            # the plane's own reference: its suite2p refImg, else built from its first frames off the loop
            # (registration.ref_path is the BCI plane's reference image, not this plane's)
            # blas_threads=None: the BCI plane's pipeline already holds this process's BLAS to one thread
            pipeline = FramePipeline(roi_set, registration=cfg.registration, extraction=cfg.extraction,
                                     validation=cfg.validation, blas_threads=None, background_reference=True,
                                     on_thread_start=proc._lower_thread if low else None)
            pipeline.warm_up(proc.source.dtype)  # its first frame would otherwise delay the next BCI frame
            shape = pipeline.shape
        else:
            shape = tuple(proc.source.shape)
        recorders[plane] = PlaneRecorder(proc, plane, folder, pipeline, cast(tuple[int, int], shape),
                                         preview_interval_ns)
    return OtherPlanes(proc, recorders)
