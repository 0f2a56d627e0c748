"""``rig sim session OUT``: a simulated two-plane learning session written in the real session layout, fast.

Why: ``rig dendrites`` (and its tests) need sessions whose dendrites carry a known instructive signal, minutes
long, in seconds. ``rig run`` with the sim renders images in real time; this runs the trace simulator
(:class:`acquisition.sim.traces.TraceSim` with ``n_planes = 2``: somata on plane 0, their apical dendrites on
plane 1) through the decoder's own :class:`decoder.core.DecoderCore`, so ``decoder/decisions.rec``,
``decoder/events.jsonl`` and ``decoder/calibration.json`` are written by the same code as in a live session;
the mouse hears the feedback and gets its rewards as in ``rig sim learn`` (:class:`rig.app.sim_learn.MouseLoop`).

Written (docs/SESSION_FORMAT.md, docs/PLANES.md): ``session.json``, ``config.toml``/``config.resolved.json``,
``supervisor.events.jsonl``, ``summary.json``; ``acquisition/frames.rec`` + ``rois/`` (circular ROIs at the
sim's somata) + ``sim_truth/``; ``acquisition/planes/plane1/frames.rec`` + ``rois/`` (the dendrites, with
``roi_kind.npy``/``roi_parent.npy``) + ``sim_truth/``; ``decoder/``; ``reward/events.jsonl`` (the rewards the
mouse got). No movie: ``rig replay`` re-decides from the traces. Time stamps are the frame clock (frame i at
``i / fps`` after the start), not a measurement: the session has no latency to report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from tqdm import tqdm

from acquisition.process import frame_record_dtype
from acquisition.rois import DENDRITE, SOMA, RoiSet
from acquisition.sim.config import DendriteConfig
from acquisition.sim.traces import TraceSim
from decoder.core import DecoderCore, decision_record_dtype
from decoder.engine import StepResult
from rig.app.config import config_from_dict
from rig.app.session_files import SessionRecord
from rig.app.sim_learn import LearningError, LearnSpec, MouseLoop, ensembles, session_configs
from rig.core.clock import now_ns
from rig.core.codes import Mode
from rig.core.store import EventLog, RecordWriter, write_json_atomic

REWARD_VOLUME_UL = 5.0
#: plane 1 of a simulated session: dendrite-specific events common enough, and modulated deeply enough by the
#: instructive signal, that a session of tens of minutes decides the analysis (docs/DENDRITES.md)
SESSION_DENDRITES = DendriteConfig(event_rate_hz=1.5, instructive_gain=2.0)
#: each rule at its best learning rate (docs/SIMULATOR.md's sweep): vectorized 1.0, scalar 0.3
SESSION_LEARNING_RATES = {"vectorized": 1.0, "scalar": 0.3, "none": 0.0}


class _Clock:
    """The session's frame clock: frame i is ready at ``t0 + i / fps`` (plane 1 half a frame later)."""

    def __init__(self, fps: float) -> None:
        self.t0 = now_ns()
        self.period_ns = 1e9 / fps
        self.t = self.t0

    def at(self, frame: int, plane: int = 0) -> int:
        return int(self.t0 + (frame + 0.5 * plane) * self.period_ns)


