"""Late decisions (> one frame period after the frame was ready): counted, explained, in the summary."""

from __future__ import annotations

import gc
import json

import numpy as np

from decoder.lateness import LateWatch
from rig.core.realtime import GcWatch, IdleCollector
from rig.offline.summary import late_decisions

MS = 1_000_000


def _watch():
    events, warnings = [], []
    watch = LateWatch(30.0, lambda kind, **f: events.append({"kind": kind, **f}), lambda c, m: warnings.append(m))
    return watch, events, warnings


def test_on_time_decisions_are_not_counted_and_late_ones_say_where_the_time_went():
    watch, events, warnings = _watch()
    t = 1_000 * MS
    watch.observe(1, (t, t + 1 * MS, t + 2 * MS, t + 2 * MS), t + 3 * MS, t + 4 * MS)  # 4 ms: on time
    assert watch.late == 0 and not events
    watch.observe(2, (t, t + 40 * MS, t + 41 * MS, t + 41 * MS), t + 42 * MS, t + 43 * MS)  # acquisition slow
    watch.flushed(5.0)  # the decoder's write after frame 2 took 5 ms...
    watch.observe(3, (t, t + 1 * MS, t + 2 * MS, t + 2 * MS), t + 36 * MS, t + 37 * MS)  # ...frame 3 waited
    watch.close()
    assert watch.late == 2 and watch.stats()["causes"] == {"acquisition ready->registered": 1, "flush": 1}
    assert [e["frame"] for e in events] == [2, 3] and events[1]["cause"] == "decoder records flush (5.0 ms)"
    assert len(warnings) == 1 and "frame 2" in warnings[0]  # rate-limited: the second is in the next warning


def test_gc_passes_are_seen_and_the_idle_collector_collects_only_when_due():
    watch = GcWatch()
    gc.collect()
    passes, ms, generation = watch.since()
    watch.close()
    assert passes >= 1 and generation == 2 and ms >= 0
    idle = IdleCollector()
    try:
        assert not gc.isenabled()
        junk = [[i] for i in range(idle.thresholds[0] + 10)]  # noqa: F841 - allocations to make a collection due
        idle.collect_if_due()
        assert idle.collections == 1
        idle.collect_if_due()
        assert idle.collections == 1
    finally:
        idle.close()
    assert gc.isenabled()


def test_the_summary_counts_late_decisions_from_the_records(tmp_path):
    (tmp_path / "acquisition").mkdir()
    (tmp_path / "decoder").mkdir()
    (tmp_path / "acquisition" / "events.jsonl").write_text(
        json.dumps({"kind": "state", "t_ns": 1, "state": "ready", "frame_rate_hz": "30.0"}) + "\n")
    (tmp_path / "decoder" / "events.jsonl").write_text(
        json.dumps({"kind": "late_decision", "t_ns": 2, "frame": 1, "cause_kind": "gc"}) + "\n")
    rows = np.zeros(3, [("t_ready", "i8"), ("t_decided", "i8")])
    rows["t_ready"] = 1_000 * MS
    rows["t_decided"] = rows["t_ready"] + np.array([3, 34, 20]) * MS
    assert late_decisions(tmp_path, rows) == {"late_decisions": 1, "late_decision_causes": {"gc": 1}}


def test_a_calibration_that_blocked_the_decoder_is_named():
    watch, events, _ = _watch()
    t = 1_000 * MS
    watch.was_busy("calibrating", 30.0)
    watch.observe(5, (t, t + 1 * MS, t + 2 * MS, t + 2 * MS), t + 3 * MS, t + 36 * MS)
    watch.close()
    assert events[0]["cause_kind"] == "calibrating" and events[0]["cause"] == "the decoder was calibrating (30.0 ms)"
