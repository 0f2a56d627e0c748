"""rig bench --repeat / --target: headline figures, issue 21's target verdicts and the median, on synthetic results."""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.offline.bench_summary import (
    DECISION,
    REWARD_WRITTEN,
    check_targets,
    format_summary,
    headline,
    median_headline,
    summarize,
    target_conditions,
)


def fake_result(mode="realtime", p50=1.5, p99=4.0, mx=8.0, reward_p99=4.5, dropped=0, late=0, fps=30.0,
                load=(0.5, 0.7), console=True, size=512, rois=500, rate=30.0, duration=60.0, ok=True, steal=0.5,
                idle=1.8):
    """A result dict shaped as rig.offline.bench.run_bench returns it."""
    reward = ({"p50": 1.0, "p90": 2.0, "p99": reward_p99, "max": reward_p99, "n": 12} if reward_p99 is not None
              else {"p50": None, "p90": None, "p99": None, "max": None, "n": 0})
    return {"mode": mode, "when": "2026-12-03T00:00:00", "machine": {"cpus": 2},
            "settings": {"size": size, "rois": rois, "rate_hz": rate, "duration_s": duration, "console": console,
                         "scope": "cloose", "overrides": []},
            "load_avg_1min_at_start_end": list(load), "cpu_steal_pct": steal, "late_decisions": late,
            "idle_penalty": {"warm_us": 300.0, "after_idle_us": 300.0 * idle, "gap_ms": 33.3, "ratio": idle},
            "frames_dropped": dropped,
            "ok": ok, "session": "/tmp/s", "frames": 1800, "frames_acquired": 1800 + dropped,
            "rewards_delivered": 12, "rewards_failed": 0, "processes": {"decoder": {"cpu_percent": 5.0,
                                                                                  "peak_rss_mb": 170.0}},
            "latency_ms": {DECISION: {"p50": p50, "p90": p50 * 1.5, "p99": p99, "max": mx, "n": 1800},
                           REWARD_WRITTEN: reward},
            "throughput": {"acquisition_frames_per_s": fps, "decoder_frames_per_s": fps}}


def verdicts(mode, result):
    return [v["met"] for v in check_targets(mode, headline(result))]


def test_the_headline_takes_the_figures_issue_21_names():
    head = headline(fake_result(p50=1.25, p99=4.5, mx=9.75, reward_p99=3.5, dropped=2, late=3, fps=29.9,
                                load=(1.2, 2.4), steal=17.5))
    assert head["decision_p50_ms"] == 1.25 and head["decision_p99_ms"] == 4.5 and head["decision_max_ms"] == 9.75
    assert head["reward_written_p99_ms"] == 3.5 and head["reward_n"] == 12
    assert (head["late_decisions"], head["frames_dropped"], head["frames_per_s"]) == (3, 2, 29.9)
    assert (head["load_start"], head["load_end"], head["cpu_steal_pct"]) == (1.2, 2.4, 17.5)


def test_realtime_targets_each_met_or_not_at_their_limits():
    assert verdicts("realtime", fake_result(p50=2.0, p99=5.0, mx=10.0, reward_p99=5.0)) == [True] * 4  # <= limit
    assert verdicts("realtime", fake_result(p50=2.01, p99=4.0, mx=10.5, reward_p99=5.2)) == [False, True, False, False]
    assert verdicts("realtime", fake_result(reward_p99=None)) == [True, True, True, None]  # no reward: no data


def test_fast_and_throughput_targets():
    assert verdicts("fast", fake_result("fast", p99=0.9, dropped=0)) == [True, True]
    assert verdicts("fast", fake_result("fast", p99=1.2, dropped=3)) == [False, False]
    assert verdicts("throughput", fake_result("throughput", fps=500.0)) == [True]
    assert verdicts("throughput", fake_result("throughput", fps=481.0)) == [False]


def test_conditions_other_than_the_issues_are_named():
    assert target_conditions(fake_result()) == []
    differ = target_conditions(fake_result(console=False, size=256, rois=50))
    assert differ == ["frames 256 px, not 512x512", "50 ROIs, not 500", "console not attached"]
    assert target_conditions(fake_result("fast", size="64x256", rois=50, rate=1000.0, duration=20.0)) == [
        "20 s, not the 60 s the issue asks sustained"]


