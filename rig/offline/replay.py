"""`rig replay`: re-run a recorded session through the same pipeline and decoder, offline, and check it.

The decoder is a pure function of (config, calibration, input stream, operator actions). Replay rebuilds
that input stream from the session folder — the raw frames (``acquisition/movie.raw``) through the same
:class:`~acquisition.pipeline.FramePipeline`, or the recorded F/Fneu (``acquisition/frames.rec``) when
frames were not kept — feeds exactly the frames the decoder saw (the rows of ``decoder/decisions.rec``),
applies each operator action after the frame it followed live (``applied`` events, ``after_frame``) and
each calibration computed beside the loop before the frame it was applied before live (``calibration_applied``), and
compares every decision row, trial event, reward request and the final calibration with the record,
byte for byte. Stamps (``t_*``) are measurements of the live run and are not compared.

With another config (``--config OTHER.toml`` and/or ``--set KEY=VALUE``) nothing is checked: the new
decisions go into a new session folder whose ``session.json`` says ``"replay_of"`` the original (a what-if
session). The operator's actions are replayed as recorded, except that when the what-if changes the
calibration settings (``[decoder.calibration]``), the target hit rate the operator gave to ``calibrate``
is dropped so the what-if settings decide.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from tqdm import tqdm

from decoder.calibration_job import RecordedCalibrator
from decoder.core import STAMP_FIELDS, DecoderCore, decision_record_dtype
from rig.app.config import RigConfig
from rig.core.movie_file import GAPS_FILE
from rig.core.safe_npy import NpyFileError, load_npy
from rig.core.store import json_default
from rig.offline.legacy import without_added_fields
from rig.offline.session_checks import read_checked_records
from rig.offline.session_data import SessionData, SessionError

#: Pipeline outputs compared with ``frames.rec`` when the frames are re-registered from the movie.
TRACE_FIELDS = ("dy", "dx", "corr", "F", "Fneu")


@dataclass
class Mismatch:
    what: str  # "decision" | "event" | "calibration" | "trace"
    frame: int
    field: str
    recorded: Any
    replayed: Any

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "frame": self.frame, "field": self.field,
                "recorded": _brief(_plain(self.recorded)), "replayed": _brief(_plain(self.replayed))}


@dataclass
class ReplayRun:
    """What the replay produced: rows shaped like ``decisions.rec``, events as the decoder writes them."""

    source: str  # "movie" | "traces"
    rows: np.ndarray  # one per replayed decision, in the dtype of the session's decisions.rec
    events: list[dict[str, Any]]  # "trial" / "reward_request" / "applied" events in order, each with t_ns
    calibration: dict[str, Any] | None
    traces: np.ndarray | None  # pipeline output shaped like frames.rec (movie source), else None
    frames_registered: int = 0
    controls_applied: int = 0
    controls_skipped: list[dict[str, Any]] = field(default_factory=list)  # past the end of what was replayed
    unreplayable: int = 0  # decision rows at the end whose input frames were not on disk
    unreplayable_reason: str = ""  # why (a crash cut the inputs short, or the files disagree)


@dataclass
class ReplayReport:
    source: str
    frames: int
    decisions_checked: int
    events_checked: int
    traces_checked: int
    mismatches: int
    first_mismatches: list[Mismatch]
    notes: list[str]
    frames_registered: int = 0
    decisions_unchecked: int = 0  # recorded decisions that could not be replayed: the check is partial
    unchecked_reason: str = ""

    @property
    def complete(self) -> bool:
        """Every recorded decision was checked (a partial check is not a pass, even with 0 mismatches)."""
        return self.decisions_unchecked == 0

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "decisions_checked": self.decisions_checked, "mismatches": self.mismatches,
                "decisions_unchecked": self.decisions_unchecked, "complete": self.complete,
                "unchecked_reason": self.unchecked_reason, "events_checked": self.events_checked,
                "traces_checked": self.traces_checked,
                "frames_registered": self.frames_registered, "source": self.source,
                "first_mismatches": [m.to_dict() for m in self.first_mismatches[:5]]}


# ---------------------------------------------------------------------------- inputs


def _frame_index(session: SessionData) -> dict[int, int]:
    """frames.rec row index of each frame number (frame numbers increase, but say so if they do not)."""
    if session.frames is None:
        raise SessionError(f"{session.path}: acquisition/frames.rec is missing; there is nothing to replay")
    numbers = session.frames["frame"]
    index = {int(n): i for i, n in enumerate(numbers)}
    if len(index) != len(numbers):
        raise SessionError(f"{session.path / 'acquisition' / 'frames.rec'}: a frame number appears twice")
    return index


def _make_pipeline(session: SessionData, cfg: RigConfig) -> tuple[Any, tuple[int, np.ndarray] | None]:
    """The FramePipeline the acquisition process ran (its saved ROI set and reference, ``cfg``'s settings), and
    the switch to a refined reference it made: (first frame number registered against it, that image) or None.

    The acquisition process saves the reference it was given (``rois/reference.npy``); without one it
    built its reference from the first good frames, which the pipeline does again from the same frames.
    A given reference that the live session refined (event ``reference_refined``) was replaced at a frame
    that depended on a background thread's timing: the replay registers against the given one
    (``rois/reference_given.npy``) up to that frame and against the saved refined one from it, and never
    refines by itself. Only a what-if that changes ``[acquisition.registration]`` refines again, as
    ``rig process`` does (blocking, from the given reference, with the what-if's settings).
    """
    from acquisition.pipeline import FramePipeline  # noqa: PLC0415 - only the movie replay needs it

    roi_set, reference = session.registration_inputs()
    acq = cfg.acquisition
    given_path = session.path / "acquisition" / "rois" / "reference_given.npy"
    switches = [e for e in session.acq_events if e.get("kind") == "reference_refined"]
    if len(switches) > 1:
        raise SessionError(f"{session.path / 'acquisition' / 'events.jsonl'}: {len(switches)} reference_refined "
                           "events; a session refines its given reference at most once")
    if switches != [] and not given_path.exists():
        raise SessionError(f"{given_path}: missing, but acquisition/events.jsonl says the given reference was "
                           f"refined at frame {switches[0].get('frame')}: the early frames cannot be re-registered")
    if not switches and given_path.exists():
        raise SessionError(f"{given_path}: present, but acquisition/events.jsonl has no reference_refined event "
                           "saying from which frame rois/reference.npy (the refined reference) was used")
    switch: tuple[int, np.ndarray] | None = None
    if switches:
        refined, reference = reference, _load_image(given_path, (roi_set.Ly, roi_set.Lx))
        assert refined is not None
        switch = (int(switches[0]["frame"]), refined)
    registration = acq.registration
    if registration == session.config.acquisition.registration:  # reproduce the live run: no refinement of its own
        registration = msgspec.structs.replace(registration, refine_reference="never")
        if not acq.registration.enabled:
            switch = None
    else:
        switch = None  # a what-if with other registration settings refines (or not) the given reference itself
    pipeline = FramePipeline(roi_set, reference=reference if acq.registration.enabled else None,
                             registration=registration, extraction=acq.extraction, validation=acq.validation)
    return pipeline, switch


def _load_image(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        image = load_npy(path, allow_objects=False)
    except NpyFileError as exc:
        raise SessionError(str(exc)) from exc
    if image.shape != shape or image.dtype.kind not in "biuf":
        raise SessionError(f"{path}: expected a {shape} image, got {image.dtype} of shape {image.shape}")
    return image


def _inputs_from_traces(session: SessionData, decided: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    index = _frame_index(session)
    frames = session.frames
    assert frames is not None
    for number in decided:
        row = index.get(int(number))
        if row is None:
            raise SessionError(f"{session.path}: the decoder decided frame {int(number)} but acquisition/frames.rec "
                               "has no row for it (the acquisition process died before flushing it?)")
        yield int(number), frames["F"][row], frames["Fneu"][row]


def _observe_lost_frame(pipeline: Any, row: np.void) -> None:
    """A frame the movie lost but the live pipeline registered: its recorded result moves the registrar on as the
    live one moved (the corr baseline, the tracked shift), so the frames after it register as they did live."""
    from acquisition.validate import UNUSABLE, FrameFlag  # noqa: PLC0415 - only the movie replay needs it

    flags = int(row["flags"])
    if pipeline.registrar is not None and not flags & (UNUSABLE | FrameFlag.NOT_REGISTERED) and np.isfinite(row["dy"]):
        pipeline.registrar.observe(float(row["dy"]), float(row["dx"]), float(row["corr"]), flags)


def _inputs_from_movie(session: SessionData, cfg: RigConfig, decided: np.ndarray,
                       traces: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Register and extract every kept frame in order (the pipeline may carry state across frames).

    A frame the movie kept as zeros (listed in ``acquisition/movie_gaps.rec``: lost by the writer, or of the
    wrong size) has no pixels to re-run: its live row of ``frames.rec`` is taken as it is.
    """
    movie = session.movie()
    frames = session.frames
    assert movie is not None and frames is not None
    pipeline, switch = _make_pipeline(session, cfg)
    wanted = set(int(n) for n in decided)
    gaps = read_checked_records(session.path / "acquisition" / GAPS_FILE)
    kept_as_zeros = set() if gaps is None else {int(i) for i in gaps["index"]}
    for i in range(len(traces)):
        if i in kept_as_zeros:
            traces[i] = frames[i]
            _observe_lost_frame(pipeline, frames[i])
            number = int(frames["frame"][i])
            if number in wanted:
                yield number, traces[i]["F"], traces[i]["Fneu"]
            continue
        if switch is not None and int(frames["frame"][i]) >= switch[0]:
            pipeline.switch_reference(switch[1])  # where the live session switched (see _make_pipeline)
            switch = None
        result = pipeline.process(movie[i])
        row = traces[i]
        row["frame"] = frames["frame"][i]
        for name in ("t_ready", "t_registered", "t_extracted", "t_sent"):
            row[name] = frames[name][i]
        row["dy"], row["dx"], row["corr"] = result.dy, result.dx, result.corr
        row["flags"] = int(result.flags) | int(frames["flags"][i])
        row["F"], row["Fneu"] = result.F, result.Fneu
        number = int(frames["frame"][i])
        if number in wanted:
            yield number, row["F"], row["Fneu"]


# ---------------------------------------------------------------------------- the replay


class _ReplayOutput:
    """A :class:`~decoder.core.DecoderOutput` that keeps everything in memory, stamped like the live run.

    Events get the live decision time of the frame they belong to (``t_ns``); nothing is published.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.calibration: dict[str, Any] | None = None
        self.t_ns = 0

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append(_normalise({"kind": kind, "t_ns": self.t_ns, **fields}))

    def trial_event(self, kind: str, trial: int, frame: int, hits: int, trials: int, detail: dict) -> None:
        pass  # the bus copy of the "trial" line: no one listens offline

    def calibration_in_force(self, cal: dict[str, Any]) -> None:
        self.calibration = _normalise(cal)

    def reward_request(self, request_id: str, volume_ul: float, source: str, frame: int, *, override: bool = False,
                       issued_by: str = "") -> None:
        pass  # recorded by the core as a "reward_request" line; no reward process runs offline

    def decision(self, res: Any) -> None:
        pass

    def refused(self, command: str, error: str) -> None:
        pass  # recorded by the core as a "command_failed" line

    def busy(self, what: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _replayable(session: SessionData, use_movie: bool) -> tuple[int, str]:
    """How many decision rows have their input on disk, and why not all (a crash can cut the inputs short).

    Returns the length of the prefix of ``decisions.rec`` whose frames all have an input row, and the reason
    the rest cannot be replayed ("" when none is left out).
    """
    assert session.decisions is not None
    if session.frames is None:
        raise SessionError(f"{session.path}: acquisition/frames.rec is missing; there is nothing to replay")
    numbers = session.frames["frame"]
    inputs = "acquisition/frames.rec"
    if use_movie:
        numbers = numbers[: len(session.movie())]  # type: ignore[arg-type]
        inputs = "acquisition/movie.raw"
    decided = session.decisions["frame"]
    present = np.isin(decided, numbers)
    if present.all():
        return len(decided), ""
    n = int(np.argmin(present))
    first = int(decided[n])
    if not len(numbers) or first > int(numbers[-1]):
        return n, (f"their input frames are not in {inputs}, which ends at frame "
                   f"{int(numbers[-1]) if len(numbers) else -1} (the acquisition process stopped before writing them)")
    return n, (f"decoder/decisions.rec has frame {first}, which {inputs} lacks although it holds later frames: "
               "the files disagree (damaged?)")


def replay(session: SessionData, cfg: RigConfig | None = None, *, from_traces: bool = False, realtime: bool = False,
           progress: bool = True) -> ReplayRun:
    """Re-run the session's decoder (and, from the movie, its pipeline) with ``cfg`` (default: its own).

    The decoder is :class:`decoder.core.DecoderCore`, the object the live decoder process runs.
    """
    own = cfg is None
    cfg = session.config if cfg is None else cfg
    if session.decisions is None:
        raise SessionError(f"{session.path}: decoder/decisions.rec is missing; the decoder never ran")
    # A what-if with other calibration settings means them: the hit rate the operator picked when calibrating
    # live (the calibrate action's argument) would otherwise override them.
    keep_target_args = own or cfg.decoder.calibration == session.config.decoder.calibration
    use_movie = not from_traces and session.movie() is not None
    n, why_not_all = _replayable(session, use_movie)
    original = session.decisions[:n]
    decided = original["frame"]
    traces = None
    if use_movie:
        movie, frames = session.movie(), session.frames
        assert movie is not None and frames is not None
        traces = np.zeros(min(len(frames), len(movie)), dtype=frames.dtype)  # every kept frame is registered
        inputs = _inputs_from_movie(session, cfg, decided, traces)
    else:
        inputs = _inputs_from_traces(session, decided)

    controls = [e for e in session.dec_events if e.get("kind") == "applied"]
    if not controls and any(e.get("kind") == "control" for e in session.dec_events):
        raise SessionError(f"{session.path / 'decoder' / 'events.jsonl'}: operator controls were recorded without "
                           "the frame they took effect after (no 'applied' events); they cannot be replayed")
    rows = np.zeros(n, dtype=decision_record_dtype(session.n_rois))
    stamps = [name for name in STAMP_FIELDS if name in (original.dtype.names or ())]
    output = _ReplayOutput()
    # A calibration computed beside the loop (the end-of-baseline one, the operator's) applies before the frame
    # the live decoder applied it before; a what-if's own calibrations (not in the record) before the next frame.
    core = DecoderCore(cfg.decoder, cfg.task, cfg.reward.volume_ul, session.n_rois, session.frame_rate_hz, output,
                       RecordedCalibrator.from_events(session.dec_events, otherwise_next=not own))

    def apply(control: dict[str, Any]) -> None:
        control = _normalise(control)
        args = dict(control.get("args") or {})
        note = {}
        if control["command"] == "calibrate" and "target_hit_rate" in args and not keep_target_args:
            # recorded as applied, so that replaying the what-if session does the same
            note["what_if_dropped_args"] = {"target_hit_rate": args.pop("target_hit_rate")}
        output.t_ns = int(control.get("t_ns", 0))
        core.apply_control(str(control["command"]), args, **note)

    pending = 0
    t_ready = original["t_ready"]
    has_flags = "flags" in (original.dtype.names or ())
    start_wall = time.perf_counter()
    with tqdm(total=n, unit="frame", desc="replay", disable=not progress, file=sys.stderr, mininterval=0.25) as bar:
        for i, (number, F, Fneu) in enumerate(inputs):
            while pending < len(controls) and int(controls[pending]["after_frame"]) < number:
                apply(controls[pending])
                pending += 1
            if realtime and i:
                ahead = (t_ready[i] - t_ready[0]) / 1e9 - (time.perf_counter() - start_wall)
                if ahead > 0:
                    time.sleep(ahead)
            orig = original[i]
            row = rows[i]
            for name in stamps:
                row[name] = orig[name]
            output.t_ns = int(orig["t_decided"]) if "t_decided" in stamps else 0
            core.decide(number, F, Fneu, int(orig["flags"]) if has_flags else 0, row)
            bar.update(1)
    last = int(decided[-1]) if n else -1
    skipped = []
    for control in controls[pending:]:
        if int(control["after_frame"]) <= last and n == len(session.decisions):
            apply(control)
            pending += 1
        else:
            skipped.append(control)
    # The decoder process writes the stop's own events when it stops; a session that crashed never did.
    if any(e.get("kind") == "trial" and e.get("event") == "stopped" and int(e.get("frame", -2)) == last
           for e in session.dec_events):
        core.finish()
    return ReplayRun(source="movie" if use_movie else "traces", rows=rows, events=output.events,
                     calibration=output.calibration, traces=traces, frames_registered=0 if traces is None else
                     len(traces), controls_applied=pending, controls_skipped=skipped,
                     unreplayable=len(session.decisions) - n, unreplayable_reason=why_not_all)


# ---------------------------------------------------------------------------- checking


def _field_bytes(rows: np.ndarray, name: str) -> np.ndarray:
    column = np.ascontiguousarray(rows[name])
    return column.view(np.uint8).reshape(len(rows), -1)


def _compare_rows(what: str, recorded: np.ndarray, replayed: np.ndarray, fields: list[str],
                  details: list[Mismatch], max_details: int) -> int:
    """Number of rows that differ in any of ``fields``, byte for byte; details of the first ones."""
    if len(recorded) == 0:
        return 0
    bad = np.zeros(len(recorded), dtype=bool)
    per_field: dict[str, np.ndarray] = {}
    for name in fields:
        differs = np.any(_field_bytes(recorded, name) != _field_bytes(replayed, name), axis=1)
        per_field[name] = differs
        bad |= differs
    for i in np.flatnonzero(bad)[: max(0, max_details - len(details))]:
        for name in fields:
            if not per_field[name][i]:
                continue
            rec, rep = np.atleast_1d(recorded[name][i]), np.atleast_1d(replayed[name][i])
            if rec.size == 1:
                details.append(Mismatch(what, int(recorded["frame"][i]), name, rec[0], rep[0]))
                continue
            differs = rec.view(np.uint8).reshape(rec.size, -1) != rep.view(np.uint8).reshape(rep.size, -1)
            j = int(np.flatnonzero(differs.any(axis=1))[0])
            details.append(Mismatch(what, int(recorded["frame"][i]), f"{name}[{j}]", rec[j], rep[j]))
    return int(bad.sum())


def _event_key(event: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in event.items() if k != "t_ns"}, sort_keys=True, separators=(",", ":"))


def check(session: SessionData, run: ReplayRun, max_details: int = 20) -> ReplayReport:
    """Compare a replay made with the session's own config against the session's record."""
    assert session.decisions is not None
    recorded = session.decisions[: len(run.rows)]
    details: list[Mismatch] = []
    replayed_fields = run.rows.dtype.names or ()
    decision_fields = [n for n in recorded.dtype.names or () if n not in STAMP_FIELDS and n in replayed_fields]
    mismatches = _compare_rows("decision", recorded, run.rows, decision_fields, details, max_details)

    last = int(recorded["frame"][-1]) if len(recorded) else -1
    kinds = ("trial", "reward_request")
    rec_events = [_normalise(e) for e in session.dec_events
                  if e.get("kind") in kinds and int(e.get("frame", -1)) <= last]
    rep_events = [e for e in run.events if e.get("kind") in kinds]
    run_calibration = run.calibration
    if session.config.decoder.rules_version == 1:  # recorded by the older decoder: without the fields it lacked
        rec_events = [without_added_fields(e) for e in rec_events]
        rep_events = [without_added_fields(e) for e in rep_events]
        if run_calibration is not None:
            run_calibration = without_added_fields(run_calibration, calibration=True)
    events_checked = max(len(rec_events), len(rep_events))
    rec_keys = [_event_key(e) for e in rec_events]
    rep_keys = [_event_key(e) for e in rep_events]
    # aligned, so that one missing or extra event counts once instead of shifting every later one
    matcher = difflib.SequenceMatcher(None, rec_keys, rep_keys, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        mismatches += max(i2 - i1, j2 - j1)
        for k in range(max(i2 - i1, j2 - j1)):
            if len(details) >= max_details:
                break
            rec = rec_events[i1 + k] if i1 + k < i2 else None
            rep = rep_events[j1 + k] if j1 + k < j2 else None
            some = rec or rep or {}
            details.append(Mismatch("event", int(some.get("frame", -1)),
                                    f"{some.get('kind')} {some.get('event', '')}".strip(),
                                    None if rec is None else rec_keys[i1 + k],
                                    None if rep is None else rep_keys[j1 + k]))

    notes = list(session.notes)
    unchecked_reason = ""  # not a note: a partial check is a result of its own (the CLI's exit code 3)
    if run.unreplayable:
        unchecked_reason = f"the last {run.unreplayable} decision(s) were not replayed: {run.unreplayable_reason}"
    if run.controls_skipped:
        notes.append(f"{len(run.controls_skipped)} operator action(s) came after the last replayed decision "
                     "and were not replayed")
    if run.controls_skipped or run.unreplayable:
        notes.append("the final calibration was not compared (the replay stopped before the record did)")
    elif session.calibration is not None or run_calibration is not None:
        events_checked += 1
        rec_cal = _normalise(session.calibration) if session.calibration is not None else None
        if rec_cal is not None and session.config.decoder.rules_version == 1:
            rec_cal = without_added_fields(rec_cal, calibration=True)
        if (rec_cal is None or run_calibration is None
                or _event_key(rec_cal) != _event_key(run_calibration)):
            mismatches += 1
            if len(details) < max_details:
                differing = "" if rec_cal is None or run_calibration is None else ", ".join(sorted(
                    key for key in set(rec_cal) | set(run_calibration) if rec_cal.get(key) != run_calibration.get(key)))
                where = f"decoder/calibration.json ({differing} differ)" if differing else "decoder/calibration.json"
                details.append(Mismatch("calibration", -1, where,
                                        None if rec_cal is None else _event_key(rec_cal),
                                        None if run_calibration is None else _event_key(run_calibration)))

    traces_checked = 0
    if run.traces is not None:
        assert session.frames is not None
        recorded_traces = session.frames[: len(run.traces)]
        traces_checked = len(run.traces)
        mismatches += _compare_rows("trace", recorded_traces, run.traces, list(TRACE_FIELDS), details, max_details)
        extra_flags = np.flatnonzero(run.traces["flags"] & ~recorded_traces["flags"])
        mismatches += int(extra_flags.size)
        for i in extra_flags[: max(0, max_details - len(details))]:
            details.append(Mismatch("trace", int(recorded_traces["frame"][i]), "flags",
                                    int(recorded_traces["flags"][i]), int(run.traces["flags"][i])))
    from rig.offline.feedback import check_feedback  # noqa: PLC0415 - the animal's feedback, recomputed
    flips_checked, bad = check_feedback(session.path, session.config.feedback, recorded, session.dec_events)
    events_checked, mismatches = events_checked + flips_checked, mismatches + len(bad)
    details += [Mismatch("feedback", *m) for m in bad][: max(0, max_details - len(details))]
    return ReplayReport(source=run.source, frames=len(run.rows), decisions_checked=len(run.rows),
                        events_checked=events_checked, traces_checked=traces_checked, mismatches=mismatches,
                        first_mismatches=details, notes=notes, frames_registered=run.frames_registered,
                        decisions_unchecked=run.unreplayable, unchecked_reason=unchecked_reason)


# ---------------------------------------------------------------------------- helpers


def _brief(value: Any, limit: int = 200) -> Any:
    """A value short enough for the one-line JSON result (long ones are cut, and say so)."""
    text = value if isinstance(value, str) else json.dumps(value, default=json_default)
    return value if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _normalise(obj: Any) -> Any:
    """The value as it reads back from a JSON log (numpy scalars become Python numbers, tuples lists)."""
    return json.loads(json.dumps(obj, default=json_default))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
