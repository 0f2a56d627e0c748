"""What the operator hears while a session runs: every warning and error, and the problems that make the
session worthless, said the moment they become true.

Without this a headless session could run to its end and print "ok" with nothing recorded: the scope
streaming to another port (no frame), a frame size set wrong (every frame flagged bad), a calibration that
failed (the task idles with no trial). The supervisor already receives every process's ``sys.warn`` and
``sys.error`` and their ``acq.status`` / ``dec.trial`` / ``dec.calib``; :class:`SessionWatch` turns them into
one stderr line each (a flood of one warning is summarised: one line per process and code every
:data:`REPEAT_WINDOW_S`) and raises the session-level problems as supervisor warnings. The same problems are
judged again from the files at the end (:mod:`rig.offline.problems`), where they make ``ok`` false.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from rig.app.checks import CheckResult
from rig.app.config import RigConfig
from rig.core.schema import AcqStatus, CalibrationResult, Heartbeat, Message, ProcessError, RigWarning, TrialEvent
from rig.offline.numbers import hit_rate_text, percent, sig
from rig.offline.problems import ALL_BAD_FRACTION, describe_source

#: The same warning (process, code) is printed at most once per this many seconds; the rest are counted.
REPEAT_WINDOW_S = 10.0
#: No frame this long after every process runs: the scope link is not working.
NO_FRAME_AFTER_S = 10.0
#: Bad frames are judged over windows of at least this many frames (about a second).
BAD_WINDOW_FRAMES = 30
#: Allowance for building a registration reference from the first frames (they are flagged NOT_REGISTERED).
REFERENCE_BUILD_S = 10.0


class WarningLines:
    """One line per warning, but at most one per (process, code) per window; the held ones are counted."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        self.window_s = window_s
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def line(self, level: str, process: str, code: str, message: str, now_s: float) -> str | None:
        """The line to print now, or None when one like it was printed less than a window ago."""
        key = (process, code)
        last = self._last.get(key)
        if last is not None and now_s - last < self.window_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now_s
        held = self._held.pop(key, 0)
        more = f" (+{held} more like it in the last {now_s - last:.0f} s)" if held and last is not None else ""
        return f"{level} {process}: {code}: {message}{more}"

    def flush(self) -> list[str]:
        """Lines for the warnings still held back (at the end of the session)."""
        lines = [f"... and {n} more {code} warning(s) from {process} not shown" for (process, code), n
                 in self._held.items()]
        self._held.clear()
        return lines


