"""Feedback to the animal, offline: its latencies (summary, bench), its replay check and what-if, its NWB series.

Everything here reads what the feedback process wrote (``feedback/flips.rec``, ``feedback/audio_updates.rec``)
or recomputes it with :func:`reward.feedback.plan.plan_session`, the pure function the process itself runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reward.feedback.config import FeedbackConfig
from reward.feedback.plan import plan_session
from rig.core.store import EventLog, RecordWriter
from rig.offline.session_checks import read_checked_records

PLAN_DTYPE = np.dtype([("frame", "i8"), ("t_ns", "i8"), ("tone_hz", "f4"), ("orientation_deg", "f4"),
                       ("phase", "f4"), ("perceived", "f4")])
#: flips.rec columns a replay must reproduce exactly (as recorded: float32).
CHECKED_FIELDS = ("tone_hz", "orientation_deg", "phase", "perceived")


def feedback_records(session_dir: str | Path, notes: list[str] | None = None) -> tuple[Any, Any]:
    """(flips, audio updates) rows, each None when the session has no such file."""
    folder = Path(session_dir) / "feedback"
    return (read_checked_records(folder / "flips.rec", notes),
            read_checked_records(folder / "audio_updates.rec", notes))


def feedback_latency(session_dir: str | Path, notes: list[str] | None = None) -> dict[str, Any]:
    """Decision → grating flip and decision → first audio block with the new pitch (ms percentiles); {} without
    feedback. The summary adds these keys; ``rig bench`` prints them as stages."""
    from rig.offline.summary import percentiles_ms  # noqa: PLC0415 - summary.py may import this module

    flips, audio = feedback_records(session_dir, notes)
    if flips is None and audio is None:
        return {}
    out: dict[str, Any] = {"feedback_updates": 0 if flips is None else len(flips)}
    if flips is not None:
        shown = flips[flips["t_flip"] > 0]
        out["feedback_flip_latency_ms"] = percentiles_ms(shown["t_flip"] - shown["t_decided"])
    if audio is not None:
        played = audio[audio["t_audio"] > 0]
        out["feedback_audio_latency_ms"] = percentiles_ms(played["t_audio"] - played["t_decided"])
    return out


def bench_stages(session_dir: str | Path) -> dict[str, Any]:
    """The feedback latencies under ``rig bench``'s stage names (empty without feedback)."""
    lat = feedback_latency(session_dir)
    stages = {}
    if "feedback_flip_latency_ms" in lat:
        stages["feedback decision->grating flip"] = lat["feedback_flip_latency_ms"]
    if "feedback_audio_latency_ms" in lat:
        stages["feedback decision->audio block"] = lat["feedback_audio_latency_ms"]
    return stages


def check_feedback(session_dir: str | Path, cfg: FeedbackConfig, decisions: np.ndarray,
                   events: list[dict[str, Any]]) -> tuple[int, list[tuple[int, str, Any, Any]]]:
    """Replay's check: the recomputed stimulus of every recorded flip equals the recorded one.

    Returns (flips checked, mismatches as (frame, "feedback/flips.rec FIELD", recorded, replayed)); no flips: (0, []).
    """
    flips, _ = feedback_records(session_dir)
    if flips is None or not len(flips):
        return 0, []
    planned, _ = plan_session(cfg, decisions, events)
    index = {int(f): i for i, f in enumerate(planned["frame"])}
    mismatches: list[tuple[int, str, Any, Any]] = []
    for row in flips:
        frame = int(row["frame"])
        i = index.get(frame)
        if i is None:
            mismatches.append((frame, "feedback/flips.rec frame", frame, None))
            continue
        for name in CHECKED_FIELDS:
            rec = np.float32(row[name])
            rep = np.float32(planned[name][i])
            if not (rec == rep or (np.isnan(rec) and np.isnan(rep))):
                mismatches.append((frame, f"feedback/flips.rec {name}", float(rec), float(rep)))
    return len(flips), mismatches


def write_feedback_plan(out_dir: Path, cfg: FeedbackConfig, decisions: np.ndarray,
                        events: list[dict[str, Any]]) -> int:
    """A what-if session's feedback: ``feedback/plan.rec`` (one row per decision) and its cues in
    ``feedback/events.jsonl``; returns the rows written."""
    planned, cues = plan_session(cfg, decisions, events)
    folder = out_dir / "feedback"
    folder.mkdir(parents=True, exist_ok=True)
    writer = RecordWriter(folder / "plan.rec", PLAN_DTYPE, capacity=max(1, len(planned["frame"])))
    for i in range(len(planned["frame"])):
        row = writer.next_row()
        for name in PLAN_DTYPE.names or ():
            row[name] = planned[name][i]
        writer.commit()
    writer.close()
    log = EventLog(folder / "events.jsonl")
    for cue in cues:
        log.write("trial_cue", cue=cue.kind, frame=cue.frame, t_ns=cue.t_ns)
    log.close()
    return len(planned["frame"])


def add_feedback_stimulus(nwbfile: Any, session_dir: str | Path, seconds: Any) -> bool:
    """NWB: the presented tone frequency and grating orientation as stimulus TimeSeries (NaN: silent / grey),
    stamped at the grating flip (or the decision when no display ran). False when there was no feedback."""
    flips, audio = feedback_records(session_dir)
    if flips is None or not len(flips):
        return False
    from pynwb import TimeSeries  # noqa: PLC0415 - the nwb extra

    stamps = np.where(flips["t_flip"] > 0, flips["t_flip"], flips["t_decided"])
    t = seconds(stamps)
    nwbfile.add_stimulus(TimeSeries(name="feedback_grating_orientation", data=flips["orientation_deg"].astype(
        np.float64), unit="degrees", timestamps=t, description="grating orientation shown to the animal after "
        "each decision (NaN: grey screen); timestamps: the flip"))
    if audio is not None and len(audio):
        played = audio["t_audio"] > 0
        t_audio = seconds(np.where(played, audio["t_audio"], audio["t_decided"]))
        nwbfile.add_stimulus(TimeSeries(name="feedback_tone_frequency", data=audio["tone_hz"].astype(np.float64),
                                        unit="Hz", timestamps=t_audio, description="feedback tone pitch from each "
                                        "update on (NaN: silent); timestamps: first audio sample carrying it"))
    else:
        nwbfile.add_stimulus(TimeSeries(name="feedback_tone_frequency", data=flips["tone_hz"].astype(np.float64),
                                        unit="Hz", timestamps=t, description="feedback tone pitch per decision "
                                        "(NaN: silent); no audio output ran"))
    return True
