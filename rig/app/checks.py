"""Cross-checks of a rig config against what it points at: what ``rig check`` reports and ``rig run`` refuses.

Loading a config (:mod:`rig.app.config`) validates each key on its own. What still fails a session later
lies in combinations of keys and in the files the config names: ensemble indices beyond the ROI set, a
frame size that is not the suite2p folder's, a baseline too short to calibrate on, a buffer that does not fit
in memory, heartbeats so tight that one stall ends the session, a valve calibration or a serial port that is
not there, a live session without a mouse. Found after the processes started, each was a traceback seconds
into the run or, worse, a session that ran to the end doing nothing. Both commands run these checks, so
``rig check`` says exactly what ``rig run`` would refuse, in the same words: one line per finding.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from acquisition.plane_rois import load_planes, plane_roi_folder
from acquisition.rois import RoiFileError, load_suite2p
from decoder.registry import check_ensembles
from decoder.trial import frames_for
from reward.calibration import CalibrationError, session_calibration
from reward.config import EMULATOR_PORT
from rig.app.config import RigConfig

#: Sources that are not a real scope: a session on them needs no mouse ID.
REHEARSAL_SOURCES = ("sim", "replay")
#: The most one buffer of a rig process may need (bytes): beyond it the process fails with MemoryError at start.
MEMORY_LIMIT_BYTES = 2 * 2**30
#: heartbeat_interval_s x heartbeat_liveness below this: one garbage collection or disk stall ends the session.
MIN_LIVENESS_S = 0.1
#: ``--duration`` should leave room for the baseline and this many trials.
TRIALS_WANTED = 2


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a config. ``error``: the session cannot run (``rig run`` refuses); else a warning."""

    key: str  # dotted config key, "" when none applies (e.g. --duration)
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"[{self.key}]: {self.message}" if self.key else self.message


@dataclass(frozen=True)
class RoiFacts:
    """The ROI set a session would extract, as the acquisition process will load it."""

    n_rois: int  # after the iscell filter when only_cells
    height: int  # the frame size the ROIs are for (suite2p ops Ly, Lx)
    width: int
    origin: str  # for messages: where the ROIs come from
    has_reference: bool  # a registration reference comes with them (else it is built from the first frames)


@dataclass
class CheckResult:
    """The findings, and the facts found on the way (shown by ``rig check``, used by ``--probe``)."""

    findings: list[Finding] = field(default_factory=list)
    rois: RoiFacts | None = None
    frame_rate_hz: float = 0.0
    frame_size: tuple[int, int] | None = None  # what the source is configured (or the movie is) to deliver

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.error]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if not f.error]


def check_config(cfg: RigConfig, config_dir: Path, *, platform: str = sys.platform, run: bool = False,
                 duration_s: float | None = None, port_present: Callable[[str], bool] | None = None) -> CheckResult:
    """Every cross-check of ``cfg`` (``config_dir``: the config file's folder, for relative paths).

    ``run``: for ``rig run`` (a live session without a mouse ID is an error there, a warning for ``rig check``;
    ``duration_s`` is ``--duration``). ``port_present`` replaces the serial-port lookup in tests.
    """
    result = CheckResult()
    add = result.findings.extend
    recording = cfg.session.record_only  # frames only: no ROIs, valve, ensembles or task to check
    add(Finding(key, message) for key, message in missing_files(cfg)
        if not (recording and key == "acquisition.rois.suite2p_dir"))
    add(Finding(key, message) for key, message in _platform_findings(cfg, platform))
    if not recording:
        add(valve_calibration_findings(cfg, config_dir))
        add(serial_port_findings(cfg, port_present or serial_port_present))
    add(heartbeat_findings(cfg))
    if cfg.decoder.rules_version != 2:  # replay only: a what-if of a session recorded before the key (legacy.py)
        add([Finding("decoder.rules_version", f"{cfg.decoder.rules_version} reproduces sessions recorded before "
                     "this key (rig replay); a live session runs the current task rules: remove it")])
    add(mouse_id_findings(cfg, error=run))
    rois = None if recording else roi_facts(cfg)
    if isinstance(rois, Finding):
        result.findings.append(rois)
        rois = None
    result.rois = rois
    size, rate, source_findings = source_facts(cfg)
    result.frame_size, result.frame_rate_hz = size, rate
    add(source_findings)
    if not recording:
        add(baseline_findings(cfg, rate))
    if rois is not None:
        add(frame_size_findings(cfg, rois, size))
        add(ensemble_findings(cfg, rois))
        add(plane_findings(cfg))
        add(memory_findings(cfg, rois, rate))
    if duration_s is not None and not recording:
        add(duration_findings(cfg, duration_s))
    return result