def test_the_median_across_runs_skips_missing_figures():
    heads = [headline(fake_result(p50=1.0, reward_p99=None, late=0)), headline(fake_result(p50=3.0, reward_p99=4.0,
                                                                                          late=1)),
             headline(fake_result(p50=2.5, reward_p99=6.0, late=4))]
    med = median_headline(heads)
    assert med["decision_p50_ms"] == 2.5 and med["late_decisions"] == 1
    assert med["reward_written_p99_ms"] == 5.0  # the median of the two runs that had rewards
    assert median_headline([headline(fake_result(reward_p99=None))])["reward_written_p99_ms"] is None


def test_the_summary_gives_each_run_its_verdicts_and_the_median_its_own():
    results = [fake_result(p50=1.5, p99=4.0), fake_result(p50=2.5, p99=6.0, ok=True), fake_result(p50=1.8, p99=4.8)]
    paths = [Path(f"/tmp/b-run{k}.json") for k in (1, 2, 3)]
    summary = summarize(results, paths)
    assert summary["repeat"] == 3 and summary["ok"] is True
    assert [r["targets_met"] for r in summary["runs"]] == [True, False, True]
    assert summary["targets_met_every_run"] is False
    assert summary["median"]["decision_p50_ms"] == 1.8 and summary["median"]["decision_p99_ms"] == 4.8
    assert all(v["met"] for v in summary["median_targets"])
    assert summary["runs"][1]["json"] == "/tmp/b-run2.json"
    text = format_summary(summary, targets=True)
    p50_row = next(line for line in text.splitlines() if line.startswith("frame ready->decision p50"))
    assert p50_row.split(" ms", 1)[1].split() == ["met", "NOT", "MET", "met", "met"]  # run 2 only; the median met
    assert "median" in text and "other conditions" not in text and "hypervisor" not in text  # 0.5 % steal: quiet
    assert "NOT MET" not in format_summary(summary, targets=False)
    with pytest.raises(ValueError, match="no run"):
        summarize([], [])


def test_a_failed_session_makes_the_summary_not_ok():
    summary = summarize([fake_result(), fake_result(ok=False)], [Path("a.json"), Path("b.json")])
    assert summary["ok"] is False


def test_steal_is_the_hypervisors_share_of_the_cpu_time_between_two_snapshots():
    from collections import namedtuple

    from rig.offline.bench import steal_percent

    linux = namedtuple("scputimes", "user nice system idle iowait irq softirq steal guest guest_nice")
    before = linux(100.0, 0.0, 20.0, 800.0, 0.0, 0.0, 0.0, 10.0, 5.0, 0.0)
    # 60 s of the machine's CPU: 30 user (2 of them guest, counted in user already), 12 stolen, 18 idle
    after = linux(130.0, 0.0, 20.0, 818.0, 0.0, 0.0, 0.0, 22.0, 7.0, 0.0)
    assert steal_percent(before, after) == 20.0
    windows = namedtuple("scputimes", "user system idle interrupt dpc")
    assert steal_percent(windows(1.0, 1.0, 1.0, 0.0, 0.0), windows(2.0, 2.0, 2.0, 0.0, 0.0)) is None
    assert steal_percent(before, before) is None  # no time passed: no share


