"""Feedback to the animal: the pure parts (planner, synthesis, WAV twin, offscreen grating) and bad configs.

The WAV checks follow what a listener would measure: the Hilbert instantaneous frequency of the recorded
samples against the logged pitch, sample-to-sample steps against the tone's own slope, cue onsets against
the trial events that asked for them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import hilbert

from reward.feedback.audio import SimAudioOut, ToneSynth, WavWriter, audio_device_problem
from reward.feedback.config import FeedbackConfig
from reward.feedback.grating import GratingRenderer, SimDisplay, monitor_problem
from reward.feedback.plan import FeedbackPlanner, plan_session
from rig.app.config import config_from_dict
from rig.core.codes import Mode, TrialState
from rig.core.settings import ConfigError
from tests.conftest import REPO

FRAME_NS = 33_333_333


# ---------------------------------------------------------------------------- a simulated session


def synthetic_session(n: int = 600, seed: int = 3) -> tuple[np.ndarray, list[dict]]:
    """Decisions (decisions.rec layout, the fields the planner reads) and trial events of a BCI session."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype([("frame", "i8"), ("t_decided", "i8"), ("mode", "i2"), ("trial_state", "i2"),
                      ("cursor_norm", "f4"), ("angle_bin", "i2")])
    rows = np.zeros(n, dtype)
    rows["frame"] = np.arange(n)
    rows["t_decided"] = 10**9 + np.arange(n) * FRAME_NS
    rows["mode"] = Mode.BCI
    rows[:60]["mode"] = Mode.BASELINE
    cursor = np.clip(0.5 + np.cumsum(rng.normal(0, 0.05, n)) * 0.3, 0, 1)
    rows["cursor_norm"] = cursor
    rows["angle_bin"] = np.minimum((cursor * 6).astype(int), 5)
    events: list[dict] = []
    state = TrialState.ITI
    for i in range(60, n):  # 60-frame trials after a 10-frame ITI; every other one a hit
        k = (i - 60) % 70
        if k == 0:
            state = TrialState.ITI
            events.append({"kind": "trial", "event": "iti", "frame": i})
        elif k == 10:
            state = TrialState.TRIAL
            events.append({"kind": "trial", "event": "trial_start", "frame": i})
        elif k == 55:
            hit = ((i - 60) // 70) % 2 == 0
            state = TrialState.HOLD if hit else TrialState.TIMEOUT
            events.append({"kind": "trial", "event": "hit" if hit else "miss", "frame": i})
        rows[i]["trial_state"] = state
    rows[:60]["cursor_norm"] = np.nan
    return rows, events


class Feeder:
    """What the process does with each message, on a virtual clock: pump the audio to the arrival, then apply."""

    def __init__(self, cfg: FeedbackConfig, folder: Path, bus_delay_ns: int = 1_000_000) -> None:
        self.cfg = cfg
        self.planner = FeedbackPlanner(cfg)
        self.audio = SimAudioOut(cfg, folder)
        self.audio.start()
        self.audio.t0_ns = 10**9 - 5_000_000
        self.delay = bus_delay_ns
        self.updates: list[tuple[int, int, float, int]] = []  # frame, t_arrival, tone_hz, first sample
        self.cues: list[tuple[str, int, int]] = []  # kind, t_arrival, first sample
        self._ids: dict[int, tuple[int, int, float]] = {}
        self.stimuli = []

    def decision(self, row: np.void) -> None:
        t = int(row["t_decided"]) + self.delay
        self.audio.pump(t)
        self._collect()
        stim = self.planner.on_decision(int(row["frame"]), int(row["t_decided"]), int(row["mode"]),
                                        int(row["trial_state"]), float(row["cursor_norm"]), int(row["angle_bin"]))
        last = self.stimuli[-1].tone_hz if self.stimuli else math.nan
        self.stimuli.append(stim)
        if math.isnan(stim.tone_hz) and math.isnan(last):
            return  # silence stays silence: no update (as the process does)
        self._ids[len(self._ids) + 1] = (stim.frame, t, stim.tone_hz)
        self.audio.synth.set_target(stim.tone_hz, len(self._ids))

    def event(self, event: dict, t: int) -> None:
        self.audio.pump(t)
        self._collect()
        cue = self.planner.on_trial(event["event"], event["frame"])
        if cue is not None:
            self.audio.synth.cue(cue.kind)
            self.cues.append((cue.kind, t, -1))

    def _collect(self) -> None:
        synth = self.audio.synth
        while synth.applied:
            uid, sample = synth.applied.popleft()
            frame, t, hz = self._ids[uid]
            self.updates.append((frame, t, hz, sample))
        while synth.cues_started:
            kind, sample = synth.cues_started.popleft()
            i = next(k for k, c in enumerate(self.cues) if c[2] < 0)
            self.cues[i] = (kind, self.cues[i][1], sample)

    def run(self, rows: np.ndarray, events: list[dict]) -> None:
        by_frame: dict[int, list[dict]] = {}
        for e in events:
            by_frame.setdefault(e["frame"], []).append(e)
        for row in rows:
            self.decision(row)
            for e in by_frame.get(int(row["frame"]), []):
                self.event(e, int(row["t_decided"]) + self.delay + 100_000)
        self.audio.pump(int(rows["t_decided"][-1]) + 2 * FRAME_NS)
        self._collect()
        self.audio.close()


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> tuple[Feeder, np.ndarray, int, np.ndarray, list[dict]]:
    folder = tmp_path_factory.mktemp("feedback")
    cfg = FeedbackConfig(enabled=True, sample_rate=96000, block_ms=2.0)
    rows, events = synthetic_session()
    feeder = Feeder(cfg, folder)
    feeder.run(rows, events)
    fs, samples = wavfile.read(folder / "audio.wav")
    return feeder, samples, fs, rows, events


def expected_pitch(feeder: Feeder, n_samples: int) -> np.ndarray:
    """The logged pitch per sample (NaN: silent), from the first sample of each update's block on."""
    pitch = np.full(n_samples, np.nan)
    for (_, _, hz, start), nxt in zip(feeder.updates, [*feeder.updates[1:], (0, 0, 0.0, n_samples)], strict=True):
        pitch[start:nxt[3]] = hz
    return pitch


def cue_mask(feeder: Feeder, n_samples: int, cfg: FeedbackConfig) -> np.ndarray:
    mask = np.zeros(n_samples, bool)
    for kind, _, start in feeder.cues:
        length = int((cfg.hit_cue_ms if kind == "hit" else cfg.miss_cue_ms) * cfg.sample_rate / 1000)
        mask[start:start + length] = True
    return mask


def test_the_wav_is_every_sample_rendered_with_a_valid_header(played):
    feeder, samples, fs, _, _ = played
    assert fs == 96000 and samples.dtype == np.int16
    assert len(samples) == feeder.audio.synth.samples_rendered


def test_instantaneous_frequency_follows_the_logged_pitch(played):
    feeder, samples, fs, _, _ = played
    cfg = feeder.cfg
    pitch = expected_pitch(feeder, len(samples))
    n_block, ramp = cfg.block_samples, int(cfg.ramp_ms * fs / 1000)
    steady = np.isfinite(pitch) & ~cue_mask(feeder, len(samples), cfg)
    # drop the glide block after each change and the fade-in after silence (the frequency is in between there)
    for _, _, _, start in feeder.updates:
        steady[start:start + n_block + ramp] = False
    inst = np.diff(np.unwrap(np.angle(hilbert(samples.astype(np.float64))))) * fs / (2 * np.pi)
    steady = steady[1:]
    assert steady.sum() > fs * 5  # several seconds of tone were checked
    r = np.corrcoef(inst[steady], pitch[1:][steady])[0, 1]
    assert r >= 0.95, r
    rel = np.median(np.abs(inst[steady] / pitch[1:][steady] - 1))
    assert rel < 0.01


def test_no_phase_jumps_beyond_the_tones_own_slope(played):
    feeder, samples, fs, _, _ = played
    cfg = feeder.cfg
    x = samples.astype(np.float64)
    step = np.abs(np.diff(x))
    slope = cfg.tone_volume * 32767 * 2 * np.pi * cfg.tone_max_hz / fs  # the steepest the tone itself may be
    away_from_cues = ~cue_mask(feeder, len(x), cfg)[1:]
    assert step[away_from_cues].max() <= slope * 1.01 + 2  # +2 LSB of rounding


def test_a_pitch_change_is_heard_within_one_block_of_arriving(played):
    feeder, _, fs, _, _ = played
    block_ns = feeder.cfg.block_samples * 1e9 / fs
    for _, t_arrival, _, start in feeder.updates:
        t_block = feeder.audio.sample_time_ns(start)
        assert 0 <= t_block - t_arrival <= block_ns + 1
    assert feeder.cfg.block_ms <= 5.0


def test_cues_sit_at_the_logged_trial_events(played):
    feeder, samples, fs, _, events = played
    kinds = [e["event"] for e in events if e["event"] in ("hit", "miss")]
    assert [c[0] for c in feeder.cues] == kinds and len(kinds) >= 6
    block_ns = feeder.cfg.block_samples * 1e9 / fs
    for kind, t_event, start in feeder.cues:
        assert 0 <= feeder.audio.sample_time_ns(start) - t_event <= block_ns + 1
        burst = samples[start:start + int(0.05 * fs)].astype(np.float64)
        assert np.abs(burst).max() > 0.2 * 32767, kind  # the cue is there, on top of (or instead of) the tone


def test_silent_outside_trials_and_in_the_baseline(played):
    feeder, samples, fs, rows, _ = played
    first_bci = feeder.updates[0][3]  # the baseline gave no update (feedback during the baseline is off)
    assert feeder.audio.sample_time_ns(first_bci) > int(rows["t_decided"][60])
    assert not np.any(samples[:first_bci])


# ---------------------------------------------------------------------------- the planner


def test_the_plan_of_a_session_equals_the_live_planner_run_message_by_message(played):
    feeder, _, _, rows, events = played
    planned, cues = plan_session(feeder.cfg, rows, events)
    assert len(planned["frame"]) == len(rows) == len(feeder.stimuli)
    np.testing.assert_array_equal(planned["tone_hz"], [s.tone_hz for s in feeder.stimuli])
    np.testing.assert_array_equal(planned["orientation_deg"], [s.orientation_deg for s in feeder.stimuli])
    np.testing.assert_array_equal(planned["phase"], [s.phase for s in feeder.stimuli])
    assert [c.kind for c in cues] == [c[0] for c in feeder.cues]


def test_steps_hold_grey_and_baseline():
    cfg = FeedbackConfig(hold_target_s=0.5)
    p = FeedbackPlanner(cfg)
    s = p.on_decision(0, 0, Mode.BCI, TrialState.TRIAL, 0.5, 3)
    assert s.orientation_deg == 45.0 and s.tone_hz == pytest.approx(2000 * 9 ** 0.5)
    assert s.perceived == pytest.approx(0.5)
    assert p.on_trial("hit", 0) is not None
    held = p.on_decision(1, 400_000_000, Mode.BCI, TrialState.HOLD, 0.1, 0)
    assert held.orientation_deg == cfg.target_deg == 75.0 and held.tone_hz == cfg.tone_max_hz
    grey = p.on_decision(2, 600_000_000, Mode.BCI, TrialState.ITI, 0.1, 0)
    assert math.isnan(grey.orientation_deg) and math.isnan(grey.tone_hz) and math.isnan(grey.perceived)
    assert math.isnan(p.on_decision(3, 7 * 10**8, Mode.BASELINE, 0, 0.5, 3).tone_hz)  # off in the baseline
    on = FeedbackPlanner(FeedbackConfig(during_baseline=True, orientation="continuous"))
    s = on.on_decision(0, 0, Mode.BASELINE, 0, 0.5, 3)
    assert s.orientation_deg == pytest.approx(37.5) and math.isfinite(s.tone_hz)
    assert math.isfinite(FeedbackPlanner(FeedbackConfig(iti_grey=False)).on_decision(
        0, 0, Mode.BCI, TrialState.ITI, 0.2, 1).orientation_deg)
    assert math.isnan(p.on_decision(4, 8 * 10**8, Mode.PAUSED, TrialState.TRIAL, 0.5, 3).tone_hz)


# ---------------------------------------------------------------------------- synthesis details


def test_glide_is_phase_continuous_within_the_block():
    cfg = FeedbackConfig(sample_rate=96000, block_ms=2.0, ramp_ms=0.5)
    synth = ToneSynth(cfg)
    out = np.zeros(synth.n, np.int16)
    synth.set_target(3000.0, 1)
    blocks = []
    for k in range(40):
        if k == 20:
            synth.set_target(15000.0, 2)
        synth.render(out)
        blocks.append(out.copy())
    x = np.concatenate(blocks).astype(np.float64)
    slope = cfg.tone_volume * 32767 * 2 * np.pi * 15000 / cfg.sample_rate
    assert np.abs(np.diff(x)).max() <= slope * 1.01 + 2
    assert [a for a in synth.applied] == [(1, 0), (2, 20 * synth.n)]


def test_wav_header_is_valid_while_writing_and_after_close(tmp_path):
    w = WavWriter(tmp_path / "a.wav", 48000, header_every_s=0.01)
    w.write(np.arange(1000, dtype=np.int16))
    fs, data = wavfile.read(tmp_path / "a.wav")  # mid-session: the header already counts what was written
    assert fs == 48000 and len(data) == 1000
    w.write(np.arange(10, dtype=np.int16))
    w.close()
    assert len(wavfile.read(tmp_path / "a.wav")[1]) == 1010


# ---------------------------------------------------------------------------- the grating


def test_offscreen_grating_orientation_phase_and_photodiode():
    cfg = FeedbackConfig(sim_width_px=64, sim_height_px=64, photodiode_corner="bottom_right")
    r = GratingRenderer(cfg, 64, 64, period_px=16.0, patch_px=4)
    vertical = r.render(0.0, 0.0, True).astype(float)
    assert np.ptp(vertical[10, :40]) > 200 and np.ptp(vertical[:40, 10]) < 2  # 0°: bars vary along x only
    horizontal = r.render(90.0, 0.0, False).astype(float)
    assert np.ptp(horizontal[:40, 10]) > 200 and np.ptp(horizontal[10, :40]) < 2
    assert (horizontal[-4:, -4:] == 0).all()
    shifted = r.render(0.0, 0.25, True)
    assert not np.array_equal(shifted[:40, :40], vertical[:40, :40].astype(np.uint8))
    assert (shifted[-4:, -4:] == 255).all()
    assert (r.render(math.nan, 0.0, True)[:40, :40] == 128).all()  # grey
    SimDisplay(FeedbackConfig()).show(30.0, 0.1, True)


# ---------------------------------------------------------------------------- bad configs, before the session


def test_top_frequency_above_nyquist_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"feedback\.tone_max_hz.*Nyquist"):
        config_from_dict({"feedback": {"sample_rate": 44100, "tone_max_hz": 23000.0}})
    config_from_dict({"feedback": {"sample_rate": 192000, "tone_max_hz": 60000.0}})  # 192 kHz allowed
    with pytest.raises(ConfigError, match=r"feedback\.block_ms"):
        config_from_dict({"feedback": {"block_ms": 10.0}})
    with pytest.raises(ConfigError, match=r"feedback\.sample_rate"):
        config_from_dict({"feedback": {"sample_rate": 12345}})


