"""`rig export SESSION --nwb OUT.nwb`: a session in Neurodata Without Borders form (pynwb).

What goes where:
  * ``/general``: subject, devices, the imaging plane; the config snapshot (``data_collection``), the
    calibrations (``notes``), software version and git hash (``source_script``).
  * ``/processing/ophys``: ``ImageSegmentation/PlaneSegmentation`` from the session's suite2p ``stat.npy``
    (weighted pixel masks, plus each ROI's ensemble role), ``Fluorescence`` (F, Fneu), ``DfOverF`` (the
    decoder's dF/F), ``SummaryImages/reference``.
  * ``/processing/ophys/Registration``: per-frame rigid shift, correlation and bad-frame flags (and ``z``,
    z-tracking's depth estimates, when the session has acquisition/z.rec).
  * ``/processing/behavior/BCI``: the decoder's per-frame output (cursor, normalised cursor, up/down
    ensembles, tone, grating bin, trial state, mode, reward requested).
  * ``/events``: EventsTables ``reward_outcomes`` (every request: status, volume, valve time, host and
    board stamps) and ``licks`` (onsets/offsets with board stamps).
  * ``/intervals/trials``: one row per trial with its outcome, hit flag and frames.
  * optionally ``/acquisition/TwoPhotonSeries``: the raw frames (``--movie``).
  * several planes (docs/PLANES.md): the BCI plane keeps the names above; every other plane K adds its own
    ImagingPlane, ``PlaneSegmentation_planeK``, ``F_planeK``/``Fneu_planeK`` and ``TwoPhotonSeries_planeK``, and
    every plane's segmentation gets ``roi_kind`` and ``parent_soma`` columns (rig/offline/nwb_planes.py).

Times are seconds from the earliest stamp of the session (every stamp is one system-wide monotonic clock).
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rig.offline import nwb_planes
from rig.offline.feedback import add_feedback_stimulus
from rig.offline.session_data import SessionData, SessionError

#: HDF5 chunk size aimed at when streaming large series (F, Fneu, dF/F, movie) into the file, and the
#: most frames held in memory at once (the movie: a few frames per chunk, 16 chunks per buffer).
CHUNK_BYTES = 4 << 20
CHUNK_FRAMES = 512
BUFFER_CHUNKS = 16


@dataclass
class NwbMetadata:
    """Facts the rig config does not hold. Session metadata keys of the same name fill what is left ``None``."""

    species: str | None = None
    sex: str | None = None
    age: str | None = None  # ISO 8601 duration, e.g. "P90D" (or a range "P60D/P90D")
    date_of_birth: str | None = None  # ISO date
    genotype: str | None = None
    strain: str | None = None
    brain_area: str | None = None  # Allen CCF name or acronym, e.g. "MOp"
    indicator: str | None = None
    excitation_nm: float | None = None
    emission_nm: float | None = None
    include_movie: bool = False


def _meta_value(session: SessionData, options: NwbMetadata, name: str) -> Any:
    value = getattr(options, name)
    if value is None:
        value = session.info.get("metadata", {}).get(name) or None
    return value


def _wall_clock_start(session: SessionData, t0_ns: int) -> tuple[datetime, str]:
    """The wall-clock time of stamp ``t0_ns`` and how it was found (stamps are monotonic, not wall time)."""
    clock = session.info.get("clock")
    if isinstance(clock, dict) and "t_ns" in clock and "unix_ns" in clock:
        unix_ns = int(clock["unix_ns"]) + (t0_ns - int(clock["t_ns"]))
        return datetime.fromtimestamp(unix_ns / 1e9).astimezone(), "session.json clock anchor"
    for key in ("started", "created"):
        text = session.info.get(key)
        if text:
            return datetime.fromisoformat(str(text)).astimezone(), f"session.json {key!r} (to the second)"
    mtime = (session.path / "config.toml").stat().st_mtime
    return datetime.fromtimestamp(mtime).astimezone(), "config.toml modification time"


def _array_iterator(data: np.ndarray, bar: tqdm) -> Any:
    """Stream a (frames, ...) array into the file in chunks of frames, advancing ``bar`` as they are written."""
    from hdmf.data_utils import GenericDataChunkIterator  # noqa: PLC0415

    class _ArrayChunks(GenericDataChunkIterator):
        def __init__(self, array: np.ndarray, **kwargs: Any) -> None:
            self._array = array
            super().__init__(**kwargs)

        def _get_data(self, selection: tuple[slice, ...]) -> np.ndarray:
            block = np.asarray(self._array[selection])
            bar.update(block.shape[0])
            return block

        def _get_maxshape(self) -> tuple[int, ...]:
            return tuple(self._array.shape)

        def _get_dtype(self) -> np.dtype:
            return self._array.dtype

    frame_bytes = max(1, data.dtype.itemsize * int(np.prod(data.shape[1:])))
    rows = max(1, min(CHUNK_FRAMES, CHUNK_BYTES // frame_bytes, data.shape[0]))
    buffer_rows = min(rows * BUFFER_CHUNKS, data.shape[0])
    if buffer_rows < data.shape[0]:
        buffer_rows -= buffer_rows % rows  # a buffer holds whole chunks
    return _ArrayChunks(data, chunk_shape=(rows, *data.shape[1:]), buffer_shape=(buffer_rows, *data.shape[1:]))


def export_nwb(session: SessionData, out_path: str | Path, options: NwbMetadata | None = None,
               progress: bool = True) -> Path:
    """Write ``session`` to ``out_path`` (an .nwb HDF5 file, replaced atomically); returns the path."""
    from pynwb import NWBHDF5IO  # noqa: PLC0415 - pynwb is an optional extra

    options = options or NwbMetadata()
    out_path = Path(out_path)
    if session.frames is None or not len(session.frames):
        raise SessionError(f"{session.path}: acquisition/frames.rec holds no frames; nothing to export")
    movie = None
    if options.include_movie:
        movie = session.movie()
        if movie is None:
            raise SessionError(f"{session.path}: --movie asked for the raw frames but the session kept none "
                               "(session.save_frames was off)")
    n_decisions = 0 if session.decisions is None else len(session.decisions)
    total = 2 * len(session.frames) + n_decisions + (0 if movie is None else min(len(movie), len(session.frames)))
    total += nwb_planes.extra_frames(session, options.include_movie)
    with tqdm(total=total, desc="export", unit="frame", disable=not progress, file=sys.stderr,
              mininterval=0.25) as bar:
        nwbfile = _build(session, options, movie, bar)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.stem}.partial.nwb")
        with NWBHDF5IO(str(tmp), mode="w") as nwb_io:
            nwb_io.write(nwbfile)
        tmp.replace(out_path)
    return out_path


def _build(session: SessionData, options: NwbMetadata, movie: np.ndarray | None, bar: tqdm) -> Any:
    """The in-memory NWBFile; the large series are iterators that stream (and advance ``bar``) on write."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO  # noqa: PLC0415
    from pynwb import NWBFile, TimeSeries  # noqa: PLC0415
    from pynwb.base import Images  # noqa: PLC0415
    from pynwb.behavior import BehavioralTimeSeries  # noqa: PLC0415
    from pynwb.file import Subject  # noqa: PLC0415
    from pynwb.image import GrayscaleImage  # noqa: PLC0415
    from pynwb.ophys import (  # noqa: PLC0415
        DfOverF,
        Fluorescence,
        ImageSegmentation,
        OpticalChannel,
        RoiResponseSeries,
        TwoPhotonSeries,
    )

    cfg = session.config
    frames = session.frames
    assert frames is not None
    t0 = session.time_zero_ns()

    def seconds(stamps: Any) -> np.ndarray:
        return (np.asarray(stamps, dtype=np.int64) - t0).astype(np.float64) / 1e9

    start_time, start_source = _wall_clock_start(session, t0)
    software = session.info.get("software", {})
    metadata = session.info.get("metadata", {})
    mouse = str(metadata.get("mouse_id") or cfg.session.mouse_id)
    experimenter = str(metadata.get("experimenter") or cfg.session.experimenter)
    calibrations = {"decoder_calibration": session.calibration, "valve_calibration": session.valve_calibration,
                    "decoder_calibrations_in_order": session.calibrations(), "bci_blocks": session.blocks()}
    config_text = session.config_text or "(no config.toml snapshot)"
    nwbfile = NWBFile(
        session_description=(f"bci-rig closed-loop BCI session on rig {session.info.get('rig', cfg.rig.name)!r}: "
                             f"{cfg.decoder.decoder} cursor from the ensembles' dF/F, threshold crossings rewarded"
                             + (f" (what-if replay of {session.is_replay_of})" if session.is_replay_of else "")),
        identifier=str(uuid.uuid4()),
        session_start_time=start_time,
        session_id=session.path.name.replace("/", "_"),
        experimenter=[experimenter] if experimenter else None,
        experiment_description=str(metadata.get("notes") or cfg.session.notes or "closed-loop BCI session"),
        keywords=["brain-computer interface", "two-photon imaging", "closed loop", "operant conditioning"],
        data_collection=("Rig config as it ran (config.resolved.json):\n" + _json(msgspec_builtins(cfg))
                         + "\n\nConfig file snapshot (config.toml):\n" + config_text),
        notes=(f"t = 0 is the earliest monotonic stamp of the session; its wall-clock time comes from "
               f"{start_source}.\nCalibrations: {_json(calibrations)}\nRead notes: {session.notes}"),
        source_script=(f"bci-rig {software.get('version', '?')} (git {software.get('git', 'unknown')}), "
                       f"rig export"),
        source_script_file_name="rig/offline/nwb_export.py",
    )
    species = _meta_value(session, options, "species") or "Mus musculus"
    age = _meta_value(session, options, "age")
    dob = _meta_value(session, options, "date_of_birth")
    if age is None and dob is None:
        age = "P0D/"
        print("rig export: the subject's age is unknown (no `age` in the session metadata, no --subject-age): "
              "written as the open range P0D/", file=sys.stderr)
    nwbfile.subject = Subject(
        subject_id=mouse.replace("/", "_"), species=species, sex=_meta_value(session, options, "sex") or "U",
        age=age, date_of_birth=datetime.fromisoformat(dob).astimezone() if dob else None,
        genotype=_meta_value(session, options, "genotype"), strain=_meta_value(session, options, "strain"),
        description="from the session metadata" if metadata else "from the rig config",
    )

    # ---------------------------------------------------------------- imaging plane and ROIs
    movie_meta = session.movie_meta or {}
    ready = session.ready_info("acquisition")
    shape = movie_meta.get("shape", [0, 0, 0])
    height, width = int(ready.get("height", shape[1])), int(ready.get("width", shape[2]))
    scope = "the simulated scope" if _simulated(cfg) else "a real scope"
    device = nwbfile.create_device(
        name="microscope",
        description=f"two-photon microscope; bci-rig frame source {cfg.acquisition.source!r} ({scope}, "
                    f"{height}x{width} px)",
    )
    channel = OpticalChannel(name="green", description="green PMT channel (calcium indicator emission)",
                             emission_lambda=float(_meta_value(session, options, "emission_nm") or 510.0))
    imaging = {"excitation_lambda": float(_meta_value(session, options, "excitation_nm") or 920.0),
               "indicator": str(_meta_value(session, options, "indicator") or _indicator_from_config(cfg)),
               "location": str(_meta_value(session, options, "brain_area") or "unknown")}
    several = session.n_planes > 1
    plane = nwbfile.create_imaging_plane(
        name=f"plane{session.bci_plane}", optical_channel=channel, imaging_rate=session.frame_rate_hz,
        device=device, description=f"the imaged field of view, {height}x{width} px"
        + (f"; the BCI plane (plane {session.bci_plane}) of {session.n_planes}" if several else ""), **imaging)
    ophys = nwbfile.create_processing_module("ophys", "registration, ROI fluorescence and the decoder's dF/F")
    segmentation = ImageSegmentation(name="ImageSegmentation")
    ophys.add(segmentation)
    plane_seg = segmentation.create_plane_segmentation(
        name="PlaneSegmentation", description="suite2p ROIs the session extracted (acquisition/rois)",
        imaging_plane=plane,
    )
    bci_plane = session.planes[session.bci_plane] if several else None
    stat = session.rois().stat if bci_plane is None else bci_plane.roi_set.stat
    up, down = _ensembles(session)
    plane_seg.add_column(name="ensemble", description="role in the cursor at the end of the session: up, down, other")
    if bci_plane is not None:
        nwb_planes.add_kind_columns(plane_seg, bci_plane, "PlaneSegmentation")
    for i, roi in enumerate(stat):
        mask = [(int(x), int(y), float(w)) for x, y, w in zip(roi["xpix"], roi["ypix"], roi["lam"], strict=True)]
        plane_seg.add_roi(pixel_mask=mask, ensemble="up" if i in up else "down" if i in down else "other",
                          **({} if bci_plane is None else nwb_planes.kind_values(bci_plane, i)))
    all_rois = plane_seg.create_roi_table_region(region=list(range(len(stat))), description="every ROI")
    reference = session.reference()  # checked: a plain 2-D image, never unpickled
    if reference is not None:
        images = Images(name="SummaryImages", description="registration reference")
        images.add_image(GrayscaleImage(name="reference", data=reference.astype(np.float32),
                                        description="the reference image frames were registered against"))
        ophys.add(images)

    # ---------------------------------------------------------------- fluorescence
    frame_t = seconds(frames["t_ready"])
    fluorescence = Fluorescence(name="Fluorescence")
    ophys.add(fluorescence)
    for name, desc in (("F", "ROI fluorescence (weighted sum over the ROI's pixels of the registered frame)"),
                       ("Fneu", "neuropil fluorescence around each ROI")):
        fluorescence.add_roi_response_series(RoiResponseSeries(
            name=name, data=_array_iterator(np.ascontiguousarray(frames[name]), bar), rois=all_rois,
            unit="a.u.", timestamps=frame_t, description=desc,
        ))
    registration = BehavioralTimeSeries(name="Registration")
    ophys.add(registration)
    registration.add_timeseries(TimeSeries(
        name="shift", data=np.stack([frames["dy"], frames["dx"]], axis=1), unit="pixels", timestamps=frame_t,
        description="rigid shift (dy, dx) of each frame relative to the reference"))
    registration.add_timeseries(TimeSeries(
        name="corr", data=frames["corr"], unit="n/a", timestamps=frame_t,
        description="peak phase correlation with the reference (registration quality)"))
    registration.add_timeseries(TimeSeries(
        name="flags", data=frames["flags"], unit="n/a", timestamps=frame_t,
        description="bad-frame flag bits (0: a good frame)"))
    z_rows = session.z_estimates()
    if z_rows is not None and len(z_rows):  # z-tracking's estimates (acquisition/z.rec), at their frames' times
        registration.add_timeseries(TimeSeries(
            name="z", data=np.ascontiguousarray(z_rows["z_um"]), unit="um",
            timestamps=seconds(session.frame_time_ns(z_rows["frame"])),
            description="focal plane depth relative to the z-stack's centre plane (z-tracking, acquisition.ztrack)"))

    decisions = session.decisions
    behavior = nwbfile.create_processing_module("behavior", "BCI cursor and feedback, from the decoder")
    if decisions is not None and len(decisions):
        dec_t = seconds(decisions["t_ready"])
        dff = DfOverF(name="DfOverF")
        ophys.add(dff)
        dff.add_roi_response_series(RoiResponseSeries(
            name="dFF", data=_array_iterator(np.ascontiguousarray(decisions["dff"]), bar), rois=all_rois,
            unit="n/a", timestamps=dec_t,
            description="the decoder's dF/F (neuropil-corrected, running-percentile F0) of the frames it decided",
        ))
        bci = BehavioralTimeSeries(name="BCI")
        behavior.add(bci)
        for name, unit, desc in DECISION_SERIES:
            bci.add_timeseries(TimeSeries(name=name, data=np.ascontiguousarray(decisions[name]), unit=unit,
                                          timestamps=dec_t, description=desc))

    # ---------------------------------------------------------------- trials
    trials = session.trials()
    if trials:
        nwbfile.add_trial_column("outcome", "hit, miss, aborted, or open (the session ended during the trial)")
        nwbfile.add_trial_column("hit", "whether the cursor crossed the threshold in time")
        nwbfile.add_trial_column("trial_number", "the decoder's trial number")
        nwbfile.add_trial_column("start_frame", "frame number at trial start")
        nwbfile.add_trial_column("stop_frame", "frame number at trial end")
        nwbfile.add_trial_column("outcome_time", "time of the hit or miss event, s (NaN: the trial stayed open)")
        nwbfile.add_trial_column("block", "the BCI block of the session the trial belongs to (from 1)")
        starts = seconds(session.frame_time_ns([t.start_frame for t in trials]))
        stops = seconds(session.frame_time_ns([t.end_frame for t in trials]))
        outcome_t = seconds(session.frame_time_ns([max(t.outcome_frame, 0) for t in trials]))
        for k, trial in enumerate(trials):
            nwbfile.add_trial(start_time=float(starts[k]), stop_time=max(float(stops[k]), float(starts[k])),
                              outcome=trial.outcome, hit=trial.hit, trial_number=trial.number,
                              start_frame=trial.start_frame, stop_frame=trial.end_frame,
                              outcome_time=float(outcome_t[k]) if trial.outcome_frame >= 0 else float("nan"),
                              block=trial.block)

    # ---------------------------------------------------------------- rewards and licks
    _add_reward_events(nwbfile, session, seconds)
    add_feedback_stimulus(nwbfile, session.path, seconds)  # tone and grating presented, when feedback ran

    # ---------------------------------------------------------------- raw frames (optional)
    if movie is not None:
        n = min(len(movie), len(frames))
        nwbfile.add_acquisition(TwoPhotonSeries(
            name="TwoPhotonSeries", imaging_plane=plane, unit="a.u.", timestamps=frame_t[:n],
            data=H5DataIO(_array_iterator(movie[:n], bar), compression="gzip", compression_opts=4),
            description="raw frames as they came from the source (before registration)",
        ))
    if several:
        nwb_planes.add_planes(nwbfile, session, device=device, channel=channel, ophys=ophys,
                              segmentation=segmentation, fluorescence=fluorescence,
                              movie_wanted=options.include_movie, bar=bar, seconds=seconds, imaging=imaging,
                              chunks=_array_iterator)
    return nwbfile