def test_the_quiet_host_wait_ends_at_the_first_quiet_window_or_says_it_gave_up():
    from collections import namedtuple

    from rig.offline.bench import wait_for_quiet_host

    cpu = namedtuple("scputimes", "user system idle steal")
    windows = iter([(0, 0, 0, 0), (40, 0, 40, 20),  # 20 % stolen
                    (40, 0, 40, 20), (90, 0, 89, 21),  # 1 %: not below the limit
                    (90, 0, 89, 21), (140, 0, 139.5, 21.5)])  # 0.5 %: quiet

    def sample() -> object:
        return cpu(*next(windows))
    said: list[str] = []
    slept: list[float] = []
    got = wait_for_quiet_host(60, 3.0, sample=sample, sleep=slept.append, say=said.append)
    assert got == {"waited_s": 6.0, "steal_pct": 0.5, "quiet": True}
    assert slept == [3.0] * 3 and len(said) == 2 and "20.0 %" in said[0] and "1.0 %" in said[1]
    busy = iter([cpu(0, 0, 0, 0), cpu(40, 0, 40, 20)] * 3)
    said.clear()
    got = wait_for_quiet_host(6, 3.0, sample=lambda: next(busy), sleep=lambda s: None, say=said.append)
    assert got == {"waited_s": 6.0, "steal_pct": 20.0, "quiet": False} and "running anyway" in said[-1]
    windows_os = namedtuple("scputimes", "user system idle")  # no steal counter: quiet at once
    assert wait_for_quiet_host(60, sample=lambda: windows_os(1, 1, 1), sleep=lambda s: None, say=said.append) == {
        "waited_s": 0.0, "steal_pct": None, "quiet": True}


def test_the_idle_penalty_times_work_back_to_back_then_after_each_pause_and_advises_from_1_3():
    from rig.offline.host_probe import describe_idle_penalty, idle_penalty

    now = [0]
    slept: list[float] = []
    cost = {"ns": 100_000}

    def clock() -> int:
        return now[0]

    def work() -> None:
        now[0] += cost["ns"]

    def sleep(s: float) -> None:  # a pause makes the next run slower, as a cold cache does
        slept.append(s)
        cost["ns"] = 250_000

    def warm_work() -> None:
        work()
        cost["ns"] = 100_000  # back to back: fast again

    probe = idle_penalty(5, 0.033, work=warm_work, sleep=sleep, clock=clock)
    assert probe == {"warm_us": 100.0, "after_idle_us": 250.0, "gap_ms": 33.0, "ratio": 2.5}
    assert slept == [0.033] * 5  # only before the runs after a pause
    said = describe_idle_penalty(probe)
    assert "2.50x" in said and "100 -> 250" in said and "power plan" in said
    assert "power plan" not in describe_idle_penalty({**probe, "after_idle_us": 110.0, "ratio": 1.1})
    with pytest.raises(ValueError, match="samples"):
        idle_penalty(0)
    head = headline(fake_result(idle=2.25))
    assert head["idle_ratio"] == 2.25
    assert "idle x" in format_summary(summarize([fake_result(idle=2.25)], [Path("/tmp/b.json")]), targets=False)


def test_the_frame_like_work_is_real_work_on_this_machine():
    from rig.offline.host_probe import idle_penalty

    probe = idle_penalty(2, 0.0)  # the default work, without pauses: it runs, and takes time
    assert probe["warm_us"] > 0 and probe["after_idle_us"] > 0 and probe["ratio"] > 0


def test_runs_on_a_busy_host_are_named_under_the_table():
    results = [fake_result(steal=0.1), fake_result(steal=8.9), fake_result(steal=None)]
    text = format_summary(summarize(results, [Path(f"/tmp/b-run{k}.json") for k in (1, 2, 3)]), targets=True)
    note = next(line for line in text.splitlines() if "hypervisor" in line)
    assert "run 2 (8.9 %)" in note and "run 1" not in note and "run 3" not in note
    quiet = format_summary(summarize([fake_result(steal=0.2)], [Path("/tmp/b.json")]), targets=False)
    assert "hypervisor" not in quiet


def test_rewards_that_failed_are_counted_by_why(tmp_path):
    from rig.core.store import EventLog
    from rig.offline.bench import reward_failures

    log = EventLog(tmp_path / "reward" / "events.jsonl")
    log.write("reward_outcome", request_id="dec-1", status="delivered", reason="")
    for k in (2, 3):
        log.write("reward_outcome", request_id=f"dec-{k}", status="refused",
                  reason=f"minimum interval: 0.04{k} s since the last valve opening < 0.05 s")
    log.write("reward_outcome", request_id="dec-4", status="failed", reason="")
    log.write("lick", t_ns=1)
    log.close()
    assert reward_failures(tmp_path) == {"refused: minimum interval": 2, "failed": 1}
    assert reward_failures(tmp_path / "nothing") == {}
