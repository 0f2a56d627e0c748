"""The rig's processes: one table the supervisor plans, starts, watches and stops from.

Adding a process is one new ``RigProcess`` subclass and one line in :data:`PROCESSES`; nothing in the
supervisor names a process. Start and stop ranks are separate because the orders are not mirror images:
each process is started after what it needs (reward after the emulator whose serial port it opens,
the decoder after acquisition whose ROI count it sizes itself on), and stopped so that no message is
lost (acquisition first, so the decoder sees the last frame; reward after the decoder, so every reward
request gets its outcome; the emulated board last).
"""

from __future__ import annotations

import functools
import multiprocessing.process
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from rig.app.config import RigConfig


@dataclass(frozen=True)
class ProcessEntry:
    """One process the supervisor may run (a row of :data:`PROCESSES`)."""

    name: str  # its bus sender name, endpoint key and session sub-folder
    target: str  # "package.module:Class", a RigProcess subclass
    critical: bool  # a critical process failing ends the session in safe state; a non-critical one is a warning
    start_rank: int  # started in increasing rank, each waited on until ready
    stop_rank: int  # stopped one at a time in increasing rank
    enabled_if: Callable[[RigConfig, bool], bool]  # (config, headless) -> whether this session runs it
    #: Keys of its ready info it must report before the next process starts (their spec gets them as upstream).
    wait_for_info: tuple[str, ...] = ()
    #: () -> why it cannot run on this machine ("" when it can): checked before anything is started.
    preflight: Callable[[], str] | None = None
    #: Allocate its endpoint even when it is not started (a console attached later publishes there).
    reserve_endpoint: bool = False
    #: (ready info) -> what the operator should know once it is ready, said after "NAME ready in N s: " ("" none).
    ready_note: Callable[[dict[str, str]], str] | None = None
    #: A non-critical process whose loss must pause the trials (the animal's feedback: trials never run blind).
    pause_trials_on_loss: bool = False
    #: (config) -> ``pause_trials_on_loss``, when the config decides it (``[feedback] critical``); :func:`plan`
    #: resolves it.
    pause_trials_on_loss_if: Callable[[RigConfig], bool] | None = None
    #: (config, headless) -> why the configured hardware cannot run here ("" when it can); :func:`plan` binds it
    #: into ``preflight``, so the supervisor refuses the session before anything is started.
    config_preflight: Callable[[RigConfig, bool], str] | None = None


@dataclass
class Child:
    """A planned process and what the supervisor knows of it while the session runs."""

    entry: ProcessEntry
    proc: multiprocessing.process.BaseProcess | None = None
    state: str = "not started"
    last_seen_ns: int = 0
    info: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def critical(self) -> bool:
        return self.entry.critical


def has_display() -> bool:
    """Whether a Qt window can be shown (the console needs one; the rest of the rig does not)."""
    if sys.platform == "win32" or sys.platform == "darwin":
        return True
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        return True  # Qt renders without a screen (tests, benchmarks)
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _always(cfg: RigConfig, headless: bool) -> bool:
    return True


def _closed_loop(cfg: RigConfig, headless: bool) -> bool:
    """Not a recording (``session.record_only``: frames only, no decoder, reward, feedback or console)."""
    return not cfg.session.record_only


def _emulated_valve(cfg: RigConfig, headless: bool) -> bool:
    return cfg.reward.port == "emulator" and _closed_loop(cfg, headless)


def _console_wanted(cfg: RigConfig, headless: bool) -> bool:
    return not headless and cfg.gui.enabled and _closed_loop(cfg, headless)


def _feedback_wanted(cfg: RigConfig, headless: bool) -> bool:
    return cfg.feedback.enabled and _closed_loop(cfg, headless)


def _feedback_critical(cfg: RigConfig) -> bool:
    return cfg.feedback.critical


def _feedback_problem(cfg: RigConfig, headless: bool) -> str:
    from reward.feedback.audio import audio_device_problem  # noqa: PLC0415 - only when feedback is planned
    from reward.feedback.grating import monitor_problem  # noqa: PLC0415

    return audio_device_problem(cfg.feedback) or monitor_problem(cfg.feedback, has_display())


def _display_problem() -> str:
    return "" if has_display() else "no display found: run with --headless, or set DISPLAY"


