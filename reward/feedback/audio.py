"""The tone and the cues as samples: phase-continuous synthesis, the WAV twin and the sound card.

:class:`ToneSynth` renders one block at a time. The phase is accumulated sample by sample and the frequency
glides linearly from the old to the new pitch across the block in which a new pitch arrives, so a pitch
change is never a phase jump (no click); the tone's gain ramps over ``ramp_ms`` when it starts or stops.
Cues (a tone pip for a hit, a white-noise burst for a miss) are precomputed and mixed in from the next block.

Outputs: :class:`SimAudioOut` writes the blocks, as they would be played, to ``feedback/audio.wav``
(sample n is heard at ``t0_ns + n / sample_rate``, ``feedback/audio.json``); :class:`DeviceAudioOut` plays them
through a low-latency PortAudio callback stream (``sounddevice``, imported only here, only then).
"""

from __future__ import annotations

import collections
import json
import math
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from reward.feedback.config import FeedbackConfig
from rig.core.clock import now_ns
from rig.core.store import write_all

INSTALL_HINT = 'pip install "bci-rig[feedback]"  (or: pip install sounddevice)'
FULL_SCALE = 32767.0


class ToneSynth:
    """Block synthesis of the feedback tone plus cues; ``set_target`` may be called from another thread."""

    def __init__(self, cfg: FeedbackConfig) -> None:
        self.cfg = cfg
        self.fs = cfg.sample_rate
        self.n = cfg.block_samples
        n = self.n
        self._glide = np.arange(1, n + 1, dtype=np.float64) / n  # 1/n .. 1: the new pitch is reached at the end
        self._gain_step = 1.0 / max(1.0, cfg.ramp_ms * self.fs / 1000.0)
        self._freq = np.empty(n)
        self._phase_buf = np.empty(n)
        self._gain_buf = np.empty(n)
        self._mix = np.empty(n)
        self.phase = 0.0  # radians, of the next sample
        self.freq_hz = cfg.tone_min_hz  # frequency of the last sample rendered
        self.gain = 0.0
        self.samples_rendered = 0
        self._pending: tuple[float, int] | None = None  # (tone_hz or NaN, update id), swapped in at a block start
        self._target_hz = cfg.tone_min_hz
        self._target_gain = 0.0
        self._cues: collections.deque[np.ndarray] = collections.deque()
        self._playing: list[list[Any]] = []  # [samples, position]
        self.cue_samples = {"hit": self._pip(cfg), "miss": self._noise(cfg)}
        self.applied: collections.deque[tuple[int, int]] = collections.deque()  # (update id, first sample)
        self.cues_started: collections.deque[tuple[str, int]] = collections.deque()
        self._cue_kinds: collections.deque[str] = collections.deque()

    def _ramp(self, n: int) -> np.ndarray:
        r = max(1, min(n // 2, int(self.cfg.ramp_ms * self.fs / 1000.0)))
        env = np.ones(n)
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
        env[:r] = edge
        env[n - r:] = edge[::-1]
        return env

    def _pip(self, cfg: FeedbackConfig) -> np.ndarray:
        n = max(1, int(cfg.hit_cue_ms * self.fs / 1000.0))
        t = np.arange(n) / self.fs
        return cfg.hit_volume * self._ramp(n) * np.sin(2 * np.pi * cfg.hit_cue_hz * t)

    def _noise(self, cfg: FeedbackConfig) -> np.ndarray:
        n = max(1, int(cfg.miss_cue_ms * self.fs / 1000.0))
        noise = np.random.default_rng(cfg.noise_seed).uniform(-1.0, 1.0, n)
        return cfg.miss_volume * self._ramp(n) * noise

    # ------------------------------------------------------------------ control (any thread)
    def set_target(self, tone_hz: float, update_id: int) -> None:
        """The pitch from the next block on (NaN: fade out). One assignment: safe against the audio thread."""
        self._pending = (tone_hz, update_id)

    def cue(self, kind: str) -> None:
        self._cue_kinds.append(kind)

    # ------------------------------------------------------------------ the audio thread
    def render(self, out: np.ndarray) -> None:
        """Fill ``out`` (one block, int16) with the next samples."""
        pending, self._pending = self._pending, None
        if pending is not None:
            tone_hz, update_id = pending
            if math.isfinite(tone_hz):
                self._target_hz = tone_hz
                if self.gain == 0.0:
                    self.freq_hz = tone_hz  # starting from silence: no glide from a pitch nobody heard
                self._target_gain = 1.0
            else:
                self._target_gain = 0.0
            self.applied.append((update_id, self.samples_rendered))
        while self._cue_kinds:
            kind = self._cue_kinds.popleft()
            self._playing.append([self.cue_samples[kind], 0])
            self.cues_started.append((kind, self.samples_rendered))
        n = self.n
        f0, f1 = self.freq_hz, self._target_hz
        np.multiply(self._glide, f1 - f0, out=self._freq)
        self._freq += f0
        # phase of sample k = phase + 2*pi/fs * sum(freq[:k]): exact per-sample accumulation
        inc = self._freq * (2 * np.pi / self.fs)
        np.cumsum(inc, out=self._phase_buf)
        self._phase_buf -= inc
        self._phase_buf += self.phase
        self.phase = float((self.phase + inc.sum()) % (2 * np.pi))
        self.freq_hz = f1
        g0, g1 = self.gain, self._target_gain
        if g0 == g1:
            self._gain_buf.fill(g0)
        else:
            step = self._gain_step if g1 > g0 else -self._gain_step
            np.multiply(np.arange(1, n + 1), step, out=self._gain_buf)
            self._gain_buf += g0
            np.clip(self._gain_buf, 0.0, 1.0, out=self._gain_buf)
            self.gain = float(self._gain_buf[-1])
        np.sin(self._phase_buf, out=self._mix)
        self._mix *= self._gain_buf
        self._mix *= self.cfg.tone_volume
        for cue in self._playing:
            samples, pos = cue
            take = min(n, len(samples) - pos)
            self._mix[:take] += samples[pos:pos + take]
            cue[1] = pos + take
        self._playing = [c for c in self._playing if c[1] < len(c[0])]
        np.multiply(self._mix, FULL_SCALE, out=self._mix)
        np.clip(self._mix, -FULL_SCALE, FULL_SCALE, out=self._mix)
        np.rint(self._mix, out=self._mix)
        out[:] = self._mix
        self.samples_rendered += n


class WavWriter:
    """A mono 16-bit PCM WAV appended as data comes: the header is valid from the start and rewritten (sizes)
    every ``header_every_s`` and at close, so a crash leaves a readable file missing at most that much."""

    HEADER = 44

    def __init__(self, path: str | Path, sample_rate: int, header_every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        self._fd = os.open(self.path, flags, 0o644)
        self.samples = 0
        self._header_every = int(header_every_s * sample_rate)
        self._next_header = self._header_every
        write_all(self._fd, self._header(0))

    def _header(self, n: int) -> bytes:
        data = n * 2
        return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " +
                struct.pack("<IHHIIHH", 16, 1, 1, self.sample_rate, self.sample_rate * 2, 2, 16) +
                b"data" + struct.pack("<I", data))

    def write(self, block: np.ndarray) -> None:
        os.lseek(self._fd, 0, os.SEEK_END)
        write_all(self._fd, memoryview(np.ascontiguousarray(block, dtype="<i2")))
        self.samples += len(block)
        if self.samples >= self._next_header:
            self._rewrite_header()
            self._next_header = self.samples + self._header_every

    def _rewrite_header(self) -> None:
        os.lseek(self._fd, 0, os.SEEK_SET)
        write_all(self._fd, self._header(self.samples))

    def close(self) -> None:
        if self._fd >= 0:
            self._rewrite_header()
            os.close(self._fd)
            self._fd = -1


class SimAudioOut:
    """The sound card's twin: blocks are rendered on the rig clock as a callback stream would ask for them,
    and written to ``audio.wav``. ``pump(until)`` renders every block that starts before ``until``."""

    def __init__(self, cfg: FeedbackConfig, folder: Path) -> None:
        self.synth = ToneSynth(cfg)
        self.fs = cfg.sample_rate
        self.wav = WavWriter(folder / "audio.wav", cfg.sample_rate)
        self._block = np.zeros(self.synth.n, np.int16)
        self.folder = folder
        self.t0_ns = 0

    def start(self) -> None:
        self.t0_ns = now_ns()
        meta = {"t0_ns": self.t0_ns, "sample_rate": self.fs, "block_samples": self.synth.n, "channels": 1,
                "dtype": "int16", "device": "sim",
                "note": "sample n was (would have been) played at t0_ns + n * 1e9 / sample_rate"}
        (self.folder / "audio.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    def sample_time_ns(self, sample: int) -> int:
        return self.t0_ns + int(sample * 1e9 / self.fs)

    def pump(self, until_ns: int) -> None:
        synth = self.synth
        while self.sample_time_ns(synth.samples_rendered) <= until_ns:
            synth.render(self._block)
            self.wav.write(self._block)

    def close(self) -> None:
        self.wav.close()


class DeviceAudioOut:
    """A PortAudio callback stream (``sounddevice``) of int16 blocks of ``block_samples``, latency "low"."""

    def __init__(self, cfg: FeedbackConfig, folder: Path) -> None:
        sd = import_sounddevice()
        self.synth = ToneSynth(cfg)
        self.fs = cfg.sample_rate
        self.folder = folder
        self.device: Any = int(cfg.audio) if cfg.audio.isdigit() else (None if cfg.audio == "default" else cfg.audio)
        sd.check_output_settings(device=self.device, channels=1, dtype="int16", samplerate=self.fs)
        self.t0_ns = 0
        self.dac_offset_ns = 0
        self._lock = threading.Lock()
        self.status_flags = 0
        self.stream = sd.OutputStream(samplerate=self.fs, blocksize=self.synth.n, channels=1, dtype="int16",
                                      latency="low", device=self.device, callback=self._callback)

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.status_flags += 1  # an underflow: counted and reported by the process
        if self.t0_ns == 0:
            self.dac_offset_ns = int(max(0.0, time_info.outputBufferDacTime - time_info.currentTime) * 1e9)
            self.t0_ns = now_ns() + self.dac_offset_ns
        self.synth.render(outdata[:, 0])

    def start(self) -> None:
        self.stream.start()
        meta = {"sample_rate": self.fs, "block_samples": self.synth.n, "device": str(self.device),
                "latency_s": float(self.stream.latency)}
        (self.folder / "audio.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    def sample_time_ns(self, sample: int) -> int:
        """When ``sample`` reached the DAC: the first block's DAC time plus the sample count (the stream's clock)."""
        return self.t0_ns + int(sample * 1e9 / self.fs) if self.t0_ns else 0

    def pump(self, until_ns: int) -> None:
        """Nothing to do: the PortAudio thread asks for the blocks."""

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


def import_sounddevice() -> Any:
    """``sounddevice`` or a clear error naming the install command (PortAudio missing counts as missing)."""
    try:
        import sounddevice  # noqa: PLC0415 - only a rig with a real sound card needs it
    except (ImportError, OSError) as exc:
        raise RuntimeError(f"[feedback] audio names a sound device, but sounddevice cannot be imported ({exc}); "
                           f"install it with: {INSTALL_HINT}, or set feedback.audio = \"sim\"") from exc
    return sounddevice


def audio_device_problem(cfg: FeedbackConfig) -> str:
    """Why the configured sound device cannot be used here ("" when it can, or when none is used)."""
    if not cfg.real_audio:
        return ""
    try:
        sd = import_sounddevice()
    except RuntimeError as exc:
        return str(exc)
    device: Any = int(cfg.audio) if cfg.audio.isdigit() else (None if cfg.audio == "default" else cfg.audio)
    try:
        sd.check_output_settings(device=device, channels=1, dtype="int16", samplerate=cfg.sample_rate)
    except Exception as exc:  # noqa: BLE001 - PortAudio raises several types; the message is what counts
        return (f"[feedback] audio = {cfg.audio!r}: no usable output device at {cfg.sample_rate} Hz ({exc}); "
                f"set feedback.audio = \"sim\" to record the audio instead")
    return ""
