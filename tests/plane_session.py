"""Build a multi-plane session folder from arrays, in the layout docs/PLANES.md describes (tests only).

The BCI plane's files sit in ``acquisition/``, plane K's in ``acquisition/planes/planeK/``: ``frames.rec``
rows as the acquisition writes them, ``rois/`` (suite2p layout + roi_kind/roi_parent), optionally a raw movie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from acquisition.recording import frame_record_dtype
from acquisition.rois import RoiSet
from rig.app.config import config_from_dict
from rig.core.store import EventLog, RecordWriter, write_json_atomic

T0_NS = 1_000_000_000_000


def disk(center: Any, radius: float, shape: tuple[int, int]) -> dict[str, Any]:
    """A circular suite2p ROI (uniform weights) at ``center`` (y, x), clipped to the field."""
    r = max(float(radius), 1.0)
    cy, cx = float(center[0]), float(center[1])
    ys, xs = np.mgrid[math.floor(cy - r):math.ceil(cy + r) + 1, math.floor(cx - r):math.ceil(cx + r) + 1]
    inside = ((ys - cy) ** 2 + (xs - cx) ** 2 <= r * r) & (ys >= 0) & (xs >= 0) & (ys < shape[0]) & (xs < shape[1])
    ypix, xpix = ys[inside].astype(np.int32), xs[inside].astype(np.int32)
    return {"ypix": ypix, "xpix": xpix, "lam": np.full(ypix.size, 1.0 / max(ypix.size, 1), np.float32),
            "med": [int(np.median(ypix)), int(np.median(xpix))], "npix": int(ypix.size)}


@dataclass
class PlaneSpec:
    """One plane's content: ROIs (stat), F and Fneu (frames x ROIs), optional kinds/parents, movie, truth."""

    stat: list[dict]
    F: np.ndarray
    Fneu: np.ndarray
    kind: np.ndarray | None = None
    parent: np.ndarray | None = None
    movie: np.ndarray | None = None  # (frames, Ly, Lx) uint16
    truth_parent: np.ndarray | None = None  # written as sim_truth/ground_truth.npz "parent"
    iscell: np.ndarray | None = None


def build_session(folder: Path, planes: list[PlaneSpec], shape: tuple[int, int], *, fps: float = 30.0,
                  bci_plane: int = 0, only_cells: bool = True, extra_config: dict | None = None) -> Path:
    """Write the session; plane k's frame of volume v is stamped ``T0 + v / fps + k / (fps * n_planes)``."""
    n_planes = len(planes)
    config = {"rig": {"name": "testrig"}, "session": {"mouse_id": "m1"},
              "acquisition": {"source": "sim", "frame_rate_hz": fps, "n_planes": n_planes, "bci_plane": bci_plane,
                              "rois": {"only_cells": only_cells}, "sim": {"n_planes": min(n_planes, 2)}},
              **(extra_config or {})}
    cfg = config_from_dict(config, "test-config")
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text("[rig]\nname = \"testrig\"\n", encoding="utf-8")
    write_json_atomic(folder / "config.resolved.json", msgspec.to_builtins(cfg))
    write_json_atomic(folder / "session.json", {"format": "bci-rig session v1", "status": "ok", "rig": "testrig",
                                                "created": "2026-01-01T10:00:00"})
    acq = folder / "acquisition"
    period = 1e9 / fps
    for k, spec in enumerate(planes):
        pdir = acq if k == bci_plane else acq / "planes" / f"plane{k}"
        n = len(spec.stat)
        iscell = np.ones((n, 2)) if spec.iscell is None else spec.iscell
        roi_set = RoiSet(stat=spec.stat, iscell=iscell, Ly=shape[0], Lx=shape[1], ops={"fs": fps},
                         kind=spec.kind, parent=spec.parent)
        roi_set.save_suite2p(pdir / "rois")
        n_ext = int(np.sum(iscell[:, 0] > 0.5)) if only_cells else n
        writer = RecordWriter(pdir / "frames.rec", frame_record_dtype(n_ext))
        keep = iscell[:, 0] > 0.5 if only_cells else np.ones(n, bool)
        for v in range(spec.F.shape[0]):
            t = int(T0_NS + v * period + k * period / n_planes)
            writer.append(frame=v, t_ready=t, t_registered=t, t_extracted=t, t_sent=t, corr=0.9,
                          F=spec.F[v, keep], Fneu=spec.Fneu[v, keep])
        writer.close()
        if spec.movie is not None:
            write_json_atomic(pdir / "movie.json", {"dtype": "uint16", "shape": [-1, shape[0], shape[1]],
                                                    "order": "C", "frame_rate_hz": fps})
            spec.movie.astype(np.uint16).tofile(pdir / "movie.raw")
        if spec.truth_parent is not None:
            (pdir / "sim_truth").mkdir(parents=True)
            np.savez(pdir / "sim_truth" / "ground_truth.npz", plane=k, parent=spec.truth_parent)
    events = EventLog(acq / "events.jsonl")
    events.write("state", state="ready", reason="", frame_rate_hz=repr(fps), height=str(shape[0]),
                 width=str(shape[1]), t_ns=T0_NS)
    events.close()
    return folder