class _FileOutput:
    """:class:`decoder.core.DecoderOutput` to files, as the decoder process writes them (no bus)."""

    def __init__(self, folder: Path, clock: _Clock) -> None:
        self.folder = folder
        self.clock = clock
        self.log = EventLog(folder / "events.jsonl")
        self.requests: list[tuple[str, int]] = []

    def event(self, kind: str, **fields: Any) -> None:
        self.log.write(kind, t_ns=self.clock.t, **fields)

    def trial_event(self, kind: str, trial: int, frame: int, hits: int, trials: int, detail: dict) -> None:
        pass  # the bus copy of the "trial" line: nobody listens

    def calibration_in_force(self, cal: dict[str, Any]) -> None:
        write_json_atomic(self.folder / "calibration.json", cal)

    def reward_request(self, request_id: str, volume_ul: float, source: str, frame: int, *, override: bool = False,
                       issued_by: str = "") -> None:
        self.requests.append((request_id, frame))

    def decision(self, res: StepResult) -> None:
        pass

    def refused(self, command: str, error: str) -> None:
        raise LearningError(f"the simulated session's decoder refused {command}: {error}")

    def busy(self, what: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _disk(center: np.ndarray, radius: float, shape: tuple[int, int]) -> dict[str, Any]:
    """A circular suite2p ROI (uniform weights) at ``center`` (y, x), clipped to the field."""
    r = max(float(radius), 1.0)
    cy, cx = float(center[0]), float(center[1])
    ys, xs = np.mgrid[math.floor(cy - r):math.ceil(cy + r) + 1, math.floor(cx - r):math.ceil(cx + r) + 1]
    inside = ((ys - cy) ** 2 + (xs - cx) ** 2 <= r * r) & (ys >= 0) & (xs >= 0) & (ys < shape[0]) & (xs < shape[1])
    ypix, xpix = ys[inside].astype(np.int32), xs[inside].astype(np.int32)
    if not ypix.size:
        ypix = np.array([int(np.clip(round(cy), 0, shape[0] - 1))], np.int32)
        xpix = np.array([int(np.clip(round(cx), 0, shape[1] - 1))], np.int32)
    lam = np.full(ypix.size, 1.0 / ypix.size, np.float32)
    return {"ypix": ypix, "xpix": xpix, "lam": lam, "med": [int(np.median(ypix)), int(np.median(xpix))],
            "npix": int(ypix.size), "radius": r, "compact": 1.0}


def _save_rois(folder: Path, centers: np.ndarray, radii: np.ndarray, shape: tuple[int, int], fps: float,
               kind: int, parent: np.ndarray | None) -> None:
    n = len(centers)
    rois = RoiSet(stat=[_disk(centers[i], radii[i], shape) for i in range(n)], iscell=np.ones((n, 2)),
                  Ly=shape[0], Lx=shape[1], ops={"fs": fps, "nplanes": 2},
                  kind=np.full(n, kind, np.int8), parent=None if parent is None else parent.astype(np.int32))
    rois.save_suite2p(folder, links=True)


def _check(spec: LearnSpec) -> None:
    spec.check()
    if spec.n_cells > 1000:
        raise ValueError(f"`n_cells`: at most 1000 for a simulated session (got {spec.n_cells})")


def run_session(spec: LearnSpec, out: str | Path, progress: bool = True,
                dendrites: DendriteConfig = SESSION_DENDRITES) -> dict[str, Any]:
    """Simulate one session into the new folder ``out`` (must not exist); return a summary of what was written.

    ``spec.learning_rate`` None: :data:`SESSION_LEARNING_RATES` (not MouseConfig's default)."""
    if spec.learning_rate is None:
        spec = dataclasses.replace(spec, learning_rate=SESSION_LEARNING_RATES[spec.rule])
    _check(spec)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; a simulated session is written into a new folder")
    fps = spec.fps
    sim_cfg, decoder_cfg, task_cfg = session_configs(spec)
    sim_cfg = msgspec.structs.replace(sim_cfg, n_planes=2, realtime=False, dendrites=dendrites)
    up, down = ensembles(spec)
    sim = TraceSim(sim_cfg, fps, up, down)
    dend = sim.dendrites
    assert dend is not None
    n_cells, n_dend = spec.n_cells, dend.layout.n
    shape = (sim_cfg.height_px, sim_cfg.width_px)

    config_doc = {
        "rig": {"name": "sim-session"},
        "session": {"mouse_id": f"sim-{spec.rule}-{spec.seed}", "save_frames": False, "auto_start": True},
        "acquisition": {"source": "sim", "frame_rate_hz": fps, "n_planes": 2, "bci_plane": 0,
                        "sim": msgspec.to_builtins(sim_cfg)},
        "decoder": msgspec.to_builtins(decoder_cfg),
        "task": msgspec.to_builtins(task_cfg),
        "reward": {"volume_ul": REWARD_VOLUME_UL},
    }
    cfg = config_from_dict(config_doc, "rig sim session")
    out.mkdir(parents=True)
    record = SessionRecord(out, cfg, "(rig sim session)", [])
    record.write_config(f"# written by `rig sim session` ({_describe(spec)}); the config is config.resolved.json\n",
                        msgspec.to_builtins(cfg))
    record.write("running", {"mouse_id": cfg.session.mouse_id, "sim_session": _describe(spec)}, {}, [])
    clock = _Clock(fps)
    supervisor = EventLog(out / "supervisor.events.jsonl")
    supervisor.write("session_start", t_ns=clock.t0, sim_session=_describe(spec))

    acq_dir, plane_dir = out / "acquisition", out / "acquisition" / "planes" / "plane1"
    _save_rois(acq_dir / "rois", sim.centers, sim.radius, shape, fps, SOMA, None)
    _save_rois(plane_dir / "rois", sim.dend_centers, dend.layout.radius, shape, fps, DENDRITE, sim.dend_parent)
    acq_log = EventLog(acq_dir / "events.jsonl")
    acq_log.write("state", t_ns=clock.t0, state="ready", n_rois=n_cells, frame_rate_hz=fps,
                  frame_rate_source="sim", height=shape[0], width=shape[1], n_planes=2, bci_plane=0)
    frames0 = RecordWriter(acq_dir / "frames.rec", frame_record_dtype(n_cells), 10.0)
    frames1 = RecordWriter(plane_dir / "frames.rec", frame_record_dtype(n_dend), 10.0)
    dec_dir = out / "decoder"
    dec_dir.mkdir()
    output = _FileOutput(dec_dir, clock)
    output.event("state", state="ready", n_rois=str(n_cells))
    decisions = RecordWriter(dec_dir / "decisions.rec", decision_record_dtype(n_cells), 10.0)
    core = DecoderCore(decoder_cfg, task_cfg, REWARD_VOLUME_UL, n_cells, fps, output)
    loop = MouseLoop(spec, sim.mouse, task_cfg, fps)
    truth = _Truth(round(spec.minutes * 60.0 * fps), n_cells, n_dend)
    rewards: list[tuple[int, str]] = []

    core.apply_control("start_baseline", {})
    n_frames = 0
    for frame in tqdm(range(truth.capacity), desc="sim session", unit="frame", disable=not progress,
                      file=sys.stderr, mininterval=0.5):
        clock.t = clock.at(frame)
        F, Fneu = sim.step()
        F, Fneu = F.astype(np.float32), Fneu.astype(np.float32)  # what extraction sends and frames.rec keeps
        _frame_row(frames0, frame, clock.at(frame), F, Fneu, sim.displacement_px)
        _frame_row(frames1, frame, clock.at(frame, 1), sim.dend_F, sim.dend_Fneu, sim.displacement_px)
        truth.add(frame, sim)
        row = decisions.next_row()
        n_requests = len(output.requests)
        res = core.decide(frame, F, Fneu, 0, row)
        for name in ("t_ready", "t_registered", "t_extracted", "t_received", "t_decided"):
            row[name] = clock.t
        decisions.commit()
        if loop.after_decision(frame, res):  # contingent: the decoder's request; yoked: a random reward
            paid = spec.rewards == "contingent" and len(output.requests) > n_requests
            rewards.append((frame, output.requests[-1][0] if paid else ""))
        n_frames = frame + 1
        if res.mode == Mode.STOPPED:
            break
    clock.t = clock.at(n_frames)
    core.finish()
    for writer in (frames0, frames1, decisions):
        writer.close()
    acq_log.write("final_stats", t_ns=clock.t, frames=n_frames, frames_dropped=0, bad_frames=0)
    acq_log.write("state", t_ns=clock.t, state="stopped")
    output.event("state", state="stopped")
    _write_rewards(out / "reward", rewards, clock)
    truth.save(acq_dir / "sim_truth", plane_dir / "sim_truth", sim, spec, n_frames)
    supervisor.write("stop_requested", t_ns=clock.t, reason="duration")
    for log in (supervisor, acq_log, output.log):
        log.close()
    summary = _write_summary(out)
    record.write("ok" if summary.get("ok") else "failed", {"mouse_id": cfg.session.mouse_id,
                                                            "sim_session": _describe(spec)}, {}, [])
    if len(loop.outcomes) < 1:
        raise LearningError(f"{out}: no trial was completed in {spec.minutes} min (baseline "
                            f"{spec.baseline_minutes} min); make the session longer")
    hits = np.array(loop.outcomes, float)
    state = sim.mouse.state()
    return {"session": str(out), "rule": spec.rule, "rewards": spec.rewards, "feedback": spec.feedback,
            "seed": spec.seed, "minutes": spec.minutes, "frames": n_frames, "fps": fps, "somata": n_cells,
            "dendrites": n_dend, "up": up, "down": down, "trials": len(hits), "hit_rate": float(hits.mean()),
            "chance": loop.chance, "rewards_delivered": loop.rewards_delivered,
            "drive_up_hz": state["drive_up_hz"], "drive_down_hz": state["drive_down_hz"]}


def _write_summary(out: Path) -> dict[str, Any]:
    """``summary.json`` as ``rig summary --write`` computes it from the files (the supervisor's end of session)."""
    from rig.offline.problems import recorded_outcome, session_problems, with_outcome  # noqa: PLC0415
    from rig.offline.summary import summarize_session  # noqa: PLC0415

    summary = summarize_session(out)
    outcome = recorded_outcome(out)
    summary = with_outcome(summary, outcome, session_problems(out, summary, str(outcome.get("stop_reason", ""))))
    write_json_atomic(out / "summary.json", summary)
    return summary


def _describe(spec: LearnSpec) -> dict[str, Any]:
    return {"rule": spec.rule, "rewards": spec.rewards, "feedback": spec.feedback, "minutes": spec.minutes,
            "baseline_minutes": spec.baseline_minutes, "seed": spec.seed, "fps": spec.fps, "n_cells": spec.n_cells,
            "learning_rate": spec.learning_rate,
            "ensemble_cells": spec.ensemble_cells}


def _frame_row(writer: RecordWriter, frame: int, t: int, F: np.ndarray, Fneu: np.ndarray, shift: float) -> None:
    """One ``frames.rec`` row; ``dy`` is the brain's lick displacement, what registration would measure (the
    trace-level F is not corrected for it: the ROI stays where it was, as TraceSim models)."""
    row = writer.next_row()
    row["frame"] = frame
    row["t_ready"] = row["t_registered"] = row["t_extracted"] = row["t_sent"] = t
    row["dy"] = shift
    row["dx"] = 0.0
    row["corr"] = 1.0
    row["flags"] = 0
    row["F"] = F
    row["Fneu"] = Fneu
    writer.commit()


def _write_rewards(folder: Path, rewards: list[tuple[int, str]], clock: _Clock) -> None:
    """``reward/events.jsonl``: one delivered ``reward_outcome`` per reward the mouse got (no valve ran)."""
    log = EventLog(folder / "events.jsonl")
    total = 0.0
    for i, (frame, request_id) in enumerate(rewards):
        t = clock.at(frame)
        total += REWARD_VOLUME_UL
        log.write("reward_outcome", t_ns=t, request_id=request_id or f"sim-{i + 1}", status="delivered", reason="",
                  volume_ul=REWARD_VOLUME_UL, open_ms=0.0, source="decoder" if request_id else "sim_yoked",
                  frame=frame, t_ready=t, t_requested=t, t_written=0, t_ack=0, t_done=t, board_us_ack=-1,
                  board_us_done=-1, dispensed_ul=REWARD_VOLUME_UL, volume_kind="reward", reconciled=False,
                  override=False, issued_by="", session_reward_ul=total, session_other_ul=0.0)
    log.close()


class _Truth:
    """Ground truth kept per frame (float32), saved as ``ground_truth.npz`` per plane."""

    def __init__(self, capacity: int, n_cells: int, n_dend: int) -> None:
        self.capacity = capacity
        self.spikes = np.zeros((capacity, n_cells), np.uint8)
        self.bout = np.zeros(capacity, np.uint8)
        self.value = np.zeros(capacity, np.float32)
        self.dff = np.zeros((capacity, n_dend), np.float32)
        self.dff_bap = np.zeros((capacity, n_dend), np.float32)
        self.events = np.zeros((capacity, n_dend), np.uint8)
        self.instructive = np.zeros((capacity, n_dend), np.float32)
        self.rate = np.zeros((capacity, n_dend), np.float32)

    def add(self, frame: int, sim: TraceSim) -> None:
        d = sim.dendrites
        assert d is not None
        self.spikes[frame] = np.minimum(sim.mouse.spikes, 255)
        self.bout[frame] = sim.mouse.bout > 0
        self.value[frame] = sim.mouse.value
        self.dff[frame] = d.dff
        self.dff_bap[frame] = d.dff_bap
        self.events[frame] = d.events
        self.instructive[frame] = d.instructive
        self.rate[frame] = d.rate_hz

    def save(self, soma_dir: Path, dend_dir: Path, sim: TraceSim, spec: LearnSpec, n: int) -> None:
        up, down = ensembles(spec)
        common = {"up": np.array(up), "down": np.array(down), "frame_rate_hz": spec.fps, "n_frames": n,
                  "rule": spec.rule}
        soma_dir.mkdir(parents=True, exist_ok=True)
        dend_dir.mkdir(parents=True, exist_ok=True)
        mouse = sim.mouse
        np.savez(soma_dir / "ground_truth.npz", plane=0, centers=sim.centers, radii=sim.radius,
                 spikes=self.spikes[:n], bout=self.bout[:n], tone_value=self.value[:n], role=mouse.role,
                 drive_hz=mouse.drive_hz, credit=mouse.credit, base_rate_hz=mouse.base_rate_hz, **common)
        d = sim.dendrites
        assert d is not None
        np.savez(dend_dir / "ground_truth.npz", plane=1, parent=sim.dend_parent, centers=sim.dend_centers,
                 radii=d.layout.radius, dff_true=self.dff[:n], dff_bap=self.dff_bap[:n], events=self.events[:n],
                 instructive=self.instructive[:n], event_rate_hz=self.rate[:n], **common)
        (dend_dir / "README.txt").write_text(
            "ground_truth.npz of plane 1 (rig sim session): per dendrite (columns, aligned with rois/): parent soma, "
            "centre, radius; per frame: dff_true (total), dff_bap (the back-propagated somatic part), events "
            "(dendrite-specific), instructive (the parent's instructive signal), event_rate_hz.\n", encoding="utf-8")
