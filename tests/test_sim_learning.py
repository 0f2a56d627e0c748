"""The simulated mouse learns the task through the real decoder only from what it perceives.

Trace level (no images): ``rig sim learn``'s runner (rig.app.sim_learn) feeds TraceSim's F/Fneu to the
decoder's own engine (baseline -> calibration -> BCI trials), turns each decision into the tone the feedback
process would present, and delivers rewards back to the mouse - the decoder's (contingent) or random ones at
the chance rate (yoked). The mouse explores 100 cells and is never told which 8 the decoder reads; learned
drive decays and its sum is capped (homeostasis), so pushing cells at random costs. Short sessions and one
seed keep this to seconds: seed 0, the first one, not chosen for its result (the benchmark's seeds 0-2 show
the same ordering, docs/SIMULATOR.md). Except for the 60-min gain, the contrasts are read from the
cursor-relevant drive (mean learned drive of the up cells minus that of the down cells) at equal time, which is
far less noisy than the hit rates of ~15 trials per quarter. The contrasts over seeds and learning rates are
measured by benchmarks/bench_sim_learning.py and reported in docs/SIMULATOR.md.
"""

from __future__ import annotations

import json

import pytest

from acquisition.sim.config import LEARNING_RULES
from rig.app import sim_learn_cli
from rig.app.sim_learn import REWARD_MODES, LearnSpec, run_learning

SHORT = 35.0  # minutes, 25 of them trials: enough for the learned drives, too few trials for hit-rate contrasts
LONG = 60.0
SEEDS = (0, 1)  # the first two seeds, not picked for their result; the equal-time contrasts average them
SEED = SEEDS[0]


def contrast(run: dict) -> float:
    """The cursor-relevant learned drive (Hz): up cells' mean drive minus down cells'."""
    return run["drive_up_hz"] - run["drive_down_hz"]


@pytest.fixture(scope="module")
def runs() -> dict:
    specs = {
        "vectorized": LearnSpec(rule="vectorized", minutes=LONG, seed=SEED),
        "vectorized_yoked": LearnSpec(rule="vectorized", rewards="yoked", minutes=SHORT, seed=SEED),
        "scalar_yoked": LearnSpec(rule="scalar", rewards="yoked", minutes=SHORT, seed=SEED),
        "none": LearnSpec(rule="none", minutes=SHORT, seed=SEED),
    }
    out: dict = {name: run_learning(spec) for name, spec in specs.items()}
    short = {"vectorized_short": {"rule": "vectorized"}, "vectorized_no_feedback": {"rule": "vectorized",
             "feedback": False}, "scalar": {"rule": "scalar"}}
    for name, kw in short.items():
        out[name] = [run_learning(LearnSpec(minutes=SHORT, seed=seed, **kw)) for seed in SEEDS]
    return out


def mean_contrast(runs_of_seeds: list[dict]) -> float:
    return sum(contrast(r) for r in runs_of_seeds) / len(runs_of_seeds)


def test_without_learning_the_hit_rate_stays_at_calibrated_chance(runs):
    none = runs["none"]
    assert 0.3 < none["chance"] < 0.7
    assert abs(none["hit_rate"] - none["chance"]) < 0.2
    assert none["drive_up_hz"] == 0.0 and none["drive_down_hz"] == 0.0
    assert none["trials"] > 30


def test_contingent_vectorized_credit_learns_both_ensembles_untold(runs):
    vec = runs["vectorized"]
    assert vec["hit_rate_first_quarter"] < 0.75  # starts near chance...
    assert vec["hit_rate_last_quarter"] >= 0.8  # ...and ends well above it
    assert vec["gain"] >= 0.3
    # the cursor-relevant drive: with homeostasis the down ensemble's drive may decay back once the up
    # ensemble alone wins nearly every trial, so the contrast, not each ensemble, is asserted here
    assert vec["drive_up_hz"] > 0.5 and contrast(vec) > 1.0
    assert all(r["drive_down_hz"] < 0 < r["drive_up_hz"] for r in runs["vectorized_short"])  # both, mid-session
    assert vec["tone_value"] > 0  # it learned that a high tone predicts reward


def test_scalar_reinforcement_also_learns(runs):
    for scalar in runs["scalar"]:
        assert scalar["drive_up_hz"] > 0
        assert contrast(scalar) > 0.3


def test_yoked_rewards_teach_no_rule(runs):
    """Random rewards make nothing worth pursuing: no learned drive, no gain beyond trial-sampling noise
    (the hit rates of 12-15 trials per quarter differ by up to ~0.25 without any learning)."""
    for name in ("vectorized_yoked", "scalar_yoked"):
        run = runs[name]
        assert run["rewards_delivered"] > 10, name
        assert abs(contrast(run)) < 0.1 * mean_contrast(runs["vectorized_short"]), name
        assert run["gain"] < 0.25, name
    assert runs["vectorized_yoked"]["tone_value"] == 0.0
    assert runs["vectorized_yoked"]["drive_up_hz"] == 0.0  # the tone never gained a value: no update at all


def test_vectorized_credit_beats_scalar_credit_at_equal_time(runs):
    """100 explored cells, 8 of them read: one global reinforcement signal spreads drive over cells that do not
    matter (and the drive budget is shared), per-cell credit concentrates it on the ensembles."""
    assert mean_contrast(runs["vectorized_short"]) > 1.25 * mean_contrast(runs["scalar"])


def test_without_feedback_vectorized_learns_slower(runs):
    """Without the tone only the reward's coincidence with each cell's own exploration is left: after the
    same time the ensembles' drive is well below what the tone taught."""
    assert mean_contrast(runs["vectorized_short"]) > 1.25 * mean_contrast(runs["vectorized_no_feedback"])


def test_without_feedback_only_reward_coincidence_teaches(runs):
    """Nothing presented: no tone value, no forward model; eligibility x reward error still learns."""
    for off in runs["vectorized_no_feedback"]:
        assert off["tone_value"] == 0.0
        assert off["drive_up_hz"] > 0 > off["drive_down_hz"]


def test_cli_prints_the_json_and_refuses_bad_arguments(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="rig")
    sub = parser.add_subparsers()
    sim = sub.add_parser("sim")
    sim_learn_cli.register_learn(sim.add_subparsers())
    assert sim_learn_cli.LEARNING_RULES == LEARNING_RULES and sim_learn_cli.REWARD_MODES == REWARD_MODES
    args = parser.parse_args(["sim", "learn", "--rule", "none", "--minutes", "12", "--baseline-minutes", "5",
                              "--seed", "2"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ok"] and out["rule"] == "none" and out["rewards"] == "contingent" and out["feedback"] == "on"
    for key in ("hit_rate_first_quarter", "hit_rate_last_quarter", "chance"):
        assert 0.0 <= out[key] <= 1.0
    args = parser.parse_args(["sim", "learn", "--minutes", "5"])  # shorter than the baseline
    assert args.func(args) == 2
    captured = capsys.readouterr()
    assert "must outlast the baseline" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["ok"] is False