# ---------------------------------------------------------------------------- files and platform


def missing_files(cfg: RigConfig) -> list[tuple[str, str]]:
    """(key, message) for files the config names that a session needs and that are not there.

    The valve calibration is checked by :func:`valve_calibration_findings` (it must also be readable).
    """
    problems = []
    acq = cfg.acquisition
    if acq.rois.suite2p_dir and not Path(acq.rois.suite2p_dir).exists():
        problems.append(("acquisition.rois.suite2p_dir", f"{acq.rois.suite2p_dir} does not exist"))
    for plane, folder in enumerate(acq.rois.plane_dirs):
        if folder and not Path(folder).exists():
            problems.append(("acquisition.rois.plane_dirs", f"plane {plane}'s ROI folder {folder} does not exist"))
    if acq.source == "replay" and not Path(acq.replay.path).exists():
        problems.append(("acquisition.replay.path", f"{acq.replay.path or '(empty)'} does not exist"))
    if acq.registration.ref_path and not Path(acq.registration.ref_path).exists():
        problems.append(("acquisition.registration.ref_path", f"{acq.registration.ref_path} does not exist"))
    if acq.ztrack.stack_path and not Path(acq.ztrack.stack_path).is_file():
        problems.append(("acquisition.ztrack.stack_path", f"{acq.ztrack.stack_path} does not exist"))
    if cfg.bus.keys_dir and not (Path(cfg.bus.keys_dir) / "rig.key_secret").is_file():
        problems.append(("bus.keys_dir", f"{cfg.bus.keys_dir} holds no rig key pair (run: rig keys init "
                                         f"{cfg.bus.keys_dir})"))
    return problems


def platform_problems(cfg: RigConfig, platform: str) -> list[str]:
    """What the config asks for that cannot work on ``platform`` (a ``sys.platform`` value).

    A parameter, not read here, so that the Windows verdicts are tested on the Linux CI: most scope PCs run
    Windows, and a config written on a Linux analysis machine must be refused by ``rig check`` there, not
    fail halfway through starting a session.
    """
    return [f"[{key}]: {message}" for key, message in _platform_findings(cfg, platform)]


def _platform_findings(cfg: RigConfig, platform: str) -> list[tuple[str, str]]:
    problems = []
    if platform == "win32":
        if cfg.reward.emulator_transport == "pty":
            problems.append(("reward.emulator_transport", '"pty" does not exist on Windows (pseudo-terminals are '
                                                          'POSIX); use "socket" or "auto"'))
        for key, value in _string_values(msgspec.to_builtins(cfg)):
            if value.lower().startswith("ipc://"):
                problems.append((key, f"{value}: ipc:// endpoints do not work on Windows; use tcp://127.0.0.1:PORT"))
    return problems


def _string_values(node: object, key: str = "") -> list[tuple[str, str]]:
    """Every string in a config document with its dotted key (list items as ``key[i]``)."""
    if isinstance(node, str):
        return [(key, node)]
    if isinstance(node, dict):
        return [kv for name, value in node.items() for kv in _string_values(value, f"{key}.{name}" if key else name)]
    if isinstance(node, list):
        return [kv for i, value in enumerate(node) for kv in _string_values(value, f"{key}[{i}]")]
    return []


# ---------------------------------------------------------------------------- the reward side


def valve_calibration_findings(cfg: RigConfig, config_dir: Path) -> list[Finding]:
    """The valve calibration the reward process would load: there, readable, for this valve.

    Checked here, before any process starts: the reward process refuses a session without one, but only
    after the scope link and the ROIs have been set up (seconds into the start).
    """
    try:
        session_calibration(cfg.reward, config_dir)
    except CalibrationError as exc:
        return [Finding("reward.calibration_file", str(exc))]
    return []


def list_serial_ports() -> list[str]:
    """The serial ports this PC has (COM3, /dev/ttyACM0...), as pyserial lists them."""
    from serial.tools import list_ports  # noqa: PLC0415 - only for a live valve board

    return sorted(p.device for p in list_ports.comports())


def serial_port_present(port: str) -> bool:
    """A device path that exists, or a port pyserial lists (Windows COM ports are not files)."""
    return os.path.exists(port) or port in list_serial_ports()


