"""``rig bench --repeat N --target``: the headline figures of each run, issue 21's targets, the median of runs.

Pure functions on the result dicts :func:`rig.offline.bench.run_bench` returns (and writes as JSON), so the
table, the median and the target verdicts can be recomputed from saved results and tested without a rig.
Latencies are taken as the bench measured them; nothing here measures anything.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DECISION = "END TO END frame ready->decision"
REWARD_WRITTEN = "END TO END frame ready->reward bytes written"

#: The headline figures of one run: (key, column title, format). Numbers, or None where the run has none.
HEADLINE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("decision_p50_ms", "dec p50", "{:.2f}"),
    ("decision_p99_ms", "dec p99", "{:.2f}"),
    ("decision_max_ms", "dec max", "{:.2f}"),
    ("reward_written_p99_ms", "rew p99", "{:.2f}"),
    ("late_decisions", "late", "{:d}"),
    ("frames_dropped", "dropped", "{:d}"),
    ("frames_per_s", "frames/s", "{:.1f}"),
    ("load_start", "load0", "{:.2f}"),
    ("load_end", "load1", "{:.2f}"),
    ("cpu_steal_pct", "steal %", "{:.1f}"),
    ("idle_ratio", "idle x", "{:.2f}"),
)


#: CPU steal (%) from which a run's tails are said to measure the host (docs/PERFORMANCE.md: at 1–9 % steal the same
#: code's decision p99 was 6.5–20.6 ms on our VM, at 0.1–0.2 % 3.7–5.0)
BUSY_HOST_STEAL_PCT = 1.0


@dataclass(frozen=True)
class Target:
    """One of issue 21's targets: ``figure`` (a headline key) compared with ``limit``."""

    name: str
    figure: str
    op: str  # "<=" or ">="
    limit: float

    def check(self, headline: dict[str, Any]) -> dict[str, Any]:
        """The verdict for one run: met True/False, or None when the run has no such figure (e.g. no reward)."""
        value = headline.get(self.figure)
        met = None if value is None else bool(value <= self.limit if self.op == "<=" else value >= self.limit)
        return {"target": self.name, "figure": self.figure, "value": value, "op": self.op, "limit": self.limit,
                "met": met}


#: Issue 21's targets per mode (docs/PERFORMANCE.md).
TARGETS: dict[str, tuple[Target, ...]] = {
    "realtime": (
        Target("frame ready->decision p50 <= 2 ms", "decision_p50_ms", "<=", 2.0),
        Target("frame ready->decision p99 <= 5 ms", "decision_p99_ms", "<=", 5.0),
        Target("frame ready->decision max <= 10 ms", "decision_max_ms", "<=", 10.0),
        Target("frame ready->reward bytes written p99 <= 5 ms", "reward_written_p99_ms", "<=", 5.0),
    ),
    "fast": (
        Target("0 frames dropped", "frames_dropped", "<=", 0),
        Target("frame ready->decision p99 <= 1 ms", "decision_p99_ms", "<=", 1.0),
    ),
    "throughput": (
        Target("throughput >= 500 frames/s", "frames_per_s", ">=", 500.0),
    ),
}


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures issue 21 asks for, from one run's result."""
    lat = result.get("latency_ms", {})
    dec = lat.get(DECISION) or {}
    rew = lat.get(REWARD_WRITTEN) or {}
    load = result.get("load_avg_1min_at_start_end") or [None, None]
    return {
        "decision_p50_ms": dec.get("p50"), "decision_p99_ms": dec.get("p99"), "decision_max_ms": dec.get("max"),
        "decision_n": dec.get("n", 0), "reward_written_p99_ms": rew.get("p99"), "reward_n": rew.get("n", 0),
        "late_decisions": result.get("late_decisions"), "frames_dropped": result.get("frames_dropped"),
        "frames_per_s": (result.get("throughput") or {}).get("decoder_frames_per_s"),
        "load_start": load[0], "load_end": load[1], "cpu_steal_pct": result.get("cpu_steal_pct"),
        "idle_ratio": (result.get("idle_penalty") or {}).get("ratio"),
    }