#: Decision-record columns exported as time series: (field, unit, description).
DECISION_SERIES = (
    ("cursor", "a.u.", "decoded cursor (e.g. up minus down ensemble dF/F, smoothed)"),
    ("cursor_norm", "n/a", "cursor normalised to [0, 1] over the feedback range"),
    ("up", "n/a", "up-ensemble activity (mean dF/F)"),
    ("down", "n/a", "down-ensemble activity (mean dF/F)"),
    ("tone_hz", "Hz", "auditory feedback frequency"),
    ("angle_bin", "n/a", "visual feedback grating angle bin"),
    ("trial_state", "n/a", "trial state machine code"),
    ("mode", "n/a", "decoder mode code"),
    ("reward_requested", "n/a", "the decoder requested a reward at this frame"),
)


def _add_reward_events(nwbfile: Any, session: SessionData, seconds: Any) -> None:
    """Reward outcomes and licks as NWB EventsTables (one row per event, sorted by time)."""
    from pynwb.event import EventsTable  # noqa: PLC0415

    outcomes = sorted((e for e in session.reward_events if e.get("kind") == "reward_outcome"), key=_reward_stamp)
    if outcomes:
        table = EventsTable(name="reward_outcomes", source_description="reward process (reward/events.jsonl)",
                            description="every reward request and its outcome; timestamp: host time of the board's "
                                        "ack (else of writing the command); duration: valve open time")
        columns = [
            ("request_id", "request id (dec-N: decoder, man-N: manual)"),
            ("status", "delivered, failed or refused"),
            ("reason", "why it failed or was refused"),
            ("source", "decoder or manual"),
            ("frame", "frame whose decision asked for it (-1: manual)"),
            ("volume_ul", "volume, uL"),
            *[(name, f"host stamp {name}, s (NaN: none)") for name in HOST_STAMPS],
            ("board_us_ack", "board clock at the ack, us (-1: none)"),
            ("board_us_done", "board clock when the valve closed, us (-1: none)"),
        ]
        for name, desc in columns:
            table.add_column(name=name, description=desc)
        for o in outcomes:
            stamps = {name: float(seconds(int(o[name]))) if int(o.get(name) or 0) > 0 else float("nan")
                      for name in HOST_STAMPS}
            table.add_row(timestamp=float(seconds(_reward_stamp(o))), duration=float(o.get("open_ms", 0.0)) / 1e3,
                          request_id=str(o.get("request_id", "")), status=str(o.get("status", "")),
                          reason=str(o.get("reason", "")), source=str(o.get("source", "")),
                          frame=int(o.get("frame", -1)), volume_ul=float(o.get("volume_ul", 0.0)),
                          board_us_ack=int(o.get("board_us_ack", -1)), board_us_done=int(o.get("board_us_done", -1)),
                          **stamps)
        nwbfile.add_events_table(table)
    def lick_time(e: dict) -> int:  # the board's own time when synchronised, else when the host read it
        return int(e.get("t_board_ns") or e.get("t_received") or e["t_ns"])

    licks = sorted((e for e in session.reward_events if e.get("kind") == "lick"), key=lick_time)
    if licks:
        table = EventsTable(name="licks", source_description="lick sensor on the reward board",
                            description="lick onsets and offsets; timestamp: the board's time on the host clock "
                                        "(host arrival time before the clocks were synchronised)")
        table.add_column(name="onset", description="True: onset, False: offset")
        table.add_column(name="board_us", description="board clock at the edge, us")
        for lick in licks:
            table.add_row(timestamp=float(seconds(lick_time(lick))), onset=bool(lick.get("onset")),
                          board_us=int(lick.get("board_us", -1)))
        nwbfile.add_events_table(table)