def _acquisition_note(info: dict[str, str]) -> str:
    if "frame_rate_hz" not in info:
        return ""
    return (f"{info.get('n_rois', '?')} ROIs, {info.get('height', '?')}x{info.get('width', '?')}"
            f" frames at {float(info['frame_rate_hz']):g} Hz (from {info.get('frame_rate_source', '?')})")


PROCESSES: tuple[ProcessEntry, ...] = (
    ProcessEntry("valve_emulator", "reward.process:EmulatorProcess", critical=True, start_rank=0, stop_rank=4,
                 enabled_if=_emulated_valve, wait_for_info=("serial_url",)),
    ProcessEntry("acquisition", "acquisition.process:AcquisitionProcess", critical=True, start_rank=1, stop_rank=1,
                 enabled_if=_always, ready_note=_acquisition_note),
    ProcessEntry("reward", "reward.process:RewardProcess", critical=True, start_rank=2, stop_rank=3,
                 enabled_if=_closed_loop),
    ProcessEntry("decoder", "decoder.process:DecoderProcess", critical=True, start_rank=3, stop_rank=2,
                 enabled_if=_closed_loop),
    ProcessEntry("gui", "gui.process:ConsoleProcess", critical=False, start_rank=4, stop_rank=0,
                 enabled_if=_console_wanted, preflight=_display_problem, reserve_endpoint=True),
    ProcessEntry("feedback", "reward.feedback.process:FeedbackProcess", critical=False, start_rank=6, stop_rank=5,
                 enabled_if=_feedback_wanted, pause_trials_on_loss_if=_feedback_critical,
                 config_preflight=_feedback_problem),
)

#: Endpoint names that are not processes of the table.
SUPERVISOR_ENDPOINTS = ("supervisor", "command")


def check_table(table: Sequence[ProcessEntry]) -> None:
    """Refuse a table the supervisor could not run unambiguously (raises ``ValueError``)."""
    for what, values in (("name", [e.name for e in table]), ("start_rank", [e.start_rank for e in table]),
                         ("stop_rank", [e.stop_rank for e in table])):
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f"process table: {what} used more than once: {repeated}")
    for entry in table:
        module, sep, cls = entry.target.partition(":")
        if not (module and sep and cls):
            raise ValueError(f"process table: {entry.name}: target {entry.target!r} is not 'package.module:Class'")
        if entry.name in SUPERVISOR_ENDPOINTS:
            raise ValueError(f"process table: {entry.name!r} is the name of a supervisor endpoint")


check_table(PROCESSES)  # a bad new line fails at import, not halfway through starting a session


def plan(cfg: RigConfig, headless: bool, table: Sequence[ProcessEntry] = PROCESSES) -> list[ProcessEntry]:
    """The processes this session runs, in start order, with their config-dependent columns resolved."""
    return sorted((_resolve(e, cfg, headless) for e in table if e.enabled_if(cfg, headless)),
                  key=lambda e: e.start_rank)


def _resolve(entry: ProcessEntry, cfg: RigConfig, headless: bool) -> ProcessEntry:
    """``pause_trials_on_loss_if`` -> ``pause_trials_on_loss``; ``config_preflight`` bound to this config ->
    ``preflight``."""
    if entry.pause_trials_on_loss_if is not None:
        entry = replace(entry, pause_trials_on_loss=entry.pause_trials_on_loss_if(cfg))
    if entry.config_preflight is not None:
        entry = replace(entry, preflight=functools.partial(_both_preflights, entry.preflight,
                                                           entry.config_preflight, cfg, headless))
    return entry


def _both_preflights(plain: Callable[[], str] | None, with_config: Callable[[RigConfig, bool], str],
                     cfg: RigConfig, headless: bool) -> str:
    return (plain() if plain is not None else "") or with_config(cfg, headless)


def stop_order(entries: Sequence[ProcessEntry]) -> list[ProcessEntry]:
    return sorted(entries, key=lambda e: e.stop_rank)


def endpoint_names(planned: Sequence[ProcessEntry], table: Sequence[ProcessEntry] = PROCESSES) -> list[str]:
    """Names that get an endpoint: the supervisor's, the planned processes' (start order), then reserved ones."""
    names = [*SUPERVISOR_ENDPOINTS, *(e.name for e in planned)]
    names += [e.name for e in sorted(table, key=lambda e: e.start_rank) if e.reserve_endpoint and e.name not in names]
    return names
