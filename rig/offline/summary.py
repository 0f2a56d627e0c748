"""The machine-readable result of a session, computed from the files the processes wrote.

Reading the files (not counters kept in memory) means the summary of a crashed session can be
recomputed later with ``rig summary SESSION``, and what is reported is exactly what is on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rig.core.movie_file import GAP_LOST, GAPS_FILE
from rig.offline.feedback import feedback_latency
from rig.offline.numbers import hit_rate
from rig.offline.session_checks import movie_layout, read_checked_events, read_checked_records, read_json_object

#: Requests that are rewards for the mouse (test pulses, calibration and flushes are not counted as rewards).
REWARD_SOURCES = ("decoder", "manual")


def percentiles_ms(values_ns: np.ndarray) -> dict[str, float | None]:
    if values_ns.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    ms = values_ns.astype(np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "max": round(float(ms.max()), 4), "n": int(ms.size)}


def _frame_rate_hz(session_dir: Path) -> float:
    """The rate the acquisition reported when ready (its ``state: ready`` event), 0.0 when it never was."""
    for event in read_checked_events(session_dir / "acquisition" / "events.jsonl", {"state"}):
        if event.get("state") == "ready":
            try:
                return float(event.get("frame_rate_hz", 0.0))
            except (TypeError, ValueError):
                return 0.0
    return 0.0


def late_decisions(session_dir: Path, decisions: np.ndarray | None) -> dict[str, Any]:
    """Decisions made more than one frame period after their frame was ready, and what the decoder said of why.

    Counted from ``decisions.rec`` (so a crashed session's are counted too); the causes are the decoder's
    ``late_decision`` events (``cause_kind``: gc, flush, acquisition, bus hop, decoder).
    """
    rate = _frame_rate_hz(session_dir)
    if decisions is None or not len(decisions) or rate <= 0:
        return {"late_decisions": 0, "late_decision_causes": {}}
    latency = decisions["t_decided"] - decisions["t_ready"]
    late = int(np.count_nonzero((latency > int(1e9 / rate)) & (decisions["t_ready"] > 0)))
    causes: dict[str, int] = {}
    for event in read_checked_events(session_dir / "decoder" / "events.jsonl", {"late_decision"}):
        kind = str(event.get("cause_kind", "unknown"))
        causes[kind] = causes.get(kind, 0) + 1
    return {"late_decisions": late, "late_decision_causes": causes}


def movie_size(session_dir: Path, acq: np.ndarray | None) -> dict[str, Any]:
    """Bytes the saved movie takes on disk per minute of session, and how much the codec saved."""
    meta_path = session_dir / "acquisition" / "movie.json"
    meta = read_json_object(meta_path)
    if meta is None:
        return {}
    dtype, height, width = movie_layout(meta_path, meta)
    codec = meta.get("codec", "raw")
    movie = session_dir / "acquisition" / ("movie.zchunks" if codec == "zstd" else "movie.raw")
    size = movie.stat().st_size if movie.exists() else 0
    out: dict[str, Any] = {"movie_codec": codec, "movie_bytes": size, **movie_frames_lost(session_dir)}
    rate = _frame_rate_hz(session_dir)
    if acq is not None and len(acq) and rate > 0:
        minutes = len(acq) / rate / 60.0
        out["movie_bytes_per_min"] = int(size / minutes)
        raw = len(acq) * height * width * dtype.itemsize
        out["movie_compression"] = round(raw / size, 3) if size else None
    return out


def movie_frames_lost(session_dir: Path) -> dict[str, Any]:
    """Movie frames the writer lost (kept as zeros) because it fell a full buffer behind, and the chunks it stored
    uncompressed to keep up: from ``movie_gaps.rec`` (reason 1), else the acquisition's ``movie_frames_lost``
    event (sessions from before the record; a crash before the stop leaves no event)."""
    gaps = read_checked_records(session_dir / "acquisition" / GAPS_FILE)
    written = read_checked_events(session_dir / "acquisition" / "events.jsonl", {"movie_frames_lost", "movie_written"})
    raw_chunks = sum(int(e.get("raw_chunks", 0)) for e in written if e["kind"] == "movie_written")
    if gaps is not None:
        lost = int(np.count_nonzero(gaps["reason"] == GAP_LOST))
    else:
        lost = sum(int(e.get("frames", 0)) for e in written if e["kind"] == "movie_frames_lost")
    return {"movie_frames_lost": lost, "movie_raw_chunks": raw_chunks}


def _dispensed(outcome: dict[str, Any]) -> float:
    return float(outcome.get("dispensed_ul", outcome.get("volume_ul", 0.0)))


def n_planes(session_dir: Path) -> int:
    """Planes per volume the session recorded (``[acquisition] n_planes``; 1 for a session from before the key)."""
    cfg = read_json_object(session_dir / "config.resolved.json") or {}
    acq = cfg.get("acquisition", {})
    value = acq.get("n_planes", 1) if isinstance(acq, dict) else 1
    return value if isinstance(value, int) and value >= 1 else 1


def plane_counts(session_dir: Path, acq_final: list[dict[str, Any]], notes: list[str] | None) -> dict[str, Any]:
    """Per plane (several planes only): frames recorded, frames flagged (any flag, as ``bad_frames``) and frames the
    source skipped, from each plane's ``frames.rec`` (so a crashed session's are counted too); and the frames
    whose plane index was out of range (the acquisition's ``final_stats``). With one plane only that count, and
    only when a source sent such frames: a single-plane session's summary is as it was."""
    planes = n_planes(session_dir)
    final = acq_final[-1] if acq_final else {}
    stray = final.get("plane_out_of_range", 0)
    stray = int(stray) if isinstance(stray, int) else 0
    if planes == 1:
        return {"plane_out_of_range": stray} if stray else {}
    cfg = read_json_object(session_dir / "config.resolved.json") or {}
    bci = int(cfg.get("acquisition", {}).get("bci_plane", 0))
    out: dict[str, dict[str, Any]] = {}
    for plane in range(planes):
        folder = session_dir / "acquisition" / ("" if plane == bci else f"planes/plane{plane}")
        rows = read_checked_records(folder / "frames.rec", notes)
        n = 0 if rows is None else len(rows)
        holes = int(rows["frame"][-1] - rows["frame"][0] + 1 - n) if n else 0
        out[str(plane)] = {"bci": plane == bci, "frames": n,
                           "bad_frames": 0 if rows is None else int(np.count_nonzero(rows["flags"])),
                           "frames_dropped": max(holes, 0)}
    return {"n_planes": planes, "planes": out, "plane_out_of_range": stray}


def session_kind(session_dir: Path) -> str:
    """"recording" for frames only (``rig run --record-only``: no decoder, reward or trials), else "bci"."""
    cfg = read_json_object(session_dir / "config.resolved.json") or {}
    session = cfg.get("session", {})
    return "recording" if isinstance(session, dict) and session.get("record_only") is True else "bci"


def summarize_session(session_dir: str | Path, notes: list[str] | None = None) -> dict[str, Any]:
    """The summary of the session in ``session_dir``. A damaged file raises ValueError naming it (record layouts,
    frame order and the event fields used here are checked), never a wrong number or a bare TypeError; what a
    crash left (a torn final record) is ignored and, when ``notes`` is given, noted there."""
    session_dir = Path(session_dir)
    kind = session_kind(session_dir)
    summary: dict[str, Any] = {"session": str(session_dir.resolve()), "kind": kind}
    decisions_path = session_dir / "decoder" / "decisions.rec"
    decisions = read_checked_records(decisions_path, notes) if decisions_path.exists() else None
    acq_path = session_dir / "acquisition" / "frames.rec"
    acq = read_checked_records(acq_path, notes) if acq_path.exists() else None

    acq_final = read_checked_events(session_dir / "acquisition" / "events.jsonl", {"final_stats"})
    bad_frames = int(acq_final[-1].get("bad_frames", 0)) if acq_final else 0
    n_acq = 0 if acq is None else len(acq)
    n_dec = 0 if decisions is None else len(decisions)
    source_dropped = 0
    if acq_final:
        source_dropped = int(acq_final[-1].get("frames_dropped", 0))
    elif acq is not None and n_acq:  # crashed before final_stats: count the holes in the frame numbers
        source_dropped = int(acq["frame"][-1] - acq["frame"][0] + 1 - n_acq)
    summary["frames"] = n_dec if kind == "bci" else n_acq  # decided; in a recording, recorded
    summary["frames_acquired"] = n_acq
    # a recording has no decoder: its frames are the acquired ones, none lost between acquisition and decoder
    summary["frames_dropped"] = max(source_dropped, 0) + (max(n_acq - n_dec, 0) if kind == "bci" else 0)
    summary["bad_frames"] = bad_frames
    # frames a scope streamed before the session ran, drained and discarded (a TCP source's reader)
    source_stats = acq_final[-1].get("source_stats") if acq_final else None
    before = source_stats.get("frames_before_start", 0) if isinstance(source_stats, dict) else 0
    summary["frames_before_start"] = int(before) if isinstance(before, (int, float)) else 0
    summary.update(plane_counts(session_dir, acq_final, notes))

    trial_events = read_checked_events(session_dir / "decoder" / "events.jsonl", {"trial"})
    summary["trials"] = sum(1 for e in trial_events if e.get("event") == "trial_start")
    summary["hits"] = sum(1 for e in trial_events if e.get("event") == "hit")
    summary["misses"] = sum(1 for e in trial_events if e.get("event") == "miss")
    summary["completed_trials"] = summary["hits"] + summary["misses"]
    rate = hit_rate(summary["hits"], summary["misses"])  # the one definition the report uses too
    summary["hit_rate"] = None if rate is None else round(rate, 4)

    all_outcomes = read_checked_events(session_dir / "reward" / "events.jsonl", {"reward_outcome"})
    outcomes = [o for o in all_outcomes if o.get("source") in REWARD_SOURCES]
    delivered = [o for o in outcomes if o.get("status") == "delivered"]
    summary["rewards_delivered"] = len(delivered)
    summary["rewards_failed"] = len(outcomes) - len(delivered)  # failed or refused: never silent
    summary["rewards_refused"] = sum(1 for o in outcomes if o.get("status") == "refused")
    summary["other_pulses"] = len(all_outcomes) - len(outcomes)  # test pulses, calibration, flush
    # What the valve dispensed (the board's measured open time, reconciled after a lost reply), else the request's.
    summary["volume_ul"] = round(sum(_dispensed(o) for o in delivered), 3)
    others = [o for o in all_outcomes if o.get("source") not in REWARD_SOURCES and o.get("status") == "delivered"]
    summary["other_volume_ul"] = round(sum(_dispensed(o) for o in others), 3)  # test pulses, flushes: not rewards

    if decisions is not None and n_dec:
        summary["latency_ms"] = percentiles_ms(decisions["t_decided"] - decisions["t_ready"])
    else:
        summary["latency_ms"] = percentiles_ms(np.empty(0))
    rewarded = [o for o in outcomes if o.get("source") == "decoder" and o.get("t_written", 0) > 0
                and o.get("t_ready", 0) > 0]
    summary["reward_latency_ms"] = percentiles_ms(
        np.array([o["t_written"] - o["t_ready"] for o in rewarded], dtype=np.int64)
    )
    acked = [o for o in rewarded if o.get("t_ack", 0) > 0]
    summary["reward_ack_latency_ms"] = percentiles_ms(
        np.array([o["t_ack"] - o["t_ready"] for o in acked], dtype=np.int64)
    )
    summary.update(late_decisions(session_dir, decisions))
    summary.update(movie_size(session_dir, acq))
    summary.update(feedback_latency(session_dir, notes))  # decision -> flip / audio block; nothing without feedback
    return summary