def serial_port_findings(cfg: RigConfig, present: Callable[[str], bool]) -> list[Finding]:
    """A live valve board's serial port must exist (a pyserial URL such as socket://... is not checked)."""
    port = cfg.reward.port
    if port == EMULATOR_PORT or "://" in port or present(port):
        return []
    try:
        found = ", ".join(list_serial_ports()) or "none"
    except (ImportError, OSError) as exc:
        found = f"cannot list them: {exc}"
    return [Finding("reward.port", f"{port}: no such serial port on this PC (ports found: {found}); plug in the "
                                   "reward board, or set the port it shows up as")]


# ---------------------------------------------------------------------------- bus and session


def heartbeat_findings(cfg: RigConfig) -> list[Finding]:
    """A process is declared dead after ``heartbeat_interval_s x heartbeat_liveness`` of silence."""
    bus = cfg.bus
    window = bus.heartbeat_interval_s * bus.heartbeat_liveness
    if window >= MIN_LIVENESS_S:
        return []
    return [Finding("bus.heartbeat_liveness",
                    f"{bus.heartbeat_liveness} missed heartbeats of {bus.heartbeat_interval_s:g} s is "
                    f"{window * 1000:.0f} ms: a process that pauses that long (a garbage collection, a disk stall) "
                    f"would be declared dead and end the session; make heartbeat_interval_s x heartbeat_liveness "
                    f"at least {MIN_LIVENESS_S * 1000:.0f} ms (the defaults: 0.25 s x 8 = 2 s)")]


def is_live(cfg: RigConfig) -> bool:
    """A session on a real scope (not the simulation or a replayed movie)."""
    return cfg.acquisition.source not in REHEARSAL_SOURCES


def mouse_id_findings(cfg: RigConfig, *, error: bool) -> list[Finding]:
    """A live session names its mouse: it goes into the session folder's name, the record and every export."""
    if not is_live(cfg) or cfg.session.mouse_id.strip():
        return []
    return [Finding("session.mouse_id", "empty: a session on a real scope must name its mouse (session folder, "
                                        "record, exports); set it in the config or run with "
                                        "--set session.mouse_id=M123", error=error)]


def duration_findings(cfg: RigConfig, duration_s: float) -> list[Finding]:
    """``--duration`` too short for the baseline and a couple of trials: say so before anything starts."""
    task = cfg.task
    trial_s = task.iti_s + task.trial_s
    wanted = task.baseline_s + TRIALS_WANTED * trial_s
    if duration_s >= wanted:
        return []
    how_many = "no trial" if duration_s < task.baseline_s + trial_s else "at most one trial"
    return [Finding("", f"--duration {duration_s:g} s: the baseline alone takes {task.baseline_s:g} s and a trial "
                        f"(ITI + trial) {trial_s:g} s, so {how_many} will run; use --duration {math.ceil(wanted)} "
                        f"or more, or a shorter task.baseline_s", error=False)]


# ---------------------------------------------------------------------------- ROIs, frames, ensembles, task


def roi_facts(cfg: RigConfig) -> RoiFacts | Finding | None:
    """The ROI set the session would use (None: its folder is missing, reported by :func:`missing_files`)."""
    acq = cfg.acquisition
    if acq.source == "sim" and not plane_roi_folder(acq.rois, acq.bci_plane, acq.bci_plane):
        sim = acq.sim
        return RoiFacts(sim.n_cells, sim.height_px, sim.width_px, f"the simulated scope's {sim.n_cells} cells",
                        has_reference=True)
    folder = plane_roi_folder(acq.rois, acq.bci_plane, acq.bci_plane)  # suite2p_dir unless plane_dirs names it
    if not folder:
        return Finding("acquisition.rois.suite2p_dir", f"empty: the {acq.source} source needs the ROIs of a "
                                                       "suite2p folder (the plane0 folder of today's field of view)")
    if not Path(folder).exists():
        return None
    try:
        roi_set = load_suite2p(folder)
    except (RoiFileError, OSError, ValueError) as exc:
        return Finding("acquisition.rois.suite2p_dir", str(exc))
    total = roi_set.n_rois
    if acq.rois.only_cells and not np.any(roi_set.iscell[:, 0] > 0.5):
        return Finding("acquisition.rois.only_cells", f"none of the {total} ROIs of {folder} is a cell "
                                                      "(iscell.npy): nothing to extract; set only_cells = false or "
                                                      "classify the ROIs")
    if acq.rois.only_cells:
        roi_set = roi_set.cells_only()
        origin = f"the iscell == 1 rows ({roi_set.n_rois} of {total}) of {folder}"
    else:
        origin = f"every ROI of {folder}"
    return RoiFacts(roi_set.n_rois, roi_set.Ly, roi_set.Lx, origin, has_reference=roi_set.ref_img is not None)


