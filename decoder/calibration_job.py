"""An end-of-baseline calibration computed beside the decoder's loop, and applied between two frames.

Why: calibrating a 15-min baseline takes 0.2-0.4 s (it took 2.6-3.8 s before the task prediction was
compiled); computed in the loop, every frame arriving meanwhile was decided that much later. With
``decoder.calibrate_off_loop`` the engine hands the calibration's inputs (a snapshot of the baseline, a copy
of the decoder, the calibration settings) to a :class:`CalibrationJob` when the baseline ends and goes on
deciding frames in IDLE; whoever runs the engine computes the job (:meth:`CalibrationJob.run`: the live
decoder in a thread, replay at once) and calls ``DecoderEngine.finish_calibration`` before the frame it
applies at. The live decoder records that frame (``calibration_applied`` in ``decoder/events.jsonl``)
and replay applies it before the same frame, so decisions stay a function of the recorded input.

The operator's Calibrate command takes the same road (``decoder.operator_calibrate_off_loop``): a job with
``requested_by`` "operator", numbered in the order the operator's calibrations were requested, which is
how the record names it (the end-of-baseline one is named by the frame its baseline ended on).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import TYPE_CHECKING

from decoder.calibration import Calibration, CalibrationError
from decoder.config import CalibrationConfig
from rig.core.realtime import lower_this_thread

if TYPE_CHECKING:
    from decoder.baseline import Baseline
    from decoder.registry import Decoder


class CalibrationJob:
    """One calibration of a recorded baseline. auto_protocol's (``requested_by`` "auto"): ``baseline_end`` is the
    frame the baseline ended on, which names it; the operator's ("operator"): ``baseline_end`` is the last frame
    decided before the request, ``number`` (1, 2, ... in the session) names it, ``allow_rois`` its override."""

    def __init__(self, baseline_end: int, baseline: Baseline, decoder: Decoder, cfg: CalibrationConfig, *,
                 requested_by: str = "auto", number: int = 0, allow_rois: list[int] | None = None) -> None:
        self.baseline_end = baseline_end
        self.requested_by = requested_by
        self.number = number
        self._baseline = baseline
        self._decoder = decoder
        self._cfg = cfg
        self._allow_rois = allow_rois
        self.submitted = False  # handed to whoever computes it
        self.dropped = ""  # why the engine no longer waits for it (an operator call replaced its inputs)
        self.calibration: Calibration | None = None
        self.as_dict: dict | None = None  # calibration.to_dict() (~14 ms of Python), made beside the loop too
        self.error = ""  # the CalibrationError's message: the baseline cannot be calibrated
        self.crash: BaseException | None = None  # anything else: a bug, raised again where the job is applied
        self.compute_ms = 0.0
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def by_operator(self) -> bool:
        return self.requested_by == "operator"

    @property
    def key(self) -> tuple[str, int]:
        """What the record names the job by: ("auto", baseline_end) or ("operator", number)."""
        return ("operator", self.number) if self.by_operator else ("auto", self.baseline_end)

    def describe(self) -> dict[str, object]:
        """The fields naming the job in its ``calibration_*`` lines of ``decoder/events.jsonl``."""
        if self.by_operator:
            return {"requested_by": "operator", "job": self.number, "after_frame": self.baseline_end}
        return {"requested_by": "auto", "baseline_end": self.baseline_end}

    def wait(self, timeout_s: float) -> bool:
        """Block until computed (tests, shutdown); whether it is."""
        return self._done.wait(timeout_s)

    def run(self) -> None:
        """Compute the calibration (any thread). A CalibrationError is the job's result; any other exception
        is kept for :meth:`check` to raise where the job is applied (never lost in a worker thread)."""
        t0 = time.perf_counter()
        try:
            cal = self._baseline.calibrate(self._decoder, self._cfg, self._allow_rois)
            self.as_dict = cal.to_dict()
            self.calibration = cal
        except CalibrationError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - re-raised by check() in the decoder's own thread
            self.crash = exc
        finally:
            self._baseline = None  # type: ignore[assignment]  # the baseline's arrays are large: let them go
            self.compute_ms = (time.perf_counter() - t0) * 1e3
            self._done.set()

    def check(self) -> None:
        """Raise what broke the computation, other than a calibration error (call where it is applied)."""
        if self.crash is not None:
            what = (f"the operator's calibration {self.number} (requested after frame {self.baseline_end})"
                    if self.by_operator else f"calibrating the baseline that ended at frame {self.baseline_end}")
            raise RuntimeError(f"{what} failed: {type(self.crash).__name__}: {self.crash}") from self.crash


class NextFrameCalibrator:
    """Computes a job when it is submitted and applies it before the next frame (what a session without a
    calibration thread does, e.g. a simulated one written offline): no frame waits, none is decided
    before the calibration is in force that the live decoder could have decided without it."""

    def submit(self, job: CalibrationJob) -> None:
        job.run()

    def due(self, job: CalibrationJob, frame: int) -> bool:
        return job.done


class RecordedCalibrator:
    """Replay: computes a job at once and applies it before the frame the record says it was applied before.

    ``applied``: :attr:`CalibrationJob.key` -> frame (the ``calibration_applied`` events). A job the record does
    not name was never applied (the session ended first, or an operator call dropped it), unless
    ``otherwise_next`` (a what-if, whose calibrations need not be the record's): then before the next frame.
    """

    def __init__(self, applied: dict[tuple[str, int], int], otherwise_next: bool) -> None:
        self.applied = applied
        self.otherwise_next = otherwise_next

    @classmethod
    def from_events(cls, events: list[dict], otherwise_next: bool) -> RecordedCalibrator:
        """From a session's decoder events (lines before the operator's calibrations left the loop name none)."""
        applied = {}
        for e in events:
            if e.get("kind") == "calibration_applied":
                key = ("operator", int(e["job"])) if e.get("requested_by") == "operator" else (
                    "auto", int(e["baseline_end"]))
                applied[key] = int(e["frame"])
        return cls(applied, otherwise_next)

    def submit(self, job: CalibrationJob) -> None:
        job.run()

    def due(self, job: CalibrationJob, frame: int) -> bool:
        at = self.applied.get(job.key)
        return frame >= at if at is not None else self.otherwise_next


class ThreadCalibrator:
    """The live decoder's: one worker thread, started with the decoder, at a lower priority and off the
    decoder's CPUs, computes each job; it is due as soon as it is done.

    A thread, not a process: the computation's heavy parts are compiled loops and numpy calls that release
    the GIL (the task simulation, F0 and dF/F statistics, smoothing); what holds it is ~20-40 ms of Python
    spread over the job, and the job lowers the interpreter's switch interval meanwhile so that the
    decoder's thread gets the GIL back within ``SWITCH_INTERVAL_S`` when it needs it (docs/PERFORMANCE.md,
    "Calibration off the loop", has the measurements). A process would need the baseline (2 × 108 MB for
    15 min of 500 ROIs) copied or shared with it.
    """

    #: the interpreter's switch interval while a job computes (Python's default is 5 ms)
    SWITCH_INTERVAL_S = 0.0005

    def __init__(self, avoid_cpus: list[int], lower: bool) -> None:
        """``lower``: run the thread at a lower priority, off ``avoid_cpus`` (rig.background_priority "low");
        what the OS refused of that is :attr:`refused` (for the caller to warn about: not from this thread)."""
        self._jobs: queue.SimpleQueue[CalibrationJob | None] = queue.SimpleQueue()
        self._avoid = list(avoid_cpus)
        self._lower = lower
        self.refused = ""
        self.computing = False  # a job is being computed (the late-decision count's cause)
        started = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(started,), name="calibration", daemon=True)
        self._thread.start()
        started.wait()  # the thread has lowered itself (a few system calls): `refused` is final

    def submit(self, job: CalibrationJob) -> None:
        self._jobs.put(job)

    def due(self, job: CalibrationJob, frame: int) -> bool:
        return job.done

    def close(self, timeout_s: float = 5.0) -> bool:
        """Stop the worker after the job it is computing; whether it stopped within ``timeout_s``."""
        self._jobs.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _work(self, started: threading.Event) -> None:
        try:
            self.refused = lower_this_thread(self._avoid) if self._lower else ""
        finally:
            started.set()
        while (job := self._jobs.get()) is not None:
            interval = sys.getswitchinterval()
            self.computing = True
            sys.setswitchinterval(self.SWITCH_INTERVAL_S)
            try:
                job.run()
            finally:
                sys.setswitchinterval(interval)
                self.computing = False
