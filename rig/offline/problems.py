"""What made a session worthless although every process ran and stopped in order: ``summary.json`` ``problems``.

A session can end with every process stopped cleanly and still hold nothing usable: no frame ever arrived
(the scope streamed to another port), every frame was flagged bad (a frame size set wrong), the calibration
failed (so the task idled to the end), or simply no trial ran. Each of those makes ``ok`` false, with one
sentence per problem that carries the numbers, so neither the exit code of ``rig run`` nor the summary can
say "ok" about it. Everything is read from the session folder, so ``rig summary`` finds the same problems
later (also in a session that crashed).

A recording (``rig run --record-only``, summary ``kind: "recording"``) is judged on its frames only (none
acquired, every one bad, too many lost from the movie); it has no calibration, trial or reward to miss.

An operator who stops the session (Ctrl-C, the console's stop) before any trial is not a problem by itself: a
baseline-only recording is a legitimate session. A session that ends on its own (``--duration``, the task's
end, the end of a replayed movie) without a trial is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from acquisition.validate import FrameFlag, flag_names
from rig.offline.session_checks import read_checked_events, read_checked_records, read_json_object

#: At least this fraction of the frames flagged bad is "every frame bad".
ALL_BAD_FRACTION = 0.95
#: Flags that say something about a frame without making it bad here: the frames before a live-built
#: registration reference (NOT_REGISTERED) and the first frame after a gap (AFTER_GAP) are still decoded.
INFORMATIONAL_FLAGS = int(FrameFlag.NOT_REGISTERED | FrameFlag.AFTER_GAP)
#: More than this fraction of the movie's frames lost by its writer (kept as zeros, listed in movie_gaps.rec) is
#: a problem: a baseline for ROI detection or an offline re-analysis then misses whole stretches of the session.
MOVIE_LOST_FRACTION = 0.01
#: Beginnings of the stop reasons with which the rig ended the session by itself (rig.app.supervisor).
AUTOMATIC_STOPS = ("duration of ", "task finished", "the frame source ended", "failure")
#: The keys of summary.json that say how the session ended (not recomputable from the processes' files alone).
OUTCOME_KEYS = ("ok", "stop_reason", "failed_process", "failure")


def stopped_by_operator(stop_reason: str) -> bool:
    """Whether a person ended the session (Ctrl-C, SIGTERM, the console's stop), not the rig by itself."""
    return bool(stop_reason) and not stop_reason.startswith(AUTOMATIC_STOPS)


def describe_source(acquisition: dict[str, Any]) -> str:
    """Where the frames were expected from, in the words an operator checks the scope side with."""
    source = acquisition.get("source", "?")
    if source == "cloose_tcp":
        c = acquisition.get("cloose_tcp", {})
        if c.get("mode") == "connect":
            return (f"the rig dialled the scope at {c.get('host', '?')}:{c.get('port', '?')} for its raw TCP frames "
                    f"([acquisition.cloose_tcp] mode = \"connect\"): is the scope's sender listening there?")
        return (f"the rig listened on {c.get('host', '?')}:{c.get('port', '?')} for the scope's raw TCP frames "
                f"([acquisition.cloose_tcp]): is the scope streaming to this PC and port?")
    if source == "zmq_stream":
        z = acquisition.get("zmq_stream", {})
        how = "bound" if z.get("bind") else "connected to"
        return (f"the rig {how} {z.get('endpoint', '?')} (topic {z.get('topic', 'frame')!r}) for the frame stream "
                f"([acquisition.zmq_stream]): is the publisher running, at that address, with that topic?")
    if source == "scanbox_mmap":
        path = acquisition.get("scanbox_mmap", {}).get("path", "?")
        return (f"no frame appeared in Scanbox's memory-mapped file {path} ([acquisition.scanbox_mmap]): is Scanbox "
                "imaging with memory-mapped sharing on, into that file?")
    if source == "scanimage_tcp":
        c = acquisition.get("scanimage_tcp", {})
        return (f"no frame from ScanImage's user function on {c.get('host', '?')}:{c.get('port', '?')} "
                "([acquisition.scanimage_tcp]): is bciRigStream enabled in ScanImage's User Functions and acquiring?")
    if source == "prairieview":
        c = acquisition.get("prairieview", {})
        return (f"no raw samples from PrairieView ({c.get('transport', '?')} at {c.get('host', '?')}:"
                f"{c.get('port', '?')}, [acquisition.prairieview]): is the relay running and the raw stream (-srd) on?")
    if source == "replay":
        return f"the replayed movie {acquisition.get('replay', {}).get('path', '?')} gave no frame"
    return f"the {source} source gave no frame"


def _running_s(session_dir: Path) -> float | None:
    """Seconds from every process running to the stop (None when the supervisor's log does not say)."""
    events = read_checked_events(session_dir / "supervisor.events.jsonl", {"session_start", "stop_requested",
                                                                            "failure"})
    starts = [e["t_ns"] for e in events if e["kind"] == "session_start"]
    ends = [e["t_ns"] for e in events if e["kind"] != "session_start"]
    if not starts or not ends:
        return None
    return max(0.0, (min(ends) - starts[0]) / 1e9)


def _config(session_dir: Path) -> dict[str, Any]:
    return read_json_object(session_dir / "config.resolved.json") or {}


def _bad_frames(session_dir: Path, summary: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
    """(bad, acquired, flag name -> frames): bad means a flag beyond :data:`INFORMATIONAL_FLAGS`."""
    rows = read_checked_records(session_dir / "acquisition" / "frames.rec")
    if rows is None or not len(rows):
        return int(summary.get("bad_frames", 0)), int(summary.get("frames_acquired", 0)), {}
    flags = np.asarray(rows["flags"], dtype=np.int64)
    bad = flags & ~INFORMATIONAL_FLAGS
    per_flag = {name: int(np.count_nonzero(flags & int(FrameFlag[name])))
                for name in flag_names(int(np.bitwise_or.reduce(bad))) if name}
    return int(np.count_nonzero(bad)), len(rows), per_flag


def _first_warning(session_dir: Path, process: str, codes: tuple[str, ...]) -> str:
    for event in read_checked_events(session_dir / process / "events.jsonl", {"warning"}):
        if event.get("code") in codes:
            return str(event.get("message", ""))
    return ""


def _calibration(session_dir: Path) -> tuple[bool, str]:
    """(calibrated at some point, the last calibration failure or "")."""
    calibrated = (session_dir / "decoder" / "calibration.json").exists()
    failure = ""
    for event in read_checked_events(session_dir / "decoder" / "events.jsonl", {"trial", "command_failed"}):
        if event["kind"] == "trial" and event.get("event") == "calibrated":
            calibrated = True
        elif (event["kind"] == "trial" and event.get("event") == "calibration_failed") or (
                event["kind"] == "command_failed" and event.get("command") == "calibrate"):
            failure = str(event.get("error", "no reason given"))
    return calibrated, failure


def _why_no_trial(session_dir: Path, running_s: float | None, cfg: dict[str, Any]) -> str:
    events = read_checked_events(session_dir / "decoder" / "events.jsonl", {"trial"})
    seen = {str(e.get("event")) for e in events}
    task = cfg.get("task", {})
    took = f" {running_s:.0f} s after the start" if running_s is not None else ""
    if "baseline_start" not in seen:
        return f"the baseline was never started; the session ended{took}"
    if "baseline_done" not in seen and "baseline_loaded" not in seen:
        baseline_s = float(task.get("baseline_s", 0.0))
        trial_s = float(task.get("iti_s", 0.0)) + float(task.get("trial_s", 0.0))
        return (f"the session ended{took}, during the {baseline_s:g} s baseline; a trial needs the baseline and "
                f"about {trial_s:g} s more (ITI + trial): run longer (--duration) or shorten task.baseline_s")
    if "bci_start" not in seen:
        return f"BCI was never started after the baseline; the session ended{took}"
    return f"BCI started but no trial began before the session ended{took}"


def silent_planes(summary: dict[str, Any], acquired: int) -> list[str]:
    """With several planes, a plane that recorded nothing while the BCI plane did: its dendrites are not there."""
    planes = summary.get("planes", {})
    if not acquired or not isinstance(planes, dict):
        return []
    return [f"plane {plane} recorded no frame while the BCI plane recorded {acquired}: is the scope imaging "
            f"{len(planes)} planes and sending each plane's index ([acquisition] n_planes)?"
            for plane, counts in planes.items()
            if isinstance(counts, dict) and not counts.get("bci") and counts.get("frames") == 0]


def session_problems(session_dir: str | Path, summary: dict[str, Any], stop_reason: str) -> list[str]:
    """The problems of the session in ``session_dir`` (``summary``: its :func:`summarize_session` numbers)."""
    session_dir = Path(session_dir)
    cfg = _config(session_dir)
    running_s = _running_s(session_dir)
    problems: list[str] = []
    during = f" in {running_s:.0f} s of session" if running_s is not None else ""
    bad, acquired, per_flag = _bad_frames(session_dir, summary)
    if acquired == 0:
        problems.append(f"no frame was acquired{during}: {describe_source(cfg.get('acquisition', {}))}")
    elif bad >= ALL_BAD_FRACTION * acquired:
        flags = ", ".join(f"{name} on {n}" for name, n in sorted(per_flag.items(), key=lambda kv: -kv[1]))
        hint = _first_warning(session_dir, "acquisition", ("wrong_shape",))
        problems.append(f"{bad} of {acquired} frames ({bad / acquired * 100:.0f} %) were flagged bad"
                        + (f" ({flags})" if flags else "") + (f"; first warning: {hint}" if hint else ""))
    problems += silent_planes(summary, acquired)
    lost = int(summary.get("movie_frames_lost", 0))
    if acquired and lost > MOVIE_LOST_FRACTION * acquired:
        problems.append(f"{lost} of {acquired} movie frames ({lost / acquired * 100:.1f} %, more than "
                        f"{MOVIE_LOST_FRACTION * 100:g} %) were lost by the movie writer (kept as zeros, listed in "
                        "acquisition/movie_gaps.rec): the disk or the CPU could not keep up with saving the frames")
    if summary.get("kind") == "recording":  # frames only: no calibration, trial or reward to judge
        return problems
    calibrated, failure = _calibration(session_dir)
    if failure and not calibrated:
        problems.append(f"the calibration failed and the session was never calibrated, so no trial could run: "
                        f"{failure}")
    if int(summary.get("trials", 0)) == 0 and not stopped_by_operator(stop_reason) and stop_reason != "failure":
        if problems:
            problems.append("no trial ran (because of the problem above)")
        else:
            problems.append(f"no trial ran: {_why_no_trial(session_dir, running_s, cfg)}")
    return problems


def recorded_outcome(session_dir: str | Path) -> dict[str, Any]:
    """How the session ended, as the rig recorded it: ``summary.json``'s outcome keys, else the supervisor's log.

    Adds ``ended: False`` when the supervisor's log shows a session that never reached its stop (the supervisor
    itself was killed); ``{}`` when there is no record at all (a folder not written by ``rig run``).
    """
    session_dir = Path(session_dir)
    previous = read_json_object(session_dir / "summary.json")
    if previous is not None and "ok" in previous:
        return {k: previous[k] for k in OUTCOME_KEYS if k in previous}
    log = session_dir / "supervisor.events.jsonl"
    if not log.exists():
        return {}
    events = read_checked_events(log, {"stop_requested", "failure"})
    outcome: dict[str, Any] = {}
    failures = [e for e in events if e["kind"] == "failure"]
    stops = [e for e in events if e["kind"] == "stop_requested"]
    if failures:
        outcome.update(stop_reason="failure", failed_process=str(failures[0].get("process", "?")),
                       failure=str(failures[0].get("reason", "")))
    elif stops:
        outcome["stop_reason"] = str(stops[0].get("reason", ""))
    else:
        outcome["ended"] = False
    return outcome


def with_outcome(summary: dict[str, Any], outcome: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """``summary`` with ``ok``, ``stop_reason`` and ``problems`` (and ``failed_process``/``failure`` on failure).

    ``ok`` is true only for a session that neither failed nor has a problem; a session whose end is not
    recorded (``ended`` false in ``outcome``) gets that as a problem.
    """
    problems = list(problems)
    if outcome.get("ended") is False:
        problems.insert(0, "the session has no recorded end (no stop and no failure in supervisor.events.jsonl): "
                           "the supervisor itself was killed or crashed")
    out = dict(summary)
    out["ok"] = "failure" not in outcome and not problems
    out["stop_reason"] = str(outcome.get("stop_reason", ""))
    out["problems"] = problems
    for key in ("failed_process", "failure"):
        if key in outcome:
            out[key] = outcome[key]
    return out
