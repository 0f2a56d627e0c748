"""What ``rig dendrites`` reads from a session: dendrites, their somata, dF/F, the decoder's cursor and trials.

Why its own module: loading and checking a multi-plane session (docs/PLANES.md) is separate from the
statistics (:mod:`rig.offline.dendrites`). A dendrite is a ROI of kind ``dendrite`` on a plane other than the
BCI plane (``acquisition/planes/planeK/rois/roi_kind.npy``) linked to its soma on the BCI plane
(``roi_parent.npy``, extracted-ROI indices of ``acquisition/rois``). Every problem is a :class:`DendriteError`
naming the file and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d, minimum_filter1d

from rig.core.codes import Mode
from rig.offline.session_checks import SessionError
from rig.offline.session_data import SessionData

#: sliding window of the F0 baseline (suite2p's "maximin": smooth, minimum, maximum), seconds
F0_WINDOW_S = 60.0
F0_SMOOTH_S = 0.5


class DendriteError(SessionError):
    """The session cannot be analysed for dendrites: the message names the file and what is missing."""


@dataclass
class Dendrite:
    plane: int
    roi: int  # its ROI index on its plane (extracted numbering)
    soma: int  # its parent's ROI index on the BCI plane
    role: str  # "up", "down" or "other": the parent's ensemble


@dataclass
class DendriteData:
    """Everything the analysis needs, on the frames all planes and the decoder have (one row per volume)."""

    frames: np.ndarray  # (T,) volume numbers
    rate_hz: float
    dendrites: list[Dendrite]
    dend_dff: np.ndarray  # (T, n_d)
    motion: np.ndarray  # (T, n_d): each dendrite's plane's registration shift (pixels) per frame
    soma_dff: np.ndarray  # (T, n_d): the parent soma of each dendrite
    cursor: np.ndarray  # (T,) the decoder's cursor (NaN where undefined)
    threshold: np.ndarray  # (T,) the calibration in force (NaN before the first)
    bci: np.ndarray  # (T,) bool: decoder in BCI mode with a finite cursor
    trial: np.ndarray  # (T,) the decoder's trial number
    decoder_dff: np.ndarray  # (T, n_rois) the decoder's own dF/F (for the leave-one-out cursor)
    smoothing_frames: int
    up: list[int]
    down: list[int]
    outcomes: list[tuple[int, str]]  # (row, "hit"|"miss") of each completed trial's outcome
    rewards: list[int]  # rows of the decoder's reward requests
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.dendrites)


def dff_maximin(F: np.ndarray, Fneu: np.ndarray, coef: float, rate_hz: float) -> np.ndarray:
    """dF/F of ``F - coef * Fneu`` against a sliding maximin baseline (robust to activity, follows bleaching)."""
    Fc = F.astype(np.float64) - coef * Fneu.astype(np.float64)
    window = max(3, int(round(F0_WINDOW_S * rate_hz)))
    smooth = gaussian_filter1d(Fc, max(F0_SMOOTH_S * rate_hz, 0.5), axis=0, mode="nearest")
    f0 = maximum_filter1d(minimum_filter1d(smooth, window, axis=0, mode="nearest"), window, axis=0, mode="nearest")
    floor = max(float(np.nanmedian(np.abs(f0))) * 1e-3, 1e-6)
    return (Fc - f0) / np.maximum(f0, floor)


def _roles(session: SessionData) -> tuple[list[int], list[int], list[str]]:
    """The ensembles the BCI ran with: the calibrations' (all alike), else the config's."""
    notes: list[str] = []
    pairs = {(tuple(c.get("up") or ()), tuple(c.get("down") or ())) for c in session.calibrations() if "up" in c}
    if len(pairs) > 1:
        notes.append(f"the ensembles changed during the session ({len(pairs)} different ones); roles are the "
                     "config's decoder.up/down")
    if len(pairs) == 1:
        up, down = next(iter(pairs))
        return [int(i) for i in up], [int(i) for i in down], notes
    return [int(i) for i in session.config.decoder.up], [int(i) for i in session.config.decoder.down], notes


def has_dendrite_plane(session: SessionData) -> bool:
    """The session images a plane besides the BCI plane (``[acquisition] n_planes`` > 1)."""
    return session.n_planes > 1


def load_dendrite_data(session: SessionData) -> DendriteData:
    """Dendrites and somata as dF/F, with the decoder's cursor, on the frames every file has."""
    from acquisition.rois import DENDRITE  # noqa: PLC0415 - offline only

    if not has_dendrite_plane(session):
        raise DendriteError(f"{session.path}: no dendrite plane: the session imaged one plane; dendrites are recorded "
                            "with [acquisition] n_planes = 2 or more (docs/PLANES.md)")
    if session.frames is None or session.decisions is None or not len(session.decisions):
        raise DendriteError(f"{session.path}: acquisition/frames.rec and decoder/decisions.rec are both needed")
    try:
        planes = session.planes  # checked together: records, ROI sets, links (rig/offline/session_planes.py)
    except SessionError as exc:
        raise DendriteError(str(exc)) from exc
    bci = planes[session.bci_plane]
    if bci.roi_set is None:
        raise DendriteError(f"{bci.folder / 'rois'}: the session kept no ROI sets, so no dendrite is known")
    n_soma = bci.roi_set.n_rois
    coef = float(session.config.decoder.neuropil_coef)
    rate = session.frame_rate_hz
    common = np.intersect1d(session.frames["frame"], session.decisions["frame"])
    found: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # plane, dendrite ROIs, their somata, rows
    no_link: list[str] = []
    for p in planes:
        if p.is_bci:
            continue
        rois_dir = p.folder / "rois"
        dend = np.flatnonzero(p.kind == DENDRITE)
        if not dend.size:
            continue
        linked = dend[p.parent[dend] >= 0]
        if not linked.size:
            no_link.append(f"{rois_dir}: {dend.size} dendrite ROI(s), none linked to a soma (roi_parent.npy)")
            continue
        bad = linked[p.parent[linked] >= n_soma]
        if bad.size:
            raise DendriteError(f"{rois_dir / 'roi_parent.npy'}: dendrite ROI {int(bad[0])} is linked to soma "
                                f"{int(p.parent[bad[0]])}, but the BCI plane has {n_soma} ROIs (0..{n_soma - 1}): "
                                "the link names a missing soma")
        assert p.frames is not None
        common = np.intersect1d(common, p.frames["frame"])
        found.append((p.plane, linked, p.parent[linked].astype(int), p.frames))
    where = session.path / "acquisition" / "planes"
    if not found:
        if no_link:
            raise DendriteError("no links: " + "; ".join(no_link) + " (link them: [[acquisition.rois.links]], "
                                "the console or rig link; docs/PLANES.md)")
        raise DendriteError(f"{where}: no dendrite ROIs on any plane (roi_kind.npy marks none as a dendrite)")
    if common.size < 10:
        raise DendriteError(f"{session.path}: only {common.size} frames are in every plane's frames.rec and in "
                            "decisions.rec")
    up, down, notes = _roles(session)
    role_of = {**{i: "up" for i in up}, **{i: "down" for i in down}}
    soma_rows = np.searchsorted(session.frames["frame"], common)
    soma_dff_all = dff_maximin(session.frames["F"][soma_rows], session.frames["Fneu"][soma_rows], coef, rate)
    dendrites: list[Dendrite] = []
    dend_cols: list[np.ndarray] = []
    motion_cols: list[np.ndarray] = []
    for plane, linked, somas, rec in found:
        rows = np.searchsorted(rec["frame"], common)
        dff = dff_maximin(rec["F"][rows][:, linked], rec["Fneu"][rows][:, linked], coef, rate)
        dend_cols.append(dff)
        shift = np.hypot(rec["dy"][rows].astype(np.float64), rec["dx"][rows].astype(np.float64))
        if not np.isfinite(shift).all():
            notes.append(f"plane {plane}: {int((~np.isfinite(shift)).sum())} frames without a registration shift "
                         "(taken as 0 in the motion regressors)")
            shift = np.nan_to_num(shift)
        motion_cols.append(np.repeat(shift[:, None], linked.size, axis=1))
        dendrites += [Dendrite(plane, int(r), int(s), role_of.get(int(s), "other")) for r, s in
                      zip(linked, somas, strict=True)]
    dec_rows = np.searchsorted(session.decisions["frame"], common)
    dec = session.decisions[dec_rows]
    cursor = dec["cursor"].astype(np.float64)
    threshold = np.full(common.size, np.nan)
    for cal in session.calibrations():
        if "threshold" in cal and cal.get("frame", -1) >= 0:
            threshold[common >= int(cal["frame"])] = float(cal["threshold"])
    bci = (dec["mode"] == int(Mode.BCI)) & np.isfinite(cursor) & np.isfinite(threshold)
    row_of = {int(f): i for i, f in enumerate(common)}
    outcomes = [(row_of[t.outcome_frame], t.outcome) for t in session.trials()
                if t.outcome in ("hit", "miss") and t.outcome_frame in row_of]
    # the rewards the mouse got (the reward process's delivered outcomes), else what the decoder asked for
    delivered = [e for e in session.reward_events if e.get("kind") == "reward_outcome"
                 and e.get("status") == "delivered" and e.get("volume_kind", "reward") == "reward"]
    asked = [e for e in session.dec_events if e.get("kind") == "reward_request"]
    rewards = [row_of[int(e["frame"])] for e in (delivered if session.reward_events else asked)
               if int(e.get("frame", -1)) in row_of]
    soma_cols = np.array([d.soma for d in dendrites], dtype=int)
    return DendriteData(
        frames=common, rate_hz=rate, dendrites=dendrites, dend_dff=np.concatenate(dend_cols, axis=1),
        motion=np.concatenate(motion_cols, axis=1),
        soma_dff=soma_dff_all[:, soma_cols], cursor=cursor, threshold=threshold, bci=bci,
        trial=dec["trial"].astype(np.int64), decoder_dff=dec["dff"].astype(np.float64),
        smoothing_frames=int(session.config.decoder.smoothing_frames), up=up, down=down, outcomes=outcomes,
        rewards=rewards, warnings=notes)
