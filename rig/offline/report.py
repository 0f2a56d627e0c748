"""`rig report SESSION`: a one-page HTML report with the plots an experimenter looks at after a session.

Everything is computed from the session folder (works on crashed sessions and on what-if replays);
the PNG plots are embedded in the HTML, so the report is a single file to mail or archive.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rig.core.codes import Mode  # noqa: E402
from rig.offline.numbers import hit_rate_text, percent, sig  # noqa: E402
from rig.offline.problems import recorded_outcome, session_problems, with_outcome  # noqa: E402
from rig.offline.session_data import SessionData  # noqa: E402
from rig.offline.summary import summarize_session  # noqa: E402

HIT_COLOR = "#2e7d32"
MISS_COLOR = "#c62828"
UP_COLOR = "#1565c0"
DOWN_COLOR = "#ef6c00"
FIG_SIZE = (6.4, 3.3)
DPI = 100


class Plot:
    """One figure of the report: a title, a one-line caption, and the function that draws it."""

    def __init__(self, key: str, title: str, draw: Callable[[SessionData, Figure], str]) -> None:
        self.key = key
        self.title = title
        self.draw = draw


def _times_min(session: SessionData, stamps: np.ndarray) -> np.ndarray:
    return (np.asarray(stamps, dtype=np.int64) - session.time_zero_ns()) / 60e9


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _mode_codes(session: SessionData) -> dict[str, int]:
    """Decoder mode name -> the code stored in decisions.rec (``rig.core.codes.Mode``)."""
    return {member.name.lower(): int(member.value) for member in Mode}


# ---------------------------------------------------------------------------- the plots


def draw_hit_rate(session: SessionData, fig: Figure) -> str:
    ax = fig.subplots()
    trials = [t for t in session.trials() if t.outcome in ("hit", "miss")]
    if not trials:
        _empty(ax, "no completed trials")
        return "No trial was completed."
    numbers = np.arange(1, len(trials) + 1)
    hits = np.array([t.hit for t in trials], dtype=float)
    window = min(10, len(trials))
    rolling = np.convolve(hits, np.ones(window), "full")[: len(hits)] / np.minimum(numbers, window)
    cumulative = np.cumsum(hits) / numbers
    ax.plot(numbers, rolling * 100, color=HIT_COLOR, lw=2, label=f"rolling ({window} trials)")
    ax.plot(numbers, cumulative * 100, color="0.3", lw=1, ls="--", label="cumulative")
    ax.scatter(numbers, np.where(hits > 0, 103, -3), c=np.where(hits > 0, HIT_COLOR, MISS_COLOR), marker="|", s=60,
               clip_on=False)
    cal = session.calibration or {}
    if "predicted_hit_rate" in cal:
        ax.axhline(float(cal["predicted_hit_rate"]) * 100, color="0.5", lw=1, ls=":", label="calibrated chance")
    ci95 = cal.get("predicted_hit_rate_ci95") or []
    if len(ci95) == 2 and None not in ci95:
        ax.axhspan(float(ci95[0]) * 100, float(ci95[1]) * 100, color="0.5", alpha=0.15, lw=0,
                   label="chance, 95 % interval")
    ax.set_xlabel("completed trial")
    ax.set_ylabel("hit rate (%)")
    ax.set_ylim(-6, 106)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    n_hits = int(hits.sum())
    return f"{hit_rate_text(n_hits, len(trials) - n_hits)}; last {window}: {rolling[-1] * 100:.0f} %."


def _interval_text(cal: dict) -> str:
    """" (95 %: 30 %–70 %)" from a calibration's predicted_hit_rate_ci95, "" when it has none (older sessions)."""
    ci95 = cal.get("predicted_hit_rate_ci95") or []
    if len(ci95) != 2 or None in ci95:
        return ""
    return f" (95 %: {percent(float(ci95[0]))}–{percent(float(ci95[1]))})"


