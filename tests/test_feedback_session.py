"""Feedback on in one short real session of the simulated rig (every process, the audio and display twins).

What a session with feedback must show: a grating row for every decision, a WAV whose instantaneous
frequency follows the logged pitch with no phase jump, cues where the decoder logged hits and misses, the
mouse hearing what was presented, latencies in the records, a replay that recomputes the same feedback, and
the stimulus in the NWB export.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import hilbert

from rig.core.store import read_events, read_records
from rig.offline.feedback import add_feedback_stimulus, feedback_latency

REPO = Path(__file__).resolve().parent.parent
SIM_CONFIG = REPO / "hardware_configs" / "sim.toml"
OVERRIDES = [
    "acquisition.sim.height_px=128", "acquisition.sim.width_px=128", "acquisition.sim.n_cells=30",
    "task.baseline_s=7", "task.trial_s=0.6", "task.iti_s=0.3", "task.hold_s=0.3", "task.timeout_s=0.3",
    "session.save_frames=false", "acquisition.sim.mouse.use_feedback=true",
    "feedback.enabled=true", "feedback.critical=true", "feedback.iti_grey=false",
]


def _rig(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rig.app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sets = [arg for item in OVERRIDES for arg in ("--set", item)]
    run = _rig("run", str(SIM_CONFIG), "--headless", "--duration", "16", "--sessions-dir",
               str(tmp_path_factory.mktemp("sessions")), *sets, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["completed_trials"] >= 3, summary
    return Path(summary["session"])


@pytest.mark.slow
def test_every_decision_has_its_grating_flip_and_latencies_are_recorded(session: Path) -> None:
    flips = read_records(session / "feedback" / "flips.rec")
    decisions = read_records(session / "decoder" / "decisions.rec")
    np.testing.assert_array_equal(flips["frame"], decisions["frame"])  # one to one, in order
    np.testing.assert_array_equal(flips["t_decided"], decisions["t_decided"])
    assert (np.diff(flips["photodiode"].astype(int)) != 0).all()  # the patch flips with every update
    assert (flips["t_flip"] >= flips["t_received"]).all() and (flips["t_received"] >= flips["t_decided"]).all()
    shown = np.isfinite(flips["orientation_deg"])
    assert shown.any() and not shown.all()  # a grating in trials, grey in the baseline
    lat = feedback_latency(session)
    assert lat["feedback_flip_latency_ms"]["n"] == len(flips) and lat["feedback_audio_latency_ms"]["n"] > 50
    final = read_events(session / "acquisition" / "events.jsonl", {"final_stats"})[-1]
    assert final["source_stats"]["feedback_heard"] >= len(flips) - 5  # the mouse perceived the feedback


@pytest.mark.slow
def test_the_wav_follows_the_logged_pitch_and_cues_sit_at_the_trial_events(session: Path) -> None:
    folder = session / "feedback"
    meta = json.loads((folder / "audio.json").read_text())
    fs, x = wavfile.read(folder / "audio.wav")
    assert fs == meta["sample_rate"] == 96000
    updates = read_records(folder / "audio_updates.rec")
    n_block = meta["block_samples"]
    np.testing.assert_array_equal(updates["t_audio"], meta["t0_ns"] + (updates["sample"] * 1e9 / fs).astype(np.int64))
    assert (updates["t_audio"] >= updates["t_received"]).all()
    assert ((updates["t_audio"] - updates["t_received"]) <= n_block * 1e9 / fs + 1).all()  # within one block

    cues = read_events(folder / "events.jsonl", {"cue_played"})
    outcomes = [e for e in read_events(session / "decoder" / "events.jsonl", {"trial"})
                if e["event"] in ("hit", "miss")]
    assert [c["cue"] for c in cues] == [e["event"] for e in outcomes] and cues
    for cue, event in zip(cues, outcomes, strict=True):
        assert 0 <= cue["t_audio"] - event["t_ns"] < 100_000_000  # bus hop + at most one block (loose: shared CI)
    cue_mask = np.zeros(len(x), bool)
    for cue in cues:
        cue_mask[cue["sample"]:cue["sample"] + int(0.5 * fs)] = True

    pitch = np.full(len(x), np.nan)
    starts = [*updates["sample"].tolist(), len(x)]
    steady = np.zeros(len(x), bool)
    ramp = int(0.005 * fs)
    for k, hz in enumerate(updates["tone_hz"]):
        pitch[starts[k]:starts[k + 1]] = hz
        steady[starts[k] + n_block + ramp:starts[k + 1]] = np.isfinite(hz)
    steady &= ~cue_mask
    inst = np.diff(np.unwrap(np.angle(hilbert(x.astype(np.float64))))) * fs / (2 * np.pi)
    steady = steady[1:]
    assert steady.sum() > fs  # at least a second of steady tone
    r = np.corrcoef(inst[steady], pitch[1:][steady])[0, 1]
    assert r >= 0.95, r
    cfg = json.loads((session / "config.resolved.json").read_text())["feedback"]
    slope = cfg["tone_volume"] * 32767 * 2 * np.pi * cfg["tone_max_hz"] / fs
    assert np.abs(np.diff(x.astype(np.float64)))[~cue_mask[1:]].max() <= slope * 1.01 + 2  # no phase jump


@pytest.mark.slow
def test_replay_recomputes_the_same_feedback_and_nwb_has_the_stimulus(session: Path) -> None:
    replay = _rig("replay", str(session), "--from-traces", "--no-progress", timeout=120)
    result = json.loads(replay.stdout.strip().splitlines()[-1])
    assert result["mismatches"] == 0, replay.stderr[-3000:]
    assert result["events_checked"] >= len(read_records(session / "feedback" / "flips.rec"))
    pynwb = pytest.importorskip("pynwb")
    nwb = pynwb.NWBFile(session_description="t", identifier="t", session_start_time=datetime.now(UTC))
    t0 = int(read_records(session / "decoder" / "decisions.rec")["t_decided"][0])
    assert add_feedback_stimulus(nwb, session, lambda ns: (np.asarray(ns, np.int64) - t0) / 1e9)
    assert {"feedback_tone_frequency", "feedback_grating_orientation"} <= set(nwb.stimulus)