def test_a_monitor_that_does_not_exist_is_refused(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    cfg = FeedbackConfig(display="screen", monitor=7)
    problem = monitor_problem(cfg, display_available=True)
    assert "monitor = 7" in problem and "no such monitor" in problem
    assert monitor_problem(FeedbackConfig(display="screen", monitor=0), display_available=True) == ""
    assert "no display" in monitor_problem(cfg, display_available=False)
    assert monitor_problem(FeedbackConfig(display="sim", monitor=7), display_available=False) == ""


def test_a_missing_sound_device_is_refused_with_the_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sounddevice(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    problem = audio_device_problem(FeedbackConfig(audio="default"))
    assert "sounddevice" in problem and 'pip install "bci-rig[feedback]"' in problem
    assert audio_device_problem(FeedbackConfig(audio="sim")) == ""


# ---------------------------------------------------------------------------- the real outputs, without hardware


def test_the_sound_card_path_renders_blocks_in_the_portaudio_callback(monkeypatch, tmp_path):
    """A stand-in for sounddevice: the stream is opened with one block of int16 and the callback fills it."""
    import sys
    import types

    opened: dict = {}

    class FakeStream:
        latency = 0.004

        def __init__(self, **kwargs):
            opened.update(kwargs)

        def start(self):
            opened["started"] = True

        def stop(self):
            pass

        def close(self):
            opened["closed"] = True

    fake = types.SimpleNamespace(OutputStream=FakeStream, check_output_settings=lambda **kw: None)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    from reward.feedback.audio import DeviceAudioOut

    cfg = FeedbackConfig(audio="default", sample_rate=96000, block_ms=2.0)
    assert audio_device_problem(cfg) == ""
    out = DeviceAudioOut(cfg, tmp_path)
    out.start()
    assert opened["blocksize"] == 192 and opened["dtype"] == "int16" and opened["latency"] == "low"
    assert opened["samplerate"] == 96000 and opened["started"]
    out.synth.set_target(4000.0, 1)
    buf = np.zeros((192, 1), np.int16)
    timing = types.SimpleNamespace(outputBufferDacTime=1.004, currentTime=1.0)
    for _ in range(5):
        opened["callback"](buf, 192, timing, 0)
    assert np.abs(buf).max() > 1000 and out.synth.applied[0] == (1, 0)
    assert out.sample_time_ns(192) - out.sample_time_ns(0) == 2_000_000
    out.close()
    assert opened["closed"]


def test_the_full_screen_window_opens_on_the_chosen_monitor_offscreen(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from reward.feedback.grating import ScreenDisplay

    display = ScreenDisplay(FeedbackConfig(display="screen", monitor=0))
    # Qt's offscreen platform has no OpenGL: the window says so and paints with the raster engine instead
    assert display.presented_by == "raster" and "no OpenGL context" in display.problem
    t = display.show(15.0, 0.2, True)
    display.pump()
    assert t > 0 and display.window.isVisible()
    assert (display.renderer.image[-2:, -2:] == 255).all()
    display.close()
    with pytest.raises(RuntimeError, match="no such monitor"):
        ScreenDisplay(FeedbackConfig(display="screen", monitor=9))


def test_a_whatif_replay_writes_the_feedback_its_decisions_would_have_given(tmp_path, played):
    from rig.core.store import read_events, read_records
    from rig.offline.feedback import feedback_latency, write_feedback_plan

    feeder, _, _, rows, events = played
    assert write_feedback_plan(tmp_path, feeder.cfg, rows, events) == len(rows)
    plan = read_records(tmp_path / "feedback" / "plan.rec")
    np.testing.assert_array_equal(plan["frame"], rows["frame"])
    np.testing.assert_array_equal(plan["orientation_deg"], np.float32([s.orientation_deg for s in feeder.stimuli]))
    assert [e["cue"] for e in read_events(tmp_path / "feedback" / "events.jsonl")] == [c[0] for c in feeder.cues]
    assert feedback_latency(tmp_path / "no-feedback-here") == {}


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Debian's xvfb and Mesa (installed by .ci/run)")
def test_the_grating_is_presented_with_opengl_and_stamped_at_the_buffer_swap(tmp_path):
    """On an X display with OpenGL (Xvfb + Mesa's software renderer here) the window is a vsync'd OpenGL surface
    and every flip is stamped when its swap is done, after the flip was asked for."""
    script = tmp_path / "flips.py"
    script.write_text(
        "import json\n"
        "from reward.feedback.config import FeedbackConfig\n"
        "from reward.feedback.grating import ScreenDisplay\n"
        "from rig.core.clock import now_ns\n"
        "d = ScreenDisplay(FeedbackConfig(display='screen', monitor=0))\n"
        "pairs = [(now_ns(), d.show(15.0 * i, 0.1 * i, bool(i % 2))) for i in range(8)]\n"
        "d.close()\n"
        "print(json.dumps({'presented_by': d.presented_by, 'pairs': pairs}))\n", encoding="utf-8")
    display = f":{90 + os.getpid() % 100}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        for _attempt in range(50):  # Xvfb takes a moment to accept clients
            done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                                  cwd=REPO, timeout=60)
            if done.returncode == 0 or "could not connect to display" not in done.stderr:
                break
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        xvfb.kill()
        xvfb.wait()
    assert result["presented_by"] == "opengl"
    asked, flipped = zip(*result["pairs"], strict=True)
    assert all(f >= a for a, f in zip(asked, flipped, strict=True))
    assert list(flipped) == sorted(flipped)