#: Host stamps of a reward outcome exported as their own columns.
HOST_STAMPS = ("t_ready", "t_requested", "t_written", "t_ack", "t_done")


def _reward_stamp(outcome: dict[str, Any]) -> int:
    for name in ("t_ack", "t_written", "t_ns"):
        value = int(outcome.get(name) or 0)
        if value > 0:
            return value
    raise SessionError(f"reward outcome {outcome.get('request_id')!r} has no time stamp")


def _optional_seconds(outcomes: list[dict[str, Any]], name: str, seconds: Any) -> list[float]:
    return [float(seconds(int(o[name]))) if int(o.get(name) or 0) > 0 else float("nan") for o in outcomes]


def _ensembles(session: SessionData) -> tuple[set[int], set[int]]:
    """Up/down ROI indices in force at the end: the last ensembles the decoder applied, else the config.

    Read from the decoder's ``ensembles`` trial events, not from the operator's requests: a refused
    ``set_ensembles`` changed nothing.
    """
    up = {int(i) for i in session.config.decoder.up}
    down = {int(i) for i in session.config.decoder.down}
    for event in session.dec_events:
        if event.get("kind") == "trial" and event.get("event") == "ensembles":
            up = {int(i) for i in event.get("up", [])}
            down = {int(i) for i in event.get("down", [])}
    return up, down


def _simulated(cfg: Any) -> bool:
    """Whether the session's frames came from a simulation (a source that knows the truth behind them)."""
    from acquisition.sources.registry import registration  # noqa: PLC0415 - only the export needs it

    return registration(cfg.acquisition.source).has_ground_truth


def _indicator_from_config(cfg: Any) -> str:
    """The simulated scope says which indicator it models; for a real scope the config does not say."""
    if _simulated(cfg):
        return f"GCaMP{cfg.acquisition.sim.indicator} (simulated)"
    return "unknown"


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def msgspec_builtins(cfg: Any) -> Any:
    import msgspec  # noqa: PLC0415

    return msgspec.to_builtins(cfg)