class SessionWatch:
    """The supervisor's ears. ``log`` prints one line; ``warn(code, message)`` raises a supervisor warning
    (stderr, event log, the consoles); ``acquisition``: the config's [acquisition] as a plain dict."""

    def __init__(self, acquisition: dict[str, Any], *, warmup_frames: int, headless: bool,
                 log: Callable[[str], None], warn: Callable[[str, str], None],
                 no_frame_after_s: float = NO_FRAME_AFTER_S) -> None:
        self.acquisition = acquisition
        self.warmup_frames = warmup_frames  # frames flagged NOT_REGISTERED while a reference is built from them
        self.headless = headless
        self.lines = WarningLines()
        self._log = log
        self._warn = warn
        self.no_frame_after_s = no_frame_after_s
        self._t_running: float | None = None
        self.frames = 0
        self.bad = 0
        self._anchor: tuple[int, int] | None = None  # (frames, bad) at the start of the current bad-frame window
        self.calibrated = False
        self.said: set[str] = set()  # the problems already raised (each once)

    @classmethod
    def for_config(cls, cfg: RigConfig, checked: CheckResult, *, headless: bool, log: Callable[[str], None],
                   warn: Callable[[str, str], None]) -> SessionWatch:
        """The watch of a session on ``cfg``; ``checked``: what :func:`rig.app.checks.check_config` found."""
        reg, rate = cfg.acquisition.registration, checked.frame_rate_hz or cfg.acquisition.frame_rate_hz
        builds_reference = (reg.enabled and not reg.ref_path and checked.rois is not None
                            and not checked.rois.has_reference)
        # frames before a reference built from them are flagged NOT_REGISTERED (and the build takes seconds)
        warmup = reg.reference_frames + int(REFERENCE_BUILD_S * rate) if builds_reference else 0
        return cls(msgspec.to_builtins(cfg.acquisition), warmup_frames=warmup, headless=headless, log=log, warn=warn)

    def running(self, now_s: float) -> None:
        self._t_running = now_s

    def on_message(self, msg: Message, now_s: float) -> None:
        if isinstance(msg, RigWarning):
            self._print("WARNING", msg.process, msg.code, msg.message, now_s)
        elif isinstance(msg, ProcessError):
            self._print("ERROR", msg.process, msg.error_type, msg.message, now_s)
        elif isinstance(msg, AcqStatus):
            self._frames(msg.frames, msg.bad_frames)
        elif isinstance(msg, Heartbeat) and msg.process == "acquisition" and "frames" in msg.stats:
            self._frames(int(msg.stats["frames"]), int(msg.stats.get("bad_frames", self.bad)))
        elif isinstance(msg, CalibrationResult):
            self.calibrated = True
            ci = msg.predicted_hit_rate_ci95
            interval = f" [95 %: {percent(ci[0])}–{percent(ci[1])}]" if len(ci) == 2 else ""
            self._log(f"calibrated: threshold {sig(msg.threshold)}, predicted hit rate "
                      f"{percent(msg.predicted_hit_rate)}{interval} ({msg.method}, {msg.baseline_frames} baseline "
                      "frames)")
        elif isinstance(msg, TrialEvent) and msg.kind == "calibration_failed" and not self.calibrated:
            then = ("this headless session will idle to its end" if self.headless else
                    "record a new baseline or change the ensembles, then calibrate from the console")
            self._raise("calibration_failed", f"the calibration failed: {msg.detail.get('error', 'no reason given')}; "
                                              f"no trial can run without one: {then}", repeat=True)

    def poll(self, now_s: float) -> None:
        """Problems that become true with time alone (no frame since the start)."""
        t0 = self._t_running
        if t0 is not None and self.frames == 0 and now_s - t0 >= self.no_frame_after_s:
            self._raise("no_frames", f"no frame from the scope {now_s - t0:.0f} s after the start: "
                                     f"{describe_source(self.acquisition)}")

    def finish(self, summary: dict[str, Any]) -> None:
        """The end of the session on stderr: held warnings, the problems, and the numbers in one line."""
        for line in self.lines.flush():
            self._log(line)
        for problem in summary.get("problems", []):
            self._log(f"PROBLEM: {problem}")
        bad = f", {summary.get('bad_frames', 0)} flagged bad" if summary.get("bad_frames") else ""
        if summary.get("kind") == "recording":
            self._log(f"recording {'ok' if summary.get('ok') else 'NOT ok'} ({summary.get('stop_reason') or 'ended'}):"
                      f" {summary.get('frames_acquired', 0)} frames recorded{bad}, {summary.get('frames_dropped', 0)} "
                      f"dropped by the source, {summary.get('movie_frames_lost', 0)} lost from the movie")
            return
        self._log(f"session {'ok' if summary.get('ok') else 'NOT ok'} ({summary.get('stop_reason') or 'ended'}): "
                  f"{summary.get('frames', 0)} frames decided{bad}, {summary.get('trials', 0)} trials, "
                  f"{hit_rate_text(int(summary.get('hits', 0)), int(summary.get('misses', 0)))}, "
                  f"{summary.get('rewards_delivered', 0)} rewards ({sig(summary.get('volume_ul', 0.0))} µL)")

    # ------------------------------------------------------------------ internals
    def _print(self, level: str, process: str, code: str, message: str, now_s: float) -> None:
        line = self.lines.line(level, process, code, message, now_s)
        if line is not None:
            self._log(line)

    def _raise(self, code: str, message: str, repeat: bool = False) -> None:
        if code in self.said and not repeat:
            return
        self.said.add(code)
        self._warn(code, message)

    def _frames(self, frames: int, bad: int) -> None:
        """Judge the frames since the last window once it holds :data:`BAD_WINDOW_FRAMES` (after the warm-up)."""
        self.frames, self.bad = max(self.frames, frames), max(self.bad, bad)
        if frames <= self.warmup_frames:
            return
        if self._anchor is None:
            self._anchor = (frames, bad)
            return
        n, b = frames - self._anchor[0], bad - self._anchor[1]
        if n < BAD_WINDOW_FRAMES:
            return
        self._anchor = (frames, bad)
        if b >= ALL_BAD_FRACTION * n:
            self._raise("frames_bad", f"{b} of the last {n} frames ({b / n * 100:.0f} %) were flagged bad: see the "
                                      f"acquisition's warnings (a frame size set wrong flags every frame WRONG_SHAPE)")