def draw_time_to_hit(session: SessionData, fig: Figure) -> str:
    ax = fig.subplots()
    trials = [t for t in session.trials() if t.outcome in ("hit", "miss")]
    if not trials:
        _empty(ax, "no completed trials")
        return "No trial was completed."
    rate = session.frame_rate_hz
    numbers = np.arange(1, len(trials) + 1)
    durations = np.array([(t.outcome_frame - t.start_frame) / rate for t in trials])
    hit = np.array([t.hit for t in trials])
    ax.scatter(numbers[hit], durations[hit], color=HIT_COLOR, s=14, label="hit")
    ax.scatter(numbers[~hit], durations[~hit], color=MISS_COLOR, marker="x", s=14, label="miss (timeout)")
    if hit.any():
        ax.axhline(np.median(durations[hit]), color=HIT_COLOR, lw=1, ls="--", label="median time to hit")
    ax.set_xlabel("completed trial")
    ax.set_ylabel("time from trial start (s)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    if not hit.any():
        return "No hits."
    return f"Median time to hit {np.median(durations[hit]):.2f} s over {int(hit.sum())} hits."


def draw_cursor_distribution(session: SessionData, fig: Figure) -> str:
    ax = fig.subplots()
    dec = session.decisions
    if dec is None or not len(dec):
        _empty(ax, "no decisions recorded")
        return "No decisions."
    codes = _mode_codes(session)
    cursor = dec["cursor"].astype(np.float64)
    finite = np.isfinite(cursor)
    groups = [("baseline", codes.get("baseline")), ("BCI", codes.get("bci"))]
    parts = []
    values = cursor[finite]
    if values.size == 0:
        _empty(ax, "cursor was never defined")
        return "The cursor was never defined (no valid dF/F)."
    lo, hi = np.percentile(values, [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 60)
    for (label, code), color in zip(groups, ("0.45", UP_COLOR), strict=True):
        if code is None:
            continue
        sel = cursor[finite & (dec["mode"] == code)]
        if sel.size:
            ax.hist(sel, bins=bins, density=True, histtype="stepfilled", alpha=0.45, color=color,
                    label=f"{label} ({sel.size} frames)")
            parts.append(f"{label}: median {sig(float(np.median(sel)))} over {sel.size} frames")
    cal = session.calibration or {}
    if "threshold" in cal:
        ax.axvline(float(cal["threshold"]), color=HIT_COLOR, lw=1.5, label="threshold")
    if "feedback_min" in cal:
        ax.axvline(float(cal["feedback_min"]), color="0.3", lw=1, ls=":", label="feedback min")
    ax.set_xlabel("cursor (a.u.)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, frameon=False)
    return "; ".join(parts) or "No baseline or BCI frames."


def draw_ensembles_around_hits(session: SessionData, fig: Figure) -> str:
    ax = fig.subplots()
    dec = session.decisions
    hits = [t for t in session.trials() if t.hit]
    if dec is None or not len(dec) or not hits:
        _empty(ax, "no hits")
        return "No hits to align to."
    rate = session.frame_rate_hz
    before, after = int(round(3 * rate)), int(round(2 * rate))
    frames = dec["frame"]
    lags = np.arange(-before, after + 1)
    traces = {"up": [], "down": []}
    for trial in hits:
        at = int(np.searchsorted(frames, trial.outcome_frame))
        if at - before < 0 or at + after >= len(frames) or frames[at] != trial.outcome_frame:
            continue
        for name in traces:
            traces[name].append(dec[name][at - before: at + after + 1].astype(np.float64))
    if not traces["up"]:
        _empty(ax, "hits too close to the session's edges")
        return "Every hit was too close to the start or end of the recording."
    t = lags / rate
    for name, color in (("up", UP_COLOR), ("down", DOWN_COLOR)):
        block = np.array(traces[name])
        mean = np.nanmean(block, axis=0)
        sem = np.nanstd(block, axis=0) / np.sqrt(max(1, len(block)))
        ax.plot(t, mean, color=color, lw=2, label=f"{name} ensemble")
        ax.fill_between(t, mean - sem, mean + sem, color=color, alpha=0.25, lw=0)
    ax.axvline(0, color="0.3", lw=1, ls="--")
    ax.set_xlabel("time from hit (s)")
    ax.set_ylabel("mean dF/F (± s.e.m.)")
    ax.legend(fontsize=8, frameon=False)
    return f"Average of {len(traces['up'])} hits; the up ensemble should rise into the hit, the down one not."


def draw_reward_timeline(session: SessionData, fig: Figure) -> str:
    outcomes = [e for e in session.reward_events if e.get("kind") == "reward_outcome"]
    licks = [e for e in session.reward_events if e.get("kind") == "lick" and e.get("onset")]
    hits = [t for t in session.trials() if t.hit]
    if not outcomes and not licks and not hits:
        _empty(fig.subplots(), "no hits, rewards or licks")
        return "No hits, rewards or licks."
    ax, vol = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])

    def stamp(o: dict[str, Any]) -> int:
        return int(o.get("t_ack") or o.get("t_written") or o["t_ns"])

    delivered = [o for o in outcomes if o.get("status") == "delivered"]
    failed = [o for o in outcomes if o.get("status") != "delivered"]
    if hits:
        ax.eventplot([_times_min(session, session.frame_time_ns([t.outcome_frame for t in hits]))], lineoffsets=3,
                     linelengths=0.8, colors=[UP_COLOR])
    if delivered:
        ax.eventplot([_times_min(session, [stamp(o) for o in delivered])], lineoffsets=2, linelengths=0.8,
                     colors=[HIT_COLOR])
    if failed:
        ax.eventplot([_times_min(session, [stamp(o) for o in failed])], lineoffsets=2, linelengths=0.8,
                     colors=[MISS_COLOR])
    if licks:
        ax.eventplot([_times_min(session, [int(e["t_ns"]) for e in licks])], lineoffsets=1, linelengths=0.8,
                     colors=["0.2"], linewidths=0.5)
    ax.set_yticks([3, 2, 1], ["hits", "rewards\n(red: failed)" if failed else "rewards", "lick onsets"])
    ax.set_ylim(0.4, 3.6)
    times = np.sort(_times_min(session, [stamp(o) for o in delivered])) if delivered else np.empty(0)
    order = np.argsort(_times_min(session, [stamp(o) for o in delivered])) if delivered else []
    volume = np.cumsum([float(delivered[i].get("volume_ul", 0.0)) for i in order])
    vol.step(np.concatenate([[times[0] if times.size else 0.0], times]), np.concatenate([[0.0], volume]),
             where="post", color=HIT_COLOR, lw=1.5)
    vol.set_ylabel("µL (cum.)")
    vol.set_ylim(bottom=0)
    vol.set_xlabel("time (min)")
    total = float(volume[-1]) if volume.size else 0.0
    return (f"{len(delivered)} rewards delivered ({total:.1f} µL), {len(failed)} failed or refused, "
            f"{len(hits)} hits, {len(licks)} lick onsets.")


def draw_latency(session: SessionData, fig: Figure) -> str:
    ax = fig.subplots()
    dec = session.decisions
    if dec is None or not len(dec):
        _empty(ax, "no decisions recorded")
        return "No decisions."
    if session.is_replay_of:
        _empty(ax, "a what-if replay measures no latency")
        return "What-if replay: the stamps are the original session's."
    latency = (dec["t_decided"] - dec["t_ready"]).astype(np.float64) / 1e6
    latency = latency[latency > 0]
    outcomes = [e for e in session.reward_events if e.get("kind") == "reward_outcome"
                and int(e.get("t_written") or 0) > 0 and int(e.get("t_ready") or 0) > 0]
    reward_latency = np.array([(o["t_written"] - o["t_ready"]) / 1e6 for o in outcomes])
    if latency.size == 0:
        _empty(ax, "no valid stamps")
        return "No valid latency stamps."
    top = max(np.percentile(latency, 99.9), reward_latency.max() if reward_latency.size else 0) * 1.1
    bins = np.linspace(0, top, 80)
    ax.hist(latency, bins=bins, color=UP_COLOR, alpha=0.7, label="frame ready → decision")
    if reward_latency.size:
        ax.hist(reward_latency, bins=bins, color=HIT_COLOR, alpha=0.8, label="frame ready → reward command")
    p50, p99 = np.percentile(latency, [50, 99])
    ax.axvline(p50, color="0.2", lw=1, ls="--", label=f"p50 {p50:.2f} ms")
    ax.axvline(p99, color="0.2", lw=1, ls=":", label=f"p99 {p99:.2f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8, frameon=False)
    return (f"Frame ready → decision: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {latency.max():.2f} ms "
            f"over {latency.size} frames" + (f"; reward command p50 {np.median(reward_latency):.2f} ms."
                                             if reward_latency.size else "."))


def draw_dropped_frames(session: SessionData, fig: Figure) -> str:
    ax = fig.subplots()
    acq = session.frames
    if acq is None or not len(acq):
        _empty(ax, "no frames recorded")
        return "No frames."
    numbers = acq["frame"]
    t = _times_min(session, acq["t_ready"])
    gaps = np.diff(numbers, prepend=numbers[0]) - 1
    gaps[0] = 0
    source_lost = np.cumsum(np.maximum(gaps, 0))
    decided = np.isin(numbers, session.decisions["frame"]) if session.decisions is not None else \
        np.zeros(len(numbers), dtype=bool)
    decoder_lost = np.cumsum(~decided)
    bad = np.cumsum(acq["flags"] != 0)
    ax.plot(t, source_lost, color=MISS_COLOR, lw=1.5, label="dropped at the source")
    ax.plot(t, decoder_lost, color=DOWN_COLOR, lw=1.5, label="acquired, never decided")
    ax.plot(t, bad, color="0.4", lw=1.5, ls="--", label="flagged bad")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("frames (cumulative)")
    ax.set_ylim(bottom=0, top=max(1, source_lost[-1], decoder_lost[-1], bad[-1]) * 1.15)
    ax.legend(fontsize=8, frameon=False)
    if not (source_lost[-1] or decoder_lost[-1] or bad[-1]):
        ax.text(0.5, 0.5, f"every one of the {len(numbers)} frames acquired, good and decided", ha="center",
                va="center", transform=ax.transAxes, color=HIT_COLOR)
    return (f"{int(source_lost[-1])} dropped at the source, {int(decoder_lost[-1])} acquired but never decided, "
            f"{int(bad[-1])} flagged bad, out of {len(numbers)} acquired.")


def draw_z(session: SessionData, fig: Figure) -> str:
    """z-tracking's depth estimates (acquisition/z.rec) over time, with the warning band."""
    ax = fig.subplots()
    rows = session.z_estimates()
    warn_um = float(session.config.acquisition.ztrack.warn_um)
    warned = [e for e in session.acq_events if e.get("kind") == "warning" and e.get("code") == "z_drift"]
    refused = [e for e in session.acq_events if e.get("kind") == "warning" and e.get("code") == "ztrack_refused"]
    if rows is None or not len(rows):
        _empty(ax, "z-tracking made no estimate")
        return "No depth estimate." + (f" {refused[0].get('message', '')}" if refused else "")
    z = rows["z_um"].astype(np.float64)
    t = _times_min(session, session.frame_time_ns(rows["frame"]))
    ax.plot(t, z, color=UP_COLOR, lw=1.2)
    for sign in (1, -1):
        ax.axhline(sign * warn_um, color=DOWN_COLOR, ls="--", lw=1)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("time (min)")
    ax.set_ylabel("z from the stack's centre (µm)")
    finite = z[np.isfinite(z)]
    worst = float(np.max(np.abs(finite))) if finite.size else float("nan")
    return (f"{len(rows)} depth estimates (frames {int(rows['frame'][0])}–{int(rows['frame'][-1])}); |z| up to "
            f"{worst:.1f} µm, median {float(np.median(finite)):+.1f} µm; {len(warned)} z-drift warning(s) beyond "
            f"±{warn_um:g} µm (dashed)." if finite.size else f"{len(rows)} depth estimates, none finite.")


#: shown only for sessions that ran with z-tracking (acquisition/z.rec exists)
Z_PLOT = Plot("z", "Focal plane depth (z-tracking)", draw_z)


def _dendrite_plots(session: SessionData) -> tuple[Plot, ...]:
    """With a dendrite plane: the instructive index and the event-aligned dendrites (``rig dendrites``)."""
    from rig.offline.dendrites_plots import report_sections  # noqa: PLC0415 - only multi-plane sessions need it

    return tuple(Plot(key, title, draw) for key, title, draw in report_sections(session))

PLOTS = (
    Plot("hit_rate", "Hit rate over trials", draw_hit_rate),
    Plot("time_to_hit", "Time to hit", draw_time_to_hit),
    Plot("cursor", "Cursor distribution: baseline vs BCI", draw_cursor_distribution),
    Plot("ensembles", "Up / down ensemble activity around hits", draw_ensembles_around_hits),
    Plot("rewards", "Reward timeline", draw_reward_timeline),
    Plot("latency", "Latency", draw_latency),
    Plot("dropped", "Dropped and bad frames", draw_dropped_frames),
)


# ---------------------------------------------------------------------------- the page


def render_png(plot: Plot, session: SessionData) -> tuple[bytes, str]:
    fig = plt.figure(figsize=FIG_SIZE, dpi=DPI, layout="constrained")
    try:
        caption = plot.draw(session, fig)
        fig.suptitle(plot.title, fontsize=11, fontweight="bold", x=0.01, ha="left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buf.getvalue(), caption


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px 24px;color:#222;max-width:1340px}
h1{font-size:20px;margin:0 0 4px}.sub{color:#555;font-size:13px;margin-bottom:10px}
table.kv{border-collapse:collapse;font-size:13px;margin:6px 0 10px}
table.kv td{padding:2px 10px 2px 0;vertical-align:top}table.kv td:first-child{color:#666}
.grid{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:10px 18px}
figure{margin:0}figure img{width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:12px;color:#444;margin-top:2px}.notes{color:#8a4b00;font-size:13px}
.summary{display:flex;gap:28px;flex-wrap:wrap}
"""


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    return "<table class=kv>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _fmt_latency(value: dict[str, Any]) -> str:
    if not value or not value.get("n"):
        return "—"
    return f"p50 {sig(value['p50'], 3)} / p99 {sig(value['p99'], 3)} / max {sig(value['max'], 3)} ms (n={value['n']})"


def build_report(session: SessionData, out_path: str | Path, progress: bool = True,
                 images_dir: str | Path | None = None) -> Path:
    """Write the report; with ``images_dir`` the PNGs are also saved there as files (for checking by eye)."""
    out_path = Path(out_path)
    summary = summarize_session(session.path)
    outcome = recorded_outcome(session.path)
    summary = with_outcome(summary, outcome,
                           session_problems(session.path, summary, str(outcome.get("stop_reason", ""))))
    info = session.info
    meta = info.get("metadata", {})
    figures = []
    plots = PLOTS + ((Z_PLOT,) if session.z_estimates() is not None else ()) + _dendrite_plots(session)
    for plot in tqdm(plots, desc="report", unit="plot", disable=not progress, file=sys.stderr):
        png, caption = render_png(plot, session)
        if images_dir is not None:
            Path(images_dir).mkdir(parents=True, exist_ok=True)
            (Path(images_dir) / f"{plot.key}.png").write_bytes(png)
        data = base64.b64encode(png).decode("ascii")
        figures.append(f'<figure id="{plot.key}"><img alt="{html.escape(plot.title)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    hits, misses, trials = summary.get("hits", 0), summary.get("misses", 0), summary.get("trials", 0)
    left = _kv_table([
        ("mouse", meta.get("mouse_id", session.config.session.mouse_id)),
        ("experimenter", meta.get("experimenter", "") or "—"),
        ("rig", info.get("rig", session.config.rig.name)),
        ("status", info.get("status", "unknown (no session.json)")),
        ("ended", f"{'ok' if summary['ok'] else 'NOT ok'}: {summary['stop_reason'] or 'stop not recorded'}"),
        ("software", f"{info.get('software', {}).get('version', '?')} "
                     f"(git {str(info.get('software', {}).get('git', 'unknown'))[:10]})"),
        ("replay of", session.is_replay_of or "—"),
    ])
    cal = session.calibration or {}
    right = _kv_table([
        ("frames decided / acquired", f"{summary.get('frames', 0)} / {summary.get('frames_acquired', 0)}"),
        ("frames dropped / bad", f"{summary.get('frames_dropped', 0)} / {summary.get('bad_frames', 0)}"),
        ("trials", f"{trials} started, {hits + misses} completed"),
        ("hit rate", hit_rate_text(hits, misses)),  # the caption of the hit-rate plot says the same
        ("rewards delivered / failed", f"{summary.get('rewards_delivered', 0)} / {summary.get('rewards_failed', 0)}"
                                       f" ({summary.get('volume_ul', 0)} µL)"),
        ("latency ready → decision", _fmt_latency(summary.get("latency_ms", {}))),
        ("latency ready → reward command", _fmt_latency(summary.get("reward_latency_ms", {}))),
        ("calibration", f"threshold {sig(cal.get('threshold'))}, predicted hit rate "
                        f"{percent(cal.get('predicted_hit_rate'))}{_interval_text(cal)} ({cal.get('method', '—')})"
                        if cal else "—"),
    ])
    problems = [f"problem: {p}" for p in summary["problems"]]
    problems += [f"calibration: {w}" for w in cal.get("warnings") or []]
    blocks = session.blocks()
    if len(blocks) > 1:
        problems += [f"BCI block {b['block']}: {hit_rate_text(b['hits'], b['misses'])}" for b in blocks]
    if "failure" in summary:
        problems.insert(0, f"failure in {summary.get('failed_process', '?')}: {summary['failure']}")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in [*problems, *session.notes])
    started = html.escape(str(info.get("started", "?")))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bci-rig report: {html.escape(session.path.name)}</title>
<style>{CSS}</style></head><body>
<h1>Session {html.escape(session.path.name)}</h1>
<div class=sub>{html.escape(str(session.path.resolve()))} · started {started}</div>
<div class=summary>{left}{right}</div>
{f'<ul class=notes>{notes}</ul>' if notes else ''}
<div class=grid>{''.join(figures)}</div>
<script type="application/json" id="summary">{html.escape(json.dumps(summary))}</script>
</body></html>
"""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path
