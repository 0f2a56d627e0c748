"""What-if replays: a replay made with another config, written as a new session folder marked ``replay_of``.

Split from :mod:`rig.offline.replay` (which re-decides and checks); this module only builds the what-if's
config and writes its folder, so that the other tools (summary, report, export) read it like any session.

Several planes (docs/PLANES.md): only the BCI plane feeds the decoder, so only its traces are re-made. The
other planes' records (``acquisition/planes/planeK/``: frames.rec, rois/ with the ROI kinds and links,
sim_truth/) are carried over as recorded, so ``rig dendrites``, the NWB export and the console read the
what-if like the original; their movies stay in the original session (as the BCI plane's does), which
``session.json`` says.
"""

from __future__ import annotations

import platform
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np

import rig
from decoder.core import decision_record_dtype
from rig.app.config import RigConfig
from rig.app.session_files import cpu_target
from rig.core.store import EventLog, RecordWriter, write_json_atomic
from rig.offline.replay import ReplayRun
from rig.offline.session_data import SessionData, SessionError


def whatif_config(session: SessionData, config_file: str | Path | None, overrides: list[str]) -> RigConfig:
    """The config of a what-if replay: ``config_file`` (else the session's own), with ``--set`` overrides."""
    import msgspec  # noqa: PLC0415

    from rig.app.config import apply_overrides, config_from_dict, load_config_dict  # noqa: PLC0415

    if config_file is not None:
        return config_from_dict(load_config_dict(config_file, overrides), str(config_file))
    doc = apply_overrides(msgspec.to_builtins(session.config), overrides)
    return config_from_dict(doc, f"{session.path / 'config.resolved.json'} with --set")


def write_whatif_session(session: SessionData, run: ReplayRun, cfg: RigConfig, config_text: str,
                         config_file: str, out_dir: Path, overrides: list[str] | None = None) -> Path:
    """Write a replay made with another config as a new session folder, marked ``replay_of`` the original."""
    if out_dir.exists():
        raise SessionError(f"{out_dir}: already exists; a what-if replay writes a new session folder")
    out_dir.mkdir(parents=True)
    write_json_atomic(out_dir / "session.json", {
        "format": "bci-rig session v1",
        "status": "ok",
        "replay_of": str(session.path.resolve()),
        "replay": {"source": run.source, "config_file": config_file, "overrides": list(overrides or []),
                   "movie": str(session.movie_path.resolve()) if run.source == "movie" else "",
                   "planes": "the other planes' frames.rec, rois and sim_truth are copied as recorded; their "
                             "movies stay in the original session",
                   "stamps": "t_* stamps are copied from the original session (a replay measures no latency)",
                   "reward": "no reward process ran: rewards were requested, not delivered"},
        "software": {"name": "bci-rig", "version": rig.__version__, "python": platform.python_version(),
                     "platform": platform.platform(), "cpu": cpu_target()},
        "rig": session.info.get("rig", cfg.rig.name),
        "created": datetime.now().isoformat(timespec="seconds"),
        "metadata": session.info.get("metadata", {}),
        "processes": ["acquisition", "decoder"],
    })
    (out_dir / "config.toml").write_text(config_text, encoding="utf-8")
    import msgspec  # noqa: PLC0415

    write_json_atomic(out_dir / "config.resolved.json", msgspec.to_builtins(cfg))

    acq_dir = out_dir / "acquisition"
    acq_dir.mkdir()
    src_acq = session.path / "acquisition"
    if (src_acq / "rois").is_dir():
        shutil.copytree(src_acq / "rois", acq_dir / "rois")
    if (src_acq / "events.jsonl").exists():
        shutil.copyfile(src_acq / "events.jsonl", acq_dir / "events.jsonl")
    if (src_acq / "sim_truth").is_dir():
        shutil.copytree(src_acq / "sim_truth", acq_dir / "sim_truth")
    _copy_other_planes(src_acq / "planes", acq_dir / "planes")
    traces = run.traces if run.traces is not None else session.frames
    if traces is not None:
        _write_records(acq_dir / "frames.rec", traces)

    dec_dir = out_dir / "decoder"
    dtype = decision_record_dtype(session.n_rois)
    rows = run.rows if run.rows.dtype == dtype else _convert(run.rows, dtype)
    _write_records(dec_dir / "decisions.rec", rows)
    log = EventLog(dec_dir / "events.jsonl")
    for event in session.dec_events:
        if event.get("kind") == "state":
            log.write("state", **{k: v for k, v in event.items() if k != "kind"})
    for event in run.events:
        log.write(event["kind"], **{k: v for k, v in event.items() if k != "kind"})
    log.close()
    if run.calibration is not None:
        write_json_atomic(dec_dir / "calibration.json", run.calibration)
    if cfg.feedback.enabled:  # the feedback the what-if decisions would have given (reward.feedback.plan)
        from rig.offline.feedback import write_feedback_plan  # noqa: PLC0415
        write_feedback_plan(out_dir, cfg.feedback, rows, run.events)

    from rig.offline.problems import recorded_outcome, session_problems, with_outcome  # noqa: PLC0415
    from rig.offline.summary import summarize_session  # noqa: PLC0415

    # The what-if ends as the original did; its own decisions say whether it would have been worth anything
    # (e.g. its calibration failed, so no trial ran): "ok" and "problems" as for a live session.
    stop_reason = str(recorded_outcome(session.path).get("stop_reason", ""))
    summary = summarize_session(out_dir)
    summary = with_outcome(summary, {"stop_reason": stop_reason}, session_problems(out_dir, summary, stop_reason))
    summary["replay_of"] = str(session.path.resolve())
    write_json_atomic(out_dir / "summary.json", summary)
    return out_dir


def default_whatif_dir(session: SessionData) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = session.path.parent / f"{session.path.name}.replay-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = session.path.parent / f"{session.path.name}.replay-{stamp}_{suffix}"
    return path



#: what a non-BCI plane's folder keeps in a what-if besides frames.rec (and its .json layout): not its movie
_PLANE_DIRS = ("rois", "sim_truth")


def _copy_other_planes(src: Path, dst: Path) -> None:
    """The other planes' recorded files, as recorded (they do not feed the decoder, so a what-if leaves them)."""
    if not src.is_dir():
        return
    for plane_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        out = dst / plane_dir.name
        out.mkdir(parents=True)
        for child in plane_dir.iterdir():
            if child.name in _PLANE_DIRS or child.name.startswith("frames.rec"):
                if child.is_dir():
                    shutil.copytree(child, out / child.name)
                else:
                    shutil.copyfile(child, out / child.name)


def _write_records(path: Path, rows: np.ndarray) -> None:
    """A whole ``.rec`` file at once: the RecordWriter layout (its sidecar, then the raw rows)."""
    RecordWriter(path, rows.dtype).close()
    with open(path, "ab") as f:
        f.write(np.ascontiguousarray(rows).tobytes())


def _convert(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = np.zeros(len(rows), dtype=dtype)
    for name in dtype.names or ():
        if name in (rows.dtype.names or ()):
            out[name] = rows[name]
    return out