def plane_findings(cfg: RigConfig) -> list[Finding]:
    """Several planes: every plane's ROI folder exists, all are for one frame size, kinds and links name ROIs
    that exist (what the acquisition checks at configure, :func:`acquisition.plane_rois.load_planes`). A plane
    the sim gives its own ROIs is the sim's to get right."""
    acq = cfg.acquisition
    if acq.n_planes == 1:
        return []
    key = "acquisition.rois.plane_dirs" if acq.rois.plane_dirs else "acquisition.rois.suite2p_dir"
    try:
        folders = [plane_roi_folder(acq.rois, plane, acq.bci_plane) for plane in range(acq.n_planes)]
    except RoiFileError as exc:
        return [Finding(key, str(exc))]
    if not all(folders):
        return []  # the sim's truth (or no folder at all: roi_facts and the source say so)
    missing = [f"plane {plane}: {folder}" for plane, folder in enumerate(folders) if not Path(folder).exists()]
    if missing:
        return [Finding(key, f"{acq.n_planes} planes need one ROI folder each; not found: {'; '.join(missing)}")]
    try:
        load_planes(acq, None)
    except (OSError, ValueError) as exc:  # RoiFileError: a size, a kind, a link to an ROI that is not there
        text = str(exc)
        return [Finding("acquisition.rois.links" if text.startswith("acquisition.rois.links") else key, text)]
    return []


def source_facts(cfg: RigConfig) -> tuple[tuple[int, int] | None, float, list[Finding]]:
    """(frame size the source will deliver or None if only the stream knows, frame rate, findings).

    A replayed movie is opened to read its size and rate; a scope link is not touched (``rig check --probe``).
    """
    acq = cfg.acquisition
    rate = acq.frame_rate_hz
    if acq.source == "replay":  # the one source whose size is in a file, not in its section
        if not Path(acq.replay.path).exists():
            return None, rate, []
        from acquisition.sources.registry import make_source  # noqa: PLC0415 - reads the movie's header

        try:
            source = make_source(acq)
        except (OSError, ValueError) as exc:
            return None, rate, [Finding("acquisition.replay.path", f"cannot read the movie: {exc}")]
        return source.shape, source.frame_rate_hz or rate, []
    # Every other source's section is named after it and sets height_px x width_px (0 x 0: only the stream knows).
    section = getattr(acq, acq.source, None)
    height, width = getattr(section, "height_px", 0), getattr(section, "width_px", 0)
    return ((height, width) if height and width else None), rate, []


def _size_key(source: str) -> str:
    """The config key that sets the frame size of ``source`` (for messages)."""
    return "acquisition.replay.path" if source == "replay" else f"acquisition.{source}"


def frame_size_findings(cfg: RigConfig, rois: RoiFacts, size: tuple[int, int] | None) -> list[Finding]:
    """The frames must be the size the ROIs were drawn on, or every frame is flagged WRONG_SHAPE."""
    if size is None or tuple(size) == (rois.height, rois.width):
        return []
    source = cfg.acquisition.source
    what = "the movie's frames are" if source == "replay" else "the source is set to deliver"
    fix = ("replay the movie of this field of view" if source == "replay" else
           f"set height_px = {rois.height} and width_px = {rois.width}")
    key = _size_key(source)
    if source != "replay":
        key += ".height_px" if size[0] != rois.height else ".width_px"
    return [Finding(key, f"{what} {size[0]}x{size[1]} pixels (height x width), but the ROIs ({rois.origin}) are for "
                         f"{rois.height}x{rois.width} frames (suite2p ops Ly x Lx): every frame would be flagged "
                         f"WRONG_SHAPE and none decoded; {fix}, or point acquisition.rois.suite2p_dir at this field "
                         f"of view")]


