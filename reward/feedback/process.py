"""The feedback process: plays the tone and draws the grating the decoder's cursor asks for.

Subscribes to the decoder's ``dec.decision`` (every frame) and ``dec.trial`` (hits and misses get a cue),
runs them through :class:`~reward.feedback.plan.FeedbackPlanner` (the same pure function replay runs),
hands the pitch to the audio output and the orientation to the display, records both (``flips.rec``: one
row per decision; ``audio_updates.rec``: one row per pitch update, with the first sample carrying it) and
publishes ``fbk.update`` — what was presented, which is all the simulated mouse perceives.

Latency stamps: ``t_decided`` (decoder) → ``t_received`` (here) → ``t_flip`` (grating drawn) and
``t_audio`` (the first sample of the first block carrying the new pitch reaches the DAC, or would in the twin).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from reward.feedback.audio import DeviceAudioOut, SimAudioOut, audio_device_problem
from reward.feedback.config import OFF, SIM, FeedbackConfig
from reward.feedback.grating import ScreenDisplay, SimDisplay
from reward.feedback.plan import FeedbackPlanner, Stimulus
from rig.core.clock import now_ns
from rig.core.process import RigProcess
from rig.core.schema import Decision, FeedbackUpdate, TrialEvent
from rig.core.store import RecordWriter

FLIP_DTYPE = np.dtype([
    ("frame", "i8"), ("t_decided", "i8"), ("t_received", "i8"), ("t_flip", "i8"), ("tone_hz", "f4"),
    ("orientation_deg", "f4"), ("phase", "f4"), ("photodiode", "u1"), ("perceived", "f4"),
])
AUDIO_DTYPE = np.dtype([
    ("frame", "i8"), ("t_decided", "i8"), ("t_received", "i8"), ("tone_hz", "f4"), ("sample", "i8"),
    ("t_audio", "i8"),
])
#: Longest wait for a message per step (ms): the audio twin is pumped at least this often.
WAIT_MS = 2


class FeedbackProcess(RigProcess):
    """Audio and visual feedback to the animal, or their simulated twins (``[feedback]``)."""

    def configure(self) -> None:
        cfg: FeedbackConfig = self.config.feedback
        self.cfg = cfg
        problem = audio_device_problem(cfg)
        if problem:
            raise RuntimeError(problem)
        self._check_ranges()
        self.planner = FeedbackPlanner(cfg)
        flush_s = self.config.session.flush_interval_s
        self.flips = RecordWriter(self.dir / "flips.rec", FLIP_DTYPE, flush_s)
        self.audio_log: RecordWriter | None = None
        self.audio: SimAudioOut | DeviceAudioOut | None = None
        if cfg.audio == SIM:
            self.audio = SimAudioOut(cfg, self.dir)
        elif cfg.audio != OFF:
            self.audio = DeviceAudioOut(cfg, self.dir)
        if self.audio is not None:
            self.audio_log = RecordWriter(self.dir / "audio_updates.rec", AUDIO_DTYPE, flush_s)
        self.display: SimDisplay | ScreenDisplay | None = None
        if cfg.display == SIM:
            self.display = SimDisplay(cfg)
        elif cfg.display != OFF:
            screen = ScreenDisplay(cfg)
            self.display = screen
            self.events.write("display", monitor=cfg.monitor, presented_by=screen.presented_by)
            if screen.problem:
                self.warn("display_no_opengl", screen.problem)
        self.sub = self.subscribe(["decoder"], [Decision.topic, TrialEvent.topic])
        self._pending: dict[int, tuple[int, int, int, float]] = {}  # update id -> frame, t_decided, t_recv, hz
        self._update_id = 0
        self._photodiode = False
        self._last_tone = math.nan
        self._cue_frames: dict[int, tuple[str, int, int]] = {}
        self._cue_id = 0
        self.decisions = 0
        self._flip_lat_max = 0
        self._audio_lat_max = 0
        self._underflows_reported = 0

    def _check_ranges(self) -> None:
        """The decoder records its own tone/angle mapping ([task.feedback]); differing ranges are legal but odd."""
        task = getattr(getattr(self.config, "task", None), "feedback", None)
        cfg = self.cfg
        if task is None:
            return
        if (task.tone_min_hz, task.tone_max_hz) != (cfg.tone_min_hz, cfg.tone_max_hz):
            self.warn("feedback_range", f"[feedback] plays {cfg.tone_min_hz:g}-{cfg.tone_max_hz:g} Hz but the "
                                        f"decoder records tone_hz for {task.tone_min_hz:g}-{task.tone_max_hz:g} Hz")
        if cfg.orientation == "steps" and task.grating_bins != cfg.bins:
            self.warn("feedback_bins", f"[feedback] bins = {cfg.bins} but the decoder's angle_bin has "
                                       f"{task.grating_bins} bins ([task.feedback] grating_bins)")

    def ready_info(self) -> dict[str, str]:
        return {"audio": self.cfg.audio, "display": self.cfg.display, "sample_rate": str(self.cfg.sample_rate),
                "block_samples": str(self.cfg.block_samples)}

    def on_start(self) -> None:
        if self.audio is not None:
            self.audio.start()

    # ------------------------------------------------------------------ the loop
    def step(self) -> None:
        msg = self.sub.recv(WAIT_MS)
        while msg is not None:
            t_recv = now_ns()
            if self.audio is not None:
                self.audio.pump(t_recv)  # blocks that started before this message keep the old pitch
            if isinstance(msg, Decision):
                self._on_decision(msg, t_recv)
            elif isinstance(msg, TrialEvent):
                self._on_trial(msg, t_recv)
            msg = self.sub.recv(0)
        if self.audio is not None:
            self.audio.pump(now_ns())
            self._collect_audio()
        if self.display is not None:
            self.display.pump()
        self.flips.flush_if_due()
        if self.audio_log is not None:
            self.audio_log.flush_if_due()

    def _on_decision(self, msg: Decision, t_recv: int) -> None:
        stim = self.planner.on_decision(msg.frame, msg.t_decided, msg.mode, msg.trial_state, msg.cursor_norm,
                                        msg.angle_bin)
        self.decisions += 1
        if self.audio is not None and not (math.isnan(stim.tone_hz) and math.isnan(self._last_tone)):
            self._update_id += 1
            self._pending[self._update_id] = (msg.frame, msg.t_decided, t_recv, stim.tone_hz)
            self.audio.synth.set_target(stim.tone_hz, self._update_id)
        self._last_tone = stim.tone_hz
        self._photodiode = not self._photodiode
        t_flip = self.display.show(stim.orientation_deg, stim.phase, self._photodiode) if self.display else 0
        self._log_flip(stim, msg.t_decided, t_recv, t_flip)
        if t_flip:
            self._flip_lat_max = max(self._flip_lat_max, t_flip - msg.t_decided)
        self.publish(FeedbackUpdate(frame=msg.frame, t_decided=msg.t_decided, t_flip=t_flip, tone_hz=stim.tone_hz,
                                    orientation_deg=stim.orientation_deg, perceived=stim.perceived))

    def _log_flip(self, stim: Stimulus, t_decided: int, t_recv: int, t_flip: int) -> None:
        row = self.flips.next_row()
        row["frame"] = stim.frame
        row["t_decided"] = t_decided
        row["t_received"] = t_recv
        row["t_flip"] = t_flip
        row["tone_hz"] = stim.tone_hz
        row["orientation_deg"] = stim.orientation_deg
        row["phase"] = stim.phase
        row["photodiode"] = self._photodiode
        row["perceived"] = stim.perceived
        self.flips.commit()

    def _on_trial(self, msg: TrialEvent, t_recv: int) -> None:
        cue = self.planner.on_trial(msg.kind, msg.frame)
        if cue is None:
            return
        self.events.write("trial_cue", cue=cue.kind, frame=cue.frame, t_event=msg.t_ns, t_received=t_recv)
        if self.audio is not None:
            self.audio.synth.cue(cue.kind)

    def _collect_audio(self) -> None:
        """Log the pitch updates and cues the audio output has started playing since the last step."""
        assert self.audio is not None and self.audio_log is not None
        synth = self.audio.synth
        while synth.applied:
            update_id, sample = synth.applied.popleft()
            pending = self._pending.pop(update_id, None)
            if pending is None:
                continue  # the safe-state fade-out, or an update superseded before its block
            frame, t_decided, t_recv, tone_hz = pending
            t_audio = self.audio.sample_time_ns(sample)
            row = self.audio_log.next_row()
            row["frame"], row["t_decided"], row["t_received"] = frame, t_decided, t_recv
            row["tone_hz"], row["sample"], row["t_audio"] = tone_hz, sample, t_audio
            self.audio_log.commit()
            if t_audio:
                self._audio_lat_max = max(self._audio_lat_max, t_audio - t_decided)
        for update_id in [u for u in self._pending if u < self._update_id]:
            del self._pending[update_id]  # superseded within one block: never played, not logged
        while synth.cues_started:
            kind, sample = synth.cues_started.popleft()
            self.events.write("cue_played", cue=kind, sample=sample, t_audio=self.audio.sample_time_ns(sample))
        underflows = getattr(self.audio, "status_flags", 0)
        if underflows > self._underflows_reported:
            self._underflows_reported = underflows
            self.warn("audio_underflow", f"the sound card reported {underflows} under/overflow(s) so far")

    # ------------------------------------------------------------------ lifecycle
    def on_safe_state(self, reason: str) -> None:
        """Silence and a grey screen: no feedback from a rig that is failing."""
        if getattr(self, "audio", None) is not None:
            self.audio.synth.set_target(math.nan, 0)
        if getattr(self, "display", None) is not None:
            self.display.show(math.nan, 0.0, self._photodiode)

    def on_stop(self) -> None:
        # (also after a failed configure: close what was opened)
        closers: list[Any] = [getattr(self, name, None) for name in ("flips", "audio", "audio_log", "display")]
        for obj in closers:
            if obj is not None:
                obj.close()

    def heartbeat_stats(self) -> dict[str, float]:
        return {"decisions": float(self.decisions), "flip_latency_max_ms": self._flip_lat_max / 1e6,
                "audio_latency_max_ms": self._audio_lat_max / 1e6}