def check_targets(mode: str, figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 21's targets for ``mode``, each met / not met / None (no data), on a run's (or the median's) figures."""
    return [t.check(figures) for t in TARGETS[mode]]


def target_conditions(result: dict[str, Any]) -> list[str]:
    """How this run's settings differ from the conditions issue 21 sets its targets under (empty: the same).

    The verdicts are given either way; a target "met" under easier conditions is not the issue's target met."""
    s = result.get("settings", {})
    mode = result.get("mode")
    out = []
    if mode in ("realtime", "throughput"):
        if s.get("size") != 512:
            out.append(f"frames {s.get('size')} px, not 512x512")
        if s.get("rois") != 500:
            out.append(f"{s.get('rois')} ROIs, not 500")
    if mode == "realtime":
        if s.get("rate_hz") != 30.0:
            out.append(f"{s.get('rate_hz')} Hz, not 30")
        if not s.get("console"):
            out.append("console not attached")
        if s.get("scope") == "sim":
            out.append("--scope sim (the simulator renders on the rig's cores), not a scope twin")
    if mode == "fast":
        if s.get("rate_hz") != 1000.0:
            out.append(f"{s.get('rate_hz')} Hz, not 1000")
        if (s.get("duration_s") or 0) < 60:
            out.append(f"{s.get('duration_s'):g} s, not the 60 s the issue asks sustained")
    return out


def median_headline(headlines: list[dict[str, Any]]) -> dict[str, Any]:
    """The median across runs of each headline figure (None where no run has it)."""
    out: dict[str, Any] = {}
    for key in headlines[0] if headlines else ():
        values = [h[key] for h in headlines if h.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def summarize(results: list[dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """The summary of N runs of one mode: each run's headline and target verdicts, the median, and the load."""
    if not results:
        raise ValueError("rig bench: no run to summarize")
    mode = results[0]["mode"]
    heads = [headline(r) for r in results]
    runs = []
    for i, (result, head, path) in enumerate(zip(results, heads, paths, strict=True)):
        verdicts = check_targets(mode, head)
        runs.append({"run": i + 1, "json": str(path), "ok": result.get("ok"), "session": result.get("session"),
                     "headline": head, "targets": verdicts, "targets_met": _all_met(verdicts)})
    med = median_headline(heads)
    median_verdicts = check_targets(mode, med)
    return {
        "mode": mode, "repeat": len(results), "when": results[0].get("when"),
        "settings": results[0].get("settings"), "machine": results[0].get("machine"),
        "target_conditions_differ": target_conditions(results[0]),
        "runs": runs, "median": med, "median_targets": median_verdicts,
        "targets_met_every_run": all(r["targets_met"] for r in runs),
        "ok": all(bool(r["ok"]) for r in runs),
    }


def _all_met(verdicts: list[dict[str, Any]]) -> bool:
    """True only when every target is met (no data is not met: nothing shows it was)."""
    return all(v["met"] is True for v in verdicts)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "{:d}" and isinstance(value, float):
        return f"{value:g}"  # the median of counts can be a half
    return fmt.format(value)


def _verdict(met: bool | None) -> str:
    return "no data" if met is None else ("met" if met else "NOT MET")


def print_headline(run: int, head: dict[str, Any]) -> None:
    """One run's headline figures on one line."""
    parts = [f"{title} {_cell(head.get(key), fmt)}" for key, title, fmt in HEADLINE_COLUMNS]
    print(f"[bench] run {run}: " + ", ".join(parts), flush=True)


def format_summary(summary: dict[str, Any], targets: bool) -> str:
    """The table of all runs and their median; with ``targets`` also each target's verdict per run."""
    titles = [title for _, title, _ in HEADLINE_COLUMNS]
    lines = [f"\nrig bench — mode {summary['mode']} — {summary['repeat']} run(s), latencies in ms (frame ready -> "
             "decision p50/p99/max, -> reward bytes written p99), 1-min load average at start/end, CPU steal %, "
             "idle x (a frame's kind of work after a frame period's pause / back to back)",
             f"{'run':8s}" + "".join(f"{t:>10s}" for t in titles) + ("  targets" if targets else "")]
    rows = [(f"run {r['run']}", r["headline"], r["targets"]) for r in summary["runs"]]
    rows.append(("median", summary["median"], summary["median_targets"]))
    for label, head, verdicts in rows:
        cells = "".join(f"{_cell(head.get(k), fmt):>10s}" for k, _, fmt in HEADLINE_COLUMNS)
        line = f"{label.removeprefix('run '):8s}" + cells
        if targets:
            line += f"  {sum(v['met'] is True for v in verdicts)}/{len(verdicts)} met"
        lines.append(line)
    if targets:
        lines.append(f"\n{'issue 21 target (mode ' + summary['mode'] + ')':48s}"
                     + "".join(f"{label:>10s}" for label, _, _ in rows))
        for k, verdict in enumerate(summary["median_targets"]):
            lines.append(f"{verdict['target']:48s}"
                         + "".join(f"{_verdict(verdicts[k]['met']):>10s}" for _, _, verdicts in rows))
        if summary["target_conditions_differ"]:
            lines.append("(issue 21 sets these targets under other conditions; this run differs: "
                         + "; ".join(summary["target_conditions_differ"]) + ")")
    busy = [(r["run"], r["headline"].get("cpu_steal_pct")) for r in summary["runs"]]
    busy = [(run, steal) for run, steal in busy if steal is not None and steal >= BUSY_HOST_STEAL_PCT]
    if busy:
        lines.append("(the hypervisor took CPU from this machine during "
                     + ", ".join(f"run {run} ({steal:.1f} %)" for run, steal in busy)
                     + ": those runs' tails measure the host as much as the rig; compare runs at ~0 % steal)")
    return "\n".join(lines)
