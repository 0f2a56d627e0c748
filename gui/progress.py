"""Where the session is, for the window's header: the baseline countdown and the end of the session.

Pure functions of the :class:`~gui.model.ConsoleModel` (no Qt), kept apart from it so each stays one job.
"""

from __future__ import annotations

from dataclasses import dataclass

from gui.model import ConsoleModel
from rig.core.codes import Mode

#: The supervisor's modes that mean the session is over, and how the console says so.
ENDED_MODES = {"done": "the task is finished and the rig is stopping", "stopping": "the rig is stopping",
               "stopped": "the rig has stopped"}


@dataclass
class BaselineCountdown:
    """How far the baseline recording is. ``estimated``: the console missed the ``baseline_start`` event (and
    has no snapshot that carries it), so ``total`` comes from the config and ``done`` from the first baseline
    frame the console saw: the real time left is at most ``seconds_left``."""

    done: int
    total: int
    seconds_left: float | None  # None: no frame rate known yet
    estimated: bool = False

    def text(self) -> str:
        """E.g. "baseline: 42 s left (540 of 1800 frames)"."""
        if self.seconds_left is None:
            return "baseline: time left unknown (no frame rate or baseline length yet)"
        bound = "at most " if self.estimated else ""
        return f"baseline: {bound}{self.seconds_left:.0f} s left ({self.done} of {self.total} frames)"


def baseline_countdown(model: ConsoleModel) -> BaselineCountdown | None:
    """Frames and seconds left in the baseline recording; None unless the decoder is in baseline mode.

    From the decoder's ``baseline_start`` (its frame and target ``frames``) and the newest decided frame;
    without it (joined mid-baseline, an older supervisor), from the config's ``task.baseline_s``.
    """
    if model.mode_code != Mode.BASELINE:
        return None
    frame = int(model.decisions.last("frame"))
    rate = model.frame_rate_hz()
    if model.baseline is not None:
        total, done, estimated = model.baseline.frames, frame - model.baseline.start_frame + 1, False
    else:
        baseline_s = (model.config.get("task") or {}).get("baseline_s")
        if baseline_s is None or rate is None:
            return BaselineCountdown(done=0, total=0, seconds_left=None, estimated=True)
        start = frame if model.baseline_seen_from is None else model.baseline_seen_from
        total, done, estimated = round(float(baseline_s) * rate), frame - start + 1, True
    done = min(max(done, 0), total)
    return BaselineCountdown(done=done, total=total, seconds_left=(total - done) / rate if rate else None,
                             estimated=estimated)


def session_end(model: ConsoleModel) -> str:
    """Why the session is over as far as the streams and snapshots tell, "" while it runs.

    The supervisor's mode (its heartbeats and snapshots) says so first; every critical process stopping says
    so too, for a console that missed the supervisor's last heartbeats.
    """
    why = ENDED_MODES.get(model.supervisor_mode)
    if why:
        return why
    critical = [p for name, p in model.processes.items() if p.critical and name != "supervisor"]
    if critical and all(p.state in ("stopping", "stopped") for p in critical):
        return "the rig's processes have stopped"
    return ""