def ensemble_findings(cfg: RigConfig, rois: RoiFacts) -> list[Finding]:
    """Ensemble indices and weights must address ROIs of the set (counted after the iscell filter)."""
    dec = cfg.decoder
    findings = []
    try:
        check_ensembles(dec.decoder, rois.n_rois, dec.up, dec.down)
    except ValueError as exc:
        text = str(exc)
        name, _, problem = text.partition(": ") if text.startswith("`") else ("", "", text)
        findings.append(Finding(f"decoder.{name.strip('`')}" if name else "decoder",
                                f"{problem}: the session has {rois.n_rois} ROIs ({rois.origin})"))
    if dec.weights and len(dec.weights) != rois.n_rois:
        findings.append(Finding("decoder.weights", f"{len(dec.weights)} weights, but the session has {rois.n_rois} "
                                                   f"ROIs ({rois.origin}): give one weight per ROI"))
    return findings


def baseline_findings(cfg: RigConfig, frame_rate_hz: float) -> list[Finding]:
    """The calibration's own minimum baseline, checked before the session instead of at the end of the baseline.

    Calibration resamples trial-length windows of the baseline to estimate the chance hit rate; it refuses a
    baseline shorter than ``decoder.calibration.min_baseline_trials`` trial lengths (and, for the
    ``reward_interval`` method, ``min_reward_intervals`` target intervals). Found only then, the session idles
    to its end with no trial.
    """
    task, cal = cfg.task, cfg.decoder.calibration
    findings = []
    trial_frames = frames_for(task.trial_s, frame_rate_hz)
    needed = int(math.ceil(cal.min_baseline_trials * trial_frames))
    if frames_for(task.baseline_s, frame_rate_hz) < needed:
        findings.append(Finding("task.baseline_s", (
            f"{task.baseline_s:g} s is shorter than {cal.min_baseline_trials:g} trial lengths "
            f"({cal.min_baseline_trials:g} x {task.trial_s:g} s = {cal.min_baseline_trials * task.trial_s:g} s): "
            f"the calibration needs them to estimate the chance hit rate and would fail at the end of the baseline, "
            f"with no trial run; make baseline_s at least {needed / frame_rate_hz:g} (published rigs record ~15 min) "
            f"or shorten task.trial_s")))
    if cal.method == "reward_interval" and task.baseline_s < cal.min_reward_intervals * cal.target_reward_interval_s:
        need_s = cal.min_reward_intervals * cal.target_reward_interval_s
        findings.append(Finding("task.baseline_s", (
            f"{task.baseline_s:g} s is shorter than {cal.min_reward_intervals:g} target reward intervals "
            f"({cal.min_reward_intervals:g} x {cal.target_reward_interval_s:g} s = {need_s:g} s) that the "
            f"reward_interval calibration needs; make baseline_s at least {need_s:g}")))
    return findings


def human_bytes(n: float) -> str:
    """1.5e9 -> "1.4 GiB"."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def memory_findings(cfg: RigConfig, rois: RoiFacts, frame_rate_hz: float) -> list[Finding]:
    """The buffers a process allocates at start whose size the config sets: none may pass the limit."""
    dec, task, reg = cfg.decoder, cfg.task, cfg.acquisition.registration
    n = rois.n_rois
    f0_frames = max(1, frames_for(dec.f0_window_s, frame_rate_hz))
    baseline_frames = max(1, frames_for(task.baseline_s, frame_rate_hz))
    buffers = [
        ("decoder.f0_window_s", "the running F0 window", f0_frames * n * 8,
         f"{dec.f0_window_s:g} s x {frame_rate_hz:g} Hz x {n} ROIs x 8 bytes"),
        ("task.baseline_s", "the baseline recording (F, F0 and the calibration's copy)", 3 * baseline_frames * n * 8,
         f"3 x {task.baseline_s:g} s x {frame_rate_hz:g} Hz x {n} ROIs x 8 bytes"),
    ]
    if reg.enabled and not reg.ref_path and not rois.has_reference:
        pixels = rois.height * rois.width
        buffers.append(("acquisition.registration.reference_frames",
                        "the frames the registration reference is built from", reg.reference_frames * pixels * 8,
                        f"{reg.reference_frames} frames x {rois.height}x{rois.width} pixels x 8 bytes"))
    limit = human_bytes(MEMORY_LIMIT_BYTES)
    return [Finding(key, f"{what} needs {human_bytes(size)} ({formula}), more than the {limit} a rig process may "
                         f"take: it would fail with MemoryError at start-up; lower {key}")
            for key, what, size, formula in buffers if size > MEMORY_LIMIT_BYTES]
