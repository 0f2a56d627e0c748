"""The simulated scope as a frame source: frames paced like a real scan, a mouse that hears the rig.

Frame ``k`` is scanned during ``[t0 + k/fps, t0 + (k+1)/fps)`` (plus the scope's timestamp jitter) and is
handed out when complete. It is rendered ahead of its due time, so ``read`` spends the wait sleeping,
not computing. A consumer that falls more than ``max_lag_frames`` behind loses frames, as with a real
scope whose driver buffer overflows: the lost frames are still simulated (biology and motion go on,
ground truth is kept) but not rendered, and frame numbers jump.

With ``n_planes = 2`` reads alternate plane 0 (somata) and plane 1 (their dendrites) of each volume: both
carry the volume's number, plane ``p`` of volume ``v`` is handed out at ``t0 + (v + (p + 1) / 2) / fps``
(``frame_rate_hz`` is the volume rate), and a lost volume loses both planes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acquisition.sim.config import SimConfig
from acquisition.sim.export import write_ground_truth
from acquisition.sim.scope import FrameInfo, SimScope
from acquisition.sources.base import Frame, FrameSource
from acquisition.validate import FrameFlag
from rig.core.clock import now_ns
from rig.core.schema import FeedbackUpdate, RewardOutcome

if TYPE_CHECKING:
    from acquisition.config import AcquisitionConfig
    from acquisition.sources.registry import SourceContext

_N_BUFFERS = 4  # frames handed out stay valid until this many more reads


class SimSource(FrameSource):
    """``FrameSource`` over :class:`SimScope`; bus messages reach the simulated mouse.

    Registered with every capability (:mod:`acquisition.sources.registry`): ground truth, hearing rewards
    and decisions, following the decoder's ensembles.
    """

    @classmethod
    def from_config(cls, cfg: AcquisitionConfig, ctx: SourceContext) -> SimSource:
        """The registry's factory: ``[acquisition.sim]``; the mouse starts with the decoder's configured ensembles."""
        return cls(cfg.sim, frame_rate_hz=cfg.frame_rate_hz, up=list(ctx.up), down=list(ctx.down))

    def __init__(self, cfg: SimConfig, frame_rate_hz: float, up: list[int], down: list[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.scope = SimScope(cfg, frame_rate_hz, up=up, down=down)
        self._shape = self.scope.shape
        self._rate = float(frame_rate_hz)
        self._n_planes = cfg.n_planes
        self._plane = 0  # the plane the next read hands out
        self._period_ns = 1e9 / self._rate
        self._buffers = np.zeros((_N_BUFFERS, *self._shape), np.uint16)
        self._slot = 0
        self._pending: FrameInfo | None = None
        self._t0_ns = 0
        self._open = False
        self._closed = False
        self._after_gap = False
        self._history_warned = False
        self._frames = 0
        self._dropped = 0
        self._rewards = 0
        self._feedback_heard = 0
        self._render_ns_total = 0
        self._render_ns_max = 0
        self._render1_ns_total = 0
        self._volumes = 0

    # ------------------------------------------------------------ FrameSource interface

    def open(self) -> None:
        self._open = True

    def _start_clock(self) -> None:
        """The simulated scope starts scanning at the first read, like a real scope started by the rig:
        the time between open() (configure) and the session start is not lost frames."""
        self._t0_ns = now_ns()

    def close(self) -> None:
        self._open = False
        self._closed = True

    def link_state(self) -> str:
        if self._open:
            return "ok"
        return "ended" if self._closed else "waiting"

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame when it is complete, or None if that takes longer than ``timeout_s``."""
        if not self._open:
            raise RuntimeError("SimSource.read() called before open() or after close()")
        if not self._t0_ns:
            self._start_clock()
        if self._pending is None and self._plane > 0:
            t = now_ns()
            self._pending = self.scope.render_dendrites(self._buffers[self._slot])
            self._render1_ns_total += now_ns() - t
        if self._pending is None:
            if self.cfg.realtime:
                self._drop_frames_behind()
            t = now_ns()
            self._pending = self.scope.render(self._buffers[self._slot])
            spent = now_ns() - t
            self._volumes += 1
            self._render_ns_total += spent
            self._render_ns_max = max(self._render_ns_max, spent)
            if self.scope.history_truncated and not self._history_warned:
                self._history_warned = True
                self.warn(
                    "sim_history_full",
                    f"simulated scope: ground truth is kept for the first {self.cfg.history_max_frames} frames "
                    "only (acquisition.sim.history_max_frames); later frames have none",
                )
        info = self._pending
        if self.cfg.realtime:
            wait_ns = self._due_ns(info) - now_ns()
            if wait_ns > 0:
                if wait_ns > timeout_s * 1e9:
                    time.sleep(max(timeout_s, 0.0))
                    return None
                time.sleep(wait_ns / 1e9)
        frame = Frame(
            data=self._buffers[self._slot],
            number=info.number,
            t_ready_ns=now_ns(),
            scope_time_s=info.scope_time_s,
            flags=int(FrameFlag.AFTER_GAP) if self._after_gap else 0,
            plane=self._plane,
        )
        self._after_gap = False
        self._pending = None
        self._plane = (self._plane + 1) % self._n_planes
        self._slot = (self._slot + 1) % _N_BUFFERS
        self._frames += 1
        return frame

    def stats(self) -> dict[str, float]:
        """``frames`` counts every plane's frames; ``render_ms_*`` is plane 0's (the BCI plane's) render time,
        ``render_plane1_ms_mean`` the dendrite plane's (two planes only); ``frames_dropped`` counts volumes."""
        n = max(self._volumes, 1)
        mouse = self.scope.mouse.state()
        out = {
            "frames": float(self._frames),
            "bad_frames": 0.0,
            "frames_dropped": float(self._dropped),
            "render_ms_mean": self._render_ns_total / n / 1e6,
            "render_ms_max": self._render_ns_max / 1e6,
            "rewards_heard": float(self._rewards),
            "feedback_heard": float(self._feedback_heard),
            "mouse_drive_up_hz": mouse["drive_up_hz"],
            "mouse_drive_down_hz": mouse["drive_down_hz"],
        }
        if self._n_planes > 1:
            out["render_plane1_ms_mean"] = self._render1_ns_total / n / 1e6
        return out

    def on_bus_message(self, msg: Any) -> None:
        """Rewards teach the mouse; what the feedback process presented (``fbk.update``) is its feedback.

        The decoder's decisions are not: with no feedback process (``[feedback] enabled = false``) the mouse
        perceives nothing of the cursor, so learning without feedback can be simulated."""
        mouse = self.scope.mouse
        if isinstance(msg, RewardOutcome):
            if msg.status == "delivered":
                self._rewards += 1
                mouse.on_reward()
        elif isinstance(msg, FeedbackUpdate):
            self._feedback_heard += 1
            if self.cfg.mouse.use_feedback:
                mouse.on_feedback(msg.perceived)

    # ------------------------------------------------------------ capabilities (see the registry)

    def set_ensembles(self, up: Sequence[int], down: Sequence[int]) -> None:
        """The decoder applied new ensembles: the mouse now tries to move those cells (ROI i == cell i).
        Indices the simulated field does not have are reported, not raised: the scope must keep running."""
        try:
            self.scope.mouse.set_ensembles(up, down)
        except ValueError as exc:
            self.warn("sim_ensembles", f"new ensembles ignored by the simulated mouse: {exc}")
            return
        dendrites = self.scope.dendrites
        if dendrites is not None:  # the tissue is built at start: later ensemble cells may have no dendrite
            missing = sorted({int(i) for i in (*up, *down)} - set(dendrites.layout.parent.tolist()))
            if missing:
                self.warn("sim_ensembles", f"cells {missing} of the new ensembles have no dendrite on plane 1 (only "
                          "the ensembles given at start are sure to; raise [acquisition.sim.dendrites] fraction)")

    def write_ground_truth(self, folder: str | Path, n_frames: int | None = None, plane: int = 0) -> Path:
        """Plane ``plane``'s ROIs (suite2p layout, ``folder/suite2p/plane<plane>``) and per-volume truth so far
        (``folder/ground_truth.npz``): use one folder per plane; see
        :func:`acquisition.sim.export.write_ground_truth`."""
        return write_ground_truth(self.scope, folder, n_frames, plane=plane)

    def _due_ns(self, info: FrameInfo) -> float:
        # plane 1's scope time is already half a volume later: each plane is due 1/n_planes of a volume after it
        return self._t0_ns + (info.scope_time_s * 1e9 + self._period_ns / self._n_planes)

    def _drop_frames_behind(self) -> None:
        """Skip (simulate, do not render) frames the consumer is too late for."""
        limit = now_ns() - self.cfg.max_lag_frames * self._period_ns
        skipped = 0
        while self._t0_ns + (self.scope.frames_generated + 1) * self._period_ns < limit:
            self.scope.skip()
            skipped += 1
        if skipped:
            self._dropped += skipped
            self._after_gap = True
            self.warn(
                "sim_frames_lost",
                f"simulated scope: the reader was more than max_lag_frames={self.cfg.max_lag_frames} frames "
                f"behind real time; {skipped} frame(s) lost, up to frame {self.scope.frames_generated - 1}",
            )
