"""The machine-readable result of a session, computed from the files the processes wrote.

Reading the files (not counters kept in memory) means the summary of a crashed session can be
recomputed later with ``rig summary SESSION``, and what is reported is exactly what is on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rig.offline.feedback import feedback_latency
from rig.offline.numbers import hit_rate
from rig.offline.session_checks import read_checked_events, read_checked_records

#: Requests that are rewards for the mouse (test pulses, calibration and flushes are not counted as rewards).
REWARD_SOURCES = ("decoder", "manual")


def percentiles_ms(values_ns: np.ndarray) -> dict[str, float | None]:
    if values_ns.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    ms = values_ns.astype(np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "max": round(float(ms.max()), 4), "n": int(ms.size)}


def _dispensed(outcome: dict[str, Any]) -> float:
    return float(outcome.get("dispensed_ul", outcome.get("volume_ul", 0.0)))


def summarize_session(session_dir: str | Path, notes: list[str] | None = None) -> dict[str, Any]:
    """The summary of the session in ``session_dir``. A damaged file raises ValueError naming it (record layouts,
    frame order and the event fields used here are checked), never a wrong number or a bare TypeError; what a
    crash left (a torn final record) is ignored and, when ``notes`` is given, noted there."""
    session_dir = Path(session_dir)
    summary: dict[str, Any] = {"session": str(session_dir.resolve())}
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
    summary["frames"] = n_dec
    summary["frames_acquired"] = n_acq
    summary["frames_dropped"] = max(source_dropped, 0) + max(n_acq - n_dec, 0)
    summary["bad_frames"] = bad_frames
    # frames a scope streamed before the session ran, drained and discarded (a TCP source's reader)
    source_stats = acq_final[-1].get("source_stats") if acq_final else None
    before = source_stats.get("frames_before_start", 0) if isinstance(source_stats, dict) else 0
    summary["frames_before_start"] = int(before) if isinstance(before, (int, float)) else 0

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
    summary.update(feedback_latency(session_dir, notes))  # decision -> flip / audio block; nothing without feedback
    return summary
